//! The peer: regorus, the Rust Rego interpreter, on Rego translations of
//! twelve Falco rules (`rego/falco_k8s_audit.rego`), against Peregrine
//! running the same twelve rules of the Falco pack (the others disabled
//! through the pack's configuration, `rule_matching: all` so both report
//! every match).
//!
//! Both sides start from the event's JSON text, as it arrives, and end with
//! the alerts: Peregrine decodes it with the webhook's decoder and evaluates
//! it in the sandbox (fresh instance per batch of 400); regorus parses it
//! into its value type, sets it as `input` and evaluates `data.falco.alerts`.
//! One thread each, back to back, several repetitions, medians.

use std::sync::Arc;
use std::time::Instant;

use super::native::{PACK_FILE, PACK_KEY};
use super::stream::Stream;
use super::{BenchEnv, CountingSink, median, rules_dir};
use crate::config::RuleMatching;
use crate::ingest::decode::decode_payload;
use crate::pipeline::Pipeline;
use crate::tenants::DEFAULT_TENANT;

const POLICY: &str = include_str!("rego/falco_k8s_audit.rego");

/// The Falco rules the policy translates, by the pack's rule ids.
pub(crate) const RULES: [&str; 12] = [
    "disallowed-k8s-user",
    "create-privileged-pod",
    "create-hostnetwork-pod",
    "create-nodeport-service",
    "anonymous-request-allowed",
    "attach-exec-pod",
    "port-forward",
    "create-disallowed-namespace",
    "service-account-created-in-kube-namespace",
    "system-clusterrole-modified-deleted",
    "attach-to-cluster-admin-role",
    "clusterrole-with-wildcard-created",
];

pub(crate) struct PeerFigures {
    pub events: usize,
    pub rules: usize,
    pub peregrine_eps: f64,
    pub regorus_eps: f64,
    /// Median over the repetitions of Peregrine/regorus measured back to back.
    pub ratio: f64,
    pub alerts_peregrine: usize,
    pub alerts_regorus: usize,
}

fn regorus_engine() -> anyhow::Result<regorus::Engine> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("falco_k8s_audit.rego".into(), POLICY.into())
        .map_err(|e| anyhow::anyhow!("the Rego policy does not compile: {e}"))?;
    Ok(engine)
}

fn regorus_pass(engine: &mut regorus::Engine, lines: &[String]) -> anyhow::Result<(f64, usize)> {
    let query = "data.falco.alerts".to_string();
    let started = Instant::now();
    let mut alerts = 0;
    for line in lines {
        let input = regorus::Value::from_json_str(line)
            .map_err(|e| anyhow::anyhow!("regorus input: {e}"))?;
        engine.set_input(input);
        let v = engine
            .eval_rule(query.clone())
            .map_err(|e| anyhow::anyhow!("regorus evaluation: {e}"))?;
        if let Ok(set) = v.as_set() {
            alerts += set.len();
        }
    }
    Ok((lines.len() as f64 / started.elapsed().as_secs_f64(), alerts))
}

fn peregrine_pass(
    p: &Pipeline,
    tenant: &Arc<str>,
    lines: &[String],
) -> anyhow::Result<(f64, usize)> {
    let max = p.config.server.max_event_bytes;
    let started = Instant::now();
    let mut alerts = 0;
    for chunk in lines.chunks(p.config.engine.batch_events.max(1)) {
        let mut events = Vec::with_capacity(chunk.len());
        for line in chunk {
            let d =
                decode_payload(line.as_bytes(), max).map_err(|e| anyhow::anyhow!("decode: {e}"))?;
            events.extend(d.events);
        }
        alerts += p.evaluator.evaluate_batch(tenant, &events).len();
    }
    Ok((lines.len() as f64 / started.elapsed().as_secs_f64(), alerts))
}

pub(crate) fn run(env: &BenchEnv, stream: &Stream) -> anyhow::Result<PeerFigures> {
    env.progress
        .step("peer: compiling the Rego policy and loading the pack");
    let mut engine = regorus_engine()?;

    let dir = env.dir_with("peer", &[env.example(PACK_FILE)?])?;
    let mut config = env.config(1);
    config.rules.rule_matching = RuleMatching::All;
    let others: Vec<toml::Value> = falco_k8s_audit::rules::RULES
        .iter()
        .map(|r| r.id)
        .filter(|id| !RULES.contains(id))
        .map(|id| toml::Value::String(id.into()))
        .collect();
    let mut table = toml::Table::new();
    table.insert("disable".into(), toml::Value::Array(others));
    config.modules.insert(PACK_KEY.into(), table);
    let p = Pipeline::start(
        Arc::new(config),
        vec![rules_dir(&dir)?],
        Arc::new(CountingSink::default()),
        true,
    )?;
    let tenant: Arc<str> = DEFAULT_TENANT.into();

    // regorus is the slower side; a quarter of the stream keeps this short.
    let n = stream.lines.len().div_ceil(4).max(1);
    let lines = &stream.lines[..n];
    let warm = &lines[..n.min(1_000)];
    regorus_pass(&mut engine, warm)?;
    peregrine_pass(&p, &tenant, warm)?;

    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alerts_peregrine, mut alerts_regorus) = (0, 0);
    for rep in 0..env.repeat {
        env.progress.step(format!(
            "peer: repetition {}/{} (Peregrine, then regorus)",
            rep + 1,
            env.repeat
        ));
        let (a, al) = peregrine_pass(&p, &tenant, lines)?;
        let (b, bl) = regorus_pass(&mut engine, lines)?;
        ours.push(a);
        theirs.push(b);
        ratios.push(a / b);
        alerts_peregrine = al;
        alerts_regorus = bl;
    }
    if alerts_peregrine != alerts_regorus {
        env.progress.note(format!(
            "warning: on the peer's rules Peregrine raised {alerts_peregrine} alerts and regorus {alerts_regorus}: the translations should agree"
        ));
    }
    Ok(PeerFigures {
        events: n,
        rules: RULES.len(),
        peregrine_eps: median(&ours),
        regorus_eps: median(&theirs),
        ratio: median(&ratios),
        alerts_peregrine,
        alerts_regorus,
    })
}
