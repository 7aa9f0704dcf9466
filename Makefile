# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create the virtual environment on first use. The CPU stack is pinned in requirements/cpu.lock.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
DEMO := results/demo

.PHONY: install test demo clean-demo

$(VENV)/.installed: pyproject.toml requirements/cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/cpu.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/pytest -q

# The demo: build the tiny model, normalise 20 real R1-distill traces, Retro-Search them on CPU.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/retro-search tiny-model $(DEMO)/tiny-model
	$(BIN)/retro-search normalize $(SHARED)/traces/thought_anchors_r1_distill_math.jsonl \
		$(DEMO)/traces.jsonl --format thought_anchors --limit 20
	HF_HUB_OFFLINE=1 $(BIN)/retro-search search --input $(DEMO)/traces.jsonl \
		--output $(DEMO)/revised.jsonl --log $(DEMO)/rollouts.jsonl \
		model.path=$(DEMO)/tiny-model search.max_tokens=64 search.max_step_tokens=32

clean-demo:
	rm -rf $(DEMO)
