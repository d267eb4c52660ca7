"""The report: verdicts read from results.json, images embedded, no network needed to render."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from report import collect_verdicts, write_report  # noqa: E402

from analyses.verdicts import NOT_MEASURED, SUPPORTED, UNDETERMINED  # noqa: E402


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def _route_results(gap, gap_ci, rnd_ci, frac=0.0431):
    return {"accuracy_base": 0.4, "accuracy_rl": 0.9, "routers": {
        "disagree": {"gap_recovered": {"value": 1.0, "ci": [1.0, 1.0]}, "fraction_routed": 0.0312,
                     "random_control": {"gap_recovered": {"value": 0.06, "ci": [0.0, 0.1]}}},
        "steered_disagree": {"gap_recovered": {"value": gap, "ci": gap_ci}, "fraction_routed": frac,
                             "random_control": {"gap_recovered": {"value": 0.1111, "ci": rnd_ci},
                                                "fraction_routed": frac}},
    }}


def test_verdicts_come_from_results_json_and_images_are_embedded(tmp_path):
    route = tmp_path / "route"
    route.mkdir()
    # Odd numbers nobody would type: the table must show exactly these.
    (route / "results.json").write_text(json.dumps(_route_results(0.8771, [0.8123, 0.9345], [0.0512, 0.1733])))
    (route / "summary.md").write_text("# Routing\n\n| router | gap |\n|---|---|\n| disagree | 0.88 |\n")
    _png(route / "gap_vs_budget.png")
    table = write_report(tmp_path)

    assert "steered_disagree 0.877 [0.812, 0.934] at 0.043 routed" in table
    assert "needed at 3.1% of positions" in table  # the tautological router, reported as what it is
    verdicts = {v.job: v for v in collect_verdicts(tmp_path)}
    assert verdicts["route"].outcome == SUPPORTED
    assert verdicts["passk"].outcome == NOT_MEASURED  # its job did not run
    saved = json.loads((tmp_path / "verdicts.json").read_text())
    assert {r["job"]: r["outcome"] for r in saved}["route"] == SUPPORTED

    page = (tmp_path / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert not re.search(r"(src|href)=\"https?://", page)  # renders offline
    assert all(link.lstrip("#") in parser.ids for link in parser.links if link.startswith("#route"))
    assert "route/gap_vs_budget.png" in (tmp_path / "report.md").read_text()


def test_overlapping_random_control_leaves_the_claim_undetermined(tmp_path):
    route = tmp_path / "route"
    route.mkdir()
    (route / "results.json").write_text(json.dumps(_route_results(0.9, [0.7, 1.0], [0.6, 0.95], frac=0.05)))
    verdicts = {v.job: v for v in collect_verdicts(tmp_path)}
    assert verdicts["route"].outcome == UNDETERMINED  # the CIs overlap: the hybrid is not shown to beat chance


def test_report_reads_positive_controls_from_a_second_folder(tmp_path):
    here, pos = tmp_path / "here", tmp_path / "planted"
    for folder, gap in ((here, [0.1, 0.3]), (pos, [0.1, 0.3])):
        (folder / "route").mkdir(parents=True)
        (folder / "route" / "results.json").write_text(json.dumps(_route_results(0.2, gap, [0.0, 0.05])))
    verdicts = {v.job: v for v in collect_verdicts(here, positives=pos)}
    # The detector says "not supported" on the planted-true pair too: it is blind, not the claim false.
    assert verdicts["route"].outcome == "detector failed its positive control"
