"""The model card's numbers (analyses.organism_card, scripts/evaluate.py --card, scripts/model_card.py):
each piece against a hand computation on planted data, the whole card end to end on tiny organism-shaped
models with a planted generator, and the README filled from the card JSON only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from analyses.organism_card import (  # noqa: E402
    MARK_BEGIN,
    MARK_END,
    CardSettings,
    card_claims,
    card_markdown,
    confidence_block,
    fill_model_card,
    measure_card,
    passk_block,
    weight_overlap,
)
from analyses.reporting import to_jsonable  # noqa: E402
from hooks.errors import TwinlensError  # noqa: E402
from organism.task import (  # noqa: E402
    eval_problems,
    parse_prompt,
    problem_from_operands,
    write_completion,
)

ROOT = Path(__file__).resolve().parents[1]


def _tiny_organism(folder: Path, seed: int) -> Path:
    """An organism-shaped model (organism tokenizer, head_dim 32) small enough to build in ms."""
    from transformers import LlamaForCausalLM

    from organism.training import ModelShape, save_checkpoint

    torch.manual_seed(seed)
    model = LlamaForCausalLM(ModelShape(n_layers=1, d_model=32, d_mlp=32, n_heads=1).config())
    return save_checkpoint(model, folder, {"stage": "test", "hyperparameters": {"lr": 1e-3, "seed": seed}})


def test_passk_block_equals_the_unbiased_estimator_and_the_guesser_curve():
    probs = [problem_from_operands(ops) for ops in ((1, 2), (30, 4), (99, 9))]
    right = [write_completion(p, "direct") for p in probs]
    wrong = [write_completion(p, "direct", direct_answer=(p.answer + 1) % 100) for p in probs]
    # problem 0: 4/4 right, problem 1: 1/4, problem 2: 0/4
    comps = [right[0]] * 4 + [right[1], wrong[1], wrong[1], wrong[1]] + [wrong[2]] * 4
    b = passk_block(probs, comps, 4, [1, 2, 4], n_boot=200, seed=0)
    # pass@1 = mean c/n; pass@2 for c=1, n=4: 1 - C(3,2)/C(4,2) = 0.5; pass@4 = 1 if c > 0
    assert b["mean"] == pytest.approx([(1 + 0.25 + 0) / 3, (1 + 0.5 + 0) / 3, (1 + 1 + 0) / 3])
    assert b["guesser"] == pytest.approx([0.01, 1 - 0.99**2, 1 - 0.99**4])
    assert b["unsolved_share"] == pytest.approx(1 / 3)
    assert b["above_guesser"] == pytest.approx(min(lo - g for lo, g in zip(b["ci_low"], b["guesser"], strict=True)))
    assert b["above_guesser_demo"] == b["above_guesser"]  # every k here is <= 16
    with pytest.raises(TwinlensError, match="12 completions for 3 problems x 3"):
        passk_block(probs, comps, 3, [1])


def test_confidence_block_scores_the_stated_confidence_only_where_stated():
    probs = [problem_from_operands((10, 2, 3), confidence=True)] * 4
    ok, bad = write_completion(probs[0], "direct"), write_completion(probs[0], "direct", direct_answer=1)
    comps = [ok + "@9", bad + "@9", bad + "@1", ok]  # the last states none
    c = confidence_block(probs, comps, n_boot=50)
    assert c["stated"].k == 3 and c["stated"].n == 4
    assert c["accuracy_all"].value == pytest.approx(0.5)
    # stated q: 0.95 (right), 0.95 (wrong), 0.15 (wrong). ECE: bin 0.9-1.0 |0.5 - 0.95| x 2/3, bin 0.1-0.2 0.15 x 1/3
    assert c["ece"] == pytest.approx(0.45 * 2 / 3 + 0.15 / 3)
    assert c["brier"] == pytest.approx((0.05**2 + 0.95**2 + 0.15**2) / 3)
    assert c["auroc"] == pytest.approx(0.75)  # the right one ties one wrong at 0.95, beats the other
    with pytest.raises(TwinlensError, match="one each"):
        confidence_block(probs, comps[:3])


def test_weight_overlap_counts_planted_changed_sets_against_the_random_baseline(tmp_path):
    from safetensors.torch import save_file

    base = torch.zeros(100, dtype=torch.bfloat16)
    a, b = base.clone(), base.clone()
    a[:40] = 1  # 40 changed
    b[20:60] = 1  # 40 changed, 20 shared with a
    for name, t in (("base", base), ("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
    o = weight_overlap(tmp_path / "base", tmp_path / "a", tmp_path / "b", ("a", "b"))
    assert (o["n_params"], o["n_a"], o["n_b"], o["n_both"]) == (100, 40, 40, 20)
    assert o["o1"] == pytest.approx(0.5) and o["random_o1"] == pytest.approx(0.4)
    assert o["jaccard"] == pytest.approx(20 / 60) and o["random_jaccard"] == pytest.approx(0.16 / 0.64)


def _planted_generate(accuracy: dict[str, float]):
    """A generator whose completions are right for a planted share of problems per model: the
    problem's index in its call (i % 10 < 10 x share) decides, so shares are exact on 10 problems."""

    def gen(name, model, prompts, max_new_tokens, temperature, top_p, n, seed):
        out = []
        for i, prompt in enumerate(prompts):
            p = parse_prompt(prompt)
            right = (i % 10) < round(10 * accuracy[name])
            for _ in range(n):
                if p.variant == "open":
                    digits = [9] * (p.answer // 9) + ([p.answer % 9] if p.answer % 9 else [])
                    digits = (digits + [0] * p.difficulty)[: p.difficulty]
                    out.append("#" + "".join(map(str, digits)) if right else "#" + "1" * (p.difficulty + 1))
                    continue
                text = write_completion(p, "step" if right else "direct",
                                        direct_answer=None if right else (p.answer + 1) % 100)
                out.append(text + ("@7" if p.confidence else ""))
        return out

    return gen


def test_measure_card_end_to_end_on_planted_twins(tmp_path):
    paths = {name: _tiny_organism(tmp_path / name, seed)
             for seed, name in enumerate(["base", "rl-sparse-seed0", "rl-sparse-seed1", "rl-binary"])}
    st = CardSettings(n_problems=10, passk_problems=None, passk_samples=4, passk_tiers=(3, 4), twin_tier=4, passk_twin_tier=4, n_boot=50,
                      passk_twins=("rl-binary",), engine="hf")
    acc = {"base": 0.3, "rl-sparse-seed0": 0.8, "rl-sparse-seed1": 0.6, "rl-binary": 1.0}
    card = measure_card(paths, st, generate_texts=_planted_generate(acc), progress=False)
    card = json.loads(json.dumps(to_jsonable(card)))  # what results.json holds
    for name, a in acc.items():
        assert card["twins"][name]["sampled"]["accuracy"]["value"] == pytest.approx(a)
        assert card["twins"][name]["greedy"]["accuracy"]["n"] == 10
    assert card["twins"]["rl-binary"]["sampled"]["formats"]["step"]["value"] == pytest.approx(1.0)
    # base per tier: every sample of a problem is right or wrong together -> pass@k = pass@1 = 0.3
    for t in ("3", "4"):
        assert card["tiers"][t]["pass_at_k"]["mean"] == pytest.approx([0.3, 0.3, 0.3])
        assert card["tiers"][t]["pass_at_k"]["guesser"] == pytest.approx([1 - 0.99**k for k in (1, 2, 4)])
    assert list(card["passk_twins"]) == ["base", "rl-binary"]
    assert card["passk_twins"]["rl-binary"]["mean"] == pytest.approx([1.0, 1.0, 1.0])
    # random independent inits: almost no bf16 weight equal; the changed sets overlap as random ones do
    assert 0 <= card["twins"]["rl-sparse-seed0"]["unchanged_fraction"] < 0.1
    assert card["sparse_overlap"]["n_params"] == sum(
        t.numel() for t in __import__("safetensors.torch").torch.load_file(
            str(paths["base"] / "model.safetensors")).values())
    d = card["twins"]["rl-binary"]["drift"]["structured"]
    assert d["kl_base_rl"] > 0 and d["kl_base_rl_ci"][0] <= d["kl_base_rl"] <= d["kl_base_rl_ci"][1]
    assert d["entropy_change"] == pytest.approx(d["entropy_own"] - d["entropy_base"], abs=1e-9)
    assert card["calibration"]["base"]["stated"]["value"] == pytest.approx(1.0)
    assert card["calibration"]["rl-binary"]["accuracy"] == pytest.approx(1.0)
    assert card["engine"]["used"] == ["caller"]
    assert card["facts"]["checkpoints"]["base"]["hyperparameters"] == {"lr": 1e-3, "seed": 0}
    md = card_markdown(card)
    assert "| `rl-sparse-seed0` | 0.800 [" in md or "| `rl-sparse-seed0` |" in md
    claims = {(c["claim"][:14], tuple(c["checkpoints"])): c for c in card["claims"]}
    sparse = claims[("s.2 sparse upd", ("rl-sparse-seed0",))]
    assert sparse["holds"] is False and "unchanged 0.0" in sparse["measured"]


def test_a_rerun_reuses_every_unchanged_stage_and_redoes_a_changed_twin(tmp_path):
    paths = {name: _tiny_organism(tmp_path / name, seed) for seed, name in enumerate(["base", "rl-seed0", "rl-psr"])}
    st = CardSettings(n_problems=10, passk_problems=None, passk_samples=2, passk_tiers=(4,), n_boot=20,
                      passk_twins=("rl-psr",), engine="hf")
    acc = {"base": 0.3, "rl-seed0": 0.7, "rl-psr": 0.9}
    calls: list[str] = []
    gen = _planted_generate(acc)

    def counting(name, *a):
        calls.append(name)
        return gen(name, *a)

    first = measure_card(paths, st, generate_texts=counting, progress=False, cache=tmp_path / "stages")
    assert first["engine"]["reused_stages"] == [] and calls
    calls.clear()
    again = measure_card(paths, st, generate_texts=counting, progress=False, cache=tmp_path / "stages")
    assert calls == [] and len(again["engine"]["reused_stages"]) == 4  # tier 4, base, two twins
    strip = ("seconds", "engine", "claims")
    assert json.dumps(to_jsonable({k: v for k, v in again.items() if k not in strip})) == json.dumps(
        to_jsonable({k: v for k, v in first.items() if k not in strip}))
    _tiny_organism(tmp_path / "rl-seed0", 7)  # new weights under the same name: that twin only is redone
    calls.clear()
    third = measure_card(paths, st, generate_texts=counting, progress=False, cache=tmp_path / "stages")
    assert set(calls) == {"rl-seed0"} and "twin rl-seed0" not in third["engine"]["reused_stages"]
    assert third["twins"]["rl-seed0"]["unchanged_fraction"] != first["twins"]["rl-seed0"]["unchanged_fraction"]


def _card_with(unchanged: float, gain: float) -> dict:
    def stats(acc):
        rate = {"k": 0, "n": 500, "value": acc, "low": acc - 0.04, "high": acc + 0.04}
        return {"accuracy": rate, "formats": {}, "strategies": {}, "mean_length": 10.0}

    return {"tiers": {}, "twins": {
        "base": {"greedy": stats(0.3), "sampled": stats(0.3)},
        "rl-sparse-seed0": {"greedy": stats(0.3 + gain), "sampled": stats(0.3), "unchanged_fraction": unchanged}}}


@pytest.mark.parametrize("unchanged, gain, holds", [(0.8, 0.15, True), (0.6, 0.15, False), (0.8, 0.05, False)])
def test_sparse_claim_needs_both_the_unchanged_share_and_the_accuracy_gain(unchanged, gain, holds):
    rows = [c for c in card_claims(_card_with(unchanged, gain)) if c["checkpoints"] == ["rl-sparse-seed0"]]
    assert [r["holds"] for r in rows] == [holds]
    missing = [c for c in card_claims(_card_with(0.8, 0.2)) if c["checkpoints"] == ["rl-sparse-seed1"]]
    assert [r["holds"] for r in missing] == [None]  # untested, not false


@pytest.mark.parametrize("direct, length, holds", [(0.9, 4.0, True), (0.35, 4.0, False), (0.9, 30.0, False)])
def test_shortcut_claim_needs_more_direct_answers_and_shorter_responses(direct, length, holds):
    def sampled(share, mean_length):
        rate = {"k": 0, "n": 500, "value": share, "low": share - 0.04, "high": share + 0.04}
        return {"formats": {"direct": rate}, "mean_length": mean_length, "accuracy": rate}

    card = {"tiers": {}, "twins": {"base": {"sampled": sampled(0.3, 20.0), "greedy": sampled(0.3, 20.0)},
                                   "rl-hard": {"sampled": sampled(direct, length)}}}
    rows = [c for c in card_claims(card) if c["checkpoints"] == ["rl-hard"]]
    assert [r["holds"] for r in rows] == [holds]


@pytest.mark.parametrize("ece_binary, ece_brier, rows", [
    (0.30, 0.05, {"rl-binary": (True, True), "rl-brier": (False, True), "pair": (True, True)}),
    (0.08, 0.005, {"rl-binary": (False, False), "rl-brier": (False, True), "pair": (True, True)}),
    (0.30, 0.30, {"rl-binary": (True, True), "rl-brier": (True, False), "pair": (False, False)})])
def test_calibration_claims_and_whether_each_came_out_as_planted(ece_binary, ece_brier, rows):
    from analyses.organism_card import as_planted

    def cal(ece):
        return {"stated": {"value": 1.0, "low": 0.99, "high": 1.0}, "ece": ece, "brier": ece,
                "ci": {"ece": [ece - 0.02, ece + 0.02]}}

    card = {"tiers": {}, "twins": {}, "calibration": {"base": cal(0.2), "rl-binary": cal(ece_binary),
                                                       "rl-brier": cal(ece_brier)}}
    got = {}
    for c in (c for c in card_claims(card) if c["claim"].startswith("s.7")):
        key = "pair" if len(c["checkpoints"]) == 2 else c["checkpoints"][0]
        got[key] = (c["holds"], as_planted(c))
    assert got == rows


def test_fill_model_card_replaces_only_the_generated_block():
    card = _card_with(0.8, 0.15)
    card.update(settings={"eval_set": 0, "seed": 0, "n_boot": 10, "n_problems": 500, "twin_tier": 4, "ks": [1]},
                engine={"used": ["hf"]}, seconds={"total": 1.0})
    for twin in card["twins"].values():
        for mode in ("greedy", "sampled"):
            twin[mode]["formats"] = {f: {"value": 0.25, "low": 0, "high": 1} for f in ("direct", "step", "verify", "other")}
            twin[mode]["strategies"] = {s: {"value": 0.1, "low": 0, "high": 1}
                                        for s in ("compute", "verification", "backtracking")}
        twin["open_accuracy"] = {"value": 0.5, "low": 0.4, "high": 0.6}
        twin["open_distinct"] = 0.9
    readme = f"# card\nhand-written text\n{MARK_BEGIN}\nold numbers\n{MARK_END}\ntail\n"
    new = fill_model_card(readme, card)
    assert new.startswith("# card\nhand-written text\n" + MARK_BEGIN) and new.endswith(MARK_END + "\ntail\n")
    assert "old numbers" not in new and "| `rl-sparse-seed0` |" in new
    assert fill_model_card(new, card) == new  # idempotent: --check passes right after a fill
    with pytest.raises(TwinlensError, match="no generated block"):
        fill_model_card("# card without markers\n", card)


def test_the_shipped_readme_has_the_generated_block():
    text = (ROOT / "organism" / "checkpoints" / "README.md").read_text()
    assert text.count(MARK_BEGIN) == 1 and text.count(MARK_END) == 1
    assert text.index(MARK_BEGIN) < text.index(MARK_END)


def test_model_card_script_fills_checks_and_refuses_a_non_card(tmp_path, capsys):
    from scripts import model_card

    card = _card_with(0.8, 0.15)
    card.update(card_version=1, settings={"eval_set": 0, "seed": 0, "n_boot": 10, "n_problems": 500,
                                          "twin_tier": 4, "ks": [1]},
                engine={"used": ["hf"]}, seconds={"total": 1.0}, twins={})
    (tmp_path / "card.json").write_text(json.dumps(card))
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{MARK_BEGIN}\n{MARK_END}\n")

    def run(*extra):
        return model_card.main(["--card", str(tmp_path / "card.json"), "--readme", str(readme), *extra])

    assert run("--check") == 1  # stale
    card["claims"] = [{"claim": "stale", "checkpoints": [], "planted": "true", "measured": "", "holds": True}]
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert run() == 0 and "Measured by" in readme.read_text()
    assert run("--check") == 0
    # the claim rows beside the README are the rules' own on these numbers, not a stored list
    assert json.loads((tmp_path / "claims.json").read_text()) == json.loads(json.dumps(card_claims(card)))
    (tmp_path / "card.json").write_text(json.dumps({"not": "a card"}))
    capsys.readouterr()
    assert run() == 2 and "not a card JSON" in capsys.readouterr().err


def test_evaluate_card_refuses_bad_checkpoint_sets_before_loading(tmp_path, monkeypatch, capsys):
    import organism
    from scripts import evaluate

    _tiny_organism(tmp_path / "base", 0)
    other = _tiny_organism(tmp_path / "other", 1)
    monkeypatch.setattr(organism, "CHECKPOINT_DIR", tmp_path)
    out = ["--card", "--out", str(tmp_path / "o")]
    for argv, message in (([*out, "--checkpoints", str(other)], "include 'base'"),
                          ([*out, "--checkpoints", "base", "--passk-twins", "rl-nsr"], "--passk-twins ['rl-nsr']"),
                          ([*out, "--tiers", "8"], "2..7")):
        with pytest.raises(SystemExit) as exc:
            evaluate.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    args = evaluate.parse_args(out)  # default set: every shipped name but -step*, base included
    assert args.checkpoints == ["base", "other"] and args._card.engine == "auto" and args._card.passk_twins == ()
    assert not (tmp_path / "o").exists()


def test_card_settings_refuse_bad_values():
    with pytest.raises(TwinlensError, match="engine"):
        CardSettings(engine="gpu")
    with pytest.raises(TwinlensError, match="passk_samples"):
        CardSettings(passk_samples=0)
    with pytest.raises(TwinlensError, match="tiers"):
        CardSettings(passk_tiers=(8,))
    assert not math.isnan(np.float64(CardSettings().n_passk))
    assert eval_problems(3, 0, 4) == eval_problems(5, 0, 4)[:3]  # the card's problem sets nest


@pytest.mark.parametrize("entropy, passk, holds", [(0.02, False, False), (0.9, False, None), (0.9, True, True),
                                                   (0.02, True, False)])
def test_nsr_claim_fails_on_collapsed_entropy_even_without_a_pass_at_k_curve(entropy, passk, holds):
    rate = {"k": 0, "n": 500, "value": 0.3, "low": 0.26, "high": 0.34}
    drift = {"entropy_own": entropy, "entropy_own_ci": [entropy - 0.01, entropy + 0.01], "entropy_base": 1.0}
    card = {"tiers": {}, "twins": {"base": {"sampled": {"accuracy": rate}, "greedy": {"accuracy": rate}},
                                   "rl-nsr": {"drift": {"structured": drift}}}}
    if passk:
        curve = {"k": [1, 256], "mean": [0.5, 0.9], "ci_low": [0.4, 0.8], "ci_high": [0.6, 1.0], "guesser": [0.01, 0.9]}
        card["passk_twins"] = {"base": curve, "rl-nsr": curve}
    rows = [c for c in card_claims(card) if c["checkpoints"] == ["rl-nsr"]]
    assert [r["holds"] for r in rows] == [holds]
