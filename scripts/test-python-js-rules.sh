#!/usr/bin/env bash
# Runs the unit tests of the Python and JavaScript rule modules, natively:
# `python3 -m unittest` in each example-rules/python/<module>/ and
# `node --test` in example-rules/js/. Neither needs a build, Wasm or
# node_modules. Exits non-zero if any test fails or no test ran.
#
# usage: scripts/test-python-js-rules.sh
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

passed=0
failed=0
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

shopt -s nullglob
for dir in "$ROOT"/example-rules/python/*/; do
    dir=${dir%/}
    tests=("$dir"/test_*.py)
    if [[ ${#tests[@]} -eq 0 ]]; then
        echo "test-python-js-rules: example-rules/python/$(basename "$dir") has no test_*.py" >&2
        status=1
        continue
    fi
    echo "== python: example-rules/python/$(basename "$dir")"
    # One interpreter per module: modules may reuse file names such as
    # test_rules.py, which would collide in one process's sys.modules.
    (cd "$dir" && "$PYTHON" -B - <<'PY'
import sys
import unittest

suite = unittest.defaultTestLoader.discover(".", pattern="test_*.py", top_level_dir=".")
result = unittest.TextTestRunner(verbosity=2).run(suite)
# A test whose subtests failed counts once, as one failed test.
failed = {getattr(test, "test_case", test).id() for test, _ in result.failures + result.errors}
failed |= {t.id() for t, _ in result.unexpectedSuccesses}
print(f"unittest-counts ran={result.testsRun} failed={len(failed)}")
sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
PY
    ) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    ran=$(sed -n 's/^unittest-counts ran=\([0-9]*\) failed=[0-9]*$/\1/p' "$log" | tail -n 1)
    bad=$(sed -n 's/^unittest-counts ran=[0-9]* failed=\([0-9]*\)$/\1/p' "$log" | tail -n 1)
    ran=${ran:-0}
    bad=${bad:-0}
    if [[ $rc -ne 0 && $bad -eq 0 ]]; then
        # The runner died before reporting (import error, crash): count it.
        bad=1
    fi
    passed=$((passed + ran - bad))
    failed=$((failed + bad))
    [[ $rc -eq 0 && $ran -gt 0 ]] || status=1
done

echo "== node: example-rules/js"
(cd "$ROOT/example-rules/js" && node --test --test-reporter=tap) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
js_pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -n 1)
js_fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -n 1)
js_pass=${js_pass:-0}
js_fail=${js_fail:-0}
if [[ $rc -ne 0 && $js_fail -eq 0 ]]; then
    js_fail=1
fi
passed=$((passed + js_pass))
failed=$((failed + js_fail))
[[ $rc -eq 0 && $js_pass -gt 0 ]] || status=1

[[ $passed -gt 0 ]] || status=1
echo "python-js-rules: $passed passed, $failed failed"
exit $status
