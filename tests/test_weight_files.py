"""Loading errors from the weights file (issue 17, kind E): a damaged model.safetensors is a
TwinlensError naming the file, the same from load_model and from the weight-diff reader (one
shared header check), and the pickle converter says a malicious file holds code and was not
loaded, with no torch traceback advising weights_only=False."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hooks import TwinlensError, load_model
from hooks.convert import convert_to_safetensors
from hooks.safetensors_files import read_safetensors_header

ROOT = Path(__file__).resolve().parents[1]


def damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    return dst


DAMAGES = {
    "truncated": (lambda b: b[: len(b) - 1000], "cut short"),
    "garbage": (lambda b: b"\x00garbage, not weights" * 50, "does not fit the file"),
    "tiny": (lambda b: b"abc", "shorter than the 8-byte header length"),
    "header_not_json": (lambda b: struct.pack("<Q", 16) + b"{not json at all" + b[24:], "header is not JSON"),
    "trailing_bytes": (lambda b: b + b"\x00" * 64, "64 bytes after the last tensor"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_a_damaged_model_safetensors_is_named_by_load_model_and_by_the_diff_reader(tiny_models, tmp_path, kind):
    from analyses.subnetworks.checkpoint_files import SafetensorsCheckpoint

    damage, words = DAMAGES[kind]
    folder = damaged_copy(tiny_models["llama"], tmp_path / kind, damage)
    target = str(folder / "model.safetensors")
    with pytest.raises(TwinlensError, match="not a valid safetensors file") as exc:
        load_model(folder)
    assert target in str(exc.value) and words in str(exc.value), str(exc.value)
    with pytest.raises(TwinlensError) as exc2:
        SafetensorsCheckpoint(folder)
    assert str(exc2.value) == str(exc.value)  # one check, one message


def test_the_header_reader_accepts_every_shipped_and_tiny_checkpoint(tiny_models):
    import organism

    files = [f for c in organism.list_checkpoints() for f in organism.checkpoint_path(c).glob("*.safetensors")]
    files += [tiny_models[a] / "model.safetensors" for a in ("llama", "qwen2", "gpt2")]
    for f in files:
        header = read_safetensors_header(f)
        assert header and all(info["end"] <= f.stat().st_size for info in header.values())


class _Evil:
    def __reduce__(self):
        return (print, ("PWNED: the pickle ran",))


def test_converter_refuses_a_malicious_pickle_saying_it_holds_code(tmp_path, capfd):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"w": torch.zeros(2), "payload": _Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(TwinlensError, match=r"holds code, not only weights: unpickling it would call .*print") as exc:
        convert_to_safetensors(folder)
    assert "not loaded and nothing ran" in str(exc.value) and "weights_only=False" not in str(exc.value)
    assert "PWNED" not in capfd.readouterr().out
    assert not (folder / "model.safetensors").exists()


def test_converter_cli_on_a_malicious_pickle_exits_2_without_a_traceback(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"payload": _Evil()}, folder / "pytorch_model.bin")
    res = subprocess.run([sys.executable, "-m", "hooks.convert", str(folder)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert "holds code" in res.stderr and "Traceback" not in res.stderr
    assert "weights_only" not in res.stderr and "PWNED" not in res.stdout + res.stderr


@pytest.mark.parametrize("content, words", [
    (b"not a pickle at all", "not a pickle checkpoint twinlens can read"),
    ("list", "holds a list, not a state dict of tensors"),
    ("truncated", "damaged or not a PyTorch checkpoint"),
])
def test_converter_names_damaged_and_non_state_dict_files(tmp_path, content, words):
    folder = tmp_path / "ck"
    folder.mkdir()
    f = folder / "pytorch_model.bin"
    if content == "list":
        torch.save([torch.zeros(2)], f)
    elif content == "truncated":
        torch.save({"w": torch.zeros(100)}, f)
        f.write_bytes(f.read_bytes()[:300])
    else:
        f.write_bytes(content)
    with pytest.raises(TwinlensError, match=words):
        convert_to_safetensors(folder)


def test_converter_without_a_checkpoint_is_a_twinlens_error_not_systemexit(tmp_path):
    with pytest.raises(TwinlensError, match=r"No \*.bin or \*.pt checkpoint"):
        convert_to_safetensors(tmp_path)
    with pytest.raises(TwinlensError, match="is not a folder"):
        convert_to_safetensors(tmp_path / "missing")
