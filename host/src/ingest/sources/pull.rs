//! Starting and stopping the pull sources (`file`, `cloudwatch`), which
//! read on their own threads and hand events to the pipeline.

use std::sync::Arc;

use super::config::SourceConfig;
use super::{cloudwatch, file};
use crate::server::state::AppState;

/// A running pull source (a file, CloudWatch Logs).
pub enum Running {
    File(file::FileSource),
    CloudWatch(cloudwatch::CloudWatchSource),
}

impl Running {
    /// Stops after the batch in hand; what was not saved is read again.
    pub fn stop(self) {
        match self {
            Running::File(s) => s.stop(),
            Running::CloudWatch(s) => s.stop(),
        }
    }
}

/// Starts every pull source (`file`, `cloudwatch`).
pub fn start_pulls(sources: &[SourceConfig], app: &Arc<AppState>) -> anyhow::Result<Vec<Running>> {
    let mut out = Vec::new();
    for s in sources {
        match s {
            SourceConfig::File(f) => out.push(Running::File(file::FileSource::start(
                f.clone(),
                app.clone(),
            )?)),
            SourceConfig::CloudWatch(c) => out.push(Running::CloudWatch(
                cloudwatch::CloudWatchSource::start(c.clone(), app.clone())?,
            )),
            SourceConfig::Firehose(_) | SourceConfig::PubsubPush(_) => {}
        }
    }
    Ok(out)
}
