# Two entry points, each doing its own set-up: `make run` (the benchmark) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to releases that exist as local wheels on the project's CPU machines;
# override with e.g. `make run TORCH="torch torchvision"` elsewhere.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# The offline CIFAR-10 copy beside the checkout, when there is one; otherwise ./data (downloaded).
SCNN_DATA ?= $(if $(wildcard ../shared/data/cifar-10-batches-py),../shared/data,data)
export SCNN_DATA

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,coded,ray,slurm,deploy]'
	touch $@

.PHONY: run test test-fast
run: $(VENV)/.installed
	$(PY) run_all.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# everyday work: everything but the end-to-end grids, subprocesses and clusters (CI runs `make test`)
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"
