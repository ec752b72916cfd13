use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::config::AlertFormat;
use crate::evaluate::AlertSink;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    pub format: AlertFormat,
}

/// Prints alerts, one per line, in Falco's JSON or as text.
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
