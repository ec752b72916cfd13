//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::alert::{AlertFormat, RuleMatching};
pub use crate::telemetry::LogFormat;

/// Peregrine: detection for Kubernetes audit logs, with rules that are
/// sandboxed WebAssembly programs (Rust, Python, JavaScript) and alerts in
/// Falco's format.
#[derive(Debug, Parser)]
#[command(
    name = "peregrine",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter for stderr, e.g. `info`, `debug`, `peregrine=debug,tower_http=warn`.
    #[arg(long, global = true, env = "PEREGRINE_LOG", default_value = "info")]
    pub log: String,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the audit webhook: POST /k8s-audit[/<tenant>] (kube-apiserver
    /// audit webhook backend), GET /healthz, GET /metrics (Prometheus),
    /// GET /api/v1/rules. Alerts go to the outputs the configuration's routes
    /// name (stdout by default), each with retries and an on-disk spool.
    /// Rule modules are reloaded when their files change.
    Serve(ServeArgs),
    /// Evaluate recorded audit events (files, directories, or `-` for stdin;
    /// one JSON document, an EventList, an array, or JSON lines) and print
    /// one alert per line on stdout and a summary on stderr, alerts in input
    /// order. JSON lines (plain or gzip) are streamed: memory stays a few
    /// batches whatever the input's length. Exits 1 if some input could not
    /// be read or held data that is not audit events.
    Replay(ReplayArgs),
    /// Check a configuration and the rule modules it loads, without serving:
    /// the config file parses and validates, the tenants and outputs are
    /// consistent, and every module compiles, accepts its configuration and
    /// describes valid rules. Prints each module and its rules; exits 1 on
    /// the first kind of problem found, with what to fix. For CI pipelines
    /// of rule authors and before a deployment.
    Check(CheckArgs),
    /// Rule modules as OCI artifacts: push modules to a registry, pull them
    /// back. `serve` follows an artifact with a `[[rules.sources]]` entry of
    /// type `oci`.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Measure Peregrine: engine throughput (the Falco pack as Wasm against
    /// the same code compiled natively), the HTTP path, hot-reload
    /// edit-to-live times, cold start, peak memory, and a peer engine
    /// (regorus, Rego) on the same rules and events. Prints a table and one
    /// JSON summary line on stdout. With `--rules`/`--events` it measures
    /// your own modules and events, with a per-rule cost breakdown.
    Bench(crate::commands::bench::BenchArgs),
    /// Internal: the peak-memory probe `peregrine bench` runs in a child
    /// process, so the other figures do not inflate it.
    #[command(hide = true)]
    BenchRss(crate::commands::bench::RssArgs),
}

/// Options shared by the commands that evaluate events.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Directory of `.wasm` rule modules; repeat for several. Default: the
    /// config's `rules.dirs`, else `example-rules/build` in the current
    /// directory, next to the binary, or an installed share directory.
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<PathBuf>,

    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, short = 'c', value_name = "FILE", env = "PEREGRINE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Per module and event, alert every matching rule (`all`, the default)
    /// or only the first in the module's order (`first`, Falco's default).
    /// Overrides the config's `rules.rule_matching`.
    #[arg(long, value_enum)]
    pub rule_matching: Option<RuleMatching>,

    /// Alert format on stdout. Overrides the config's `output.format`.
    #[arg(long, value_enum)]
    pub format: Option<AlertFormat>,

    /// Evaluation threads (default: one per CPU core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Overrides the config's `server.listen`
    /// (default 127.0.0.1:8765).
    #[arg(long, value_name = "ADDR", env = "PEREGRINE_LISTEN")]
    pub listen: Option<SocketAddr>,

    #[command(flatten)]
    pub rules: RuleArgs,

    /// Do not watch the rules directories for changes.
    #[arg(long)]
    pub no_watch: bool,

    /// Validate the configuration and every module it would load, as
    /// `peregrine check` does, then exit (0: `serve` would start) without
    /// binding the port or opening the journal, spools or alert store.
    #[arg(long)]
    pub check_config: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Directory of `.wasm` rule modules; repeat for several. Default: the
    /// config's `rules.dirs`, else `example-rules/build` in the current
    /// directory, next to the binary, or an installed share directory.
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<PathBuf>,

    /// Configuration file (TOML). Without one, embedded defaults are checked.
    #[arg(long, short = 'c', value_name = "FILE", env = "PEREGRINE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Also list every rule of every module.
    #[arg(long)]
    pub rules_detail: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub rules: RuleArgs,

    /// Tenant the events are evaluated for (selects tenant modules and state).
    #[arg(long, default_value = crate::tenants::DEFAULT_TENANT)]
    pub tenant: String,

    /// Cluster of the events whose envelope names none (`peregrine.cluster`
    /// of their alerts; state is kept per cluster). Default: the tenant's
    /// `cluster`, else the tenant's id.
    #[arg(long)]
    pub cluster: Option<String>,

    /// Never show a progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Shape of the inputs: `auto` recognises each input by its fields;
    /// `audit` (Event, EventList, array or JSON lines), `gke` (Cloud Audit
    /// Logs LogEntries: one, an array, an `entries` answer or a Cloud
    /// Logging export), `aks` (diagnostic records: one, `{"records": [...]}`
    /// or a Storage archive), `cloudwatch` (subscription payloads,
    /// FilterLogEvents answers or an S3 export, plain or gzip), `firehose`
    /// or `pubsub` (saved requests) force one.
    #[arg(long, value_name = "FORMAT", default_value = "auto",
          value_parser = clap::builder::PossibleValuesParser::new(crate::ingest::envelope::INPUT_FORMATS))]
    pub input_format: String,

    /// Files or directories of audit events or envelopes (gzip or not);
    /// `-` reads stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Push a module (FILE.wasm) or every module of a directory as one OCI
    /// artifact. Each module is first loaded through the engine, as `serve`
    /// would load it, and must pass; its name, version, contract (the
    /// peregrine:rules WIT version) and sha256 become annotations of its
    /// layer (media type application/vnd.peregrine.rule.module.v1+wasm;
    /// config application/vnd.peregrine.rule.config.v1+json). Prints the
    /// pushed reference with its manifest digest, to pin in
    /// `[[rules.sources]]`.
    Push(RulePushArgs),
    /// Pull a rule artifact by tag or digest, verify it (media types, sizes,
    /// the manifest digest when pinned, every layer's digest) and write its
    /// modules into a directory.
    Pull(RulePullArgs),
}

/// How to reach the registry.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Docker config file with the registry's credentials (`auths`, base64
    /// of user:password). Default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json, if it exists.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,

    /// PEM file of CA certificates to trust for the registry, besides the
    /// system's. Implies TLS, even on loopback.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Speak plain HTTP to the registry. Registries on localhost and
    /// 127.0.0.1 use plain HTTP without this (unless --ca-file is given);
    /// any other needs TLS unless this is given.
    #[arg(long)]
    pub plain_http: bool,
}

#[derive(Debug, Args)]
pub struct RulePushArgs {
    /// A `.wasm` rule module, or a directory whose `.wasm` modules all go
    /// into the artifact.
    #[arg(value_name = "FILE.wasm|DIR")]
    pub path: PathBuf,

    /// Where to push: REGISTRY/REPOSITORY:TAG, e.g. 127.0.0.1:5000/rules/falco:1.0.
    #[arg(value_name = "REGISTRY/REPO:TAG")]
    pub reference: String,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Configuration file whose `[modules.<name>]` tables the modules are
    /// configured with while they are checked. Without one, `{}`.
    #[arg(long, short = 'c', value_name = "FILE", env = "PEREGRINE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RulePullArgs {
    /// What to pull: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST.
    #[arg(value_name = "REF")]
    pub reference: String,

    /// Directory to write the modules into (created if missing).
    #[arg(long, short = 'o', value_name = "DIR", default_value = ".")]
    pub output: PathBuf,

    #[command(flatten)]
    pub registry: RegistryArgs,
}
