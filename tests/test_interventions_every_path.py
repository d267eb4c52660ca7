"""Issue 16 part 1: an open intervention acts on EVERY forward path of its model (capture with
each engine, direct bridge use, generation, scoring, routing hybrids, attribution), by the amount
it should, and nothing is left behind after the `with` block (also after an exception)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from analyses.routing import PositionsRouter, hybrid_generate
from analyses.sampling import score_completions
from hooks import TwinlensError, add_to_residual, capture, generate, load_model
from hooks.interventions import open_interventions, refuse_open_interventions
from probes.attribution import attribute_layers
from probes.labels import ExampleLabels, TokenSpan
from probes.vectors import StrategyVector

ALPHA = 3.0
TEXTS = ["1+2+3:", "7+7+7+7+7:4", "9"]  # different lengths: padded batches


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_model(tiny_models["llama"])


@pytest.fixture(scope="module")
def v(llama):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(llama.d_model, generator=g)
    return x / x.norm()


def _capture(model, tmp_path, engine, hooks, tag):
    store = capture(model, TEXTS, hooks=hooks, out=tmp_path / f"{engine}-{tag}", engine=engine,
                    batch_size=2, progress=False)
    return {h: store.read(h, model="model") for h in hooks}


def _hook_count(model):
    """Hooks on hf's modules and forward hooks on the bridge's (which wires pre-hooks of its own)."""
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
            + sum(len(m._forward_hooks) for m in model.bridge.modules()))


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def any_arch(request, tiny_models):
    return load_model(tiny_models[request.param])


def test_capture_with_every_engine_is_steered_inside_and_clean_after(any_arch, v, tmp_path):
    model = any_arch  # three architectures, three bridges
    hooks = ["blocks.0.hook_out", "blocks.1.hook_out"]
    mixed = ["blocks.0.hook_out", "blocks.1.hook_resid_mid"]  # resid_mid has no HF module: auto runs the bridge
    clean = _capture(model, tmp_path, "hf", hooks, "clean")
    clean_mid = _capture(model, tmp_path, "bridge", mixed, "clean")
    n_hooks = _hook_count(model)
    with add_to_residual(model, 0, v, alpha=ALPHA):
        hf = _capture(model, tmp_path, "hf", hooks, "steered")
        bridge = _capture(model, tmp_path, "bridge", hooks, "steered")
        auto = _capture(model, tmp_path, "auto", mixed, "steered")
    shift = (ALPHA * v).expand_as(clean["blocks.0.hook_out"])
    for got in (hf, bridge, auto):  # the steered block itself: exactly + alpha v at every token
        torch.testing.assert_close(got["blocks.0.hook_out"] - clean["blocks.0.hook_out"], shift, atol=1e-5, rtol=0)
    # Downstream the bridge gives the HF engine's steered numbers (float32 rounding of two
    # attention kernels: ~1e-6), and steering a unit vector by 3 moves block 1 by far more.
    torch.testing.assert_close(bridge["blocks.1.hook_out"], hf["blocks.1.hook_out"], atol=1e-5, rtol=0)
    assert (hf["blocks.1.hook_out"] - clean["blocks.1.hook_out"]).abs().max() > 0.1
    assert (auto["blocks.1.hook_resid_mid"] - clean_mid["blocks.1.hook_resid_mid"]).abs().max() > 0.1

    with pytest.raises(RuntimeError, match="boom"), add_to_residual(model, 0, v, alpha=ALPHA):
        raise RuntimeError("boom")
    after = _capture(model, tmp_path, "bridge", hooks, "after")
    for h in hooks:
        torch.testing.assert_close(after[h], clean[h], atol=1e-5, rtol=0)
    assert _hook_count(model) == n_hooks and open_interventions(model) == []


def test_a_bridge_booted_inside_the_block_is_steered_once_and_a_deep_copy_runs_clean(tiny_models, v, tmp_path):
    model = load_model(tiny_models["llama"])
    clean = _capture(model, tmp_path, "bridge", ["blocks.0.hook_out"], "clean")["blocks.0.hook_out"]
    ids = torch.tensor([model.encode(TEXTS[1])])
    with torch.no_grad():
        clean_logits = model.hf(ids).logits
    n_hooks = len(model.hf.model.layers[0]._forward_hooks)
    with add_to_residual(model, 0, v, alpha=ALPHA):
        model._bridge = None  # the next bridge use boots a fresh copy of hf, with hf's hooks on it
        steered = _capture(model, tmp_path, "bridge", ["blocks.0.hook_out"], "steered")["blocks.0.hook_out"]
        twin = copy.deepcopy(model.hf)  # e.g. a patched hybrid: another model, not steered
        with torch.no_grad():
            twin_logits = twin(ids).logits
    # + alpha v once: the hook copied along with hf is inert, the installed one acts
    torch.testing.assert_close(steered - clean, (ALPHA * v).expand_as(clean), atol=1e-5, rtol=0)
    torch.testing.assert_close(twin_logits, clean_logits, atol=1e-6, rtol=0)
    after = _capture(model, tmp_path, "bridge", ["blocks.0.hook_out"], "after")["blocks.0.hook_out"]
    torch.testing.assert_close(after, clean, atol=1e-6, rtol=0)
    assert len(model.hf.model.layers[0]._forward_hooks) == n_hooks and open_interventions(model) == []
    assert len(model.bridge.original_model.model.layers[0]._original_component._forward_hooks) == 1  # the inert copy


def test_direct_bridge_forward_equals_steered_hf_forward(llama, v):
    ids = torch.tensor([llama.encode(TEXTS[1])])
    with torch.no_grad():
        clean = llama.hf(ids).logits
        with add_to_residual(llama, 0, v, alpha=ALPHA):
            hf = llama.hf(ids).logits
            bridge = llama.bridge(ids)
        after = llama.bridge(ids)
    torch.testing.assert_close(bridge, hf, atol=1e-4, rtol=0)
    assert (hf - clean).abs().max() > 0.1
    torch.testing.assert_close(after, clean, atol=1e-4, rtol=0)


def _last_block_reference(model, v, ids):
    """Logits with alpha v added to the LAST block's output, computed from a clean forward:
    final norm and unembedding applied to (clean last-block output + alpha v). Independent of
    the intervention code (the last block's output feeds nothing but the head)."""
    last = model.n_layers - 1
    module, _ = model.hf_module(f"blocks.{last}.hook_out")
    grab = {}
    h = module.register_forward_hook(lambda m, i, o: grab.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model.hf(torch.tensor([ids]))
    finally:
        h.remove()
    norm, _ = model.hf_module("ln_final.hook_out")
    with torch.no_grad():
        return model.hf.get_output_embeddings()(norm(grab["x"][0] + ALPHA * v))  # [T, V]


def test_generation_and_scoring_are_steered_by_exactly_the_expected_amount(llama, v):
    last = llama.n_layers - 1
    prompts = [llama.encode(t) for t in TEXTS]
    with add_to_residual(llama, last, v, alpha=ALPHA):
        steered = generate(llama, prompts, 6, stop_at_eos=False, batch_size=2)
        scores = score_completions(llama, prompts, steered, batch_size=2)
    clean = generate(llama, prompts, 6, stop_at_eos=False)
    assert steered != clean
    for p, comp, sc in zip(prompts, steered, scores, strict=True):
        seq = list(p)
        for tok in comp:  # greedy from the reference logits, no KV cache
            assert tok == int(_last_block_reference(llama, v, seq)[-1].argmax())
            seq.append(tok)
        ref = torch.log_softmax(_last_block_reference(llama, v, seq).float(), -1)
        want = [float(ref[len(p) - 1 + k, t]) for k, t in enumerate(comp)]
        np.testing.assert_allclose(sc, want, atol=1e-4)
    again = score_completions(llama, prompts, steered)
    assert all(abs(a - b) > 1e-3 for a, b in zip(again[0], scores[0], strict=True))  # clean after exit


def test_routing_hybrid_runs_both_models_steered(tiny_models, llama, v):
    rl = load_model(tiny_models["llama_b"])
    prompts = [llama.encode(t) for t in TEXTS]
    never = PositionsRouter(np.zeros(8, dtype=bool))
    always = PositionsRouter(np.ones(8, dtype=bool))
    with add_to_residual(llama, 0, v, alpha=10.0), add_to_residual(rl, 0, v, alpha=10.0):
        base_ref = generate(llama, prompts, 8, stop_at_eos=False, n=2, temperature=1.0, seed=3)
        rl_ref = generate(rl, prompts, 8, stop_at_eos=False, n=2, temperature=1.0, seed=3)
        base_h = hybrid_generate(llama, rl, prompts, never, 8, stop_at_eos=False, n=2, temperature=1.0, seed=3)
        rl_h = hybrid_generate(llama, rl, prompts, always, 8, stop_at_eos=False, n=2, temperature=1.0, seed=3)
    assert base_h.tokens == base_ref and rl_h.tokens == rl_ref
    assert base_ref != generate(llama, prompts, 8, stop_at_eos=False, n=2, temperature=1.0, seed=3)


def test_attribution_sees_the_open_intervention_and_is_clean_after(llama, v):
    ids = llama.encode("3+5+8+2+1:3+5=08;8+8=16;")
    labels = [ExampleLabels(tuple(ids), (TokenSpan("other", 17, 24),), 10, len(ids))]
    vecs = [StrategyVector(v, layer=1, method="diff_of_means", strategy="mine")]
    clean = attribute_layers(llama, labels, vecs).effect[0]
    with add_to_residual(llama, 0, v, alpha=10.0):
        steered = attribute_layers(llama, labels, vecs).effect[0]
    assert abs(steered - clean) > 1e-3 * abs(clean)
    assert attribute_layers(llama, labels, vecs).effect[0] == clean


def test_paths_that_cannot_apply_an_intervention_refuse_while_it_is_open(llama, v):
    refuse_open_interventions(llama, "engine 'x'")  # nothing open: fine
    with add_to_residual(llama, 0, v), pytest.raises(TwinlensError, match=r"engine 'x' cannot apply.*add_to_residual\(layer=0"):
        refuse_open_interventions(llama, "engine 'x'")
    assert open_interventions(llama) == []
