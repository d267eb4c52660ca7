"""Plasticity vs drift (Fast-Slow Training, arXiv 2605.12484; RESEARCH.md section 5): does a
checkpoint that drifted further from the base learn a *new* task less well?

For each checkpoint: its drift, KL(base || checkpoint) in nats per token (``analyses.drift``,
on samples from the base), and its learning gain: fine-tune a copy for a fixed small budget on a
new variant of the organism task (default ``sub``: subtraction, never seen in training) with the
organism's own trainer (``organism.training.train_supervised`` on ``plasticity_mix()``: correct
step/verify traces of the new variant only, ``:`` prompts, no open-domain or stated-confidence
examples, the pretrained tiers), and measure

    learning_gain = loss_before - loss_after

the drop of the mean per-token loss (nats, completion + eos, teacher forcing) on held-out
problems of the new variant (correct traces, half step, half verify), plus the greedy accuracy
before and after. Each checkpoint is fine-tuned with every seed (the seed sets the fine-tuning
data); the gain is the mean over seeds, its CI a percentile bootstrap over held-out problems of
the seed-mean per-problem gain (seed spread reported beside it as ``gain_by_seed``).

The loss drop depends on the starting loss (a checkpoint that starts worse on the new variant
has more to drop), so the loss reached after the budget (``loss_after``) and its rank
correlation with KL are reported beside it: read both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from analyses.phases import Checkpoint
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices


@dataclass
class PlasticityPoint:
    name: str
    step: int
    kl_from_base: float  # KL(base || checkpoint), nats per token, on base samples
    kl_ci: tuple[float, float]
    learning_gain: float  # held-out loss drop on the new variant (nats per token), mean over seeds
    learning_gain_ci: tuple[float, float]
    gain_by_seed: list[float]
    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float  # mean over seeds


@dataclass
class PlasticityResult:
    points: list[PlasticityPoint]
    variant: str
    budget: int  # fine-tuning steps
    batch_size: int
    lr: float
    seeds: list[int]
    n_eval: int
    spearman_kl_gain: float  # rank correlation of learning gain with KL across checkpoints
    slope_gain_per_kl: float  # least-squares slope (nats of gain per nat/token of KL)
    slope_ci: tuple[float, float]  # bootstrap over held-out problems (gains) with KL fixed
    # The loss drop depends on where a checkpoint starts; the loss reached after the budget
    # is the other reading of "how much it learned" (lower = learned more).
    spearman_kl_loss_after: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["per_checkpoint"] = {p.name: {"kl_from_base": p.kl_from_base, "learning_gain": p.learning_gain}
                               for p in self.points}
        return d


# Variants a checkpoint can be fine-tuned on: the structured ones (the open domain has no traces).
PLASTICITY_VARIANTS = ("sub", "sum")


def plasticity_mix():
    """The fine-tuning corpus mix (organism.corpus.CorpusMix): SFT_MIX (correct step/verify traces
    only) without its open-domain and stated-confidence shares, so every fine-tuning example is a
    ``:`` prompt of the variant being learned."""
    from organism.corpus import SFT_MIX

    return dataclasses.replace(SFT_MIX, open_share=0.0, confidence_share=0.0)


def _check_variant(variant: str) -> str:
    if variant not in PLASTICITY_VARIANTS:
        raise TwinlensError(f"Plasticity fine-tunes on a structured organism variant ({', '.join(PLASTICITY_VARIANTS)}; "
                            f"sub = subtraction, never trained), got {variant!r}.")
    return variant


def heldout_pairs(n: int, variant: str = "sub", difficulty: int = 4, k: int = 0) -> list[tuple[str, str]]:
    """Held-out (prompt, correct completion) pairs of ``variant``: step traces for even, verify
    traces for odd indices."""
    from organism.task import eval_problems, write_completion

    _check_variant(variant)
    probs = eval_problems(n, k, difficulty=difficulty, variant=variant)
    return [(p.prompt, write_completion(p, "step" if i % 2 == 0 else "verify")) for i, p in enumerate(probs)]


@torch.no_grad()
def per_problem_loss(hf: torch.nn.Module, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """Mean per-token loss (nats) of each completion + eos: Float[ndarray, "problems"]."""
    from organism.training import _batch_tensors

    hf.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        ids, labels = _batch_tensors(pairs[s : s + batch_size])
        logits = hf(input_ids=ids).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
        mask = (tgt != -100).float()
        out += ((nll * mask).sum(1) / mask.sum(1)).tolist()
    return np.array(out)


@torch.no_grad()
def greedy_accuracy(hf: torch.nn.Module, variant: str, n: int, difficulty: int = 4, k: int = 0) -> float:
    """Greedy accuracy on ``n`` held-out problems of ``variant`` (set ``k``) with the tier's full
    generation budget (analyses.task.organism_max_new_tokens)."""
    from analyses.task import organism_max_new_tokens
    from organism.generation import generate_texts
    from organism.task import eval_problems, grade
    from organism.tokenizer import build_tokenizer

    probs = eval_problems(n, k, difficulty=difficulty, variant=variant)
    texts = generate_texts(hf, build_tokenizer(), [p.prompt for p in probs],
                           organism_max_new_tokens(difficulty, variant), temperature=0.0)
    return float(np.mean([grade(p, t) for p, t in zip(probs, texts, strict=True)]))


def finetune_copy(checkpoint: Checkpoint, *, variant: str, steps: int, seed: int, lr: float,
                  batch_size: int) -> torch.nn.Module:
    """A fresh fp32 copy of ``checkpoint`` fine-tuned for ``steps`` on ``variant`` (correct
    step/verify traces of ``variant`` only: ``plasticity_mix()``) with the organism's trainer."""
    from organism.training import SupervisedConfig, load_fp32, train_supervised

    if steps < 1:
        raise TwinlensError(f"The fine-tuning budget must be at least 1 step, got {steps}; a zero budget "
                            "measures no learning.")
    model = load_fp32(checkpoint.path)
    cfg = SupervisedConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=0, seed=seed,
                           mix=plasticity_mix(), variant=_check_variant(variant))
    train_supervised(model, cfg, desc=f"finetune {checkpoint.name}", progress=False)
    return model


def measure_plasticity(
    checkpoints: Sequence[Checkpoint],
    kl_from_base: Mapping[str, tuple[float, tuple[float, float]]],
    *,
    variant: str = "sub",
    budget: int = 8,
    seeds: Sequence[int] = (0, 1),
    lr: float = 1e-3,
    batch_size: int = 32,
    n_eval: int = 64,
    difficulty: int = 4,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> PlasticityResult:
    """Learning gain on ``variant`` after ``budget`` fine-tuning steps, for each checkpoint,
    against its KL from the base (``kl_from_base``: name -> (kl, (lo, hi)))."""
    if budget < 1:
        raise TwinlensError(f"The fine-tuning budget must be at least 1 step, got {budget}; a zero budget "
                            "measures no learning.")
    _check_variant(variant)
    if len(seeds) < 2:
        raise TwinlensError(f"Give at least two fine-tuning seeds (a CI needs a spread), got {list(seeds)}.")
    if len(checkpoints) < 2:
        raise TwinlensError("Plasticity against drift needs at least two checkpoints.")
    missing = [c.name for c in checkpoints if c.name not in kl_from_base]
    if missing:
        raise TwinlensError(f"No KL from the base given for {missing}.")
    pairs = heldout_pairs(n_eval, variant, difficulty)
    rng = np.random.default_rng(seed)
    boot = bootstrap_indices(rng, n_eval, n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    points, gain_boot = [], []
    for ck in checkpoints:
        from organism.training import load_fp32

        before_model = load_fp32(ck.path)
        before = per_problem_loss(before_model, pairs)
        acc_before = greedy_accuracy(before_model, variant, n_eval, difficulty)
        gains, accs = [], []
        for s in seeds:
            tuned = finetune_copy(ck, variant=variant, steps=budget, seed=s, lr=lr, batch_size=batch_size)
            gains.append(before - per_problem_loss(tuned, pairs))
            accs.append(greedy_accuracy(tuned, variant, n_eval, difficulty))
        g = np.mean(gains, axis=0)  # per problem, mean over seeds
        gb = g[boot].mean(1)
        gain_boot.append(gb)
        kl, kl_ci = kl_from_base[ck.name]
        points.append(PlasticityPoint(
            name=ck.name, step=ck.step, kl_from_base=float(kl), kl_ci=tuple(float(x) for x in kl_ci),
            learning_gain=float(g.mean()), learning_gain_ci=tuple(float(x) for x in np.quantile(gb, q)),
            gain_by_seed=[float(x.mean()) for x in gains], loss_before=float(before.mean()),
            loss_after=float(before.mean() - g.mean()),
            accuracy_before=acc_before, accuracy_after=float(np.mean(accs)),
        ))
    kls = np.array([p.kl_from_base for p in points])
    gains_arr = np.array([p.learning_gain for p in points])
    notes = []
    if np.ptp(kls) <= 0:
        notes.append("every checkpoint is at the same KL from the base: no slope.")
        rho, slope, slope_ci, rho_after = math.nan, math.nan, (math.nan, math.nan), math.nan
    else:
        rho = _spearman(kls, gains_arr)
        rho_after = _spearman(kls, np.array([p.loss_after for p in points]))
        slope = float(np.polyfit(kls, gains_arr, 1)[0])
        gb = np.stack(gain_boot, axis=1)  # boot x checkpoints
        slopes = np.polyfit(kls, gb.T, 1)[0]
        slope_ci = tuple(float(x) for x in np.quantile(slopes, q))
    return PlasticityResult(points=points, variant=variant, budget=budget, batch_size=batch_size, lr=lr,
                            seeds=list(seeds), n_eval=n_eval, spearman_kl_gain=rho,
                            slope_gain_per_kl=slope, slope_ci=slope_ci,
                            spearman_kl_loss_after=rho_after, notes=notes)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def plot_plasticity(result: PlasticityResult, ax=None):
    """Learning gain (with CI) against KL(base || checkpoint) (with CI), one point a checkpoint."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for p in result.points:
        ax.errorbar(p.kl_from_base, p.learning_gain,
                    xerr=[[p.kl_from_base - p.kl_ci[0]], [p.kl_ci[1] - p.kl_from_base]],
                    yerr=[[p.learning_gain - p.learning_gain_ci[0]], [p.learning_gain_ci[1] - p.learning_gain]],
                    fmt="o", capsize=3)
        ax.annotate(f"step {p.step}", (p.kl_from_base, p.learning_gain), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL(base || checkpoint), nats/token on base samples")
    ax.set_ylabel(f"learning gain on '{result.variant}' (loss drop, nats/token)")
    ax.set_title(f"{result.budget} steps x {len(result.seeds)} seeds; Spearman {result.spearman_kl_gain:+.2f}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    return ax
