"""Subnetworks (weight diff): planted updates of known fraction, overlap and rank must come out
exactly; bad checkpoints give clear errors; masks round-trip; patch copies and never mutates.

Synthetic checkpoints hold integer-valued float32 weights in +-[1, 8], so every planted change is
exactly representable: +1 (changed at every tolerance), +2^-12 (> atol 1e-5, but relative
change <= 2^-12 < 1e-3: bf16-equal) and +2^-20 (nonzero, <= atol). Counts are then exact integers
and fractions are compared with ==.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from analyses.subnetworks import (
    CheckpointNotFoundError,
    DiffSettings,
    compare_tensor,
    diff_runs,
    diff_weights,
    layer_index,
    load_masks,
    module_kind,
    pack_mask,
    patch,
    principal_angles_deg,
    rounded_atol_threshold,
    save_masks,
    singular_values,
    top_singular_subspaces,
    unpack_mask,
    update_rank,
)
from analyses.subnetworks.matrix_spectra import compare_spectra
from hooks.errors import TwinlensError

ROOT = Path(__file__).resolve().parents[1]
BIG, MEDIUM, TINY = 1.0, 2.0 ** -12, 2.0 ** -20

SHAPES = {
    "model.embed_tokens.weight": (10, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
    "lm_head.weight": (10, 8),
}
NO_RANK = {"rank": False, "spectral": False, "progress": False}


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
                     shards: int = 1) -> Path:
    """Save ``tensors`` as safetensors (sharded with an index when shards > 1) plus config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        names = list(tensors)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, str(folder / fname))
            weight_map.update({n: fname for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config if config is not None else {"tie_word_embeddings": False}))
    return folder


def base_weights(seed: int = 0, shapes=SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        mag = torch.randint(1, 9, shape, generator=g).float()
        sign = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        out[name] = mag * sign
    return out


def plant(base: dict[str, torch.Tensor], sizes: dict[str, tuple[int, int, int]], seed: int) -> dict[str, torch.Tensor]:
    """Per tensor (n_big, n_medium, n_tiny) disjoint positions changed by BIG, MEDIUM, TINY."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in base.items():
        flat = w.clone().reshape(-1)
        nb, nm, nt = sizes.get(name, (0, 0, 0))
        perm = torch.randperm(flat.numel(), generator=g)
        flat[perm[:nb]] += BIG
        flat[perm[nb:nb + nm]] += MEDIUM
        flat[perm[nb + nm:nb + nm + nt]] += TINY
        out[name] = flat.reshape(w.shape)
    return out


def with_changes_at(base: dict[str, torch.Tensor], index_sets: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for name, w in base.items():
        flat = w.clone().reshape(-1)
        idx = index_sets.get(name)
        if idx is not None and len(idx):
            flat[torch.as_tensor(idx)] += BIG
        out[name] = flat.reshape(w.shape)
    return out


SIZES = {
    "model.embed_tokens.weight": (7, 3, 2),
    "model.layers.0.input_layernorm.weight": (0, 0, 1),
    "model.layers.0.self_attn.q_proj.weight": (16, 4, 4),
    "model.layers.0.mlp.up_proj.weight": (10, 0, 30),
    "model.layers.1.self_attn.q_proj.weight": (64, 0, 0),
    "model.layers.1.mlp.down_proj.weight": (0, 9, 0),
    "lm_head.weight": (1, 1, 1),
}


# --------------------------------------------------------------------------------------------
# names


def test_module_kind_and_layer_parse_llama_qwen_gpt2_names():
    cases = {
        "model.embed_tokens.weight": ("embedding", None),
        "model.layers.3.self_attn.q_proj.weight": ("attn_q", 3),
        "model.layers.3.self_attn.k_proj.bias": ("attn_k", 3),
        "model.layers.3.self_attn.v_proj.weight": ("attn_v", 3),
        "model.layers.12.self_attn.o_proj.weight": ("attn_o", 12),
        "model.layers.0.mlp.gate_proj.weight": ("mlp_gate", 0),
        "model.layers.0.mlp.up_proj.weight": ("mlp_up", 0),
        "model.layers.0.mlp.down_proj.weight": ("mlp_down", 0),
        "model.layers.0.input_layernorm.weight": ("norm", 0),
        "model.layers.0.self_attn.q_norm.weight": ("norm", 0),
        "model.norm.weight": ("norm", None),
        "lm_head.weight": ("unembedding", None),
        "transformer.wte.weight": ("embedding", None),
        "transformer.wpe.weight": ("embedding", None),
        "transformer.h.5.attn.c_attn.weight": ("attn_qkv", 5),
        "transformer.h.5.attn.c_proj.bias": ("attn_o", 5),
        "transformer.h.5.mlp.c_fc.weight": ("mlp_up", 5),
        "transformer.h.5.mlp.c_proj.weight": ("mlp_down", 5),
        "transformer.h.5.ln_1.weight": ("norm", 5),
        "transformer.ln_f.bias": ("norm", None),
        "h.2.attn.c_attn.weight": ("attn_qkv", 2),
        "something.else": ("other", None),
    }
    for name, (kind, layer) in cases.items():
        assert (module_kind(name), layer_index(name)) == (kind, layer), name


# --------------------------------------------------------------------------------------------
# planted fractions, tolerances


def test_planted_updated_fractions_are_exact_per_tensor_module_layer_and_overall(tmp_path):
    base = base_weights()
    b = write_checkpoint(tmp_path / "base", base)
    r = write_checkpoint(tmp_path / "rl", plant(base, SIZES, seed=1))
    d = diff_weights(b, r, **NO_RANK)
    n_total = sum(math.prod(s) for s in SHAPES.values())
    exp = {"exact": sum(sum(v) for v in SIZES.values()),
           "atol": sum(v[0] + v[1] for v in SIZES.values()),
           "bf16": sum(v[0] for v in SIZES.values())}
    assert d.overall.n_params == n_total
    assert d.updated_fraction == {t: exp[t] / n_total for t in exp}
    for t in d.tensors:
        nb, nm, nt = SIZES.get(t.name, (0, 0, 0))
        assert (t.counts.exact, t.counts.atol, t.counts.bf16) == (nb + nm + nt, nb + nm, nb), t.name
    q = d.per_module["attn_q"]
    assert (q.n_params, q.exact, q.atol, q.bf16) == (128, 24 + 64, 20 + 64, 80)
    assert d.per_module["norm"].exact == 1 and d.per_module["norm"].atol == 0
    layer0 = d.per_layer[0]
    assert (layer0.n_params, layer0.exact, layer0.atol, layer0.bf16) == (8 + 64 + 96, 1 + 24 + 40, 20 + 10, 16 + 10)
    assert set(d.per_layer) == {0, 1}
    out = d.to_dict()
    assert set(out["updated_fraction"]) == {"exact", "atol", "bf16"}


def test_sharded_checkpoint_with_index_gives_the_same_numbers_as_one_file(tmp_path):
    base = base_weights()
    rl = plant(base, SIZES, seed=1)
    one = diff_weights(write_checkpoint(tmp_path / "b1", base), write_checkpoint(tmp_path / "r1", rl), **NO_RANK)
    three = diff_weights(write_checkpoint(tmp_path / "b3", base, shards=3), write_checkpoint(tmp_path / "r3", rl, shards=2),
                         **NO_RANK)
    assert [(t.name, t.counts) for t in sorted(one.tensors, key=lambda t: t.name)] == \
           [(t.name, t.counts) for t in sorted(three.tensors, key=lambda t: t.name)]


def test_tolerance_boundaries_are_inclusive_and_bf16_rule_is_relative():
    # pairs (w, w'); expected changed under (exact, atol with tol=2^-16, bf16)
    pairs = [
        ((999.0, 1000.0), (1, 1, 0)),   # |d| = 1 == 1e-3 * 1000 (float32): unchanged at the bf16 boundary
        ((998.0, 1000.0), (1, 1, 1)),
        ((1000.0, 1001.0), (1, 1, 0)),
        ((-999.0, -1000.0), (1, 1, 0)),
        ((1.0, 1.0 + 2 ** -10), (1, 1, 0)),  # 0.000977 <= 0.001001
        ((1.0, 1.0 + 2 ** -9), (1, 1, 1)),
        ((0.0, 0.0), (0, 0, 0)),
        ((0.0, 2.0 ** -30), (1, 0, 1)),      # any change from 0 is relative-infinite
        ((-0.5, 0.5), (1, 1, 1)),
        ((1.0, 1.0 + 2 ** -16), (1, 0, 0)),  # |d| == tol: unchanged at the atol boundary
        ((1.0, 1.0 + 2 ** -15), (1, 1, 0)),
        ((4.0, float("nan")), (1, 1, 1)),    # NaN counts as changed
    ]
    w = torch.tensor([p[0][0] for p in pairs], dtype=torch.float32)
    w2 = torch.tensor([p[0][1] for p in pairs], dtype=torch.float32)
    for chunk in (8, 1 << 18):  # chunk boundaries must not matter
        c = compare_tensor(w, [w2], tol=2.0 ** -16, compare="float32", chunk=chunk).counts[0]
        exp = np.array([p[1] for p in pairs]).sum(0)
        assert (c.exact, c.atol, c.bf16) == tuple(int(x) for x in exp)
        # one by one, to name the failing pair
        for (a, b), e in pairs:
            ci = compare_tensor(torch.tensor([a]), [torch.tensor([b])], tol=2.0 ** -16).counts[0]
            assert (ci.exact, ci.atol, ci.bf16) == e, (a, b)


def test_threaded_ranges_give_the_same_counts_overlaps_consensus_and_masks():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1003, 7, generator=g).to(torch.bfloat16)
    runs = [torch.where(torch.rand(base.shape, generator=g) < p, base * 1.5, base) for p in (0.1, 0.3, 0.5)]
    one = compare_tensor(base, runs, n_consensus=3, pack=[True] * 3, chunk=64, workers=1)
    many = compare_tensor(base, runs, n_consensus=3, pack=[True] * 3, chunk=64, workers=3)
    assert one.counts == many.counts
    assert np.array_equal(one.both, many.both) and np.array_equal(one.consensus_hist, many.consensus_hist)
    assert all(np.array_equal(a, b) for a, b in zip(one.packed, many.packed, strict=True))
    assert torch.equal(unpack_mask(many.packed[1], base.shape), (runs[1] - base).float().abs() > 1e-5)


_SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1e-40, 1e-5, -1e-5, 2.0 ** -16,
            2.0 ** -17, 1.0, 1.0 + 2 ** -10, 999.0, 1000.0, 65504.0, 3e38]


def _adversarial_pair(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 base and run with special values, deltas around atol and around the bf16 relative
    boundary, exact copies and big jumps: every branch of the three tests, and their edges."""
    special = torch.tensor(_SPECIAL, dtype=torch.float64)
    pick = lambda: special[torch.randint(0, len(special), (n,), generator=g)]  # noqa: E731
    base = torch.where(torch.rand(n, generator=g) < 0.25, pick(), torch.randn(n, generator=g, dtype=torch.float64))
    u = torch.rand(n, generator=g)
    delta = torch.where(u < 0.3, torch.zeros(n, dtype=torch.float64),
                        torch.where(u < 0.55, torch.randn(n, generator=g, dtype=torch.float64) * 1e-5,
                                    torch.where(u < 0.8, base * 1e-3 * (1 + (torch.rand(n, generator=g) - 0.5) * 0.01),
                                                torch.randn(n, generator=g, dtype=torch.float64))))
    run = torch.where(torch.rand(n, generator=g) < 0.05, pick(), base + delta)
    return base, run


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fused_kernels_equal_the_numpy_reference_on_adversarial_values_for_every_dtype_pair():
    """The fused numba kernels must give the numpy reference's counts, overlaps, consensus and
    packed masks bit for bit: NaN / inf / signed zero / subnormal inputs, deltas on both boundaries,
    every stored dtype pair, both compare modes, every mask tolerance, threads and chunk edges."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(11)
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    checked = 0
    for dx in dtypes:
        for dy in dtypes:
            base, run = _adversarial_pair(4099, g)
            x = base.to(dx)
            ys = [run.to(dy), (run * 1.0001).to(dy), x.to(dy)]
            for compare in ("native", "float32"):
                for tol, mt in ((1e-5, "atol"), (2.0 ** -16, "exact"), (0.0, "bf16")):
                    kw = dict(tol=tol, compare=compare, mask_tolerance=mt, n_consensus=3, pack=[True] * 3, chunk=1024)
                    ref = compare_tensor(x, ys, engine="numpy", **kw)
                    got = compare_tensor(x, ys, engine="fused", workers=2, **kw)
                    case = (dx, dy, compare, tol, mt)
                    assert got.counts == ref.counts, case
                    assert np.array_equal(got.both, ref.both) and np.array_equal(got.consensus_hist,
                                                                                 ref.consensus_hist), case
                    assert all(np.array_equal(a, b) for a, b in zip(got.packed, ref.packed, strict=True)), case
                    one = compare_tensor(x, ys[:1], engine="fused", tol=tol, compare=compare)  # whole-range call
                    assert one.counts == ref.counts[:1], case
                    checked += 1
    assert checked == 16 * 2 * 3
    # the cases are not vacuous: every tolerance sees changed and unchanged elements, and they differ
    c = compare_tensor(base.float(), [run.float()], engine="fused").counts[0]
    assert 0 < c.atol < c.exact < c.n_params and 0 < c.bf16 < c.exact


def test_engine_choice_errors_and_fallback(monkeypatch):
    from analyses.subnetworks import change_counts

    w = torch.arange(16, dtype=torch.float32)
    with pytest.raises(ValueError, match="engine must be one of"):
        compare_tensor(w, [w], engine="cuda")
    with pytest.raises(TwinlensError, match="engine must be one of"):
        DiffSettings(engine="cuda")
    monkeypatch.setattr(change_counts, "_FUSED_UNAVAILABLE", "ModuleNotFoundError: No module named 'numba'")
    with pytest.raises(ImportError, match="pip install numba.*engine='numpy'"):
        compare_tensor(w, [w + 1], engine="fused")
    assert change_counts.prepare_engine("auto") == "numpy"  # auto falls back to the reference
    assert compare_tensor(w, [w + 1], engine="auto").counts[0].exact == 16


def test_default_atol_is_1e_5_like_the_papers_isclose():
    w = torch.ones(4)
    w2 = w + torch.tensor([2 ** -17, 2 ** -16, 0.0, 1e-5 * 2])  # 7.6e-6 (<=1e-5), 1.5e-5, 0, 2e-5
    c = compare_tensor(w, [w2]).counts[0]
    ref = int((~torch.isclose(w2 - w, torch.zeros(4), atol=1e-5)).sum())
    assert c.atol == ref == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tol", [1e-5, 2.0 ** -16, 3e-3, 0.0])
def test_rounded_atol_threshold_equals_rounding_every_float32_near_tol(dtype, tol):
    m, inclusive = rounded_atol_threshold(tol, dtype)
    # every float32 within 200k float32 steps of tol and of m: more than one bf16 / fp16 step
    centers = [int(torch.tensor([c], dtype=torch.float32).view(torch.int32)) for c in (tol, m)]
    bits = torch.cat([torch.arange(max(c - 200_000, 0), c + 200_000, dtype=torch.int32) for c in centers])
    v = bits.view(torch.float32)
    truth = v.to(dtype).float() <= tol
    rule = (v < m) | ((v == m) & inclusive)
    assert torch.equal(truth, rule)


def test_native_compare_equals_torch_16bit_subtraction_and_float32_compare_equals_float32():
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.bfloat16, torch.float16):
        mag = torch.exp(torch.empty(20000).uniform_(-14, -8, generator=g))  # ~1e-6 .. 3e-4: deltas near 1e-5
        sign = torch.randint(0, 2, (20000,), generator=g) * 2 - 1
        x = (mag * sign).to(dtype)
        y = (x.float() + torch.randn(20000, generator=g) * 2e-5).to(dtype)
        native = compare_tensor(x, [y], compare="native").counts[0]
        f32 = compare_tensor(x, [y], compare="float32").counts[0]
        ref_native = int((~torch.isclose((y - x).float(), torch.zeros(20000), atol=1e-5, rtol=0)).sum())
        ref_f32 = int(((y.float() - x.float()).abs() > 1e-5).sum())
        assert native.atol == ref_native and f32.atol == ref_f32
        assert native.exact == f32.exact == int((x != y).sum())


def test_bf16_checkpoint_adjacent_values_count_as_changed_and_compare_modes_agree(tmp_path):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(64, 32, generator=g) + 3).to(torch.bfloat16)  # no zeros
    w2 = w.clone().reshape(-1)
    idx = torch.randperm(w.numel(), generator=g)[:300]
    # the next bf16 value up: one ulp (relative change 2^-8..2^-7 > 1e-3 -> changed under the bf16 rule)
    w2[idx] = (w2[idx].view(torch.int16) + 1).view(torch.bfloat16)
    w2 = w2.reshape(w.shape)
    assert int((w2 != w).sum()) == 300
    for compare in ("native", "float32"):
        c = compare_tensor(w, [w2], compare=compare).counts[0]
        assert (c.exact, c.atol, c.bf16) == (300, 300, 300), compare
    b = write_checkpoint(tmp_path / "b", {"model.layers.0.mlp.up_proj.weight": w})
    r = write_checkpoint(tmp_path / "r", {"model.layers.0.mlp.up_proj.weight": w2})
    d = diff_weights(b, r, compare="float32", progress=False, spectral=False)
    assert d.settings.compare == "float32" and d.to_dict()["per_tensor"][0]["dtype"] == "bfloat16"
    assert d.overall.bf16 == 300


# --------------------------------------------------------------------------------------------
# tied embeddings


@pytest.mark.parametrize("case", ["absent", "config", "identical", "untied"])
def test_tied_embeddings_are_counted_once(tmp_path, case):
    base = base_weights()
    rl = plant(base, SIZES, seed=1)
    emb, head = "model.embed_tokens.weight", "lm_head.weight"
    n_head = base[head].numel()
    config = {}
    if case == "absent":
        base.pop(head), rl.pop(head)
    elif case == "config":
        config = {"tie_word_embeddings": True}
    elif case == "identical":
        base[head], rl[head] = base[emb].clone(), rl[emb].clone()
    d = diff_weights(write_checkpoint(tmp_path / "b", base, config), write_checkpoint(tmp_path / "r", rl, config),
                     **NO_RANK)
    n_total = sum(math.prod(s) for s in SHAPES.values())
    assert d.tied.status == case
    names = [t.name for t in d.tensors]
    if case == "untied":
        assert d.overall.n_params == n_total and head in names
    else:
        assert d.overall.n_params == n_total - n_head and head not in names and emb in names
    assert d.tied.counted_once == (case != "untied")


# --------------------------------------------------------------------------------------------
# overlap across runs, consensus, SFT


def test_planted_overlap_of_two_runs_and_random_baselines_are_exact(tmp_path):
    base = base_weights()
    n = {k: v.numel() for k, v in base.items()}
    rng = np.random.default_rng(0)
    sets_a, sets_b = {}, {}
    n_a = n_b = n_both = 0
    for name, size in n.items():
        perm = rng.permutation(size)
        a, both, b_only = size // 4, size // 8, size // 5
        sets_a[name] = perm[:a]
        sets_b[name] = np.concatenate([perm[a - both:a], perm[a:a + b_only]])
        n_a, n_b, n_both = n_a + a, n_b + both + b_only, n_both + both
    b = write_checkpoint(tmp_path / "base", base)
    ra = write_checkpoint(tmp_path / "rl-a", with_changes_at(base, sets_a))
    rb = write_checkpoint(tmp_path / "rl-b", with_changes_at(base, sets_b))
    fam = diff_runs(b, [ra, rb], **NO_RANK)
    (ov,) = fam.overlaps
    total = sum(n.values())
    assert (ov.n_params, ov.n_a, ov.n_b, ov.n_both) == (total, n_a, n_b, n_both)
    assert ov.o1 == n_both / n_a and ov.o2 == n_both / n_b
    s1, s2 = 1 - n_a / total, 1 - n_b / total
    assert ov.random_o1 == pytest.approx(1 - s2, abs=1e-15) and ov.random_o2 == pytest.approx(1 - s1, abs=1e-15)
    assert ov.jaccard == n_both / (n_a + n_b - n_both)
    p, q = n_a / total, n_b / total
    assert ov.random_jaccard == pytest.approx(p * q / (p + q - p * q), abs=1e-15)
    out = fam.to_dict()
    assert {"o1", "o2", "random_o1", "random_o2", "jaccard", "random_jaccard"} <= set(out["overlap"][0])
    assert set(out["per_run"]) == {"rl-a", "rl-b"}
    # the same numbers from the numpy reference engine; results.json says which engine ran
    ref = diff_runs(b, [ra, rb], engine="numpy", **NO_RANK)
    assert ref.to_dict()["overlap"] == out["overlap"] and ref.to_dict()["per_module"] == out["per_module"]
    expected = "fused" if importlib.util.find_spec("numba") else "numpy"
    assert (out["settings"]["engine"], ref.to_dict()["settings"]["engine"]) == (expected, "numpy")


def test_consensus_histogram_over_three_runs_and_sft_table(tmp_path):
    base = base_weights()
    rng = np.random.default_rng(1)
    runs_sets = [{k: rng.choice(v.numel(), size=v.numel() // 3, replace=False) for k, v in base.items()}
                 for _ in range(3)]
    sft_sets = {k: rng.choice(v.numel(), size=v.numel() - 2, replace=False) for k, v in base.items()}
    b = write_checkpoint(tmp_path / "base", base)
    runs = {f"rl{i}": write_checkpoint(tmp_path / f"rl{i}", with_changes_at(base, s)) for i, s in enumerate(runs_sets)}
    sft = write_checkpoint(tmp_path / "sft", with_changes_at(base, sft_sets))
    fam = diff_runs(b, runs, sft=sft, **NO_RANK)
    hist = np.zeros(4, dtype=int)
    for name, w in base.items():
        count = np.zeros(w.numel(), dtype=int)
        for s in runs_sets:
            count[s[name]] += 1
        hist += np.bincount(count, minlength=4)
    assert fam.consensus.histogram == hist.tolist()
    assert fam.consensus.consensus_ratio == hist[3] / hist.sum()
    assert len(fam.overlaps) == 3
    total = hist.sum()
    assert fam.sft.overall.atol == total - 2 * len(base)
    assert [o.run_b for o in fam.sft_overlaps] == ["rl0", "rl1", "rl2"]
    for o, s in zip(fam.sft_overlaps, runs_sets, strict=True):
        both = sum(len(np.intersect1d(s[k], sft_sets[k])) for k in base)
        assert o.n_both == both and o.n_a == total - 2 * len(base)
    sft_table = fam.to_dict()["sft"]
    assert {"updated_fraction", "per_module", "per_layer", "update_rank_mean", "overlap_with_rl"} <= set(sft_table)


# --------------------------------------------------------------------------------------------
# rank and spectra


def _rank_r_delta(m: int, n: int, r: int, seed: int) -> torch.Tensor:
    """Dense integer delta U V^T (entries >= r > 0, so no zeros) of rank exactly r."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(1, 4, (m, r), generator=g).double()
    v = torch.randint(1, 4, (n, r), generator=g).double()
    d = u @ v.T
    assert np.linalg.matrix_rank(d.numpy()) == r  # precondition, in float64 on exact integers
    return d.float()


def test_planted_update_rank_is_exact(tmp_path):
    base = base_weights()
    rl = {k: v.clone() for k, v in base.items()}
    rl["model.layers.0.self_attn.q_proj.weight"] += _rank_r_delta(8, 8, 3, 0)       # 3/8
    rl["model.layers.0.mlp.up_proj.weight"] += _rank_r_delta(12, 8, 8, 1)           # 8/8
    rl["model.layers.1.mlp.down_proj.weight"][2, 5] += 1.0                         # sparse: 1/8
    rl["model.embed_tokens.weight"] += _rank_r_delta(10, 8, 2, 2)                   # 2/8
    rl["lm_head.weight"] += _rank_r_delta(10, 8, 5, 3)                              # 5/8
    rl["model.norm.weight"] += 1.0                                                  # norm: not ranked
    # model.layers.1.self_attn.q_proj unchanged: rank 0
    b, r = write_checkpoint(tmp_path / "b", base), write_checkpoint(tmp_path / "r", rl)
    expected = {"model.layers.0.self_attn.q_proj.weight": 3 / 8, "model.layers.0.mlp.up_proj.weight": 1.0,
                "model.layers.1.mlp.down_proj.weight": 1 / 8, "model.embed_tokens.weight": 2 / 8,
                "lm_head.weight": 5 / 8, "model.layers.1.self_attn.q_proj.weight": 0.0}
    for method in ("exact", "gram"):
        d = diff_weights(b, r, rank_method=method, spectral=False, progress=False)
        got = {t.name: t.update_rank for t in d.tensors if t.update_rank is not None}
        assert got == expected, method
        assert d.update_rank_mean == sum(expected.values()) / len(expected)
        assert all(t.rank_method == method for t in d.tensors if t.update_rank is not None)
    norms = [t for t in d.tensors if t.kind == "norm"]
    assert norms and all(t.update_rank is None for t in norms)


def test_gram_singular_values_match_svd():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(300, 40, generator=g)
    s_exact, _ = singular_values(m, "exact")
    s_gram, method = singular_values(m, "gram")
    assert method == "gram"
    assert torch.allclose(s_exact, s_gram, rtol=1e-5, atol=1e-5)  # float32 SVD vs float64 Gram
    assert update_rank(m.T.contiguous(), "gram") == (40, "gram")


def test_principal_angles_of_known_subspaces():
    theta = 0.3
    q1 = torch.zeros(5, 2, dtype=torch.float64)
    q1[0, 0] = q1[1, 1] = 1
    q2 = torch.zeros(5, 2, dtype=torch.float64)
    q2[0, 0] = 1
    q2[1, 1], q2[2, 1] = math.cos(theta), math.sin(theta)
    ang = principal_angles_deg(q1, q2)
    assert ang[0] == pytest.approx(0.0, abs=1e-9) and ang[1] == pytest.approx(math.degrees(theta), abs=1e-9)


def test_spectral_shift_of_scaling_and_rotation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 12, generator=g)
    base = top_singular_subspaces(w, 4)
    scaled = compare_spectra("w", base, top_singular_subspaces(2 * w, 4), (20, 12))
    assert scaled.spectral_shift == pytest.approx(1.0, abs=1e-5)  # float32 SVD: relative error ~1e-6
    assert max(scaled.left_angles_deg + scaled.right_angles_deg) < 0.01
    perm = torch.randperm(20, generator=g)
    rotated = compare_spectra("w", base, top_singular_subspaces(w[perm], 4), (20, 12))
    assert rotated.spectral_shift == pytest.approx(0.0, abs=1e-5)
    assert max(rotated.right_angles_deg) < 0.01  # (PW)^T (PW) = W^T W: same right vectors
    assert max(rotated.left_angles_deg) > 1.0   # left vectors are permuted: a different subspace
    assert len(base[1].T) == 4


def test_spectral_view_runs_in_the_diff_with_k_capped(tmp_path):
    base = base_weights()
    b = write_checkpoint(tmp_path / "b", base)
    r = write_checkpoint(tmp_path / "r", {k: 2 * v for k, v in base.items()})
    d = diff_weights(b, r, spectral_k=50, progress=False)
    spec = d.spectral_summary()
    assert spec["mean_spectral_shift"] == pytest.approx(1.0, abs=1e-5)
    assert all(row["k"] == min(row["shape"]) for row in spec["per_matrix"])


# --------------------------------------------------------------------------------------------
# bad input


def test_mismatched_names_and_shapes_raise_a_clear_error(tmp_path):
    base = base_weights()
    rl = {k: v.clone() for k, v in base.items()}
    rl.pop("model.norm.weight")
    rl["model.layers.9.extra.weight"] = torch.ones(3)
    rl["model.layers.0.mlp.up_proj.weight"] = torch.ones(13, 8)
    b, r = write_checkpoint(tmp_path / "b", base), write_checkpoint(tmp_path / "r", rl)
    with pytest.raises(ValueError) as info:
        diff_weights(b, r, **NO_RANK)
    msg = str(info.value)
    assert not isinstance(info.value, KeyError)
    assert "model.norm.weight" in msg and "model.layers.9.extra.weight" in msg
    assert "model.layers.0.mlp.up_proj.weight: (12, 8) vs (13, 8)" in msg


def test_missing_folder_pickle_only_and_offline_hub_id_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        diff_weights(tmp_path / "nope", tmp_path / "nope2", **NO_RANK)
    pk = tmp_path / "pickle"
    pk.mkdir()
    (pk / "pytorch_model.bin").write_bytes(b"not unpickled")
    (pk / "config.json").write_text("{}")
    with pytest.raises(TwinlensError, match="save_pretrained"):
        diff_weights(pk, pk, **NO_RANK)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TwinlensError, match="no \\*.safetensors"):
        diff_weights(empty, empty, **NO_RANK)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE"):
        diff_weights("twinlens-no-such-org/no-such-model", "twinlens-no-such-org/no-such-model", **NO_RANK)


def test_settings_reject_bad_values():
    with pytest.raises(TwinlensError):
        DiffSettings(tolerance=-1)
    with pytest.raises(TwinlensError):
        DiffSettings(compare="float16")
    with pytest.raises(TwinlensError):
        DiffSettings(chunk=12)


# --------------------------------------------------------------------------------------------
# masks and patch


def test_mask_pack_unpack_round_trip_and_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(3, 5, 7, generator=g) < 0.3, "b": torch.rand(1, generator=g) < 2,
             "c": torch.zeros(0, 4, dtype=torch.bool), "d": torch.rand(16, generator=g) < 0.5}
    for m in masks.values():
        packed = pack_mask(m)
        assert packed.dtype == np.uint8 and packed.size == (m.numel() + 7) // 8
        assert torch.equal(unpack_mask(packed, m.shape), m)
    path = save_masks(tmp_path / "m.safetensors", masks, metadata={"tolerance": "atol"})
    back = load_masks(path)
    assert set(back) == set(masks) and all(torch.equal(back[k], masks[k]) for k in masks)


def test_diff_masks_equal_the_planted_update_sets(tmp_path):
    base = base_weights()
    b = write_checkpoint(tmp_path / "b", base)
    r = write_checkpoint(tmp_path / "r", plant(base, SIZES, seed=1))
    d = diff_weights(b, r, keep_masks=True, **NO_RANK)
    path = d.masks.save(tmp_path / "masks.safetensors")
    masks = load_masks(path)
    rl = plant(base, SIZES, seed=1)
    for name, m in masks.items():
        assert torch.equal(m, (rl[name] - base[name]).abs() > 1e-5), name
    assert d.masks.count() == d.overall.atol


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_patch_takes_rl_values_inside_the_mask_only_and_mutates_nothing():
    torch.manual_seed(0)
    base, rl = Tiny(), Tiny()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    before_rl = {k: v.clone() for k, v in rl.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in base.named_parameters() if n != "lin.bias"}
    new = patch(base, rl, mask)
    assert new is not base
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(torch.equal(v, before_rl[k]) for k, v in rl.state_dict().items())
    bp, rp = dict(base.named_parameters()), dict(rl.named_parameters())
    for n, p in new.named_parameters():
        expected = torch.where(mask[n], rp[n], bp[n]) if n in mask else bp[n]
        assert torch.equal(p, expected), n
        assert p.data_ptr() != bp[n].data_ptr()
    assert new.head.weight is new.emb.weight  # tying survives the copy
    with pytest.raises(TwinlensError, match="match no model parameter"):
        patch(base, rl, {"nope.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(TwinlensError, match="shape"):
        patch(base, rl, {"lin.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_hf_pair_diff_masks_and_patch_end_to_end(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = tiny_models["llama"], tiny_models["llama_b"]
    d = diff_weights(a, b, keep_masks=True, progress=False, spectral=False)
    # two random inits: norms are 1.0 in both (unchanged), every attention / MLP weight differs
    assert d.per_module["norm"].exact == 0
    assert all(v.exact == v.n_params for k, v in d.per_module.items() if k.startswith(("attn", "mlp")))
    m_base = AutoModelForCausalLM.from_pretrained(a)
    m_rl = AutoModelForCausalLM.from_pretrained(b)
    masks = d.masks.to_tensors()
    masks = {k: v & (torch.rand(v.shape) < 0.5) for k, v in masks.items()}
    hybrid = patch(m_base, m_rl, masks)
    hp, bp, rp = (dict(m.named_parameters()) for m in (hybrid, m_base, m_rl))
    for name, m in masks.items():
        assert torch.equal(hp[name], torch.where(m, rp[name], bp[name])), name


# --------------------------------------------------------------------------------------------
# the script


def _load_script():
    spec = importlib.util.spec_from_file_location("diff_script", ROOT / "scripts" / "diff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_writes_results_plots_and_summary(tmp_path, capsys):
    base = base_weights()
    b = write_checkpoint(tmp_path / "base", base)
    r0 = write_checkpoint(tmp_path / "rl0", plant(base, SIZES, seed=1))
    r1 = write_checkpoint(tmp_path / "rl1", plant(base, SIZES, seed=2))
    s = write_checkpoint(tmp_path / "sft", plant(base, {k: (v[0] * 3, 0, 0) for k, v in SIZES.items()}, seed=3))
    out = tmp_path / "out"
    script = _load_script()
    rc = script.main(["--base", str(b), "--rl", str(r0), "--rl", str(r1), "--sft", str(s), "--out", str(out),
                      "--json", "--save-masks", "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert json.loads(capsys.readouterr().out) == res
    for key in ("updated_fraction", "per_module", "per_layer", "update_rank_mean", "overlap", "sft", "spectral",
                "consensus"):
        assert key in res, key
    assert set(res["updated_fraction"]) == {"exact", "atol", "bf16"}
    for png in ("updated_fraction_heatmap.png", "updated_fraction.png", "overlap.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "summary.md").read_text().startswith("# Weight diff")
    assert (out / "masks_rl0.safetensors").is_file()


def test_script_reports_bad_input_without_traceback(tmp_path, capsys):
    base = base_weights()
    b = write_checkpoint(tmp_path / "base", base)
    r = write_checkpoint(tmp_path / "rl", {k: v for k, v in base.items() if k != "lm_head.weight"})
    rc = _load_script().main(["--base", str(b), "--rl", str(r), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2
    assert "lm_head.weight" in capsys.readouterr().err
