"""Positive and negative controls of the verdict table: the planted-case table covers every row,
the report marks a row's control passed / FAILED / untested from planted folders, and the runner
runs a row's job on planted checkpoints end to end (the sparsity row, on tiny planted twins)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from report import collect_verdicts  # noqa: E402

from analyses import controls as C  # noqa: E402
from analyses import verdicts as V  # noqa: E402

_real_card_claims = C.card_claims  # before the autouse fixture patches it

EVERY_TWIN = ["base", "sft", "rl-seed0", "rl-seed0-step0", "rl-seed1", "rl-hard", "rl-sparse-seed0",
              "rl-sparse-seed1", "rl-kl-0.05", "rl-kl-0.3", "rl-nsr", "rl-psr", "rl-binary", "rl-brier", "rl-open"]


# ------------------------------------------------------------------ the table

@pytest.fixture(autouse=True)
def _no_model_card_claims(monkeypatch):
    """Hand-made planted folders here are judged on their own: the shipped model card's claim rows
    (which mark some shipped twins as not planted) would otherwise turn them untested."""
    from analyses import controls

    monkeypatch.setattr(controls, "card_claims", lambda folder=None: [])


def test_every_verdict_row_has_its_planted_cases_or_says_why_not():
    C.check_controls_cover_rows()
    assert list(C.CONTROLS) == list(V.ROW_JOBS) and len(C.CONTROLS) == len(V.collect({})) == 13
    for row, c in C.CONTROLS.items():
        assert c.job == V.ROW_JOBS[row]
        for side in C.SIDES:
            planted = c.side(side)
            if planted is None:  # no honest planted case: the reason is stated, not left blank
                assert len(c.untested) > 40, row
            else:
                assert len(planted.why) > 30, (row, side)
    # the claims issue 14's twins plant: these rows run on both sides
    both = {r for r, c in C.CONTROLS.items() if c.true and c.false}
    assert both == {"diff", "mechanism", "formats", "calibrate", "entropy"}
    assert C.CONTROLS["passk"].false is not None  # rl-psr: the crossover planted, a win at large k is not


def test_every_planted_command_names_only_shipped_twins_and_resolves_placeholders():
    steps = {"rl-seed0": 50, "rl-kl-0.3": 40}
    for row, c in C.CONTROLS.items():
        for side in C.SIDES:
            args = C.planted_args(c, side, EVERY_TWIN, step_of=steps.get)
            if c.side(side) is None:
                assert args == c.untested
                continue
            assert isinstance(args, list) and not any("*" in a or "{" in a for a in args), (row, side, args)
            for opt, value in zip(args, args[1:], strict=False):
                if opt in ("--base", "--rl", "--sft", "--checkpoint"):
                    assert value in EVERY_TWIN, (row, side, value)
    formats_false = C.planted_args(C.CONTROLS["formats"], "false", EVERY_TWIN, step_of=steps.get)
    assert formats_false[:8] == ["--checkpoint", "base", "--step", "0", "--checkpoint", "rl-kl-0.3", "--step", "40"]


def test_the_kl_twin_is_the_largest_beta_and_a_missing_twin_makes_the_side_untested():
    assert C.kl_twin(["rl-kl-0.3", "rl-kl-0.05", "rl-kl-1e-2", "rl-seed0"]) == "rl-kl-0.3"
    assert C.kl_twin(["rl-seed0"]) is None
    why = C.planted_args(C.CONTROLS["mechanism"], "true", ["base", "rl-psr"])
    assert why == "checkpoint rl-nsr is not shipped"
    why = C.planted_args(C.CONTROLS["formats"], "false", ["base", "rl-seed0"], step_of=lambda n: 1)
    assert why == "checkpoint rl-kl-* is not shipped"


# ------------------------------------------------------------------ the report reads planted folders
def _diff(updated: float, o1: float | None = None, random_o1: float | None = None) -> dict:
    r = {"updated_fraction": {"atol": updated}, "update_rank_mean": 0.99}
    if o1 is not None:
        r["overlap"] = [{"o1": o1, "random_o1": random_o1}]
    return r


def _entropy(base_ci, rl_ci) -> dict:
    return {"entropy": {"base": sum(base_ci) / 2, "rl-seed0": sum(rl_ci) / 2},
            "entropy_ci": {"base": base_ci, "rl-seed0": rl_ci}}


def _write(folder: Path, results: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))


def test_report_marks_each_rows_positive_control_passed_failed_or_untested(tmp_path):
    demo, ctl = tmp_path / "demo", tmp_path / "demo" / "controls"
    _write(demo / "diff", _diff(0.97, 0.975, 0.97))  # this pair: dense
    _write(demo / "drift", {**_entropy([1.2, 1.3], [0.5, 0.6]),
                            "kl_base_rl": {"step0": {"on_base_samples": 0.0}, "rl-seed0": {"on_base_samples": 0.4}},
                            "ci": {"step0": {"on_base_samples": {"kl_base_rl": [0.0, 0.01]}},
                                   "rl-seed0": {"on_base_samples": {"kl_base_rl": [0.3, 0.5]}}}})
    # diff: sparse where planted true, dense where planted false -> passed, and "not supported" stands
    _write(ctl / "positive" / "diff", _diff(0.21, 0.62, 0.21))
    _write(ctl / "negative" / "diff", _diff(0.96, 0.97, 0.96))
    # entropy: its own folder (not the drift row's): entropy does not fall where planted true -> FAILED
    _write(ctl / "positive" / "entropy", _entropy([1.2, 1.3], [1.15, 1.35]))
    _write(ctl / "negative" / "entropy", _entropy([1.2, 1.3], [1.2, 1.3]))
    (ctl / C.RECORD).write_text(json.dumps({"rows": {
        "diff": {"true": {"status": "ran", "folder": "positive/diff"},
                 "false": {"status": "ran", "folder": "negative/diff"}},
        "entropy": {"true": {"status": "ran", "folder": "positive/entropy"},
                    "false": {"status": "ran", "folder": "negative/entropy"}},
        "mechanism": {"true": {"status": "failed", "why": "exit 1: out of memory"}},
        # a row with no planted-true case stays untested for its own reason, whatever a record lists
        "passk": {"true": {"status": "ran", "folder": "positive/diff"}},
        "calibrate": {"true": {"status": "untested", "why": "checkpoint rl-binary is not shipped"}},
    }}))
    rows = {v.row: v for v in collect_verdicts(demo)}
    assert rows["diff"].outcome == V.NOT_SUPPORTED
    assert rows["diff"].positive_control.startswith("passed: detector says supported where planted true")
    assert "planted false: not supported" in rows["diff"].positive_control
    assert rows["entropy"].outcome == V.DETECTOR_FAILED  # its "supported" here means nothing
    assert rows["entropy"].positive_control.startswith("FAILED")
    assert rows["drift"].outcome == V.SUPPORTED and rows["drift"].positive_control.startswith("untested")
    assert rows["mechanism"].positive_control == "untested: the planted-true run failed (exit 1: out of memory)"
    assert rows["passk"].positive_control.startswith("untested: " + C.CONTROLS["passk"].untested)
    assert rows["calibrate"].positive_control == "untested: checkpoint rl-binary is not shipped"
    assert rows["route"].positive_control == "untested: " + C.CONTROLS["route"].untested
    # a detector that fires where the claim is planted false fails too
    _write(ctl / "negative" / "diff", _diff(0.2, 0.6, 0.2))
    rows = {v.row: v for v in collect_verdicts(demo)}
    assert rows["diff"].outcome == V.DETECTOR_FAILED and "planted false" in rows["diff"].positive_control


def test_a_planted_false_run_alone_fails_a_detector_that_fires_on_it_and_is_otherwise_untested():
    here, fires = _diff(0.97, 0.975, 0.97), _diff(0.2, 0.6, 0.2)
    v = V.with_positive_control(V.verdict_sparsity, here, None, fires)
    assert v.outcome == V.NOT_SUPPORTED  # with_positive_control needs a planted-true run ...
    rows = {r.row: r for r in V.collect({"diff": here}, negatives={"diff": fires}, untested_why={"diff": "no twin"})}
    assert rows["diff"].outcome == V.DETECTOR_FAILED and "no planted-true case: no twin" in rows["diff"].positive_control
    rows = {r.row: r for r in V.collect({"diff": here}, negatives={"diff": here}, untested_why={"diff": "no twin"})}
    assert rows["diff"].outcome == V.NOT_SUPPORTED
    assert rows["diff"].positive_control == "untested: no twin (planted false: not supported)"


def test_planted_false_undetermined_does_not_fail_a_detector_that_fired_where_planted_true():
    pos, neg = _diff(0.2, 0.6, 0.2), _diff(0.0)  # identical checkpoints: undetermined
    v = V.with_positive_control(V.verdict_sparsity, _diff(0.97, 0.975, 0.97), pos, neg)
    assert v.outcome == V.NOT_SUPPORTED and v.positive_control.startswith("passed")
    assert "planted false: undetermined" in v.positive_control
    # a planted run without the numbers the rule reads tested nothing: untested, not FAILED
    v = V.with_positive_control(V.verdict_sparsity, _diff(0.97, 0.975, 0.97), {"unrelated": 1}, neg)
    assert v.outcome == V.NOT_SUPPORTED and v.positive_control.startswith("untested: the planted-true run has none")


# ------------------------------------------------------------------ the runner, end to end
def _twin(base: Path, folder: Path, frac: float, seed: int, info: dict) -> None:
    """A copy of ``base`` with a fraction ``frac`` of every matrix's entries moved (mask drawn
    from ``seed``): the planted update regime."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(base, folder)
    sd = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for k, w in sd.items():
        if w.ndim == 2:
            mask = torch.rand(w.shape, generator=g) < frac
            sd[k] = w + mask * (0.05 + 0.05 * torch.rand(w.shape, generator=g))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "training_info.json").write_text(json.dumps(info))


def test_runner_runs_the_sparsity_rows_planted_twins_and_the_report_passes_its_detector(tmp_path, monkeypatch):
    from conftest import make_tiny_model
    from controls import run_controls

    import organism

    ck = tmp_path / "checkpoints"
    base = make_tiny_model(ck / "base", seed=0)
    (base / "training_info.json").write_text(json.dumps({"stage": "pretrain"}))
    # sparse twins: 10% of entries moved, the two seeds' masks drawn alike (seed 1 for both) plus
    # their own noise -> overlap far above random; dense twins: every entry moved
    _twin(base, ck / "rl-sparse-seed0", 0.10, 1, {"stage": "rl"})
    _twin(base, ck / "rl-sparse-seed1", 0.10, 1, {"stage": "rl"})
    _twin(base, ck / "rl-seed0", 1.0, 2, {"stage": "rl"})
    _twin(base, ck / "rl-seed1", 1.0, 3, {"stage": "rl"})
    monkeypatch.setenv("TWINLENS_ORGANISM_CHECKPOINTS", str(ck))
    monkeypatch.setattr(organism, "CHECKPOINT_DIR", ck)
    assert set(organism.list_checkpoints()) == {"base", "rl-sparse-seed0", "rl-sparse-seed1", "rl-seed0", "rl-seed1"}
    demo = tmp_path / "demo"
    (demo / "diff").mkdir(parents=True)
    (demo / "diff" / "results.json").write_text(json.dumps(_diff(0.97, 0.975, 0.97)))
    lines: list[str] = []
    record = run_controls(demo / "controls", rows=["diff", "route"], demo_dir=demo, log=lines.append)
    assert record["diff"]["true"]["status"] == "ran" and record["diff"]["false"]["status"] == "ran"
    assert record["route"]["true"]["status"] == "untested"
    pos = json.loads((demo / "controls" / "positive" / "diff" / "results.json").read_text())
    neg = json.loads((demo / "controls" / "negative" / "diff" / "results.json").read_text())
    assert 0.05 < pos["updated_fraction"]["atol"] < 0.15 and neg["updated_fraction"]["atol"] > 0.99
    rows = {v.row: v for v in collect_verdicts(demo)}
    assert rows["diff"].positive_control.startswith("passed"), rows["diff"].positive_control
    assert rows["diff"].outcome == V.NOT_SUPPORTED
    # a second run finds both runs done with the same models and settings
    lines.clear()
    record = run_controls(demo / "controls", rows=["diff"], demo_dir=demo, log=lines.append)
    assert record["diff"]["true"]["status"] == "done before", lines
    assert os.path.isfile(demo / "controls" / C.RECORD)


def test_runner_refuses_an_unknown_row_before_running_anything(tmp_path):
    from controls import main

    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "c"), "--rows", "sparsity"])
    assert exc.value.code == 2 and not (tmp_path / "c").exists()


def test_every_planted_command_is_taken_by_its_jobs_own_parser():
    """The table and the job scripts stay in step: an option a job does not take would make the
    row untested at run time (the runner says so); here it fails loudly."""
    from controls import check_options, job_spec

    for row, c in C.CONTROLS.items():
        for side in C.SIDES:
            args = C.planted_args(c, side, EVERY_TWIN, step_of=lambda n: 40)
            if isinstance(args, list):
                job = job_spec(c.job)
                assert check_options(job, ["python", job.script, "--out", "x", *args]) == "", (row, side)
    job = job_spec("drift")
    assert "refuses the control's options" in check_options(job, ["python", "drift.py", "--out", "x", "--nope"])


def test_a_planted_true_case_that_is_the_demos_own_default_run_is_reused_not_rerun(tmp_path):
    """probe/steer's planted-true case is the job's default run on the organism base: a demo folder
    whose job.json records that run (same models by weight hash, same settings) is reused; one made
    with other settings is not."""
    from controls import job_spec, reusable

    import organism
    from analyses.jobdir import claim_folder
    from scripts.demo import script_identity

    if "base" not in organism.list_checkpoints():
        pytest.skip("organism checkpoints not built")
    job = job_spec("steer")
    demo = tmp_path / "demo"
    cmd = ["python", job.script, "--out", str(demo / "steer")]
    with claim_folder(demo / "steer", script_identity(job, cmd)) as folder:
        (demo / "steer" / "results.json").write_text("{}")
        folder.finish()
    control_cmd = ["python", job.script, "--out", str(tmp_path / "controls" / "positive" / "steer")]
    assert reusable(job, control_cmd, demo) == demo / "steer"
    assert reusable(job, [*control_cmd, "--n-problems", "3"], demo) is None  # other settings: run it
    assert reusable(job, control_cmd, tmp_path / "elsewhere") is None


def test_an_undefined_statistic_in_planted_results_costs_nothing_but_its_own_cell(tmp_path):
    """calibrate writes AUROC [None, None] when one class is missing (every sample wrong): the
    rule reads the other metrics, and a results file a rule cannot read costs its row, not the table
    (it used to end the whole table in one TypeError)."""
    cal = {"confidence": "stated", "accuracy": {"base": 0.0, "rl-binary": 0.0},
           "ece": {"base": 0.1, "rl-binary": 0.4}, "brier": {"base": 0.1, "rl-binary": 0.4},
           "auroc": {"base": None, "rl-binary": None},
           "ci": {"base": {"ece": [0.08, 0.12], "brier": [0.08, 0.12], "auroc": [None, None]},
                  "rl-binary": {"ece": [0.35, 0.45], "brier": [0.35, 0.45], "auroc": [None, None]}}}
    assert V.verdict_calibration(cal).outcome == V.SUPPORTED  # ECE and Brier worsen, AUROC undefined
    demo = tmp_path / "demo"
    _write(demo / "diff", _diff(0.97, 0.975, 0.97))
    _write(demo / "passk", {"pass_at_k": {"base": {"mean": "x"}, "rl": {}}, "k": [1]})  # not what passk writes
    _write(demo / "controls" / "positive" / "calibrate", cal)
    _write(demo / "controls" / "positive" / "mechanism", {"suppression_share": 0.7, "suppression_share_ci": "?",
                                                         "ess_fraction": 0.9, "n_samples": 500})
    rows = {v.row: v for v in collect_verdicts(demo)}
    assert len(rows) == 13 and rows["diff"].outcome == V.NOT_SUPPORTED
    assert rows["calibrate"].positive_control.startswith("passed")
    assert rows["passk"].outcome == V.NOT_MEASURED and "passk/results.json" in rows["passk"].why
    assert rows["mechanism"].positive_control.startswith("untested: the planted results could not be read")


def test_a_planted_formats_run_is_judged_by_the_rows_rule():
    """A planted formats run must be judged on the same evidence and rule as the row (it was once
    judged without its greedy shares, so the two disagreed). Greedy shares are reported, not
    decisive (greedy is one format by construction): a greedy collapse with a sampled share
    straddling 90% is undetermined in both places; a sampled collapse is supported in both."""
    run = {"checkpoints": ["base", "rl-seed0"], "share": {"base": {"step": 0.3}, "rl-seed0": {"step": 0.85}},
           "share_ci": {"base": {"step": [0.22, 0.38]}, "rl-seed0": {"step": [0.78, 0.92]}},
           "greedy_share": {"rl-seed0": {"step": 1.0, "direct": 0.0}}}
    assert V.verdict_formats_run(run).outcome == V.UNDETERMINED
    rows = {r.row: r for r in V.collect({"formats": run}, positives={"formats": run})}
    assert rows["formats"].outcome == V.DETECTOR_FAILED  # the planted-true run is undetermined too
    assert "planted true: undetermined" in rows["formats"].positive_control
    run = {**run, "share": {"base": {"step": 0.3}, "rl-seed0": {"step": 0.96}},
           "share_ci": {"base": {"step": [0.22, 0.38]}, "rl-seed0": {"step": [0.93, 0.99]}}}
    rows = {r.row: r for r in V.collect({"formats": run}, positives={"formats": run})}
    assert rows["formats"].outcome == V.SUPPORTED and rows["formats"].positive_control.startswith("passed")


def test_a_twin_that_missed_its_plant_makes_its_control_untested_not_failed(tmp_path, monkeypatch):
    """Issue 14: where the model card shows a twin not coming out as planted, the control that runs it
    tests nothing: load_controls leaves its planted run out and says why (it read FAILED before)."""
    import json

    from analyses import controls as ctl

    claims = [
        {"claim": "s.2 NSR keeps entropy", "checkpoints": ["rl-nsr"], "planted": "true", "measured": "entropy 0.02",
         "holds": False},
        {"claim": "s.2 PSR collapses entropy", "checkpoints": ["rl-psr"], "planted": "true", "measured": "0.03",
         "holds": True},
        {"claim": "s.7 brier does not worsen ECE", "checkpoints": ["rl-brier"], "planted": "false", "measured": "0.005",
         "holds": False},
        {"claim": "tier 4 pass@1 in band", "checkpoints": ["base"], "planted": "property", "measured": "0.41",
         "holds": False},
    ]
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / ctl.CLAIMS_FILE).write_text(json.dumps(claims))
    assert _real_card_claims(ck) == claims
    got = _real_card_claims(ck)
    mech = ctl.CONTROLS["mechanism"]
    assert "rl-nsr did not come out as planted" in ctl.not_as_planted(mech, "true", got)
    assert ctl.not_as_planted(mech, "false", got) == ""  # rl-psr held its plant
    # the entropy row's planted-false run relies on rl-nsr keeping entropy: untested too
    assert "rl-nsr" in ctl.not_as_planted(ctl.CONTROLS["entropy"], "false", got)
    # a planted-false claim that does not hold came out as planted; a property row is no plant
    assert ctl.not_as_planted(ctl.CONTROLS["calibrate"], "false", got) == ""
    assert ctl.not_as_planted(ctl.CONTROLS["diff"], "true", got) == ""

    # load_controls: the planted-true mechanism run exists on disk but is left out, with the reason
    folder = tmp_path / "controls"
    for side in ("positive", "negative"):
        (folder / side / "mechanism").mkdir(parents=True)
        (folder / side / "mechanism" / "results.json").write_text("{}")
    monkeypatch.setattr(ctl, "card_claims", lambda folder=None: got)
    pos, neg, why = ctl.load_controls(folder)
    assert "mechanism" not in pos and "mechanism" in neg
    assert "did not come out as planted" in why["mechanism"]
