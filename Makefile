# tokens-per-watt: watts next to tokens.
# `make help` lists the targets. Everything that installs goes into .venv; the exporters need nothing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt 2>/dev/null | cksum | cut -d' ' -f1)
EXPORTERS := exporters/macmon-otel-exporter.py exporters/nvsmi-otel-exporter.py
SHELL_SCRIPTS := $(wildcard deploy/*.sh) $(wildcard tests/tools/*.sh) .ci/run
HOST ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## run the macmon exporter end to end on a built-in stand-in (no install, no network)
	@$(PYTHON) tests/tools/demo.py

$(STAMP): requirements-dev.txt
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the pinned dev tools

.PHONY: lint
lint: $(STAMP) ## ruff, vermin (Python 3.9 floor) and shellcheck
	$(VENV)/bin/ruff check exporters tpw-ab tests deploy dashboards tests/tools/fake-macmon tests/tools/fake-nvidia-smi \
	  tests/tools/remote-bin/*
	$(VENV)/bin/vermin --target=3.9- --violations --no-tips --eval-annotations $(EXPORTERS) tpw-ab/tpw-ab.py
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

# The tests mostly wait on processes, sockets and real peers starting, so more workers than cores
# pay off: on 2 cores 6 workers ran the main pass in 153 s where 4 took 205 s.
TEST_WORKERS ?= 6
PY39_WORKERS ?= 3

.PHONY: peers
peers: ## install the system programs the tests use as real peers (sshd, systemd-analyze, prometheus, chromium) when root
	@tests/tools/install-test-peers.sh

.PHONY: test
test: lint peers ## install the dev tools into .venv and run every check
	@# the Python 3.9 pass runs beside the main one (both mostly wait); its log follows the main one's
	@$(MAKE) --no-print-directory test-py39 > $(VENV)/test-py39.log 2>&1 & py39=$$!; \
	$(VPY) -m pytest -q -n $(TEST_WORKERS); main=$$?; \
	wait $$py39; other=$$?; cat $(VENV)/test-py39.log; \
	test $$main -eq 0 && test $$other -eq 0

.PHONY: ab
ab: ## tpw-ab: the same prompts against both clusters (ARGS="run --target ..."; `make ab` alone: its help)
	@$(PYTHON) tpw-ab/tpw-ab.py $(if $(ARGS),$(ARGS),--help)

.PHONY: bench
bench: $(STAMP) ## measure the exporters against the OpenTelemetry Python SDK
	$(VPY) tests/tools/bench.py

.PHONY: sync
sync: ## copy the shared core from the macmon exporter into the nvidia one (refuses to overwrite an edit there)
	$(PYTHON) tests/tools/sync_shared.py

.PHONY: deploy undeploy status doctor
deploy: ## install or upgrade the exporter on HOST (from deploy/hosts); DRY_RUN=1 prints only
	@deploy/tpw-deploy.sh deploy "$(HOST)"

undeploy: ## remove everything deploy installed on HOST
	@deploy/tpw-deploy.sh undeploy "$(HOST)"

status: ## is the exporter on HOST running, its last send, its last error
	@deploy/tpw-deploy.sh status "$(HOST)"

doctor: ## run the exporter's --check on HOST and explain the result
	@deploy/tpw-deploy.sh doctor "$(HOST)"

.PHONY: collector verify
collector: ## roll the collector config out to HOST: validate, swap, restart, health check, roll back on failure
	@deploy/tpw-deploy.sh collector "$(HOST)"

verify: ## is data arriving? collector counters on HOST, then each backend's API (otelcol/verify.env.example)
	@deploy/tpw-deploy.sh verify "$(HOST)"

.PHONY: test-py39
test-py39: $(STAMP) ## the end-to-end tests again with the exporters on Python 3.9 (macOS's /usr/bin/python3)
	@py39=$$($(VPY) -c 'import sys; sys.path.insert(0, "tests"); import conftest; print(conftest.python39() or "")'); \
	if [ -z "$$py39" ]; then echo "test-py39: no Python 3.9 on this machine; skipped"; exit 0; fi; \
	echo "exporters on $$py39"; \
	TPW_TEST_PYTHON=$$py39 $(VPY) -m pytest -q -n $(PY39_WORKERS) -m "not slow" tests/test_macmon_cli.py \
	  tests/test_nvsmi_e2e.py tests/test_nvml.py tests/test_rotel_e2e.py tests/test_shared_core.py \
	  tests/test_delivery.py -k "not retry_after and not source_failures and not buffer_overflow and not 413"
