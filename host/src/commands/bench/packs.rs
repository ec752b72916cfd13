//! Cost per event of the rule packs Peregrine loads by default: each pack
//! alone, then all of them together, as Wasm on one thread over the same
//! stream (`rule_matching` as configured). An operator reads here what
//! turning a pack on costs; "together" is what `serve` pays by default.

use std::sync::Arc;

use super::engine::{pipeline, wasm_pass};
use super::stream::Stream;
use super::{BenchEnv, median};
use crate::tenants::DEFAULT_TENANT;

/// The default packs, by label and module file (`make rules` builds them).
pub(crate) const PACKS: [(&str, &str); 2] = [
    ("Falco pack", "falco_k8s_audit.wasm"),
    ("threat pack", "k8s_threats.wasm"),
];

pub(crate) struct PackCost {
    /// "Falco pack", "threat pack", or "all packs".
    pub label: String,
    /// Module keys measured.
    pub modules: Vec<String>,
    pub eps: f64,
    pub alerts: usize,
}

impl PackCost {
    pub fn us_per_event(&self) -> f64 {
        1e6 / self.eps
    }
}

pub(crate) struct PacksFigures {
    pub events: usize,
    pub packs: Vec<PackCost>,
    /// Every pack that was found, together; `None` with fewer than two.
    pub together: Option<PackCost>,
    /// Packs whose module file is not built.
    pub missing: Vec<String>,
}

fn measure(
    env: &BenchEnv,
    stream: &Stream,
    label: &str,
    files: &[std::path::PathBuf],
) -> anyhow::Result<PackCost> {
    let name = format!("packs-{}", label.replace(' ', "-"));
    let dir = env.dir_with(&name, files)?;
    let p = pipeline(env, &[dir], 1)?;
    let modules = p
        .rules()
        .current()
        .load()
        .modules
        .iter()
        .map(|m| m.key.clone())
        .collect();
    let tenant: Arc<str> = DEFAULT_TENANT.into();
    let warm = stream.head(4_000);
    wasm_pass(&p, &tenant, &warm);
    let (mut runs, mut alerts) = (Vec::new(), 0);
    for rep in 0..env.repeat {
        env.progress.step(format!(
            "packs: {label}, repetition {}/{}",
            rep + 1,
            env.repeat
        ));
        let (eps, a) = wasm_pass(&p, &tenant, stream);
        runs.push(eps);
        alerts = a;
    }
    Ok(PackCost {
        label: label.to_string(),
        modules,
        eps: median(&runs),
        alerts,
    })
}

pub(crate) fn run(env: &BenchEnv, stream: &Stream) -> anyhow::Result<PacksFigures> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (label, file) in PACKS {
        match env.example(file) {
            Ok(path) => found.push((label, path)),
            Err(_) => missing.push(format!("{label} ({file})")),
        }
    }
    anyhow::ensure!(
        !found.is_empty(),
        "no pack is built: run `make rules` to build the example rule modules"
    );
    let mut packs = Vec::new();
    for (label, path) in &found {
        packs.push(measure(env, stream, label, std::slice::from_ref(path))?);
    }
    let together = if found.len() > 1 {
        let files: Vec<_> = found.iter().map(|(_, p)| p.clone()).collect();
        Some(measure(env, stream, "all packs", &files)?)
    } else {
        None
    };
    Ok(PacksFigures {
        events: stream.events.len(),
        packs,
        together,
        missing,
    })
}
