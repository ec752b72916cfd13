//! Keeps the live rule set in step with the rules directories: a watcher
//! on every directory debounces editor noise and hands changed module files
//! to the [registry](crate::rules::registry), which loads or unloads them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;

use crate::rules::registry::{RuleManager, RulesDir};

/// Quiet time after the last change to a file before it is loaded: editors
/// and `cp` write in several steps.
const SETTLE: Duration = Duration::from_millis(150);

// The watcher's way in: a method of the manager, since whoever holds the
// manager decides whether its directories are watched.
impl RuleManager {
    /// Watches every rules directory and applies changes until the returned
    /// guard is dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<RulesWatcher> {
        self.watch_except(&[])
    }

    /// Watches the rules directories but `skip`: the caches of OCI sources,
    /// whose poller brings the manager in step itself once a pull is complete.
    pub fn watch_except(self: &Arc<Self>, skip: &[PathBuf]) -> anyhow::Result<RulesWatcher> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut debouncer = notify_debouncer_full::new_debouncer(SETTLE, None, tx)?;
        let watched: Vec<RulesDir> = self
            .dirs()
            .iter()
            .filter(|d| !skip.contains(&d.path))
            .cloned()
            .collect();
        for dir in &watched {
            debouncer
                .watch(&dir.path, RecursiveMode::NonRecursive)
                .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.path.display()))?;
        }
        let manager = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("peregrine-reload".into())
            .spawn(move || {
                for result in rx {
                    let Some(manager) = manager.upgrade() else {
                        break;
                    };
                    let events = match result {
                        Ok(events) => events,
                        Err(errors) => {
                            for e in errors {
                                tracing::warn!("rules watcher: {e}");
                            }
                            continue;
                        }
                    };
                    let mut touched: Vec<PathBuf> = events
                        .iter()
                        .flat_map(|e| e.paths.iter().cloned())
                        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                        .collect();
                    touched.sort();
                    touched.dedup();
                    for path in touched {
                        let Some(dir) = watched
                            .iter()
                            .find(|d| path.parent() == Some(d.path.as_path()))
                        else {
                            continue;
                        };
                        let _span =
                            tracing::info_span!("reload", module = %path.display()).entered();
                        manager.load_file(&dir.scope, &path);
                    }
                }
            })?;
        Ok(RulesWatcher {
            _debouncer: debouncer,
            _thread: thread,
        })
    }
}

/// Keeps the watcher running.
pub struct RulesWatcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify_debouncer_full::notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    _thread: std::thread::JoinHandle<()>,
}
