"""Scoped interventions and seeded generation."""

from __future__ import annotations

import pytest
import torch

from hooks import TwinlensError, add_to_residual, generate, load_model
from hooks.interventions import ablate_direction


def test_add_to_residual_shifts_the_block_output_by_exactly_alpha_v_and_cleans_up(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"])
    ids = model.encode("3+5+8:")
    v = torch.randn(model.d_model)
    layer = 0
    grab = {}

    def record_next_block_input(module, args, kwargs):
        grab["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    nxt, _ = model.hf_module(f"blocks.{layer + 1}.hook_out")
    handle = nxt.register_forward_pre_hook(record_next_block_input, with_kwargs=True)
    with torch.no_grad():
        model.hf(torch.tensor([ids]))
        clean = grab["x"]
        with add_to_residual(model, layer, v, alpha=2.5):
            model.hf(torch.tensor([ids]))
    handle.remove()
    # What block `layer + 1` receives is what block `layer` returned, after the edit.
    torch.testing.assert_close(grab["x"] - clean, (2.5 * v).expand_as(clean), atol=1e-5, rtol=0)
    weights = {k: p.clone() for k, p in model.hf.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_residual(model, layer, v, alpha=1.0):
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in model.hf.modules())
    assert all(torch.equal(weights[k], p) for k, p in model.hf.state_dict().items())


def test_steering_changes_generation_only_inside_the_context(tiny_models):
    model = load_model(tiny_models["llama"])
    prompt = [model.encode("3+5+8+2+1:")]
    before = generate(model, prompt, 10, stop_at_eos=False)
    with add_to_residual(model, 1, torch.ones(model.d_model), alpha=50.0):
        steered = generate(model, prompt, 10, stop_at_eos=False)
    after = generate(model, prompt, 10, stop_at_eos=False)
    assert before == after and steered != before


def test_ablating_a_direction_leaves_no_component_along_it(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"])
    u = torch.randn(model.d_model)
    grab = {}
    module, _ = model.hf_module("blocks.1.hook_out")
    with ablate_direction(model, 1, u):
        h = module.register_forward_hook(lambda m, i, o: grab.__setitem__("x", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model.hf(torch.tensor([model.encode("1+2+3:")]))
        h.remove()
    assert (grab["x"] @ (u / u.norm())).abs().max() < 1e-5


def test_bad_layer_or_vector_width_is_a_clear_error(tiny_models):
    model = load_model(tiny_models["llama"])
    with pytest.raises(TwinlensError, match="Layer 5 does not exist"):
        with add_to_residual(model, 5, torch.zeros(model.d_model)):
            pass
    with pytest.raises(TwinlensError, match="residual width 32"):
        with add_to_residual(model, 0, torch.zeros(7)):
            pass


def test_sampling_is_seeded_per_row_independent_of_batching(tiny_models):
    model = load_model(tiny_models["qwen2"])
    prompts = [model.encode(p) for p in ["1+2:", "3+4+5:", "9:"]]
    a = generate(model, prompts, 8, temperature=1.0, n=3, seed=7, batch_size=9)
    b = generate(model, prompts, 8, temperature=1.0, n=3, seed=7, batch_size=2)
    c = generate(model, prompts[2:], 8, temperature=1.0, n=3, seed=7, row_ids=[2])
    d = generate(model, prompts, 8, temperature=1.0, n=3, seed=8)
    assert a == b and a[6:] == c and a != d


def test_batched_greedy_generation_with_left_padding_equals_one_by_one(tiny_models):
    model = load_model(tiny_models["gpt2"])
    prompts = [model.encode(p) for p in ["1+2:", "3+4+5+6+7:", "9:"]]
    together = generate(model, prompts, 10, stop_at_eos=False)
    alone = [generate(model, [p], 10, stop_at_eos=False)[0] for p in prompts]
    assert together == alone


def test_generation_bad_input(tiny_models):
    model = load_model(tiny_models["llama"])
    with pytest.raises(TwinlensError, match="No prompts"):
        generate(model, [], 5)
    with pytest.raises(TwinlensError, match="exceeds the model's context"):
        generate(model, [[1] * 120], 20)
