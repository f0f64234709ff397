# Set-up and everyday commands. `make demo` and `make test` each work on a fresh machine.
#
# The virtual environment reuses a torch that is already installed (so that set-up never downloads a
# second one); otherwise it installs TORCH (the local CPU build on the project's machines).
# The extension is built without build isolation, against that torch.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
HAVE_TORCH := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo yes)

.PHONY: demo test bench bench-smoke install clean

demo: $(VENV)/.installed
	$(VENV)/bin/nst-fast --size 256 -o demo.png

test: $(VENV)/.installed
	$(PY) -m pytest

# The pytest-benchmark suites, saved as JSON (see benchmarks/README.md).
BENCH_JSON ?= benchmarks/results/pytest-benchmark.json
bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only --benchmark-json=$(BENCH_JSON)

# One untimed pass of every benchmark at the smallest size (CI), so that the suites never rot.
bench-smoke: $(VENV)/.installed
	NST_FAST_BENCH_SMOKE=1 $(PY) -m pytest benchmarks -q --benchmark-disable

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
ifeq ($(HAVE_TORCH),yes)
	$(PYTHON) -m venv --system-site-packages $(VENV)
else
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
endif
	$(PIP) install "setuptools>=64" wheel ninja
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info nst_fast/_C*.so
