//! Alerts, and their serialisation in Falco's JSON shape so Falcosidekick,
//! Falco Talon and existing dashboards consume them unchanged.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Falco's eight priorities, most severe first (so `a < b` means `a` is
/// more severe).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Priority {
    Emergency,
    Alert,
    Critical,
    Error,
    Warning,
    Notice,
    Informational,
    Debug,
}

impl Priority {
    /// All eight, most severe first.
    pub const ALL: [Priority; 8] = [
        Priority::Emergency,
        Priority::Alert,
        Priority::Critical,
        Priority::Error,
        Priority::Warning,
        Priority::Notice,
        Priority::Informational,
        Priority::Debug,
    ];

    /// Falco's name, as alerts carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }

    /// At least as severe as `min`.
    pub fn at_least(self, min: Priority) -> bool {
        self <= min
    }
}

impl From<peregrine_sdk::Priority> for Priority {
    fn from(p: peregrine_sdk::Priority) -> Self {
        use peregrine_sdk::Priority as P;
        match p {
            P::Emergency => Priority::Emergency,
            P::Alert => Priority::Alert,
            P::Critical => Priority::Critical,
            P::Error => Priority::Error,
            P::Warning => Priority::Warning,
            P::Notice => Priority::Notice,
            P::Informational => Priority::Informational,
            P::Debug => Priority::Debug,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is none of Falco's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority `{0}`: expected one of {names}", names = Priority::ALL.map(Priority::as_str).join(", "))]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// Falco's names in any case, plus Falco's short `info`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("info") {
            return Ok(Priority::Informational);
        }
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownPriority(s.to_string()))
    }
}

/// The rule name of alerts that report a failing module.
pub const RULE_ERROR: &str = "Peregrine Rule Error";

/// The rule name of the alert that says a module was taken off for a tenant.
pub const MODULE_QUARANTINED: &str = "Peregrine Module Quarantined";

/// The output field that carries the rule's id. The host sets it on every
/// alert, from the rule the module declared, whatever the module put there:
/// operators route and mute on ids, which stay when a display name changes.
pub const RULE_ID_FIELD: &str = "peregrine.rule_id";

/// The output field that carries the cluster the event came from, set by
/// the host on every alert from the tenant, request or source.
pub const CLUSTER_FIELD: &str = "peregrine.cluster";

fn unnamed_cluster() -> Arc<str> {
    crate::tenants::DEFAULT_TENANT.into()
}

/// One alert, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Event time (nanoseconds since the Unix epoch).
    pub time_unix_nanos: i64,
    /// Display name of the rule (Falco's `rule`).
    pub rule: String,
    pub rule_id: String,
    pub priority: Priority,
    /// The module's output text, without Falco's time and priority prefix.
    pub output: String,
    pub tags: Vec<String>,
    pub fields: Vec<(String, Option<String>)>,
    pub tenant: Arc<str>,
    /// The cluster of the event. Alerts spooled before clusters existed
    /// read back as `default`.
    #[serde(default = "unnamed_cluster")]
    pub cluster: Arc<str>,
    /// Key of the module (its file name without `.wasm`).
    pub module: String,
    /// sha256 of the module that raised it.
    pub module_digest: String,
    pub audit_id: String,
    pub hostname: Arc<str>,
}

/// Falco's alert JSON. Field names and order follow Falco's output.
#[derive(Serialize)]
struct FalcoAlert<'a> {
    hostname: &'a str,
    output: String,
    priority: &'static str,
    rule: &'a str,
    source: &'static str,
    tags: &'a [String],
    time: String,
    output_fields: BTreeMap<&'a str, Option<&'a str>>,
}

impl Alert {
    pub fn time(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.time_unix_nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// RFC 3339 with nanoseconds, as Falco writes `time`.
    pub fn time_rfc3339(&self) -> String {
        let t = self.time();
        let base = t
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        // Falco always prints nine fractional digits.
        format!("{}.{:09}Z", base.trim_end_matches('Z'), t.nanosecond())
    }

    /// Falco's `output`: the time of day, the priority, then the rule's text.
    pub fn falco_output(&self) -> String {
        let t = self.time();
        format!(
            "{:02}:{:02}:{:02}.{:09}: {} {}",
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond(),
            self.priority,
            self.output
        )
    }

    /// The value of output field `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Falco's JSON alert. Peregrine adds its provenance as output fields
    /// (`peregrine.rule_id`, `peregrine.tenant`, `peregrine.cluster`, `peregrine.module`,
    /// `peregrine.module_digest`, `ka.auditid`), which Falco consumers pass
    /// through.
    pub fn to_falco_json(&self) -> serde_json::Value {
        let mut output_fields: BTreeMap<&str, Option<&str>> = self
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        output_fields.insert(RULE_ID_FIELD, Some(&self.rule_id));
        output_fields.insert("peregrine.tenant", Some(&self.tenant));
        output_fields.insert(CLUSTER_FIELD, Some(&self.cluster));
        output_fields.insert("peregrine.module", Some(&self.module));
        output_fields.insert("peregrine.module_digest", Some(&self.module_digest));
        output_fields
            .entry("ka.auditid")
            .or_insert(Some(&self.audit_id));
        serde_json::to_value(FalcoAlert {
            hostname: &self.hostname,
            output: self.falco_output(),
            priority: self.priority.as_str(),
            rule: &self.rule,
            source: "k8s_audit",
            tags: &self.tags,
            time: self.time_rfc3339(),
            output_fields,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// One readable line.
    pub fn to_text_line(&self) -> String {
        format!(
            "{} {:<13} {} [{}] {} (tenant={} cluster={} module={})",
            self.time_rfc3339(),
            self.priority.as_str(),
            self.rule,
            self.tags.join(","),
            self.output,
            self.tenant,
            self.cluster,
            self.module
        )
    }
}

/// How alerts are printed (the `stdout` output, files, syslog, replay).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// Falco's JSON alert, one per line.
    #[default]
    Json,
    /// One readable line per alert.
    Text,
}

/// Which of a module's matching rules alert for an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuleMatching {
    /// Falco's default: per module, only the first matching rule in the
    /// module's declared order alerts. For parity with Falco.
    First,
    /// Every matching rule alerts. The default: with `first`, a catch-all
    /// rule early in a module (Falco's `Disallowed K8s User`) hides every
    /// specific detection after it for the same event.
    #[default]
    All,
}

/// Where the alerts of the evaluation stage go.
pub trait AlertSink: Send + Sync {
    fn submit(&self, alerts: Vec<Alert>);

    /// Like [`AlertSink::submit`], with the batch's share of durability:
    /// released once the alerts are stored wherever they must survive a
    /// crash. A sink that keeps nothing past the call releases it at once.
    fn submit_durable(&self, alerts: Vec<Alert>, durable: crate::durable::Durable) {
        self.submit(alerts);
        durable.release();
    }
}

/// Where alerts come from: stamped on each alert.
pub struct AlertOrigin<'a> {
    pub module: &'a str,
    pub digest: &'a str,
    pub tenant: &'a Arc<str>,
    pub cluster: &'a Arc<str>,
    pub hostname: &'a Arc<str>,
}

/// A module's alerts for one event, once checked against its metadata.
#[derive(Debug, Default)]
pub struct Accepted {
    /// In the module's declared rule order, after `rule_matching`.
    pub alerts: Vec<Alert>,
    /// Rule ids the module does not declare (a module bug).
    pub undeclared: Vec<String>,
    /// Alerts of rules the module reports disabled, dropped.
    pub disabled: usize,
}

/// Turns a module's alerts for `ev` into host alerts: names, priorities and
/// tags from the module's metadata (`lookup` finds a rule and its position by
/// id), and `rule_matching` (`first` keeps the alerts of the first matching
/// rule in the module's order). The native side of `peregrine bench` shares
/// it, so both sides do the same work.
pub fn accept_alerts<'r>(
    lookup: impl Fn(&str) -> Option<(usize, &'r peregrine_sdk::RuleInfo)>,
    rule_matching: RuleMatching,
    origin: &AlertOrigin<'_>,
    ev: &peregrine_sdk::audit::AuditEvent,
    alerts: Vec<peregrine_sdk::Alert>,
) -> Accepted {
    let mut out = Accepted::default();
    let mut accepted: Vec<(usize, Alert)> = Vec::with_capacity(alerts.len());
    for a in alerts {
        let Some((index, rule)) = lookup(&a.rule_id) else {
            out.undeclared.push(a.rule_id);
            continue;
        };
        if !rule.enabled {
            out.disabled += 1;
            continue;
        }
        // The rule id comes from the host's view of the rule, never from the
        // module's fields.
        let mut fields: Vec<(String, Option<String>)> = a
            .fields
            .into_iter()
            .filter(|(k, _)| k != RULE_ID_FIELD)
            .collect();
        fields.push((RULE_ID_FIELD.into(), Some(rule.id.clone())));
        let mut tags = rule.tags.clone();
        for t in a.tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        accepted.push((
            index,
            Alert {
                time_unix_nanos: event_time(ev),
                rule: rule.name.clone(),
                rule_id: rule.id.clone(),
                priority: a.priority.unwrap_or(rule.priority).into(),
                output: a.output,
                tags,
                fields,
                tenant: origin.tenant.clone(),
                cluster: origin.cluster.clone(),
                module: origin.module.to_string(),
                module_digest: origin.digest.to_string(),
                audit_id: ev.audit_id.clone(),
                hostname: origin.hostname.clone(),
            },
        ));
    }
    if rule_matching == RuleMatching::First
        && let Some(first) = accepted.iter().map(|(i, _)| *i).min()
    {
        accepted.retain(|(i, _)| *i == first);
    }
    out.alerts = accepted.into_iter().map(|(_, a)| a).collect();
    out
}

/// Alerts are stamped with the event's time, as Falco does; events without a
/// usable timestamp get the time they were evaluated.
pub(crate) fn event_time(ev: &peregrine_sdk::audit::AuditEvent) -> i64 {
    ev.time_unix_nanos()
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Alert {
        Alert {
            time_unix_nanos: 1_540_475_929_730_588_000,
            rule: "Create Privileged Pod".into(),
            rule_id: "create-privileged-pod".into(),
            priority: Priority::Warning,
            output: "Pod started with privileged container (user=alice)".into(),
            tags: vec!["k8s".into(), "T1610".into()],
            fields: vec![
                ("ka.user.name".into(), Some("alice".into())),
                ("ka.target.name".into(), None),
            ],
            tenant: "default".into(),
            cluster: "prod-eu".into(),
            module: "falco_k8s_audit".into(),
            module_digest: "ab".repeat(32),
            audit_id: "id-1".into(),
            hostname: "node-1".into(),
        }
    }

    #[test]
    fn serialises_in_falco_shape() {
        let v = sample().to_falco_json();
        assert_eq!(v["rule"], "Create Privileged Pod");
        assert_eq!(v["priority"], "Warning");
        assert_eq!(v["source"], "k8s_audit");
        assert_eq!(v["hostname"], "node-1");
        assert_eq!(v["time"], "2018-10-25T13:58:49.730588000Z");
        assert_eq!(
            v["output"],
            "13:58:49.730588000: Warning Pod started with privileged container (user=alice)"
        );
        assert_eq!(v["tags"][1], "T1610");
        assert_eq!(v["output_fields"]["ka.user.name"], "alice");
        assert!(v["output_fields"]["ka.target.name"].is_null());
        assert_eq!(v["output_fields"]["peregrine.module"], "falco_k8s_audit");
        assert_eq!(v["output_fields"]["ka.auditid"], "id-1");
        assert_eq!(v["output_fields"]["peregrine.cluster"], "prod-eu");
        assert_eq!(
            v["output_fields"]["peregrine.rule_id"],
            "create-privileged-pod"
        );
    }

    #[test]
    fn the_rule_id_field_is_the_alerts_rule_id() {
        let mut a = sample();
        a.fields
            .push((RULE_ID_FIELD.into(), Some("something-else".into())));
        let v = a.to_falco_json();
        assert_eq!(
            v["output_fields"]["peregrine.rule_id"],
            "create-privileged-pod"
        );
    }

    #[test]
    fn priority_order_is_severity() {
        assert!(Priority::Critical.at_least(Priority::Warning));
        assert!(Priority::Warning.at_least(Priority::Warning));
        assert!(!Priority::Notice.at_least(Priority::Warning));
    }

    #[test]
    fn priority_names_parse_in_any_case_and_print_as_falco_spells_them() {
        for p in Priority::ALL {
            assert_eq!(p.to_string().parse::<Priority>(), Ok(p));
            assert_eq!(p.as_str().to_ascii_lowercase().parse::<Priority>(), Ok(p));
            assert_eq!(p.as_str().to_ascii_uppercase().parse::<Priority>(), Ok(p));
        }
        assert_eq!("info".parse::<Priority>(), Ok(Priority::Informational));
        assert_eq!("INFO".parse::<Priority>(), Ok(Priority::Informational));
        assert_eq!(Priority::Informational.to_string(), "Informational");
        let err = "loud".parse::<Priority>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown priority `loud`: expected one of Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug"
        );
        assert!("warn".parse::<Priority>().is_err());
    }
}
