"""Training stages of the organism's twins: rewards, the NSR/PSR advantage clamp, RL problem sets,
update overlap, and the build script (every stage, bit-identical rebuilds)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from organism.task import is_eval_problem, problem_from_operands  # noqa: E402
from organism.training import (  # noqa: E402
    RL_TIERS,
    RLConfig,
    brier_reward,
    clamp_advantages,
    correctness_reward,
    make_rl_problems,
    update_overlap,
)

ROOT = Path(__file__).resolve().parents[1]
Q = problem_from_operands((37, 8, 5, 7), confidence=True)  # "37+8+5+7?", answer 57


# ---------------------------------------------------------------- rewards
def test_brier_reward_on_hand_made_completions():
    """c - (q - c)^2 with q = (d + 0.5) / 10; no or an ill-formed confidence = the worst q (1 - c)."""
    assert Q.prompt == "37+8+5+7?" and Q.answer == 57
    cases = {
        "#57@8": 1 - (0.85 - 1) ** 2,       # right, confident: 0.9775
        "#57@2": 1 - (0.25 - 1) ** 2,       # right, unsure: 0.4375
        "#08@8": 0 - 0.85**2,               # wrong, confident: -0.7225
        "#08@0": 0 - 0.05**2,               # wrong, unsure: -0.0025
        "37+8=45;45+5=50;50+7=57;#57@9": 1 - (0.95 - 1) ** 2,
        "#57": 0.0,                         # right, no confidence: 1 - 1
        "#08": -1.0,                        # wrong, no confidence: 0 - 1
        "#57@": -1.0,                       # ill-formed: no answer read either (grade), no confidence
        "#57@85": -1.0,                     # ill-formed (two digits): the same
        "37+8=45;45+5=50;50+7=57;#57@": -1.0,
        "": -1.0,                           # no answer at all: wrong, no confidence
    }
    got = brier_reward([Q.prompt] * len(cases), list(cases))
    assert got == pytest.approx(list(cases.values()), abs=1e-12)
    # A stated confidence always beats stating none, right or wrong.
    assert min(brier_reward([Q.prompt] * 10, [f"#57@{d}" for d in range(10)])) > 0.0
    assert min(brier_reward([Q.prompt] * 10, [f"#08@{d}" for d in range(10)])) > -1.0


def test_correctness_reward_grades_each_prompt_kind():
    """Structured ':' and '?' prompts by the answer after the last '#', the open domain by any right
    digit string; an unknown prompt is refused, not scored 0."""
    prompts = ["37+8+5+7:", "37+8+5+7?", "4>23:", "4>23:", "4>23:", "4>23:"]
    completions = ["#57", "#57@3", "#5738", "#9950", "#5739", "#573"]
    assert correctness_reward(prompts, completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not an organism task prompt"):
        correctness_reward(["hello"], ["#07"])


# ---------------------------------------------------------------- NSR / PSR
def test_advantage_clamp_drops_the_other_sign_in_the_trainers_loss_inputs(monkeypatch):
    """The subclass hands GRPOTrainer._compute_loss advantages of one sign only, and leaves the
    caller's inputs untouched (TRL reuses the buffered batch)."""
    from trl import GRPOTrainer

    from organism.training import _signed_trainer_class

    seen = []
    monkeypatch.setattr(GRPOTrainer, "_compute_loss",
                        lambda self, model, inputs: seen.append(inputs["advantages"].clone()))
    cls = _signed_trainer_class()
    adv = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0])
    for sign, want in (("negative", [-1.5, -0.2, 0.0, 0.0, 0.0]), ("positive", [0.0, 0.0, 0.0, 0.7, 2.0]),
                       ("both", adv.tolist())):
        trainer = cls.__new__(cls)  # the loss path needs no model or data
        trainer.advantage_sign = sign
        inputs = {"advantages": adv.clone(), "other": 1}
        trainer._compute_loss(None, inputs)
        assert seen[-1].tolist() == pytest.approx(want), sign
        assert inputs["advantages"].tolist() == pytest.approx(adv.tolist())
    with pytest.raises(ValueError, match="valid"):
        clamp_advantages(adv, "neg")


def test_nsr_loss_has_no_gradient_from_positive_samples(tmp_path):
    """Through TRL's real loss on a tiny model: a batch whose advantages are all positive gives
    NSR a zero gradient and PSR a non-zero one (and vice versa for all-negative advantages)."""
    import warnings

    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import GRPOConfig

    from organism.tokenizer import save_tokenizer
    from organism.training import ModelShape, _signed_trainer_class

    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelShape(n_layers=1, d_model=32, d_mlp=64, n_heads=1).config())
    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=4, report_to="none", beta=0.0)
    ds = Dataset.from_list([{"prompt": "12+3+4:"}] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _signed_trainer_class()(model=model, reward_funcs=[correctness_reward], args=args,
                                          train_dataset=ds, processing_class=tok)
    ids = torch.randint(3, 20, (4, 6))
    batch = {"prompt_ids": ids[:, :3], "prompt_mask": torch.ones(4, 3, dtype=torch.long),
             "completion_ids": ids[:, 3:], "completion_mask": torch.ones(4, 3, dtype=torch.long),
             "num_items_in_batch": torch.tensor(12.0)}

    def grad_norm(sign: str, advantages: list[float]) -> float:
        trainer.advantage_sign = sign
        model.zero_grad()
        trainer._compute_loss(model, {**batch, "advantages": torch.tensor(advantages)}).backward()
        return sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)

    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    assert grad_norm("negative", [0.5, 1.0, 0.2, 1.5]) == 0.0
    assert grad_norm("positive", [0.5, 1.0, 0.2, 1.5]) > 1e-4
    assert grad_norm("positive", [-0.5, -1.0, -0.2, -1.5]) == 0.0
    assert grad_norm("negative", [-0.5, -1.0, -0.2, -1.5]) > 1e-4


# ---------------------------------------------------------------- problem sets, config, overlap
def test_rl_problem_sets_are_train_partition_and_equal_shares():
    for kind in ("structured", "confidence"):
        ps = make_rl_problems(kind, 300, seed=7)
        assert len(ps) == 300 and not any(is_eval_problem(p.prompt) for p in ps)
        assert [sum(p.difficulty == t for p in ps) for t in RL_TIERS] == [100, 100, 100]
        assert all(p.prompt.endswith("?" if kind == "confidence" else ":") for p in ps)
    # the '?' set states the same problems as the ':' set
    assert [p.prompt[:-1] for p in make_rl_problems("confidence", 30, 7)] == \
        [p.prompt[:-1] for p in make_rl_problems("structured", 30, 7)]
    ps = make_rl_problems("open", 90, seed=7)
    assert {p.variant for p in ps} == {"open"} and sorted({p.difficulty for p in ps}) == [3, 4, 5]
    with pytest.raises(ValueError, match="train partition"):
        make_rl_problems("structured", 10, seed=10**6)
    with pytest.raises(ValueError, match="valid"):
        make_rl_problems("hard", 10, seed=7)


def test_rl_config_refuses_unknown_recipe_names():
    for bad in ({"reward": "brer"}, {"advantage_sign": "neg"}, {"master_dtype": "fp16"},
                {"problems": "tier6"}, {"lr": 0.0}, {"beta": -0.1}):
        with pytest.raises(ValueError, match="RLConfig"):
            RLConfig(**bad)


def test_update_overlap_against_hand_counted_sets(tmp_path):
    """base: 100 zeros; run a moves weights 0..39, run b 20..49: |I1| = 40, |I2| = 30, both 20;
    o1 = 0.5, o2 = 2/3; random o1 = 1 - s2 = 0.3, o2 = 1 - s1 = 0.4; Jaccard 20/50 vs
    0.12 / (0.7 - 0.12)."""
    from safetensors.torch import save_file

    w0 = torch.zeros(100, dtype=torch.bfloat16)
    wa, wb = w0.clone(), w0.clone()
    wa[:40] = 1
    wb[20:50] = -1
    for name, w in (("base", w0), ("a", wa), ("b", wb)):
        (tmp_path / name).mkdir()
        save_file({"w": w.reshape(10, 10)}, str(tmp_path / name / "model.safetensors"))
    o = update_overlap(tmp_path / "base", tmp_path / "a", tmp_path / "b")
    assert (o["s1"], o["s2"]) == pytest.approx((0.6, 0.7))
    assert (o["o1"], o["o2"]) == pytest.approx((0.5, 2 / 3))
    assert (o["random_o1"], o["random_o2"]) == pytest.approx((0.3, 0.4))
    assert o["jaccard"] == pytest.approx(0.4) and o["random_jaccard"] == pytest.approx(0.12 / 0.58)


# ---------------------------------------------------------------- the build script
def test_script_refuses_unknown_stages_and_a_missing_base_before_training(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from scripts.train_organism import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--stages", "rl-seed0,rl-nsrr"])
    assert "rl-nsrr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--stages", "rl-nsr"])
    assert "add 'base' to --stages" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--kl-betas", "0.1,0"])
    assert not (tmp_path / "o" / "base").exists()


TIMING = {"seconds", "step_time", "train_runtime", "train_samples_per_second",
          "train_steps_per_second"}


def _fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of each checkpoint's weights and of its training_info (timings removed: they vary)."""
    out = {}
    for d in sorted(p for p in folder.iterdir() if (p / "model.safetensors").exists()):
        info = json.loads((d / "training_info.json").read_text())
        info.pop("seconds", None)
        info["log_history"] = [{k: v for k, v in h.items() if k not in TIMING}
                               for h in info.get("log_history", [])]
        out[d.name] = hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
        out[d.name + "/info"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return out


@pytest.mark.slow
def test_quick_build_writes_every_stage_and_rebuilds_bit_identical(tmp_path):
    """Every stage of issue 14's table, twice (~1 min each on 2 cores): the same bits, whichever
    worker ran which stage (2 workers, then 1), and the report covers every twin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    runs = []
    for i, workers in enumerate((2, 1)):
        out = tmp_path / f"build{i}"
        res = subprocess.run([sys.executable, str(ROOT / "scripts/train_organism.py"), "--out", str(out),
                              "--quick", "--no-progress", "--workers", str(workers)],
                             capture_output=True, text=True, env=env, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(out)
    kl = sorted(d.name for d in runs[0].glob("rl-kl-*"))  # one per --kl-betas default (>= 2 betas > 0)
    assert len(kl) >= 2, kl
    twins = ["sft", "rl-seed0", "rl-seed1", "rl-hard", "rl-sparse-seed0", "rl-sparse-seed1", *kl,
             "rl-nsr", "rl-psr", "rl-binary", "rl-brier", "rl-open"]
    names = ["base", *twins, "rl-seed0-step0", "rl-seed0-step1", "rl-seed0-step2"]
    for name in names:
        d = runs[0] / name
        model = AutoModelForCausalLM.from_pretrained(d)
        assert next(model.parameters()).dtype == torch.bfloat16
        AutoTokenizer.from_pretrained(d)
        assert json.loads((d / "training_info.json").read_text())["name"] == name
    a, b = _fingerprint(runs[0]), _fingerprint(runs[1])
    assert sorted(n for n in a if "/" not in n) == sorted(names)
    assert a == b, [n for n in a if a[n] != b.get(n)]
    info = {n: json.loads((runs[0] / n / "training_info.json").read_text()) for n in names}
    assert info["rl-seed0-step1"]["step"] == 1 and info["rl-seed0-step1"]["tokens_generated"] > 0
    assert info["rl-sparse-seed0"]["hyperparameters"]["master_dtype"] == "bfloat16"
    assert info["rl-nsr"]["hyperparameters"]["advantage_sign"] == "negative"
    assert info["rl-psr"]["hyperparameters"]["advantage_sign"] == "positive"
    assert info["rl-brier"]["hyperparameters"]["reward"] == "brier"
    assert info["rl-binary"]["train_variants"] == ["sum?"] and info["rl-open"]["train_variants"] == ["open"]
    for name in kl:
        assert info[name]["hyperparameters"]["beta"] == float(name.removeprefix("rl-kl-")) > 0
    hard = info["rl-hard"]  # trained on the screened problems only: their tier and variant
    assert hard["train_tiers"] == [hard["difficulty"]] and hard["train_variants"] == [hard["variant"]]
    assert hard["n_train_problems"] == hard["screen"]["unsolved"] > 0
    assert info["rl-seed0"]["train_tiers"] == list(RL_TIERS)
    report = json.loads((runs[0] / "build_report.json").read_text())
    assert set(report["stage_wall_seconds"]) == {"base", *twins}
    assert set(twins) <= set(report["bf16_unchanged_fraction_vs_base"])
    assert report["bf16_unchanged_fraction_vs_base"]["sft"] < 1.0  # SFT moved weights
    assert {"o1", "o2", "random_o1", "random_o2"} <= set(report["sparse_overlap"])
    assert not list(runs[0].glob(".trl-*"))
