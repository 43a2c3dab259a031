# Two entry points: `make demo` (the whole pipeline through Airflow) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
SEED ?= 2015
DEMO_DIR := demo
OUT_DIR := out

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export GX_ANALYTICS_ENABLED := False

# Debian packages: WeasyPrint's text stack and fonts for the PDF papers (PDF_PACKAGES), and
# the browser and PDF tools the report tests look through (the rest). Installed only if
# missing; `sudo` is used when not root.
PDF_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core
SYSTEM_PACKAGES := $(PDF_PACKAGES) chromium poppler-utils
APT := $(if $(filter 0,$(shell id -u)),,sudo )env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: demo test install install-dev bench-deps lock clean pdf-deps system-deps

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: requirements.lock setup.cfg | $(BIN)/uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock setup.cfg | $(BIN)/uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements-dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@ $(VENV)/.installed

# Peer packages for bench/estimate.py only; their lock pins everything requirements-dev.lock
# pins at the same versions, so they share the one venv without moving any of them.
$(VENV)/.installed-bench: requirements-bench.lock setup.cfg | $(BIN)/uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements-bench.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
bench-deps: $(VENV)/.installed-bench

pdf-deps:
	@dpkg -s $(PDF_PACKAGES) > /dev/null 2>&1 \
	  || ($(APT) update && $(APT) install -y $(PDF_PACKAGES))

system-deps:
	@dpkg -s $(SYSTEM_PACKAGES) > /dev/null 2>&1 \
	  || ($(APT) update && $(APT) install -y $(SYSTEM_PACKAGES))

$(AIRFLOW_HOME)/airflow.db: | $(VENV)/.installed
	$(BIN)/airflow db migrate > /dev/null

demo: pdf-deps install $(AIRFLOW_HOME)/airflow.db
	rm -rf $(DEMO_DIR) $(OUT_DIR)
	$(BIN)/vanguard demo-data --out $(DEMO_DIR) --seed $(SEED)
	$(BIN)/airflow dags test vanguard_nightly \
	  --conf '{"db": "$(CURDIR)/$(DEMO_DIR)/vanguard.duckdb", "landing": "$(CURDIR)/$(DEMO_DIR)/landing", "out": "$(CURDIR)/$(OUT_DIR)", "protocol": "$(CURDIR)/evaluation.toml"}' \
	  > $(DEMO_DIR)/airflow.log 2>&1 || { tail -50 $(DEMO_DIR)/airflow.log; exit 1; }
	$(BIN)/airflow dags test vanguard_reports \
	  --conf '{"db": "$(CURDIR)/$(DEMO_DIR)/vanguard.duckdb", "out": "$(CURDIR)/$(OUT_DIR)"}' \
	  >> $(DEMO_DIR)/airflow.log 2>&1 || { tail -50 $(DEMO_DIR)/airflow.log; exit 1; }
	$(BIN)/vanguard status --db $(DEMO_DIR)/vanguard.duckdb --out $(OUT_DIR) --truth $(DEMO_DIR)/truth.json

test: system-deps install-dev $(AIRFLOW_HOME)/airflow.db
	$(BIN)/python -m pytest

lock: | $(BIN)/uv
	$(BIN)/uv pip compile setup.cfg --generate-hashes --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile setup.cfg --extra dev --generate-hashes --python-version 3.11 -o requirements-dev.lock
	$(BIN)/uv pip compile setup.cfg --extra dev --extra bench -c requirements-dev.lock --generate-hashes --python-version 3.11 -o requirements-bench.lock

clean:
	rm -rf $(DEMO_DIR) $(OUT_DIR) $(AIRFLOW_HOME)
