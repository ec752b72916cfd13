//! `type = "syslog"`: RFC 5424 messages over TCP (octet-counting framing,
//! RFC 6587) or UDP (one datagram per message, RFC 5426).
//!
//! Falco's eight priorities are syslog's eight severities, in the same
//! order, so `PRI` is `facility * 8 + severity` with no mapping to argue
//! about. `MSGID` is the rule id, so receivers can filter on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::BuildError;
use super::delivery::{Deliver, OutputDeliveryConfig, SendError, SendFailure};
use crate::alert::AlertFormat;
use crate::alert::{Alert, Priority};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The receiver, `host:port`.
    pub address: String,
    /// `tcp` (octet-counting framing) or `udp`.
    #[serde(default)]
    pub protocol: SyslogProtocol,
    /// Syslog facility name: `kern`, `user`, `auth`, `authpriv`, `daemon`,
    /// `local0` … `local7`, and the others of RFC 5424.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// `APP-NAME` of every message.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// Body of the message: `json` (Falco's JSON) or `text`.
    #[serde(default)]
    pub format: AlertFormat,
    /// Longest message sent, in bytes; longer ones are cut (receivers cut
    /// them anyway: rsyslog's default limit is 8 KiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Timeout of connecting and of one write, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

fn default_facility() -> String {
    "local0".into()
}
fn default_app_name() -> String {
    "peregrine".into()
}
fn default_max_message_bytes() -> usize {
    8192
}
fn default_timeout_ms() -> u64 {
    10_000
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl SyslogConfig {
    fn facility_code(&self) -> Result<u8, BuildError> {
        FACILITIES
            .iter()
            .position(|f| *f == self.facility)
            .map(|i| i as u8)
            .ok_or_else(|| {
                BuildError(format!(
                    "facility `{}` is not one of {}",
                    self.facility,
                    FACILITIES.join(", ")
                ))
            })
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.facility_code()?;
        if !self.address.contains(':') {
            return Err(BuildError(format!(
                "address `{}` must be host:port",
                self.address
            )));
        }
        if self.max_message_bytes < 480 {
            // RFC 5424 requires receivers to take 480 bytes; less cannot hold a header and a message.
            return Err(BuildError("max_message_bytes must be at least 480".into()));
        }
        if self.timeout_ms == 0 {
            return Err(BuildError("timeout_ms must be positive".into()));
        }
        Ok(())
    }

    pub fn build(&self) -> Result<SyslogOutput, BuildError> {
        self.validate()?;
        Ok(SyslogOutput {
            facility: self.facility_code()?,
            config: self.clone(),
            procid: std::process::id().to_string(),
            tcp: None,
            udp: None,
        })
    }
}

pub struct SyslogOutput {
    config: SyslogConfig,
    facility: u8,
    procid: String,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

/// Printable US-ASCII without spaces, at most `max` long, `-` when empty:
/// what RFC 5424 allows in its header fields.
fn header_field(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if t.is_empty() { "-".into() } else { t }
}

fn severity(p: Priority) -> u8 {
    p as u8
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl SyslogOutput {
    /// One RFC 5424 message (without transport framing).
    pub fn message(&self, a: &Alert) -> String {
        let t = a.time();
        // RFC 5424 allows at most six fractional digits.
        let timestamp = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        );
        let body = match self.config.format {
            AlertFormat::Json => a.to_falco_json().to_string(),
            AlertFormat::Text => a.to_text_line(),
        };
        let mut msg = format!(
            "<{}>1 {timestamp} {} {} {} {} - {body}",
            u16::from(self.facility) * 8 + u16::from(severity(a.priority)),
            header_field(&a.hostname, 255),
            header_field(&self.config.app_name, 48),
            header_field(&self.procid, 128),
            header_field(&a.rule_id, 32),
        );
        cut(&mut msg, self.config.max_message_bytes);
        msg
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    async fn tcp(&mut self) -> Result<&mut TcpStream, SendError> {
        // A receiver that closed the connection is only noticed by a write
        // that fails after a previous one "succeeded" into the void: look
        // for the close before writing, and reconnect.
        if let Some(s) = &self.tcp {
            let mut probe = [0u8; 1];
            match s.try_read(&mut probe) {
                Ok(0) => self.tcp = None,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(_) => {}
                Err(_) => self.tcp = None,
            }
        }
        if self.tcp.is_none() {
            let addr = self.config.address.clone();
            let stream = tokio::time::timeout(self.timeout(), TcpStream::connect(&addr))
                .await
                .map_err(|_| SendError::retry(format!("connecting to {addr} timed out")))?
                .map_err(|e| SendError::retry(format!("cannot connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            self.tcp = Some(stream);
        }
        Ok(self.tcp.as_mut().expect("connected above"))
    }

    async fn send_tcp(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        let mut buf = Vec::new();
        for a in alerts {
            let m = self.message(a);
            buf.extend_from_slice(format!("{} ", m.len()).as_bytes());
            buf.extend_from_slice(m.as_bytes());
        }
        let timeout = self.timeout();
        let addr = self.config.address.clone();
        let stream = self.tcp().await?;
        let written = tokio::time::timeout(timeout, async {
            stream.write_all(&buf).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.tcp = None;
                Err(SendError::retry(format!("writing to {addr}: {e}")).into())
            }
            Err(_) => {
                self.tcp = None;
                Err(SendError::retry(format!("writing to {addr} timed out")).into())
            }
        }
    }

    async fn send_udp(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        if self.udp.is_none() {
            let addr = tokio::net::lookup_host(&self.config.address)
                .await
                .map_err(|e| {
                    SendError::retry(format!("cannot resolve {}: {e}", self.config.address))
                })?
                .next()
                .ok_or_else(|| {
                    SendError::retry(format!("{} resolves to no address", self.config.address))
                })?;
            let local = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let socket = UdpSocket::bind(local)
                .await
                .map_err(|e| SendError::retry(format!("cannot open a UDP socket: {e}")))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| SendError::retry(format!("cannot address {addr}: {e}")))?;
            self.udp = Some(socket);
        }
        for (i, a) in alerts.iter().enumerate() {
            let m = self.message(a);
            let socket = self.udp.as_ref().expect("opened above");
            // UDP has no acknowledgement; a connected socket at least
            // reports an ICMP "port unreachable" from the previous datagram.
            if let Err(e) = socket.send(m.as_bytes()).await {
                self.udp = None;
                return Err(SendFailure {
                    delivered: i,
                    error: SendError::retry(format!("sending to {}: {e}", self.config.address)),
                });
            }
        }
        Ok(())
    }
}

impl Deliver for SyslogOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        match self.config.protocol {
            SyslogProtocol::Tcp => self.send_tcp(alerts).await,
            SyslogProtocol::Udp => self.send_udp(alerts).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_cuts_follow_rfc_5424() {
        assert_eq!(header_field("a b\tc", 10), "abc");
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field("abcdef", 3), "abc");
        let mut s = "héllo".to_string();
        cut(&mut s, 2);
        assert_eq!(s, "h");
        assert_eq!(severity(Priority::Emergency), 0);
        assert_eq!(severity(Priority::Debug), 7);
        let c: SyslogConfig =
            toml::from_str("address = \"127.0.0.1:514\"\nfacility = \"local9\"").unwrap();
        assert!(c.validate().unwrap_err().0.contains("local9"));
    }
}
