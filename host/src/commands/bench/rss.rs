//! Peak memory, measured in a child process (`peregrine bench-rss`) so the
//! stream and the other figures of the parent do not count: the Falco pack
//! plus the Python and JavaScript example modules loaded from a warm compile
//! cache, and events evaluated on every core. The figure is the child's
//! `VmHWM` (peak resident set) from `/proc/self/status`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::BenchEnv;
use super::stream::Stream;
use crate::app::Peregrine;
use crate::tenants::DEFAULT_TENANT;

/// Modules the figure loads: the pack plus one Python and one JS module.
const MODULES: [&str; 3] = [
    super::native::PACK_FILE,
    "privileged_impersonation.wasm",
    "secret_enumeration.wasm",
];

#[derive(Debug, Args)]
pub struct RssArgs {
    /// Rules directory to load.
    #[arg(long, value_name = "DIR")]
    pub rules: PathBuf,
    /// Compile cache directory.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Events to evaluate (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub events: PathBuf,
}

pub(crate) struct RssFigures {
    pub peak_mb: f64,
    /// The first start, which also compiled the modules (not in quick mode).
    pub peak_compiling_mb: f64,
    pub modules: usize,
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The child: load, evaluate, report.
pub fn child(args: RssArgs) -> anyhow::Result<i32> {
    let mut config = crate::config::PeregrineConfig::default();
    config.engine.cache_dir = Some(args.cache_dir);
    let config = Arc::new(config);
    let pipeline = Peregrine::evaluate_only(
        config.clone(),
        super::options(vec![args.rules.to_path_buf()]),
    )?;
    let modules = pipeline.rules().current().load().modules.len();
    let text = std::fs::read(&args.events)?;
    let events = crate::ingest::decode::decode_input(&text, config.server.max_event_bytes).events;
    drop(text);
    let tenant: Arc<str> = DEFAULT_TENANT.into();
    let mut order = pipeline.in_order(&tenant);
    for chunk in events.chunks(config.engine.batch_events.max(1)) {
        order.submit(tenant.clone(), chunk.to_vec(), &mut |_| Ok(()))?;
    }
    order.finish(&mut |_| Ok(()))?;
    let hwm = status_kib("VmHWM:").context("no VmHWM in /proc/self/status")?;
    println!(
        "{}",
        serde_json::json!({ "vm_hwm_kib": hwm, "modules": modules, "events": events.len() })
    );
    Ok(0)
}

fn spawn(
    env: &BenchEnv,
    rules: &std::path::Path,
    cache: &std::path::Path,
    events: &std::path::Path,
) -> anyhow::Result<(f64, usize)> {
    let exe = std::env::current_exe().context("cannot find the peregrine executable")?;
    let out = std::process::Command::new(exe)
        .args(["--log", "warn", "bench-rss", "--rules"])
        .arg(rules)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--events")
        .arg(events)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the peak-memory probe")?;
    anyhow::ensure!(
        out.status.success(),
        "the peak-memory probe failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("the peak-memory probe printed no summary: {text}"))?;
    let _ = env;
    Ok((
        v["vm_hwm_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        v["modules"].as_u64().unwrap_or(0) as usize,
    ))
}

pub(crate) fn run(env: &BenchEnv, stream: &Stream) -> anyhow::Result<RssFigures> {
    let files = MODULES
        .iter()
        .map(|f| env.example(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rules = env.dir_with("rss-rules", &files)?;
    // Quick mode reuses the run's cache (the reload figure warmed it) and
    // starts once; otherwise a cache of its own, filled by a first start.
    let cache = if env.quick {
        env.cache_dir.clone()
    } else {
        env.scratch_dir("rss-cache")?
    };
    let events = env.scratch.path().join("rss-events.jsonl");
    let n = stream.lines.len().min(if env.quick { 800 } else { 40_000 });
    let mut text = stream.lines[..n].join("\n");
    text.push('\n');
    std::fs::write(&events, text)?;
    let peak_compiling_mb = if env.quick {
        f64::NAN
    } else {
        env.progress
            .step("peak memory: first start (compiles the Python and JS modules)");
        spawn(env, &rules, &cache, &events)?.0
    };
    env.progress
        .step("peak memory: start from the compile cache");
    let (peak_mb, modules) = spawn(env, &rules, &cache, &events)?;
    Ok(RssFigures {
        peak_mb,
        peak_compiling_mb,
        modules,
    })
}
