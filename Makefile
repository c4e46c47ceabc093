# A new user needs two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The versions installed come from the lock files (hashed, made by `make lock`
# from pyproject.toml), so that every machine installs the same code.
APP_LOCK := requirements/app.lock
TEST_LOCK := requirements/test.lock
# The lowest versions pyproject.toml allows of every direct dependency: the
# unit tests run on them too, in a venv of their own, so that the lower bounds
# stay true.
LOWEST_LOCK := requirements/lowest.lock
# pip itself, first in every venv (requirements/pip.lock says why).
PIP_LOCK := requirements/pip.lock
LOWEST := .venv-lowest
# The client package (clients/python) in a venv of its own, with only what it
# needs (requirements/client.lock), as a service that installs it would have.
CLIENT_LOCK := requirements/client.lock
CLIENT := .venv-client
# The npm tools of the tests (the AsyncAPI CLI), from their lock file.
NPM_TOOLS := requirements/npm
SUM := $(shell cat pyproject.toml clients/python/pyproject.toml $(PIP_LOCK) $(APP_LOCK) $(TEST_LOCK) $(LOWEST_LOCK) $(CLIENT_LOCK) | cksum | cut -d' ' -f1)
# What the gateway needs (make demo), and that plus the test tooling (make test).
APP_STAMP := $(VENV)/.installed-app-$(SUM)
STAMP := $(VENV)/.installed-test-$(SUM)
LOWEST_STAMP := $(LOWEST)/.installed-$(SUM)
CLIENT_STAMP := $(CLIENT)/.installed-$(SUM)
NPM_STAMP := $(NPM_TOOLS)/node_modules/.installed-$(shell cksum < $(NPM_TOOLS)/package-lock.json | cut -d' ' -f1)
# Debian packages the tests need: Mosquitto, the broker the integration tests
# start, Redis and its Sentinel, the engine of the cluster's shared parts and
# its failover, HAProxy, the load
# balancer of compose.yaml (its configuration is tested in front of replicas),
# Chromium, the browser the page test drives (through Playwright), and
# Prometheus, which runs every query of the Grafana dashboard against a gateway.
DEBIAN_PACKAGES := mosquitto redis-server redis-sentinel haproxy chromium prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo serve cluster test test-unit test-lowest test-openapi test-main lock lint format openapi asyncapi asyncapi-validate dashboard system-deps bench bench-deps clean

$(APP_STAMP): pyproject.toml $(APP_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(APP_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-app-*
	@touch $@

$(STAMP): $(APP_STAMP) $(TEST_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(TEST_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e clients/python  # the tests' and benches' client
	@rm -f $(VENV)/.installed-test-*
	@touch $@

# Only the locked dependencies: the tests import the gateway and the client
# from this tree (the repository's root and PYTHONPATH), so that this install
# runs beside the gateway's own, with no second build of the tree's egg-info.
$(LOWEST_STAMP): pyproject.toml $(LOWEST_LOCK)
	@test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(LOWEST)/bin/python -m pip install --quiet --require-hashes -r $(LOWEST_LOCK)
	@rm -f $(LOWEST)/.installed-*
	@touch $@

$(CLIENT_STAMP): clients/python/pyproject.toml $(wildcard clients/python/src/coinsuper_gateway_client/*) $(CLIENT_LOCK) | $(STAMP)
	@test -x $(CLIENT)/bin/python || $(PYTHON) -m venv $(CLIENT)
	$(CLIENT)/bin/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(CLIENT)/bin/python -m pip install --quiet --require-hashes -r $(CLIENT_LOCK)
	$(CLIENT)/bin/python -m pip install --quiet --no-deps --force-reinstall ./clients/python
	@rm -f $(CLIENT)/.installed-*
	@touch $@

$(NPM_STAMP): $(NPM_TOOLS)/package.json $(NPM_TOOLS)/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	cd $(NPM_TOOLS) && npm ci --quiet --no-audit --no-fund --ignore-scripts
	@rm -f $(NPM_TOOLS)/node_modules/.installed-*
	@touch $@

demo: $(APP_STAMP)  ## run the gateway against the built-in simulated exchange
	$(BIN)/coinsuper-gateway demo

cluster: $(APP_STAMP)  ## three replicas on one Redis (SENTINEL=1: a master, a replica, three sentinels), following the simulated exchange (ports 8001-8003)
	@dpkg -s redis-server redis-sentinel >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server redis-sentinel; }
	$(BIN)/coinsuper-gateway cluster $(if $(SENTINEL),--sentinel)

serve: $(APP_STAMP)  ## run the gateway against COINSUPER_URL
	$(BIN)/coinsuper-gateway serve

system-deps:  ## Debian packages the tests need
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check app tests bench clients/python deploy
	$(BIN)/ruff format --check app clients/python/src
	$(BIN)/mypy --strict app
	$(BIN)/mypy --strict clients/python/src
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

openapi: $(APP_STAMP)  ## regenerate openapi/openapi.json from the app
	$(BIN)/coinsuper-gateway openapi --output openapi/openapi.json

dashboard:  ## regenerate deploy/grafana/coinsuper-gateway.json from deploy/grafana/dashboard.py
	$(PYTHON) deploy/grafana/dashboard.py > deploy/grafana/coinsuper-gateway.json

asyncapi: $(APP_STAMP)  ## regenerate openapi/asyncapi.yaml (the streams) from the app's models
	$(BIN)/coinsuper-gateway asyncapi --output openapi/asyncapi.yaml

# The AsyncAPI CLI's own check of the document, failing on a warning. Its
# analytics are off (a config file of ours, not one in $HOME): a test tool has
# no business reporting home, and this machine's network is closed.
asyncapi-validate: $(NPM_STAMP)
	ASYNCAPI_METRICS_CONFIG_PATH=$(CURDIR)/$(NPM_TOOLS)/asyncapi-analytics.json \
		$(NPM_TOOLS)/node_modules/.bin/asyncapi validate openapi/asyncapi.yaml --fail-severity warn

format: $(STAMP)
	$(BIN)/ruff format app clients/python/src
	$(BIN)/ruff check --fix app tests bench clients/python deploy

# The installs (the gateway's venv, the client's, the lowest versions') mostly
# wait on downloads, so they run at once, and the checks start as soon as what
# each needs is there (each target's output kept together).
test: system-deps  ## install what the tests need, then run them
	@$(MAKE) --no-print-directory -j4 --output-sync=target $(CLIENT_STAMP) lint test-lowest test-openapi
	@$(MAKE) --no-print-directory -j2 --output-sync=target asyncapi-validate test-main

# npm ci mostly waits on the registry (4 minutes on a fresh machine), so the
# AsyncAPI CLI installs while the main suite runs, not before it.
# --max-worker-restart=0: a test past pytest-timeout's limit ends its worker
# (the thread method's os._exit), and xdist's loadfile scheduling then waited
# for the replacement worker forever (pytest-xdist#784; a fresh clone's run
# hung so on 2026-12-07). With no restart the run fails at once, naming it.
test-main: $(STAMP)
	$(BIN)/pytest -q -n 3 --dist loadfile --max-worker-restart=0 --ignore tests/test_openapi.py

# Alone (under xdist schemathesis' operations share one id, and one would
# run), beside lint and the lowest versions' tests rather than after the rest.
test-openapi: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/test_openapi.py

test-unit: $(STAMP)  ## the tests that start no process (no broker, Redis or gateway), the slowest property tests drawing a tenth of their examples
	TESTS_QUICK=1 $(BIN)/pytest -q -n 2 --max-worker-restart=0 -m "not processes"

# Left out there: the locks' test (that venv is not the locked one) and the
# committed AsyncAPI document's (pydantic writes its JSON schemas a little
# differently from version to version; the document is made with the locked one).
test-lowest: $(LOWEST_STAMP)  ## the same, on the lowest versions pyproject.toml allows (requirements/lowest.lock)
	TESTS_QUICK=1 PYTHONPATH=$(CURDIR)/clients/python/src $(LOWEST)/bin/python -m pytest -q -n 2 --max-worker-restart=0 -p no:cacheprovider -m "not processes" \
		--deselect tests/test_drift.py::test_the_locks_agree_and_are_what_is_installed \
		--deselect tests/test_asyncapi.py::test_the_committed_document_is_what_the_app_makes

UV_OPTIONS := --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
UV_COMPILE := $(BIN)/uv pip compile $(UV_OPTIONS) pyproject.toml
# The client's venv: its own dependencies and test tools, at the gateway's versions.
UV_CLIENT := $(BIN)/uv pip compile $(UV_OPTIONS) clients/python/pyproject.toml --extra test

lock: $(STAMP)  ## refresh requirements/*.lock from pyproject.toml (the newest versions its bounds allow)
	$(UV_COMPILE) --upgrade --extra test -o $(TEST_LOCK)
	$(UV_COMPILE) -c $(TEST_LOCK) -o $(APP_LOCK)
	$(UV_COMPILE) --resolution lowest-direct --extra test -o $(LOWEST_LOCK)
	$(UV_CLIENT) -c $(TEST_LOCK) -o $(CLIENT_LOCK)

bench-deps: $(STAMP)  ## what the benchmarks need: wrk, nginx with nchan (the reference), granian
	@missing=""; for p in wrk nginx libnginx-mod-nchan; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi
	$(BIN)/python -m pip install --quiet granian  # the other ASGI server bench/fanout.py measures

bench: bench-deps $(STAMP)  ## every benchmark beside its reference (nginx, nchan, the floor), ratios printed (about 40 minutes)
	cd bench && ../$(BIN)/python ingest.py
	cd bench && ../$(BIN)/python rest.py
	cd bench && ../$(BIN)/python fanout.py --runs 5 --clients 10000 --channels 20 --interval 0.5
	cd bench && ../$(BIN)/python fanout.py --pattern burst --clients 10000 --channels 20 --interval 0.5
	cd bench && ../$(BIN)/python fanout.py --transport ws --clients 10000 --channels 20 --interval 0.5
	cd bench && ../$(BIN)/python fanout.py --clients 10000 --channels 20 --interval 0.1667
	cd bench && ../$(BIN)/python fanout.py --books diff --target gateway --clients 10000 --channels 20 --interval 0.5
	cd bench && ../$(BIN)/python fanout.py --server granian --target gateway --clients 10000 --channels 20 --interval 0.5
	cd bench && ../$(BIN)/python cluster.py --clients 10000 --channels 20 --interval 0.5

clean:
	rm -rf $(VENV) $(LOWEST) $(CLIENT) $(NPM_TOOLS)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
