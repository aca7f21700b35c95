# Two commands a fresh machine needs (README): `make demo` and `make test`.
# Each creates .venv if needed and installs, on a machine without an NVIDIA GPU, the pinned CPU wheel of
# torch first (a bare torch requirement pulls a multi-GB CUDA build), then the project with the exact versions
# of requirements.lock (LATEST=1: the newest versions instead; `make lock` rewrites the lock from .venv).
# `make test` also installs what the integration tests need (PostgreSQL, Chromium) when it runs as root with
# apt-get (scripts/test-deps); elsewhere those tests skip with the reason, except under CI=true, where they fail.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
RUNS ?= rnnsuite-runs
QUIET ?=
LATEST ?=
LOCK := requirements.lock

.PHONY: setup demo test test-deps bench lock clean gpu-check gpu-wheels

setup: $(VENV)/.installed
ifneq ($(LATEST),)
.PHONY: $(VENV)/.installed   # LATEST=1 always reinstalls, without the lock
endif

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch comes from the project's requirements (CUDA build)"; \
	else \
		$(PY) -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install --quiet $(if $(LATEST),,-c $(LOCK)) -e ".[dev,postgres]"
	touch $@

# the main job on the embedded defaults: the smoke sweep (3 cells x 3 trials + 3 confirmation seeds, about
# 2 minutes on 2 CPU cores) into ./rnnsuite-runs, then its report into reports/smoke/ (re-running resumes:
# a finished sweep says "nothing to do" and the report is rebuilt)
# QUIET=1: no progress bars even on a terminal (a redirected log never has them)
demo: setup
	$(VENV)/bin/rnnsuite sweep sweeps/smoke.yaml $(if $(QUIET),--quiet,)
	$(VENV)/bin/rnnsuite report smoke

bench: setup
	$(VENV)/bin/rnnsuite bench --quick

test: setup test-deps
	$(PY) -m pytest -q

test-deps:
	@scripts/test-deps

lock:
	PY=$(PY) scripts/lock

# on a machine with an NVIDIA GPU: CUDA tests, bench --device cuda, a packed CUDA sweep -> JSON + log in OUT
# (default ./gpu-check-out), under 8 minutes. No setup first: it uses the machine's own torch and installs only
# what is missing (wheels from .whl/ when the machine is offline). Without a GPU: one line and a dry run.
gpu-check:
	bash scripts/gpu-check $(OUT)

# the wheels gpu-check installs on an offline GPU machine (Python 3.12, manylinux x86-64) into .whl/
gpu-wheels: setup
	bash scripts/gpu-wheels

clean:
	rm -rf $(RUNS) reports/smoke .pytest_cache
