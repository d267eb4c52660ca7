"""Convert a pickle checkpoint folder to safetensors, loading with weights_only=True.

    python -m hooks.convert FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def convert_to_safetensors(folder: str | Path) -> Path:
    folder = Path(folder)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")):
        # weights_only=True refuses arbitrary objects: only tensors and plain containers load.
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    if not state:
        raise SystemExit(f"No *.bin or *.pt checkpoint in {folder}.")
    seen: dict[int, str] = {}
    out = {}
    for name, t in state.items():
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # tied weights: safetensors stores each storage once
            continue
        seen[ptr] = name
        out[name] = t.contiguous()
    target = folder / "model.safetensors"
    save_file(out, str(target), metadata={"format": "pt"})
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(convert_to_safetensors(sys.argv[1]))
