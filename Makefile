# Two entry points, each doing all the set-up on a fresh machine:
#   make demo   -> create .venv, install, run the demo
#   make test   -> create .venv, install (with test tools), run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The dev/CI path pins the CPU build of torch; GPU users install their own torch before `pip install hyperinverter`.
TORCH  ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: demo test bench install clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/hyperinverter demo --out out/demo

test: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python benchmarks/bench_hyperinverter.py
	$(BIN)/python benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) out build src/*.egg-info
