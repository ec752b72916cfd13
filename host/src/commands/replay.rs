//! `peregrine replay`

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::app::{Done, Options, Peregrine};
use crate::cli::ReplayArgs;
use crate::ingest::envelope::InputFormat;
use crate::ingest::replay::{Item, ReadError, StreamOptions, expand_inputs, stream_inputs};
use crate::outputs::stdout::StdoutOutput;

pub fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    let config = Arc::new(super::load_config(&args.rules)?);
    let inputs = expand_inputs(&args.paths)?;
    let app = Peregrine::evaluate_only(
        config.clone(),
        Options {
            rules: args.rules.rules.clone(),
            require_all: true,
            ..Options::default()
        },
    )?;
    let out = StdoutOutput::new(config.output.format);
    let tenant: Arc<str> = args.tenant.as_str().into();
    let cluster: Arc<str> = match &args.cluster {
        Some(c) if crate::tenants::valid_cluster_name(c) => c.as_str().into(),
        Some(c) => anyhow::bail!("--cluster `{c}` {}", crate::tenants::CLUSTER_NAME_RULE),
        None => app
            .tenants()
            .get(&tenant)
            .map_or_else(|| tenant.clone(), |t| t.cluster.clone()),
    };
    let format: InputFormat = args
        .input_format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;

    // Events read so far, the progress bar's length.
    let decoded = Arc::new(AtomicUsize::new(0));
    let progress = if !args.no_progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {wide_bar} {human_pos}/{human_len} events {rate} {msg}",
            )
            .expect("valid progress template")
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", per_second(s.per_sec()));
                },
            ),
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
    // Alerts are printed in input order while the workers evaluate in
    // parallel; the reader's channel bounds what is read ahead.
    let mut order = app.in_order(&tenant);
    let window = config.engine.worker_count() * 2;
    let mut print = |done: Done| -> anyhow::Result<()> {
        for a in &done.alerts {
            *by_rule.entry(a.rule.clone()).or_default() += 1;
        }
        alerts_total += done.alerts.len();
        if let Err(e) = out.write(&done.alerts) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                // `peregrine replay ... | head` closed stdout: stop quietly.
                std::process::exit(0);
            }
            return Err(e.into());
        }
        if let Some(bar) = &progress {
            bar.inc(done.events as u64);
        }
        Ok(())
    };

    // A reader thread decodes the inputs into chunks of one cluster each, in
    // input order, through a bounded channel: memory holds a few batches,
    // however long the input.
    let opts = StreamOptions {
        chunk_events: config.engine.batch_events.max(1),
        ..StreamOptions::new(config.server.max_event_bytes, format)
    };
    let (tx, rx) = crossbeam_channel::bounded::<Item>(window);
    let reader = {
        let (inputs, decoded) = (inputs.clone(), decoded.clone());
        std::thread::Builder::new()
            .name("peregrine-replay-reader".into())
            .spawn(move || stream_inputs(&inputs, &opts, &tx, &decoded))?
    };
    let mut current = String::new();
    for item in rx {
        match item {
            Item::Input(input) => {
                current = input.to_string();
                if let Some(bar) = &progress {
                    bar.set_message(current.clone());
                }
            }
            Item::Failed(e) => {
                match e {
                    ReadError::Io(_) => unreadable += 1,
                    ReadError::Input(_) => problems_total += 1,
                }
                let line = format!("{current}: {e}");
                match &progress {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            // Records that hold no audit event (a CloudWatch control message,
            // another Google service's audit entry) are counted, not errors.
            Item::Skipped(n) => skipped_total += n,
            Item::Rejected(p) => {
                problems_total += 1;
                let place = if p.at.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", p.at)
                };
                let line = format!("{current}: {place}{}", p.reason);
                match &progress {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Item::Events {
                cluster: batch_cluster,
                events,
            } => {
                let n = events.len();
                events_total += n;
                if let Some(bar) = &progress {
                    bar.set_length(decoded.load(Ordering::Relaxed) as u64);
                }
                // The envelope's cluster where it names one.
                let batch_cluster = batch_cluster.unwrap_or_else(|| cluster.clone());
                order.submit(batch_cluster, events, &mut print)?;
            }
        }
    }
    order.finish(&mut print)?;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the input reader panicked"))?;
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

/// An events-per-second rate as the progress bar shows it: whole events,
/// with thousands separators (`4,879/s`).
fn per_second(rate: f64) -> String {
    if !rate.is_finite() || rate < 0.0 {
        return "-/s".to_string();
    }
    format!("{}/s", indicatif::HumanCount(rate.round() as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_are_rounded_to_whole_events() {
        assert_eq!(super::per_second(4_878.759_3), "4,879/s");
        assert_eq!(super::per_second(0.4), "0/s");
        assert_eq!(super::per_second(f64::NAN), "-/s");
    }
}
