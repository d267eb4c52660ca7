"""pass@k and maj@k: does RL create capability, or sharpen what the base already samples?

pass@k is the unbiased estimator of Chen et al. 2021 (RESEARCH.md section 4): with ``n`` samples
of which ``c`` are correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as the product
1 - prod_{i=n-c+1}^{n} (1 - k / i), which stays finite and exact to ~1e-15 for n in the
thousands (the binomials themselves overflow a float beyond n ~ 1030).

maj@k (majority vote over k samples) has no cheap closed form once ties and several wrong
answers are possible, so its expectation over random k-subsets of the n samples is estimated by
resampling with a seed (exact for k = 1 and k = n).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices


def _as_int_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TwinlensError(f"{name} must hold whole numbers, got {x!r}.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise TwinlensError(f"{name} must be integers, got dtype {arr.dtype}.")
    if np.any(arr < 0):
        raise TwinlensError(f"{name} must be >= 0, got {x!r}.")
    return arr.astype(np.int64)


def pass_at_k(n, c, k: int):
    """Unbiased pass@k per problem.

    n, c: int or Int[array, "problems"] (samples drawn, samples correct); k: int >= 1.
    Returns a float for scalar input, else Float[ndarray, "problems"] in [0, 1].
    Raises TwinlensError (a ValueError) for k < 1, k > n, c > n or negative counts.
    """
    scalar = np.ndim(n) == 0 and np.ndim(c) == 0
    n_arr, c_arr = np.broadcast_arrays(_as_int_array(n, "n"), _as_int_array(c, "c"))
    if isinstance(k, (bool, np.bool_)) or int(k) != k:
        raise TwinlensError(f"k must be an integer, got {k!r}.")
    k = int(k)
    if k < 1:
        raise TwinlensError(f"k must be >= 1, got {k}.")
    if np.any(c_arr > n_arr):
        bad = int(np.argmax(c_arr > n_arr))
        raise TwinlensError(
            f"c > n for problem {bad} (c={c_arr.flat[bad]}, n={n_arr.flat[bad]}): a problem cannot "
            "have more correct samples than samples."
        )
    if np.any(n_arr < k):
        raise TwinlensError(
            f"k={k} exceeds the number of samples n={int(n_arr.min())}; pass@k needs n >= k "
            "samples per problem. Draw more samples or use a smaller k."
        )
    out = np.empty(n_arr.shape, dtype=np.float64)
    for idx in np.ndindex(n_arr.shape):
        nn, cc = int(n_arr[idx]), int(c_arr[idx])
        if nn - cc < k:  # every k-subset holds a correct sample
            out[idx] = 1.0
        else:
            out[idx] = 1.0 - float(np.prod(1.0 - k / np.arange(nn - cc + 1, nn + 1, dtype=np.float64)))
    return float(out) if scalar else out


def _majority_correct(codes: np.ndarray, correct_code: int, rng: np.random.Generator) -> np.ndarray:
    """codes: Int[array, "draws k"] answer codes (-1 = no answer, never votes).
    Returns Bool[array, "draws"]: the most frequent answer is the correct one (ties broken
    uniformly at random)."""
    draws = codes.shape[0]
    n_codes = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 0
    if n_codes == 0 or correct_code < 0:
        return np.zeros(draws, dtype=bool)
    counts = np.zeros((draws, n_codes))
    rows = np.repeat(np.arange(draws), codes.shape[1])
    flat = codes.reshape(-1)
    voted = flat >= 0
    np.add.at(counts, (rows[voted], flat[voted]), 1.0)
    # A uniform jitter in [0, 0.5) only reorders exact ties.
    winner = (counts + rng.random(counts.shape) * 0.5).argmax(axis=1)
    has_vote = counts.max(axis=1) > 0
    return has_vote & (winner == correct_code)


def maj_at_k(
    answers: Sequence[Sequence[Hashable | None]],
    correct_answers: Sequence[Hashable],
    k: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Expected majority-vote accuracy over k samples, per problem.

    answers[p]: the n extracted answers of problem p (None = no parsable answer; it never votes).
    correct_answers[p]: the right answer. A k-subset is correct iff its most frequent answer is
    the right one; ties are broken uniformly at random; a subset with no answer at all is wrong.
    The expectation over k-subsets drawn without replacement is exact for k = 1 (fraction of
    right answers) and k = n (one subset; ties enter as the right answer's share of the tie),
    otherwise estimated from ``n_resamples`` random subsets (Monte-Carlo error <= 0.5/sqrt(draws)).
    Returns Float[ndarray, "problems"].
    """
    if len(answers) == 0:
        raise TwinlensError("maj@k needs at least one problem; got an empty sample set.")
    if len(answers) != len(correct_answers):
        raise TwinlensError(
            f"{len(answers)} answer lists but {len(correct_answers)} correct answers; one per problem."
        )
    if int(k) != k or k < 1:
        raise TwinlensError(f"k must be an integer >= 1, got {k!r}.")
    rng = np.random.default_rng(seed)
    out = np.empty(len(answers))
    for p, (ans, right) in enumerate(zip(answers, correct_answers, strict=True)):
        n = len(ans)
        if k > n:
            raise TwinlensError(
                f"k={k} exceeds the {n} samples of problem {p}; maj@k needs n >= k samples."
            )
        if k == 1:
            out[p] = sum(a is not None and a == right for a in ans) / n
            continue
        vocab: dict[Hashable, int] = {}
        codes = np.array([-1 if a is None else vocab.setdefault(a, len(vocab)) for a in ans])
        right_code = vocab.get(right, -1)
        if k == n:
            counts = np.bincount(codes[codes >= 0], minlength=len(vocab)) if len(vocab) else np.zeros(0)
            if right_code < 0 or counts.max() == 0:
                out[p] = 0.0
            else:
                top = counts == counts.max()
                out[p] = float(top[right_code]) / int(top.sum())
            continue
        order = rng.random((n_resamples, n)).argsort(axis=1)[:, :k]
        out[p] = _majority_correct(codes[order], right_code, rng).mean()
    return out


@dataclass
class PassKCurve:
    """Mean pass@k (or maj@k) over problems at each k, with a bootstrap CI over problems."""

    k: list[int]
    mean: list[float]
    ci_low: list[float]
    ci_high: list[float]
    per_problem: np.ndarray = field(repr=False)  # Float[ndarray, "k problems"]

    def to_dict(self) -> dict:
        return {"k": self.k, "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high}


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself)."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def _bootstrap_index(n_problems: int, n_boot: int, seed: int) -> np.ndarray:
    return bootstrap_indices(np.random.default_rng(seed), n_problems, n_boot)


def _curve(per_problem: np.ndarray, ks: list[int], boot_idx: np.ndarray, ci: float) -> PassKCurve:
    means = per_problem.mean(axis=1)
    boot = per_problem[:, boot_idx].mean(axis=2)  # [k, n_boot]
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=1)
    return PassKCurve(
        k=list(ks), mean=means.tolist(), ci_low=lo.tolist(), ci_high=hi.tolist(),
        per_problem=per_problem,
    )


def pass_at_k_curve(
    n, c, ks: Sequence[int] | None = None, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> PassKCurve:
    """pass@k averaged over problems for each k, percentile-bootstrap CI over problems.

    n, c: Int[array, "problems"]; ks defaults to 1, 2, 4, ... min(n).
    """
    n_arr, c_arr = np.broadcast_arrays(_as_int_array(n, "n"), _as_int_array(c, "c"))
    if n_arr.size == 0:
        raise TwinlensError("pass@k needs at least one problem; got an empty sample set.")
    ks = list(ks) if ks is not None else default_ks(int(n_arr.min()))
    per_problem = np.stack([pass_at_k(n_arr, c_arr, k) for k in ks])
    return _curve(per_problem, ks, _bootstrap_index(n_arr.size, n_boot, seed), ci)


@dataclass
class PassKComparison:
    """pass@k (and maj@k) of several models on the same problems (paired bootstrap)."""

    k: list[int]
    problem_ids: list[str]
    pass_at_k: dict[str, PassKCurve]
    maj_at_k: dict[str, PassKCurve]
    crossover_k: dict[str, int | None]  # per RL model: first k where base >= it
    solved_only_by: dict[str, list[str]]  # model -> problems no other model solves
    seed: int
    n_samples: dict[str, int]

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "pass_at_k": {m: c.to_dict() for m, c in self.pass_at_k.items()},
            "maj_at_k": {m: c.to_dict() for m, c in self.maj_at_k.items()},
            "crossover_k": self.crossover_k,
            "solved_only_by": self.solved_only_by,
            "n_problems": len(self.problem_ids),
            "n_samples": self.n_samples,
            "seed": self.seed,
        }


def guesser_pass_at_k(ks: Sequence[int], answer_space: int) -> list[float]:
    """pass@k of a uniform guesser over ``answer_space`` equally likely answers: 1 - (1 - 1/|A|)^k.

    The trivial baseline of a pass@k curve: with 10 possible answers (organism v1) it already reaches
    pass@16 = 0.81, with 100 (organism v2: 00..99) pass@16 = 0.15 and pass@256 = 0.92, so a model's
    pass@k at large k says nothing until it is clear of this curve.
    """
    if not isinstance(answer_space, int) or answer_space < 1:
        raise TwinlensError(f"answer_space must be a positive integer, got {answer_space!r}.")
    return [1.0 - (1.0 - 1.0 / answer_space) ** int(k) for k in ks]


def crossover_k(ks: Sequence[int], base: Sequence[float], rl: Sequence[float]) -> int | None:
    """The first k at which the base's pass@k reaches the RL model's (None if never)."""
    for k, b, r in zip(ks, base, rl, strict=True):
        if b >= r:
            return int(k)
    return None


def compare_pass_at_k(
    correct: dict[str, dict[str, Sequence[bool]]],
    answers: dict[str, dict[str, Sequence[Hashable | None]]] | None = None,
    reference: dict[str, Hashable] | None = None,
    *,
    base: str = "base",
    ks: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    maj_resamples: int = 1000,
) -> PassKComparison:
    """Compare models on the problems they all sampled.

    correct[model][problem_id]: one bool per sample. answers/reference (optional) give maj@k:
    answers[model][problem_id] the extracted answers, reference[problem_id] the right answer.
    The bootstrap draws the same problems for every model (paired).
    """
    if not correct:
        raise TwinlensError("No models given; pass {'base': {...}, 'rl': {...}}.")
    if base not in correct:
        raise TwinlensError(f"Base model {base!r} not among the models {sorted(correct)}.")
    shared = set.intersection(*(set(v) for v in correct.values()))
    if not shared:
        raise TwinlensError(
            "The models share no sampled problem (or a sample set is empty); sample the same "
            "problems with every model."
        )
    ids = sorted(shared)
    n = {m: np.array([len(correct[m][p]) for p in ids]) for m in correct}
    c = {m: np.array([int(np.sum(correct[m][p])) for p in ids]) for m in correct}
    n_min = min(int(v.min()) for v in n.values())
    if n_min < 1:
        raise TwinlensError("A problem has no samples; every problem needs at least one sample.")
    ks = list(ks) if ks is not None else default_ks(n_min)
    boot_idx = _bootstrap_index(len(ids), n_boot, seed)
    curves = {
        m: _curve(np.stack([pass_at_k(n[m], c[m], k) for k in ks]), ks, boot_idx, ci) for m in correct
    }
    majs: dict[str, PassKCurve] = {}
    if answers is not None and reference is not None:
        for m in correct:
            per = np.stack([
                maj_at_k([answers[m][p] for p in ids], [reference[p] for p in ids], k,
                         n_resamples=maj_resamples, seed=seed)
                for k in ks
            ])
            majs[m] = _curve(per, ks, boot_idx, ci)
    cross = {
        m: crossover_k(ks, curves[base].mean, curves[m].mean) for m in correct if m != base
    }
    solved = {m: {p for p, s in zip(ids, c[m], strict=True) if s > 0} for m in correct}
    only = {
        m: sorted(solved[m] - set().union(*(solved[o] for o in correct if o != m)))
        for m in correct
    }
    return PassKComparison(
        k=ks, problem_ids=ids, pass_at_k=curves, maj_at_k=majs, crossover_k=cross,
        solved_only_by=only, seed=seed, n_samples={m: int(v.min()) for m, v in n.items()},
    )


def plot_pass_at_k(comparison: PassKComparison, ax=None, maj: bool = True, answer_space: int | None = None):
    """pass@k curves (solid, CI band) and maj@k (dashed) per model, log2 k axis; with
    ``answer_space``, the uniform guesser's pass@k (grey, dotted) as the trivial baseline."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, (m, curve) in enumerate(comparison.pass_at_k.items()):
        color = f"C{i}"
        ax.plot(curve.k, curve.mean, "o-", color=color, label=f"{m} pass@k")
        ax.fill_between(curve.k, curve.ci_low, curve.ci_high, color=color, alpha=0.2)
        if maj and m in comparison.maj_at_k:
            mc = comparison.maj_at_k[m]
            ax.plot(mc.k, mc.mean, "s--", color=color, alpha=0.8, label=f"{m} maj@k")
    if answer_space:
        ax.plot(comparison.k, guesser_pass_at_k(comparison.k, answer_space), ":", color="0.4",
                label=f"uniform guesser ({answer_space} answers)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"pass@k / maj@k ({len(comparison.problem_ids)} problems, seed {comparison.seed})")
    return ax
