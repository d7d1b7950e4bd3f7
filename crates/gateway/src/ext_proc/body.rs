//! The request-body buffer of one ext_proc stream: bounded in size, charged to the process's buffered-bytes budget
//! as bytes arrive, linear in the body size.
//!
//! Upstream's picker spent most of a 220 KB request appending chunks to a growing slice (peers.md §3.1); here the
//! first chunk is kept as is (a BUFFERED body is one message and is never copied), and later chunks go into one
//! allocation sized from Content-Length — but only up to [`serve::body::PRESIZE_CAP`]: a declared length is a
//! claim, and a stream that declares 16 MiB and sends one byte must not hold 16 MiB.

use bytes::Bytes;
use serve::{Budget, Charge};

/// Why the body could not be buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the gateway holds too many request bytes right now (limit {max}); retry shortly")]
    OverBudget { max: usize },
}

/// Collects body chunks until the end of the stream.
#[derive(Debug)]
pub struct BodyBuffer {
    limit: usize,
    /// Content-Length, when the client sent a plausible one.
    expected: Option<usize>,
    buf: Vec<u8>,
    /// The bytes held, charged to the process-wide budget until the buffer is taken or dropped.
    charge: Charge,
}

impl BodyBuffer {
    /// `content_length` above `limit` fails at once, before any byte is buffered.
    pub fn new(limit: usize, content_length: Option<usize>, budget: &Budget) -> Result<BodyBuffer, BufferError> {
        if content_length.is_some_and(|n| n > limit) {
            return Err(BufferError::TooLarge { limit });
        }
        Ok(BodyBuffer {
            limit,
            expected: content_length,
            buf: Vec::new(),
            charge: budget.charge(),
        })
    }

    /// Appends one chunk; takes ownership so a single-chunk body needs no copy.
    pub fn push(&mut self, chunk: Vec<u8>) -> Result<(), BufferError> {
        let len = self.buf.len() + chunk.len();
        if len > self.limit {
            return Err(BufferError::TooLarge { limit: self.limit });
        }
        self.charge
            .add(chunk.len())
            .map_err(|over| BufferError::OverBudget { max: over.max })?;
        if self.buf.is_empty() && self.buf.capacity() == 0 {
            if self.expected.is_none_or(|n| chunk.len() >= n) {
                // The whole body in one message (BUFFERED mode, or a small streamed body).
                self.buf = chunk;
                return Ok(());
            }
            let presize = self.expected.unwrap_or(0).min(serve::body::PRESIZE_CAP);
            self.buf = Vec::with_capacity(presize.max(chunk.len()));
        } else if self.buf.capacity() < len {
            // Content-Length was absent, wrong or past the pre-sizing cap: grow geometrically, never to the exact
            // size, so appends stay amortised O(1) even for a client that streams a body in thousands of chunks.
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

    /// The collected body; the buffer is empty afterwards and its bytes are no longer charged (the caller routes
    /// them at once and lets them go).
    pub fn take(&mut self) -> Bytes {
        self.charge = self.charge.budget().charge();
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new(usize::MAX)
    }

    #[test]
    fn a_single_chunk_is_kept_without_copy() {
        let chunk = b"{\"model\":\"m\"}".to_vec();
        let ptr = chunk.as_ptr();
        let mut body = BodyBuffer::new(1 << 20, Some(chunk.len()), &budget()).unwrap();
        body.push(chunk).unwrap();
        let bytes = body.take();
        assert_eq!(bytes.as_ptr(), ptr);
        assert!(body.is_empty());
    }

    #[test]
    fn chunks_fill_one_allocation_sized_from_content_length() {
        let whole: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = BodyBuffer::new(2 << 20, Some(whole.len()), &budget()).unwrap();
        let mut capacities = Vec::new();
        for chunk in whole.chunks(6_000) {
            body.push(chunk.to_vec()).unwrap();
            capacities.push(body.buf.capacity());
        }
        assert!(capacities.iter().all(|&c| c == whole.len()), "{capacities:?}");
        assert_eq!(body.take(), whole);
    }

    #[test]
    fn without_content_length_growth_is_geometric() {
        let mut body = BodyBuffer::new(1 << 20, None, &budget()).unwrap();
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
        assert_eq!(
            BodyBuffer::new(10, Some(11), &budget()).unwrap_err(),
            BufferError::TooLarge { limit: 10 }
        );
        let mut body = BodyBuffer::new(10, None, &budget()).unwrap();
        body.push(vec![0; 6]).unwrap();
        assert_eq!(body.push(vec![0; 5]), Err(BufferError::TooLarge { limit: 10 }));
        // A lying Content-Length does not lift the limit either.
        let mut body = BodyBuffer::new(10, Some(2), &budget()).unwrap();
        assert_eq!(body.push(vec![0; 11]), Err(BufferError::TooLarge { limit: 10 }));
    }

    #[test]
    fn an_understated_content_length_still_collects_everything() {
        let mut body = BodyBuffer::new(100, Some(4), &budget()).unwrap();
        for chunk in [&b"ab"[..], b"cd", b"ef", b"gh"] {
            body.push(chunk.to_vec()).unwrap();
        }
        assert_eq!(&body.take()[..], b"abcdefgh");
    }

    #[test]
    fn a_claimed_length_reserves_at_most_the_cap_and_every_byte_is_charged_until_taken() {
        let budget = Budget::new(1 << 20);
        let mut body = BodyBuffer::new(32 << 20, Some(16 << 20), &budget).unwrap();
        body.push(vec![b'x']).unwrap();
        body.push(vec![b'y']).unwrap();
        assert!(
            body.buf.capacity() <= serve::body::PRESIZE_CAP,
            "{}",
            body.buf.capacity()
        );
        assert_eq!(budget.used(), 2);
        // Past the process-wide budget the body is refused, whatever its own limit.
        assert_eq!(
            body.push(vec![0; 1 << 20]),
            Err(BufferError::OverBudget { max: 1 << 20 })
        );
        assert_eq!(&body.take()[..], b"xy");
        assert_eq!(budget.used(), 0, "taken bytes are the router's, no longer the buffer's");
        let mut dropped = BodyBuffer::new(100, None, &budget).unwrap();
        dropped.push(vec![0; 10]).unwrap();
        drop(dropped);
        assert_eq!(budget.used(), 0);
    }
}
