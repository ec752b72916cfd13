//! AKS: Diagnostic Settings records of the `kube-audit` and
//! `kube-audit-admin` categories.
//!
//! Each record carries the apiserver's own Event, as JSON text, in
//! `properties.log`: nothing is rebuilt, the text is passed on as it is.
//! Event Hubs messages hold `{"records": [...]}`; the Storage-account archive
//! (`insights-logs-kube-audit/…/PT1H.json`) holds one record per line. Records
//! of other categories (`kube-apiserver`, `guard`, `cluster-autoscaler`, …)
//! and other Azure records are skipped. The cluster is the last segment of
//! the record's `resourceId` (`…/MANAGEDCLUSTERS/<name>`), lower-cased, as
//! Azure upper-cases resource IDs in logs but AKS names are case-insensitive.

use serde_json::Value;

use super::{Unwrapping, join, opt_str, shown, type_name};

const AUDIT_CATEGORIES: [&str; 2] = ["kube-audit", "kube-audit-admin"];

/// Unwraps a record, `{"records": [...]}` or an array of records.
pub(super) fn unwrap(v: &Value, at: &str, out: &mut Unwrapping) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                record(item, &join(at, &format!("item {i}")), out);
            }
        }
        Value::Object(m) if m.contains_key("records") && !m.contains_key("category") => {
            match m.get("records") {
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        record(item, &join(at, &format!("records[{i}]")), out);
                    }
                }
                Some(other) => out.reject(
                    at,
                    "invalid",
                    format!("field `records` is {}, not an array", type_name(other)),
                ),
                None => unreachable!(),
            }
        }
        _ => record(v, at, out),
    }
}

fn record(v: &Value, at: &str, out: &mut Unwrapping) {
    match to_event(v) {
        Ok((json, cluster)) => out.event(at, json, cluster),
        Err(Outcome::Skip(reason)) => out.skip(at, "not_audit_category", reason),
        Err(Outcome::Invalid(reason)) => {
            out.reject(at, "invalid", format!("invalid AKS record: {reason}"))
        }
    }
}

enum Outcome {
    Skip(String),
    Invalid(String),
}

impl From<String> for Outcome {
    fn from(s: String) -> Self {
        Outcome::Invalid(s)
    }
}

/// The Event text and cluster of one record.
fn to_event(v: &Value) -> Result<(String, Option<String>), Outcome> {
    let Some(rec) = v.as_object() else {
        return Err(Outcome::Invalid(format!(
            "a record is an object, not {}",
            type_name(v)
        )));
    };
    let Some(category) = opt_str(rec, "category", "category")? else {
        return Err(Outcome::Skip(
            "record has no category: not a diagnostic record".into(),
        ));
    };
    if !AUDIT_CATEGORIES
        .iter()
        .any(|c| c.eq_ignore_ascii_case(category))
    {
        return Err(Outcome::Skip(format!(
            "category `{}` is not kube-audit or kube-audit-admin",
            shown(category)
        )));
    }
    // `properties` is an object; some exporters write it as JSON text.
    let parsed;
    let properties = match rec.get("properties") {
        Some(Value::Object(p)) => p,
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(p)) => {
                parsed = p;
                &parsed
            }
            _ => {
                return Err(Outcome::Invalid(
                    "field `properties` is a string that is not a JSON object".into(),
                ));
            }
        },
        None | Some(Value::Null) => {
            return Err(Outcome::Invalid("field `properties` is missing".into()));
        }
        Some(other) => {
            return Err(Outcome::Invalid(format!(
                "field `properties` is {}, not an object",
                type_name(other)
            )));
        }
    };
    let json = match properties.get("log") {
        Some(Value::String(s)) => s.trim().to_string(),
        // Already decoded by an exporter.
        Some(Value::Object(_)) => properties["log"].to_string(),
        None | Some(Value::Null) => {
            return Err(Outcome::Invalid("field `properties.log` is missing".into()));
        }
        Some(other) => {
            return Err(Outcome::Invalid(format!(
                "field `properties.log` is {}, not a string",
                type_name(other)
            )));
        }
    };
    let cluster = opt_str(rec, "resourceId", "resourceId")?.and_then(cluster_of);
    Ok((json, cluster))
}

/// `…/providers/Microsoft.ContainerService/managedClusters/<name>` → `<name>`.
fn cluster_of(resource_id: &str) -> Option<String> {
    let mut parts = resource_id.split('/');
    parts.find(|p| p.eq_ignore_ascii_case("managedClusters"))?;
    parts
        .next()
        .filter(|c| !c.is_empty())
        .map(str::to_ascii_lowercase)
}
