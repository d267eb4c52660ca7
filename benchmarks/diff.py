"""Benchmark: streaming weight diff against a plain sequential read of the same files.

    python benchmarks/diff.py                  # ~1 GB bf16 pair (2 x ~470 MB, 2 shards each + index)
    python benchmarks/diff.py --dtype fp32 --size-gb 1.0

Writes a synthetic Llama-shaped checkpoint pair (RL = base with ~20% of entries changed) to a
temp folder, then measures, each in a fresh subprocess so peak RSS (VmHWM) is not shared:
  baseline  the interpreter with torch, safetensors and analyses.subnetworks imported;
  read      a plain sequential read of every file of both checkpoints (16 MB readinto);
  diff      analyses.subnetworks.diff_weights (masks at three tolerances, per tensor / module /
            layer counts; rank and spectra off: they are SVDs, compute-bound, not streaming),
            with the engine of --engine (default auto: the fused numba kernels). Its one-time
            start-up (numba import, LLVM, cached kernels: ``prepare_engine``) is timed apart,
            like the imports, and an end-to-end ratio that includes it is printed too.
Both read and diff run "cold" (the VM's page cache for the files dropped with
POSIX_FADV_DONTNEED first; the host may still cache the disk) and "warm" (files in page cache).
Prints throughput ratio = read time / diff time (target >= 0.5) and peak RSS ratio =
diff VmHWM / (largest tensor + baseline VmHWM) (target <= 3). Takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vm_hwm_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, base: str, rl: str, engine: str) -> None:
    import torch  # noqa: F401  (part of the baseline)

    import analyses.subnetworks as sn  # noqa: F401

    result: dict = {}
    if mode == "diff":
        t0 = time.perf_counter()
        result["engine"] = sn.prepare_engine(engine)
        result["startup_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mode == "read":
        buf = bytearray(16 << 20)
        view = memoryview(buf)
        total = 0
        for folder in (base, rl):
            for f in sorted(Path(folder).glob("*.safetensors")):
                with open(f, "rb", buffering=0) as fh:
                    while n := fh.readinto(view):
                        total += n
        result["bytes"] = total
    elif mode == "diff":
        d = sn.diff_weights(base, rl, rank=False, spectral=False, progress=False, engine=engine)
        result["updated_fraction"] = d.updated_fraction
        result["n_params"] = d.overall.n_params
    result["seconds"] = time.perf_counter() - t0
    result["vm_hwm"] = vm_hwm_bytes()
    print(json.dumps(result))


def run_child(mode: str, base: Path, rl: Path, engine: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(base), str(rl), engine], check=True,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def evict(folders: list[Path]) -> None:
    """Drop the files from this machine's page cache (clean pages only, hence the fsync)."""
    for folder in folders:
        for f in folder.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def write_pair(root: Path, size_gb: float, dtype_name: str, seed: int = 0) -> tuple[Path, Path, int, int]:
    """Base and RL checkpoints (2 shards + index each). Returns (base, rl, total bytes, largest tensor bytes)."""
    import torch
    from safetensors.torch import save_file

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    esize = torch.tensor([], dtype=dtype).element_size()
    target = size_gb * 1e9 / 2 / esize  # elements per checkpoint
    d, f, vocab = 2048, 5632, 32000
    per_layer = 4 * d * d + 3 * d * f + 2 * d
    n_layers = max(1, round((target - 2 * vocab * d) / per_layer))
    shapes = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (d, d),
                       p + "self_attn.k_proj.weight": (d, d), p + "self_attn.v_proj.weight": (d, d),
                       p + "self_attn.o_proj.weight": (d, d), p + "post_attention_layernorm.weight": (d,),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (vocab, d)
    names = list(shapes)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    g = torch.Generator().manual_seed(seed)
    folders = (root / "base", root / "rl")
    for folder in folders:
        folder.mkdir(parents=True)
    weight_map = {}
    for s, part in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        tb, tr = {}, {}
        for n in part:
            w = (torch.randn(shapes[n], generator=g) * 0.02).to(dtype)
            changed = torch.rand(shapes[n], generator=g) < 0.2
            tb[n] = w
            tr[n] = torch.where(changed, (w.float() + 1e-3).to(dtype), w)
            weight_map[n] = fname
        save_file(tb, str(folders[0] / fname))
        save_file(tr, str(folders[1] / fname))
        del tb, tr
    for folder in folders:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    total = sum(f.stat().st_size for folder in folders for f in folder.glob("*.safetensors"))
    largest = max(math.prod(s) for s in shapes.values())
    return folders[0], folders[1], total, largest * esize


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of the pair on disk")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for each timing")
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints (default: system temp)")
    ap.add_argument("--engine", choices=["auto", "fused", "numpy"], default="auto",
                    help="change-counting engine of the diff (numpy: the reference implementation)")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "BASE", "RL", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    root = Path(tempfile.mkdtemp(prefix="twinlens-diff-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        base, rl, total, largest = write_pair(root, args.size_gb, args.dtype)
        print(f"wrote {total / 1e9:.2f} GB ({args.dtype}, 2 checkpoints x 2 shards) in "
              f"{time.perf_counter() - t0:.1f} s; largest tensor {largest / 1e6:.0f} MB")
        baseline = run_child("baseline", base, rl, args.engine)["vm_hwm"]
        rows = {}
        for cache in ("cold", "warm"):
            if cache == "warm":
                run_child("read", base, rl, args.engine)  # everything into the page cache
            for mode in ("read", "diff"):
                best = None
                for _ in range(args.repeats):
                    if cache == "cold":
                        evict([base, rl])
                    r = run_child(mode, base, rl, args.engine)
                    if best is None or r["seconds"] < best["seconds"]:
                        best = r
                rows[(cache, mode)] = best
        diff_uf = rows[("warm", "diff")]["updated_fraction"]
        startup = min(rows[(c, "diff")]["startup_seconds"] for c in ("cold", "warm"))
        print(f"CPUs usable: {len(os.sched_getaffinity(0))}; load average at the end: "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"interpreter baseline VmHWM: {baseline / 1e6:.0f} MB; updated fraction found: "
              f"exact {diff_uf['exact']:.4f} (planted ~0.2); engine {rows[('warm', 'diff')]['engine']}, "
              f"one-time start-up per process {startup:.2f} s (not in the diff times below)")
        print(f"{'cache':6} {'job':5} {'seconds':>8} {'GB/s':>7} {'peak RSS MB':>12}")
        for (cache, mode), r in rows.items():
            print(f"{cache:6} {mode:5} {r['seconds']:8.3f} {total / r['seconds'] / 1e9:7.2f} {r['vm_hwm'] / 1e6:12.0f}")
        budget = largest + baseline
        for cache in ("cold", "warm"):
            ratio = rows[(cache, "read")]["seconds"] / rows[(cache, "diff")]["seconds"]
            e2e = rows[(cache, "read")]["seconds"] / (rows[(cache, "diff")]["seconds"] + startup)
            print(f"throughput ratio diff/read ({cache} cache): {ratio:.2f}  (target >= 0.5); "
                  f"end to end with the start-up: {e2e:.2f}")
        peak = max(rows[(c, "diff")]["vm_hwm"] for c in ("cold", "warm"))
        print(f"peak RSS ratio diff / (largest tensor + baseline): {peak / budget:.2f}  (target <= 3)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
