//! `type = "nats"`: each alert (Falco's JSON) published to a subject made
//! from a template, e.g. `peregrine.alerts.{tenant}` for one subject per
//! tenant.
//!
//! Core NATS has no per-message acknowledgement, so a batch counts as
//! delivered when the server answers a `PING` sent after it: the server
//! processes a connection's commands in order, so its `PONG` means every
//! `PUB` before it was accepted (this is what NATS clients call a flush).
//! The protocol is a few text commands over TCP, spoken here directly.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::BuildError;
use super::delivery::{Deliver, OutputDeliveryConfig, SendError, SendFailure};
use crate::alert::Alert;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The server, `nats://host:port` (port 4222 by default); user and
    /// password may be given in it.
    pub url: String,
    /// Subject template; `{tenant}`, `{rule_id}`, `{priority}` (lower case)
    /// and `{module}` are replaced by the alert's values, with characters
    /// NATS does not allow in a subject token (`.`, `*`, `>`, spaces)
    /// turned into `_`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token (instead of user and password).
    #[serde(default)]
    pub token: Option<String>,
    /// Timeout of connecting and of one publish round trip, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

fn default_subject() -> String {
    "peregrine.alerts.{tenant}".into()
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// Longest protocol line read from the server; a longer one is garbage.
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Tenant,
    RuleId,
    Priority,
    Module,
}

fn parse_template(t: &str) -> Result<Vec<Part>, BuildError> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| BuildError(format!("subject `{t}`: `{{` without `}}`")))?
            + open;
        parts.push(match &rest[open + 1..close] {
            "tenant" => Part::Tenant,
            "rule_id" => Part::RuleId,
            "priority" => Part::Priority,
            "module" => Part::Module,
            other => {
                return Err(BuildError(format!(
                    "subject `{t}`: unknown placeholder `{{{other}}}` (known: {{tenant}}, {{rule_id}}, {{priority}}, {{module}})"
                )));
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    // Check the literal parts with every placeholder filled in.
    let sample = render(&parts, "t", "r", "p", "m");
    if sample.is_empty()
        || sample.split('.').any(|tok| tok.is_empty())
        || sample.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
    {
        return Err(BuildError(format!(
            "subject `{t}` is not a valid NATS subject (dot-separated, non-empty tokens, no spaces or wildcards)"
        )));
    }
    Ok(parts)
}

/// One subject token from an alert's value.
fn token(v: &str) -> String {
    let t: String = v
        .chars()
        .map(|c| {
            if c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

fn render(parts: &[Part], tenant: &str, rule_id: &str, priority: &str, module: &str) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Text(t) => s.push_str(t),
            Part::Tenant => s.push_str(&token(tenant)),
            Part::RuleId => s.push_str(&token(rule_id)),
            Part::Priority => s.push_str(&token(priority)),
            Part::Module => s.push_str(&token(module)),
        }
    }
    s
}

struct Endpoint {
    host_port: String,
    user: Option<String>,
    password: Option<String>,
}

impl NatsConfig {
    fn endpoint(&self) -> Result<Endpoint, BuildError> {
        let u = url::Url::parse(&self.url)
            .map_err(|e| BuildError(format!("url `{}` is not a URL: {e}", self.url)))?;
        match u.scheme() {
            "nats" => {}
            "tls" => {
                return Err(BuildError(
                    "TLS connections to NATS are not supported yet: use nats://".into(),
                ));
            }
            other => {
                return Err(BuildError(format!(
                    "url `{}`: scheme `{other}` is not nats://",
                    self.url
                )));
            }
        }
        let host = u
            .host_str()
            .ok_or_else(|| BuildError(format!("url `{}` has no host", self.url)))?;
        let user = (!u.username().is_empty()).then(|| u.username().to_string());
        Ok(Endpoint {
            host_port: format!("{host}:{}", u.port().unwrap_or(4222)),
            user: self.user.clone().or(user),
            password: self.password.clone().or(u.password().map(str::to_string)),
        })
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.endpoint()?;
        parse_template(&self.subject)?;
        if self.timeout_ms == 0 {
            return Err(BuildError("timeout_ms must be positive".into()));
        }
        Ok(())
    }

    pub fn build(&self) -> Result<NatsOutput, BuildError> {
        self.validate()?;
        Ok(NatsOutput {
            endpoint: self.endpoint()?,
            token: self.token.clone(),
            subject: parse_template(&self.subject)?,
            timeout: Duration::from_millis(self.timeout_ms),
            conn: None,
        })
    }
}

struct Connection {
    stream: BufReader<TcpStream>,
    max_payload: usize,
}

pub struct NatsOutput {
    endpoint: Endpoint,
    token: Option<String>,
    subject: Vec<Part>,
    timeout: Duration,
    conn: Option<Connection>,
}

/// What the server said, as far as a publisher cares.
enum ServerLine {
    Pong,
    Err(String),
    Other,
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> Result<ServerLine, SendError> {
    loop {
        let mut line = String::new();
        let n = (&mut *stream)
            .take(MAX_LINE)
            .read_line(&mut line)
            .await
            .map_err(|e| SendError::retry(format!("reading from the NATS server: {e}")))?;
        if n == 0 {
            return Err(SendError::retry("the NATS server closed the connection"));
        }
        if !line.ends_with('\n') {
            return Err(SendError::retry(
                "the NATS server sent a line that is too long or cut off",
            ));
        }
        let l = line.trim_end();
        let verb = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "PONG" => return Ok(ServerLine::Pong),
            "PING" => {
                stream
                    .get_mut()
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(|e| SendError::retry(format!("writing to the NATS server: {e}")))?;
            }
            "-ERR" => {
                return Ok(ServerLine::Err(
                    l[4..].trim().trim_matches('\'').to_string(),
                ));
            }
            "+OK" | "INFO" => return Ok(ServerLine::Other),
            _ => {
                return Err(SendError::retry(format!(
                    "the NATS server sent `{}`",
                    l.chars().take(80).collect::<String>()
                )));
            }
        }
    }
}

/// Waits for the `PONG` that answers our `PING`.
async fn await_pong(stream: &mut BufReader<TcpStream>) -> Result<(), SendError> {
    loop {
        match read_line(stream).await? {
            ServerLine::Pong => return Ok(()),
            ServerLine::Err(e) if e.to_ascii_lowercase().contains("maximum payload") => {
                return Err(SendError::Rejected(format!(
                    "the NATS server refused the message: {e}"
                )));
            }
            ServerLine::Err(e) => {
                return Err(SendError::retry(format!("the NATS server answered: {e}")));
            }
            ServerLine::Other => {}
        }
    }
}

impl NatsOutput {
    async fn connect(&self) -> Result<Connection, SendError> {
        let addr = &self.endpoint.host_port;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SendError::retry(format!("cannot connect to NATS at {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = BufReader::new(tcp);
        let mut info = String::new();
        (&mut stream)
            .take(MAX_LINE)
            .read_line(&mut info)
            .await
            .map_err(|e| SendError::retry(format!("reading NATS INFO from {addr}: {e}")))?;
        let info_json = info
            .strip_prefix("INFO ")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j.trim()).ok())
            .ok_or_else(|| SendError::retry(format!("{addr} did not greet like a NATS server")))?;
        if info_json["tls_required"].as_bool() == Some(true) {
            return Err(SendError::retry(format!(
                "the NATS server at {addr} requires TLS, which this output does not speak yet"
            )));
        }
        let max_payload = info_json["max_payload"].as_u64().unwrap_or(1 << 20) as usize;
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "lang": "rust",
            "name": "peregrine",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": false,
        });
        if let Some(u) = &self.endpoint.user {
            connect["user"] = u.clone().into();
        }
        if let Some(p) = &self.endpoint.password {
            connect["pass"] = p.clone().into();
        }
        if let Some(t) = &self.token {
            connect["auth_token"] = t.clone().into();
        }
        let hello = format!("CONNECT {connect}\r\nPING\r\n");
        stream
            .get_mut()
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| SendError::retry(format!("writing to NATS at {addr}: {e}")))?;
        await_pong(&mut stream).await?;
        Ok(Connection {
            stream,
            max_payload,
        })
    }

    async fn publish(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut buf = Vec::new();
        let mut refused = None;
        for (i, a) in alerts.iter().enumerate() {
            let payload = a.to_falco_json().to_string();
            if payload.len() > conn.max_payload {
                refused = Some((i, payload.len()));
                break;
            }
            let subject = render(
                &self.subject,
                &a.tenant,
                &a.rule_id,
                &a.priority.as_str().to_ascii_lowercase(),
                &a.module,
            );
            buf.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
            buf.extend_from_slice(payload.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let sent = refused.map_or(alerts.len(), |(i, _)| i);
        if sent > 0 {
            buf.extend_from_slice(b"PING\r\n");
            conn.stream
                .get_mut()
                .write_all(&buf)
                .await
                .map_err(|e| SendError::retry(format!("writing to NATS: {e}")))?;
            await_pong(&mut conn.stream).await?;
        }
        match refused {
            None => Ok(()),
            Some((i, len)) => Err(SendFailure {
                delivered: i,
                error: SendError::Rejected(format!(
                    "the alert is {len} bytes, more than the server's max_payload of {}",
                    conn.max_payload
                )),
            }),
        }
    }
}

impl Deliver for NatsOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        let timeout = self.timeout;
        let result = match tokio::time::timeout(timeout, self.publish(alerts)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::retry(format!(
                "no answer from NATS within {} ms",
                timeout.as_millis()
            ))
            .into()),
        };
        if result.is_err() {
            // The connection's state is unknown (and NATS closes it after a
            // refused message): start over.
            self.conn = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_templates_are_checked_and_filled_safely() {
        let p = parse_template("peregrine.{tenant}.{priority}").unwrap();
        assert_eq!(
            render(&p, "team a.b", "r", "warning", "m"),
            "peregrine.team_a_b.warning"
        );
        assert_eq!(render(&p, "", "r", "p", "m"), "peregrine._.p");
        assert!(parse_template("peregrine.{tennant}").is_err());
        assert!(parse_template("peregrine..{tenant}").is_err());
        assert!(parse_template("peregrine.*").is_err());
        assert!(parse_template("peregrine.{tenant").is_err());
        let c: NatsConfig = toml::from_str("url = \"tls://x:4222\"").unwrap();
        assert!(c.validate().is_err());
        let c: NatsConfig = toml::from_str("url = \"nats://u:p@x\"").unwrap();
        let e = c.endpoint().unwrap();
        assert_eq!(
            (
                e.host_port.as_str(),
                e.user.as_deref(),
                e.password.as_deref()
            ),
            ("x:4222", Some("u"), Some("p"))
        );
    }
}
