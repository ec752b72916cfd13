//! Logging to stderr (stdout carries alerts).

use tracing_subscriber::EnvFilter;

/// Log line format on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// A log line that an outside input can trigger at any rate (an oversize
/// event, a failing accept): written at most once per period, with the
/// number of the ones left out since, so a flood cannot fill the logs.
pub(crate) struct RateLimited {
    every: std::time::Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RateLimited {
    pub(crate) const fn new(every: std::time::Duration) -> Self {
        RateLimited {
            every,
            last: std::sync::Mutex::new(None),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when a line may be written now.
    pub(crate) fn check(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimited;

    #[test]
    fn rate_limited_lines_count_what_they_leave_out() {
        let r = RateLimited::new(std::time::Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        let r2 = RateLimited::new(std::time::Duration::ZERO);
        assert_eq!(r2.check(), Some(0));
        assert_eq!(r2.check(), Some(0));
    }
}
