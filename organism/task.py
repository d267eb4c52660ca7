"""The organism's task: a chain of single-digit additions (or subtractions) mod 10.

Prompt: the digits joined by the operator, then a colon: ``3+5+8+2+1:`` (answer 9).

Completion grammar (every character is one token; the tokenizer adds only the eos):

- direct:  ``#9``
- step:    ``3+5=08;8+8=16;6+2=08;8+1=09;#9``. A step ``a+b=NN;`` writes the exact result with
  two digits; the next step starts from its LAST digit (the running value mod 10).
- verify:  the steps, then a check pass in reverse order, closed by ``ok;`` (agrees with the
  forward result) or ``no;`` (disagrees: the check's result is the answer), then ``#d``:
  ``3+5=08;8+8=16;6+2=08;8+1=09;chk 1+2=03;3+8=11;1+5=06;6+3=09;ok;#9``.
  For the sum the check starts from the last digit and adds the others in reverse order; for
  the ``sub`` variant it adds the subtrahends back onto the forward result and must land on the
  first digit.
- backtracking: ``wait;`` right after a wrong step, then the corrected step:
  ``3+5=08;8+8=15;wait;8+8=16;6+2=08;...``.

Strategies (ground truth, from the text): ``compute`` = a forward step ``a+b=NN;``;
``verification`` = the ``chk ... ok;``/``no;`` pass; ``backtracking`` = ``wait;`` plus the
corrected step that follows it.

Train/eval split: a problem (its digit tuple) belongs to the eval partition iff a stable hash of
its prompt falls in the first ``EVAL_FRACTION`` of the hash range. ``make_problems`` with a seed
``>= EVAL_SEED_OFFSET`` (10**6) draws only eval-partition problems, a smaller seed only
train-partition problems: held-out problems are disjoint from training by content, not only by
seed. ``eval_problems(n, k)`` is the shorthand for the held-out set number ``k``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

STRATEGIES: tuple[str, ...] = ("compute", "verification", "backtracking")
FORMATS: tuple[str, ...] = ("direct", "step", "verify")
VARIANTS: tuple[str, ...] = ("sum", "sub")
OPERATORS = {"sum": "+", "sub": "-"}

EVAL_SEED_OFFSET = 10**6
EVAL_FRACTION = 0.1
# Per-token labels: one of STRATEGIES, or these two.
ANSWER_LABEL = "answer"
NO_LABEL = "none"

_STEP = r"\d[+\-]\d=\d\d;"
_STEP_RE = re.compile(_STEP)
_DIRECT_RE = re.compile(r"#\d")
_STEP_FMT_RE = re.compile(rf"(?:{_STEP}|wait;)*{_STEP}(?:{_STEP}|wait;)*#\d")
_VERIFY_FMT_RE = re.compile(rf"(?:{_STEP}|wait;)*{_STEP}(?:{_STEP}|wait;)*chk (?:{_STEP})+(?:ok|no);#\d")
# Tokens of the labeler: a step, a wait, the check opener, the check closer, the answer.
_PIECE_RE = re.compile(rf"(?P<step>{_STEP})|(?P<wait>wait;)|(?P<chk>chk )|(?P<close>(?:ok|no);)|(?P<ans>#\d?)")


@dataclass(frozen=True)
class Problem:
    """One problem. ``prompt`` ends with ``:``; ``answer`` is in 0..9."""

    prompt: str
    answer: int
    digits: tuple[int, ...]
    variant: str = "sum"

    @property
    def difficulty(self) -> int:
        return len(self.digits)


@dataclass(frozen=True)
class StrategySpan:
    """A strategy used in ``completion[start:end]`` (characters == tokens)."""

    strategy: str
    start: int
    end: int


def apply_op(a: int, b: int, variant: str) -> int:
    """Exact result a step writes: ``a+b`` (0..18) or ``(a-b) mod 10`` (0..9)."""
    if variant == "sum":
        return a + b
    if variant == "sub":
        return (a - b) % 10
    raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")


def answer_of(digits: tuple[int, ...] | list[int], variant: str = "sum") -> int:
    value = digits[0]
    for d in digits[1:]:
        value = apply_op(value, d, variant) % 10
    return value


def problem_from_digits(digits: tuple[int, ...] | list[int], variant: str = "sum") -> Problem:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    digits = tuple(int(d) for d in digits)
    prompt = OPERATORS[variant].join(str(d) for d in digits) + ":"
    return Problem(prompt=prompt, answer=answer_of(digits, variant), digits=digits, variant=variant)


def is_eval_problem(prompt: str) -> bool:
    """True iff the problem is in the held-out partition (stable hash of the prompt)."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
    return h < EVAL_FRACTION * 2**64


def make_problems(n: int, seed: int, difficulty: int = 5, variant: str = "sum") -> list[Problem]:
    """``n`` random problems with ``difficulty`` digits, deterministic in ``seed``.

    Seeds ``< EVAL_SEED_OFFSET`` give train-partition problems, seeds ``>= EVAL_SEED_OFFSET``
    give eval-partition problems (disjoint by content). Problems may repeat within a list.
    """
    if difficulty < 2:
        raise ValueError(f"difficulty must be >= 2 (number of digits), got {difficulty}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    want_eval = seed >= EVAL_SEED_OFFSET
    rng = random.Random(f"{variant}/{difficulty}/{seed}")
    out: list[Problem] = []
    while len(out) < n:
        p = problem_from_digits([rng.randrange(10) for _ in range(difficulty)], variant)
        if is_eval_problem(p.prompt) == want_eval:
            out.append(p)
    return out


def eval_problems(n: int, k: int = 0, difficulty: int = 5, variant: str = "sum") -> list[Problem]:
    """Held-out problem set number ``k`` (seed ``EVAL_SEED_OFFSET + k``)."""
    return make_problems(n, EVAL_SEED_OFFSET + k, difficulty, variant)


# ---------------------------------------------------------------- writing completions
def format_step(a: int, b: int, value: int, variant: str) -> str:
    return f"{a}{OPERATORS[variant]}{b}={value:02d};"


def write_completion(
    problem: Problem,
    fmt: str,
    wrong_step: int | None = None,
    wrong_value: int | None = None,
    backtrack: bool = False,
    direct_answer: int | None = None,
) -> str:
    """Write a completion of format ``fmt`` for ``problem``.

    ``wrong_step``: index (0-based) of a forward step written with ``wrong_value`` instead of
    the true result; with ``backtrack`` it is followed by ``wait;`` and the corrected step,
    otherwise the chain continues from the wrong value. ``direct_answer`` overrides the answer
    of a direct completion (for deliberately wrong ones).
    """
    variant = problem.variant
    if fmt == "direct":
        return f"#{problem.answer if direct_answer is None else direct_answer}"
    if fmt not in ("step", "verify"):
        raise ValueError(f"unknown format {fmt!r}; valid: {FORMATS}")
    digits = problem.digits
    parts: list[str] = []
    value = digits[0]
    for i, d in enumerate(digits[1:]):
        true = apply_op(value, d, variant)
        if i == wrong_step:
            assert wrong_value is not None and wrong_value != true
            parts.append(format_step(value, d, wrong_value, variant))
            if backtrack:
                parts.append("wait;")
                parts.append(format_step(value, d, true, variant))
                value = true % 10
            else:
                value = wrong_value % 10
        else:
            parts.append(format_step(value, d, true, variant))
            value = true % 10
    forward = value
    if fmt == "step":
        return "".join(parts) + f"#{forward}"
    # The check pass is always computed correctly; it decides the answer.
    parts.append("chk ")
    if variant == "sum":
        rev = list(reversed(digits))
        check = rev[0]
        for d in rev[1:]:
            s = check + d
            parts.append(format_step(check, d, s, variant))
            check = s % 10
        agrees = check == forward
        final = check
    else:
        # Add the subtrahends back (last first) onto the forward result: must give digits[0].
        check = forward
        for d in reversed(digits[1:]):
            s = check + d
            parts.append(format_step(check, d, s, "sum"))
            check = s % 10
        agrees = check == digits[0]
        final = forward if agrees else problem.answer
    parts.append("ok;" if agrees else "no;")
    return "".join(parts) + f"#{final}"


# ---------------------------------------------------------------- reading completions
def extract_answer(completion: str) -> int | None:
    """The digit right after the LAST ``#`` (trailing whitespace ignored), else None."""
    if "#" not in completion:
        return None
    tail = completion.rsplit("#", 1)[1].strip()
    return int(tail) if len(tail) == 1 and tail.isdigit() else None


def grade(problem: Problem, completion: str) -> bool:
    """Correct iff the answer after the last ``#`` equals ``problem.answer``."""
    return extract_answer(completion) == problem.answer


def classify_format(completion: str) -> str:
    """``direct`` | ``step`` | ``verify`` | ``other`` (whole-string grammar match)."""
    c = completion.strip()
    if _DIRECT_RE.fullmatch(c):
        return "direct"
    if _STEP_FMT_RE.fullmatch(c):
        return "step"
    if _VERIFY_FMT_RE.fullmatch(c):
        return "verify"
    return "other"


def label_strategies(completion: str) -> list[StrategySpan]:
    """Strategy spans in character (== token) positions of ``completion``.

    Best effort on malformed text: pieces the grammar does not know are skipped. A step before
    ``chk`` is ``compute``; ``wait;`` and the step right after it are one ``backtracking`` span;
    ``chk `` through ``ok;``/``no;`` (or the end of the steps after ``chk``) is ``verification``.
    """
    spans: list[StrategySpan] = []
    in_check = False
    check_start = check_end = 0
    pending_wait: tuple[int, int] | None = None
    pos = 0
    for m in _PIECE_RE.finditer(completion):
        kind = m.lastgroup
        contiguous = m.start() == pos
        pos = m.end()
        if in_check:
            if kind == "step" and contiguous:
                check_end = m.end()
                continue
            if kind == "close" and contiguous:
                check_end = m.end()
            spans.append(StrategySpan("verification", check_start, check_end))
            in_check = False
            if kind in ("step", "close"):
                continue
        if kind == "wait":
            if pending_wait is not None:
                spans.append(StrategySpan("backtracking", *pending_wait))
            pending_wait = (m.start(), m.end())
        elif kind == "step":
            if pending_wait is not None and pending_wait[1] == m.start():
                spans.append(StrategySpan("backtracking", pending_wait[0], m.end()))
            else:
                if pending_wait is not None:
                    spans.append(StrategySpan("backtracking", *pending_wait))
                spans.append(StrategySpan("compute", m.start(), m.end()))
            pending_wait = None
        else:
            if pending_wait is not None:
                spans.append(StrategySpan("backtracking", *pending_wait))
                pending_wait = None
            if kind == "chk":
                in_check, check_start, check_end = True, m.start(), m.end()
    if pending_wait is not None:
        spans.append(StrategySpan("backtracking", *pending_wait))
    if in_check:
        spans.append(StrategySpan("verification", check_start, check_end))
    return sorted(spans, key=lambda s: s.start)


def decision_points(completion: str) -> list[int]:
    """Where a strategy can begin: character indices in ``completion`` of the token *before* each
    possible start (-1 = the prompt's closing ``:``, then every ``;`` that ends a step, a check or a
    ``wait``; not a final one, after which nothing follows). The character tokenizer makes these token
    positions relative to the completion's first token. Probes read the residual there
    (probes.baselines.decision_point_probe); steering at decision points adds the vector there."""
    return [-1] + [i for i, ch in enumerate(completion) if ch == ";" and i < len(completion) - 1]


def token_labels(completion: str) -> list[str]:
    """One label per character (== token) of ``completion``: a strategy, ``answer`` (the final
    ``#d``), or ``none``."""
    labels = [NO_LABEL] * len(completion)
    for s in label_strategies(completion):
        labels[s.start : s.end] = [s.strategy] * (s.end - s.start)
    i = completion.rfind("#")
    if i >= 0:
        for j in range(i, min(i + 2, len(completion))):
            labels[j] = ANSWER_LABEL
    return labels


def strategies_used(completion: str) -> set[str]:
    return {s.strategy for s in label_strategies(completion)}
