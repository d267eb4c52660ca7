"""Drift: exact per-token KL and entropy, checked against torch.distributions on tiny random
Llamas (char tokenizer saved to disk, loaded through hooks.load_model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from analyses.drift import measure_drift
from analyses.sampling import SampleRow, sample
from analyses.task import organism_task
from hooks import TwinlensError, load_model


@pytest.fixture(scope="module")
def family(tiny_models):
    return {"base": load_model(tiny_models["llama"]), "rl": load_model(tiny_models["llama_b"])}


@pytest.fixture(scope="module")
def samples(family):
    task = organism_task(difficulty=3)
    return sample(family, task.problems(3, seed=0), 2, task=task, max_new_tokens=8, seed=0,
                  temperature=1.0, top_p=1.0, progress=False)


def test_kl_is_zero_for_identical_models(family, samples):
    r = measure_drift({"base": family["base"], "rl": family["base"]}, samples, n_boot=10)
    # The same log-softmax on both sides: every term p * (log p - log p) is exactly 0.
    assert r.kl_base_rl == 0.0 and r.kl_rl_base == 0.0
    assert r.entropy["base"] == r.entropy["rl"] > 0


def test_kl_and_entropy_match_torch_distributions(family, samples):
    r = measure_drift(family, samples, sampled_by=["rl"], n_boot=10)
    per_problem_bo, per_problem_ob, per_problem_h = {}, {}, {}
    for row in samples.rows:
        if row.model != "rl" or not row.completion_ids:
            continue
        ids = torch.tensor([row.prompt_ids + row.completion_ids])
        p = len(row.prompt_ids)
        sl = slice(p - 1, p - 1 + len(row.completion_ids))
        with torch.no_grad():
            db = Categorical(logits=family["base"].hf(input_ids=ids).logits[0, sl].double())
            dr = Categorical(logits=family["rl"].hf(input_ids=ids).logits[0, sl].double())
        per_problem_bo.setdefault(row.problem_id, []).append(kl_divergence(db, dr).mean().item())
        per_problem_ob.setdefault(row.problem_id, []).append(kl_divergence(dr, db).mean().item())
        per_problem_h.setdefault(row.problem_id, []).append(db.entropy().mean().item())
    mean = lambda d: float(np.mean([np.mean(v) for v in d.values()]))  # noqa: E731
    # Reference in float64, ours from float32 log-softmax: KL of these random models is 0.013 nats;
    # float32 rounding of log-probs (~1e-7 relative) bounds the difference well below 1e-5.
    assert r.kl_base_rl == pytest.approx(mean(per_problem_bo), abs=1e-5)
    assert r.kl_rl_base == pytest.approx(mean(per_problem_ob), abs=1e-5)
    assert r.entropy["base"] == pytest.approx(mean(per_problem_h), abs=1e-5)
    assert r.kl_base_rl > 1e-3  # two different random models really differ
    lo, hi = r.ci["kl_base_rl"]
    assert lo <= r.kl_base_rl <= hi


def test_empty_sample_set_is_refused(family):
    with pytest.raises(TwinlensError, match="No samples"):
        measure_drift(family, [])
    row = SampleRow("base", "p", 0, [1, 2], [], "", {}, True)
    with pytest.raises(TwinlensError, match="empty completion"):
        measure_drift(family, [row])


def _organism_shaped(folder, seed):
    """A random-weight Llama with the organism's own tokenizer (it reads every v2 prompt: '>' '?' '@')."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from organism.tokenizer import EOS_ID, PAD_ID, VOCAB, save_tokenizer

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=160,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def test_drift_job_reports_entropy_change_per_domain_structured_and_open(tmp_path):
    import importlib.util
    import json
    import re
    from pathlib import Path

    from analyses import verdicts

    base, rl = _organism_shaped(tmp_path / "base", 0), _organism_shaped(tmp_path / "twin", 1)
    spec = importlib.util.spec_from_file_location("drift_script", Path(__file__).resolve().parents[1] / "scripts" / "drift.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    assert mod.main(["--base", str(base), "--rl", str(rl), "--difficulty", "2", "--n-problems", "3",
                     "--n-samples", "2", "--open-problems", "3", "--open-difficulty", "3", "--max-new-tokens", "6",
                     "--n-boot", "50", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["domains"] == {"structured": "organism-sum-d2", "open": "organism-open-d3"}
    for domain in ("structured", "open"):
        h = r["entropy_by_domain"][domain]
        ch = r["entropy_change_by_domain"]["twin"][domain]
        # every problem measured for both models: the paired mean change is the difference of means
        assert ch["change"] == pytest.approx(h["twin"] - h["base"], abs=1e-9)
        assert ch["ci"][0] <= ch["change"] <= ch["ci"][1] and ch["n_problems"] == 3
        assert h["base"] > 0.5  # a random 35-way softmax: entropy near log(35) = 3.6, far from 0
    assert r["entropy_by_domain"]["structured"]["twin"] == pytest.approx(r["entropy"]["twin"])
    open_rows = [json.loads(line) for f in (out / "samples-open").glob("*.jsonl") for line in f.open()]
    from organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    assert len(open_rows) == 2 * 3 * 2 and all(
        row["problem_id"].startswith("open-d3-") and re.fullmatch(r"3>\d\d:", tok.decode(row["prompt_ids"]))
        for row in open_rows)
    v = verdicts.verdict_entropy(r)
    assert "structured" in v.number and "open" in v.number  # the rule reads the per-domain numbers
