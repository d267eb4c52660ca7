"""The model organism: a synthetic reasoning task with known strategies, and the shipped
base / SFT / RL checkpoints trained on it (see ``organism/checkpoints/README.md``).

    import organism
    organism.checkpoint_path("base")      # Path to a shipped HF folder
    organism.list_checkpoints()           # every shipped name
    organism.checkpoint_info("rl-seed0")  # its training_info.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# TWINLENS_ORGANISM_CHECKPOINTS: another folder of checkpoints (e.g. a rebuild) to use instead.
CHECKPOINT_DIR = Path(os.environ.get("TWINLENS_ORGANISM_CHECKPOINTS")
                      or Path(__file__).resolve().parent / "checkpoints")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "training_info.json")


def list_checkpoints() -> list[str]:
    """Names of the shipped checkpoints (folders holding a complete HF checkpoint), sorted."""
    if not CHECKPOINT_DIR.is_dir():
        return []
    names = [d.name for d in CHECKPOINT_DIR.iterdir()
             if d.is_dir() and all((d / f).is_file() for f in REQUIRED_FILES)]

    def key(name: str):
        # alphabetical, each run's intermediate steps right after it in numeric order
        head, _, step = name.rpartition("-step")
        return (head or name, int(step) if step.isdigit() and head else -1)

    return sorted(names, key=key)


def checkpoint_path(name: str) -> Path:
    """Folder of the shipped checkpoint ``name`` (e.g. ``base``, ``rl-seed0``, ``rl-seed0-step10``)."""
    path = CHECKPOINT_DIR / name
    if name and "/" not in name and name in list_checkpoints():
        return path
    valid = ", ".join(list_checkpoints()) or "none (run scripts/train_organism.py)"
    raise LookupError(f"no shipped organism checkpoint named {name!r}; valid names: {valid}")


def checkpoint_info(name: str) -> dict:
    """The checkpoint's ``training_info.json`` (stage, step, compute spent, hyper-parameters)."""
    return json.loads((checkpoint_path(name) / "training_info.json").read_text())


__all__ = ["CHECKPOINT_DIR", "checkpoint_path", "checkpoint_info", "list_checkpoints"]
