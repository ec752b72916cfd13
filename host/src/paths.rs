//! Where Peregrine finds its files when the configuration does not say: the
//! per-user base directories of its cache, journal, alert history and spools,
//! and the rules directory of `serve`, `replay` and `check` without `--rules`.

use std::path::{Path, PathBuf};

/// A per-user base directory: `$var` if set (the XDG base directory
/// variables), else `$HOME/<fallback>`; `None` when neither is set.
pub(crate) fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(fallback)))
}

/// Where a rules directory is looked for when neither the command line nor
/// the configuration names one, in this order:
/// - `example-rules/build` in the current directory: a checkout where `make
///   rules` ran (`make run` serves from there);
/// - next to the binary: `rules/` beside it (an unpacked release), or the
///   checkout a `cargo build` put it in (`target/<profile>/peregrine`);
/// - an installed share directory: `../share/peregrine/rules` from the
///   binary (`/usr/local/bin` -> `/usr/local/share`), then
///   `/usr/share/peregrine/rules`.
///
/// The places are found at run time, so a binary copied elsewhere does not
/// look in the machine it was built on.
pub(crate) fn default_rules_dir_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join("example-rules/build"));
    }
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        out.push(bin_dir.join("rules"));
        if let Some(checkout) = bin_dir.parent().and_then(Path::parent) {
            out.push(checkout.join("example-rules/build"));
        }
        if let Some(prefix) = bin_dir.parent() {
            out.push(prefix.join("share/peregrine/rules"));
        }
    }
    out.push(PathBuf::from("/usr/share/peregrine/rules"));
    let mut seen = Vec::new();
    out.retain(|p| {
        let new = !seen.contains(p);
        seen.push(p.clone());
        new
    });
    out
}

/// The first of [`default_rules_dir_candidates`] that is a directory, or an
/// error that lists every place looked in and what to do.
pub(crate) fn default_rules_dir() -> anyhow::Result<PathBuf> {
    let candidates = default_rules_dir_candidates();
    if let Some(dir) = candidates.iter().find(|p| p.is_dir()) {
        return Ok(dir.clone());
    }
    let looked: Vec<String> = candidates
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect();
    anyhow::bail!(
        "no rules directory given, and none found in the default places:\n{}\n\
         pass --rules DIR, set rules.dirs in the configuration, or build the example rules \
         with `make rules` in a checkout",
        looked.join("\n")
    )
}
