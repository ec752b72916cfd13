//! Waiting for what should happen, generously.

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen. Generous: the
/// machines are shared and slow, and a test only waits this long when it is
/// about to fail.
pub const LONG_WAIT: Duration = Duration::from_secs(120);

/// Polls `pred` until it holds, or fails after [`LONG_WAIT`] naming `what`.
pub fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG_WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
