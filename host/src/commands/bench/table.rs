//! The report: a table for people and one JSON line for machines.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::BenchEnv;
use super::cold_start::ColdStartFigures;
use super::engine::{Breakdown, EngineFigures};
use super::http::HttpFigures;
use super::packs::PacksFigures;
use super::peer::PeerFigures;
use super::reload::ReloadFigures;
use super::rss::RssFigures;
use super::soak::SoakFigures;
use super::stream::Stream;

/// Every key of the JSON summary; figures not run are `null`.
pub const SUMMARY_KEYS: [&str; 24] = [
    "engine_wasm_eps",
    "engine_native_eps",
    "engine_wasm_native_ratio",
    "engine_wasm_all_cores_eps",
    "pack_cost",
    "http_eps",
    "http_ack_p50_ms",
    "http_ack_p99_ms",
    "reload_rust_ms",
    "reload_rust_hit_ms",
    "reload_rust_cargo_build_ms",
    "reload_python_miss_ms",
    "reload_python_hit_ms",
    "reload_js_miss_ms",
    "reload_js_hit_ms",
    "cold_start_ms",
    "cold_start_modules",
    "peak_rss_mb",
    "soak_rss_mb",
    "peer_regorus_eps",
    "peer_peregrine_eps",
    "peer_ratio",
    "peer_rules",
    "alerts_agree",
];

struct Row {
    figure: String,
    value: String,
    goal: String,
    verdict: String,
}

pub(crate) struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
    sections: Vec<String>,
    json: Map<String, Value>,
    agree: Option<bool>,
}

fn eps(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    format!("{out} events/s")
}

/// A count with thousands separators.
fn count(n: usize) -> String {
    indicatif::HumanCount(n as u64).to_string()
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// "met", or "missed by N%": `higher` says which way is better.
fn verdict(value: f64, goal: f64, higher: bool) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let met = if higher { value >= goal } else { value <= goal };
    if met {
        "met".into()
    } else if higher {
        format!("missed by {:.0}%", (1.0 - value / goal) * 100.0)
    } else {
        format!("missed by {:.0}%", (value / goal - 1.0) * 100.0)
    }
}

fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

impl Report {
    pub fn new(env: &BenchEnv, stream: &Stream) -> Self {
        let mut json = Map::new();
        for k in SUMMARY_KEYS {
            json.insert(k.into(), Value::Null);
        }
        json.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        json.insert("quick".into(), json!(env.quick));
        json.insert("events".into(), json!(stream.events.len()));
        json.insert("event_bytes_mean".into(), num(stream.mean_bytes()));
        json.insert("stream".into(), json!(stream.source));
        json.insert("user_rules".into(), json!(env.user_rules));
        json.insert("repeat".into(), json!(env.repeat));
        let mut notes = Vec::new();
        if env.quick {
            notes.push(
                "--quick: tiny counts; these numbers only show that every figure runs.".to_string(),
            );
        }
        Report {
            rows: Vec::new(),
            notes,
            sections: Vec::new(),
            json,
            agree: None,
        }
    }

    fn row(&mut self, figure: impl Into<String>, value: String, goal: &str, verdict: String) {
        self.rows.push(Row {
            figure: figure.into(),
            value,
            goal: goal.into(),
            verdict,
        });
    }

    fn set(&mut self, key: &str, v: Value) {
        self.json.insert(key.into(), v);
    }

    fn agreement(&mut self, ok: bool) {
        self.agree = Some(self.agree.unwrap_or(true) && ok);
    }

    pub fn engine(&mut self, f: EngineFigures) {
        let what = if f.modules.len() == 1 {
            f.modules[0].clone()
        } else {
            format!("{} modules", f.modules.len())
        };
        self.row(
            format!("Engine, Wasm ({what}), 1 thread"),
            eps(f.wasm_eps),
            "",
            String::new(),
        );
        if let (Some(n), Some(r)) = (f.native_eps, f.ratio) {
            self.row(
                "Engine, same code native, 1 thread",
                eps(n),
                "",
                String::new(),
            );
            self.row(
                "Engine, Wasm / native",
                format!("{r:.2}x"),
                ">= 0.5x (aim 0.8x)",
                verdict(r, 0.5, true),
            );
        }
        self.row(
            format!("Engine, Wasm, {} workers", f.workers),
            eps(f.wasm_all_cores_eps),
            "",
            String::new(),
        );
        if let Some(an) = f.alerts_native {
            self.agreement(an == f.alerts_wasm);
            self.notes.push(format!(
                "engine: {} events, {} alerts from Wasm, {} from native.",
                f.events, f.alerts_wasm, an
            ));
        }
        self.set("engine_wasm_eps", num(f.wasm_eps));
        self.set("engine_native_eps", f.native_eps.map_or(Value::Null, num));
        self.set("engine_wasm_native_ratio", f.ratio.map_or(Value::Null, num));
        self.set("engine_wasm_all_cores_eps", num(f.wasm_all_cores_eps));
        self.set("engine_workers", json!(f.workers));
        self.set("engine_modules", json!(f.modules));
    }

    pub fn breakdown(&mut self, b: Breakdown) {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Per-module cost ({} events, one fresh instance per module and batch):",
            b.events
        );
        let _ = writeln!(
            s,
            "  {:<28} {:>9} {:>9} {:>10} {:>10} {:>14} {:>8}",
            "module", "calls", "skipped", "us/call", "record us", "setup us/batch", "alerts"
        );
        let mut modules = Vec::new();
        for m in &b.modules {
            let per_call = m.eval_nanos as f64 / m.calls.max(1) as f64 / 1000.0;
            let setup = m.setup_nanos as f64 / m.batches.max(1) as f64 / 1000.0;
            let record = m.prepare_nanos as f64 / m.calls.max(1) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "  {:<28} {:>9} {:>9} {:>10.2} {:>10.2} {:>14.1} {:>8}",
                m.module, m.calls, m.skipped, per_call, record, setup, m.alerts
            );
            modules.push(json!({
                "module": m.module, "calls": m.calls, "skipped_by_prefilter": m.skipped,
                "us_per_call": num(per_call), "record_us_per_call": num(record),
                "setup_us_per_batch": num(setup), "alerts": m.alerts,
            }));
        }
        let total: f64 = b.rules.iter().map(|r| r.nanos).sum::<f64>().max(1.0);
        let _ = writeln!(
            s,
            "\nPer-rule cost (each call's time shared among the rules whose prefilter admitted the event):"
        );
        let _ = writeln!(
            s,
            "  {:<44} {:>9} {:>8} {:>11} {:>7}",
            "rule", "admitted", "alerts", "us/event", "share"
        );
        let mut rules = Vec::new();
        for r in b.rules.iter().filter(|r| r.admitted > 0) {
            let per = r.nanos / r.admitted.max(1) as f64 / 1000.0;
            let label = if b.modules.len() > 1 {
                format!("{}/{}", r.module, r.rule_id)
            } else {
                r.rule_id.clone()
            };
            let _ = writeln!(
                s,
                "  {:<44} {:>9} {:>8} {:>11.2} {:>6.1}%",
                label,
                r.admitted,
                r.alerts,
                per,
                r.nanos * 100.0 / total
            );
            rules.push(json!({
                "module": r.module, "rule": r.rule_id, "name": r.name, "admitted": r.admitted,
                "alerts": r.alerts, "us_per_event": num(per), "share": num(r.nanos / total),
            }));
        }
        let never: Vec<&str> = b
            .rules
            .iter()
            .filter(|r| r.admitted == 0)
            .map(|r| r.rule_id.as_str())
            .collect();
        if !never.is_empty() {
            let _ = writeln!(
                s,
                "  (prefilter admitted no event for: {})",
                never.join(", ")
            );
        }
        self.sections.push(s);
        self.set("breakdown", json!({ "modules": modules, "rules": rules }));
    }

    pub fn packs(&mut self, f: PacksFigures) {
        let mut cost = Map::new();
        for p in f.packs.iter().chain(&f.together) {
            let what = if p.modules.len() == 1 {
                format!("{} ({})", p.label, p.modules[0])
            } else {
                format!("{} ({})", p.label, p.modules.join(" + "))
            };
            self.row(
                format!("Cost per event, {what}, 1 thread"),
                format!("{:.2} us ({})", p.us_per_event(), eps(p.eps)),
                "",
                String::new(),
            );
            let key = if p.modules.len() == 1 {
                p.modules[0].clone()
            } else {
                "together".to_string()
            };
            cost.insert(
                key,
                json!({"us_per_event": num(p.us_per_event()), "eps": num(p.eps), "alerts": p.alerts}),
            );
        }
        let alerts: Vec<String> = f
            .packs
            .iter()
            .chain(&f.together)
            .map(|p| format!("{} {}", p.label, p.alerts))
            .collect();
        self.notes.push(format!(
            "packs: {} events through each pack alone and all together; alerts: {}.",
            f.events,
            alerts.join(", ")
        ));
        for m in &f.missing {
            self.notes
                .push(format!("packs: {m} is not built, so it is not measured."));
        }
        self.set("pack_cost", Value::Object(cost));
        self.set("pack_cost_missing", json!(f.missing));
    }

    pub fn http(&mut self, f: HttpFigures) {
        self.row(
            "HTTP, EventList of 400, saturation",
            eps(f.saturation_eps),
            ">= 50,000 events/s",
            verdict(f.saturation_eps, 50_000.0, true),
        );
        self.row(
            "HTTP ack latency p50 at 4,000 events/s",
            ms(f.p50_ms),
            "",
            String::new(),
        );
        self.row(
            "HTTP ack latency p99 at 4,000 events/s",
            ms(f.p99_ms),
            "<= 5 ms",
            verdict(f.p99_ms, 5.0, false),
        );
        self.notes.push(format!(
            "http: saturation over {} events ({} answers were 429 and retried); latency over {} requests, p90 {}, max {}.",
            f.saturation_events,
            f.throttled,
            f.latency_requests,
            ms(f.p90_ms),
            ms(f.max_ms)
        ));
        self.set("http_eps", num(f.saturation_eps));
        self.set("http_ack_p50_ms", num(f.p50_ms));
        self.set("http_ack_p99_ms", num(f.p99_ms));
        self.set("http_ack_p90_ms", num(f.p90_ms));
        self.set("http_ack_max_ms", num(f.max_ms));
        self.set("http_throttled", json!(f.throttled));
    }

    pub fn reload(&mut self, f: ReloadFigures) {
        self.row(
            "Reload, Rust module (Falco pack), edit to live",
            ms(f.rust_miss_ms),
            "<= 1 s",
            verdict(f.rust_miss_ms, 1000.0, false),
        );
        self.row(
            "Reload, Rust module, cache hit",
            ms(f.rust_hit_ms),
            "",
            String::new(),
        );
        if let Some(c) = f.rust_cargo_ms {
            self.row(
                "  cargo build of the pack after a touch",
                ms(c),
                "",
                String::new(),
            );
        }
        for (name, miss, hit) in [
            ("Python", f.python_miss_ms, f.python_hit_ms),
            ("JS", f.js_miss_ms, f.js_hit_ms),
        ] {
            if let (Some(miss), Some(hit)) = (miss, hit) {
                self.row(
                    format!("Reload, {name} module, cache miss"),
                    ms(miss),
                    "<= 10 s",
                    verdict(miss, 10_000.0, false),
                );
                self.row(
                    format!("Reload, {name} module, cache hit"),
                    ms(hit),
                    "<= 300 ms",
                    verdict(hit, 300.0, false),
                );
            }
        }
        self.set("reload_rust_ms", num(f.rust_miss_ms));
        self.set("reload_rust_hit_ms", num(f.rust_hit_ms));
        self.set(
            "reload_rust_cargo_build_ms",
            f.rust_cargo_ms.map_or(Value::Null, num),
        );
        self.set(
            "reload_python_miss_ms",
            f.python_miss_ms.map_or(Value::Null, num),
        );
        self.set(
            "reload_python_hit_ms",
            f.python_hit_ms.map_or(Value::Null, num),
        );
        self.set("reload_js_miss_ms", f.js_miss_ms.map_or(Value::Null, num));
        self.set("reload_js_hit_ms", f.js_hit_ms.map_or(Value::Null, num));
    }

    pub fn cold_start(&mut self, f: ColdStartFigures) {
        self.row(
            format!("Cold start, {} modules cached", f.modules),
            ms(f.ms),
            "<= 1 s",
            verdict(f.ms, 1000.0, false),
        );
        self.notes.push(format!(
            "cold start: the first start, compiling all {} modules, took {}.",
            f.modules,
            ms(f.compile_ms)
        ));
        self.set("cold_start_ms", num(f.ms));
        self.set("cold_start_modules", json!(f.modules));
        self.set("cold_start_compile_ms", num(f.compile_ms));
    }

    pub fn rss(&mut self, f: RssFigures) {
        self.row(
            format!("Peak RSS, pack + Python + JS ({} modules)", f.modules),
            format!("{:.0} MB", f.peak_mb),
            "<= 200 MB",
            verdict(f.peak_mb, 200.0, false),
        );
        if f.peak_compiling_mb.is_finite() {
            self.notes.push(format!(
                "peak RSS: {:.0} MB on the first start, which also compiled the modules.",
                f.peak_compiling_mb
            ));
        }
        self.set("peak_rss_mb", num(f.peak_mb));
        self.set("peak_rss_compiling_mb", num(f.peak_compiling_mb));
    }

    pub fn soak(&mut self, f: SoakFigures) {
        for (events, mb) in &f.points {
            self.row(
                format!(
                    "Soak: serve RSS after {} events ({} modules)",
                    count(*events),
                    f.modules
                ),
                format!("{mb:.0} MB"),
                "",
                String::new(),
            );
        }
        let grew = match (f.points.first(), f.points.last()) {
            (Some((e0, m0)), Some((e1, m1))) if e1 > e0 => {
                format!(
                    ", {:+.1} MB per 100,000 events from the first checkpoint to the last",
                    (m1 - m0) / ((e1 - e0) as f64 / 100_000.0)
                )
            }
            _ => String::new(),
        };
        self.notes.push(format!(
            "soak: peregrine serve in a child process with the default rules directory, its journal and alert store; \
             EventLists of 400 posted over 4 connections at {}, {} answered 429 and resent; RSS {:.0} MB before the first event{grew}.",
            eps(f.eps),
            f.throttled,
            f.start_mb
        ));
        self.set(
            "soak_rss_mb",
            Value::Array(
                f.points
                    .iter()
                    .map(|(e, mb)| json!({ "events": e, "rss_mb": num(*mb) }))
                    .collect(),
            ),
        );
        self.set("soak_start_rss_mb", num(f.start_mb));
        self.set("soak_eps", num(f.eps));
    }

    pub fn peer(&mut self, f: PeerFigures) {
        self.row(
            format!("Peer: Peregrine, {} Falco rules, from JSON", f.rules),
            eps(f.peregrine_eps),
            "",
            String::new(),
        );
        self.row(
            format!("Peer: regorus ({}), same rules, from JSON", f.regorus_mode),
            eps(f.regorus_eps),
            "",
            String::new(),
        );
        self.row(
            "Peer: Peregrine / regorus, from JSON",
            format!("{:.1}x", f.ratio),
            ">= 5x",
            verdict(f.ratio, 5.0, true),
        );
        self.row(
            "Peer: Peregrine / regorus, evaluation only",
            format!("{:.1}x", f.eval_ratio),
            ">= 5x",
            verdict(f.eval_ratio, 5.0, true),
        );
        self.agreement(f.alerts_peregrine == f.alerts_regorus);
        self.notes.push(format!(
            "peer: {} events, {} alerts from Peregrine, {} from regorus; evaluation only (JSON parsing timed apart on both sides): Peregrine {}, regorus {}.",
            f.events,
            f.alerts_peregrine,
            f.alerts_regorus,
            eps(f.peregrine_eval_eps),
            eps(f.regorus_eval_eps)
        ));
        self.set("peer_regorus_eps", num(f.regorus_eps));
        self.set("peer_peregrine_eps", num(f.peregrine_eps));
        self.set("peer_ratio", num(f.ratio));
        self.set("peer_regorus_eval_eps", num(f.regorus_eval_eps));
        self.set("peer_peregrine_eval_eps", num(f.peregrine_eval_eps));
        self.set("peer_eval_ratio", num(f.eval_ratio));
        self.set("peer_rules", json!(f.rules));
        self.set("peer_regorus_mode", json!(f.regorus_mode));
    }

    pub fn skipped(&mut self, figure: &str, e: anyhow::Error) {
        self.notes.push(format!("{figure}: not measured: {e:#}"));
        let skipped = self.json.entry("skipped").or_insert_with(|| json!({}));
        skipped[figure] = json!(format!("{e:#}"));
    }

    pub fn set_elapsed(&mut self, d: Duration) {
        self.set("elapsed_s", num(d.as_secs_f64()));
    }

    pub fn render(&self) -> String {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.figure.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.value.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let w2 = self
            .rows
            .iter()
            .map(|r| r.goal.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| {:<w0$} | {:>w1$} | {:<w2$} | Verdict |",
            "Figure", "Value", "Goal"
        );
        let _ = writeln!(
            s,
            "|{}|{}|{}|---------|",
            "-".repeat(w0 + 2),
            "-".repeat(w1 + 2),
            "-".repeat(w2 + 2)
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {:<w0$} | {:>w1$} | {:<w2$} | {} |",
                r.figure, r.value, r.goal, r.verdict
            );
        }
        for sec in &self.sections {
            let _ = write!(s, "\n{sec}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "note: {n}");
            }
        }
        s
    }

    pub fn json_line(&mut self, machine: Value) -> String {
        self.json.insert(
            "alerts_agree".into(),
            self.agree.map_or(Value::Null, Value::Bool),
        );
        self.json.insert("machine".into(), machine);
        let mut outer = Map::new();
        outer.insert("bench".into(), Value::Object(self.json.clone()));
        Value::Object(outer).to_string()
    }
}
