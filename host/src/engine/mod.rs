//! The sandbox: the only code in Peregrine that touches wasmtime.
//!
//! One [`WasmEngine`] per process compiles rule components (through a
//! persistent cache), and hands out [`ModuleInstance`]s: one fresh store per
//! (module, batch), with an epoch deadline on every call and a memory cap per
//! store. Everything outside this module sees only SDK types and the errors
//! below.

mod bindings;
mod cache;
mod instance;
mod limits;
mod output;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use instance::{CallError, Evaluated, ModuleInstance, PreparedEvent};
pub use limits::SandboxLimits;
pub use output::{ALERTS_CUT_FIELD, Cut, TRUNCATED_FIELD};

use bindings::RuleModulePre;
use instance::StoreData;
use limits::{Permit, Permits};

/// How the process-wide engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Interval of the epoch ticker; deadlines are enforced to within one tick.
    pub epoch_tick: Duration,
    /// Instances that may be alive at once (worker threads plus loads). The
    /// pooling allocator reserves slots for exactly this many.
    pub max_instances: u32,
    /// The largest memory cap any module may be given.
    pub max_memory_bytes: usize,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            epoch_tick: Duration::from_millis(2),
            max_instances: 16,
            max_memory_bytes: SandboxLimits::default().memory_bytes,
            cache_dir: None,
        }
    }
}

/// Errors of loading a component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component does not implement the peregrine:rules rule-module world: {0}")]
    Contract(String),
    #[error("compile cache: {0}")]
    Cache(String),
}

/// The version of the `peregrine:rules` WIT package the host binds
/// (`wit/rules.wit`).
pub const CONTRACT_VERSION: &str = "0.1.0";

/// A compiled rule component, ready to be instantiated many times.
pub struct CompiledModule {
    pre: RuleModulePre<StoreData>,
    /// Whether the component came from the compile cache.
    pub from_cache: bool,
    /// The `peregrine:rules` package version the component was built
    /// against, as its imports name it.
    pub contract: String,
}

/// The process-wide sandbox engine.
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<StoreData>,
    options: EngineOptions,
    tick_nanos: u64,
    permits: Arc<Permits>,
    cache: Option<cache::CompileCache>,
}

impl WasmEngine {
    pub fn new(options: EngineOptions) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::new();
        let n = options.max_instances.max(1);
        // Python and JavaScript components hold a dozen core instances and a
        // few memories each, and large tables; size per component for them.
        pool.total_component_instances(n)
            .max_core_instances_per_component(32)
            .max_memories_per_component(8)
            .max_tables_per_component(8)
            .total_core_instances(n * 32)
            .total_memories(n * 4)
            .total_tables(n * 8)
            .table_elements(200_000)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(1 << 20)
            .max_memory_size(options.max_memory_bytes);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // No async host calls: skip the concurrency machinery on every call.
            .concurrency_support(false)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;

        let mut linker: Linker<StoreData> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        bindings::RuleModule::add_to_linker::<_, wasmtime::component::HasSelf<StoreData>>(
            &mut linker,
            |d| d,
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;

        let cache = match &options.cache_dir {
            Some(dir) => Some(cache::CompileCache::open(dir, &engine)?),
            None => None,
        };
        let tick_nanos = options.epoch_tick.as_nanos().max(1) as u64;
        let this = Arc::new(WasmEngine {
            engine,
            linker,
            tick_nanos,
            permits: Arc::new(Permits::new(n as usize)),
            cache,
            options,
        });
        this.start_epoch_ticker();
        Ok(this)
    }

    /// A dedicated thread advances the epoch; a weak reference lets it stop
    /// when the engine is dropped (tests create many engines).
    fn start_epoch_ticker(self: &Arc<Self>) {
        let weak_engine = self.engine.weak();
        let tick = self.options.epoch_tick;
        thread::Builder::new()
            .name("peregrine-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak_engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    thread::sleep(tick);
                }
            })
            .expect("spawning the epoch ticker thread");
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Compiles a component, or loads it from the compile cache, and checks
    /// that it implements the rule-module world. Imports the host does not
    /// provide are linked as traps, so they fail only if called.
    pub fn compile(&self, bytes: &[u8], digest: &str) -> Result<CompiledModule, LoadError> {
        let (component, from_cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, bytes, digest)?,
            None => (
                Component::new(&self.engine, bytes)
                    .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
                false,
            ),
        };
        let pre = match self.linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(_) => {
                // Some import is not provided (for example wasi:http, which a
                // language runtime links but a rule never calls): link those
                // as traps, so they fail only if called.
                let mut linker = self.linker.clone();
                stub_unprovided_imports(&mut linker, &self.engine, &component)
                    .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
                linker
                    .instantiate_pre(&component)
                    .map_err(|e| LoadError::Contract(format!("{e:#}")))?
            }
        };
        let pre = RuleModulePre::new(pre).map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let contract = contract_of(&self.engine, &component);
        Ok(CompiledModule {
            pre,
            from_cache,
            contract,
        })
    }

    /// A fresh instance of `module`. Blocks while all pool slots are taken,
    /// because a full pooling allocator fails instead of waiting.
    pub fn instantiate(
        &self,
        module: &CompiledModule,
        label: Arc<str>,
        limits: SandboxLimits,
        state: Arc<Mutex<peregrine_sdk::state::StateTable>>,
    ) -> Result<ModuleInstance, CallError> {
        let permit = Permit::acquire(&self.permits);
        instance::ModuleInstance::new(
            &self.engine,
            &module.pre,
            label,
            limits,
            state,
            self.tick_nanos,
            permit,
        )
    }
}

/// The contract version a component names in its `peregrine:rules/...@x.y.z`
/// imports (the `types` interface its exports use is always among them).
/// A component that names none still type-checked against the world the
/// host binds, so that is its contract.
fn contract_of(engine: &Engine, component: &Component) -> String {
    let ty = component.component_type();
    let named = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name))
        .find_map(|name| {
            name.strip_prefix("peregrine:rules/")
                .and_then(|rest| rest.split_once('@'))
                .map(|(_, version)| version.to_string())
        });
    named.unwrap_or_else(|| CONTRACT_VERSION.to_string())
}

/// Whether the host links `import` itself: its own contract, and the WASI
/// 0.2 packages wasmtime-wasi implements (any 0.2.x, by semver).
fn provided_by_host(import: &str) -> bool {
    if import.starts_with("peregrine:rules/") {
        return true;
    }
    const WASI: [&str; 6] = [
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:filesystem/",
        "wasi:io/",
        "wasi:random/",
        "wasi:sockets/",
    ];
    WASI.iter().any(|p| import.starts_with(p))
        && import
            .split_once('@')
            .is_some_and(|(_, v)| v.starts_with("0.2."))
}

/// Links every import the host does not provide as functions that trap.
/// wasmtime's `define_unknown_imports_as_traps` would also shadow WASI
/// imports of an older 0.2.x version that the linker satisfies by semver.
fn stub_unprovided_imports(
    linker: &mut Linker<StoreData>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::types::ComponentItem;
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if provided_by_host(name) {
            continue;
        }
        match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut inst = linker.instance(name)?;
                for (export, item) in instance.exports(engine) {
                    let full = format!("{name}#{export}");
                    match item.ty {
                        ComponentItem::ComponentFunc(_) => {
                            inst.func_new(export, move |_, _, _, _| {
                                wasmtime::bail!("import `{full}` is not available to rule modules")
                            })?;
                        }
                        ComponentItem::Resource(_) => {
                            inst.resource(
                                export,
                                wasmtime::component::ResourceType::host::<()>(),
                                |_, _| Ok(()),
                            )?;
                        }
                        _ => {}
                    }
                }
            }
            ComponentItem::ComponentFunc(_) => {
                let full = name.to_string();
                linker.root().func_new(name, move |_, _, _, _| {
                    wasmtime::bail!("import `{full}` is not available to rule modules")
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}
