//! `type = "stdout"`: one alert per line on standard output.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::delivery::{Deliver, OutputDeliveryConfig, SendError, SendFailure};
use crate::alert::Alert;
use crate::alert::AlertFormat;
use crate::alert::AlertSink;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    /// `json` (Falco's JSON) or `text`. Default: the `[output] format`.
    pub format: Option<AlertFormat>,
    pub delivery: OutputDeliveryConfig,
}

impl StdoutConfig {
    pub fn build(&self, default_format: AlertFormat) -> StdoutOutput {
        StdoutOutput::new(self.format.unwrap_or(default_format))
    }
}

/// Prints alerts, one per line, in Falco's JSON or as text.
#[derive(Debug, Clone, Copy)]
pub struct StdoutOutput {
    format: AlertFormat,
}

impl StdoutOutput {
    pub fn new(format: AlertFormat) -> Self {
        StdoutOutput { format }
    }

    pub fn render(&self, alert: &Alert) -> String {
        match self.format {
            AlertFormat::Json => alert.to_falco_json().to_string(),
            AlertFormat::Text => alert.to_text_line(),
        }
    }

    /// Writes alerts; the lock keeps lines of concurrent batches whole.
    pub fn write(&self, alerts: &[Alert]) -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for a in alerts {
            writeln!(out, "{}", self.render(a))?;
        }
        out.flush()
    }
}

impl AlertSink for StdoutOutput {
    fn submit(&self, alerts: Vec<Alert>) {
        if let Err(e) = self.write(&alerts) {
            metrics::counter!("peregrine_output_dropped_total", "output" => "stdout", "reason" => "io_error")
                .increment(alerts.len() as u64);
            tracing::error!("cannot write {} alerts to stdout: {e}", alerts.len());
        }
    }
}

impl Deliver for StdoutOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        // A reader that stops reading a pipe blocks writes: keep that off
        // the async threads.
        let out = *self;
        let alerts = alerts.to_vec();
        tokio::task::spawn_blocking(move || out.write(&alerts))
            .await
            .map_err(|e| SendError::retry(format!("stdout writer failed: {e}")))?
            .map_err(|e| SendError::retry(format!("cannot write to stdout: {e}")))?;
        Ok(())
    }
}
