"""Grading real answers: find the final answer in a completion, then compare it with the
reference by mathematical equivalence (``math-verify``).

Extraction is configurable, one of ``ANSWER_FORMATS``:

- ``boxed``: the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces matched
  (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``);
- ``answer-is``: after the last "answer is" / "answer:" (``The answer is: 8`` -> ``8``), the math
  that follows: a ``\\boxed{}``, a ``$...$`` expression, a number, or else the words up to the end
  of the sentence;
- ``gsm8k``: the number after the last ``####`` (GSM8K's convention);
- ``last-number``: the last number of the text;
- ``auto`` (default): the first of boxed, gsm8k, answer-is, last-number that finds something,
  most explicit first.

Equivalence: ``math_verify.verify(parse(reference), parse(answer))`` (the parser and checker of
open RL recipes: ``8`` == ``8.0``, ``1/2`` == ``\\frac{1}{2}``, ``1,000`` == ``1000``); when either
side does not parse as math, the stripped strings are compared. Source: Hugging Face
math-verify (github.com/huggingface/Math-Verify).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable

from hooks.errors import TwinlensError

ANSWER_FORMATS = ("auto", "boxed", "answer-is", "gsm8k", "last-number")
_NUMBER = r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?(?:/\d+)?%?"
_NUMBER_RX = re.compile(r"(?<![\w.])" + _NUMBER)
_BOXED_RX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RX = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_GSM8K_RX = re.compile(r"####\s*")


def check_answer_format(answer_format: str) -> str:
    """`answer_format` if it is one of ANSWER_FORMATS, else TwinlensError naming them."""
    if answer_format not in ANSWER_FORMATS:
        raise TwinlensError(
            f"Unknown answer format {answer_format!r}; use one of {', '.join(ANSWER_FORMATS)}."
        )
    return answer_format


def _boxed_span(text: str, start: int = 0, last: bool = True) -> tuple[int, int] | None:
    """Characters inside the last (or first from `start`) \\boxed{...}, braces matched."""
    found = None
    for m in _BOXED_RX.finditer(text, start):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = (m.end(), i - 1)
            if not last:
                return found
    return found


def _number_at(text: str, i: int) -> tuple[int, int] | None:
    m = _NUMBER_RX.match(text, i)
    return m.span() if m else None


def _after_answer_is(text: str) -> tuple[int, int] | None:
    ms = list(_ANSWER_IS_RX.finditer(text))
    if not ms:
        return None
    i = ms[-1].end()
    boxed = _boxed_span(text, i, last=False)
    if boxed is not None and text[i:boxed[0]].lstrip("$ \\(").startswith(("boxed", "fbox")):
        return boxed
    for open_, close in (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if text.startswith(open_, i) and not _number_at(text, i):
            j = text.find(close, i + len(open_))
            if j > i + len(open_):
                return (i + len(open_), j)
    num = _number_at(text, i)
    if num is not None:
        return num
    m = re.compile(r"[^\n.;]+").match(text, i)  # words up to the end of the sentence
    return (m.start(), m.end()) if m and m.group().strip() else None


def answer_span(text: str, answer_format: str = "auto") -> tuple[int, int] | None:
    """(start, end) characters of the final answer in `text` by `answer_format`, or None."""
    check_answer_format(answer_format)
    if answer_format in ("auto", "boxed"):
        span = _boxed_span(text)
        if span is not None or answer_format == "boxed":
            return span
    if answer_format in ("auto", "gsm8k"):
        ms = list(_GSM8K_RX.finditer(text))
        span = _number_at(text, ms[-1].end()) if ms else None
        if span is not None or answer_format == "gsm8k":
            return span
    if answer_format in ("auto", "answer-is"):
        span = _after_answer_is(text)
        if span is not None or answer_format == "answer-is":
            return span
    ms = list(_NUMBER_RX.finditer(text))
    return ms[-1].span() if ms else None


def extract_answer(text: str, answer_format: str = "auto") -> str | None:
    """The final answer's text (stripped; a number's '$' and thousands commas kept for the
    equivalence check to normalise), or None when `answer_format` finds none."""
    span = answer_span(text, answer_format)
    if span is None:
        return None
    answer = text[span[0] : span[1]].strip()
    return answer or None


def _math_verify_kwargs() -> tuple[dict, dict]:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    if threading.current_thread() is threading.main_thread():
        return {}, {}
    return {"parsing_timeout": None}, {"timeout_seconds": None}


def _parse(text: str):
    from math_verify import parse

    parse_kw, _ = _math_verify_kwargs()
    t = text.strip()
    # A bare reference such as "1/2" or "\frac{1}{2}" parses best as LaTeX math.
    return parse(t if "$" in t or "\\boxed" in t else f"${t}$", **parse_kw) or parse(t, **parse_kw)


def answers_equivalent(answer: str | None, reference: Hashable | None) -> bool:
    """True when `answer` equals `reference` mathematically (math-verify), or, where either
    does not parse as math, as stripped strings. None on either side is never correct."""
    if answer is None or reference is None:
        return False
    ref = str(reference).strip()
    ans = str(answer).strip()
    if ans == ref:
        return True
    from math_verify import verify

    gold, pred = _parse(ref), _parse(ans)
    if not gold or not pred:
        return False
    _, verify_kw = _math_verify_kwargs()
    return bool(verify(gold, pred, **verify_kw))


def no_answer_share(answers) -> dict:
    """{"n", "n_no_answer", "share"}: how many completions had no answer the extraction could
    find (None). A high share means the format, not the model, sets the accuracy: pick another
    ``answer_format`` or prompt for one. share is NaN for no completions."""
    answers = list(answers)
    n_none = sum(a is None for a in answers)
    return {"n": len(answers), "n_no_answer": n_none,
            "share": n_none / len(answers) if answers else float("nan")}


def no_answer_line(no_answer: dict[str, dict], answer_format: str) -> str:
    """One summary.md sentence: the share of completions without an answer, per model."""
    parts = [f"{m} {d['n_no_answer']}/{d['n']} ({100 * d['share']:.0f}%)" if d["n"] else f"{m} -"
             for m, d in no_answer.items()]
    return f"Completions with no answer found (answer format `{answer_format}`): " + ", ".join(parts) + "."


def samples_no_answer(samples) -> dict[str, dict]:
    """{model label: no_answer_share of its rows' extracted answers} for an
    analyses.sampling.Samples (rows of every model it holds)."""
    return {m: no_answer_share(r.answer for r in samples.for_model(m).rows) for m in samples.models}
