//! Where the built rule modules, the audit corpus, the peer suite and the
//! compile cache are, and rules directories made of copies of modules.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A module built by `scripts/build-rules.sh` from `example-rules/`.
pub fn example_module(stem: &str) -> PathBuf {
    built(&root().join("example-rules/build"), stem)
}

/// An optional example module (`example-rules/build/optional/`).
pub fn optional_module(stem: &str) -> PathBuf {
    built(&root().join("example-rules/build/optional"), stem)
}

/// A misbehaving or instrumented module from `tests/fixture-rules/`.
pub fn fixture_module(stem: &str) -> PathBuf {
    built(&root().join("tests/build/fixture-rules"), stem)
}

fn built(dir: &Path, stem: &str) -> PathBuf {
    let p = dir.join(format!("{stem}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the rule modules first (`make rules`, which `make test` runs)",
        p.display()
    );
    p
}

/// The shared audit corpus: `$PEREGRINE_AUDIT_CORPUS`, else
/// `../shared/audit-corpus` next to the checkout.
pub fn corpus() -> PathBuf {
    let p = corpus_location();
    assert!(p.is_dir(), "the audit corpus is missing at {}", p.display());
    p
}

fn corpus_location() -> PathBuf {
    std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/audit-corpus"))
}

/// The Panther peer suite: `$PEREGRINE_PEER_SUITES/panther-k8s`, else
/// `peer-suites/panther-k8s` beside the audit corpus (not committed: see
/// its README).
pub fn peer_suite() -> PathBuf {
    std::env::var_os("PEREGRINE_PEER_SUITES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            corpus_location()
                .parent()
                .map(|p| p.join("peer-suites"))
                .unwrap_or_else(|| PathBuf::from("peer-suites"))
        })
        .join("panther-k8s")
}

/// A file of the corpus's Falco part.
pub fn corpus_file(name: &str) -> PathBuf {
    corpus().join("falco").join(name)
}

/// One compile cache for every test, so Python and JavaScript modules are
/// compiled once per test run, not once per test.
pub fn cache_dir() -> PathBuf {
    let p = root().join("target/test-compile-cache");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Copies `modules` into the directory `dir` (created if missing).
fn copy_modules(dir: &Path, modules: &[PathBuf]) {
    std::fs::create_dir_all(dir).unwrap();
    for m in modules {
        std::fs::copy(m, dir.join(m.file_name().unwrap())).unwrap();
    }
}

/// A rules directory of its own made of copies of the given modules.
pub fn rules_dir(modules: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_modules(dir.path(), modules);
    dir
}

/// The rules directory `work/rules` holding copies of `modules`: beside the
/// journal and store of a server that restarts on the same `work`.
pub fn rules_dir_in(work: &Path, modules: &[PathBuf]) -> PathBuf {
    let dir = work.join("rules");
    copy_modules(&dir, modules);
    dir
}
