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
    v = Verdict(1, "Base models already hold the strategies; RL teaches when (probes, steering)", "probe")
    r = _load(out, "probe")
    if r is None:
        return v
    strategies = _get(r, "strategies", default={}) or {}
    rows = []
    ok = True
    for name, per_model in strategies.items():
        base = _get(per_model, "base", default={}) or {}
        auroc, control = _get(base, "auroc"), _get(base, "control_auroc")
        if isinstance(auroc, (int, float)) and isinstance(control, (int, float)):
            rows.append(f"{name}: {auroc:.2f} vs {control:.2f}")
            ok = ok and auroc >= 0.9 and control <= 0.6
    if not rows:
        return v
    v.shows = "best-layer base probe AUROC per strategy (held-out)"
    v.number = "; ".join(rows)
    v.control = "shuffled-label probe AUROC (after 'vs')"
    steer = _load(out, "steer")
    if steer is not None:
        v.shows += "; steering vs random vector: see the steering section"
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
    frac = _get(frac, "overall", default=frac) if isinstance(frac, dict) else frac
    rank = _get(r, "update_rank_mean")
    ov = _get(r, "overlap", 0, default={}) or {}
    v.shows = "updated fraction (|delta| > 1e-5), mean update rank, seed overlap"
    v.number = f"updated {_fmt(frac)}, rank {_fmt(rank)}, overlap o1 {_fmt(_get(ov, 'o1'))}"
    v.control = f"random overlap {_fmt(_get(ov, 'random_o1'))}; SFT updated {_fmt(_get(r, 'sft', 'updated_fraction', 'atol'))}"
    if isinstance(frac, (int, float)):
        v.holds = _holds(frac <= 0.3 and (not isinstance(rank, (int, float)) or rank >= 0.9))
    return v


def verdict_formats(out: Path) -> Verdict:
    v = Verdict(3, "Outputs collapse onto one format early in RL", "formats")
    r = _load(out, "formats")
    if r is None:
        return v
    step = _get(r, "collapse_step")
    v.shows = "first RL step where one format exceeds 90% of outputs"
    v.number = str(step)
    v.control = "format shares of the base (step 0), in the formats section"
    v.holds = _holds(step is not None)
    return v


def verdict_passk(out: Path) -> Verdict:
    v = Verdict(4, "RL beats base at every k (no crossover) — vs base overtakes at large k", "passk")
    r = _load(out, "passk")
    if r is None:
        return v
    k = _get(r, "crossover_k")
    ks = _get(r, "k", default=[])
    v.shows = "crossover k (first k where base pass@k >= RL pass@k)"
    v.number = f"crossover at k={k}" if k is not None else f"no crossover up to k={ks[-1] if ks else '?'}"
    v.control = "base pass@k curve with bootstrap CIs"
    v.holds = _holds(k is None)
    return v


def verdict_drift(out: Path) -> Verdict:
    v = Verdict(5, "Drift from the base: per-token KL between RL and base", "drift")
    r = _load(out, "drift")
    if r is None:
        return v
    kl_br, kl_rb = _get(r, "kl_base_rl"), _get(r, "kl_rl_base")
    kl_br = _get(kl_br, "mean", default=kl_br) if isinstance(kl_br, dict) else kl_br
    kl_rb = _get(kl_rb, "mean", default=kl_rb) if isinstance(kl_rb, dict) else kl_rb
    v.shows = "mean per-token KL(base||rl), KL(rl||base) in nats"
    v.number = f"{_fmt(kl_br)} / {_fmt(kl_rb)}"
    v.control = "KL of a model with itself is 0 (tested)"
    v.holds = "measured"
    return v


def verdict_shortcuts(out: Path) -> Verdict:
    v = Verdict(6, "Training on too-hard problems teaches shortcuts (length collapse)", "formats")
    r = _load(out, "formats")
    sc = _get(r, "shortcuts") if r else None
    if not sc:
        return v
    v.shows = "response length and answers without steps, rl-hard vs base"
    v.number = json.dumps(sc)[:160]
    v.holds = "measured"
    return v


def verdict_calibration(out: Path) -> Verdict:
    v = Verdict(7, "Binary-reward RL hurts calibration (ECE rises)", "calibrate")
    r = _load(out, "calibrate")
    if r is None:
        return v
    ece_b, ece_r = _get(r, "ece", "base"), _get(r, "ece", "rl")
    ece_b = _get(ece_b, "value", default=ece_b) if isinstance(ece_b, dict) else ece_b
    ece_r = _get(ece_r, "value", default=ece_r) if isinstance(ece_r, dict) else ece_r
    v.shows = "ECE (10 bins) base -> RL; Brier and AUROC in the section"
    v.number = f"{_fmt(ece_b)} -> {_fmt(ece_r)}"
    v.control = "reliability diagrams of both"
    if isinstance(ece_b, (int, float)) and isinstance(ece_r, (int, float)):
        v.holds = _holds(ece_r > ece_b)
    return v


def verdict_entropy(out: Path) -> Verdict:
    v = Verdict(8, "RL on a structured task lowers output entropy", "drift")
    r = _load(out, "drift")
    ent = _get(r, "entropy") if r else None
    if not ent:
        return v
    eb = _get(ent, "base", "mean", default=_get(ent, "base"))
    er = _get(ent, "rl", "mean", default=_get(ent, "rl"))
    v.shows = "mean next-token entropy on samples, base -> RL (nats)"
    v.number = f"{_fmt(eb)} -> {_fmt(er)}"
    if isinstance(eb, (int, float)) and isinstance(er, (int, float)):
        v.holds = _holds(er < eb)
    return v


def verdict_scaling(out: Path) -> Verdict:
    v = Verdict(9, "RL performance follows a sigmoid in compute", "scaling")
    r = _load(out, "scaling")
    if r is None:
        return v
    a, b, c = (_get(r, k) for k in ("A", "B", "C_mid"))
    a = _get(a, "value", default=a) if isinstance(a, dict) else a
    b = _get(b, "value", default=b) if isinstance(b, dict) else b
    c = _get(c, "value", default=c) if isinstance(c, dict) else c
    v.shows = "fitted asymptote A, efficiency B, midpoint C_mid over RL checkpoints"
    v.number = f"A={_fmt(a)}, B={_fmt(b)}, C_mid={_fmt(c, 1)}"
    v.control = "bootstrap CIs in the section"
    v.holds = "measured" if a is not None else NOT_MEASURED
    return v


def verdict_mi(out: Path) -> Verdict:
    v = Verdict(10, "Reasoning training creates sharper MI peaks than the base has", "mi_peaks")
    r = _load(out, "mi_peaks")
    if r is None:
        return v
    mb, mr = _get(r, "base", "mi_mean"), _get(r, "rl", "mi_mean")
    ab, ar = _get(r, "base", "aom"), _get(r, "rl", "aom")
    mb = _get(mb, "value", default=mb) if isinstance(mb, dict) else mb
    mr = _get(mr, "value", default=mr) if isinstance(mr, dict) else mr
    ab = _get(ab, "value", default=ab) if isinstance(ab, dict) else ab
    ar = _get(ar, "value", default=ar) if isinstance(ar, dict) else ar
    v.shows = "mean MI and AOM, base -> RL"
    v.number = f"MI {_fmt(mb)} -> {_fmt(mr)}; AOM {_fmt(ab)} -> {_fmt(ar)}"
    v.control = "peaks at strategy tokens vs chance, in the section"
    if all(isinstance(x, (int, float)) for x in (mb, mr)):
        v.holds = _holds(mr > mb)
    return v


def verdict_mechanism(out: Path) -> Verdict:
    v = Verdict(2, "RL mostly suppresses wrong trajectories (NSR) rather than amplifying right ones", "mechanism")
    r = _load(out, "mechanism")
    if r is None:
        return v
    share = _get(r, "suppression_share")
    share = _get(share, "value", default=share) if isinstance(share, dict) else share
    v.shows = "share of moved probability mass that lowered incorrect base samples"
    v.number = _fmt(share)
    v.control = "delta log p of correct vs incorrect samples, in the section"
    if isinstance(share, (int, float)):
        v.holds = _holds(share > 0.5)
    return v


EXTRACTORS: list[Callable[[Path], Verdict]] = [
    verdict_strategies, verdict_hybrid, verdict_sparsity, verdict_mechanism, verdict_formats,
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
             ".not-supported{color:#a11;font-weight:bold}")
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
