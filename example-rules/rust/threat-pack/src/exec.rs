//! Rules on `kubectl exec` command lines.

use peregrine_sdk::Alert;

use crate::Ctx;
use crate::command::{self, credential_indicator, exec_command, redact, tar_to_stdout};

/// The exec's command, if it has one. `kubectl exec` over SPDY arrives as
/// verb `create`, over WebSocket (kubectl 1.30 and later) as `get`.
fn command(x: &Ctx) -> Option<Vec<String>> {
    let command = exec_command(x.event.uri());
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
