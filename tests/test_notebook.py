"""notebooks/explore.ipynb runs top to bottom on the shipped organism (the notebook workflow)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_explore_notebook_executes_and_finds_a_strategy_probe(monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip outputs before committing"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    line = next(ln for ln in text.splitlines() if ln.startswith("best layer"))
    auroc = float(line.split()[-1])
    # Verification is marked by `chk` in the organism: a probe on base activations finds it easily;
    # 0.9 is the bar for a strategy probe.
    assert auroc >= 0.9, line
    assert "updated fraction" in text
