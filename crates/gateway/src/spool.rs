//! The shipper's on-disk queue: NDJSON bodies the dashboard could not take (down, restarting, overloaded) wait here,
//! oldest first, and are resent once it answers again — across a gateway restart too.
//!
//! One file per body (`<sequence>.ndjson`, written to a `.tmp` name and renamed, so a crash leaves a whole file or
//! none); the total is bounded by `max_bytes`, past which a body is refused and its records are counted as dropped.
//! Resending a body the dashboard had in fact stored is harmless: ingest skips records it already holds (each has its
//! own id).

use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
};

/// A body could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full: {held} of {max} bytes held")]
    Full { held: u64, max: u64 },
    #[error("spool file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The queue of spooled bodies.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Sequence number and size of every file, oldest first.
    files: VecDeque<(u64, u64)>,
    held: u64,
    next: u64,
}

impl Spool {
    /// Opens (creating) `dir` and takes over the bodies a previous run left there; half-written files are removed.
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_owned(),
            source,
        };
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let mut entries = tokio::fs::read_dir(dir).await.map_err(io)?;
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".ndjson").and_then(|s| s.parse::<u64>().ok()) {
                let len = entry.metadata().await.map_err(io)?.len();
                files.push((seq, len));
            } else if name.ends_with(".tmp") {
                // A write interrupted by a crash: its body was never acknowledged as spooled.
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        files.sort_unstable();
        let held = files.iter().map(|&(_, len)| len).sum();
        let next = files.last().map_or(0, |&(seq, _)| seq + 1);
        if !files.is_empty() {
            tracing::info!(dir = %dir.display(), bodies = files.len(), bytes = held, "spooled batches found; resending them");
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            files: files.into(),
            held,
            next,
        })
    }

    /// Appends one body, unless it would take the spool past its bound.
    pub async fn push(&mut self, body: &[u8]) -> Result<(), SpoolError> {
        let len = body.len() as u64;
        if self.held + len > self.max_bytes {
            return Err(SpoolError::Full {
                held: self.held,
                max: self.max_bytes,
            });
        }
        let seq = self.next;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        tokio::fs::write(&tmp, body).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        self.next += 1;
        self.files.push_back((seq, len));
        self.held += len;
        Ok(())
    }

    /// The oldest body, if any (it stays spooled until [`Spool::pop`]).
    pub async fn oldest(&self) -> Option<Result<Vec<u8>, SpoolError>> {
        let &(seq, _) = self.files.front()?;
        let path = self.path(seq);
        Some(
            tokio::fs::read(&path)
                .await
                .map_err(|source| SpoolError::Io { path, source }),
        )
    }

    /// Forgets the oldest body (delivered, or unreadable).
    pub async fn pop(&mut self) {
        if let Some((seq, len)) = self.files.pop_front() {
            self.held -= len;
            if let Err(error) = tokio::fs::remove_file(self.path(seq)).await {
                tracing::warn!(%error, seq, "could not remove a delivered spool file");
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes held on disk.
    pub fn held(&self) -> u64 {
        self.held
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.ndjson"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn bodies_come_back_oldest_first_bounded_and_across_a_reopen() {
        let dir = dir("order");
        let mut spool = Spool::open(&dir, 10).await.unwrap();
        spool.push(b"one\n").await.unwrap();
        spool.push(b"two\n").await.unwrap();
        assert!(matches!(
            spool.push(b"three\n").await,
            Err(SpoolError::Full { held: 8, max: 10 })
        ));
        assert_eq!(spool.oldest().await.unwrap().unwrap(), b"one\n");
        // A crash mid-write leaves a .tmp, which a restart discards; the whole files survive, in order.
        std::fs::write(dir.join("00000000000000000009.tmp"), b"half").unwrap();
        drop(spool);
        let mut spool = Spool::open(&dir, 10).await.unwrap();
        assert_eq!(spool.held(), 8);
        assert_eq!(spool.oldest().await.unwrap().unwrap(), b"one\n");
        spool.pop().await;
        spool.push(b"3\n").await.unwrap();
        assert_eq!(spool.oldest().await.unwrap().unwrap(), b"two\n");
        spool.pop().await;
        assert_eq!(spool.oldest().await.unwrap().unwrap(), b"3\n");
        spool.pop().await;
        assert!(spool.is_empty() && spool.held() == 0);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left on disk");
    }
}
