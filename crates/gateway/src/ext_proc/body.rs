//! The request-body buffer of one ext_proc stream: pre-sized from Content-Length, bounded, linear in the body size.
//!
//! Upstream's picker spent most of a 220 KB request appending chunks to a growing slice (peers.md §3.1); here the
//! first chunk is kept as is (a BUFFERED body is one message and is never copied), and later chunks go into one
//! allocation sized from Content-Length up front, so a body is copied at most once.

use bytes::Bytes;

/// Why the body could not be buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body is larger than the limit of {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// Collects body chunks until the end of the stream.
#[derive(Debug)]
pub struct BodyBuffer {
    limit: usize,
    /// Content-Length, when the client sent a plausible one; the buffer is reserved for it.
    expected: Option<usize>,
    buf: Vec<u8>,
}

impl BodyBuffer {
    /// `content_length` above `limit` fails at once, before any byte is buffered.
    pub fn new(limit: usize, content_length: Option<usize>) -> Result<BodyBuffer, TooLarge> {
        if content_length.is_some_and(|n| n > limit) {
            return Err(TooLarge { limit });
        }
        Ok(BodyBuffer {
            limit,
            expected: content_length,
            buf: Vec::new(),
        })
    }

    /// Appends one chunk; takes ownership so a single-chunk body needs no copy.
    pub fn push(&mut self, chunk: Vec<u8>) -> Result<(), TooLarge> {
        let len = self.buf.len() + chunk.len();
        if len > self.limit {
            return Err(TooLarge { limit: self.limit });
        }
        if self.buf.is_empty() && self.buf.capacity() == 0 {
            if self.expected.is_none_or(|n| chunk.len() >= n) {
                // The whole body in one message (BUFFERED mode, or a small streamed body).
                self.buf = chunk;
                return Ok(());
            }
            self.buf = Vec::with_capacity(self.expected.unwrap_or(0).max(chunk.len()));
        } else if self.buf.capacity() < len {
            // Content-Length was absent or wrong: grow geometrically, never to the exact size, so appends stay
            // amortised O(1) even for a client that streams a body in thousands of small chunks.
            self.buf.reserve(len.max(self.buf.capacity() * 2) - self.buf.len());
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The collected body; the buffer is empty afterwards.
    pub fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_chunk_is_kept_without_copy() {
        let chunk = b"{\"model\":\"m\"}".to_vec();
        let ptr = chunk.as_ptr();
        let mut body = BodyBuffer::new(1 << 20, Some(chunk.len())).unwrap();
        body.push(chunk).unwrap();
        let bytes = body.take();
        assert_eq!(bytes.as_ptr(), ptr);
        assert!(body.is_empty());
    }

    #[test]
    fn chunks_fill_one_allocation_sized_from_content_length() {
        let whole: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = BodyBuffer::new(2 << 20, Some(whole.len())).unwrap();
        let mut capacities = Vec::new();
        for chunk in whole.chunks(65_536) {
            body.push(chunk.to_vec()).unwrap();
            capacities.push(body.buf.capacity());
        }
        assert!(capacities.iter().all(|&c| c == whole.len()), "{capacities:?}");
        assert_eq!(body.take(), whole);
    }

    #[test]
    fn without_content_length_growth_is_geometric() {
        let mut body = BodyBuffer::new(1 << 20, None).unwrap();
        let mut reallocations = 0;
        let mut last = 0;
        for _ in 0..100_000 {
            body.push(vec![b'x'; 10]).unwrap();
            if body.buf.capacity() != last {
                reallocations += 1;
                last = body.buf.capacity();
            }
        }
        assert_eq!(body.len(), 1_000_000);
        assert!(reallocations < 40, "{reallocations} reallocations");
    }

    #[test]
    fn the_limit_holds_with_and_without_content_length() {
        assert_eq!(BodyBuffer::new(10, Some(11)).unwrap_err(), TooLarge { limit: 10 });
        let mut body = BodyBuffer::new(10, None).unwrap();
        body.push(vec![0; 6]).unwrap();
        assert_eq!(body.push(vec![0; 5]), Err(TooLarge { limit: 10 }));
        // A lying Content-Length does not lift the limit either.
        let mut body = BodyBuffer::new(10, Some(2)).unwrap();
        assert_eq!(body.push(vec![0; 11]), Err(TooLarge { limit: 10 }));
    }

    #[test]
    fn an_understated_content_length_still_collects_everything() {
        let mut body = BodyBuffer::new(100, Some(4)).unwrap();
        for chunk in [&b"ab"[..], b"cd", b"ef", b"gh"] {
            body.push(chunk.to_vec()).unwrap();
        }
        assert_eq!(&body.take()[..], b"abcdefgh");
    }
}
