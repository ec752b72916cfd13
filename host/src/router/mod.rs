//! Alert routing: which outputs an alert goes to, and folding of duplicate
//! alerts.
//!
//! Routes (`[[routes]]`) are tried in order. Every route that matches sends
//! the alert to its outputs (an output named by several matching routes
//! gets it once), until a matching route marked `final`. An alert that no
//! route matches goes to `routing.default_outputs` (stdout unless changed).
//!
//! A route with `dedup_window_secs` folds identical alerts (same rule,
//! tenant, cluster, module and dedup key): the first is sent at once, the ones that
//! follow within the window are counted, and when the window closes one
//! alert stands for them, carrying the count in `peregrine.folded`. Nothing
//! is delayed and nothing disappears without a trace.
//!
//! Starting, flushing and stopping the outputs themselves is
//! [`crate::outputs::Outputs`]'s; the router only decides where alerts go.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::alert::Alert;
use crate::alert::AlertSink;
use crate::config::PeregrineConfig;
use crate::durable::Durable;
use crate::outputs::{FlushLoop, Outputs, OutputsError};

mod config;
use config::route_label;
pub use config::{RouteConfig, RoutingConfig, glob_match, validate};

/// Fold windows of one route.
struct Dedup {
    window: Duration,
    key_fields: Vec<String>,
    max_keys: usize,
    windows: HashMap<Vec<String>, FoldWindow>,
    /// Windows in the order they opened (all have the same length, so this
    /// is also the order they close). Entries of reopened keys are stale and
    /// recognised by their start time.
    order: VecDeque<(Vec<String>, Instant)>,
}

struct FoldWindow {
    started: Instant,
    folded: u64,
    last: Option<Alert>,
}

struct Admit {
    send: bool,
    summaries: Vec<Alert>,
}

impl Dedup {
    fn key(&self, a: &Alert) -> Vec<String> {
        // The full values, not a hash: an attacker who shapes audit events
        // must not be able to fold someone else's alert into theirs.
        let mut k = vec![
            a.rule_id.clone(),
            a.tenant.to_string(),
            a.cluster.to_string(),
            a.module.clone(),
        ];
        if self.key_fields.is_empty() {
            k.push(a.output.clone());
        } else {
            for f in &self.key_fields {
                k.push(a.field(f).unwrap_or("").to_string());
            }
        }
        k
    }

    fn summary(&self, w: FoldWindow) -> Option<Alert> {
        let mut a = w.last?;
        let secs = self.window.as_secs();
        a.output = format!(
            "{} (and {} more like it within {secs}s)",
            a.output, w.folded
        );
        a.fields
            .push(("peregrine.folded".into(), Some(w.folded.to_string())));
        a.fields
            .push(("peregrine.fold_window_secs".into(), Some(secs.to_string())));
        Some(a)
    }

    fn admit(&mut self, a: &Alert, now: Instant) -> Admit {
        let key = self.key(a);
        let mut summaries = Vec::new();
        if let Some(w) = self.windows.get_mut(&key) {
            if now.duration_since(w.started) < self.window {
                w.folded += 1;
                w.last = Some(a.clone());
                return Admit {
                    send: false,
                    summaries,
                };
            }
            // Closed but not yet flushed: flush it, then open a new one.
            if let Some(old) = self.windows.remove(&key) {
                summaries.extend(self.summary(old));
            }
        }
        while self.windows.len() >= self.max_keys {
            let Some((k, started)) = self.order.pop_front() else {
                break;
            };
            if self.windows.get(&k).is_some_and(|w| w.started == started)
                && let Some(old) = self.windows.remove(&k)
            {
                summaries.extend(self.summary(old));
            }
        }
        self.windows.insert(
            key.clone(),
            FoldWindow {
                started: now,
                folded: 0,
                last: None,
            },
        );
        self.order.push_back((key, now));
        Admit {
            send: true,
            summaries,
        }
    }

    /// Closes the windows that are over (all of them with `all`).
    fn close(&mut self, now: Instant, all: bool) -> Vec<Alert> {
        let mut out = Vec::new();
        while let Some((_, started)) = self.order.front() {
            if !all && now.duration_since(*started) < self.window {
                break;
            }
            let (k, started) = self.order.pop_front().expect("front exists");
            if self.windows.get(&k).is_some_and(|w| w.started == started)
                && let Some(w) = self.windows.remove(&k)
            {
                out.extend(self.summary(w));
            }
        }
        out
    }
}

struct Route {
    label: String,
    config: RouteConfig,
    outputs: Vec<usize>,
    dedup: Option<Mutex<Dedup>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid routing configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Outputs(#[from] OutputsError),
}

/// Routes alerts from the evaluation workers to the outputs.
pub struct AlertRouter {
    routes: Arc<Vec<Route>>,
    default_outputs: Vec<usize>,
    outputs: Arc<Outputs>,
    /// Sends the summaries of fold windows as they close; only when a
    /// route folds.
    flusher: Option<FlushLoop>,
    shut_down: AtomicBool,
}

impl AlertRouter {
    /// Validates the routes, opens every output's spool and starts the
    /// outputs.
    pub fn start(config: &PeregrineConfig) -> Result<AlertRouter, RouterError> {
        validate(&config.routing, &config.routes, &config.outputs).map_err(RouterError::Invalid)?;
        let outputs = Arc::new(Outputs::start(config)?);
        let index = |n: &String| outputs.index_of(n).expect("validated output name");
        let routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route {
                label: route_label(i, r),
                config: r.clone(),
                outputs: r.outputs.iter().map(index).collect(),
                dedup: (r.dedup_window_secs > 0).then(|| {
                    Mutex::new(Dedup {
                        window: Duration::from_secs(r.dedup_window_secs),
                        key_fields: r.dedup_key.clone(),
                        max_keys: r.dedup_max_keys,
                        windows: HashMap::new(),
                        order: VecDeque::new(),
                    })
                }),
            })
            .collect();
        let default_outputs: Vec<usize> =
            config.routing.default_outputs.iter().map(index).collect();
        for h in outputs.handles() {
            let used = default_outputs
                .iter()
                .chain(routes.iter().flat_map(|r| r.outputs.iter()));
            if !used
                .into_iter()
                .any(|&i| outputs.index_of(&h.name) == Some(i))
            {
                tracing::warn!(output = %h.name, "no route sends alerts to this output; it only delivers what its spool holds");
            }
        }
        let routes = Arc::new(routes);
        let flusher = fold_tick(&routes).map(|tick| {
            let routes = routes.clone();
            let outputs = outputs.clone();
            FlushLoop::spawn("peregrine-fold", tick, move || {
                send_closed_windows(&routes, &outputs, Instant::now())
            })
        });
        Ok(AlertRouter {
            routes,
            default_outputs,
            outputs,
            flusher,
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// Sends what the fold windows hold, then stops the outputs after
    /// their grace period. Blocks.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(f) = &self.flusher {
            f.stop();
        }
        let mut per_output: Vec<Vec<Alert>> = vec![Vec::new(); self.outputs.handles().len()];
        for r in self.routes.iter() {
            if let Some(d) = &r.dedup {
                let summaries = d
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .close(Instant::now(), true);
                for s in summaries {
                    for &o in &r.outputs {
                        per_output[o].push(s.clone());
                    }
                }
            }
        }
        for (o, alerts) in per_output.into_iter().enumerate() {
            self.outputs.handles()[o].enqueue(alerts);
        }
        self.outputs.shutdown();
    }
}

/// How often fold windows are checked, from the shortest of them (a window
/// closes at most this late); `None` when no route folds.
fn fold_tick(routes: &[Route]) -> Option<Duration> {
    let shortest = routes
        .iter()
        .filter(|r| r.dedup.is_some())
        .map(|r| Duration::from_secs(r.config.dedup_window_secs))
        .min()?;
    Some((shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)))
}

/// Closes the fold windows that are over and sends their summaries.
fn send_closed_windows(routes: &[Route], outputs: &Outputs, now: Instant) {
    for r in routes {
        let Some(d) = &r.dedup else { continue };
        let summaries = d
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close(now, false);
        if summaries.is_empty() {
            continue;
        }
        for &o in &r.outputs {
            outputs.handles()[o].enqueue(summaries.clone());
        }
    }
}

impl AlertSink for AlertRouter {
    fn submit(&self, alerts: Vec<Alert>) {
        self.submit_durable(alerts, Durable::none());
    }

    /// Every output the alerts go to gets a share of `durable`, released
    /// once it has stored them; folded alerts need none (their window's
    /// summary stands for them).
    #[tracing::instrument(name = "route", skip_all, fields(alerts = alerts.len()))]
    fn submit_durable(&self, alerts: Vec<Alert>, durable: Durable) {
        let handles = self.outputs.handles();
        let mut per_output: Vec<Vec<Alert>> = vec![Vec::new(); handles.len()];
        let mut targets = vec![false; handles.len()];
        let now = Instant::now();
        for alert in alerts {
            targets.iter_mut().for_each(|t| *t = false);
            let mut matched = false;
            for r in self.routes.iter() {
                if !r.config.matches(&alert) {
                    continue;
                }
                matched = true;
                metrics::counter!("peregrine_alerts_routed_total", "route" => r.label.clone())
                    .increment(1);
                let send = match &r.dedup {
                    None => true,
                    Some(d) => {
                        let admit = d
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .admit(&alert, now);
                        for s in admit.summaries {
                            for &o in &r.outputs {
                                per_output[o].push(s.clone());
                            }
                        }
                        if !admit.send {
                            metrics::counter!("peregrine_alerts_folded_total", "route" => r.label.clone()).increment(1);
                        }
                        admit.send
                    }
                };
                if send {
                    for &o in &r.outputs {
                        targets[o] = true;
                    }
                }
                if r.config.final_route {
                    break;
                }
            }
            if !matched {
                if self.default_outputs.is_empty() {
                    metrics::counter!("peregrine_alerts_unrouted_total").increment(1);
                } else {
                    metrics::counter!("peregrine_alerts_routed_total", "route" => "default")
                        .increment(1);
                    for &o in &self.default_outputs {
                        targets[o] = true;
                    }
                }
            }
            let chosen: Vec<usize> = (0..targets.len()).filter(|&o| targets[o]).collect();
            if let Some((&last, rest)) = chosen.split_last() {
                for &o in rest {
                    per_output[o].push(alert.clone());
                }
                per_output[last].push(alert);
            }
        }
        for (o, batch) in per_output.into_iter().enumerate() {
            if !batch.is_empty() {
                handles[o].enqueue_durable(batch, durable.clone());
            }
        }
        durable.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Priority;

    fn alert(rule: &str, p: Priority) -> Alert {
        Alert {
            time_unix_nanos: 0,
            rule: rule.into(),
            rule_id: rule.to_lowercase().replace(' ', "-"),
            priority: p,
            output: format!("{rule} happened"),
            tags: vec!["k8s".into(), "T1610".into()],
            fields: vec![("ka.user.name".into(), Some("alice".into()))],
            tenant: "team-a".into(),
            cluster: "prod-eu".into(),
            module: "falco_k8s_audit".into(),
            module_digest: "d".into(),
            audit_id: "a".into(),
            hostname: "h".into(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("Create*", "Create Privileged Pod"));
        assert!(glob_match("*Pod", "Create Privileged Pod"));
        assert!(glob_match("*Priv*", "Create Privileged Pod"));
        assert!(glob_match("T?610", "T1610"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("Create", "Create Pod"));
        assert!(!glob_match("*Pods", "Create Pod"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn route_matchers_combine() {
        let r: RouteConfig = toml::from_str(
            "outputs = [\"x\"]\nmin_priority = \"warning\"\nrules = [\"Create*\"]\ntags = [\"T16*\"]\ntenants = [\"team-*\"]\nmodules = [\"falco_*\"]",
        )
        .unwrap();
        assert!(r.matches(&alert("Create Privileged Pod", Priority::Critical)));
        assert!(r.matches(&alert("Create Privileged Pod", Priority::Warning)));
        assert!(!r.matches(&alert("Create Privileged Pod", Priority::Notice)));
        assert!(!r.matches(&alert("Delete Pod", Priority::Critical)));
        // Rule ids match too.
        let r: RouteConfig = toml::from_str("rules = [\"delete-*\"]").unwrap();
        assert!(r.matches(&alert("Delete Pod", Priority::Critical)));
        let r: RouteConfig = toml::from_str("tags = [\"mitre\"]").unwrap();
        assert!(!r.matches(&alert("Delete Pod", Priority::Critical)));
        let r: RouteConfig = toml::from_str("clusters = [\"prod-*\"]").unwrap();
        assert!(r.matches(&alert("Delete Pod", Priority::Critical)));
        let r: RouteConfig = toml::from_str("clusters = [\"staging\"]").unwrap();
        assert!(!r.matches(&alert("Delete Pod", Priority::Critical)));
        let err = toml::from_str::<RouteConfig>("min_priority = \"loud\"").unwrap_err();
        assert!(err.to_string().contains("unknown priority `loud`"), "{err}");
    }

    #[test]
    fn folding_sends_the_first_and_then_one_summary_with_the_count() {
        let mut d = Dedup {
            window: Duration::from_secs(60),
            key_fields: vec!["ka.user.name".into()],
            max_keys: 2,
            windows: HashMap::new(),
            order: VecDeque::new(),
        };
        let t0 = Instant::now();
        let a = alert("Create Pod", Priority::Warning);
        assert!(d.admit(&a, t0).send);
        for i in 1..=4 {
            let r = d.admit(&a, t0 + Duration::from_secs(i));
            assert!(!r.send && r.summaries.is_empty());
        }
        assert!(d.close(t0 + Duration::from_secs(30), false).is_empty());
        let s = d.close(t0 + Duration::from_secs(61), false);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].field("peregrine.folded"), Some("4"));
        assert!(
            s[0].output.ends_with("(and 4 more like it within 60s)"),
            "{}",
            s[0].output
        );
        // A new window opens with the next one, which is sent at once.
        assert!(d.admit(&a, t0 + Duration::from_secs(62)).send);
        // A window without duplicates closes silently.
        assert!(d.close(t0 + Duration::from_secs(200), false).is_empty());

        // Different key values are different alerts; a full table closes
        // its oldest window early, with its summary.
        let mut b = alert("Create Pod", Priority::Warning);
        b.fields[0].1 = Some("bob".into());
        let mut c = b.clone();
        c.fields[0].1 = Some("carol".into());
        let t1 = t0 + Duration::from_secs(300);
        assert!(d.admit(&a, t1).send);
        assert!(!d.admit(&a, t1).send);
        assert!(d.admit(&b, t1).send);
        let r = d.admit(&c, t1);
        assert!(r.send);
        assert_eq!(r.summaries.len(), 1);
        assert_eq!(r.summaries[0].field("ka.user.name"), Some("alice"));
    }

    /// What validation says of a configuration that parses.
    fn problem(toml: &str) -> String {
        let c = PeregrineConfig::parse(toml).unwrap();
        validate(&c.routing, &c.routes, &c.outputs).unwrap_err()
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(problem("[[routes]]\noutputs = [\"nope\"]\n").contains("nope"));
        assert!(problem("[routing]\ndefault_outputs = [\"x\"]\n").contains("`x`"));
        assert!(problem("[outputs.\"a b\"]\ntype = \"stdout\"\n").contains("a b"));
        assert!(problem("[[routes]]\noutputs = []\n").contains("no outputs"));
        assert!(problem("[outputs.hook]\ntype = \"webhook\"\nurl = \"ftp://x\"\n[[routes]]\noutputs = [\"hook\"]\n").contains("output `hook` (webhook)"));
        assert!(PeregrineConfig::parse("[outputs.x]\ntype = \"carrier-pigeon\"\n").is_err());
        assert!(
            PeregrineConfig::parse(
                "[outputs.x]\ntype = \"webhook\"\nurl = \"http://x\"\nurll = 1\n"
            )
            .is_err()
        );
        let c = PeregrineConfig::parse("").unwrap();
        assert!(validate(&c.routing, &c.routes, &c.outputs).is_ok());
    }
}
