//! What bounds the sandbox: the limits of each call and store, and the
//! permits in front of the instance pool. Apart from the engine so the
//! instance and output code can take them without importing the engine.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Sandbox limits applied to each call and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Wall-clock budget of one `evaluate` call.
    pub call_deadline: Duration,
    /// Maximum linear memory of one module instance, in bytes.
    pub memory_bytes: usize,
    /// Maximum alerts one `evaluate` call may return.
    pub max_alerts_per_event: usize,
    /// Maximum total bytes of output text and fields of one `evaluate` call.
    pub max_output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            call_deadline: Duration::from_millis(100),
            memory_bytes: 128 << 20,
            max_alerts_per_event: 64,
            max_output_bytes: 256 << 10,
        }
    }
}

/// A counting semaphore in front of the instance pool.
pub(super) struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Permits {
    pub(super) fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
}

pub(crate) struct Permit(Arc<Permits>);

impl Permit {
    pub(super) fn acquire(permits: &Arc<Permits>) -> Permit {
        let mut free = permits.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = permits.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(permits.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.cv.notify_one();
    }
}
