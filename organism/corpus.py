"""Pretraining and SFT corpora: the formats mixed, with deliberate mistakes.

The base model is meant to *know* every strategy but use them badly: it mostly answers
directly (a one-shot answer a small model cannot compute reliably, and 30% of the direct
answers in the corpus are wrong on purpose), sometimes steps (30% of step traces carry one
wrong step, half of those followed by ``wait;`` and the correction), rarely verifies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from organism.task import Problem, answer_of, apply_op, make_problems, write_completion


@dataclass(frozen=True)
class CorpusMix:
    """Format mix and mistake rates of a corpus."""

    direct: float = 0.60
    step: float = 0.25
    verify: float = 0.15
    direct_wrong: float = 0.30  # fraction of direct answers that are wrong
    step_wrong: float = 0.30  # fraction of step/verify traces with one wrong step
    backtrack: float = 0.50  # fraction of wrong steps followed by wait; + correction


PRETRAIN_MIX = CorpusMix()
# SFT: correct reasoning traces only (no wrong step, no wrong answer, no direct answers).
SFT_MIX = CorpusMix(direct=0.0, step=0.6, verify=0.4, direct_wrong=0.0, step_wrong=0.0)


def sample_completion(problem: Problem, mix: CorpusMix, rng: random.Random) -> str:
    r = rng.random()
    if r < mix.direct:
        ans = problem.answer
        if rng.random() < mix.direct_wrong:
            ans = rng.choice([d for d in range(10) if d != problem.answer])
        return write_completion(problem, "direct", direct_answer=ans)
    fmt = "step" if r < mix.direct + mix.step else "verify"
    if rng.random() >= mix.step_wrong:
        return write_completion(problem, fmt)
    i = rng.randrange(problem.difficulty - 1)
    value = answer_of(problem.digits[: i + 1], problem.variant)  # running value before step i
    true = apply_op(value, problem.digits[i + 1], problem.variant)
    # A plausible slip: off by one or two, or a random two-digit value in the op's range.
    top = 18 if problem.variant == "sum" else 9
    candidates = [v for v in (true - 2, true - 1, true + 1, true + 2) if 0 <= v <= top]
    wrong = rng.choice(candidates) if rng.random() < 0.7 else rng.choice(
        [v for v in range(top + 1) if v != true])
    return write_completion(problem, fmt, wrong_step=i, wrong_value=wrong,
                            backtrack=rng.random() < mix.backtrack)


def make_corpus(n: int, seed: int, mix: CorpusMix = PRETRAIN_MIX, difficulty: int = 5,
                variant: str = "sum") -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs from train-partition problems, deterministic in seed."""
    problems = make_problems(n, seed, difficulty, variant)
    rng = random.Random(f"corpus/{seed}")
    return [(p.prompt, sample_completion(p, mix, rng)) for p in problems]
