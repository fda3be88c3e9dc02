# One entry point for a fresh machine:
#   make test    set everything up (virtualenv, pinned deps, extension build, the embedded data set)
#                and run every test, then build and run the package from its source distribution
#   make demo    the main job: Fashion-MNIST teacher -> IPC 10 -> relabel -> hald, soft-only and hard-only
#                students over 3 seeds through `hald sweep`, with paired differences
#   make bench   the benchmarks (results land in benchmarks/results/)
# The virtualenv is reused while requirements.txt is unchanged (its hash is stamped inside it).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.req-$(REQ_HASH)
# ccache's compiler wrappers, when installed, make rebuilds of unchanged sources instant.
CCACHE_PATH := $(if $(wildcard /usr/lib/ccache/g++),/usr/lib/ccache:,)
BUILD_ENV := PATH="$(CCACHE_PATH)$(abspath $(VENV))/bin:$$PATH"

# The extension is rebuilt only when its sources (csrc/, setup.py), the virtualenv or the build mode
# change: a stamp file in the virtualenv depends on them. HALD_CPU_ONLY=1 (passed through) skips the
# CUDA kernels; CUDA_HOME defaults to /usr/local/cuda when its nvcc exists.
EXT_SOURCES := setup.py $(shell find csrc -type f 2>/dev/null)
BUILD_MODE := $(if $(filter 1,$(HALD_CPU_ONLY)),cpu,auto)
MODE_FILE := $(VENV)/.hald-build-mode
BUILD_STAMP := $(VENV)/.hald-build
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
EXT_ENV := $(if $(HALD_CPU_ONLY),HALD_CPU_ONLY=$(HALD_CPU_ONLY)) $(if $(CUDA_HOME),CUDA_HOME=$(CUDA_HOME))

.PHONY: venv build build-cpu test bench demo data clean FORCE

venv: $(STAMP)
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.req-* && touch $@

# C++ kernels always; CUDA kernels too when nvcc and a CUDA build of torch are present.
build: $(BUILD_STAMP)
$(BUILD_STAMP): $(STAMP) $(MODE_FILE) $(EXT_SOURCES)
	$(BUILD_ENV) $(EXT_ENV) $(PY) -m pip install -q --no-build-isolation -e .
	$(PY) -c "import hald_ext; print('hald_ext build:', hald_ext.build_info())"
	@touch $@

# Rewritten only when the mode changes, so switching HALD_CPU_ONLY rebuilds and nothing else does.
$(MODE_FILE): FORCE
	@mkdir -p $(VENV) && (echo $(BUILD_MODE) | cmp -s - $@ || echo $(BUILD_MODE) > $@)

# CPU-only build, for fast iteration.
build-cpu:
	$(MAKE) build HALD_CPU_ONLY=1

# The tests, then the package as an index would ship it: sdist -> wheel (C++ kernels) -> installed
# in a scratch folder and run (scripts/check_package.py).
test: build data
	$(PY) -m pytest python_tests -q -p no:cacheprovider
	$(PY) scripts/check_package.py

bench: build
	$(PY) benchmarks/bench_loss.py
	$(PY) benchmarks/bench_storage.py
	$(PY) benchmarks/bench_crop.py
	$(PY) benchmarks/bench_train.py

# The main job on the embedded default (Debian's Fashion-MNIST); outputs under runs/demo/.
demo: build data
	$(PY) scripts/demo.py

# Debian's Fashion-MNIST (the embedded default data set), installed when missing.
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist

clean:
	rm -rf build *.egg-info hald_ext/_C*.so $(BUILD_STAMP) $(MODE_FILE)
