//! Compiled components cached on disk, so a restart or a reload of an
//! unchanged module skips compilation (seconds for Python and JavaScript).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

pub(super) struct CompileCache {
    dir: PathBuf,
    /// Changes whenever the engine could not load code compiled by another
    /// wasmtime version or configuration.
    engine_key: String,
}

impl CompileCache {
    pub(super) fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the compile cache directory {}: {e}",
                dir.display()
            )
        })?;
        // Deserialising compiled code is only sound if nobody else can write
        // it, so the directory is private to this user.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", dir.display()))?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    pub(super) fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, bool), LoadError> {
        let path = self.path(digest);
        if path.exists() {
            // SAFETY: the file was written by `serialize` below into a
            // directory only this user can write, under a name bound to the
            // module's sha256 and the engine's compatibility hash.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unreadable compile cache entry: {e:#}");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let component =
            Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        match component.serialize() {
            Ok(compiled) => {
                if let Err(e) = write_atomically(&path, &compiled) {
                    // A cache that cannot be written costs time, not correctness.
                    tracing::warn!(path = %path.display(), "cannot write compile cache entry: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialise compiled component: {e:#}"),
        }
        Ok((component, false))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
