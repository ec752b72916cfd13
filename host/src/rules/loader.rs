use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use peregrine_sdk::ModuleInfo;
use sha2::{Digest, Sha256};

use super::{LoadedModule, MAX_MODULE_BYTES, Scope, StateStore};
use crate::config::PeregrineConfig;
use crate::engine::{CallError, CompiledModule, LoadError, SandboxLimits, WasmEngine};

const MAX_RULES_PER_MODULE: usize = 1_000;
const MAX_TEXT: usize = 4_096;

/// Why a module did not go live.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailure {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, over the {MAX_MODULE_BYTES}-byte limit for a module")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path} is not loaded: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error(transparent)]
    Compile(#[from] LoadError),
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("rejected its configuration: {0}")]
    Config(String),
    #[error("invalid metadata: {0}")]
    Metadata(String),
}

/// The `*.wasm` entries of a rules directory, in name order, whatever their
/// type: [`read_module`] decides which it loads, so a FIFO or a stray
/// symlink shows up in the rules API with its reason instead of vanishing.
/// Subdirectories are not searched, so optional modules can sit next to the
/// live ones.
pub fn discover_modules(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads the module file `path` of the rules directory `dir` (canonical).
/// Everything in a rules directory may be hostile where tenants own their
/// directories, so: only regular files are read, opened without blocking (a
/// FIFO must not stall the reload thread), their size is checked before the
/// read and the read is capped (a symlink to `/dev/zero` must not fill
/// memory), and a symlink is followed only to a file inside `dir` unless
/// `follow_symlinks` (a symlink to `/etc/passwd` is refused). Errors name
/// the file and the reason, never its content.
pub fn read_module(path: &Path, dir: &Path, follow_symlinks: bool) -> Result<Vec<u8>, LoadFailure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| LoadFailure::Read {
        path: path.to_path_buf(),
        source,
    };
    let refused = |reason: String| LoadFailure::Refused {
        path: path.to_path_buf(),
        reason,
    };
    let mut target = path.to_path_buf();
    if std::fs::symlink_metadata(path)
        .map_err(read_err)?
        .file_type()
        .is_symlink()
    {
        target = std::fs::canonicalize(path).map_err(read_err)?;
        if !follow_symlinks && !target.starts_with(dir) {
            return Err(refused(
                "a symlink to a file outside the rules directory (set rules.follow_symlinks = true to allow)"
                    .into(),
            ));
        }
    }
    let meta = std::fs::metadata(&target).map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(refused(kind_of(meta.file_type()).into()));
    }
    let too_large = |size| LoadFailure::TooLarge {
        path: path.to_path_buf(),
        size,
    };
    if meta.len() > MAX_MODULE_BYTES {
        return Err(too_large(meta.len()));
    }
    // The file may have been swapped since the checks above: open without
    // blocking and without following a new symlink, and check the handle.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&target)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.file_type().is_file() {
        return Err(refused(kind_of(meta.file_type()).into()));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_MODULE_BYTES) as usize);
    file.take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    // The compiler's error for a file that is not WebAssembly quotes its
    // first bytes: say what it is not instead.
    if !bytes.starts_with(b"\0asm") {
        return Err(refused(
            "not a WebAssembly file (it does not start with the \\0asm header)".into(),
        ));
    }
    Ok(bytes)
}

/// The sha256 of a module file, in hex: its identity in alerts, the API and
/// the compile cache.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Module key: the file name without `.wasm`.
pub fn module_key(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads modules: compile (deduplicated by digest, through the on-disk
/// cache), instantiate once, `configure`, `metadata`, validate.
pub struct ModuleLoader {
    engine: Arc<WasmEngine>,
    config: Arc<PeregrineConfig>,
    states: Arc<StateStore>,
    /// Identical modules (same digest) share one compiled component, across
    /// tenants too.
    compiled: Mutex<HashMap<String, Weak<CompiledModule>>>,
}

impl ModuleLoader {
    pub fn new(
        engine: Arc<WasmEngine>,
        config: Arc<PeregrineConfig>,
        states: Arc<StateStore>,
    ) -> Self {
        ModuleLoader {
            engine,
            config,
            states,
            compiled: Mutex::new(HashMap::new()),
        }
    }

    pub fn engine(&self) -> &Arc<WasmEngine> {
        &self.engine
    }

    pub fn states(&self) -> &Arc<StateStore> {
        &self.states
    }

    pub fn config(&self) -> &Arc<PeregrineConfig> {
        &self.config
    }

    /// Loads `path` for `scope` with its configuration (JSON text) and
    /// sandbox limits.
    #[tracing::instrument(name = "load", skip_all, fields(module = %path.display(), digest))]
    pub fn load(
        &self,
        path: &Path,
        bytes: &[u8],
        scope: Scope,
        config_json: &str,
        limits: SandboxLimits,
    ) -> Result<LoadedModule, LoadFailure> {
        let digest = digest_of(bytes);
        tracing::Span::current().record("digest", &digest[..12]);
        let compiled = self.compiled(bytes, &digest)?;

        let key = module_key(path);
        let label: Arc<str> = format!("{key}@{}", &digest[..12]).into();
        let probe_tenant: Arc<str> = match &scope {
            Scope::Global => "default".into(),
            Scope::Tenant(t) => t.clone(),
        };
        let state = self.states.table(&probe_tenant, &scope, &key);
        let mut instance = self
            .engine
            .instantiate(&compiled, label.clone(), limits, state)?;
        instance
            .configure(config_json)?
            .map_err(LoadFailure::Config)?;
        let info = instance.metadata()?;
        validate_metadata(&info).map_err(LoadFailure::Metadata)?;

        let rule_index = info
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let needs_raw = info.needs_request_object || info.needs_response_object;
        tracing::info!(
            name = %info.name,
            version = %info.version,
            rules = info.rules.len(),
            enabled = info.rules.iter().filter(|r| r.enabled).count(),
            cached = compiled.from_cache,
            "module loaded"
        );
        Ok(LoadedModule {
            key,
            scope,
            path: path.to_path_buf(),
            digest,
            info,
            config_json: config_json.to_string(),
            limits,
            compiled,
            loaded_at: SystemTime::now(),
            label,
            stats: Arc::default(),
            health: crate::health::ModuleHealth::new(self.config.engine.quarantine.clone()),
            rule_index,
            needs_raw,
        })
    }

    fn compiled(&self, bytes: &[u8], digest: &str) -> Result<Arc<CompiledModule>, LoadFailure> {
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .and_then(Weak::upgrade)
        {
            return Ok(c);
        }
        // Compiling takes seconds for large modules: not under the lock.
        let c = Arc::new(self.engine.compile(bytes, digest)?);
        let mut map = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(digest.to_string(), Arc::downgrade(&c));
        Ok(c)
    }
}

/// Metadata the host can rely on: ids unique and non-empty, sizes sane.
fn validate_metadata(info: &ModuleInfo) -> Result<(), String> {
    if info.name.trim().is_empty() {
        return Err("the module name is empty".into());
    }
    if info.rules.is_empty() {
        return Err("the module declares no rules".into());
    }
    if info.rules.len() > MAX_RULES_PER_MODULE {
        return Err(format!(
            "{} rules, over the limit of {MAX_RULES_PER_MODULE}",
            info.rules.len()
        ));
    }
    let mut seen = HashSet::new();
    for r in &info.rules {
        if r.id.trim().is_empty() {
            return Err(format!("rule `{}` has an empty id", r.name));
        }
        if r.name.trim().is_empty() {
            return Err(format!("rule `{}` has an empty name", r.id));
        }
        if !seen.insert(r.id.as_str()) {
            return Err(format!("rule id `{}` is declared twice", r.id));
        }
        let text = r.id.len()
            + r.name.len()
            + r.description.len()
            + r.tags.iter().map(String::len).sum::<usize>();
        if text > MAX_TEXT * 4 {
            return Err(format!(
                "rule `{}` has {text} bytes of metadata text, too much",
                r.id
            ));
        }
    }
    Ok(())
}
