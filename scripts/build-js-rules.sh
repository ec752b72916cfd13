#!/usr/bin/env bash
# Builds every JavaScript rule module, example-rules/js/<name>/ with an
# index.js, into OUTDIR/<name with - replaced by _>.wasm using componentize-js.
#
# usage: scripts/build-js-rules.sh OUTDIR
#
# componentize-js is pinned in example-rules/js/package-lock.json and
# installed with `npm ci` when missing. A module is rebuilt only when one of
# the .js files it may import (its own directory, or shared code elsewhere in
# example-rules/js) or the WIT contract is newer than its .wasm. Environment:
#   FORCE_REBUILD  set to 1 to rebuild every module
set -euo pipefail

COMPONENTIZE_JS_MINOR=0.23

die() {
    echo "build-js-rules: error: $*" >&2
    exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 OUTDIR"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JS_DIR=$ROOT/example-rules/js
WIT_DIR=$ROOT/wit
WORLD=rule-module

mkdir -p "$1" || die "cannot create output directory $1"
OUT=$(cd "$1" && pwd)

command -v node >/dev/null || die "node not found; install Node.js 18 or newer"
command -v npm >/dev/null || die "npm not found; install npm"

TOOL_PKG=$JS_DIR/node_modules/@bytecodealliance/componentize-js/package.json
tool_version() {
    [[ -f $TOOL_PKG ]] && node -p "require(process.argv[1]).version" "$TOOL_PKG" 2>/dev/null
}

version=$(tool_version || true)
if [[ $version != "$COMPONENTIZE_JS_MINOR".* ]]; then
    echo "build-js-rules: installing componentize-js from example-rules/js/package-lock.json (found: ${version:-none})" >&2
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) \
        || die "npm ci failed in example-rules/js"
    version=$(tool_version || true)
    [[ $version == "$COMPONENTIZE_JS_MINOR".* ]] \
        || die "componentize-js $COMPONENTIZE_JS_MINOR.x expected after npm ci, found ${version:-none}"
fi
COMPONENTIZE_JS=$JS_DIR/node_modules/@bytecodealliance/componentize-js/src/cli.js

stale() {
    local target=$1
    [[ ${FORCE_REBUILD:-0} == 1 || ! -f $target ]] && return 0
    [[ -n $(find "$JS_DIR" "$WIT_DIR" -path "$JS_DIR/node_modules" -prune -o -type f \
        \( -name '*.js' -o -name '*.mjs' -o -name '*.wit' \) -not -name '*.test.js' \
        -newer "$target" -print -quit) ]]
}

shopt -s nullglob
modules=0
failed=()
for dir in "$JS_DIR"/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    # Directories without index.js hold shared or test-only code.
    [[ $name == node_modules || ! -f $dir/index.js ]] && continue
    modules=$((modules + 1))
    target=$OUT/${name//-/_}.wasm
    if ! stale "$target"; then
        echo "up to date  $target"
        continue
    fi
    start=$(date +%s.%N)
    # componentize-js reports a syntax error without file or line; node does.
    syntax_ok=1
    for source in "$dir"/*.js; do
        node --check "$source" || syntax_ok=0
    done
    if [[ $syntax_ok == 0 ]]; then
        echo "build-js-rules: error: syntax errors in example-rules/js/$name (above)" >&2
        failed+=("$name")
        continue
    fi
    log=$(mktemp)
    # Unique per process, so two builds into one OUTDIR cannot mix files.
    tmp=$target.$$.tmp
    # http and fetch-event are off so the component imports no wasi:http:
    # rules get no network. stdio stays on so uncaught errors reach the host's
    # stderr instead of becoming bare traps.
    if ! node "$COMPONENTIZE_JS" "$dir/index.js" --wit "$WIT_DIR" --world-name "$WORLD" \
        --disable http fetch-event --out "$tmp" >"$log" 2>&1 || [[ ! -s $tmp ]]; then
        # An empty or missing output must never replace a working module.
        cat "$log" >&2
        rm -f "$log" "$tmp"
        echo "build-js-rules: error: componentize-js failed for example-rules/js/$name (output above)" >&2
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

[[ $modules -gt 0 ]] || die "no JavaScript rule modules (directories with index.js) under example-rules/js/"
[[ ${#failed[@]} -eq 0 ]] || die "${#failed[@]} of $modules JavaScript modules failed to build: ${failed[*]}"
