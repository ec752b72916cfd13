#!/usr/bin/env bash
# Builds every Python rule module, example-rules/python/<name>/ with an app.py,
# into OUTDIR/<name with - replaced by _>.wasm using componentize-py.
#
# usage: scripts/build-python-rules.sh OUTDIR
#
# A module is rebuilt only when one of its .py files or the WIT contract is
# newer than its .wasm, so repeated test runs cost nothing. Environment:
#   PYTHON         interpreter that runs componentize-py (default python3)
#   FORCE_REBUILD  set to 1 to rebuild every module
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

die() {
    echo "build-python-rules: error: $*" >&2
    exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 OUTDIR"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WIT_DIR=$ROOT/wit
WORLD=rule-module
PYTHON=${PYTHON:-python3}

mkdir -p "$1" || die "cannot create output directory $1"
OUT=$(cd "$1" && pwd)

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.9 or newer, or set PYTHON"

# Runs componentize-py through the interpreter rather than its console script,
# so a fresh `pip install` works at once even where the script is not on PATH
# (pyenv shims, --user installs).
componentize_py() {
    # Its own Rust backtrace says nothing about the rule author's mistake,
    # which the Python traceback above it already shows.
    RUST_BACKTRACE=0 "$PYTHON" -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}

# The runtime and binding conventions change between minor versions, so the
# minor version is pinned; any patch release of it will do.
have_usable_tool() {
    "$PYTHON" -c 'import componentize_py' 2>/dev/null || return 1
    local version
    version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null) || return 1
    [[ $version == "${COMPONENTIZE_PY_VERSION%.*}".* ]]
}

if ! have_usable_tool; then
    found=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("componentize-py"))' 2>/dev/null || true)
    if [[ -z $found ]] && command -v componentize-py >/dev/null 2>&1; then
        # A componentize-py on PATH that $PYTHON cannot import belongs to another interpreter.
        found="$(componentize-py --version 2>/dev/null | awk '{print $2}') for another Python"
    fi
    echo "build-python-rules: installing componentize-py $COMPONENTIZE_PY_VERSION (found: ${found:-none})" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION" >&2 \
        || die "pip could not install componentize-py==$COMPONENTIZE_PY_VERSION for $PYTHON"
    have_usable_tool || die "componentize-py $COMPONENTIZE_PY_VERSION is still not importable by $PYTHON after pip install"
fi

# Newer than the target, or the target missing: needs a build.
stale() {
    local target=$1 dir=$2
    [[ ${FORCE_REBUILD:-0} == 1 || ! -f $target ]] && return 0
    [[ -n $(find "$dir" "$WIT_DIR" -type f \( -name '*.py' -o -name '*.wit' \) \
        -not -path '*/__pycache__/*' -newer "$target" -print -quit) ]]
}

shopt -s nullglob
modules=0
failed=()
for dir in "$ROOT"/example-rules/python/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    if [[ ! -f $dir/app.py ]]; then
        echo "build-python-rules: skipping example-rules/python/$name: no app.py" >&2
        continue
    fi
    modules=$((modules + 1))
    target=$OUT/${name//-/_}.wasm
    if ! stale "$target" "$dir"; then
        echo "up to date  $target"
        continue
    fi
    start=$(date +%s.%N)
    log=$(mktemp)
    # Unique per process, so two builds into one OUTDIR cannot mix files.
    tmp=$target.$$.tmp
    # Written beside the target and renamed, so a failed build leaves no file
    # that looks newer than its sources and a watcher never sees half a module.
    if ! componentize_py -d "$WIT_DIR" -w "$WORLD" componentize -p "$dir" app -o "$tmp" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log" "$tmp"
        echo "build-python-rules: error: componentize-py failed for example-rules/python/$name (output above)" >&2
        failed+=("$name")
        continue
    fi
    rm -f "$log"
    mv -f "$tmp" "$target"
    end=$(date +%s.%N)
    size=$(stat -c %s "$target")
    awk -v t="$target" -v s="$size" -v a="$start" -v b="$end" \
        'BEGIN { printf "built       %s (%.1f MB) in %.1f s\n", t, s / 1e6, b - a }'
done

[[ $modules -gt 0 ]] || die "no Python rule modules (directories with app.py) under example-rules/python/"
[[ ${#failed[@]} -eq 0 ]] || die "${#failed[@]} of $modules Python modules failed to build: ${failed[*]}"
