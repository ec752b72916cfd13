//! `peregrine check`

use std::sync::Arc;

use crate::app::{Options, Peregrine};
use crate::cli::{CheckArgs, RuleArgs};
use crate::config::PeregrineConfig;
use crate::rules::registry::ModuleStatus;
use crate::tenants::Tenants;

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let rule_args = RuleArgs {
        rules: args.rules.clone(),
        config: args.config.clone(),
        rule_matching: None,
        format: None,
        workers: Some(1),
    };
    let config = super::load_config(&rule_args)?;
    verify(config, &rule_args, args.rules_detail)
}

/// Checks a loaded configuration and the modules it would load, printing
/// what it found: `peregrine check` and `peregrine serve --check-config`.
/// The exit code is 0 when `serve` would start with all of them.
pub(crate) fn verify(
    mut config: PeregrineConfig,
    args: &RuleArgs,
    rules_detail: bool,
) -> anyhow::Result<i32> {
    // One worker: checking compiles each module once, it evaluates nothing.
    config.engine.workers = 1;
    let source = args.config.as_ref().map_or_else(
        || "embedded defaults".to_string(),
        |p| p.display().to_string(),
    );

    // Everything `serve` would refuse at start, without opening its spools
    // or journal (a running server may hold them).
    Tenants::from_config(&config.auth, &config.tenants)?;
    crate::router::validate(&config.routing, &config.routes, &config.outputs)
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    if let Some(tls) = &config.server.tls {
        tls.acceptor()?;
    }
    println!(
        "config: {source}: ok ({} tenant(s), {} route(s), {} output(s))",
        config.tenants.len().max(1),
        config.routes.len(),
        config.outputs.len(),
    );

    let failed_sources = check_sources(&config)?;

    let config = Arc::new(config);
    let app = Peregrine::evaluate_only(
        config,
        Options {
            rules: args.rules.clone(),
            ..Options::default()
        },
    )?;
    let report = app.rules().report(None);
    let mut failed = 0;
    for m in &report {
        match m.status {
            ModuleStatus::Failed => {
                failed += 1;
                println!(
                    "module {} ({}): FAILED: {}",
                    m.key,
                    m.scope,
                    m.last_error.as_deref().unwrap_or("unknown error")
                );
            }
            _ => {
                let enabled = m.rules.iter().filter(|r| r.enabled).count();
                println!(
                    "module {} ({}): ok: {} {}, {enabled}/{} rules enabled, sha256 {}",
                    m.key,
                    m.scope,
                    m.name.as_deref().unwrap_or(""),
                    m.version.as_deref().unwrap_or(""),
                    m.rules.len(),
                    m.digest.as_deref().map_or("", |d| &d[..12]),
                );
                if rules_detail {
                    for r in &m.rules {
                        println!(
                            "  {:<8} {:<13} {} ({}){}",
                            if r.enabled { "enabled" } else { "off" },
                            r.priority,
                            r.name,
                            r.id,
                            if r.tags.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", r.tags.join(","))
                            }
                        );
                    }
                }
            }
        }
    }
    if report.is_empty() {
        println!("no rule modules found");
        return Ok(1);
    }
    if failed > 0 {
        println!("{failed} of {} module(s) failed to load", report.len());
        return Ok(1);
    }
    if failed_sources > 0 {
        println!("{failed_sources} rule source(s) could not be pulled and have no cached version");
        return Ok(1);
    }
    Ok(0)
}

/// Pulls every OCI source as `serve` does at start, into the same cache,
/// and prints what serve would load from each. Returns how many have
/// nothing to load.
fn check_sources(config: &PeregrineConfig) -> anyhow::Result<usize> {
    let sources = crate::oci::Sources::from_config(config)?;
    if sources.is_empty() {
        return Ok(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(sources.sync_all());
    let mut failed = 0;
    for source in sources.iter() {
        let r = source.report();
        let digest = r.digest.as_deref().unwrap_or("");
        match (&r.last_error, source.has_cache()) {
            (None, _) => println!(
                "source {}: ok: {digest} ({})",
                r.reference,
                r.modules.join(", ")
            ),
            (Some(e), true) => println!(
                "source {}: pull failed, serve would load the cached {digest}: {e}",
                r.reference
            ),
            (Some(e), false) => {
                failed += 1;
                println!("source {}: FAILED: {e}", r.reference);
            }
        }
    }
    Ok(failed)
}
