//! The routes' configuration (`[routing]`, `[[routes]]`): what an alert
//! must be to match a route, and the checks made before anything starts.
//! Apart from the router, so the configuration can hold it without
//! importing the code that runs it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::alert::{Alert, Priority};
use crate::outputs::OutputKindConfig;

/// `[routing]`: what happens to alerts no route matches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Outputs of alerts that no `[[routes]]` entry matches. `stdout` exists
    /// without being declared. Empty: such alerts are counted in
    /// `peregrine_alerts_unrouted_total` and go nowhere.
    pub default_outputs: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_outputs: vec!["stdout".into()],
        }
    }
}

/// One `[[routes]]` entry. Empty matchers match everything; within a
/// matcher list any entry may match; all given matchers must match.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Name in metrics and logs. Default: `routes[<index>]`.
    pub name: Option<String>,
    /// Outputs the matching alerts go to.
    pub outputs: Vec<String>,
    /// Least severe priority that matches (Falco's names, any case).
    #[serde(deserialize_with = "priority_name")]
    pub min_priority: Option<Priority>,
    /// Rule names or rule ids, with `*` and `?` globs.
    pub rules: Vec<String>,
    /// Tags (globs); the alert must carry at least one of them.
    pub tags: Vec<String>,
    /// Tenant ids (globs).
    pub tenants: Vec<String>,
    /// Cluster names, `peregrine.cluster` (globs).
    pub clusters: Vec<String>,
    /// Module names, the file name without `.wasm` (globs).
    pub modules: Vec<String>,
    /// Stop here: later routes are not tried for alerts this route matches.
    #[serde(rename = "final")]
    pub final_route: bool,
    /// Fold identical alerts within this many seconds; 0 turns folding off.
    pub dedup_window_secs: u64,
    /// Output fields that, with rule, tenant, cluster and module, make alerts
    /// identical. Empty: the alert's output text.
    pub dedup_key: Vec<String>,
    /// Most distinct alerts a route's fold windows track; when full, the
    /// oldest window closes early.
    pub dedup_max_keys: usize,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: None,
            outputs: Vec::new(),
            min_priority: None,
            rules: Vec::new(),
            tags: Vec::new(),
            tenants: Vec::new(),
            clusters: Vec::new(),
            modules: Vec::new(),
            final_route: false,
            dedup_window_secs: 0,
            dedup_key: Vec::new(),
            dedup_max_keys: 10_000,
        }
    }
}

/// A priority by name, in any case (see [`Priority`]'s `FromStr`).
fn priority_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Priority>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, text))
}

impl RouteConfig {
    /// Whether the alert matches this route's matchers.
    pub fn matches(&self, a: &Alert) -> bool {
        self.min_priority.is_none_or(|min| a.priority.at_least(min))
            && (self.rules.is_empty()
                || any_glob(&self.rules, &a.rule)
                || any_glob(&self.rules, &a.rule_id))
            && (self.tags.is_empty() || a.tags.iter().any(|t| any_glob(&self.tags, t)))
            && (self.tenants.is_empty() || any_glob(&self.tenants, &a.tenant))
            && (self.clusters.is_empty() || any_glob(&self.clusters, &a.cluster))
            && (self.modules.is_empty() || any_glob(&self.modules, &a.module))
    }
}

/// Checks routes and outputs without opening anything.
pub fn validate(
    routing: &RoutingConfig,
    routes: &[RouteConfig],
    outputs: &BTreeMap<String, OutputKindConfig>,
) -> Result<(), String> {
    crate::outputs::validate(outputs)?;
    let known = |n: &str| n == "stdout" || outputs.contains_key(n);
    for n in &routing.default_outputs {
        if !known(n) {
            return Err(format!(
                "routing.default_outputs names `{n}`, which is not an [outputs.{n}] table"
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        let label = route_label(i, r);
        if !names.insert(label.clone()) {
            return Err(format!("two routes are named `{label}`"));
        }
        if r.outputs.is_empty() {
            return Err(format!("route `{label}` has no outputs"));
        }
        for n in &r.outputs {
            if !known(n) {
                return Err(format!(
                    "route `{label}` names output `{n}`, which is not an [outputs.{n}] table"
                ));
            }
        }
        if r.dedup_window_secs > 0 && r.dedup_max_keys == 0 {
            return Err(format!("route `{label}`: dedup_max_keys must be positive"));
        }
    }
    Ok(())
}

pub(crate) fn route_label(i: usize, r: &RouteConfig) -> String {
    r.name.clone().unwrap_or_else(|| format!("routes[{i}]"))
}
