//! `peregrine bench`: the figures Peregrine publishes (see `docs/performance.md`).
//!
//! Each figure lives in its own module; this one parses the options, builds
//! the event stream once, runs the figures the user asked for, and prints a
//! table and one JSON summary line on stdout. Progress and notes go to
//! stderr. Nothing here asserts a speed: the machine decides the numbers,
//! and ratios measured side by side in one run are what count.

mod cold_start;
mod engine;
mod http;
mod native;
mod packs;
mod peer;
mod reload;
pub mod rss;
mod soak;
mod stream;
mod table;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::alert::Alert;
use crate::alert::AlertSink;
use crate::config::{PeregrineConfig, RuleMatching};

pub use rss::RssArgs;

/// The figures, for `--only` and `--skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Figure {
    /// Engine throughput: the rules as Wasm, and the Falco pack natively.
    Engine,
    /// Per-module and per-rule cost of the rules.
    Breakdown,
    /// Cost per event of each default pack (Falco, threats) and of all together.
    Packs,
    /// HTTP end-to-end: saturation and acknowledgement latency.
    Http,
    /// Edit-to-live time of a changed module (Rust, Python, JavaScript).
    Reload,
    /// Start-up with 50 modules in the compile cache.
    ColdStart,
    /// Peak memory with the Falco pack plus the Python and JS modules.
    Rss,
    /// `serve`'s memory under steady load (`--soak-events`).
    Soak,
    /// regorus (Rego) on translations of Falco rules, against Peregrine.
    Peer,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directory of `.wasm` rule modules to measure instead of the Falco
    /// pack (repeat for several). Engine throughput, the per-rule breakdown
    /// and the HTTP figures then run your modules; the native comparison
    /// runs only when the directory holds `falco_k8s_audit.wasm`.
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<PathBuf>,

    /// Audit events (files or directories; Event, EventList, array or JSON
    /// lines) to build the stream from, replayed in order until `--count`
    /// is reached. Default: Falco's trace files, the fixtures and the public
    /// cluster logs, mixed by verb like a real cluster's audit log.
    #[arg(long = "events", value_name = "PATH")]
    pub events: Vec<PathBuf>,

    /// Configuration file (module configuration, sandbox limits), as for
    /// `serve`. Its rules directories and listen address are not used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Events in the stream.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub count: usize,

    /// Repetitions of each throughput measurement; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub repeat: usize,

    /// Length of the steady 4,000 events/s acknowledgement-latency run.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub latency_seconds: u64,

    /// Events posted to `serve` for the soak figure; its RSS is read after
    /// a third, two thirds and all of them (quick mode: at most 4,000).
    #[arg(long, value_name = "N", default_value_t = 3_000_000)]
    pub soak_events: usize,

    /// Modules in the compile cache for the cold-start figure.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub cold_modules: usize,

    /// Run only these figures (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIGURE")]
    pub only: Vec<Figure>,

    /// Skip these figures (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIGURE")]
    pub skip: Vec<Figure>,

    /// Tiny counts, to check in seconds that every figure runs. The numbers
    /// it prints mean nothing.
    #[arg(long)]
    pub quick: bool,

    /// Also time `cargo build` of the Falco pack for wasm32-wasip2 after
    /// touching its source, the author's side of a Rust edit-to-live.
    #[arg(long)]
    pub cargo_build: bool,

    /// `rule_matching` for the engine and HTTP figures (default: the
    /// configuration's, `all` unless it says otherwise).
    #[arg(long, value_enum)]
    pub rule_matching: Option<RuleMatching>,

    /// Also write the JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Never show progress, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl BenchArgs {
    fn wants(&self, f: Figure) -> bool {
        (self.only.is_empty() || self.only.contains(&f)) && !self.skip.contains(&f)
    }
}

/// What every figure shares: the options, a scratch directory, the
/// configuration, and where the rules are.
pub(crate) struct BenchEnv {
    pub quick: bool,
    pub repeat: usize,
    pub base_config: PeregrineConfig,
    /// The modules measured by the engine, breakdown and HTTP figures.
    pub measured_dirs: Vec<PathBuf>,
    /// Whether `measured_dirs` are the user's (`--rules`) rather than the pack.
    pub user_rules: bool,
    /// The example modules (`make rules`), for reload, cold start, memory and the peer.
    pub examples: PathBuf,
    pub scratch: tempfile::TempDir,
    /// A compile cache private to this run, shared by its figures.
    pub cache_dir: PathBuf,
    pub progress: Progress,
}

impl BenchEnv {
    /// A configuration for one figure: this run's cache, `workers` threads.
    pub fn config(&self, workers: usize) -> PeregrineConfig {
        let mut c = self.base_config.clone();
        c.engine.cache_dir = Some(self.cache_dir.clone());
        c.engine.workers = workers;
        c.server.listen = ([127, 0, 0, 1], 0).into();
        // The HTTP figures keep alert history as `peregrine serve` does by
        // default, in this run's scratch directory, not the user's store.
        c.store.path = Some(self.scratch.path().join("alerts.sqlite"));
        c.server.journal.dir = Some(self.scratch.path().join("journal"));
        c
    }

    /// A fresh directory under the scratch directory.
    pub fn scratch_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.scratch.path().join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// A scratch directory holding copies of `files`.
    pub fn dir_with(&self, name: &str, files: &[PathBuf]) -> anyhow::Result<PathBuf> {
        let dir = self.scratch_dir(name)?;
        for f in files {
            let to = dir.join(f.file_name().context("module path has no file name")?);
            std::fs::copy(f, &to).with_context(|| format!("cannot copy {}", f.display()))?;
        }
        Ok(dir)
    }

    /// An example module by file name, with the fix when it is missing.
    pub fn example(&self, file: &str) -> anyhow::Result<PathBuf> {
        let p = self.examples.join(file);
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: run `make rules` to build the example rule modules",
            p.display()
        );
        Ok(p)
    }

    pub fn cores(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// How the figures build Peregrine: these global rules directories, every
/// module loaded, alerts counted and dropped.
pub(crate) fn options(rules: Vec<PathBuf>) -> crate::app::Options {
    crate::app::Options {
        rules,
        alerts: Some(std::sync::Arc::new(CountingSink::default())),
        require_all: true,
        watch: false,
    }
}

/// Counts alerts and drops them: the figures measure evaluation, not output.
#[derive(Default)]
pub(crate) struct CountingSink(pub std::sync::atomic::AtomicU64);

impl AlertSink for CountingSink {
    fn submit(&self, alerts: Vec<Alert>) {
        self.0
            .fetch_add(alerts.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid progress template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    /// What is being measured now.
    pub fn step(&self, msg: impl Into<String>) {
        let msg = msg.into();
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None => eprintln!("bench: {msg}"),
        }
    }

    /// A line that stays (a result or a warning).
    pub fn note(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(msg.as_ref()),
            None => eprintln!("bench: {}", msg.as_ref()),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The median of some measurements (the upper one of an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A copy of a component with a custom section appended: a valid component
/// with the same code and a different digest, which is how the figures make
/// "a changed module" and "50 distinct modules" without rebuilding them.
pub(crate) fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Writes a module as `build-rules.sh` does, to a hidden name then renamed,
/// so the watcher never sees half a file.
pub(crate) fn install_module(dir: &Path, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(file)).context("cannot move the module into place")?;
    Ok(())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The machine the figures were measured on.
/// The 1-minute load average: how busy the machine was besides the bench.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn machine(load_at_start: Option<f64>) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    serde_json::json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": mem_kib.map(|k| (k as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0),
        "load_average_start": load_at_start,
        "load_average_end": load_average(),
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let load_at_start = load_average();
    // Every figure runs with the metrics recorder `peregrine serve` installs,
    // so the per-call metrics cost what they cost in production.
    crate::prometheus::install();
    let mut base_config = match &args.config {
        Some(p) => PeregrineConfig::load(p)?,
        None => PeregrineConfig::default(),
    };
    if let Some(m) = args.rule_matching {
        base_config.rules.rule_matching = m;
    }
    let examples = crate::paths::default_rules_dir()?;
    let user_rules = !args.rules.is_empty();
    let measured_dirs = if user_rules {
        for d in &args.rules {
            anyhow::ensure!(d.is_dir(), "--rules {}: not a directory", d.display());
        }
        args.rules.clone()
    } else {
        let pack = examples.join(native::PACK_FILE);
        anyhow::ensure!(
            pack.is_file(),
            "{} is missing: run `make rules` to build the Falco pack, or measure your own modules with --rules DIR",
            pack.display()
        );
        Vec::new() // filled below with a directory holding only the pack
    };
    let scratch = tempfile::Builder::new()
        .prefix("peregrine-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let cache_dir = scratch.path().join("cache");
    let (count, repeat) = if args.quick {
        (args.count.min(2_000), 1)
    } else {
        (args.count.max(1), args.repeat.max(1))
    };
    let mut env = BenchEnv {
        quick: args.quick,
        repeat,
        base_config,
        measured_dirs,
        user_rules,
        examples,
        scratch,
        cache_dir,
        progress: Progress::new(!args.no_progress),
    };
    if !user_rules {
        let pack = env.example(native::PACK_FILE)?;
        env.measured_dirs = vec![env.dir_with("pack", &[pack])?];
    }

    env.progress
        .step(format!("building a stream of {count} events"));
    let stream = stream::build(&args.events, count, env.base_config.server.max_event_bytes)?;
    env.progress.note(format!(
        "stream: {} events from {} distinct source events, {:.0} bytes each on average; verbs: {}",
        stream.events.len(),
        stream.templates,
        stream.mean_bytes(),
        stream.mix_summary()
    ));

    let mut report = table::Report::new(&env, &stream);
    if args.wants(Figure::Engine) {
        let f = engine::run(&env, &stream)?;
        report.engine(f);
    }
    if args.wants(Figure::Breakdown) {
        let f = engine::breakdown(&env, &stream)?;
        report.breakdown(f);
    }
    if args.wants(Figure::Packs) {
        if env.user_rules {
            env.progress
                .note("packs: measures the default packs; not run with --rules");
        } else {
            let f = packs::run(&env, &stream)?;
            report.packs(f);
        }
    }
    if args.wants(Figure::Http) {
        let f = http::run(&env, &stream, args.latency_seconds)?;
        report.http(f);
    }
    if args.wants(Figure::Reload) {
        match reload::run(&env, args.cargo_build) {
            Ok(f) => report.reload(f),
            Err(e) => report.skipped("reload", e),
        }
    }
    if args.wants(Figure::ColdStart) {
        match cold_start::run(
            &env,
            if args.quick {
                args.cold_modules.min(3)
            } else {
                args.cold_modules
            },
        ) {
            Ok(f) => report.cold_start(f),
            Err(e) => report.skipped("cold_start", e),
        }
    }
    if args.wants(Figure::Rss) {
        match rss::run(&env, &stream) {
            Ok(f) => report.rss(f),
            Err(e) => report.skipped("rss", e),
        }
    }
    if args.wants(Figure::Soak) {
        let events = if args.quick {
            args.soak_events.min(4_000)
        } else {
            args.soak_events
        };
        match soak::run(&env, &stream, events) {
            Ok(f) => report.soak(f),
            Err(e) => report.skipped("soak", e),
        }
    }
    if args.wants(Figure::Peer) {
        match peer::run(&env, &stream) {
            Ok(f) => report.peer(f),
            Err(e) => report.skipped("peer", e),
        }
    }
    env.progress.finish();

    report.set_elapsed(started.elapsed());
    let out = report.render();
    print!("{out}");
    let machine = machine(load_at_start);
    println!(
        "machine: {} cores, {}, {} GiB; load average {} at start, {} at end",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("unknown"),
        machine["memory_gib"],
        machine["load_average_start"],
        machine["load_average_end"]
    );
    let json = report.json_line(machine);
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(0)
}
