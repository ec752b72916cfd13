//! Engine throughput (Wasm against native, one thread each, then Wasm on
//! every core) and the per-module, per-rule cost breakdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::native::{NativePack, PACK_FILE};
use super::stream::Stream;
use super::{BenchEnv, median, sha256_hex};
use crate::app::Peregrine;
use crate::engine::PreparedEvent;
use crate::tenants::DEFAULT_TENANT;

pub(crate) struct EngineFigures {
    pub events: usize,
    pub modules: Vec<String>,
    /// One thread, median of the repetitions.
    pub wasm_eps: f64,
    pub native_eps: Option<f64>,
    /// Median over the repetitions of wasm/native measured back to back.
    pub ratio: Option<f64>,
    /// Every core, through the worker pool.
    pub wasm_all_cores_eps: f64,
    pub workers: usize,
    pub alerts_wasm: usize,
    pub alerts_native: Option<usize>,
}

/// Starts a pipeline over the measured modules; every module must load.
pub(crate) fn pipeline(
    env: &BenchEnv,
    dirs: &[std::path::PathBuf],
    workers: usize,
) -> anyhow::Result<Peregrine> {
    let config = Arc::new(env.config(workers));
    let p = Peregrine::evaluate_only(config, super::options(dirs.to_vec()))?;
    anyhow::ensure!(
        !p.rules().current().load().modules.is_empty(),
        "no rule module found in the rules directories"
    );
    Ok(p)
}

pub(crate) fn wasm_pass(p: &Peregrine, tenant: &Arc<str>, stream: &Stream) -> (f64, usize) {
    let batch = p.config().engine.batch_events.max(1);
    let started = Instant::now();
    let mut alerts = 0;
    for chunk in stream.events.chunks(batch) {
        alerts += p.evaluator().evaluate_batch(tenant, chunk).len();
    }
    (
        stream.events.len() as f64 / started.elapsed().as_secs_f64(),
        alerts,
    )
}

fn native_pass(n: &NativePack, tenant: &Arc<str>, stream: &Stream, batch: usize) -> (f64, usize) {
    let started = Instant::now();
    let mut alerts = 0;
    for chunk in stream.events.chunks(batch) {
        alerts += n.evaluate_batch(tenant, chunk).len();
    }
    (
        stream.events.len() as f64 / started.elapsed().as_secs_f64(),
        alerts,
    )
}

/// Feeds the stream through the queue to every worker, as replay does.
fn all_cores_pass(
    p: &Peregrine,
    tenant: &Arc<str>,
    stream: &Stream,
    workers: usize,
) -> anyhow::Result<f64> {
    let batch = p.config().engine.batch_events.max(1);
    // The batches own their events: copy them before the clock starts.
    let batches: Vec<Vec<_>> = stream.events.chunks(batch).map(<[_]>::to_vec).collect();
    // A cluster per worker slot: a cluster's batches evaluate in order, one
    // at a time, and clusters in parallel, as on a server of many clusters.
    let clusters: Vec<Arc<str>> = (0..workers * 2)
        .map(|i| format!("{tenant}-{i}").into())
        .collect();
    let started = Instant::now();
    let mut order = p.in_order(tenant);
    for (i, events) in batches.into_iter().enumerate() {
        order.submit(
            clusters[i % clusters.len()].clone(),
            events,
            &mut |_| Ok(()),
        )?;
    }
    order.finish(&mut |_| Ok(()))?;
    Ok(stream.events.len() as f64 / started.elapsed().as_secs_f64())
}

pub(crate) fn run(env: &BenchEnv, stream: &Stream) -> anyhow::Result<EngineFigures> {
    let tenant: Arc<str> = DEFAULT_TENANT.into();
    env.progress.step("engine: loading the modules");
    let single = pipeline(env, &env.measured_dirs, 1)?;
    let modules: Vec<String> = single
        .rules()
        .current()
        .load()
        .modules
        .iter()
        .map(|m| m.key.clone())
        .collect();

    // The native side exists for the Falco pack only: it is compiled into
    // this binary. With --rules it runs when the directory holds the pack
    // and nothing else.
    let pack_path = env
        .measured_dirs
        .iter()
        .map(|d| d.join(PACK_FILE))
        .find(|p| p.is_file());
    let native = match pack_path {
        Some(p) if modules.len() == 1 => {
            let digest = sha256_hex(&std::fs::read(&p)?);
            Some(NativePack::new(single.config(), &digest)?)
        }
        _ => None,
    };

    let batch = single.config().engine.batch_events.max(1);
    // A warm-up pass of each side, not counted.
    let warm = stream.head(4_000);
    wasm_pass(&single, &tenant, &warm);
    if let Some(n) = &native {
        native_pass(n, &tenant, &warm, batch);
    }

    let (mut wasm, mut nat, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alerts_wasm, mut alerts_native) = (0, None);
    for rep in 0..env.repeat {
        env.progress.step(format!(
            "engine: repetition {}/{} (Wasm, then native)",
            rep + 1,
            env.repeat
        ));
        let (w, aw) = wasm_pass(&single, &tenant, stream);
        wasm.push(w);
        alerts_wasm = aw;
        if let Some(n) = &native {
            let (x, an) = native_pass(n, &tenant, stream, batch);
            nat.push(x);
            ratios.push(w / x);
            alerts_native = Some(an);
        }
    }
    drop(single);
    if let Some(an) = alerts_native
        && an != alerts_wasm
    {
        env.progress.note(format!(
            "warning: the Wasm pack raised {alerts_wasm} alerts and the native pack {an}: they should agree"
        ));
    }

    let workers = env.cores();
    env.progress
        .step(format!("engine: Wasm on {workers} worker threads"));
    let pool = pipeline(env, &env.measured_dirs, workers)?;
    all_cores_pass(&pool, &tenant, &warm, workers)?;
    let mut all = Vec::new();
    for _ in 0..env.repeat.min(3) {
        all.push(all_cores_pass(&pool, &tenant, stream, workers)?);
    }
    drop(pool);

    Ok(EngineFigures {
        events: stream.events.len(),
        modules,
        wasm_eps: median(&wasm),
        native_eps: native.as_ref().map(|_| median(&nat)),
        ratio: native.as_ref().map(|_| median(&ratios)),
        wasm_all_cores_eps: median(&all),
        workers,
        alerts_wasm,
        alerts_native,
    })
}

/// Cost of one rule, attributed from the module calls its prefilter admitted.
pub(crate) struct RuleCost {
    pub module: String,
    pub rule_id: String,
    pub name: String,
    pub admitted: u64,
    pub alerts: u64,
    /// Nanoseconds of `evaluate` calls attributed to this rule: each call's
    /// time is shared equally among the rules whose prefilter admitted it.
    pub nanos: f64,
}

pub(crate) struct ModuleCost {
    pub module: String,
    pub calls: u64,
    pub skipped: u64,
    pub eval_nanos: u64,
    /// Building the event record that crosses into the module.
    pub prepare_nanos: u64,
    /// Fresh instance plus `configure`, once per batch.
    pub setup_nanos: u64,
    pub batches: u64,
    pub alerts: u64,
}

pub(crate) struct Breakdown {
    pub events: usize,
    pub modules: Vec<ModuleCost>,
    pub rules: Vec<RuleCost>,
}

/// Runs every measured module over the stream with the engine's own
/// building blocks (one fresh instance per module and batch, the same
/// prefilter), timing each call.
pub(crate) fn breakdown(env: &BenchEnv, stream: &Stream) -> anyhow::Result<Breakdown> {
    env.progress.step("breakdown: timing every module call");
    let tenant: Arc<str> = DEFAULT_TENANT.into();
    let p = pipeline(env, &env.measured_dirs, 1)?;
    let rules = p.rules().current().load_full();
    let batch = p.config().engine.batch_events.max(1);
    // Half the stream is plenty for shares, and keeps this figure short.
    let events = &stream.events[..stream.events.len().div_ceil(2)];
    let mut modules = Vec::new();
    let mut costs = Vec::new();
    for m in rules.for_tenant(&tenant) {
        let mut per_rule: HashMap<&str, (u64, u64, f64)> = HashMap::new();
        let mut mc = ModuleCost {
            module: m.key.clone(),
            calls: 0,
            skipped: 0,
            eval_nanos: 0,
            prepare_nanos: 0,
            setup_nanos: 0,
            batches: 0,
            alerts: 0,
        };
        let needs_raw = m.needs_raw_objects();
        for chunk in events.chunks(batch) {
            let mut instance = None;
            for ev in chunk {
                let admitting: Vec<&str> = m.admitting_rules(ev).map(|r| r.id.as_str()).collect();
                if admitting.is_empty() {
                    mc.skipped += 1;
                    continue;
                }
                let inst = match &mut instance {
                    Some(i) => i,
                    None => {
                        let t = Instant::now();
                        let state = p.evaluator().states.table(&tenant, &m.scope, &m.key);
                        let mut i = p
                            .engine()
                            .instantiate(&m.compiled, m.label.clone(), m.limits, state)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", m.key))?;
                        i.configure(&m.config_json)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", m.key))?
                            .map_err(|e| anyhow::anyhow!("{}: configure: {e}", m.key))?;
                        mc.setup_nanos += t.elapsed().as_nanos() as u64;
                        mc.batches += 1;
                        instance.insert(i)
                    }
                };
                let t = Instant::now();
                let prepared = PreparedEvent::new(ev, &tenant);
                mc.prepare_nanos += t.elapsed().as_nanos() as u64;
                let t = Instant::now();
                let result = inst.evaluate(&prepared, needs_raw);
                let nanos = t.elapsed().as_nanos() as u64;
                mc.calls += 1;
                mc.eval_nanos += nanos;
                let share = nanos as f64 / admitting.len() as f64;
                for id in &admitting {
                    let e = per_rule.entry(id).or_default();
                    e.0 += 1;
                    e.2 += share;
                }
                match result {
                    Ok(evaluated) => {
                        for a in evaluated.alerts {
                            mc.alerts += 1;
                            if let Some((_, r)) = m.rule(&a.rule_id) {
                                per_rule.entry(r.id.as_str()).or_default().1 += 1;
                            }
                        }
                    }
                    Err(e) => {
                        env.progress.note(format!("{}: a call failed: {e}", m.key));
                        instance = None;
                    }
                }
            }
        }
        for r in &m.info.rules {
            let (admitted, alerts, nanos) =
                per_rule.get(r.id.as_str()).copied().unwrap_or_default();
            costs.push(RuleCost {
                module: m.key.clone(),
                rule_id: r.id.clone(),
                name: r.name.clone(),
                admitted,
                alerts,
                nanos,
            });
        }
        modules.push(mc);
    }
    costs.sort_by(|a, b| b.nanos.total_cmp(&a.nanos));
    Ok(Breakdown {
        events: events.len(),
        modules,
        rules: costs,
    })
}
