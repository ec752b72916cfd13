# The two commands of the README:
#   make run    build the example rules and serve the webhook on 127.0.0.1:8765
#   make test   build everything (host, Rust/Python/JS rule modules) and run every test
# Both install what they need (the wasm32-wasip2 target, componentize-py,
# componentize-js) when it is missing.

CARGO ?= cargo

.PHONY: run test rules lint bench clean-rules

run: rules
	$(CARGO) run --release -p peregrine -- serve

rules:
	scripts/build-rules.sh

test: rules tests/ui/node_modules
	$(CARGO) test --release --workspace
	scripts/test-python-js-rules.sh

# Playwright (the library only; the browser is Debian's chromium) for the UI tests.
tests/ui/node_modules: tests/ui/package-lock.json
	cd tests/ui && npm ci --no-audit --no-fund
	touch $@

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: rules
	$(CARGO) run --release -p peregrine -- bench

clean-rules:
	rm -rf example-rules/build tests/build
