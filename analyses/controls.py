"""Positive and negative controls of the verdict table: for each row, the organism checkpoints
where its claim is planted true and where it is planted false (organism v2, issue 14), the job the
row needs, and the smallest settings that still discriminate.

A verdict's detector is trusted only if it says "supported" where the claim is true by
construction and does not where it is false (analyses.verdicts: DETECTOR_FAILED otherwise).
:data:`CONTROLS` holds one :class:`RowControl` per row of ``analyses.verdicts.ROW_JOBS``;
scripts/controls.py runs them into ``<demo>/controls/positive/<row>`` and ``.../negative/<row>``
and the report reads them. A side without an honest planted case is ``None`` with the reason in
``untested``: the table says so instead of pretending.

Model options name organism checkpoints (``organism.list_checkpoints()``); two placeholders are
resolved against the shipped set: ``rl-kl-*`` is the twin with the largest KL coefficient (the
clearest planted case), and ``{step:NAME}`` is checkpoint NAME's RL step (training_info.json).
A side whose checkpoint is not shipped is reported untested with the missing name.

    from analyses.controls import CONTROLS, planted_args
    planted_args(CONTROLS["diff"], "true")   # ['--base', 'base', '--rl', 'rl-sparse-seed0', ...]
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyses.verdicts import ROW_JOBS

SIDES = ("true", "false")


@dataclass(frozen=True)
class Planted:
    """One planted case: the job's model options (organism checkpoint names) and why the row's
    claim is true (or false) there."""

    models: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class RowControl:
    """A verdict row's controls: the job, its planted-true / planted-false cases (``None``: no
    honest planted case, see ``untested``), and the job options that size the control runs.

    ``reuse_demo``: the planted-true case is the job's own default run on the organism (same
    models, same settings), so a demo on the organism reuses that folder instead of rerunning it.
    """

    row: str
    job: str
    true: Planted | None
    false: Planted | None
    args: tuple[str, ...] = ()
    untested: str = ""
    reuse_demo: bool = False

    def side(self, side: str) -> Planted | None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.true if side == "true" else self.false


_RANDOM_INIT = ("no checkpoint plants 'the base has no such direction' (a model without the strategies "
                "cannot produce the traces the job labels); the job's own random-init model, shuffled labels "
                "and token-identity baseline are the row's negative controls")

#: Every verdict row's planted cases. Sizes: the smallest that still resolve the planted effect
#: (the controls run inside `make demo`'s 10-minute budget; measured per row by scripts/controls.py,
#: which writes each run's seconds to controls.json). On the trained v2 set (05:07 UTC build) on this
#: 2-core box at load ~19 (shared): worker seconds per row diff 34, mechanism 187, formats 23, passk 51,
#: drift 6, calibrate 54, entropy 48; 236 s wall with 2 workers (probe and steer reuse the demo's runs).
CONTROLS: dict[str, RowControl] = {c.row: c for c in [
    # probe and steer: the base is both the row's subject and its only candidate planted case. The corpus
    # plants context-dependent choices, but whether the base learned them is exactly what the row
    # measures, so a "planted-true" run on the same base would turn every "not supported" into
    # "detector failed" (circular). The detectors' positive controls are planted directions in tests.
    RowControl(
        "probe", "probe", true=None, false=None,
        untested=("no checkpoint other than the base itself plants 'the base carries the decision' (the "
                  "corpus plants context-dependent choices, but whether the base learned them is what this "
                  "row measures); the detector's positive controls are planted directions "
                  "(tests/test_probes_baselines.py); " + _RANDOM_INIT)),
    RowControl(
        "steer", "steer", true=None, false=None,
        untested=("no checkpoint other than the base itself plants a steerable strategy (whether the base's "
                  "choice can be moved is what this row measures); the search's positive control is a "
                  "planted direction (tests/test_steering.py); its >= 5 random vectors of equal norm per "
                  "setting are the negative control")),
    RowControl(
        "route", "route", true=None, false=None,
        untested=("no twin plants a base-to-RL gap that few routed tokens do (or do not) recover: the row "
                  "rests on random routing at the same budget and on hybrids that are not RL's output by "
                  "construction")),
    RowControl(
        "diff", "diff",
        true=Planted(("--base", "base", "--rl", "rl-sparse-seed0", "--rl", "rl-sparse-seed1"),
                     "rl-sparse-seed0/1 train in the update regime of real RL runs (bf16 master weights, "
                     "small lr): >= 70% of bf16 weights unchanged, same data, two seeds"),
        false=Planted(("--base", "base", "--rl", "rl-seed0", "--rl", "rl-seed1"),
                      "rl-seed0/1 train in fp32 at a large lr: a dense update"),
        args=("--no-spectral", "--no-progress")),
    RowControl(
        "mechanism", "mechanism",
        true=Planted(("--base", "base", "--rl", "rl-nsr"),
                     "rl-nsr keeps only negative-advantage samples (Zhu et al.): it can only push wrong "
                     "trajectories down"),
        false=Planted(("--base", "base", "--rl", "rl-psr"),
                      "rl-psr keeps only positive-advantage samples: it can only pull right ones up"),
        args=("--no-plasticity", "--n-problems", "32", "--n-samples", "8", "--phase-problems", "1",
              "--n-boot", "200")),
    RowControl(
        "formats", "formats",
        true=Planted(("--checkpoint", "base", "--step", "0", "--checkpoint", "rl-seed0",
                      "--step", "{step:rl-seed0}"),
                     "rl-seed0: GRPO without a KL penalty on a corpus of several formats (Zhao et al.: "
                     "collapse onto one)"),
        false=Planted(("--checkpoint", "base", "--step", "0", "--checkpoint", "rl-kl-*",
                       "--step", "{step:rl-kl-*}"),
                      "rl-kl-<largest beta>: rl-seed0's recipe with a KL penalty to the base, which keeps "
                      "minority formats alive"),
        args=("--n-problems", "32", "--n-samples", "4", "--n-boot", "200")),
    RowControl(
        "passk", "passk",
        true=None,
        false=Planted(("--base", "base", "--rl", "rl-psr"),
                      "rl-psr (positive samples only) collapses entropy onto what it already solves: the "
                      "base overtakes it at large k (Yue et al.'s crossover)"),
        untested=("no twin plants RL above the base at the largest k: rl-nsr keeps the base's pass@k at large "
                  "k (Zhu et al.; the card checks CIs touch or above), it does not beat it"),
        args=("--n-problems", "32", "--n-samples", "16", "--n-boot", "200")),
    RowControl(
        "drift", "drift",
        true=Planted(("--base", "base", "--rl", "rl-seed0-step0", "--rl", "rl-seed0"),
                     "rl-seed0 trained without a KL penalty: its KL to the base must clear the step-0 "
                     "checkpoint's (the estimator's floor)"),
        false=None,
        untested=("every RL twin moves away from the base; one that did not would be the base itself, whose "
                  "floor (the step-0 checkpoint) is already the row's negative control"),
        args=("--n-problems", "16", "--n-samples", "2", "--open-problems", "0", "--n-boot", "200")),
    RowControl(
        "shortcuts", "evaluate", true=None, false=None,
        untested=("the row's own evaluate run already holds its planted pair, by name: rl-hard (RL on "
                  "problems the base never solves) beside rl-seed0 (RL on solvable ones); no second pair "
                  "plants the claim")),
    RowControl(
        "calibrate", "calibrate",
        true=Planted(("--base", "base", "--rl", "rl-binary"),
                     "rl-binary: RL on the stated-confidence prompts with a correct/incorrect reward, which "
                     "pays for confident guessing (RLCR)"),
        false=Planted(("--base", "base", "--rl", "rl-brier"),
                      "rl-brier: the same with RLCR's reward c - (q - c)^2, which pays for calibration"),
        args=("--confidence", "stated", "--n-problems", "100", "--n-samples", "2", "--n-boot", "200")),
    RowControl(
        "entropy", "drift",
        true=Planted(("--base", "base", "--rl", "rl-open", "--rl", "rl-seed0"),
                     "rl-seed0: RL on the structured task (one right answer per problem), beside rl-open: RL "
                     "on the open domain (any k digits summing to s: many right answers), each measured on "
                     "its own domain"),
        false=Planted(("--base", "base", "--rl", "rl-open", "--rl", "rl-nsr"),
                      "rl-nsr: RL on the structured task from negative samples only, which keeps entropy near "
                      "the base (Zhu et al.): the structured drop is absent by construction"),
        # 16 problems left the structured change's CI 0.42 wide on a 20-step rl-seed0 pilot
        args=("--n-problems", "32", "--n-samples", "4", "--open-problems", "32", "--n-boot", "200")),
    RowControl(
        "scaling", "scaling", true=None, false=None,
        untested=("no checkpoint series plants a sigmoid (or a power law) in compute; the fit and its "
                  "saturation rule are checked on synthetic curves in the tests")),
    RowControl(
        "mi_peaks", "mi_peaks", true=None, false=None,
        untested=("no twin plants MI peaks at strategy tokens; the job's own planted-dependence control "
                  "(dependence injected at known positions) is the row's positive control")),
]}


def check_controls_cover_rows() -> None:
    """Every verdict row has exactly one RowControl, reading the row's own job."""
    missing, extra = set(ROW_JOBS) - set(CONTROLS), set(CONTROLS) - set(ROW_JOBS)
    wrong = {r: (c.job, ROW_JOBS[r]) for r, c in CONTROLS.items() if r in ROW_JOBS and c.job != ROW_JOBS[r]}
    if missing or extra or wrong:
        raise AssertionError(f"controls table out of step with the verdict rows: missing {sorted(missing)}, "
                             f"unknown {sorted(extra)}, wrong job {wrong}")


def kl_twin(available: Iterable[str]) -> str | None:
    """The shipped ``rl-kl-<beta>`` twin with the largest beta (None when there is none)."""
    best: tuple[float, str] | None = None
    for name in available:
        m = re.fullmatch(r"rl-kl-([0-9.eE+-]+)", name)
        if m:
            try:
                beta = float(m.group(1))
            except ValueError:
                continue
            if best is None or beta > best[0]:
                best = (beta, name)
    return best[1] if best else None


def _resolve_name(name: str, available: list[str]) -> str | None:
    if "*" in name:
        return kl_twin(available) if name == "rl-kl-*" else next(iter(fnmatch.filter(available, name)), None)
    return name if name in available else None


def _recorded_step(name: str) -> Any:
    import organism

    return organism.checkpoint_info(name).get("step")


def planted_args(control: RowControl, side: str, available: Iterable[str] | None = None,
                 step_of: Callable[[str], Any] | None = None) -> list[str] | str:
    """The job options of one planted case (models, then the control's sizing options), with the
    placeholders resolved against the shipped checkpoints (``available``, default
    ``organism.list_checkpoints()``; ``step_of(name)``, default its training_info step); or a
    string saying why that side is untested (no honest planted case, or a checkpoint that is not
    shipped)."""
    planted = control.side(side)
    if planted is None:
        return control.untested or "no planted case for this side"
    if available is None:
        import organism

        available = organism.list_checkpoints()
    available = list(available)
    out: list[str] = []
    model_options = {"--base", "--rl", "--sft", "--checkpoint"}
    for i, token in enumerate(planted.models):
        step = re.fullmatch(r"\{step:(.+)\}", token)
        if step:
            name = _resolve_name(step.group(1), available)
            if name is None:
                return f"checkpoint {step.group(1)} is not shipped"
            value = (step_of or _recorded_step)(name)
            if value is None:
                return f"checkpoint {name} records no RL step (training_info.json)"
            out.append(str(value))
        elif i > 0 and planted.models[i - 1] in model_options:
            name = _resolve_name(token, available)
            if name is None:
                return f"checkpoint {token} is not shipped"
            out.append(name)
        else:
            out.append(token)
    return out + list(control.args)




# ---------------------------------------------------------------- what a controls run left
#: The record scripts/controls.py writes beside the planted folders.
RECORD = "controls.json"
#: The folder of each side's runs under a controls folder.
SIDE_FOLDER = {"true": "positive", "false": "negative"}
#: The model card's claim rows (scripts/model_card.py writes them beside the checkpoints' README).
CLAIMS_FILE = "claims.json"


def card_claims(folder: str | Path | None = None) -> list[dict]:
    """The model card's claim rows ``[{claim, checkpoints, planted, measured, holds}]`` of the
    organism checkpoints in ``folder`` (default: ``organism.CHECKPOINT_DIR``); [] when absent."""
    import json

    if folder is None:
        import organism

        folder = organism.CHECKPOINT_DIR
    try:
        rows = json.loads((Path(folder) / CLAIMS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def not_as_planted(control: RowControl, side: str, claims: list[dict]) -> str:
    """Why a planted run of ``control`` tests nothing (issue 14): a twin it runs that the model card
    shows *not* coming out as planted (a planted-true claim that does not hold, a planted-false one
    that does), else "". Such a run cannot tell a blind detector from a twin that missed its plant."""
    planted = control.side(side)
    if planted is None:
        return ""
    names = {planted.models[i + 1] for i, a in enumerate(planted.models[:-1]) if a in ("--rl", "--checkpoint")}
    names = {n for n in names if n != "base" and "*" not in n} | (
        {kl_twin(_shipped())} if any("*" in n for n in names) else set())
    # any planted claim of a twin this run relies on (the entropy row's planted-false rl-nsr relies on the
    # card's planted-true "NSR keeps entropy"): true ones must hold, false ones must not
    missed = [c for c in claims if c.get("planted") in SIDES and set(c.get("checkpoints") or ()) & names
              and bool(c.get("holds")) != (c.get("planted") == "true")]
    return "; ".join(f"{', '.join(c['checkpoints'])} did not come out as planted (model card: {c.get('claim')}: "
                     f"{c.get('measured')})" for c in missed)


def _shipped() -> list[str]:
    try:
        import organism

        return organism.list_checkpoints()
    except Exception:  # noqa: BLE001 -- no organism: no KL twin to resolve
        return []
RAN = ("ran", "reused", "done before")


def load_controls(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(positives, negatives, untested_why) for ``analyses.verdicts.collect`` from a controls folder.

    ``positives[row]`` / ``negatives[row]``: the parsed results.json of each planted run that
    finished (its folder as recorded in controls.json: a reused demo job's own folder, or
    ``positive/<row>`` / ``negative/<row>``); ``untested_why[row]``: why a row has no planted-true
    result (no honest planted case, a checkpoint not shipped, the run failed: see its log). Without
    controls.json, planted folders found by name are read and the static reasons of
    :data:`CONTROLS` fill the rest.
    """
    import json

    folder = Path(folder)
    record: dict[str, Any] = {}
    path = folder / RECORD
    if path.is_file():
        try:
            record = json.loads(path.read_text()).get("rows") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            record = {}
    sides: dict[str, dict[str, Any]] = {"true": {}, "false": {}}
    why: dict[str, str] = {}
    claims = card_claims()
    for row, control in CONTROLS.items():
        for side in SIDES:
            if control.side(side) is None:  # no planted case (an older controls run may still list one)
                if side == "true":
                    why[row] = control.untested
                continue
            missed = not_as_planted(control, side, claims)
            if missed:  # the twin missed its plant: its run tests nothing (untested, not FAILED)
                if side == "true":
                    why[row] = missed
                continue
            entry = record.get(row, {}).get(side) or {}
            results_dir = Path(entry["folder"]) if entry.get("folder") else folder / SIDE_FOLDER[side] / row
            if not results_dir.is_absolute():
                results_dir = folder / results_dir
            results = None
            if (not entry or entry.get("status") in RAN) and (results_dir / "results.json").is_file():
                try:
                    results = json.loads((results_dir / "results.json").read_text())
                except (OSError, json.JSONDecodeError):
                    results = None
            if results is not None:
                sides[side][row] = results
            elif side == "true":
                if entry.get("status") == "failed":
                    why[row] = f"the planted-true run failed ({entry.get('why') or 'see its log'})"
                elif entry.get("why"):
                    why[row] = entry["why"]
                elif control.true is None:
                    why[row] = control.untested
                else:
                    why[row] = "not run (scripts/controls.py runs it)"
    return sides["true"], sides["false"], why


def static_untested_reasons() -> dict[str, str]:
    """{row: why} for the rows with no honest planted-true case (a report without a controls run)."""
    return {row: c.untested for row, c in CONTROLS.items() if c.true is None}


__all__ = ["CONTROLS", "Planted", "RECORD", "RowControl", "SIDES", "SIDE_FOLDER", "check_controls_cover_rows",
           "kl_twin", "load_controls", "planted_args", "static_untested_reasons", "card_claims", "not_as_planted",
           "CLAIMS_FILE"]
