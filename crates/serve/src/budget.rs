//! The process-wide budget of request bytes held in memory: every listener's body buffers (and ext_proc's) charge
//! it as bytes arrive, so a crowd of clients each sending most of a large body cannot exhaust memory.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// A shared cap on buffered bytes; cloning shares it.
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    used: AtomicUsize,
    /// Mirrors `used` for `/metrics`.
    gauge: Gauge,
    /// Bumped on every change of `used`, for waiters (tests) that must not poll.
    changes: watch::Sender<u64>,
}

/// Taking bytes would overrun the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the budget of {max} buffered request bytes")]
pub struct OverBudget {
    pub max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                max,
                used: AtomicUsize::new(0),
                gauge: Gauge::default(),
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// Bytes held by all charges now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// The `buffered request bytes` gauge, for registering.
    pub fn gauge(&self) -> Gauge {
        self.inner.gauge.clone()
    }

    /// Notified whenever the bytes held change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// An empty charge that grows with [`Charge::add`] and gives everything back when dropped.
    pub fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            held: 0,
        }
    }

    fn take(&self, n: usize) -> Result<(), OverBudget> {
        let inner = &self.inner;
        inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= inner.max)
            })
            .map_err(|_| OverBudget { max: inner.max })?;
        inner.gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    fn give_back(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::AcqRel);
        self.inner.gauge.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Bytes one request holds; released on drop, so no path (error, cancellation, panic) can leak them.
#[derive(Debug)]
pub struct Charge {
    budget: Budget,
    held: usize,
}

impl Charge {
    /// Takes `n` more bytes, or nothing when the budget cannot spare them.
    pub fn add(&mut self, n: usize) -> Result<(), OverBudget> {
        self.budget.take(n)?;
        self.held += n;
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// The budget this charge draws on.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_share_the_cap_and_give_everything_back_when_dropped() {
        let budget = Budget::new(100);
        let mut a = budget.charge();
        let mut b = budget.charge();
        a.add(60).unwrap();
        assert_eq!(b.add(41), Err(OverBudget { max: 100 }));
        b.add(40).unwrap();
        assert_eq!((budget.used(), budget.gauge().get()), (100, 100));
        drop(a);
        assert_eq!(budget.used(), 40);
        b.add(60).unwrap();
        drop(b);
        assert_eq!((budget.used(), budget.gauge().get()), (0, 0));
    }
}
