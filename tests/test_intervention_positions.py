"""Issue 16 part 2: `add_to_residual(positions=...)` means absolute positions in each row's own
sequence, tracked through KV-cached decoding whatever the batch layout; a mask that cannot apply
is an error. A recording hook on each side of the steering hook shows exactly which
(row, position) pairs a forward changed; the expected pairs are computed here from the batch
layout (left padding, batches of `batch_size` rows, one prompt forward then one forward per new
token), independently of the code under test."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from analyses.routing import PositionsRouter, Steering, hybrid_generate
from analyses.sampling import score_completions
from hooks import TwinlensError, add_to_residual, capture, generate, load_model
from hooks.interventions import open_interventions
from probes.vectors import StrategyVector

LAYER = 0


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_model(tiny_models["llama"])


@contextmanager
def steered_and_recorded(model, positions, alpha=5.0):
    """Yield a list that receives, per forward pass, the bool [batch, pos] of tokens whose block
    output the steering hook changed (a recorder runs just before and just after it)."""
    module, _ = model.hf_module(f"blocks.{LAYER}.hook_out")
    before, changed = [], []

    def out(o):
        return o[0] if isinstance(o, tuple) else o

    h1 = module.register_forward_hook(lambda m, i, o: before.append(out(o).detach().clone()))
    try:
        with add_to_residual(model, LAYER, torch.ones(model.d_model), alpha=alpha, positions=positions):
            h2 = module.register_forward_hook(
                lambda m, i, o: changed.append((out(o) - before[-1]).abs().amax(-1) > 1e-3))
            try:
                yield changed
            finally:
                h2.remove()
    finally:
        h1.remove()


def generate_pairs(changed, prompt_lens, n, batch_size, max_new):
    """(output row, absolute position) of every changed token of a `generate` run."""
    rows = [(i * n + j, prompt_lens[i]) for i in range(len(prompt_lens)) for j in range(n)]
    per_batch = 1 + max_new  # the prompt forward, then one forward per sampled token
    pairs = set()
    for f, ch in enumerate(changed):
        batch, step = divmod(f, per_batch)
        chunk = rows[batch * batch_size : (batch + 1) * batch_size]
        width = max(length for _, length in chunk)
        for b, t in ch.nonzero().tolist():
            row, length = chunk[b]
            pairs.add((row, t - (width - length)) if step == 0 else (row, length + step - 1))
    return pairs


def test_one_token_prompt_mask_steers_the_prompt_not_every_decoding_step(llama):
    prompt = [llama.encode("7")]
    with steered_and_recorded(llama, torch.ones(1, 1, dtype=torch.bool)) as changed:
        generate(llama, prompt, 6, stop_at_eos=False)
    assert len(changed) == 7  # the prompt forward + 6 cached steps ran under the hook
    assert generate_pairs(changed, [1], 1, 64, 6) == {(0, 0)}  # was: all 7 forwards steered


@pytest.mark.parametrize("batch_size", [2, 64])
def test_per_prompt_positions_hit_prompt_and_generated_tokens_in_a_padded_batch(llama, batch_size):
    texts = ["1+2+3:", "9", "7+7+7+7+7:"]  # 6, 1, 10 tokens: left padding, and a one-token row
    prompts = [llama.encode(t) for t in texts]
    want = {0: [0, 7], 1: [0, 1, 3], 2: [9]}  # positions >= the prompt length are generated tokens
    with steered_and_recorded(llama, [want[0], want[1], want[2]]) as changed:
        generate(llama, prompts, 6, stop_at_eos=False, batch_size=batch_size)
    assert generate_pairs(changed, [6, 1, 10], 1, batch_size, 6) == {(r, p) for r, ps in want.items() for p in ps}


def test_with_n_samples_a_mask_row_is_per_prompt_or_per_output_row(llama):
    prompts = [llama.encode("1+2:"), llama.encode("5")]  # 4 and 1 tokens; rows 0,1 | 2,3
    kw = dict(n=2, temperature=1.0, seed=0, stop_at_eos=False, batch_size=3)  # a batch splits prompt 1
    per_prompt = torch.zeros(2, 6, dtype=torch.bool)
    per_prompt[0, 1] = per_prompt[1, 2] = True
    with steered_and_recorded(llama, per_prompt) as changed:
        generate(llama, prompts, 5, **kw)
    assert generate_pairs(changed, [4, 1], 2, 3, 5) == {(0, 1), (1, 1), (2, 2), (3, 2)}
    with steered_and_recorded(llama, [[0], [4], [], [1, 5]]) as changed:
        generate(llama, prompts, 5, **kw)
    assert generate_pairs(changed, [4, 1], 2, 3, 5) == {(0, 0), (1, 4), (3, 1), (3, 5)}


def test_shared_positions_apply_to_every_row(llama):
    prompts = [llama.encode("1+2"), llama.encode("5")]
    with steered_and_recorded(llama, range(2)) as changed:
        generate(llama, prompts, 3, stop_at_eos=False)
    assert generate_pairs(changed, [3, 1], 1, 64, 3) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_capture_and_scoring_steer_exactly_the_masked_tokens(llama, tmp_path):
    texts = ["1+2+3:", "9+9", "7+7+7+7+7:"]
    alpha, v = 5.0, torch.ones(llama.d_model)
    clean = capture(llama, texts, hooks=[f"blocks.{LAYER}.hook_out"], out=tmp_path / "c", batch_size=2, progress=False)
    with add_to_residual(llama, LAYER, v, alpha=alpha, positions=[[0, 5], [], [9]]):
        steered = capture(llama, texts, hooks=[f"blocks.{LAYER}.hook_out"], out=tmp_path / "s", batch_size=2,
                          engine="bridge", progress=False)
    diff = steered.read(f"blocks.{LAYER}.hook_out", model="model") - clean.read(f"blocks.{LAYER}.hook_out", model="model")
    hit = diff.abs().amax(-1) > 1e-3
    pairs = set(zip(clean.example_index[hit].tolist(), clean.position[hit].tolist(), strict=True))
    assert pairs == {(0, 0), (0, 5), (2, 9)}
    torch.testing.assert_close(diff[hit], (alpha * v).expand(3, -1), atol=1e-5, rtol=0)

    last = llama.n_layers - 1  # steer the last block at the token predicting row 1's first completion token
    prompts, comps = [llama.encode("1+2"), llama.encode("5")], [llama.encode("=3"), llama.encode("6")]
    base = score_completions(llama, prompts, comps)
    with add_to_residual(llama, last, v, alpha=alpha, positions=[[], [0]]):
        moved = score_completions(llama, prompts, comps)
    assert moved[0] == base[0] and abs(moved[1][0] - base[1][0]) > 1e-3


def test_direct_hf_calls_use_positions_of_real_tokens(llama):
    a, b = llama.encode("1+2"), llama.encode("7+7+7")
    ids = torch.tensor([[0, 0] + a, b])  # row 0 left-padded by two
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with steered_and_recorded(llama, [0]) as changed, torch.no_grad():
        llama.hf(input_ids=ids, attention_mask=mask)
    assert changed[0].nonzero().tolist() == [[0, 2], [1, 0]]  # each row's first real token
    with steered_and_recorded(llama, range(len(b))) as changed, torch.no_grad():
        llama.hf.generate(torch.tensor([b]), attention_mask=torch.ones(1, len(b), dtype=torch.long),
                          max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert changed[0].all() and not any(c.any() for c in changed[1:])  # the prompt, no cached step


def test_masks_that_cannot_apply_are_errors(llama):
    prompts = [llama.encode("1+2"), llama.encode("5")]
    with pytest.raises(TwinlensError, match="3 rows but this call has 2 rows"):
        with steered_and_recorded(llama, torch.ones(3, 4, dtype=torch.bool)) as changed:
            generate(llama, prompts, 3)
    assert changed == []  # refused before the first forward
    with pytest.raises(TwinlensError, match="2 prompts x 2 samples = 4 rows"):
        with add_to_residual(llama, 0, torch.ones(llama.d_model), positions=torch.ones(3, 4, dtype=torch.bool)):
            generate(llama, prompts, 3, n=2)
    with pytest.raises(TwinlensError, match="matched no token"):
        with add_to_residual(llama, 0, torch.ones(llama.d_model), positions=[100]):
            generate(llama, prompts, 3)
    with pytest.raises(TwinlensError, match="did not say where its tokens sit"):
        with add_to_residual(llama, 0, torch.ones(llama.d_model), positions=[0]), torch.no_grad():
            llama.bridge(torch.tensor([prompts[0]]))
    for bad, msg in [([-1], "negative"), ([], "empty"), (torch.zeros(2, 3, dtype=torch.bool), "no True"),
                     ([0.5], "list/range of ints"), (torch.tensor([0.5]), "integers or a bool mask"), (torch.ones(1, 2, 3, dtype=torch.bool), r"\[rows, pos\]"),
                     ("all", "give absolute positions")]:
        with pytest.raises(TwinlensError, match=msg):
            with add_to_residual(llama, 0, torch.ones(llama.d_model), positions=bad):
                pass
    # every refusal above, raised inside a forward, on exit or on entry, left no hook behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in llama.hf.modules())
    assert open_interventions(llama) == []


def test_steered_hybrid_steers_only_the_routed_rows(tiny_models, llama):
    rl = load_model(tiny_models["llama_b"])
    prompts = [llama.encode(t) for t in ("1+2+3:", "9", "7+7:")]
    route = np.zeros((3, 6), dtype=bool)
    route[0, 2] = route[2, 0] = True  # row 0 at its 3rd new token, row 2 at its 1st
    vec = StrategyVector(torch.ones(llama.d_model), layer=LAYER, method="random", strategy="s")
    nxt, _ = llama.hf_module(f"blocks.{LAYER + 1}.hook_out")  # its input = block LAYER's steered output
    seen = []
    h = nxt.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True)
    try:
        out = hybrid_generate(llama, rl, prompts, PositionsRouter(route), 6, stop_at_eos=False,
                              steering=Steering([vec], alpha=5.0))
    finally:
        h.remove()
    assert out.routed == route.tolist()
    # A routed step re-runs its last token's forward under steering, right after the forward it
    # replaces. Forwards: prompt, re-run (step 0), step 0, step 1, re-run (step 2), step 2, ...
    assert len(seen) == 1 + 6 + 2
    moved = [(seen[1] - seen[0][:, -1:]).abs().amax(-1)[:, 0], (seen[4] - seen[3]).abs().amax(-1)[:, 0]]
    assert [(m > 1e-3).nonzero().flatten().tolist() for m in moved] == [[2], [0]]
    assert max(float(m.sort().values[-2]) for m in moved) < 1e-5  # the other rows: the same forward again


def test_hook_verification_inside_a_restricted_intervention_still_serves_hf_modules(tiny_models, tmp_path):
    # The kit's check that an HF module gives the bridge's value runs both paths on a probe input;
    # it must run clean, not trip over (or be skewed by) the user's open intervention.
    model = load_model(tiny_models["llama"])
    hooks = ["blocks.0.hook_out", "blocks.1.attn.hook_out"]
    clean = capture(model, ["1+2+3:"], hooks=hooks, out=tmp_path / "c", engine="bridge", progress=False)
    fresh = load_model(tiny_models["llama"])
    with add_to_residual(fresh, 0, torch.ones(fresh.d_model), alpha=5.0, positions=[2]):
        steered = capture(fresh, ["1+2+3:"], hooks=hooks, out=tmp_path / "s", engine="hf", progress=False)
    assert fresh._hf_refusals == {}
    diff = (steered.read(hooks[0], model="model") - clean.read(hooks[0], model="model")).abs().amax(-1)
    assert (diff > 1e-3).nonzero().flatten().tolist() == [2]
    assert (steered.read(hooks[1], model="model") - clean.read(hooks[1], model="model")).abs().max() > 1e-3


def test_steering_each_prompt_in_a_padded_split_batch_equals_steering_it_alone(tiny_models):
    # Whatever the batch layout, positions mean the same tokens: a batch (left padding, batches of
    # 2) with one mask row per prompt generates what each prompt generates alone with its row.
    model = load_model(tiny_models["gpt2"])
    prompts = [model.encode(t) for t in ("1+2+3:", "9", "7+7+7+7+7:", "ab")]
    rows = [[len(p) - 1, len(p) + 2] for p in prompts]  # the last prompt token and a generated one
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    with add_to_residual(model, 0, v, alpha=8.0, positions=rows):
        together = generate(model, prompts, 8, stop_at_eos=False, batch_size=2)
    alone = []
    for p, r in zip(prompts, rows, strict=True):
        with add_to_residual(model, 0, v, alpha=8.0, positions=[r]):
            alone.append(generate(model, [p], 8, stop_at_eos=False)[0])
    assert together == alone
    assert together != generate(model, prompts, 8, stop_at_eos=False)  # the steering did act
