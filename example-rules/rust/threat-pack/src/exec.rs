//! Rules on `kubectl exec` command lines.

use peregrine_sdk::Alert;

use crate::Ctx;
use crate::command::{self, credential_indicator, exec_command, redact, tar_to_stdout};

/// The exec's command, if it has one. `kubectl exec` over SPDY arrives as
/// verb `create`, over WebSocket (kubectl 1.30 and later) as `get`.
/// kube-apiserver puts the command only in the URI's `command` parameters;
/// some sources record it as a parsed `PodExecOptions` request instead (GKE's
/// Cloud Audit Logs do), which reaches the rule as the request object. That
/// is read when the URI has no command.
fn command(x: &Ctx) -> Option<Vec<String>> {
    let mut command = exec_command(x.event.uri());
    if command.is_empty() {
        command = x
            .event
            .request_pointer("/command")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
    }
    (!command.is_empty()).then_some(command)
}

fn exec_alert(x: &Ctx, what: &str, command: &[String], reason: &str) -> Option<Alert> {
    if !x.first_for_request() {
        return None;
    }
    let shown = redact(command);
    Some(
        x.alert(&format!("{what}: {reason} (command={shown})"))
            .field("ka.uri.param[command]", shown)
            .field("threat.reason", reason),
    )
}

pub fn shell_or_download(x: &Ctx) -> Option<Alert> {
    let command = command(x)?;
    let reason = command::shell_or_download(&command)?;
    exec_alert(
        x,
        "Exec runs a reverse shell or downloaded code",
        &command,
        reason,
    )
}

pub fn cloud_credentials(x: &Ctx) -> Option<Alert> {
    let command = command(x)?;
    let indicator = credential_indicator(&command, &x.config.credential_indicators)?;
    exec_alert(
        x,
        "Exec reaches cloud metadata or credentials",
        &command,
        &format!("mentions {indicator}"),
    )
}

pub fn cp_exfiltration(x: &Ctx) -> Option<Alert> {
    let command = command(x)?;
    if !tar_to_stdout(&command) {
        return None;
    }
    exec_alert(
        x,
        "Files copied out of a pod",
        &command,
        "tar archive written to stdout",
    )
}
