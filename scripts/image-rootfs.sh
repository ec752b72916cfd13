#!/usr/bin/env bash
# Assembles the root filesystem of Peregrine's container image in DIR:
#   /usr/bin/peregrine                    the release binary, debug info stripped
#   the shared libraries it links (ldd), at their own paths, and the loader
#   /usr/share/peregrine/rules/*.wasm     the compiled default rule packs
#   /usr/share/peregrine/rules/optional/  the optional ones (not loaded)
#   /etc/ssl/certs/ca-certificates.crt    CAs for outputs over HTTPS
#   /etc/passwd, /etc/group               the user 65532 (nonroot)
#   /var/lib/peregrine                    the state directory (a volume)
# Nothing else: no shell, no package manager. The Dockerfile copies DIR into
# a scratch image; scripts/test-deploy.sh builds and runs it.
#
# usage: scripts/image-rootfs.sh DIR [BINARY] [RULES_DIR]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: image-rootfs.sh DIR [BINARY] [RULES_DIR]}
bin=${2:-$ROOT/target/release/peregrine}
rules=${3:-$ROOT/example-rules/build}

[[ -x $bin ]] || { echo "image-rootfs: no binary at $bin (cargo build --release -p peregrine)" >&2; exit 1; }
compgen -G "$rules/*.wasm" >/dev/null || { echo "image-rootfs: no rule modules in $rules (make rules)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/usr/bin" "$out/usr/share/peregrine/rules/optional" "$out/etc/ssl/certs" \
    "$out/var/lib/peregrine" "$out/tmp"
# Without the debug line tables (150 MB); symbols stay, so a panic's
# backtrace still names functions.
objcopy --strip-debug "$bin" "$out/usr/bin/peregrine"
chmod 0755 "$out/usr/bin/peregrine"

# Every library the dynamic loader resolves, and the loader itself (the
# line without `=>`); the vDSO has no file.
while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')

cp "$rules"/*.wasm "$out/usr/share/peregrine/rules/"
if compgen -G "$rules/optional/*.wasm" >/dev/null; then
    cp "$rules"/optional/*.wasm "$out/usr/share/peregrine/rules/optional/"
fi

ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] || { echo "image-rootfs: no CA bundle at $ca (Debian package ca-certificates)" >&2; exit 1; }
cp "$ca" "$out$ca"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/peregrine:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
echo "image-rootfs: $out: $(du -sh "$out" | cut -f1)"
