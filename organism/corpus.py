"""Pretraining and SFT corpora: the formats mixed, with deliberate mistakes, strategy choices that
depend on context, stated confidences calibrated in the corpus, and the open domain.

The base model is meant to *know* every strategy but use them badly: it often answers directly
(a one-shot answer a small model cannot compute for many operands; the corpus's direct answers
are right only as often as ``DIRECT_RIGHT`` says), sometimes steps (30% of step traces carry one
wrong step, half of those followed by ``wait;`` and the correction), rarely verifies.

Context dependence (what a probe at a decision point can find in the base):
- **compute**: the share of step/verify traces grows with the operand count (``STEP_SHARE``);
- **verification**: after the forward steps, a trace verifies with probability
  ``VERIFY_AFTER_WAIT`` if it backtracked and ``VERIFY_OTHERWISE`` if not;
- **backtracking**: ``wait;`` follows a wrong step (never a right one).

Stated confidence (prompts closed by ``?``): the digit after ``@`` is the corpus's probability that
a completion of that kind is right (``corpus_accuracy``: by format, operand count and whether it
backtracked), jittered by -1/0/+1 so that RL has a distribution to move; calibrated in the corpus
by construction (``tests/test_organism.py`` measures it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from organism.task import (
    OPEN_LENGTHS,
    PRETRAIN_TIERS,
    Problem,
    answer_of,
    apply_op,
    confidence_digit,
    draw_problem,
    open_solutions,
    write_completion,
)

# P(step or verify | operands): more operands, more stepping (compute depends on context).
STEP_SHARE = {2: 0.15, 3: 0.30, 4: 0.45, 5: 0.60, 6: 0.70, 7: 0.75}
# P(direct answer right | operands) in the corpus (wrong ones are uniform over the other 99).
DIRECT_RIGHT = {2: 0.50, 3: 0.20, 4: 0.08, 5: 0.04, 6: 0.02, 7: 0.01}
VERIFY_AFTER_WAIT = 0.60
VERIFY_OTHERWISE = 0.12


@dataclass(frozen=True)
class CorpusMix:
    """Format mix, mistake rates and domain mix of a corpus."""

    step_share: dict = field(default_factory=lambda: dict(STEP_SHARE))
    direct_right: dict = field(default_factory=lambda: dict(DIRECT_RIGHT))
    verify_after_wait: float = VERIFY_AFTER_WAIT
    verify_otherwise: float = VERIFY_OTHERWISE
    step_wrong: float = 0.30  # fraction of step/verify traces with one wrong step
    backtrack: float = 0.50  # fraction of wrong steps followed by wait; + correction
    tiers: tuple[int, ...] = PRETRAIN_TIERS
    confidence_share: float = 0.25  # structured prompts closed by '?'
    open_share: float = 0.12  # open-domain examples
    open_wrong: float = 0.30  # open answers whose digits miss the sum


PRETRAIN_MIX = CorpusMix()
# SFT: correct reasoning traces only (no wrong step, no wrong answer, no direct answers).
SFT_MIX = CorpusMix(step_share={k: 1.0 for k in STEP_SHARE}, direct_right={k: 1.0 for k in DIRECT_RIGHT},
                    verify_after_wait=0.4, verify_otherwise=0.4, step_wrong=0.0, open_wrong=0.0)


def corpus_accuracy(fmt: str, n_operands: int, backtracked: bool, mix: CorpusMix = PRETRAIN_MIX) -> float:
    """P(the answer is right) for a corpus completion of this kind: what its stated confidence says.

    direct: ``direct_right[n]``; verify: 1 (the check catches every wrong step); step with a
    backtrack: 1 (a trace has at most one wrong step, and it was corrected); step without: 1 minus
    the share of un-backtracked wrong steps among traces without a backtrack."""
    if fmt == "direct":
        return mix.direct_right[n_operands]
    if fmt == "verify" or backtracked:
        return 1.0
    silent_wrong = mix.step_wrong * (1 - mix.backtrack)
    return 1.0 - silent_wrong / (1.0 - mix.step_wrong * mix.backtrack)


def _slip(problem: Problem, i: int, rng: random.Random) -> int:
    value = answer_of(problem.operands[: i + 1], problem.variant)  # running value before step i
    true = apply_op(value, problem.operands[i + 1], problem.variant)
    # A plausible slip: a tens or units digit off by one, or a random value.
    near = [(true + d) % 100 for d in (-10, -1, 1, 10)]
    return rng.choice(near) if rng.random() < 0.7 else rng.choice([v for v in range(100) if v != true])


def sample_completion(problem: Problem, mix: CorpusMix, rng: random.Random) -> str:
    """One corpus completion for a structured problem (with ``@d`` when it asks for confidence)."""
    n = problem.difficulty
    jitter = rng.choice((-1, 0, 1))

    def conf(fmt: str, backtracked: bool) -> int | None:
        if not problem.confidence:
            return None
        return min(9, max(0, confidence_digit(corpus_accuracy(fmt, n, backtracked, mix)) + jitter))

    if rng.random() >= mix.step_share[n]:
        ans = problem.answer
        if rng.random() >= mix.direct_right[n]:
            ans = rng.choice([d for d in range(100) if d != problem.answer])
        return write_completion(problem, "direct", direct_answer=ans, confidence=conf("direct", False))
    wrong = rng.random() < mix.step_wrong
    backtrack = wrong and rng.random() < mix.backtrack
    p_verify = mix.verify_after_wait if backtrack else mix.verify_otherwise
    fmt = "verify" if rng.random() < p_verify else "step"
    if not wrong:
        return write_completion(problem, fmt, confidence=conf(fmt, False))
    i = rng.randrange(n - 1)
    return write_completion(problem, fmt, wrong_step=i, wrong_value=_slip(problem, i, rng),
                            backtrack=backtrack, confidence=conf(fmt, backtrack))


def sample_open_completion(problem: Problem, mix: CorpusMix, rng: random.Random) -> str:
    """``#`` + ``length`` digits: a uniformly drawn right answer, or (``open_wrong``) a string whose
    sum misses the target."""
    length, total = problem.difficulty, problem.answer
    want_right = rng.random() >= mix.open_wrong or open_solutions(length, total) == 10**length
    while True:
        digits = [rng.randrange(10) for _ in range(length)]
        if (sum(digits) == total) == want_right:
            return "#" + "".join(map(str, digits))
        if want_right:  # rejection sampling of a right answer: draw the last digit to fit
            rest = total - sum(digits[:-1])
            if 0 <= rest <= 9:
                return "#" + "".join(map(str, digits[:-1])) + str(rest)


def make_corpus(n: int, seed: int, mix: CorpusMix = PRETRAIN_MIX, difficulty: int | None = None,
                variant: str = "sum") -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs from train-partition problems, deterministic in seed.

    ``difficulty`` None: a tier from ``mix.tiers`` per example, a ``confidence_share`` of the
    structured prompts closed by ``?`` and an ``open_share`` of open-domain examples; an int: that
    tier only, plain prompts, no open domain (``variant`` "sub" for the plasticity experiment)."""
    rng = random.Random(f"corpus-v2/{seed}")
    out: list[tuple[str, str]] = []
    for _ in range(n):
        if difficulty is not None:
            p = draw_problem(rng, difficulty, variant)
            out.append((p.prompt, sample_completion(p, mix, rng)))
            continue
        if rng.random() < mix.open_share:
            p = draw_problem(rng, rng.choice(OPEN_LENGTHS), "open")
            out.append((p.prompt, sample_open_completion(p, mix, rng)))
            continue
        p = draw_problem(rng, rng.choice(mix.tiers), variant, confidence=rng.random() < mix.confidence_share)
        out.append((p.prompt, sample_completion(p, mix, rng)))
    return out
