#!/usr/bin/env bash
# Fails when a tracked file is over 1 MB: build outputs, packages and large
# test data do not belong in the repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LIMIT=$((1 << 20))
status=0
while IFS= read -r -d '' file; do
    [[ -f $file ]] || continue
    size=$(stat -c %s "$file")
    if ((size > LIMIT)); then
        echo "check-file-sizes: $file is $size bytes, over the 1 MB limit for a tracked file" >&2
        status=1
    fi
done < <(git ls-files -z)
exit $status
