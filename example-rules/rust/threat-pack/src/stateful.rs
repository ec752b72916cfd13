//! Rules that count and correlate across events, through the host's
//! `state` interface. Windows are in event time (`time-unix-nanos`). The host
//! keeps the state per tenant and module, and across reloads of the module;
//! keys carry the cluster the event names, when it names one.
//!
//! A burst rule alerts once when its count reaches the threshold, then stays
//! quiet while the burst goes on: the "alerted" marker is a `first-seen` key
//! with the rule's window as its time to live, refreshed by every event over
//! the threshold, so one long burst is one alert and a new burst after a quiet
//! window is a new one.

use peregrine_sdk::Alert;
use peregrine_sdk::state::{counter_add, distinct_add, first_seen};

use crate::Ctx;
use crate::catalog::{RBAC_RESOURCES, WORKLOADS};

fn now(x: &Ctx) -> i64 {
    x.event.time_unix_nanos()
}

/// True once per burst of `subject` (see the module comment).
fn first_alert_of_burst(x: &Ctx, subject: &str) -> bool {
    first_seen(
        &x.key(&["alerted", subject]),
        x.settings.window_seconds,
        now(x),
    )
}

fn burst_alert(x: &Ctx, what: String, count: u64) -> Alert {
    x.alert(&what)
        .field("threat.count", count)
        .field("threat.threshold", u64::from(x.settings.threshold))
        .field(
            "threat.window_seconds",
            u64::from(x.settings.window_seconds),
        )
}

pub fn secrets_read_burst(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    if e.subresource().is_some() {
        return None;
    }
    let name = e.name()?;
    let user = e.user_name();
    let member = format!("{}/{name}", e.namespace().unwrap_or(""));
    let count = distinct_add(
        &x.key(&["reads", user]),
        &member,
        x.settings.window_seconds,
        now(x),
    );
    if count < u64::from(x.settings.threshold) || !first_alert_of_burst(x, user) {
        return None;
    }
    Some(burst_alert(
        x,
        format!(
            "{count} distinct secrets read within {}s",
            x.settings.window_seconds
        ),
        count,
    ))
}

pub fn forbidden_storm(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    if !matches!(e.response_code(), Some(401 | 403)) {
        return None;
    }
    let window = x.settings.window_seconds;
    let threshold = u64::from(x.settings.threshold);
    // A 401 has no authenticated user: its principal is only its source IP.
    let principal = Some(e.user_name()).filter(|u| !u.is_empty());
    let ip = e.source_ips().first().map(String::as_str);
    let mut crossed = Vec::new();
    let mut count = 0;
    for (kind, subject) in [("principal", principal), ("sourceip", ip)] {
        let Some(subject) = subject else { continue };
        let n = counter_add(&x.key(&[kind, subject]), 1, window, now(x));
        if n >= threshold && first_alert_of_burst(x, &format!("{kind}={subject}")) {
            crossed.push(format!("{kind} {subject}"));
            count = count.max(n);
        }
    }
    if crossed.is_empty() {
        return None;
    }
    Some(burst_alert(
        x,
        format!(
            "{count} denied requests within {window}s for {}",
            crossed.join(" and ")
        ),
        count,
    ))
}

pub fn api_enumeration_burst(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let resource = e.resource()?;
    let group = e
        .object_ref
        .as_ref()
        .and_then(|o| o.api_group.as_deref())
        .unwrap_or("");
    let kind = match e.subresource() {
        Some(sub) => format!("{group}/{resource}/{sub}"),
        None => format!("{group}/{resource}"),
    };
    let user = e.user_name();
    let count = distinct_add(
        &x.key(&["types", user]),
        &kind,
        x.settings.window_seconds,
        now(x),
    );
    if count < u64::from(x.settings.threshold) || !first_alert_of_burst(x, user) {
        return None;
    }
    Some(burst_alert(
        x,
        format!(
            "{count} distinct resource types read within {}s",
            x.settings.window_seconds
        ),
        count,
    ))
}

/// The product of a user agent, without version or platform, lower case:
/// `kubectl/v1.30.2 (linux/amd64) kubernetes/39683505` gives `kubectl`,
/// `python-requests/2.31.0` gives `python-requests`, `kubectl.exe/v1.29`
/// gives `kubectl`.
pub fn user_agent_family(user_agent: &str) -> String {
    let product = user_agent
        .trim()
        .split(['/', ' ', '('])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    product
        .strip_suffix(".exe")
        .map(str::to_string)
        .unwrap_or(product)
}

/// New user-agent family for a known person.
///
/// Three facts are needed: the identity has been seen before, it was first
/// seen at least `learning_seconds` ago, and this family is new for it. The
/// state interface stores no timestamps a rule can read back, so:
/// - `known`: `first-seen(identity, retention)`. False means the identity was
///   seen within the retention period (every event refreshes it).
/// - `learning`: the first event of an identity adds the member `born` to a
///   distinct set whose window is the learning period. Later events add the
///   member `probe` and read the count: 2 while `born` is less than
///   `learning_seconds` old, 1 after it expired. Members are timed to the
///   second, so this is the learning period exactly, to the second, in event
///   time, and the set never holds more than two members.
/// - `new family`: `first-seen(identity + family, retention)`, called on
///   every event, so families used while learning are learned too.
///
/// An identity idle for longer than the retention period starts learning
/// again. If the host evicts keys under memory pressure an identity can leave
/// its learning period early; evictions are counted by the host.
pub fn new_user_agent(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let user = e.user_name();
    if user.is_empty() || crate::config::any_glob(&x.config.non_human_users, user) {
        return None;
    }
    let family = user_agent_family(e.user_agent()?);
    if family.is_empty() {
        return None;
    }
    let (retention, learning, t) = (
        x.settings.retention_seconds,
        x.settings.learning_seconds,
        now(x),
    );
    let known = !first_seen(&x.key(&["identity", user]), retention, t);
    let birth = x.key(&["learning", user]);
    let still_learning = if known {
        distinct_add(&birth, "probe", learning, t) > 1
    } else {
        distinct_add(&birth, "born", learning, t);
        true
    };
    let new_family = first_seen(&x.key(&["family", user, &family]), retention, t);
    if !known || still_learning || !new_family {
        return None;
    }
    Some(
        x.alert(&format!("{user} used a new client: {family}"))
            .field("threat.user_agent_family", family),
    )
}

pub fn rbac_then_workload(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    let resource = e.resource()?;
    let user = e.user_name();
    // A set of at most two members: `rbac` (refreshed by every RBAC write)
    // and `probe` (added by workload writes to read the count).
    let key = x.key(&["rbac", user]);
    let window = x.settings.window_seconds;
    if RBAC_RESOURCES.contains(&resource) {
        if e.subresource().is_none() {
            distinct_add(&key, "rbac", window, now(x));
        }
        return None;
    }
    let workload = resource == "pods" || WORKLOADS.contains(&resource);
    let direct = e.subresource().is_none()
        || (resource == "pods" && e.subresource() == Some("ephemeralcontainers"));
    if !workload || !direct || !matches!(e.verb(), "create" | "patch") {
        return None;
    }
    let rbac_recent = distinct_add(&key, "probe", window, now(x)) > 1;
    if !rbac_recent || !first_alert_of_burst(x, user) {
        return None;
    }
    Some(
        x.alert(&format!(
            "Workload {} by {user} within {window}s of an RBAC write by the same user",
            if e.verb() == "create" {
                "created"
            } else {
                "patched"
            }
        ))
        .field("threat.window_seconds", u64::from(window)),
    )
}

pub fn mass_deletion(x: &Ctx) -> Option<Alert> {
    let e = x.event;
    if e.subresource().is_some() {
        return None;
    }
    let resource = e.resource()?;
    // A deletecollection names no object: it counts once per collection.
    let member = format!(
        "{resource}/{}/{}",
        e.namespace().unwrap_or(""),
        e.name().unwrap_or("*")
    );
    let user = e.user_name();
    let count = distinct_add(
        &x.key(&["deleted", user]),
        &member,
        x.settings.window_seconds,
        now(x),
    );
    if count < u64::from(x.settings.threshold) || !first_alert_of_burst(x, user) {
        return None;
    }
    Some(burst_alert(
        x,
        format!(
            "{count} namespaces, workloads or volumes deleted within {}s",
            x.settings.window_seconds
        ),
        count,
    ))
}

#[cfg(test)]
mod tests {
    use super::user_agent_family;

    #[test]
    fn user_agent_families_drop_version_and_platform() {
        assert_eq!(
            user_agent_family("kubectl/v1.30.2 (linux/amd64) kubernetes/3968350"),
            "kubectl"
        );
        assert_eq!(
            user_agent_family("kubectl.exe/v1.29.0 (windows/amd64)"),
            "kubectl"
        );
        assert_eq!(
            user_agent_family("python-requests/2.31.0"),
            "python-requests"
        );
        assert_eq!(user_agent_family("curl/8.5.0"), "curl");
        assert_eq!(user_agent_family("Mozilla/5.0 (X11)"), "mozilla");
        assert_eq!(user_agent_family(""), "");
    }
}
