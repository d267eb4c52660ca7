#!/usr/bin/env python
"""One self-contained report from a demo folder: report.html (images embedded) + report.md.

    python scripts/report.py runs/demo

It opens with the verdict table: for each claim of RESEARCH.md, what this pair shows, the
number, its control, and whether the claim holds here. Every number is read from the jobs'
results.json files; a claim whose job did not run is "not measured".
"""

from __future__ import annotations

import base64
import html
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"


@dataclass
class Verdict:
    section: int
    claim: str
    job: str
    shows: str = ""
    number: str = ""
    control: str = ""
    holds: str = NOT_MEASURED


def _load(out: Path, job: str) -> dict | None:
    path = out / job / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _get(d: Any, *keys: Any, default: Any = None) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return default
    return d


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x):
        return f"[{x[0]:.{digits}f}, {x[1]:.{digits}f}]"
    return str(x)


def _holds(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else (SUPPORTED if ok else NOT_SUPPORTED)


# ------------------------------------------------------------------ one extractor per claim
def verdict_strategies(out: Path) -> Verdict:
    v = Verdict(1, "Base models already hold the strategies as linear directions (probes)", "probe")
    r = _load(out, "probe")
    acc = _get(r, "acceptance", default={}) if r else {}
    rows = {k: x for k, x in (acc or {}).items() if isinstance(x, dict) and "auroc" in x}
    if not rows:
        return v
    v.shows = "best-layer probe AUROC on held-out base traces, per strategy (layer)"
    v.number = "; ".join(f"{k} {_fmt(x['auroc'], 2)} (L{x.get('best_layer')})" for k, x in rows.items())
    v.control = "shuffled-label probe: " + "; ".join(f"{k} {_fmt(x.get('control_auroc'), 2)}" for k, x in rows.items())
    v.holds = _holds(all(x.get("probe_auroc_ge_0.9") and x.get("control_auroc_le_0.6") for x in rows.values()))
    return v


def verdict_steering(out: Path) -> Verdict:
    v = Verdict(1, "Steering the base with a strategy vector makes it use that strategy", "steer")
    r = _load(out, "steer")
    strategies = _get(r, "strategies", default={}) if r else {}
    if not strategies:
        return v
    parts, ok = [], True
    for name, x in strategies.items():
        best = x.get("best") or {}
        if best:
            parts.append(f"{name}: +{_fmt(best.get('change'), 2)} at L{best.get('layer')} alpha {best.get('alpha')}"
                         f" (accuracy {_fmt(best.get('accuracy_at_0'), 2)} -> {_fmt(best.get('accuracy'), 2)}"
                         f"{', degenerate' if best.get('degenerate') else ''})")
        ok = ok and bool(x.get("passes")) and not best.get("degenerate")
    v.shows = "largest rise in strategy frequency that beats 3x a random vector of equal norm (CIs apart)"
    v.number = "; ".join(parts) or "no alpha/layer passes"
    v.control = "random vector of equal norm, same sampling seeds; degenerate = accuracy collapses"
    v.holds = _holds(ok)
    return v


def _value_ci(x: Any) -> tuple[Any, Any]:
    """Numbers with a CI are stored as {"value": v, "ci": [lo, hi]}; plain numbers have none."""
    if isinstance(x, dict):
        return x.get("value", x.get("mean")), x.get("ci")
    return x, None


def verdict_hybrid(out: Path) -> Verdict:
    v = Verdict(1, "A hybrid routing few tokens recovers most of the base-to-RL gap", "route")
    r = _load(out, "route")
    d = _get(r, "routers", "disagree") if r else None
    if not d:
        return v
    gap, ci = _value_ci(_get(d, "gap_recovered"))
    frac = _get(d, "fraction_routed")
    rnd = _get(d, "random_control") or {}
    rgap, rci = _value_ci(_get(rnd, "gap_recovered"))
    v.shows = (f"gap recovered by the disagree token-routing hybrid (base acc {_fmt(_get(d, 'accuracy_base'))}, "
               f"RL {_fmt(_get(d, 'accuracy_rl'))}), fraction of tokens routed")
    v.number = f"{_fmt(gap)} (CI {_fmt(ci)}) at {_fmt(frac)} routed"
    if rnd:
        v.control = f"random routing at the same budget: {_fmt(rgap)} (CI {_fmt(rci)}) at {_fmt(_get(rnd, 'fraction_routed'))} routed"
        if isinstance(gap, (int, float)) and isinstance(frac, (int, float)) and ci and rci:
            v.holds = _holds(gap >= 0.7 and frac <= 0.2 and ci[0] > rci[1])
    steered = _get(r, "routers", "steered_disagree")
    if steered:
        sg, sci = _value_ci(_get(steered, "gap_recovered"))
        v.control += f"; steered hybrid (base + strategy vectors): {_fmt(sg)} (CI {_fmt(sci)})"
    return v


def verdict_sparsity(out: Path) -> Verdict:
    v = Verdict(2, "RL updates a sparse (5-30%), full-rank subnetwork, similar across seeds", "diff")
    r = _load(out, "diff")
    if r is None:
        return v
    frac = _get(r, "updated_fraction", "atol")
    rank = _get(r, "update_rank_mean")
    ov = _get(r, "overlap", 0, default={}) or {}
    v.shows = "updated fraction (|delta| > 1e-5), mean update rank, seed overlap"
    v.number = f"updated {_fmt(frac)}, rank {_fmt(rank)}, overlap o1 {_fmt(_get(ov, 'o1'))}"
    v.control = f"random overlap {_fmt(_get(ov, 'random_o1'))}; SFT updated {_fmt(_get(r, 'sft', 'updated_fraction', 'atol'))}"
    if isinstance(frac, (int, float)):
        v.holds = _holds(frac <= 0.3 and (not isinstance(rank, (int, float)) or rank >= 0.9))
    return v


def _ci_text(ci: Any) -> str:
    return f" (CI {_fmt(ci)})" if ci else ""


def _rl_key(d: dict) -> str | None:
    """The RL model's key in a per-model dict (the first that is not the base)."""
    return next((k for k in d if k != "base"), None) if isinstance(d, dict) else None


def verdict_formats(out: Path) -> Verdict:
    v = Verdict(3, "Outputs collapse onto one format early in RL", "formats")
    r = _load(out, "formats")
    if r is None:
        return v
    share, ckpts = _get(r, "share", default={}), _get(r, "checkpoints", default=[])
    if not ckpts:
        return v
    first, last = share.get(ckpts[0], {}), share.get(ckpts[-1], {})
    top = max(last, key=last.get) if last else None
    v.shows = f"format shares first -> last checkpoint; step where one format first exceeds {_get(r, 'threshold', default=0.9):.0%}"
    v.number = (f"{top}: {_fmt(first.get(top))} -> {_fmt(last.get(top))}; collapse step {_get(r, 'collapse_step')}"
                if top else "-")
    v.control = f"share of the same format at the first checkpoint ({ckpts[0]})"
    v.holds = _holds(_get(r, "collapse_step") is not None)
    return v


def verdict_passk(out: Path) -> Verdict:
    v = Verdict(4, "RL beats base at every k (ProRL) rather than base overtaking at large k (Yue et al.)", "passk")
    r = _load(out, "passk")
    if r is None:
        return v
    curves = _get(r, "pass_at_k", default={})
    rl = _rl_key(curves)
    if rl is None:
        return v
    ks, b, q = _get(r, "k", default=[]), curves["base"]["mean"], curves[rl]["mean"]
    k = _get(r, "crossover_k", rl)
    v.shows = f"pass@k base vs {rl} at k = {ks[0]} and {ks[-1]}; first k where base >= RL"
    v.number = f"pass@{ks[0]} {_fmt(b[0])} vs {_fmt(q[0])}; pass@{ks[-1]} {_fmt(b[-1])} vs {_fmt(q[-1])}; crossover k = {k}"
    v.control = f"problems solved by one model only: {_get(r, 'n_solved_only_by')}"
    if k is not None and k in ks and b[ks.index(k)] == q[ks.index(k)]:
        v.number += " (a tie: both solve every problem there)"
    v.holds = _holds(k is None)
    return v


def _last_checkpoint(d: dict) -> str | None:
    return list(d)[-1] if isinstance(d, dict) and d else None


def verdict_drift(out: Path) -> Verdict:
    v = Verdict(5, "RL drifts from the base: per-token KL, on samples from either model", "drift")
    r = _load(out, "drift")
    if r is None:
        return v
    last = _last_checkpoint(_get(r, "kl_base_rl"))
    if last is None:
        return v
    fw, bw = _get(r, "kl_base_rl", last), _get(r, "kl_rl_base", last)
    v.shows = f"KL(base||rl) and KL(rl||base), nats/token, {last}, on base samples / on RL samples"
    v.number = (f"{_fmt(fw.get('on_base_samples'))} / {_fmt(fw.get('on_own_samples'))} and "
                f"{_fmt(bw.get('on_base_samples'))} / {_fmt(bw.get('on_own_samples'))}")
    first = list(r["kl_base_rl"])[0]
    v.control = f"first checkpoint ({first}): " + _fmt(_get(r, "kl_base_rl", first, "on_base_samples"))
    v.holds = "measured"
    return v


def verdict_shortcuts(out: Path) -> Verdict:
    v = Verdict(6, "Training on too-hard problems teaches shortcuts (length collapse, skipped steps)", "evaluate")
    r = _load(out, "evaluate")
    rows = _get(r, "checkpoints", default={}) if r else {}
    base, hard = rows.get("base"), rows.get("rl-hard")
    if not base or not hard:
        return v

    def pick(row: dict, *keys: str) -> Any:
        return _get(row, "sampled", *keys)

    v.shows = "rl-hard (RL on problems the base never solves) vs base, sampled: direct answers, mean length, accuracy"
    v.number = (f"direct {_fmt(pick(base, 'formats', 'direct', 'value'))} -> {_fmt(pick(hard, 'formats', 'direct', 'value'))}; "
                f"length {_fmt(pick(base, 'mean_length'), 1)} -> {_fmt(pick(hard, 'mean_length'), 1)}; "
                f"accuracy {_fmt(pick(base, 'accuracy', 'value'))} -> {_fmt(pick(hard, 'accuracy', 'value'))}")
    ref = rows.get("rl-seed0")
    if ref:
        v.control = (f"rl-seed0 (RL on solvable problems): direct {_fmt(pick(ref, 'formats', 'direct', 'value'))}, "
                     f"length {_fmt(pick(ref, 'mean_length'), 1)}")
    lb, lh = pick(base, "mean_length"), pick(hard, "mean_length")
    if isinstance(lb, (int, float)) and isinstance(lh, (int, float)):
        v.holds = _holds(lh < 0.5 * lb)
    return v


def verdict_calibration(out: Path) -> Verdict:
    v = Verdict(7, "Binary-reward RL hurts calibration (ECE rises)", "calibrate")
    r = _load(out, "calibrate")
    if r is None:
        return v
    rl = _rl_key(_get(r, "ece"))
    if rl is None:
        return v
    eb, er = _get(r, "ece", "base"), _get(r, "ece", rl)
    cb, cr = _get(r, "ci", "base", "ece"), _get(r, "ci", rl, "ece")
    v.shows = "ECE (10 equal-width bins), base -> RL; confidence = probability of the model's own answer"
    v.number = f"{_fmt(eb)}{_ci_text(cb)} -> {_fmt(er)}{_ci_text(cr)}"
    v.control = (f"Brier {_fmt(_get(r, 'brier', 'base'))} -> {_fmt(_get(r, 'brier', rl))}; AUROC "
                 f"{_fmt(_get(r, 'auroc', 'base'))} -> {_fmt(_get(r, 'auroc', rl))}")
    if cb and cr:
        v.holds = _holds(cr[0] > cb[1])  # RL's ECE CI entirely above the base's
    return v


def verdict_entropy(out: Path) -> Verdict:
    v = Verdict(8, "RL on a structured task lowers output entropy", "drift")
    r = _load(out, "drift")
    ent, ci = (_get(r, "entropy"), _get(r, "entropy_ci")) if r else (None, None)
    last = _last_checkpoint(ent)
    if not ent or "base" not in ent or last is None:
        return v
    v.shows = f"mean next-token entropy on each model's own samples, base -> {last} (nats)"
    v.number = f"{_fmt(ent['base'])}{_ci_text(ci.get('base'))} -> {_fmt(ent[last])}{_ci_text(ci.get(last))}"
    v.control = "entropy by token kind in the drift section"
    if ci and ci.get("base") and ci.get(last):
        v.holds = _holds(ci[last][1] < ci["base"][0])
    return v


def verdict_scaling(out: Path) -> Verdict:
    v = Verdict(9, "RL performance follows a sigmoid in compute", "scaling")
    r = _load(out, "scaling")
    if r is None or _get(r, "A") is None:
        return v
    ci = _get(r, "ci", default={})
    v.shows = "fit of R(C) = R0 + (A - R0)/(1 + (C_mid/C)^B) over RL checkpoints (compute = samples seen)"
    v.number = (f"A={_fmt(r['A'])}{_ci_text(ci.get('A'))}, B={_fmt(r['B'], 2)}{_ci_text(ci.get('B'))}, "
                f"C_mid={_fmt(r['C_mid'], 0)}")
    v.control = f"fit RMSE {_fmt(_get(r, 'fit', 'rmse'))} over {_get(r, 'fit', 'n_points')} points"
    v.holds = "measured"
    return v


def verdict_mi(out: Path) -> Verdict:
    v = Verdict(10, "RL creates sharper MI peaks than the base has (same text read by both)", "mi_peaks")
    r = _load(out, "mi_peaks")
    d = _get(r, "paired", "reference", "rl-base") if r else None
    if not d:
        return v
    mi, aom, npk = d.get("mi_mean", {}), d.get("aom", {}), d.get("n_peaks", {})
    v.shows = "paired RL - base on a shared reference solution: mean MI, AOM, peaks per trajectory"
    v.number = (f"MI {_fmt(mi.get('value'), 4)} [{_fmt(mi.get('low'), 4)}, {_fmt(mi.get('high'), 4)}]; "
                f"AOM {_fmt(aom.get('value'), 2)} [{_fmt(aom.get('low'), 2)}, {_fmt(aom.get('high'), 2)}]; "
                f"peaks {_fmt(npk.get('value'), 2)}")
    shares = {m: _get(r, "models", m, "texts", "reference", "peaks_at_strategy_tokens", default={}) or {}
              for m in ("base", "rl")}
    v.control = "share of peaks on strategy spans vs chance (their share of tokens): " + "; ".join(
        f"{m} {_fmt(x.get('share'))} vs {_fmt(x.get('chance'))}" for m, x in shares.items() if x)
    if isinstance(aom.get("low"), (int, float)):
        v.holds = _holds(aom["low"] > 0)
    return v


def verdict_mechanism(out: Path) -> Verdict:
    v = Verdict(2, "RL mostly suppresses wrong trajectories (NSR) rather than amplifying right ones", "mechanism")
    r = _load(out, "mechanism")
    if r is None or _get(r, "suppression_share") is None:
        return v
    share, ci = _get(r, "suppression_share"), _get(r, "suppression_share_ci")
    dc, di = _get(r, "delta_logp", "correct", default={}), _get(r, "delta_logp", "incorrect", default={})
    v.shows = "share of the moved probability mass that lowered incorrect base samples (0.5 = balanced)"
    v.number = f"{_fmt(share)}{_ci_text(ci)}"
    v.control = (f"delta log p correct {_fmt(dc.get('mean'), 2)}{_ci_text(dc.get('ci'))}, "
                 f"incorrect {_fmt(di.get('mean'), 2)}{_ci_text(di.get('ci'))}")
    if ci:
        v.holds = _holds(ci[0] > 0.5)
    return v


EXTRACTORS: list[Callable[[Path], Verdict]] = [
    verdict_strategies, verdict_steering, verdict_hybrid, verdict_sparsity, verdict_mechanism, verdict_formats,
    verdict_passk, verdict_drift, verdict_shortcuts, verdict_calibration, verdict_entropy,
    verdict_scaling, verdict_mi,
]
SECTION_ORDER = ["evaluate", "capture", "probe", "steer", "route", "diff", "mechanism", "passk",
                 "drift", "calibrate", "formats", "scaling", "mi_peaks"]


def collect_verdicts(out: Path) -> list[Verdict]:
    verdicts = []
    for extract in EXTRACTORS:
        try:
            verdicts.append(extract(out))
        except Exception as exc:  # a malformed results.json must not sink the whole report
            verdicts.append(Verdict(0, f"{extract.__name__}: could not read ({exc})", "?"))
    return verdicts


def verdict_markdown(verdicts: list[Verdict]) -> str:
    lines = ["| § | claim | what this pair shows | number | control | holds here |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        cells = [str(v.section), v.claim, v.shows or "-", v.number or "-", v.control or "-",
                 f"[{v.holds}](#{v.job})"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _markdown_to_html(md: str) -> str:
    """Enough markdown for our summaries: headings, tables, paragraphs, code spans."""
    out, table = [], []

    def flush_table() -> None:
        if not table:
            return
        rows = [r.strip().strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
        out.append("<table>" + "".join(
            "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
            for i, row in enumerate(rows)) + "</table>")
        table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    return "\n".join(out)


def write_report(out: str | Path) -> str:
    """Write out/report.md and out/report.html; return the verdict table (markdown)."""
    out = Path(out)
    verdicts = collect_verdicts(out)
    table = verdict_markdown(verdicts)
    md = ["# twinlens report", "", f"Pair and jobs under `{out}`.", "", "## Verdicts", "", table, ""]
    body = [f"<h1>twinlens report</h1><p>Pair and jobs under <code>{html.escape(str(out))}</code>.</p>",
            "<h2>Verdicts</h2>", _verdict_html(verdicts)]
    for job in SECTION_ORDER:
        folder = out / job
        if not folder.is_dir():
            continue
        md += [f"## {job}", ""]
        body.append(f'<h2 id="{job}">{job}</h2>')
        summary = folder / "summary.md"
        if summary.exists():
            text = summary.read_text()
            md += [text, ""]
            body.append(_markdown_to_html(text))
        elif not (folder / "results.json").exists():
            md += ["Job did not finish; see its log.txt.", ""]
            body.append("<p><em>Job did not finish; see its log.txt.</em></p>")
        for png in sorted(folder.glob("*.png")):
            md.append(f"![{png.stem}]({job}/{png.name})")
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<figure><img alt="{png.stem}" src="data:image/png;base64,{data}"/>'
                        f"<figcaption>{html.escape(png.stem)}</figcaption></figure>")
        md.append("")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top}img{max-width:100%}.supported{color:#176c2c;font-weight:bold}"
             ".not-supported{color:#a11;font-weight:bold}td a{color:inherit}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>twinlens report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(page)
    return table


def _verdict_html(verdicts: list[Verdict]) -> str:
    rows = ["<tr><th>§</th><th>claim</th><th>what this pair shows</th><th>number</th><th>control</th><th>holds here</th></tr>"]
    for v in verdicts:
        cls = v.holds.replace(" ", "-")
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (str(v.section), v.claim, v.shows or "-", v.number or "-", v.control or "-"))
            + f'<td class="{cls}"><a href="#{v.job}">{html.escape(v.holds)}</a></td></tr>'
        )
    return "<table>" + "".join(rows) + "</table>"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(write_report(sys.argv[1]))
