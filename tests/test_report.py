"""The report: verdicts read from results.json, images embedded, no network needed to render."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from report import NOT_MEASURED, SUPPORTED, collect_verdicts, write_report  # noqa: E402


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


def test_verdicts_come_from_results_json_and_images_are_embedded(tmp_path):
    route = tmp_path / "route"
    route.mkdir()
    # Odd numbers nobody would type: the table must show exactly these.
    (route / "results.json").write_text(json.dumps({"routers": {"disagree": {
        "gap_recovered": {"value": 0.8771, "ci": [0.8123, 0.9345]}, "fraction_routed": 0.0431,
        "random_control": {"gap_recovered": {"value": 0.1111, "ci": [0.0512, 0.1733]}, "fraction_routed": 0.0431},
    }}}))
    (route / "summary.md").write_text("# Routing\n\n| router | gap |\n|---|---|\n| disagree | 0.88 |\n")
    _png(route / "gap_vs_budget.png")
    table = write_report(tmp_path)

    assert "0.877 (CI [0.812, 0.934]) at 0.043 routed" in table
    verdicts = {v.job: v for v in collect_verdicts(tmp_path)}
    assert verdicts["route"].holds == SUPPORTED
    assert verdicts["passk"].holds == NOT_MEASURED  # its job did not run

    page = (tmp_path / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert not re.search(r"(src|href)=\"https?://", page)  # renders offline
    assert all(link.lstrip("#") in parser.ids for link in parser.links if link.startswith("#route"))
    assert "route/gap_vs_budget.png" in (tmp_path / "report.md").read_text()


def test_a_failing_control_makes_the_claim_not_supported(tmp_path):
    route = tmp_path / "route"
    route.mkdir()
    (route / "results.json").write_text(json.dumps({"routers": {"disagree": {
        "gap_recovered": {"value": 0.9, "ci": [0.7, 1.0]}, "fraction_routed": 0.05,
        "random_control": {"gap_recovered": {"value": 0.8, "ci": [0.6, 0.95]}, "fraction_routed": 0.05},
    }}}))
    verdicts = {v.job: v for v in collect_verdicts(tmp_path)}
    assert verdicts["route"].holds == "not supported"  # the CIs overlap
