//! `type = "alertmanager"`: Prometheus Alertmanager's v2 API
//! (`POST /api/v2/alerts`), one request per batch. Labels say what the alert
//! is (Alertmanager groups, silences and routes on them); annotations carry
//! the details.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::BuildError;
use super::delivery::{Deliver, SendFailure};
use super::http::{self, HttpTarget, HttpTargetConfig};
use crate::alert::{Alert, Priority};

/// `url` is Alertmanager's base URL, e.g. `http://alertmanager:9093`;
/// `/api/v2/alerts` is appended.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    #[serde(flatten)]
    pub target: HttpTargetConfig,
    /// Headers sent with every request (e.g. `Authorization` for a proxy).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Labels added to every alert, e.g. `cluster = "prod-eu"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Output fields that become labels: field name -> label name, e.g.
    /// `"ka.user.name" = "user"`. Every label splits Alertmanager's
    /// grouping further, so pick few.
    #[serde(default)]
    pub field_labels: BTreeMap<String, String>,
    /// Seconds after which Alertmanager resolves the alert; 0 leaves it to
    /// Alertmanager's `resolve_timeout`.
    #[serde(default)]
    pub expire_after_secs: u64,
    /// `generatorURL` of every alert, e.g. a link to Peregrine's UI.
    #[serde(default)]
    pub generator_url: Option<String>,
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`, and `__` is reserved.
fn valid_label(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !name.starts_with("__")
}

/// Alertmanager's customary `severity` values.
fn severity(p: Priority) -> &'static str {
    match p {
        Priority::Emergency | Priority::Alert | Priority::Critical => "critical",
        Priority::Error | Priority::Warning => "warning",
        Priority::Notice | Priority::Informational | Priority::Debug => "info",
    }
}

impl AlertmanagerConfig {
    fn endpoint(&self) -> Result<url::Url, BuildError> {
        let base = self.target.url.trim_end_matches('/');
        let url = if base.ends_with("/api/v2/alerts") {
            base.to_string()
        } else {
            format!("{base}/api/v2/alerts")
        };
        http::parse_url("url", &url)
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        self.endpoint()?;
        http::header_map(&self.headers)?;
        for name in self.labels.keys().chain(self.field_labels.values()) {
            if !valid_label(name) {
                return Err(BuildError(format!(
                    "`{name}` is not a valid Alertmanager label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
                )));
            }
        }
        Ok(())
    }

    pub fn build(&self) -> Result<AlertmanagerOutput, BuildError> {
        self.validate()?;
        Ok(AlertmanagerOutput {
            target: HttpTarget {
                client: self.target.client()?,
                url: self.endpoint()?,
                headers: http::header_map(&self.headers)?,
            },
            config: self.clone(),
        })
    }
}

pub struct AlertmanagerOutput {
    target: HttpTarget,
    config: AlertmanagerConfig,
}

impl AlertmanagerOutput {
    /// One alert in the v2 API's `postableAlert` shape.
    pub fn alert(&self, a: &Alert, now: time::OffsetDateTime) -> serde_json::Value {
        let mut labels: BTreeMap<String, String> = self.config.labels.clone();
        labels.insert("alertname".into(), a.rule.clone());
        labels.insert("rule_id".into(), a.rule_id.clone());
        labels.insert("priority".into(), a.priority.as_str().into());
        labels.insert("severity".into(), severity(a.priority).into());
        labels.insert("tenant".into(), a.tenant.to_string());
        labels.insert("module".into(), a.module.clone());
        labels.insert("source".into(), "k8s_audit".into());
        if let Some(ns) = a.field("ka.target.namespace").filter(|ns| !ns.is_empty()) {
            labels.insert("namespace".into(), ns.to_string());
        }
        for (field, label) in &self.config.field_labels {
            if let Some(v) = a.field(field).filter(|v| !v.is_empty()) {
                labels.insert(label.clone(), v.to_string());
            }
        }
        let fields: BTreeMap<&str, Option<&str>> = a
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let mut alert = json!({
            "labels": labels,
            "annotations": {
                "summary": a.output,
                "description": a.falco_output(),
                "audit_id": a.audit_id,
                "hostname": a.hostname.to_string(),
                "module_digest": a.module_digest,
                "tags": a.tags.join(","),
                "output_fields": serde_json::to_string(&fields).unwrap_or_default(),
            },
            "startsAt": a.time_rfc3339(),
        });
        if self.config.expire_after_secs > 0 {
            // Never before startsAt, which Alertmanager would refuse.
            let ends = now.max(a.time())
                + time::Duration::seconds(self.config.expire_after_secs.min(i64::MAX as u64) as i64);
            if let Ok(t) = ends.format(&Rfc3339) {
                alert["endsAt"] = json!(t);
            }
        }
        if let Some(g) = &self.config.generator_url {
            alert["generatorURL"] = json!(g);
        }
        alert
    }
}

impl Deliver for AlertmanagerOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        let now = time::OffsetDateTime::now_utc();
        let body: Vec<serde_json::Value> = alerts.iter().map(|a| self.alert(a, now)).collect();
        let body = serde_json::to_vec(&body).unwrap_or_default();
        self.target.post_json(body).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_are_checked() {
        assert!(valid_label("cluster"));
        assert!(valid_label("_x1"));
        assert!(!valid_label("1x"));
        assert!(!valid_label("ka.user"));
        assert!(!valid_label("__name"));
        let c: AlertmanagerConfig = toml::from_str(
            "url = \"http://am:9093\"\nfield_labels = { \"ka.user.name\" = \"user.name\" }",
        )
        .unwrap();
        assert!(c.validate().is_err());
        let c: AlertmanagerConfig = toml::from_str("url = \"http://am:9093/\"").unwrap();
        assert_eq!(
            c.endpoint().unwrap().as_str(),
            "http://am:9093/api/v2/alerts"
        );
    }
}
