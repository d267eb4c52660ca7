"""Accuracy (greedy and sampled), format mix and strategy frequencies of a checkpoint, with CIs.

Every rate is a binomial proportion over completions with a 95% Wilson interval. With one sample
per problem (the default) completions are independent; with ``samples > 1`` the interval is
too narrow (samples of one problem correlate) and the result says so in ``ci_note``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from organism.generation import generate_texts
from organism.task import FORMATS, STRATEGIES, Problem, classify_format, grade, strategies_used

Z95 = 1.959964


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with a 95% Wilson interval [low, high]."""

    k: int
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, k: int, n: int) -> Rate:
        if n == 0:
            return cls(0, 0, float("nan"), float("nan"), float("nan"))
        p = k / n
        denom = 1 + Z95**2 / n
        centre = (p + Z95**2 / (2 * n)) / denom
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
        # min/max: rounding must never put the estimate outside its own interval
        return cls(k, n, p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))

    def overlaps(self, other: Rate) -> bool:
        return not (self.high < other.low or other.high < self.low)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class DecodingStats:
    """Statistics of one decoding mode (greedy or sampled) over a problem set."""

    accuracy: Rate
    formats: dict[str, Rate]  # FORMATS + "other"
    strategies: dict[str, Rate]  # fraction of completions using each strategy at least once
    mean_length: float  # characters == tokens, eos excluded
    examples: list[str] = field(default_factory=list)


@dataclass
class CheckpointEval:
    name: str
    n_problems: int
    samples_per_problem: int
    seed: int
    greedy: DecodingStats
    sampled: DecodingStats
    ci_note: str = "95% Wilson intervals over completions"

    def to_dict(self) -> dict:
        return asdict(self)


def decoding_stats(problems: list[Problem], completions: list[str], n: int = 1,
                   n_examples: int = 5) -> DecodingStats:
    """Stats of ``completions`` (prompt-major, ``n`` per problem)."""
    total = len(completions)
    correct = sum(grade(problems[i // n], c) for i, c in enumerate(completions))
    fmts = [classify_format(c) for c in completions]
    used = [strategies_used(c) for c in completions]
    return DecodingStats(
        accuracy=Rate.of(correct, total),
        formats={f: Rate.of(fmts.count(f), total) for f in (*FORMATS, "other")},
        strategies={s: Rate.of(sum(s in u for u in used), total) for s in STRATEGIES},
        mean_length=sum(len(c) for c in completions) / max(1, total),
        examples=[problems[i // n].prompt + c for i, c in enumerate(completions[:n_examples])],
    )


# (prompts, temperature, n, seed) -> completions, prompt-major
GenerateFn = Callable[[list[str], float, int, int], list[str]]


@torch.no_grad()
def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   problems: list[Problem], name: str = "model", seed: int = 0,
                   samples: int = 1, temperature: float = 1.0, max_new_tokens: int = 100,
                   batch_size: int = 256, generate_fn: GenerateFn | None = None) -> CheckpointEval:
    """Greedy and sampled completions of ``problems`` and their statistics.

    ``generate_fn`` replaces the organism's own generation helper (scripts pass
    ``hooks.generate``, which ``organism`` may not import: data flows organism -> hooks).
    """
    prompts = [p.prompt for p in problems]
    if generate_fn is None:
        def generate_fn(prompts, temp, n, seed):
            return generate_texts(model, tokenizer, prompts, max_new_tokens, temp, n, seed,
                                  batch_size)
    greedy = generate_fn(prompts, 0.0, 1, seed)
    sampled = generate_fn(prompts, temperature, samples, seed)
    note = CheckpointEval.ci_note
    if samples > 1:
        note += f" ({samples} correlated samples per problem: intervals too narrow)"
    return CheckpointEval(name=name, n_problems=len(problems), samples_per_problem=samples,
                          seed=seed, greedy=decoding_stats(problems, greedy),
                          sampled=decoding_stats(problems, sampled, samples), ci_note=note)
