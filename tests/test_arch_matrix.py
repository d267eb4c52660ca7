"""The architecture matrix: tiny random-weight models of every causal-LM architecture that both
transformers 5.24 and TransformerLens 4.3's bridge support, run through the public API.

Per architecture (3 blocks, d=32, character tokenizer; conftest.make_tiny_model):
- capture of block outputs (right-padded batches, positions "all" and "last") == the HF model's
  own hidden states of each prompt alone;
- every component hook (`*.hook_in` / `*.hook_out`) of block 0 and outside the blocks, captured
  with engine "auto", == the bridge's value: a hook served by an HF module is one whose value
  is the bridge's (issue 16, part 4);
- generate (greedy, batched, KV cache) == a freshly loaded HF model's greedy generate;
- add_to_residual is applied (block output moves by exactly the vector) and removed on exit;
- a weight diff against a copy with a planted fraction of changed entries counts them exactly.
Variants: bf16, sharded with an index, tied and untied output matrices. Architectures the
bridge cannot build (falcon with new_decoder_architecture, codegen) keep everything that runs
on the HF model. `make test` runs the issue's architectures and variants; the extras are
marked `matrix_extra`: `make test-matrix` runs the whole matrix.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from hooks import TwinlensError, add_to_residual, capture, generate, load_model
from tests.conftest import make_tiny_model

PROMPTS = ["3+5+8+2+1:", "1+1:", "9+9+9:3+5=08;", "7", "abc def+12"]
N_LAYERS = 3

# (id, arch, make_tiny_model kwargs). The first block is the brief's list (fast tier).
FAST = [
    ("gpt2", "gpt2", {}), ("gpt_neox", "gpt_neox", {}), ("llama", "llama", {}),
    ("qwen2", "qwen2", {}), ("qwen3", "qwen3", {}), ("qwen2_moe", "qwen2_moe", {}),
    ("qwen3_moe", "qwen3_moe", {}), ("mistral", "mistral", {}), ("mixtral", "mixtral", {}),
    ("gemma", "gemma", {}), ("gemma2", "gemma2", {}), ("gemma3_text", "gemma3_text", {}),
    ("phi", "phi", {}), ("phi3", "phi3", {}), ("olmo", "olmo", {}), ("olmo2", "olmo2", {}),
    ("opt", "opt", {}), ("falcon", "falcon", {}), ("falcon_new", "falcon_new", {}),
    ("stablelm", "stablelm", {}), ("granite", "granite", {}), ("cohere", "cohere", {}),
    ("starcoder2", "starcoder2", {}), ("gptj", "gptj", {}), ("bloom", "bloom", {}),
    ("smollm3", "smollm3", {}),
    ("llama_bf16", "llama", {"dtype": torch.bfloat16}),
    ("llama_sharded", "llama", {"max_shard_size": "30KB"}),
    ("llama_tied", "llama", {"tied": True}),
    ("qwen2_untied", "qwen2", {"tied": False}),
]
SLOW = [
    ("gpt_bigcode", "gpt_bigcode", {}), ("mpt", "mpt", {}), ("olmoe", "olmoe", {}),
    ("granitemoe", "granitemoe", {}), ("nemotron", "nemotron", {}), ("glm", "glm", {}),
    ("cohere2", "cohere2", {}), ("codegen", "codegen", {}), ("phimoe", "phimoe", {}),
    ("gpt_neo", "gpt_neo", {"attention_types": [[["global", "local"], 1], [["global"], 1]], "window_size": 4}),
    ("xglm", "xglm", {}), ("seed_oss", "seed_oss", {}), ("olmo3", "olmo3", {}),
    ("exaone4", "exaone4", {}), ("glm4", "glm4", {}), ("apertus", "apertus", {}),
    ("gemma2_bf16", "gemma2", {"dtype": torch.bfloat16}),
    ("gpt2_untied", "gpt2", {"tied": False}),
    ("qwen3_moe_sharded", "qwen3_moe", {"max_shard_size": "50KB"}),
]
# TransformerLens 4.3 cannot build a bridge that reproduces HF for these (transformers 5.24):
# falcon_new: its adapter splits the fused qkv as if num_kv_heads == num_heads (RuntimeError
# split_with_sizes); codegen: its attention bridge reads `embed_positions`, gone from HF's module;
# phimoe: TransformerLens maps "PhiMoEForCausalLM", HF names it "PhimoeForCausalLM".
NO_BRIDGE = {"falcon_new", "codegen", "phimoe"}
CASES = [pytest.param(*c, id=c[0]) for c in FAST] + [
    pytest.param(*c, id=c[0], marks=pytest.mark.matrix_extra) for c in SLOW
]

_cache: dict[str, tuple[Path, object]] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("arch_matrix")


def _model(root: Path, key: str, arch: str, kwargs: dict):
    if key not in _cache:
        folder = make_tiny_model(root / key, arch, n_layers=N_LAYERS, **kwargs)
        _cache[key] = (folder, load_model(folder))
    return _cache[key]


def _tol(model) -> dict:
    # fp32: padding and batching change only the order of float32 sums (~1e-7 at |x| ~ 1; gemma's
    # sqrt(d)-scaled embeddings reach ~10): 1e-5 absolute + 1e-4 relative. bf16: a few roundings
    # of 2^-8 relative.
    return dict(atol=1e-5, rtol=1e-4) if model.dtype == torch.float32 else dict(atol=5e-2, rtol=3e-2)


@pytest.mark.parametrize(("key", "arch", "kwargs"), CASES)
def test_capture_equals_hf_hidden_states_padded_all_and_last(root, key, arch, kwargs):
    folder, model = _model(root, key, arch, kwargs)
    assert model.bridge_available is (key not in NO_BRIDGE)
    every = capture(model, PROMPTS, hooks="blocks.*.hook_out", out=root / f"{key}-all", batch_size=3,
                    progress=False)
    last = capture(model, PROMPTS, hooks="blocks.*.hook_out", out=root / f"{key}-last", batch_size=2,
                   positions="last", progress=False)
    fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
    for ex, prompt in enumerate(PROMPTS):
        ids = model.encode(prompt)
        with torch.no_grad():
            hs = fresh(torch.tensor([ids]), output_hidden_states=True).hidden_states
        rows = every.example_index == ex
        assert every.tokens[rows].tolist() == ids
        # hidden_states[L + 1] is block L's output except for the last block (final norm applied).
        for layer in range(N_LAYERS - 1):
            want = hs[layer + 1][0].float()
            torch.testing.assert_close(every.read(f"blocks.{layer}.hook_out")[rows].float(), want, **_tol(model))
            got_last = last.read(f"blocks.{layer}.hook_out")[last.example_index == ex].float()
            torch.testing.assert_close(got_last, want[-1:], **_tol(model))


@pytest.mark.parametrize(("key", "arch", "kwargs"), CASES)
def test_every_component_hook_equals_the_bridge(root, key, arch, kwargs):
    _, model = _model(root, key, arch, kwargs)
    if key in NO_BRIDGE:
        with pytest.raises(TwinlensError, match="What still works"):
            model.hook_names()
        return
    names = [
        n for n in model.hook_names()
        if re.search(r"\.hook_(in|out)$", n) and not n.startswith(("blocks.1.", "blocks.2.", "rotary_emb"))
    ]
    refused = model.verify_hf_modules(names)
    served = [n for n in names if n not in refused]
    assert "blocks.0.hook_out" in served and "blocks.0.hook_in" in served
    # The fast path is not given up needlessly: attention and MLP outputs have HF modules
    # everywhere except OPT's and XGLM's MLP (no submodule: the bridge's mlp is the whole decoder layer).
    assert "blocks.0.attn.hook_out" in served
    assert ("blocks.0.mlp.hook_out" in served) is (arch not in ("opt", "xglm")), refused.get("blocks.0.mlp.hook_out")
    # The block hooks found without the bridge are the modules the bridge wraps.
    assert model.hf_module_name("blocks.0.hook_out")[0] == model._bridge_module_name("blocks.0.hook_out")[0]
    # The store keeps [batch, pos, ...] activations: skip per-head layouts ([batch, head, pos,
    # d]) and position ids, found from one bridge forward of 2 x 6 tokens.
    shapes = {}
    model.bridge.run_with_hooks(
        torch.zeros(2, 6, dtype=torch.long), return_type=None,
        fwd_hooks=[(n, lambda act, hook=None, n=n: shapes.__setitem__(n, tuple(act.shape))) for n in names],
    )
    per_token = [n for n in names if shapes.get(n, ())[:2] == (2, 6)]
    assert len(per_token) >= 10, per_token
    auto = capture(model, PROMPTS, hooks=per_token, out=root / f"{key}-hooks-auto", batch_size=3, progress=False)
    ref = capture(model, PROMPTS, hooks=per_token, out=root / f"{key}-hooks-bridge", batch_size=3,
                  engine="bridge", progress=False)
    for n in per_token:
        torch.testing.assert_close(auto.read(n).float(), ref.read(n).float(), **_tol(model), msg=n)
    served_per_token = [n for n in per_token if n in served]
    if served_per_token:
        fast = capture(model, PROMPTS, hooks=served_per_token, out=root / f"{key}-hooks-hf", batch_size=3,
                       engine="hf", progress=False)
        for n in served_per_token:
            torch.testing.assert_close(fast.read(n).float(), ref.read(n).float(), **_tol(model), msg=n)


@pytest.mark.parametrize(("key", "arch", "kwargs"), CASES)
def test_generate_equals_fresh_hf_greedy(root, key, arch, kwargs):
    folder, model = _model(root, key, arch, kwargs)
    if key not in NO_BRIDGE:
        _ = model.bridge  # booting the bridge must leave model.hf generating like a fresh model
    prompts = [model.encode(p) for p in PROMPTS]
    got = generate(model, prompts, max_new_tokens=6)
    fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
    eos = model.tokenizer.eos_token_id
    for ids, completion in zip(prompts, got, strict=True):
        with torch.no_grad():
            out = fresh.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=6, pad_token_id=model.tokenizer.pad_token_id)
        want = out[0, len(ids):].tolist()
        want = want[: want.index(eos)] if eos in want else want
        assert completion == want


@pytest.mark.parametrize(("key", "arch", "kwargs"), CASES)
def test_steering_is_applied_and_removed(root, key, arch, kwargs):
    _, model = _model(root, key, arch, kwargs)
    hooks = ["blocks.0.hook_out", "blocks.1.hook_out"]
    clean = capture(model, PROMPTS, hooks=hooks, out=root / f"{key}-clean", progress=False)
    prompts = [model.encode(p) for p in PROMPTS[:2]]
    plain = generate(model, prompts, max_new_tokens=4)
    v = torch.full((model.d_model,), 0.5)
    with add_to_residual(model, layer=0, vector=v, alpha=2.0):
        steered = capture(model, PROMPTS, hooks=hooks, out=root / f"{key}-steered", progress=False)
        if key not in NO_BRIDGE:  # the bridge runs its own copy of the modules: steered too
            via_bridge = capture(model, PROMPTS, hooks=hooks, out=root / f"{key}-steered-bridge",
                                 engine="bridge", progress=False)
            for h in hooks:
                torch.testing.assert_close(via_bridge.read(h).float(), steered.read(h).float(), **_tol(model))
        generate(model, prompts, max_new_tokens=4)
    after = capture(model, PROMPTS, hooks=hooks, out=root / f"{key}-after", progress=False)
    assert generate(model, prompts, max_new_tokens=4) == plain
    moved = steered.read("blocks.0.hook_out").float() - clean.read("blocks.0.hook_out").float()
    torch.testing.assert_close(moved, torch.ones_like(moved), **_tol(model))
    assert (steered.read("blocks.1.hook_out").float() - clean.read("blocks.1.hook_out").float()).abs().max() > 1e-2
    for h in hooks:
        assert torch.equal(after.read(h), clean.read(h))


@pytest.mark.parametrize(("key", "arch", "kwargs"), CASES)
def test_weight_diff_counts_a_planted_fraction_exactly(root, key, arch, kwargs):
    from analyses.subnetworks import diff_weights

    folder, model = _model(root, key, arch, kwargs)
    rl = root / f"{key}-rl"
    shutil.copytree(folder, rl, dirs_exist_ok=True)
    planted = total = 0
    for f in model.weight_files:
        tensors = load_file(f)
        for name, t in tensors.items():
            flat = t.flatten().clone()
            flat[::7] += 1.0  # every 7th entry: 1/7 of each tensor, well above any tolerance
            tensors[name] = flat.view_as(t)
            planted += flat[::7].numel()
            total += t.numel()
        save_file(tensors, rl / f.name, metadata={"format": "pt"})
    d = diff_weights(folder, rl, rank=False, spectral=False, progress=False)
    assert (d.overall.n_params, d.overall.exact) == (total, planted)
