"""The organism's task (v2): chains of two-digit additions (or subtractions) mod 100, a
stated-confidence variant, and an open-ended second domain.

Structured task ("sum"). Prompt: a two-digit start value, then single-digit addends, joined by
the operator, then a colon: ``37+8+5+9:`` (answer (37+8+5+9) mod 100 = 59, written ``59``). The
start is uniform over 00..99, so the answer is uniform over the 100 values 00..99 and a uniform
guesser's pass@k = 1 - 0.99^k is the trivial baseline (pass@16 0.15). Difficulty tiers = the
number of operands, start included (2..7; the base is pretrained on 3..6).

Completion grammar (every character is one token; the tokenizer adds only the eos):

- direct:  ``#07``
- step:    ``37+8=45;45+5=50;50+9=59;#59``. A step ``aa+b=NN;`` writes ``(aa+b) mod 100`` with
  two digits; the next step starts from it.
- verify:  the steps, then a check pass that adds the addends onto the start in reverse order,
  closed by ``ok;`` (agrees with the forward result) or ``no;`` (disagrees: the check's result is
  the answer), then ``#NN``: ``37+8=45;45+5=50;50+9=59;chk 37+9=46;46+5=51;51+8=59;ok;#59``. For
  ``sub`` the check adds the subtrahends back (last first) onto the forward result and must land
  on the start.
- backtracking: ``wait;`` right after a wrong step, then the corrected step:
  ``37+8=46;wait;37+8=45;45+5=50;50+9=59;#59``.
- stated confidence: a prompt closed by ``?`` instead of ``:`` (``37+58+12?``) asks for a
  confidence digit after the answer: ``...#59@8``; digit ``d`` states confidence
  ``(d + 0.5) / 10`` (``confidence_of``).

Open domain ("open"): ``4>23:`` asks for any 4 digits summing to 23; ``#5738`` is right, and so
is every other such string (``open_solutions`` counts them). Many right answers, one format.

Strategies (ground truth, from the text): ``compute`` = a forward step; ``verification`` = the
``chk ... ok;``/``no;`` pass; ``backtracking`` = ``wait;`` plus the corrected step after it.

Context-dependent strategy choice (organism.corpus): the base's corpus steps more often the more
operands a problem has, and verifies more often after a backtrack; so a model trained on it can
carry the decision in its residual stream before the strategy starts (at ``decision_points``).

Train/eval split: a problem belongs to the eval partition iff a stable hash of its prompt (with
``:`` as the closer, so a problem and its ``?`` variant fall on the same side) is in the first
``EVAL_FRACTION`` of the hash range. ``make_problems`` with a seed ``>= EVAL_SEED_OFFSET`` draws
only eval-partition problems, a smaller seed only train-partition ones.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from math import comb

STRATEGIES: tuple[str, ...] = ("compute", "verification", "backtracking")
FORMATS: tuple[str, ...] = ("direct", "step", "verify")
VARIANTS: tuple[str, ...] = ("sum", "sub", "open")
OPERATORS = {"sum": "+", "sub": "-"}
MODULUS = 100
ANSWER_SPACE = 100  # answers 00..99 of the structured task
# Operands per problem: tiers the base is pretrained on, and the range the task admits.
PRETRAIN_TIERS: tuple[int, ...] = (3, 4, 5, 6)
MIN_OPERANDS, MAX_OPERANDS = 2, 7
# Open domain: k digits (k in OPEN_LENGTHS) with a given sum.
OPEN_LENGTHS: tuple[int, ...] = (3, 4, 5)

EVAL_SEED_OFFSET = 10**6
EVAL_FRACTION = 0.1
ANSWER_LABEL = "answer"
NO_LABEL = "none"
CONFIDENCE_MARK = "@"
QUESTION_MARK = "?"

_NUM = r"\d\d"
_STEP = rf"{_NUM}[+\-]\d={_NUM};"
_STEP_RE = re.compile(_STEP)
_CONF = r"(?:@\d)?"
_DIRECT_RE = re.compile(rf"#{_NUM}{_CONF}")
_STEP_FMT_RE = re.compile(rf"(?:{_STEP}|wait;)*{_STEP}(?:{_STEP}|wait;)*#{_NUM}{_CONF}")
_VERIFY_FMT_RE = re.compile(
    rf"(?:{_STEP}|wait;)*{_STEP}(?:{_STEP}|wait;)*chk (?:{_STEP})+(?:ok|no);#{_NUM}{_CONF}")
_PIECE_RE = re.compile(
    rf"(?P<step>{_STEP})|(?P<wait>wait;)|(?P<chk>chk )|(?P<close>(?:ok|no);)|(?P<ans>#(?:{_NUM})?)")
_OPEN_PROMPT_RE = re.compile(r"(\d)>(\d\d):")


@dataclass(frozen=True)
class Problem:
    """One problem. ``prompt`` ends with ``:`` (or ``?``: confidence asked); ``answer`` is in
    0..99 (structured) or the target sum (open: any ``length`` digits summing to it are right).
    ``operands``: the start (0..99) then the addends (0..9); open: (length, total)."""

    prompt: str
    answer: int
    operands: tuple[int, ...]
    variant: str = "sum"
    confidence: bool = False

    @property
    def difficulty(self) -> int:
        """The tier: operands per problem (open domain: digits asked for)."""
        return len(self.operands) if self.variant != "open" else self.operands[0]

    @property
    def digits(self) -> tuple[int, ...]:  # v1 name of the operands
        return self.operands


@dataclass(frozen=True)
class StrategySpan:
    """A strategy used in ``completion[start:end]`` (characters == tokens)."""

    strategy: str
    start: int
    end: int


def apply_op(a: int, b: int, variant: str) -> int:
    """Result a step writes: ``(a + b) mod 100`` or ``(a - b) mod 100``."""
    if variant == "sum":
        return (a + b) % MODULUS
    if variant == "sub":
        return (a - b) % MODULUS
    raise ValueError(f"unknown variant {variant!r} for a step; valid: sum, sub")


def answer_of(operands: tuple[int, ...] | list[int], variant: str = "sum") -> int:
    value = operands[0]
    for d in operands[1:]:
        value = apply_op(value, d, variant)
    return value


def problem_from_operands(operands: tuple[int, ...] | list[int], variant: str = "sum",
                          confidence: bool = False) -> Problem:
    if variant not in OPERATORS:
        raise ValueError(f"unknown variant {variant!r}; valid: {tuple(OPERATORS)} (open: open_problem)")
    operands = tuple(int(d) for d in operands)
    if len(operands) < 2 or not 0 <= operands[0] < MODULUS or any(not 0 <= d <= 9 for d in operands[1:]):
        raise ValueError(f"operands must be a start in 0..99 and >= 1 addends in 0..9, got {operands}")
    closer = QUESTION_MARK if confidence else ":"
    prompt = f"{operands[0]:02d}" + "".join(f"{OPERATORS[variant]}{d}" for d in operands[1:]) + closer
    return Problem(prompt=prompt, answer=answer_of(operands, variant), operands=operands,
                   variant=variant, confidence=confidence)


problem_from_digits = problem_from_operands  # v1 name


def open_problem(length: int, total: int) -> Problem:
    """Any ``length`` digits summing to ``total``: prompt ``{length}>{total:02d}:``."""
    if not (0 <= total <= 9 * length and 1 <= length <= 9):
        raise ValueError(f"no {length} digits sum to {total}")
    return Problem(prompt=f"{length}>{total:02d}:", answer=total, operands=(length, total),
                   variant="open")


def open_solutions(length: int, total: int) -> int:
    """How many digit strings of ``length`` sum to ``total`` (the open problem's right answers)."""
    return sum((-1) ** j * comb(length, j) * comb(total - 10 * j + length - 1, length - 1)
               for j in range(0, min(length, total // 10) + 1))


def is_eval_problem(prompt: str) -> bool:
    """True iff the problem is in the held-out partition (stable hash of the ``:`` prompt)."""
    key = prompt[:-1] + ":" if prompt.endswith(QUESTION_MARK) else prompt
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return h < EVAL_FRACTION * 2**64


def _draw(rng: random.Random, difficulty: int, variant: str, confidence: bool) -> Problem:
    if variant == "open":
        length = difficulty
        return open_problem(length, rng.randrange(9 * length + 1))
    return problem_from_operands([rng.randrange(MODULUS)] + [rng.randrange(10) for _ in range(difficulty - 1)],
                                 variant, confidence)


def draw_problem(rng: random.Random, difficulty: int, variant: str = "sum", confidence: bool = False,
                 eval_partition: bool = False) -> Problem:
    """One random problem of the given partition, drawn with ``rng``."""
    while True:
        p = _draw(rng, difficulty, variant, confidence)
        if is_eval_problem(p.prompt) == eval_partition:
            return p


def check_difficulty(difficulty: int, variant: str = "sum") -> int:
    lo, hi = (min(OPEN_LENGTHS), max(OPEN_LENGTHS)) if variant == "open" else (MIN_OPERANDS, MAX_OPERANDS)
    if not isinstance(difficulty, int) or not lo <= difficulty <= hi:
        what = "digits asked for" if variant == "open" else "operands per problem"
        raise ValueError(f"difficulty must be an integer in {lo}..{hi} ({what}), got {difficulty!r}")
    return difficulty


def make_problems(n: int, seed: int, difficulty: int = 4, variant: str = "sum",
                  confidence: bool = False) -> list[Problem]:
    """``n`` random problems with ``difficulty`` operands (open: digits), deterministic in
    ``seed``. Seeds ``< EVAL_SEED_OFFSET`` give train-partition problems, seeds
    ``>= EVAL_SEED_OFFSET`` eval-partition ones (disjoint by content). ``confidence``: prompts
    closed by ``?`` (the same problems as without it, for the same seed)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    check_difficulty(difficulty, variant)
    rng = random.Random(f"v2/{variant}/{difficulty}/{seed}")
    return [draw_problem(rng, difficulty, variant, confidence, seed >= EVAL_SEED_OFFSET) for _ in range(n)]


def eval_problems(n: int, k: int = 0, difficulty: int = 4, variant: str = "sum",
                  confidence: bool = False) -> list[Problem]:
    """Held-out problem set number ``k`` (seed ``EVAL_SEED_OFFSET + k``)."""
    return make_problems(n, EVAL_SEED_OFFSET + k, difficulty, variant, confidence)


# ---------------------------------------------------------------- writing completions
def format_step(a: int, b: int, value: int, variant: str) -> str:
    return f"{a:02d}{OPERATORS[variant]}{b}={value:02d};"


def confidence_digit(p: float) -> int:
    """The digit stating confidence ``p``: ``d`` states ``(d + 0.5) / 10``."""
    return min(9, max(0, int(p * 10)))


def confidence_of(digit: int) -> float:
    return (digit + 0.5) / 10


def write_completion(
    problem: Problem,
    fmt: str,
    wrong_step: int | None = None,
    wrong_value: int | None = None,
    backtrack: bool = False,
    direct_answer: int | None = None,
    confidence: int | None = None,
) -> str:
    """Write a completion of format ``fmt`` for a structured ``problem``.

    ``wrong_step``: index (0-based) of a forward step written with ``wrong_value`` instead of
    the true result; with ``backtrack`` it is followed by ``wait;`` and the corrected step,
    otherwise the chain continues from the wrong value. ``direct_answer`` overrides the answer
    of a direct completion. ``confidence``: the digit written after ``@`` (confidence prompts).
    """
    variant = problem.variant
    tail = "" if confidence is None else f"{CONFIDENCE_MARK}{confidence}"
    if fmt == "direct":
        return f"#{(problem.answer if direct_answer is None else direct_answer):02d}{tail}"
    if fmt not in ("step", "verify"):
        raise ValueError(f"unknown format {fmt!r}; valid: {FORMATS}")
    ops = problem.operands
    parts: list[str] = []
    value = ops[0]
    for i, d in enumerate(ops[1:]):
        true = apply_op(value, d, variant)
        if i == wrong_step:
            assert wrong_value is not None and wrong_value != true
            parts.append(format_step(value, d, wrong_value, variant))
            if backtrack:
                parts.append("wait;")
                parts.append(format_step(value, d, true, variant))
                value = true
            else:
                value = wrong_value
        else:
            parts.append(format_step(value, d, true, variant))
            value = true
    forward = value
    if fmt == "step":
        return "".join(parts) + f"#{forward:02d}{tail}"
    parts.append("chk ")  # the check pass is always computed correctly; it decides the answer
    if variant == "sum":  # the addends onto the start, last first: other intermediate values
        check = ops[0]
        for d in reversed(ops[1:]):
            s = apply_op(check, d, "sum")
            parts.append(format_step(check, d, s, "sum"))
            check = s
        agrees = check == forward
        final = check
    else:  # add the subtrahends back (last first) onto the forward result: must give ops[0]
        check = forward
        for d in reversed(ops[1:]):
            s = apply_op(check, d, "sum")
            parts.append(format_step(check, d, s, "sum"))
            check = s
        agrees = check == ops[0]
        final = forward if agrees else problem.answer
    parts.append("ok;" if agrees else "no;")
    return "".join(parts) + f"#{final:02d}{tail}"


# ---------------------------------------------------------------- reading completions
def _after_hash(completion: str) -> str | None:
    if "#" not in completion:
        return None
    return completion.rsplit("#", 1)[1].strip()


def extract_answer(completion: str) -> int | None:
    """The two digits right after the LAST ``#`` (a trailing ``@d`` confidence and whitespace
    ignored), else None. Open-domain answers: use ``extract_open_answer``."""
    tail = _after_hash(completion)
    if tail is None:
        return None
    tail = re.sub(r"@\d$", "", tail)
    return int(tail) if len(tail) == 2 and tail.isdigit() else None


def extract_confidence(completion: str) -> float | None:
    """The stated confidence ``(d + 0.5) / 10`` of a completion ending ``@d``, else None."""
    m = re.search(r"#\d\d@(\d)\s*$", completion)
    return confidence_of(int(m.group(1))) if m else None


def extract_open_answer(completion: str) -> str | None:
    """The digit string after the last ``#`` of an open-domain completion, else None."""
    tail = _after_hash(completion)
    return tail if tail and tail.isdigit() else None


def grade(problem: Problem, completion: str) -> bool:
    """Structured: the answer after the last ``#`` equals ``problem.answer``. Open: the digits
    after the last ``#`` are ``problem.difficulty`` digits summing to ``problem.answer``."""
    if problem.variant == "open":
        ans = extract_open_answer(completion)
        return ans is not None and len(ans) == problem.difficulty and sum(map(int, ans)) == problem.answer
    return extract_answer(completion) == problem.answer


def parse_prompt(prompt: str) -> Problem | None:
    """The Problem a prompt states (structured or open), or None if it is not a task prompt."""
    m = _OPEN_PROMPT_RE.fullmatch(prompt)
    if m:
        return open_problem(int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"(\d\d(?:([+\-])\d)+)([:?])", prompt)
    if not m:
        return None
    variant = "sum" if m.group(2) == "+" else "sub"
    ops = [int(x) for x in re.split(r"[+\-]", m.group(1))]
    return problem_from_operands(ops, variant, confidence=m.group(3) == QUESTION_MARK)


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
    ``#NN``), or ``none``."""
    labels = [NO_LABEL] * len(completion)
    for s in label_strategies(completion):
        labels[s.start : s.end] = [s.strategy] * (s.end - s.start)
    i = completion.rfind("#")
    if i >= 0:
        for j in range(i, min(i + 3, len(completion))):
            labels[j] = ANSWER_LABEL
    return labels


def strategies_used(completion: str) -> set[str]:
    return {s.strategy for s in label_strategies(completion)}


def answer_span(completion: str) -> tuple[int, int] | None:
    """Characters of the final answer's two digits, or None."""
    if extract_answer(completion) is None:
        return None
    i = completion.rfind("#")
    return (i + 1, i + 3)
