//! `peregrine replay`

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use crate::alert::Alert;
use crate::cli::ReplayArgs;
use crate::evaluate::{AlertSink, Batch};
use crate::ingest::envelope::InputFormat;
use crate::ingest::replay::{ReadError, expand_inputs, read_envelopes};
use crate::outputs::stdout::StdoutOutput;
use crate::pipeline::{Pipeline, rules_dirs};

/// Replay sends every batch with its own reply channel, so this sink is
/// never used; it exists because the pipeline requires one.
struct Unused;

impl AlertSink for Unused {
    fn submit(&self, _alerts: Vec<Alert>) {}
}

pub fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    let config = Arc::new(super::load_config(&args.rules)?);
    let inputs = expand_inputs(&args.paths)?;
    let dirs = rules_dirs(&config, &args.rules.rules)?;
    let pipeline = Pipeline::start(config.clone(), dirs, Arc::new(Unused), true)?;
    let out = StdoutOutput::new(config.output.format);
    let tenant: Arc<str> = args.tenant.as_str().into();
    let cluster: Arc<str> = match &args.cluster {
        Some(c) if crate::tenants::valid_cluster_name(c) => c.as_str().into(),
        Some(c) => anyhow::bail!("--cluster `{c}` {}", crate::tenants::CLUSTER_NAME_RULE),
        None => pipeline
            .tenants
            .get(&tenant)
            .map_or_else(|| tenant.clone(), |t| t.cluster.clone()),
    };
    let format: InputFormat = args
        .input_format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;

    let progress = if !args.no_progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {wide_bar} {pos}/{len} events {per_sec} {msg}",
            )
            .expect("valid progress template"),
        );
        Some(bar)
    } else {
        None
    };

    let started = Instant::now();
    let mut events_total = 0usize;
    let mut problems_total = 0usize;
    let mut unreadable = 0usize;
    let mut skipped_total = 0usize;
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    let mut alerts_total = 0usize;
    // Batches in flight, oldest first: alerts are printed in input order
    // while the workers evaluate in parallel.
    let mut pending: VecDeque<(crossbeam_channel::Receiver<Vec<Alert>>, usize)> = VecDeque::new();
    let window = config.engine.worker_count() * 2;

    let mut finish_one = |pending: &mut VecDeque<(
        crossbeam_channel::Receiver<Vec<Alert>>,
        usize,
    )>|
     -> anyhow::Result<()> {
        if let Some((rx, n)) = pending.pop_front() {
            let alerts = rx
                .recv()
                .map_err(|_| anyhow::anyhow!("an evaluation worker stopped"))?;
            for a in &alerts {
                *by_rule.entry(a.rule.clone()).or_default() += 1;
            }
            alerts_total += alerts.len();
            if let Err(e) = out.write(&alerts) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    // `peregrine replay ... | head` closed stdout: stop quietly.
                    std::process::exit(0);
                }
                return Err(e.into());
            }
            if let Some(bar) = &progress {
                bar.inc(n as u64);
            }
        }
        Ok(())
    };

    for input in &inputs {
        if let Some(bar) = &progress {
            bar.set_message(input.to_string());
        }
        let decoded = match read_envelopes(input, config.server.max_event_bytes, format) {
            Ok(d) => d,
            Err(e @ ReadError::Io(_)) => {
                unreadable += 1;
                eprintln!("{input}: {e}");
                continue;
            }
            Err(ReadError::Input(e)) => {
                problems_total += 1;
                eprintln!("{input}: {e}");
                continue;
            }
        };
        // Records that hold no audit event (a CloudWatch control message,
        // another Google service's audit entry) are counted, not errors.
        skipped_total += decoded.skipped.len();
        for p in &decoded.rejected {
            problems_total += 1;
            let place = if p.at.is_empty() {
                String::new()
            } else {
                format!("{}: ", p.at)
            };
            let line = format!("{input}: {place}{}", p.reason);
            match &progress {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        events_total += decoded.events.len();
        if let Some(bar) = &progress {
            bar.inc_length(decoded.events.len() as u64);
        }
        // Batches of one cluster each, in input order: the envelope's
        // cluster where it names one.
        let mut events = decoded
            .events
            .into_iter()
            .zip(decoded.clusters)
            .map(|(e, c)| (e, c.unwrap_or_else(|| cluster.clone())))
            .peekable();
        while let Some((_, batch_cluster)) = events.peek() {
            let batch_cluster = batch_cluster.clone();
            let mut chunk = Vec::new();
            while chunk.len() < config.engine.batch_events
                && let Some((e, _)) = events.next_if(|(_, c)| *c == batch_cluster)
            {
                chunk.push(e);
            }
            let n = chunk.len();
            let (tx, rx) = crossbeam_channel::bounded(1);
            pipeline
                .queue
                .push(
                    Batch {
                        tenant: tenant.clone(),
                        cluster: batch_cluster,
                        events: chunk,
                        reply: Some(tx),
                        journal: None,
                    },
                    None,
                )
                .map_err(|e| anyhow::anyhow!("cannot queue events: {e}"))?;
            pending.push_back((rx, n));
            while pending.len() >= window {
                finish_one(&mut pending)?;
            }
        }
    }
    while !pending.is_empty() {
        finish_one(&mut pending)?;
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }

    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "replayed {} events from {} input(s) in {:.2}s ({:.0} events/s): {} alerts, {} rejected, {} skipped (no audit event), {} unreadable input(s)",
        events_total,
        inputs.len(),
        secs,
        events_total as f64 / secs.max(1e-9),
        alerts_total,
        problems_total,
        skipped_total,
        unreadable
    );
    for (rule, n) in &by_rule {
        eprintln!("  {n:>6}  {rule}");
    }
    Ok(if problems_total > 0 || unreadable > 0 {
        1
    } else {
        0
    })
}
