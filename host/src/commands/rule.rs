//! `peregrine rule push|pull`

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::cli::{RegistryArgs, RuleCommand, RulePullArgs, RulePushArgs};
use crate::config::PeregrineConfig;
use crate::engine::{EngineOptions, WasmEngine};
use crate::oci::{ModuleArtifact, RegistryOptions};
use crate::rules::{ModuleLoader, Scope, StateStore, discover_modules, module_key, read_module};

pub fn run(command: RuleCommand) -> anyhow::Result<i32> {
    match command {
        RuleCommand::Push(args) => push(args),
        RuleCommand::Pull(args) => pull(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Docker's own lookup when no file is named: `$DOCKER_CONFIG/config.json`,
/// else `~/.docker/config.json`, if it exists.
fn registry_options(args: &RegistryArgs) -> RegistryOptions {
    let docker_config = args.docker_config.clone().or_else(|| {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
        Some(dir.join("config.json")).filter(|p| p.is_file())
    });
    RegistryOptions {
        docker_config,
        ca_file: args.ca_file.clone(),
        plain_http: args.plain_http,
    }
}

/// The modules to push, each loaded through the engine as `serve` loads it,
/// so a module that would not go live is not published.
fn load_modules(path: &Path, config: Option<&Path>) -> anyhow::Result<Vec<ModuleArtifact>> {
    let files = if path.is_dir() {
        let files = discover_modules(path)
            .with_context(|| format!("cannot read directory {}", path.display()))?;
        anyhow::ensure!(
            !files.is_empty(),
            "{} holds no .wasm module",
            path.display()
        );
        files
    } else {
        anyhow::ensure!(
            path.extension().is_some_and(|x| x == "wasm"),
            "{} is not a .wasm module or a directory of them",
            path.display()
        );
        vec![path.to_path_buf()]
    };
    let mut config = match config {
        Some(p) => PeregrineConfig::load(p)?,
        None => PeregrineConfig::default(),
    };
    config.engine.workers = 1;
    let config = Arc::new(config);
    let engine = WasmEngine::new(EngineOptions {
        epoch_tick: std::time::Duration::from_millis(config.engine.epoch_tick_ms),
        max_instances: 2,
        max_memory_bytes: config.sandbox.max_memory_bytes(),
        cache_dir: config.engine.resolved_cache_dir(),
    })?;
    let loader = ModuleLoader::new(engine, config.clone(), Arc::new(StateStore::default()));
    let mut modules = Vec::new();
    for file in files {
        // The operator named these files: follow their symlinks wherever.
        let bytes = read_module(&file, file.parent().unwrap_or(Path::new("/")), true)
            .with_context(|| format!("not pushing: {} does not load", file.display()))?;
        let key = module_key(&file);
        let module = loader
            .load(
                &file,
                &bytes,
                Scope::Global,
                &config.module_config_json(&key),
                config.sandbox.limits_for(&key),
            )
            .with_context(|| format!("not pushing: {} does not load", file.display()))?;
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        modules.push(ModuleArtifact {
            file_name,
            bytes,
            name: module.info.name.clone(),
            version: module.info.version.clone(),
            contract: module.compiled.contract.clone(),
        });
    }
    Ok(modules)
}

fn push(args: RulePushArgs) -> anyhow::Result<i32> {
    // Check the reference before compiling anything.
    crate::oci::parse_reference(&args.reference)?;
    let modules = load_modules(&args.path, args.config.as_deref())?;
    let options = registry_options(&args.registry);
    let digest = runtime()?.block_on(crate::oci::push(&args.reference, &modules, &options))?;
    for m in &modules {
        println!(
            "{}: {} {} (contract {}, {})",
            m.file_name,
            m.name,
            m.version,
            m.contract,
            m.digest()
        );
    }
    let repo = args
        .reference
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(args.reference.as_str(), |(repo, _)| repo);
    println!("pushed {} as {repo}@{digest}", args.reference);
    Ok(0)
}

fn pull(args: RulePullArgs) -> anyhow::Result<i32> {
    let reference = crate::oci::parse_reference(&args.reference)?;
    let options = registry_options(&args.registry);
    let artifact = runtime()?.block_on(crate::oci::pull(&reference, &options))?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    for m in &artifact.modules {
        // Names were checked against the manifest: plain file names only.
        let dest = args.output.join(&m.file_name);
        let tmp = args.output.join(format!(".{}.tmp", m.file_name));
        std::fs::write(&tmp, &m.bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        println!(
            "{}: {} {} (contract {}, {})",
            dest.display(),
            m.name,
            m.version,
            m.contract,
            m.digest()
        );
    }
    println!("pulled {} ({})", args.reference, artifact.manifest_digest);
    Ok(0)
}
