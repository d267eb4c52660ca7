"""Options every job shares on real text: --chat-template, the same model as base and RL,
route.py's probe strategy, decision-point labels, the sample-size plan, and summaries that do not
speak of the organism on another task."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from hooks import TwinlensError, load_model

ROOT = Path(__file__).resolve().parents[1]
ARITH20 = ROOT / "tests" / "data" / "arith20.jsonl"


def _script(name):
    import importlib

    return importlib.import_module(f"scripts.{name}")


def test_chat_template_wraps_prompts_with_the_tokenizers_own_template(tiny_models, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "chat"
    shutil.copytree(tiny_models["llama"], folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = "{% for m in messages %}u:{{ m['content'] }};{% endfor %}{% if add_generation_prompt %}a:{% endif %}"
    tok.save_pretrained(folder)
    model = load_model(folder)
    assert model.encode_prompt("1+2") == model.encode("1+2")  # off by default
    ids = model.use_chat_template().encode_prompt("1+2")
    assert ids == model.encode("u:1+2;a:")


def test_chat_template_is_refused_for_a_tokenizer_without_one_before_any_sampling(tmp_path):
    import organism

    model = load_model(organism.checkpoint_path("base"))
    with pytest.raises(TwinlensError, match="no chat template.*drop --chat-template"):
        model.use_chat_template()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "passk.py"), "--out", str(tmp_path / "p"),
                        "--chat-template", "--n-problems", "2", "--n-samples", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no chat template" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p" / "results.json").exists()


def test_the_same_model_can_be_base_and_rl_a_sanity_run():
    import organism
    from scripts import _cli as cli

    base = str(organism.checkpoint_path("base"))
    args = argparse.Namespace(problems=None, difficulty=5, base=base, rl=[base], device="cpu", n_problems=2,
                              problem_set=0, chat_template=False)
    task, family, problems = cli.load_base_and_rl(args)  # used to fail: "Two models share a label"
    assert list(family) == ["base", "base (rl 1)"]
    assert family["base"].weight_hash == family["base (rl 1)"].weight_hash and len(problems) == 2


def _route_args(*argv):
    route = _script("route")
    return route, route.parse_args(["--out", "x", *argv])


def test_route_strategy_defaults_per_task_and_is_refused_where_no_token_labels_exist():
    from analyses.task import load_task

    route, args = _route_args()
    assert route.probe_strategy(load_task(None), args) == ("compute", None)
    route, args = _route_args("--problems", str(ARITH20))
    strategy, why = route.probe_strategy(load_task(str(ARITH20)), args)
    assert strategy is None and "no token-level strategy labels" in why  # not the organism's compute
    route, args = _route_args("--problems", str(ARITH20), "--strategy", "compute")
    with pytest.raises(TwinlensError, match="need token-level.*--no-probe"):
        route.probe_strategy(load_task(str(ARITH20)), args)
    route, args = _route_args("--strategy", "thinking")
    with pytest.raises(TwinlensError, match="choose one of"):
        route.probe_strategy(load_task(None), args)


def test_decision_labels_mark_every_line_and_sentence_start():
    from probes.labels import RegexLabeler

    lab = RegexLabeler.from_json("decision")
    text = "Tom has 3 apples. He buys 5 more.\nSo 3 + 5 = 8.\n#### 8\nThe answer is: 8"
    spans = lab.char_spans(text)
    starts = [(s, text[a:b]) for s, a, b in spans]
    assert starts == [("line_start", "Tom"), ("sentence_start", "He"), ("line_start", "So"),
                      ("line_start", "####"), ("line_start", "The")]


def test_sample_size_plan_gives_the_traces_a_strategy_needs_at_its_pilot_rate():
    from probes.labels import ExampleLabels, TokenSpan
    from probes.traces import Trace, plan_sample_size

    def trace(n_spans):
        spans = tuple(TokenSpan("wait", 2 + 2 * i, 3 + 2 * i) for i in range(n_spans))
        return Trace(0, "base", ExampleLabels(tuple(range(12)), spans, 1, 12, source="t"))

    pilot = [trace(1), trace(0), trace(0), trace(1)]  # 0.5 segments per trace
    plan = plan_sample_size(pilot, ["wait", "never"], traces_planned=60, min_segments=10, test_fraction=0.25)
    # 10 segments on the 25% side at 0.5 per trace: 10 / (0.5 * 0.25) = 80 traces
    assert plan["wait"].traces_needed == 80 and not plan["wait"].enough
    assert "TOO FEW" in plan["wait"].message()
    assert plan["never"].traces_needed is None and "--labels decision" in plan["never"].message()
    assert plan_sample_size(pilot, ["wait"], 80, 10, 0.75)["wait"].enough  # the smaller side counts
    assert plan_sample_size(pilot, ["wait"], 20, 5, None)["wait"].traces_needed == 10  # no split (steer's vectors)


def test_mi_peaks_summary_names_the_task_not_the_organism_on_a_real_task():
    mi = _script("mi_peaks")
    results = {"config": {"n_problems": 2, "method": "hsic", "sigma": 50, "layer": 3, "seed": 0,
                          "texts": ["reference"], "task": "arith20", "gold_text": "the 'gold' field"},
               "models": {lab: {"path": f"/m/{lab}", "texts": {"reference": {"error": "too short"}}}
                          for lab in ("base", "rl")},
               "paired": {}, "interventions": {}, "checkpoints": [], "sigma_grid": {}, "wall_seconds": 1.0}
    text = mi.summary_markdown(results)
    assert "wait;" not in text and "chk" not in text
    assert "`arith20`" in text and "/m/base" in text
