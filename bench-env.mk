# Benchmark-only environment: a separate venv (.bench-venv) holding CPU PyTorch and
# the PyTorch PFN library `pfns`, used by experiments/bench/ to compare against.
# None of this is a dependency of probnet itself.
#
#   make -f bench-env.mk bench-env        # standalone
#   include bench-env.mk                  # from the main Makefile, then `make bench-env`
#
# Idempotent: the venv is only (re)built when the stamp file is missing or this file
# changed. `make -f bench-env.mk bench-env-clean` removes it.
#
# pfns 0.4.2 lists dev tools (black, pre-commit, ruff-api, usort, pytest, ...) and an
# unpinned `torch>=2.2` as requirements. Installing it normally could pull a different
# (CUDA) torch and tools that are not needed at run time, so pfns is installed with
# --no-deps and its run-time imports are installed explicitly below:
#   gpytorch (fast_gp prior), einops + tqdm + tensorboard (pfns.train), pyyaml
#   (base_config), numpy/scipy/matplotlib (priors.utils, utils).
# torch is pinned first to the CPU build 2.13.0 and stays pinned in every later pip call.

# Remember the including Makefile's default goal so that `include bench-env.mk` anywhere
# (even above the first rule) does not make `bench-env` the default target.
_BENCH_ENV_PREV_DEFAULT_GOAL := $(.DEFAULT_GOAL)

BENCH_PYTHON ?= python3
BENCH_VENV ?= .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed

BENCH_TORCH := torch==2.13.0
BENCH_PFNS := pfns==0.4.2
BENCH_PFNS_RUNTIME_DEPS := \
	gpytorch==1.15.2 \
	linear_operator==0.6.1 \
	einops==0.8.2 \
	tqdm==4.70.1 \
	tensorboard==2.21.0 \
	pyyaml==6.0.4 \
	numpy==2.4.6 \
	scipy==1.17.1 \
	matplotlib==3.11.2

.PHONY: bench-env bench-env-clean

bench-env: $(BENCH_STAMP)

$(BENCH_STAMP): $(lastword $(MAKEFILE_LIST))
	test -x $(BENCH_VENV)/bin/python || $(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install $(BENCH_TORCH)
	$(BENCH_VENV)/bin/python -m pip install $(BENCH_TORCH) $(BENCH_PFNS_RUNTIME_DEPS)
	$(BENCH_VENV)/bin/python -m pip install --no-deps $(BENCH_PFNS)
	$(BENCH_VENV)/bin/python -c "import torch, gpytorch, pfns.train; from pfns.priors import fast_gp; print('bench-env ok: torch', torch.__version__)"
	touch $@

bench-env-clean:
	rm -rf $(BENCH_VENV)

ifneq ($(words $(MAKEFILE_LIST)),1)
.DEFAULT_GOAL := $(_BENCH_ENV_PREV_DEFAULT_GOAL)
endif
