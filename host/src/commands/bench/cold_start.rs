//! Cold start: a fresh pipeline (engine, pooling allocator, epoch ticker,
//! rule manager, workers) over a directory of N modules that are all in the
//! compile cache, from the start of `Peregrine::evaluate_only` until every module is live. The
//! modules are copies of the Falco pack, each with its own custom section,
//! so N distinct digests and N cache entries; the cache is warmed by a
//! first start that compiles them all.

use std::sync::Arc;
use std::time::Instant;

use super::native::PACK_FILE;
use super::{BenchEnv, median, with_custom_section};
use crate::app::Peregrine;

pub(crate) struct ColdStartFigures {
    pub modules: usize,
    pub ms: f64,
    /// The first start, which compiled every module.
    pub compile_ms: f64,
}

pub(crate) fn run(env: &BenchEnv, n: usize) -> anyhow::Result<ColdStartFigures> {
    let original = std::fs::read(env.example(PACK_FILE)?)?;
    let dir = env.scratch_dir("cold-start")?;
    for i in 0..n {
        let bytes =
            with_custom_section(&original, "peregrine-bench-copy", format!("{i}").as_bytes());
        std::fs::write(dir.join(format!("falco_k8s_audit_{i:02}.wasm")), bytes)?;
    }
    let mut config = env.config(0);
    // A cache of its own, so "every module cached" is exactly these N.
    config.engine.cache_dir = Some(env.scratch_dir("cold-start-cache")?);
    let config = Arc::new(config);
    let start = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let p = Peregrine::evaluate_only(config.clone(), super::options(vec![dir.to_path_buf()]))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let live = p.rules().current().load().modules.len();
        anyhow::ensure!(live == n, "{live} of {n} modules went live");
        drop(p);
        Ok(ms)
    };
    env.progress
        .step(format!("cold start: compiling {n} modules into the cache"));
    let compile_ms = start()?;
    let mut runs = Vec::new();
    for rep in 0..env.repeat.min(3) {
        env.progress.step(format!(
            "cold start: {n} cached modules, start {}/{}",
            rep + 1,
            env.repeat.min(3)
        ));
        runs.push(start()?);
    }
    Ok(ColdStartFigures {
        modules: n,
        ms: median(&runs),
        compile_ms,
    })
}
