#!/usr/bin/env bash
# Builds every rule module:
#   example-rules/rust/*       -> example-rules/build/<crate>.wasm
#                                 (crates with [package.metadata.peregrine] optional = true
#                                  go to example-rules/build/optional/)
#   example-rules/python/*     -> example-rules/build/<name>.wasm   (componentize-py)
#   example-rules/js/*         -> example-rules/build/<name>.wasm   (componentize-js)
#   tests/fixture-rules/*      -> tests/build/fixture-rules/<crate>.wasm
# Installs the wasm32-wasip2 target, componentize-py and componentize-js if missing.
# A .wasm is only replaced when its content changed, so a running
# `peregrine serve` reloads exactly the modules that changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=example-rules/build
FIXTURES_OUT=tests/build/fixture-rules
PROFILE=wasm-rules
TARGET=wasm32-wasip2

mkdir -p "$OUT/optional" "$FIXTURES_OUT"

if ! rustup target list --installed 2>/dev/null | grep -x "$TARGET" >/dev/null; then
    echo "build-rules: installing the $TARGET target"
    rustup target add "$TARGET"
fi

crate_name() { sed -n 's/^name *= *"\(.*\)"/\1/p' "$1/Cargo.toml" | head -n1; }

packages=()
declare -A dest
for dir in example-rules/rust/*/ tests/fixture-rules/*/; do
    dir=${dir%/}
    [[ -f $dir/Cargo.toml ]] || continue
    name=$(crate_name "$dir")
    packages+=(-p "$name")
    if [[ $dir == tests/* ]]; then
        dest[$name]=$FIXTURES_OUT
    elif grep -q '^optional *= *true' "$dir/Cargo.toml"; then
        dest[$name]=$OUT/optional
    else
        dest[$name]=$OUT
    fi
done

echo "build-rules: building ${#dest[@]} Rust modules"
cargo build --quiet --profile "$PROFILE" --target "$TARGET" "${packages[@]}"

for name in "${!dest[@]}"; do
    file=${name//-/_}.wasm
    src=target/$TARGET/$PROFILE/$file
    [[ -f $src ]] || { echo "build-rules: error: $src was not produced" >&2; exit 1; }
    if ! cmp -s "$src" "${dest[$name]}/$file"; then
        # Copy then rename, so a watcher never sees a half-written module.
        cp "$src" "${dest[$name]}/.$file.tmp"
        mv "${dest[$name]}/.$file.tmp" "${dest[$name]}/$file"
        echo "build-rules: ${dest[$name]}/$file"
    fi
done

scripts/build-python-rules.sh "$OUT"
scripts/build-js-rules.sh "$OUT"
