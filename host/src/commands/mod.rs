//! The subcommands.

pub mod bench;
pub mod check;
pub mod replay;
pub mod rule;
pub mod serve;

use std::sync::Arc;

use anyhow::Context;

use crate::cli::{Cli, Command, RuleArgs};
use crate::config::PeregrineConfig;

/// Loads the configuration file (or the embedded defaults) and applies the
/// command-line overrides.
pub fn load_config(args: &RuleArgs) -> anyhow::Result<PeregrineConfig> {
    let mut config = match &args.config {
        Some(path) => PeregrineConfig::load(path)?,
        None => PeregrineConfig::default(),
    };
    if let Some(m) = args.rule_matching {
        config.rules.rule_matching = m;
    }
    if let Some(f) = args.format {
        config.output.format = f;
    }
    if let Some(w) = args.workers {
        anyhow::ensure!(w > 0, "--workers must be at least 1");
        config.engine.workers = w;
    }
    Ok(config)
}

/// Runs the command; the exit code is the return value.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(&args.rules)?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            if args.check_config {
                return check::verify(config, &args.rules, false);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("peregrine-http")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve::run(Arc::new(config), args))?;
            Ok(0)
        }
        Command::Replay(args) => replay::run(args),
        Command::Check(args) => check::run(args),
        Command::Rule(command) => rule::run(command),
        Command::Bench(args) => bench::run(args),
        Command::BenchRss(args) => bench::rss::child(args),
    }
}
