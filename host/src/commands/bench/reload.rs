//! Edit-to-live: a module file changes in a watched rules directory; how
//! long until the new version evaluates events?
//!
//! The clock starts when the new file is renamed into place (as `make rules`
//! does) and stops when the live rule set holds the new digest. In between:
//! the watcher's debounce (150 ms of quiet, for editors that write in
//! steps), reading and hashing the file, compiling it to native code (or
//! loading it from the compile cache), a probe instance with `configure` and
//! `metadata`, and the swap.
//!
//! "Changed" is the same code with a custom section appended: a new digest,
//! so a cache miss, with the compile work of a real edit. A cache hit is a
//! change back to a version compiled before (a revert, or the same module
//! deployed again). For a Rust module the author's `cargo build` comes
//! first; `--cargo-build` times it separately, after touching the pack's source.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{BenchEnv, install_module, sha256_hex, with_custom_section};
use crate::app::Peregrine;

pub(crate) struct ReloadFigures {
    pub rust_miss_ms: f64,
    pub rust_hit_ms: f64,
    /// `cargo build` of the pack after a touch, if asked for.
    pub rust_cargo_ms: Option<f64>,
    pub python_miss_ms: Option<f64>,
    pub python_hit_ms: Option<f64>,
    pub js_miss_ms: Option<f64>,
    pub js_hit_ms: Option<f64>,
}

const TIMEOUT: Duration = Duration::from_secs(120);

/// Measures a miss then a hit for one module; returns milliseconds.
fn edit_to_live(env: &BenchEnv, file: &str) -> anyhow::Result<(f64, f64)> {
    let original = std::fs::read(env.example(file)?)?;
    let dir = env.scratch_dir(&format!("reload-{file}"))?;
    install_module(&dir, file, &original)?;
    let config = Arc::new(env.config(1));
    let pipeline = Peregrine::evaluate_only(config, super::options(vec![dir.to_path_buf()]))?;
    let _watcher = pipeline.rules().watch()?;
    let key = crate::rules::module_key(Path::new(file));

    let nonce = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let edited = with_custom_section(&original, "peregrine-bench-edit", nonce.as_bytes());
    let miss = swap_in(&pipeline, &dir, file, &key, &edited)?;
    // Back to the first version: compiled at start-up, so in the cache.
    let hit = swap_in(&pipeline, &dir, file, &key, &original)?;
    Ok((miss, hit))
}

fn swap_in(
    pipeline: &Peregrine,
    dir: &Path,
    file: &str,
    key: &str,
    bytes: &[u8],
) -> anyhow::Result<f64> {
    let digest = sha256_hex(bytes);
    // Let the watcher settle after the previous change.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    install_module(dir, file, bytes)?;
    loop {
        let live = pipeline
            .rules()
            .current()
            .load()
            .modules
            .iter()
            .any(|m| m.key == key && m.digest == digest);
        if live {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if started.elapsed() > TIMEOUT {
            let why = pipeline
                .rules()
                .report(None)
                .into_iter()
                .find_map(|r| r.last_error)
                .unwrap_or_else(|| "no error reported".into());
            anyhow::bail!(
                "{file} did not go live within {} s: {why}",
                TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `cargo build` of the pack for wasm32-wasip2 after touching its source.
fn cargo_build_ms() -> anyhow::Result<f64> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = root.join("example-rules/rust/falco-k8s-audit/src/lib.rs");
    let build = || {
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--profile",
                "wasm-rules",
                "--target",
                "wasm32-wasip2",
                "-p",
                "falco-k8s-audit",
            ])
            .status()
            .context("cannot run cargo")
    };
    // First bring the build up to date, so only the edit is timed.
    anyhow::ensure!(build()?.success(), "cargo build of the Falco pack failed");
    let f = std::fs::File::options().write(true).open(&lib)?;
    f.set_modified(std::time::SystemTime::now())?;
    let started = Instant::now();
    anyhow::ensure!(build()?.success(), "cargo build of the Falco pack failed");
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

pub(crate) fn run(env: &BenchEnv, cargo_build: bool) -> anyhow::Result<ReloadFigures> {
    env.progress.step("reload: Rust module (the Falco pack)");
    let (rust_miss_ms, rust_hit_ms) = edit_to_live(env, super::native::PACK_FILE)?;
    env.progress
        .step("reload: Python module (compiles for seconds on a miss)");
    let python = match edit_to_live(env, "privileged_impersonation.wasm") {
        Ok(v) => Some(v),
        Err(e) => {
            env.progress
                .note(format!("reload: Python module skipped: {e:#}"));
            None
        }
    };
    env.progress
        .step("reload: JavaScript module (compiles for seconds on a miss)");
    let js = match edit_to_live(env, "secret_enumeration.wasm") {
        Ok(v) => Some(v),
        Err(e) => {
            env.progress
                .note(format!("reload: JavaScript module skipped: {e:#}"));
            None
        }
    };
    let rust_cargo_ms = if cargo_build {
        env.progress
            .step("reload: cargo build of the Falco pack after a touch");
        Some(cargo_build_ms()?)
    } else {
        None
    };
    Ok(ReloadFigures {
        rust_miss_ms,
        rust_hit_ms,
        rust_cargo_ms,
        python_miss_ms: python.map(|v| v.0),
        python_hit_ms: python.map(|v| v.1),
        js_miss_ms: js.map(|v| v.0),
        js_hit_ms: js.map(|v| v.1),
    })
}
