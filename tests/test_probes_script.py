"""scripts/probe.py and scripts/steer.py end to end on the shipped organism, at toy sizes:
the results contract (results.json keys, plots, summary) and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
organism = pytest.importorskip("organism")
if not {"base", "rl-seed0"} <= set(organism.list_checkpoints()):
    pytest.skip("the organism checkpoints are not built", allow_module_level=True)


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "probe"
    r = _run("probe.py", "--out", str(out), "--n-problems", "40", "--n-samples", "1",
             "--n-bootstrap", "30", "--steer-problems", "3", "--steer-samples", "2", "--alphas", "0,1", "--json")
    return out, r


def test_probe_script_writes_the_results_contract(probe_run):
    out, r = probe_run
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert json.loads(r.stdout) == res
    probed = [s for s, e in res["strategies"].items() if "base" in e]
    assert "compute" in probed  # the organism's most frequent strategy is always there
    e = res["strategies"]["compute"]
    n_layers = len(res["settings"]["layers"])
    for m in ("base", "rl"):
        assert {"best_layer", "auroc", "control_auroc", "accuracy"} <= set(e[m])
        assert len(e[m]["auroc"]) == len(e[m]["accuracy"]) == n_layers
    assert set(e["transfer"]) == {"base->rl", "rl->base"}
    assert len(e["vector_cosine_base_rl"]) == n_layers
    assert {"alpha", "frequency", "random_frequency", "accuracy"} <= set(e["steering"])
    assert 0 <= e["attribution"]["chosen_layer"] < n_layers
    for name in ("probe_layers.png", "preexistence.png", "steering.png", "summary.md", "vectors.safetensors"):
        assert (out / name).stat().st_size > 0
    # The trivial explanations sit beside every probed strategy (issue 15): token baseline with its
    # selectivity, a random-init model of the same architecture, and the decision-point probe.
    acc = res["acceptance"]["compute"]
    assert 0.5 <= acc["token_baseline_auroc"]["value"] <= 1
    lo, hi = acc["selectivity"]["ci"]
    assert lo <= acc["selectivity"]["value"] <= hi
    assert acc["selectivity"]["value"] == pytest.approx(acc["auroc"] - acc["token_baseline_auroc"]["value"], abs=1e-9)
    assert 0 <= acc["random_init_auroc"]["value"] <= 1
    dp = e["decision_point"]
    assert "skipped" in dp or {"auroc", "ci", "token_baseline_auroc", "selectivity"} <= set(dp)
    # Strategies too rare at this size are reported as skipped, not silently dropped.
    assert all("base" in entry or "skipped" in entry for entry in res["strategies"].values())
    # The pilot's plan, said before the main sampling: per strategy, traces needed at its rate.
    plan = res["sample_size"]["compute"]
    assert plan["pilot_traces"] == 16 and plan["traces_planned"] == 80 and plan["enough"]
    assert "sample size: compute:" in r.stderr


def test_steer_uses_probe_vectors_at_their_chosen_layers_on_held_out_problems(probe_run, tmp_path):
    """steer.py --vectors <probe.py output> --layers chosen: the usage its docstring shows (it used
    to fail: "needs the attribution"); the steering prompts exclude the 40 fitted problems, and
    the steered text is saved."""
    from probes.vectors import read_vectors_info

    out, _ = probe_run
    probe_res = json.loads((out / "results.json").read_text())
    info = read_vectors_info(out / "vectors.safetensors")
    assert len(info["fit_problem_ids"]) == 40
    steer = tmp_path / "steer"
    r = _run("steer.py", "--vectors", str(out / "vectors.safetensors"), "--layers", "chosen",
             "--strategies", "compute", "--out", str(steer), "--n-problems", "3", "--n-samples", "1",
             "--alphas", "0,1", "--n-bootstrap", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((steer / "results.json").read_text())
    chosen = probe_res["strategies"]["compute"]["attribution"]["chosen_layer"]
    assert list(res["strategies"]["compute"]["layers"]) == [str(chosen)]
    assert res["settings"]["n_excluded_fit_problems"] == 40
    rows = [json.loads(line) for line in (steer / "examples.jsonl").read_text().splitlines()]
    # 3 prompts x 2 alphas x (vector, random control), each with the text the model wrote
    assert len(rows) == 12 and {r["vector"] for r in rows} == {"diff_of_means", "random"}
    assert all(isinstance(r["text"], str) for r in rows) and any(r["text"] for r in rows)


def test_steer_script_refuses_a_layer_that_does_not_exist(tmp_path):
    r = _run("steer.py", "--out", str(tmp_path / "s"), "--vector-problems", "30", "--layers", "9",
             "--n-problems", "2", "--n-samples", "1")
    assert r.returncode == 2
    assert "Layer(s) [9] do not exist" in r.stderr and "Traceback" not in r.stderr


def test_probe_script_steers_at_the_requested_temperature(tmp_path, monkeypatch):
    """--temperature reaches the steering experiment too (it used to steer at 1.0 whatever was asked)."""
    import scripts.probe as probe_script

    seen = {}

    def fake_steering(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the call")

    monkeypatch.setattr(probe_script, "steering_experiment", fake_steering)
    with pytest.raises(RuntimeError, match="stop after the call"):
        probe_script.run(probe_script.parse_args(
            ["--out", str(tmp_path), "--n-problems", "40", "--n-samples", "1", "--n-bootstrap", "30",
             "--steer-problems", "3", "--steer-samples", "1", "--alphas", "0,1", "--temperature", "0.7"]))
    assert seen["temperature"] == 0.7
