# The two commands of the README:
#   make run    build the example rules and serve the webhook on 127.0.0.1:8765
#   make test   build everything (host, Rust/Python/JS rule modules) and run every test
# Both install what they need when it is missing: the wasm32-wasip2 target,
# componentize-py, componentize-js, and (for the tests) the Debian packages
# of the services and clients the tests start (scripts/install-test-deps.sh).

CARGO ?= cargo

.PHONY: run test test-deps rules lint bench clean-rules

run: rules
	$(CARGO) run --release -p peregrine -- serve

rules:
	scripts/build-rules.sh

# --no-fail-fast, and the rule tests run even when cargo's fail: one failing
# test binary must not hide the others' results.
test: test-deps rules tests/ui/node_modules
	@status=0; \
	$(CARGO) test --release --workspace --no-fail-fast || status=1; \
	scripts/test-python-js-rules.sh || status=1; \
	scripts/test-deploy.sh || status=1; \
	exit $$status

test-deps:
	scripts/install-test-deps.sh

# Playwright (the library only; the browser is Debian's chromium) for the UI tests.
tests/ui/node_modules: tests/ui/package-lock.json
	cd tests/ui && npm ci --no-audit --no-fund
	touch $@

lint:
	scripts/check-file-sizes.sh
	scripts/check-import-cycles.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: rules
	$(CARGO) run --release -p peregrine -- bench

clean-rules:
	rm -rf example-rules/build tests/build
