"""AUROC and accuracy with bootstrap confidence intervals over examples (clusters of tokens).

Tokens of one trace are not independent, so the bootstrap resamples whole examples: each
replicate draws examples with replacement and weights every token by how often its example
was drawn. Everything is vectorised over replicates and layers.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["auroc", "bootstrap_metrics", "weighted_auroc"]


def auroc(scores, y) -> np.ndarray:
    """Area under the ROC curve of `scores` `[..., n]` against bool `y` `[n]` (ties count 1/2).

    Returns an array of shape `scores.shape[:-1]` (a 0-d array for 1-D scores)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    w = torch.ones(1, s.shape[-1], dtype=torch.float64)
    out = weighted_auroc(s.reshape(-1, s.shape[-1]), torch.as_tensor(np.asarray(y)), w)
    return out[:, 0].reshape(s.shape[:-1]).numpy()


def weighted_auroc(scores: torch.Tensor, y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """AUROC of each row of `scores` `[L, n]` under each weighting `W` `[B, n]` -> `[L, B]`.

    AUROC = sum over positive/negative pairs of w_p w_n [s_p > s_n] + 1/2 [s_p = s_n], divided
    by (sum w_p)(sum w_n); computed per layer by sorting once and grouping ties."""
    y = y.to(torch.bool)
    W = W.to(torch.float64)
    Wp, Wn = W * y, W * (~y)
    tot = Wp.sum(1) * Wn.sum(1)  # [B]
    out = torch.empty(scores.shape[0], W.shape[0], dtype=torch.float64)
    for i, s in enumerate(scores):
        order = torch.argsort(s)
        s_sorted = s[order]
        _, group = torch.unique_consecutive(s_sorted, return_inverse=True)
        G = int(group[-1]) + 1 if group.numel() else 0
        P = torch.zeros(W.shape[0], G, dtype=torch.float64).index_add_(1, group, Wp[:, order])
        N = torch.zeros(W.shape[0], G, dtype=torch.float64).index_add_(1, group, Wn[:, order])
        below = N.cumsum(1) - N  # negative weight strictly below each tie group
        out[i] = (P * (below + 0.5 * N)).sum(1) / tot
    return out


def bootstrap_metrics(
    scores: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    chunk: int = 100,
) -> dict[str, np.ndarray]:
    """Point values and percentile CIs of AUROC and accuracy per layer.

    scores: `[L, n]` decision scores (logits; > 0 predicts the positive class).
    y: `[n]` bool labels. groups: `[n]` example id of each token (the bootstrap unit).
    Returns dict with `auroc`, `accuracy` `[L]` and `auroc_ci`, `accuracy_ci` `[L, 2]`.
    Replicates whose resample has no positive or no negative token are dropped.
    """
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    if s.ndim == 1:
        s = s[None]
    yt = torch.as_tensor(np.asarray(y, dtype=bool))
    correct = ((s > 0) == yt).to(torch.float64)  # [L, n]
    _, gidx = np.unique(np.asarray(groups), return_inverse=True)
    gidx = torch.as_tensor(gidx)
    n_groups = int(gidx.max()) + 1
    ones = torch.ones(1, s.shape[1], dtype=torch.float64)
    point_auc = weighted_auroc(s, yt, ones)[:, 0]
    point_acc = correct.mean(1)
    rng = torch.Generator().manual_seed(int(seed))
    aucs, accs = [], []
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        draws = torch.randint(n_groups, (b, n_groups), generator=rng)
        counts = torch.zeros(b, n_groups, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(b, n_groups, dtype=torch.float64)
        )
        W = counts[:, gidx]  # [b, n]
        keep = ((W * yt).sum(1) > 0) & ((W * ~yt).sum(1) > 0)
        W = W[keep]
        if W.shape[0] == 0:
            continue
        aucs.append(weighted_auroc(s, yt, W))  # [L, b]
        accs.append((correct @ W.T) / W.sum(1))  # [L, b]
    q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
    if aucs:
        auc_ci = np.percentile(torch.cat(aucs, 1).numpy(), q, axis=1).T
        acc_ci = np.percentile(torch.cat(accs, 1).numpy(), q, axis=1).T
    else:
        auc_ci = acc_ci = np.full((s.shape[0], 2), np.nan)
    return {
        "auroc": point_auc.numpy(),
        "auroc_ci": auc_ci,
        "accuracy": point_acc.numpy(),
        "accuracy_ci": acc_ci,
    }
