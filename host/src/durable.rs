//! When a batch's alerts are safe: the fan-in between the outputs and the
//! ingest journal.
//!
//! A batch acknowledged to its sender stays in the journal until every
//! alert it raised is durable, that is written to the spool of every output
//! it was routed to (or delivered, or given up by an output the operator
//! made memory-only). A [`Durable`] travels with the batch's alerts; every
//! output it reaches holds a share (a clone) and releases it once its
//! alerts are stored. When the last share is released the journal entry is
//! completed. A share dropped without [`Durable::release`] (an error path, a
//! panic, a shutdown) keeps the entry instead, so the batch is evaluated
//! again at the next start: a duplicate, never a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type OnDurable = Box<dyn FnOnce() + Send>;

struct Inner {
    on_durable: Mutex<Option<OnDurable>>,
    /// Some share was dropped without being released.
    kept: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.kept.load(Ordering::SeqCst) {
            return;
        }
        let f = self
            .on_durable
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = f {
            f();
        }
    }
}

/// One share of a batch's durability; clone it for every output the
/// batch's alerts go to.
pub struct Durable {
    inner: Arc<Inner>,
    released: bool,
}

impl Durable {
    /// A batch that calls `on_durable` once all its shares are released.
    pub fn new(on_durable: impl FnOnce() + Send + 'static) -> Self {
        Durable {
            inner: Arc::new(Inner {
                on_durable: Mutex::new(Some(Box::new(on_durable))),
                kept: AtomicBool::new(false),
            }),
            released: false,
        }
    }

    /// A batch with nothing waiting for it (no journal entry).
    pub fn none() -> Self {
        Durable {
            inner: Arc::new(Inner {
                on_durable: Mutex::new(None),
                kept: AtomicBool::new(false),
            }),
            released: false,
        }
    }

    /// This share's alerts are stored (or deliberately given up).
    pub fn release(mut self) {
        self.released = true;
    }

    /// This share's alerts could not be stored: the batch stays in the
    /// journal, to be evaluated again after the next start.
    pub fn keep(self) {
        // Dropping an unreleased share does exactly that.
    }
}

impl Clone for Durable {
    fn clone(&self) -> Self {
        Durable {
            inner: self.inner.clone(),
            released: false,
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if !self.released {
            self.inner.kept.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counted() -> (Durable, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        (
            Durable::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    #[test]
    fn completes_once_after_the_last_share_is_released() {
        let (d, n) = counted();
        let a = d.clone();
        let b = d.clone();
        d.release();
        a.release();
        assert_eq!(n.load(Ordering::SeqCst), 0, "one share is still out");
        b.release();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_share_not_released_keeps_the_batch() {
        let (d, n) = counted();
        let a = d.clone();
        let b = d.clone();
        d.release();
        a.keep();
        b.release();
        assert_eq!(n.load(Ordering::SeqCst), 0);
        let (d, n) = counted();
        let moved = std::thread::spawn(move || {
            let _share = d;
            panic!("a worker that dies holding a share");
        });
        assert!(moved.join().is_err());
        assert_eq!(n.load(Ordering::SeqCst), 0);
        Durable::none().release();
        drop(Durable::none());
    }
}
