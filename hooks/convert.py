"""Convert checkpoints twinlens refuses to load into safetensors folders it loads.

    python -m hooks.convert FOLDER              pickle (*.bin, *.pt) -> FOLDER/model.safetensors
    python -m hooks.convert --gguf FILE OUT     GGUF file -> safetensors folder OUT (+ tokenizer)

GGUF: transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``, needs the
``gguf`` package: ``pip install 'twinlens[real]'``) and de-quantizes its tensors to plain float32,
but it keeps the GGUF quantizer on the model, so ``save_pretrained`` refuses ("quantized with gguf
and is not serializable"). The weights are already plain float32: clearing the quantizer state
(``model.hf_quantizer``, ``config.quantization_config``) is all that is needed, and the saved
folder reloads with identical logits (tests/test_real_smollm2.py).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from hooks.errors import TwinlensError


def load_pickle_weights(file: Path) -> dict[str, torch.Tensor]:
    """{name: tensor} of one pickle checkpoint, loaded with ``torch.load(weights_only=True)``,
    which never runs code from the file. Raises TwinlensError (never torch's own traceback, whose
    advice to retry with ``weights_only=False`` would run that code) when the file holds code or
    objects other than tensors, is damaged, or is not a {name: tensor} state dict."""
    try:
        # weights_only=True refuses arbitrary objects: only tensors and plain containers load.
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise TwinlensError(
                f"{file} holds code, not only weights: unpickling it would call {', '.join(found[:3])}. It was "
                "not loaded and nothing ran. twinlens converts only plain tensors; get a safetensors copy "
                "of these weights from their publisher (or re-save them, in a sandbox, as a plain "
                "state dict)."
            ) from None
        raise TwinlensError(
            f"{file} is not a pickle checkpoint twinlens can read (it holds objects other than tensors, "
            "or is damaged); it was not loaded and nothing ran. Get a safetensors copy of the weights."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TwinlensError(
            f"{file} is damaged or not a PyTorch checkpoint ({exc.__class__.__name__}); re-download or "
            "re-save it."
        ) from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        kind = type(state).__name__ if not isinstance(state, dict) else f"dict with keys {list(state)[:5]}"
        raise TwinlensError(
            f"{file} holds a {kind}, not a state dict of tensors; save model.state_dict() (or pass the "
            "folder of a save_pretrained checkpoint)."
        )
    return state


def convert_to_safetensors(folder: str | Path) -> Path:
    """Rewrite the pickle checkpoints of `folder` as ``folder/model.safetensors``.

    Loads with ``torch.load(weights_only=True)``, which refuses arbitrary objects; tied weights
    (one storage under two names) are stored once. Returns the written file's path. Raises
    TwinlensError for a missing folder, no checkpoint, or a file that holds code, is damaged or
    is not a state dict (see load_pickle_weights).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TwinlensError(f"{folder} is not a folder; pass the folder that holds the *.bin / *.pt checkpoint.")
    files = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    if not files:
        raise TwinlensError(f"No *.bin or *.pt checkpoint in {folder}.")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_pickle_weights(f))
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


def convert_gguf(gguf_file: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """De-quantize a GGUF checkpoint into a safetensors model folder `out` (model + tokenizer).

    `gguf_file`: a ``*.gguf`` file (one file; split GGUFs are not supported by transformers).
    `out`: a folder that does not exist or is empty. `dtype`: the saved weights' dtype (float32
    keeps the de-quantized values exactly). Returns `out`.

    Raises TwinlensError, before any loading, if the file is missing or not a GGUF file, if `out`
    holds files, or if the ``gguf`` package is missing (it names the install command).
    """
    gguf_file, out = Path(gguf_file).expanduser(), Path(out).expanduser()
    if not gguf_file.is_file():
        raise TwinlensError(f"GGUF file {str(gguf_file)!r} does not exist; pass the path of a *.gguf file.")
    with open(gguf_file, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise TwinlensError(f"{gguf_file} is not a GGUF file (its first bytes are not 'GGUF').")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TwinlensError(f"Output {out} exists and is not an empty folder; pass a new folder.")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader imports it lazily, with a vaguer error)
    except ImportError:
        raise TwinlensError(
            "Reading GGUF needs the `gguf` package: pip install 'twinlens[real]' (or pip install gguf)."
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The tensors are de-quantized already; the quantizer left on the model only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m hooks.convert",
        description="Convert a pickle checkpoint folder, or a GGUF file, to safetensors.",
    )
    parser.add_argument("folder", nargs="?", help="pickle checkpoint folder (writes model.safetensors into it)")
    parser.add_argument("--gguf", nargs=2, metavar=("FILE", "OUT"),
                        help="GGUF file to de-quantize into the safetensors folder OUT")
    args = parser.parse_args(argv)
    if (args.folder is None) == (args.gguf is None):
        parser.error("give either FOLDER (pickle checkpoints) or --gguf FILE OUT")
    try:
        result = convert_gguf(*args.gguf) if args.gguf else convert_to_safetensors(args.folder)
    except TwinlensError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(result)
    return result


if __name__ == "__main__":
    main()
