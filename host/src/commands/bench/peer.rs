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
use std::time::{Duration, Instant};

use super::native::{PACK_FILE, PACK_KEY};
use super::stream::Stream;
use super::{BenchEnv, median};
use crate::alert::RuleMatching;
use crate::app::Peregrine;
use crate::ingest::decode::decode_payload;
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
    /// The same with the JSON parsing of both sides left out.
    pub peregrine_eval_eps: f64,
    pub regorus_eval_eps: f64,
    pub eval_ratio: f64,
    pub alerts_peregrine: usize,
    pub alerts_regorus: usize,
    /// Which regorus evaluator ran (the faster of the two).
    pub regorus_mode: &'static str,
}

fn regorus_engine() -> anyhow::Result<regorus::Engine> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("falco_k8s_audit.rego".into(), POLICY.into())
        .map_err(|e| anyhow::anyhow!("the Rego policy does not compile: {e}"))?;
    Ok(engine)
}

const ENTRY: &str = "data.falco.alerts";

/// regorus's two ways to evaluate: its tree-walking interpreter, and its
/// compiler to bytecode for the Rego VM (RVM). The figure uses the faster.
enum Regorus {
    Interpreter(Box<regorus::Engine>),
    Vm(Box<regorus::rvm::vm::RegoVM>),
}

impl Regorus {
    fn name(&self) -> &'static str {
        match self {
            Regorus::Interpreter(_) => "interpreter",
            Regorus::Vm(_) => "RVM bytecode",
        }
    }

    fn vm() -> anyhow::Result<Regorus> {
        let mut engine = regorus_engine()?;
        let policy = engine
            .compile_with_entrypoint(&ENTRY.into())
            .map_err(|e| anyhow::anyhow!("regorus: {e}"))?;
        let program =
            regorus::languages::rego::compiler::Compiler::compile_from_policy(&policy, &[ENTRY])
                .map_err(|e| anyhow::anyhow!("regorus RVM compiler: {e}"))?;
        let mut vm = regorus::rvm::vm::RegoVM::new_with_policy(policy);
        vm.load_program(program);
        vm.set_data(regorus::Value::new_object())
            .map_err(|e| anyhow::anyhow!("regorus RVM: {e}"))?;
        Ok(Regorus::Vm(Box::new(vm)))
    }

    fn eval(&mut self, input: regorus::Value) -> anyhow::Result<regorus::Value> {
        match self {
            Regorus::Interpreter(engine) => {
                engine.set_input(input);
                engine
                    .eval_rule(ENTRY.to_string())
                    .map_err(|e| anyhow::anyhow!("regorus evaluation: {e}"))
            }
            Regorus::Vm(vm) => {
                vm.set_input(input);
                vm.execute_entry_point_by_name(ENTRY)
                    .map_err(|e| anyhow::anyhow!("regorus RVM evaluation: {e}"))
            }
        }
    }
}

/// Events per second from JSON text to alerts, and for the evaluation
/// alone (parsing timed apart, per batch), plus the alert count.
struct Pass {
    total_eps: f64,
    eval_eps: f64,
    alerts: usize,
}

fn regorus_pass(engine: &mut Regorus, lines: &[String]) -> anyhow::Result<Pass> {
    let (mut parse, mut eval) = (Duration::ZERO, Duration::ZERO);
    let mut alerts = 0;
    for chunk in lines.chunks(400) {
        let t = Instant::now();
        let inputs = chunk
            .iter()
            .map(|line| regorus::Value::from_json_str(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("regorus input: {e}"))?;
        parse += t.elapsed();
        let t = Instant::now();
        for input in inputs {
            let v = engine.eval(input)?;
            if let Ok(set) = v.as_set() {
                alerts += set.len();
            }
        }
        eval += t.elapsed();
    }
    Ok(Pass::new(lines.len(), parse, eval, alerts))
}

impl Pass {
    fn new(n: usize, parse: Duration, eval: Duration, alerts: usize) -> Pass {
        Pass {
            total_eps: n as f64 / (parse + eval).as_secs_f64(),
            eval_eps: n as f64 / eval.as_secs_f64(),
            alerts,
        }
    }
}

/// The faster of regorus's evaluators on a short run, provided both agree.
fn pick_regorus(env: &BenchEnv, warm: &[String]) -> anyhow::Result<Regorus> {
    let mut interpreter = Regorus::Interpreter(Box::new(regorus_engine()?));
    let slow = regorus_pass(&mut interpreter, warm)?;
    let mut vm = match Regorus::vm() {
        Ok(vm) => vm,
        Err(e) => {
            env.progress
                .note(format!("peer: regorus's RVM is not used: {e:#}"));
            return Ok(interpreter);
        }
    };
    let fast = match regorus_pass(&mut vm, warm) {
        Ok(r) => r,
        Err(e) => {
            env.progress
                .note(format!("peer: regorus's RVM is not used: {e:#}"));
            return Ok(interpreter);
        }
    };
    if fast.alerts != slow.alerts {
        env.progress.note(format!(
            "peer: regorus's RVM raised {} alerts and its interpreter {}; using the interpreter",
            fast.alerts, slow.alerts
        ));
        return Ok(interpreter);
    }
    Ok(if fast.total_eps > slow.total_eps {
        vm
    } else {
        interpreter
    })
}

fn peregrine_pass(p: &Peregrine, tenant: &Arc<str>, lines: &[String]) -> anyhow::Result<Pass> {
    let max = p.config().server.max_event_bytes;
    let (mut parse, mut eval) = (Duration::ZERO, Duration::ZERO);
    let mut alerts = 0;
    for chunk in lines.chunks(p.config().engine.batch_events.max(1)) {
        let t = Instant::now();
        let mut events = Vec::with_capacity(chunk.len());
        for line in chunk {
            let d =
                decode_payload(line.as_bytes(), max).map_err(|e| anyhow::anyhow!("decode: {e}"))?;
            events.extend(d.events);
        }
        parse += t.elapsed();
        let t = Instant::now();
        alerts += p.evaluator().evaluate_batch(tenant, &events).len();
        eval += t.elapsed();
    }
    Ok(Pass::new(lines.len(), parse, eval, alerts))
}

pub(crate) fn run(env: &BenchEnv, stream: &Stream) -> anyhow::Result<PeerFigures> {
    env.progress
        .step("peer: compiling the Rego policy and loading the pack");
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
    let p = Peregrine::evaluate_only(Arc::new(config), super::options(vec![dir.to_path_buf()]))?;
    let tenant: Arc<str> = DEFAULT_TENANT.into();

    // regorus is the slower side; a quarter of the stream keeps this short.
    let n = stream.lines.len().div_ceil(4).max(1);
    let lines = &stream.lines[..n];
    let warm = &lines[..n.min(1_000)];
    peregrine_pass(&p, &tenant, warm)?;
    let mut engine = pick_regorus(env, warm)?;

    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_eval, mut theirs_eval, mut ratios_eval) = (Vec::new(), Vec::new(), Vec::new());
    let (mut alerts_peregrine, mut alerts_regorus) = (0, 0);
    for rep in 0..env.repeat {
        env.progress.step(format!(
            "peer: repetition {}/{} (Peregrine, then regorus)",
            rep + 1,
            env.repeat
        ));
        let a = peregrine_pass(&p, &tenant, lines)?;
        let b = regorus_pass(&mut engine, lines)?;
        ours.push(a.total_eps);
        theirs.push(b.total_eps);
        ratios.push(a.total_eps / b.total_eps);
        ours_eval.push(a.eval_eps);
        theirs_eval.push(b.eval_eps);
        ratios_eval.push(a.eval_eps / b.eval_eps);
        alerts_peregrine = a.alerts;
        alerts_regorus = b.alerts;
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
        peregrine_eval_eps: median(&ours_eval),
        regorus_eval_eps: median(&theirs_eval),
        eval_ratio: median(&ratios_eval),
        alerts_peregrine,
        alerts_regorus,
        regorus_mode: engine.name(),
    })
}
