#!/usr/bin/env python
"""One self-contained report from a demo folder: report.html (images embedded) + report.md.

    python scripts/report.py runs/demo

    python scripts/report.py runs/demo --positive runs/planted-true --negative runs/planted-false
    python scripts/report.py runs/demo --controls runs/demo/controls     # the default when it exists

It opens with the verdict table: for each claim of RESEARCH.md, what this pair shows, the number,
its negative control, its trivial explanation (token identity, construction, a uniform guesser,
chance, saturation), the positive control (the row's detector on organism checkpoints where its
claim is planted true / false: scripts/controls.py, read from FOLDER/controls), and one verdict of: supported / not supported /
undetermined / detector failed its positive control / not measured. The rules live in one module,
analyses/verdicts.py. Every number is read from the jobs' results.json files; verdicts.json holds
the table for programs.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyses.reporting import write_text_atomic  # noqa: E402
from analyses.verdicts import ROW_JOBS, Verdict, collect  # noqa: E402

JOBS_READ = ("probe", "steer", "route", "diff", "mechanism", "formats", "evaluate", "passk", "drift",
             "calibrate", "scaling", "mi_peaks")


def _load(out: Path, job: str) -> dict | None:
    path = out / job / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _load_rows(folder: Path) -> dict:
    """{row: results} from a demo folder of the rows' jobs run on planted checkpoints: a row's own
    sub-folder (``entropy``, ``shortcuts``) when there is one, else its job's."""
    out = {}
    for row, job in ROW_JOBS.items():
        results = _load(folder, row) if row != job else None
        out[row] = results if results is not None else _load(folder, job)
    return out


def collect_verdicts(out: Path, positives: Path | None = None, negatives: Path | None = None,
                     controls: Path | None = None) -> list[Verdict]:
    """The verdict table of a demo folder (rules: analyses/verdicts.py).

    Planted runs come from ``controls`` (a scripts/controls.py folder; default ``out/controls``
    when it exists) or from ``positives``/``negatives``: demo folders of the same jobs run on
    checkpoints where each claim is planted true / false (these win where both are given). Rows with
    no planted run say why (analyses/controls.py)."""
    from analyses.controls import load_controls, static_untested_reasons

    try:
        pos, neg, why = {}, {}, static_untested_reasons()
        controls = controls if controls is not None else (out / "controls" if (out / "controls").is_dir() else None)
        if controls is not None:
            pos, neg, why = load_controls(controls)
        if positives:
            pos.update({r: x for r, x in _load_rows(Path(positives)).items() if x is not None})
        if negatives:
            neg.update({r: x for r, x in _load_rows(Path(negatives)).items() if x is not None})
        results = {job: _load(out, job) for job in JOBS_READ}
        return collect(results, pos or None, neg or None, why)
    except Exception as exc:  # a malformed results.json must not sink the whole report
        return [Verdict(0, f"verdicts could not be read ({type(exc).__name__}: {exc})", "?")]


SECTION_ORDER = ["evaluate", "capture", "probe", "steer", "route", "diff", "mechanism", "passk",
                 "drift", "calibrate", "formats", "scaling", "mi_peaks"]


COLUMNS = ("§", "claim", "what this pair shows", "number", "negative control", "trivial explanation",
           "positive control", "verdict")


def _cells(v: Verdict) -> list[str]:
    return [str(v.section), v.claim, v.shows or "-", v.number or "-", v.control or "-", v.trivial or "-",
            v.positive_control or "-", v.outcome + (f" — {v.why}" if v.why else "")]


def verdict_markdown(verdicts: list[Verdict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for v in verdicts:
        cells = _cells(v)
        cells[-1] = f"[{v.outcome}](#{v.job})" + (f" — {v.why}" if v.why else "")
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
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


def made_with(folder: Path) -> str:
    """'Made with base=... (weights 1a2b3c4d5e6f); rl=...' from the job folder's job.json (the
    models that produced its numbers; a demo folder can hold jobs of different runs), or ''."""
    from analyses.jobdir import read_job_record
    from hooks import TwinlensError

    try:
        record = read_job_record(folder)
    except TwinlensError:
        return "job.json is damaged: which models made these numbers is unknown."
    if record is None:
        return ""
    parts = []
    for option, entry in (record.get("models") or {}).items():
        entries = entry if isinstance(entry, list) else [entry]
        shown = [f"{e.get('spec')}" + (f" (weights {e['weight_hash'][:12]})" if e.get("weight_hash") else "")
                 for e in entries if e]
        parts.append(f"{option}={', '.join(shown) if shown else 'the job default'}")
    state = "" if record.get("complete") else " (not finished)"
    return f"Made with {'; '.join(parts) or 'no model options'}{state}."


def write_report(out: str | Path, positives: str | Path | None = None, negatives: str | Path | None = None,
                 controls: str | Path | None = None) -> str:
    """Write out/report.md, out/report.html and out/verdicts.json; return the verdict table (markdown).
    Planted runs: see :func:`collect_verdicts`."""
    out = Path(out)
    verdicts = collect_verdicts(out, Path(positives) if positives else None, Path(negatives) if negatives else None,
                                Path(controls) if controls else None)
    (out / "verdicts.json").write_text(json.dumps([v.to_dict() for v in verdicts], indent=1))
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
        made = made_with(folder)
        if made:
            md += [made, ""]
            body.append(f"<p><em>{html.escape(made)}</em></p>")
        summary = folder / "summary.md"
        if summary.exists():
            text = summary.read_text()
            md += [text, ""]
            body.append(_markdown_to_html(text))
        elif not (folder / "results.json").exists():
            md += [f"Job did not finish; see logs/{job}.log.", ""]
            body.append(f"<p><em>Job did not finish; see logs/{job}.log.</em></p>")
        for png in sorted(folder.glob("*.png")):
            md.append(f"![{png.stem}]({job}/{png.name})")
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<figure><img alt="{png.stem}" src="data:image/png;base64,{data}"/>'
                        f"<figcaption>{html.escape(png.stem)}</figcaption></figure>")
        md.append("")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top}img{max-width:100%}.supported{color:#176c2c;font-weight:bold}"
             ".not-supported{color:#a11;font-weight:bold}.undetermined{color:#8a6d00;font-weight:bold}"
             ".detector{color:#6a1b9a;font-weight:bold}td a{color:inherit}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>twinlens report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    write_text_atomic(out / "report.md", "\n".join(md))
    write_text_atomic(out / "report.html", page)
    return table


def _verdict_html(verdicts: list[Verdict]) -> str:
    rows = ["<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"]
    for v in verdicts:
        cells = _cells(v)
        cls = v.outcome.split()[0] if v.outcome.startswith("detector") else v.outcome.replace(" ", "-")
        why = f"<br><small>{html.escape(v.why)}</small>" if v.why else ""
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells[:-1])
                    + f'<td class="{cls}"><a href="#{v.job}">{html.escape(v.outcome)}</a>{why}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a demo folder (one sub-folder per job)")
    ap.add_argument("--positive", help="demo folder of the same jobs on checkpoints where each claim is planted true")
    ap.add_argument("--negative", help="... and where each claim is planted false")
    ap.add_argument("--controls", help="a scripts/controls.py folder (default: FOLDER/controls when it exists)")
    args = ap.parse_args(argv)
    if args.controls and not Path(args.controls).is_dir():
        ap.error(f"--controls {args.controls}: no such folder (make it with scripts/controls.py --out DIR)")
    print(write_report(args.folder, positives=args.positive, negatives=args.negative, controls=args.controls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
