#!/usr/bin/env python
"""LinearProbe at a real model's width: time, peak memory and accuracy against scikit-learn.

    python benchmarks/probe_width.py                  # SmolLM2-135M shapes, 10.8k rows, 2 threads
    python benchmarks/probe_width.py --sk-layers all  # scikit-learn on every layer (slow)
    python benchmarks/probe_width.py --layers 2,15,29 --sk-layers 2,15,29   # a subset (busy machine)

Data: a random-weight Llama with SmolLM2-135M's shapes (30 layers, d_model 576, 9 heads / 3 KV
heads, MLP 1536; vocabulary cut to 8192 since the head is never run) reads 84 sequences x 128
Zipf-distributed random tokens = 10,752 rows; its 30 block outputs are the features. Real
residual streams carry a few massive dimensions (SmolLM2 up to 8e3, Gemma 3 270M up to 8e4;
MEASUREMENTS.md), a random-weight model does not, so they are planted in the captured
activations from layer 2 on: three dimensions at 3e3 / 2e4 / 8e4 (+-10%) on every token, and
1e5 on one dimension at every sequence's first token. Targets, as in scripts/probe.py: three
"strategies" (token at t or t-1 in a random 3% of the vocabulary: a 2-token segment) and three
label-shuffled controls each = 12 binary problems per layer; train on 63 sequences, test on 21.

Run: the probe fit (`probes.sweep`'s call: one multilabel `LinearProbe(C=1, balanced)` over all
layers) runs in a fresh subprocess that memory-maps the activations, so its peak RSS is the fit's
(with the data it reads); then scikit-learn's `StandardScaler -> LogisticRegression(lbfgs,
tol=1e-6)` per layer and target on --sk-layers (default 6 of the 30, all 12 targets: the full 360
fits take many minutes on 2 cores), scored on the same test rows. Prints the fit's time and peak
RSS against the targets (<= 120 s, <= 2 GB), the accuracy and AUROC of both per compared layer,
the largest gaps and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

N_SEQ, SEQ_LEN, VOCAB = 84, 128, 8192
MASSIVE = ((11, 3e3), (230, 2e4), (407, 8e4))  # (dimension, magnitude) on every token
SPIKE = (97, 1e5)  # (dimension, value) at each sequence's first token


def make_activations(folder: Path, threads: int, seed: int = 0) -> None:
    """Write X.npy [30, rows, 576] float32, Y.npy [rows, 3] bool, seq.npy [rows] to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.1  # Zipf-like token frequencies
    tokens = rng.choice(VOCAB, size=(N_SEQ, SEQ_LEN), p=p / p.sum())
    X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float32,
                                  shape=(30, N_SEQ * SEQ_LEN, 576))
    with torch.no_grad():
        for i in range(0, N_SEQ, 12):
            out = model.model(input_ids=torch.as_tensor(tokens[i : i + 12]), output_hidden_states=True)
            h = torch.stack(out.hidden_states[1:])  # [30, b, T, d] block outputs
            X[:, i * SEQ_LEN : (i + h.shape[1]) * SEQ_LEN] = h.reshape(30, -1, 576).numpy()
    for layer in range(2, 30):
        for dim, mag in MASSIVE:
            X[layer, :, dim] += mag * (1 + 0.1 * rng.standard_normal(X.shape[1])).astype(np.float32)
        X[layer, :: SEQ_LEN, SPIKE[0]] = SPIKE[1]
    X.flush()
    flat = tokens.reshape(-1)
    prev = np.concatenate([[-1], flat[:-1]])
    prev[::SEQ_LEN] = -1
    Y = np.stack([np.isin(flat, s) | np.isin(prev, s)
                  for s in (rng.choice(np.arange(50, VOCAB), size=VOCAB * 3 // 100, replace=False) for _ in range(3))], 1)
    np.save(folder / "Y.npy", Y)
    np.save(folder / "seq.npy", np.repeat(np.arange(N_SEQ), SEQ_LEN))


def targets(folder: Path, n_controls: int = 3):
    """(train rows, test rows, Y_train [n_tr, K], Y_test [n_te, K], names): strategies then
    their label-shuffled controls (permuted across training rows, as probes.sweep does)."""
    Y, seq = np.load(folder / "Y.npy"), np.load(folder / "seq.npy")
    tr, te = np.nonzero(seq < 63)[0], np.nonzero(seq >= 63)[0]
    rng = np.random.default_rng(1)
    shuffled = [Y[tr][rng.permutation(tr.size), k] for _ in range(n_controls) for k in range(Y.shape[1])]
    Ytr = np.concatenate([Y[tr], np.stack(shuffled, 1)], 1)
    Yte = np.concatenate([Y[te]] * (n_controls + 1), 1)
    names = [f"s{k}" for k in range(Y.shape[1])] + [f"s{k}-ctrl{r}" for r in range(n_controls) for k in range(Y.shape[1])]
    return tr, te, Ytr, Yte, names


def fit_probe(folder: Path, threads: int, layers: list[int] | None = None) -> None:
    """In a fresh process: fit the probe (on `layers`, default all), save its test logits, print
    time / RSS / iterations as JSON."""
    import warnings

    import torch

    from probes.linear_probe import LinearProbe

    torch.set_num_threads(threads)
    tr, te, Ytr, _, _ = targets(folder)
    X = np.load(folder / "X.npy", mmap_mode="r")
    if layers is not None:
        X = X[layers]
    t, c = time.perf_counter(), time.process_time()  # process_time: every thread's CPU time
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Xtr = torch.from_numpy(np.ascontiguousarray(X[:, tr]))  # what sweep_strategies passes: ds.X[:, tr]
        probe = LinearProbe(C=1.0, class_weight="balanced", max_iter=1000).fit(Xtr, Ytr)
        del Xtr
    t_fit, c_fit = time.perf_counter() - t, time.process_time() - c
    ru = resource.getrusage(resource.RUSAGE_SELF)
    scores = probe.decision_function(np.ascontiguousarray(X[:, te]))  # [L, n_te, K]
    np.save(folder / "probe_scores.npy", scores)
    print(json.dumps({"seconds": t_fit, "cpu_seconds": c_fit, "peak_rss_gb": ru.ru_maxrss / 2**20,
                      "n_iter": probe.n_iter_, "converged": bool(probe.converged_),
                      "warnings": [str(w.message) for w in caught]}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sk-layers", default="0,2,8,15,22,29", help="layers scikit-learn fits ('all' or a comma list)")
    ap.add_argument("--data", help="keep the activations in this folder (reused when present)")
    ap.add_argument("--layers", default="all",
                    help="layers the probe is fitted on ('all' or a comma list: a subset for a busy machine)")
    ap.add_argument("--_fit", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fit_layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    if args._fit:
        fit_probe(Path(args._fit), args.threads, fit_layers)
        return 0
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    tmp = tempfile.TemporaryDirectory(prefix="twinlens-probe-width-")
    folder = Path(args.data or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "Y.npy").exists():
        t = time.perf_counter()
        make_activations(folder, args.threads)
        print(f"activations: random-weight SmolLM2-shaped model, {time.perf_counter() - t:.0f} s")
    X = np.load(folder / "X.npy", mmap_mode="r")
    tr, te, Ytr, Yte, names = targets(folder)
    L, K = X.shape[0], len(names)
    print(f"data: {L} layers x {X.shape[1]} rows x {X.shape[2]} dims ({tr.size} train / {te.size} test); "
          f"|activation| max {float(np.abs(X[-1]).max()):.3g}; {K} targets {names}; {args.threads} thread(s)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--_fit", str(folder), "--threads", str(args.threads),
                           "--layers", args.layers],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        print(proc.stdout, proc.stderr)
        return 1
    fit = json.loads(proc.stdout.strip().splitlines()[-1])
    scores = np.load(folder / "probe_scores.npy")
    fitted = list(range(L)) if fit_layers is None else fit_layers
    L = len(fitted)
    print(f"LinearProbe (one batched fit, {L} layers x {K} targets): {fit['seconds']:.1f} s wall (target <= 120), "
          f"{fit['cpu_seconds']:.1f} s CPU over {args.threads} thread(s) (on a busy machine wall time "
          f"overstates; CPU / threads is the wall time on idle cores), "
          f"peak RSS {fit['peak_rss_gb']:.2f} GB (target <= 2), {fit['n_iter']} iterations, "
          f"converged={fit['converged']}, warnings={fit['warnings']}")
    layers = fitted if args.sk_layers == "all" else [int(x) for x in args.sk_layers.split(",")]
    if not set(layers) <= set(fitted):
        ap.error(f"--sk-layers {layers} must be among the fitted --layers {fitted}")
    gaps_acc, gaps_auc, acc_p, acc_s = [], [], [], []
    t, c = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=args.threads):
        for layer in layers:
            Xtr, Xte = np.asarray(X[layer, tr], np.float64), np.asarray(X[layer, te], np.float64)
            li = fitted.index(layer)  # the probe's index of this layer
            row = []
            for k in range(K):
                sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000,
                                                                        tol=1e-6)).fit(Xtr, Ytr[:, k])
                a_s = sk.score(Xte, Yte[:, k])
                a_p = float(((scores[li, :, k] > 0) == Yte[:, k]).mean())
                u_s = roc_auc_score(Yte[:, k], sk.decision_function(Xte))
                u_p = roc_auc_score(Yte[:, k], scores[li, :, k])
                gaps_acc.append(abs(a_p - a_s))
                gaps_auc.append(abs(u_p - u_s))
                acc_p.append(a_p)
                acc_s.append(a_s)
                row.append(f"{names[k]}={a_p:.3f}/{a_s:.3f}")
            print(f"  layer {layer:2d} accuracy probe/sklearn: " + " ".join(row[:3]) + "  (controls: "
                  + " ".join(row[3:6]) + " ...)")
    t_sk, c_sk = time.perf_counter() - t, time.process_time() - c
    per_fit = len(layers) * K
    n_all = len(fitted) * K  # the fits LinearProbe made
    print(f"scikit-learn: {per_fit} pipelines (StandardScaler -> LogisticRegression) on layers {layers}: "
          f"{t_sk:.1f} s wall, {c_sk:.1f} s CPU ({t_sk / per_fit * n_all:.0f} s wall, {c_sk / per_fit * n_all:.0f} s CPU "
          f"extrapolated to the probe's {n_all} fits)")
    print(f"ratio LinearProbe / scikit-learn on the same {n_all} fits: CPU {fit['cpu_seconds'] / (c_sk / per_fit * n_all):.3f}, "
          f"wall {fit['seconds'] / (t_sk / per_fit * n_all):.3f} (the CPU ratio holds on a busy machine)")
    print(f"accuracy: max |probe - sklearn| {max(gaps_acc) * 100:.2f} points over {len(gaps_acc)} fits; "
          f"mean accuracy ratio probe/sklearn {np.mean(acc_p) / np.mean(acc_s):.4f}; "
          f"max AUROC gap {max(gaps_auc):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
