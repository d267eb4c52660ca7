#!/usr/bin/env python
"""Batched torch probe sweep vs a per-layer scikit-learn loop, on the same data.

    python benchmarks/probe_sweep.py                 # the shipped organism's real activations
    python benchmarks/probe_sweep.py --synthetic     # LM-shaped synthetic activations

The sweep `probes.sweep.sweep_strategies` runs: for every layer, every strategy's probe and its
shuffled-label controls (3 shuffles each, as in scripts/probe.py; L2 logistic regression, same
C and class weights). torch: ONE batched
batched run of a multilabel `LinearProbe` over all layers and targets (Newton up to 2048 features). scikit-learn: a
`LogisticRegression(solver="lbfgs", tol=1e-6)` per layer and target. Both are scored on the
same held-out rows. Prints the wall time of each, the speed ratio (target >= 5x) and the
held-out accuracy of both per layer and target (target: within 1 point), from one run, after a
small warm-up fit of each (first-call library initialisation is not the sweep). Both sides get
the same number of CPU threads (--threads, default 1).

Organism (default): base model, 300 held-out problems x 2 samples, every block output, the
three strategies (+ controls), reasoning tokens, split by trace. Synthetic: 24 layers x 256
dims, 12,000 train / 4,000 test tokens in traces of 40, three strategies linearly encoded with
a depth profile, on correlated activations whose scale grows with depth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from probes.linear_probe import LinearProbe  # noqa: E402


def synthetic(n_layers=24, d=256, n_train=12000, n_test=4000, n_strategies=3, seed=0):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    Y = np.zeros((n, n_strategies), dtype=bool)
    for k in range(n_strategies):
        for start in range(0, n, 40):  # traces of 40 tokens, one or two segments each
            for s in rng.choice(np.arange(2, 36, 6), size=rng.integers(1, 3), replace=False):
                Y[start + s : start + s + 3, k] = True
    directions = rng.normal(size=(n_strategies, d)) / np.sqrt(d)
    shared = rng.normal(size=(n, d // 4))
    X = np.empty((n_layers, n, d), dtype=np.float32)
    for layer in range(n_layers):
        mix = rng.normal(size=(d // 4, d)) / np.sqrt(d // 4)
        strength = 1.5 * np.sin(np.pi * (layer + 1) / (n_layers + 1))
        X[layer] = (shared @ mix + rng.normal(size=(n, d)) + strength * Y @ directions) * (1 + 0.2 * layer)
    return X[:, :n_train], Y[:n_train], X[:, n_train:], Y[n_train:], [f"s{k}" for k in range(n_strategies)]


def organism_activations(n_problems: int, seed: int = 0):
    import tempfile

    import organism
    from analyses.task import load_task
    from hooks import capture, load_model
    from probes.datasets import build_dataset, split_examples
    from probes.labels import task_labeler
    from probes.traces import sample_traces

    task = load_task(None)
    model = load_model(organism.checkpoint_path("base"))
    prompts = [model.encode(p.prompt) for p in task.problems(n_problems, seed=seed)]
    traces = sample_traces({"base": model}, prompts, 2, seed=seed, max_new_tokens=task.max_new_tokens,
                           labeler=task_labeler(task))
    with tempfile.TemporaryDirectory() as tmp:
        store = capture(model, [t.token_ids for t in traces], out=Path(tmp) / "acts", progress=False)
        ds = build_dataset(store, [t.labels for t in traces])
    split = split_examples(ds.example, seed=seed)
    tr, te = split.masks(ds.example)
    tr, te = tr & ds.reasoning, te & ds.reasoning
    names = [s for s in task.strategies if s in ds.labels]
    Y = np.stack([ds.y(s) for s in names], axis=1)
    X = ds.X.numpy()
    return X[:, tr], Y[tr], X[:, te], Y[te], names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="LM-shaped synthetic activations instead of the organism's")
    ap.add_argument("--n-problems", type=int, default=300)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--class-weight", default="balanced", choices=["balanced", "none"])
    ap.add_argument("--n-controls", type=int, default=3, help="shuffled controls per strategy")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cw = None if args.class_weight == "none" else "balanced"
    if args.synthetic:
        Xtr, Ytr, Xte, Yte, names = synthetic(args.layers, args.d)
        what = f"synthetic, {Xtr.shape[0]} layers x {Xtr.shape[2]} dims"
    else:
        Xtr, Ytr, Xte, Yte, names = organism_activations(args.n_problems)
        what = f"organism base model, {Xtr.shape[0]} layers x {Xtr.shape[2]} dims"
    # Targets: each strategy, and its controls (labels permuted across training tokens).
    rng = np.random.default_rng(0)
    R = args.n_controls
    shuffled = [Ytr[rng.permutation(Ytr.shape[0]), k] for _ in range(R) for k in range(len(names))]
    Ytr_all = np.concatenate([Ytr, np.stack(shuffled, 1)], 1)
    Yte_all = np.concatenate([Yte] * (R + 1), 1)
    targets = names + [f"{s}-ctrl{r}" for r in range(R) for s in names]
    L, K = Xtr.shape[0], len(targets)
    print(f"data: {what}; {Xtr.shape[1]} train / {Xte.shape[1]} test tokens; targets: {targets} "
          f"(positive rate {', '.join(f'{r:.1%}' for r in Ytr.mean(0))}); C={args.C}, class_weight={cw}; "
          f"{args.threads} thread(s) each")
    with threadpool_limits(limits=args.threads):
        # Warm-up: one small fit each (library initialisation, not part of the sweep).
        LinearProbe(C=args.C, class_weight=cw).fit(Xtr[:2, :500], Ytr_all[:500])
        LogisticRegression(C=args.C, class_weight=cw).fit(Xtr[0, :500], Ytr_all[:500, 0])

        t = time.perf_counter()
        probe = LinearProbe(C=args.C, class_weight=cw, max_iter=1000, tol=1e-6).fit(Xtr, Ytr_all)
        t_torch = time.perf_counter() - t
        acc_torch = probe.score(Xte, Yte_all)  # [L, K]

        t = time.perf_counter()
        sk = [[LogisticRegression(C=args.C, class_weight=cw, max_iter=1000, tol=1e-6).fit(Xtr[layer], Ytr_all[:, k])
               for k in range(K)] for layer in range(L)]
        t_sk = time.perf_counter() - t
    acc_sk = np.array([[m.score(Xte[layer], Yte_all[:, k]) for k, m in enumerate(row)] for layer, row in enumerate(sk)])
    cos = np.array([[float(np.dot(probe.coef_[layer, k], m.coef_[0])
                           / np.linalg.norm(probe.coef_[layer, k]) / np.linalg.norm(m.coef_[0]))
                     for k, m in enumerate(row)] for layer, row in enumerate(sk)])
    n_iter_sk = np.array([[int(m.n_iter_[0]) for m in row] for row in sk])
    gap = np.abs(acc_torch - acc_sk)
    print(f"torch: one batched LinearProbe run, {L} layers x {K} targets: {t_torch:7.2f} s "
          f"({probe.n_iter_} solver iterations)")
    print(f"scikit-learn: {L * K} LogisticRegression fits, one per layer and target: {t_sk:7.2f} s "
          f"(L-BFGS iterations per fit: median {int(np.median(n_iter_sk))}, max {n_iter_sk.max()})")
    print(f"speed ratio (sklearn / torch): {t_sk / t_torch:.1f}x   (target >= 5x)")
    print("held-out accuracy, torch / sklearn:")
    for layer in range(L):
        print(f"  layer {layer:2d}: " + "  ".join(
            f"{t}={acc_torch[layer, k]:.3f}/{acc_sk[layer, k]:.3f}" for k, t in enumerate(targets)))
    print(f"max accuracy gap: {gap.max() * 100:.2f} points (target <= 1); min coefficient cosine "
          f"{cos.min():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
