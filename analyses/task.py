"""A Task: prompts, a grader, a format classifier and a strategy labeler (DESIGN.md).

The organism's task gives ground truth (``organism_task``); ``regex_task`` serves real text
with configurable regexes (``Wait`` -> backtracking, ``let me check`` -> verification, ...).
Every callable works on the completion *text*; spans are in characters of the completion (the
sampling engine maps them to tokens).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hooks.errors import TwinlensError
from hooks.validation import check_int

CharSpan = tuple[str, int, int]  # (strategy, start, end) in characters of the completion
# The organism's context (organism.training.MAX_LEN = the checkpoints' max_position_embeddings;
# tests/test_organism_task.py checks they agree). Every tier's longest trace must fit in it.
ORGANISM_CONTEXT = 160
ORGANISM_VARIANTS = ("sum", "sub", "open")


def organism_step_length(variant: str = "sum") -> int:
    """Tokens of one step of the organism's grammar (``37+8=45;``: 8), from organism.task.format_step."""
    from organism import task as ot

    return len(ot.format_step(0, 0, 0, variant))


def organism_difficulties(variant: str = "sum") -> tuple[int, int]:
    """(lowest, highest) difficulty of the organism task, read from organism.task: operands per
    problem, start included (``MIN_OPERANDS..MAX_OPERANDS``; the base is pretrained on
    ``PRETRAIN_TIERS``) for ``sum``/``sub``, digits asked for (``OPEN_LENGTHS``) for ``open``."""
    from organism import task as ot

    variant = check_organism_variant(variant)
    if variant == "open":
        return min(ot.OPEN_LENGTHS), max(ot.OPEN_LENGTHS)
    return ot.MIN_OPERANDS, ot.MAX_OPERANDS


def check_organism_variant(variant: Any, name: str = "variant") -> str:
    """The organism task's variant: ``sum`` (the trained task), ``sub`` (subtraction, never
    trained: the plasticity probe) or ``open`` (the open domain: any k digits with a given sum)."""
    if variant not in ORGANISM_VARIANTS:
        raise TwinlensError(f"{name} must be one of {', '.join(ORGANISM_VARIANTS)} (the organism's task "
                            f"variants), got {variant!r}.")
    return variant


def check_organism_difficulty(difficulty: Any, name: str = "difficulty", variant: str = "sum") -> int:
    """The organism task's difficulty, in ``organism_difficulties(variant)``: operands per problem
    for sum/sub, digits asked for in the open domain. The message names the range and the tiers
    the base was pretrained on (organism.task.PRETRAIN_TIERS)."""
    from organism import task as ot

    lo, hi = organism_difficulties(variant)
    seen = ot.PRETRAIN_TIERS
    what = ("digits asked for, open domain" if variant == "open" else
            f"operands per problem; the base is pretrained on {min(seen)}..{max(seen)}")
    return check_int(name, difficulty, minimum=lo, maximum=hi, allowed=f"an integer in {lo}..{hi} ({what})")


def organism_longest_completion(difficulty: int, variant: str = "sum", confidence: bool = False) -> int:
    """Tokens (= characters) of the longest completion the organism's grammar writes for a problem
    of this tier, without the eos: for sum/sub a verify trace with one backtrack (the corpus's
    longest) and, with ``confidence``, the ``@d`` after the answer; for open ``#`` + the digits.
    Written by organism.task.write_completion, so it follows the grammar if that changes."""
    from organism import task as ot

    difficulty = check_organism_difficulty(difficulty, variant=variant)
    if variant == "open":
        return len("#") + difficulty
    problem = ot.problem_from_operands([0] * difficulty, variant, confidence=confidence)
    slip = (ot.apply_op(0, 0, variant) + 1) % ot.MODULUS
    return len(ot.write_completion(problem, "verify", wrong_step=0, wrong_value=slip, backtrack=True,
                                   confidence=9 if confidence else None))


def organism_max_new_tokens(difficulty: int, variant: str = "sum", confidence: bool = False) -> int:
    """Generation budget of an organism problem: the longest completion + eos + room for one
    more backtrack (open domain: the digits again), checked against ``ORGANISM_CONTEXT``; a tier
    whose longest completion cannot fit is refused (TwinlensError)."""
    from organism import task as ot

    longest = organism_longest_completion(difficulty, variant, confidence)
    prompt = (ot.open_problem(difficulty, 0) if variant == "open"
              else ot.problem_from_operands([0] * difficulty, variant, confidence=confidence)).prompt
    room = ORGANISM_CONTEXT - len(prompt)
    if longest + 1 > room:
        raise TwinlensError(
            f"organism difficulty {difficulty} ({variant}): its longest completion ({longest} tokens + eos) "
            f"after a {len(prompt)}-token prompt does not fit the {ORGANISM_CONTEXT}-token context.")
    # Room beyond the longest trace the corpus writes: one more backtrack (``wait;`` + the corrected
    # step), so a sampled trace with a second one is not cut before its answer; open: the digits again.
    margin = difficulty if variant == "open" else len("wait;") + organism_step_length(variant)
    return min(room, longest + 1 + margin)


@dataclass(frozen=True)
class TaskProblem:
    """One problem: a stable ``id`` (keys samples on disk), the prompt text, the reference
    answer (JSON-serialisable), and the task's own problem object in ``source``."""

    id: str
    prompt: str
    answer: Hashable | None = None
    source: Any = field(default=None, compare=False, repr=False)


def _no_spans(completion: str) -> list[CharSpan]:
    return []


def _other_format(completion: str) -> str:
    return "other"


@dataclass
class Task:
    """What an analysis needs to know about a task.

    grade(problem, completion) -> bool (None: not gradable, e.g. no reference answer); extract_answer(completion) -> answer or None;
    classify_format(completion) -> one of ``formats`` or "other";
    label_strategies(completion) -> [(strategy, start, end)] character spans;
    answer_span(completion) -> (start, end) characters of the final answer, or None;
    skips_steps(completion) -> True when the answer comes without intermediate steps.
    char_tokens: one token per character (character spans are token spans).
    answer_space: how many distinct answers the task admits, when known and uniform over problems
    (organism: the 100 values 00..99); the uniform guesser's pass@k = 1 - (1 - 1/answer_space)^k is
    the trivial baseline of pass@k. None: unknown, or many right answers per problem (open domain).
    single_answer: each problem has one right answer (False: many, e.g. the organism's open domain;
    majority vote over answers, maj@k, then means nothing and is not reported).
    extract_confidence(completion) -> the confidence in [0, 1] the completion states, or None; set
    when the task's prompts ask for one (organism ``confidence=True``: ``#07@8`` states 0.85).
    domain: what kind of task it is, for per-domain comparisons (RESEARCH.md s.8): "structured"
    (one right answer, e.g. arithmetic), "open" (many right answers), or None (not known).
    """

    name: str
    grade: Callable[[TaskProblem, str], bool]
    extract_answer: Callable[[str], Hashable | None]
    classify_format: Callable[[str], str] = _other_format
    label_strategies: Callable[[str], list[CharSpan]] = _no_spans
    answer_span: Callable[[str], tuple[int, int] | None] = lambda c: None
    skips_steps: Callable[[str], bool] | None = None
    make_problems: Callable[[int, int], list[TaskProblem]] | None = None  # (n, seed)
    formats: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()
    max_new_tokens: int = 256
    ngram: int = 4  # n of the repeated-n-gram detector (a meaningful unit of the task's text)
    char_tokens: bool = False
    has_answers: bool = True  # False: a problems file without reference answers (nothing is graded)
    answer_space: int | None = None
    answer_format: str = "exact"  # how answers are found: the organism's exact grader, or analyses.grading's
    n_available: int | None = None  # a fixed problem list's size (None: a generator)
    single_answer: bool = True
    extract_confidence: Callable[[str], float | None] | None = None
    domain: str | None = None

    def problems(self, n: int, seed: int = 0, exclude: Iterable[TaskProblem | str] = ()) -> list[TaskProblem]:
        """Problem set ``seed``: ``n`` problems, none of which is in ``exclude``.

        exclude: problems (or their ``prompt_id``) already used elsewhere, e.g. the problems
        a probe or vector was fitted on, so that a "held-out" set is disjoint from them by
        content (the same prompt under another id counts as used). Sets of different seeds
        are not disjoint by themselves (the organism draws each with replacement; a fixed list
        has one pool): pass the earlier set. Set ``seed`` of a problem-generating task draws
        from the generator; of a fixed list (a problems file), it is the file in its own order
        for seed 0 and in a seeded random order otherwise, in both cases its first ``n``
        problems not excluded. Errors: asking for more than the task holds (after exclusion),
        naming the counts."""
        if self.make_problems is None:
            raise TwinlensError(f"Task {self.name!r} has no problem generator; pass problems explicitly.")
        n = check_int("n (problems)", n, minimum=1)
        seed = check_int("seed (problem set)", seed, minimum=0)
        used = {e if isinstance(e, str) else prompt_id(e.prompt) for e in exclude}
        if not used:
            return self.make_problems(n, seed)
        m = n
        while True:  # the generators are prefix-stable: problems(m)[:k] == problems(k)
            if self.n_available is not None:
                m = min(m, self.n_available)
            kept = [p for p in self.make_problems(m, seed) if prompt_id(p.prompt) not in used]
            if len(kept) >= n:
                return kept[:n]
            if self.n_available is not None and m >= self.n_available:
                raise TwinlensError(
                    f"Task {self.name!r} holds {self.n_available} problems and {self.n_available - len(kept)} "
                    f"of them are already used (the problems the probes / vectors were fitted on); "
                    f"{n} more disjoint ones were asked for, {len(kept)} remain. Ask for fewer (e.g. "
                    "a smaller --n-problems / --steer-problems) or add problems to the file."
                )
            if m > 1000 * n + 10**5:
                raise TwinlensError(f"Task {self.name!r}: could not draw {n} problems outside the {len(used)} excluded.")
            m *= 2


def organism_task(difficulty: int = 4, variant: str = "sum", confidence: bool = False) -> Task:
    """The organism's task (organism.task, v2) as a Task. ``problems(n, seed)`` draws held-out
    problems: set ``seed`` of ``organism.task.eval_problems``; ids name the variant, tier, set and index.

    difficulty: the tier: operands per problem, start included, for ``sum`` and ``sub``
    (``organism_difficulties``: organism.task's MIN_OPERANDS..MAX_OPERANDS); digits asked for
    (OPEN_LENGTHS) for ``open``. Default 4: a tier the base is pretrained on.
    variant: ``sum`` (the trained task: answers 00..99, ``answer_space`` 100, uniform), ``sub``
    (subtraction: never trained, the plasticity probe), ``open`` (any ``difficulty`` digits summing
    to the prompt's target, ``4>23:`` -> ``#5738``: many right answers, graded by
    organism.task.grade; answers are digit strings; ``answer_space`` None, ``single_answer`` False).
    confidence: prompts closed by ``?`` ask for a stated confidence ``@d`` after the answer
    (sum/sub only); ``Task.extract_confidence`` reads it (organism.task.extract_confidence,
    ``(d + 0.5) / 10``).
    max_new_tokens: the grammar's longest completion for the tier + eos + one more backtrack
    (``organism_max_new_tokens``); refused when it would not fit the ORGANISM_CONTEXT (160) tokens.
    Errors: an unknown variant or a tier outside the variant's range (TwinlensError).
    """
    from organism import task as ot

    variant = check_organism_variant(variant)
    difficulty = check_organism_difficulty(difficulty, variant=variant)
    if confidence and variant == "open":
        raise TwinlensError("The organism's open domain has no stated-confidence prompts; use confidence "
                            "with variant sum (or sub).")
    tag = f"{variant}{'-conf' if confidence else ''}-d{difficulty}"

    def make(n: int, seed: int) -> list[TaskProblem]:
        return [
            TaskProblem(id=f"{tag}-eval{seed}-{i:05d}", prompt=p.prompt, answer=p.answer, source=p)
            for i, p in enumerate(ot.eval_problems(n, seed, difficulty=difficulty, variant=variant,
                                                   confidence=confidence))
        ]

    def source(problem: TaskProblem):
        src = problem.source if problem.source is not None else ot.parse_prompt(problem.prompt)
        if src is None:
            raise TwinlensError(f"{problem.prompt!r} is not an organism prompt; the organism task grades only its own.")
        return src

    if variant == "open":
        def open_span(completion: str) -> tuple[int, int] | None:
            ans = ot.extract_open_answer(completion)
            if ans is None:
                return None
            end = len(completion.rstrip())
            return (end - len(ans), end)

        return Task(
            name=f"organism-{tag}",
            grade=lambda problem, completion: ot.grade(source(problem), completion),
            extract_answer=ot.extract_open_answer,
            classify_format=lambda c: "answer" if re.fullmatch(r"#\d+", c.strip()) else "other",
            answer_span=open_span, make_problems=make, formats=("answer",),
            max_new_tokens=organism_max_new_tokens(difficulty, variant),
            ngram=2, char_tokens=True, answer_space=None, single_answer=False, domain="open",
        )

    def grade(problem: TaskProblem, completion: str) -> bool:
        return ot.extract_answer(completion) == problem.answer

    def skips_steps(completion: str) -> bool:
        i = completion.rfind("#")
        head = completion if i < 0 else completion[:i]
        return not any(s.strategy == "compute" and s.end <= len(head) for s in ot.label_strategies(head))

    def spans(completion: str) -> list[CharSpan]:
        return [(s.strategy, s.start, s.end) for s in ot.label_strategies(completion)]

    return Task(
        name=f"organism-{tag}",
        grade=grade, extract_answer=ot.extract_answer, classify_format=ot.classify_format,
        label_strategies=spans, answer_span=ot.answer_span, skips_steps=skips_steps,
        make_problems=make, formats=tuple(ot.FORMATS), strategies=tuple(ot.STRATEGIES),
        max_new_tokens=organism_max_new_tokens(difficulty, variant, confidence),
        ngram=organism_step_length(variant),  # a repeated n-gram of one step's length is a repeated step
        char_tokens=True,
        answer_space=ot.ANSWER_SPACE,  # two digits 00..99, uniform over problems
        extract_confidence=ot.extract_confidence if confidence else None,
        domain="structured",
    )


def regex_task(
    name: str,
    problems: Sequence[tuple[str, Hashable]] | None = None,
    answer_pattern: str | None = None,
    strategy_patterns: Mapping[str, str] | None = None,
    format_patterns: Mapping[str, str] | None = None,
    max_new_tokens: int = 1024,
    answer_format: str = "auto",
) -> Task:
    """A Task for real text. Answers: found by ``answer_format`` (analyses.grading: ``auto``,
    ``boxed`` with nested braces, ``answer-is``, ``gsm8k``, ``last-number``), or, when
    ``answer_pattern`` is given, the last match of that regex (group 1, stripped); graded by
    mathematical equivalence with the reference (math-verify, analyses.grading); strategies:
    every match of each regex in ``strategy_patterns`` is a span, or by default
    the kit's one regex labeler (``probes/default_labels.json`` via probes.labels.RegexLabeler); formats: the first of ``format_patterns`` that
    matches (search), else "other". ``problems``: (prompt, reference answer) pairs; ids are a
    hash of the prompt."""
    from analyses.grading import answer_span as find_answer
    from analyses.grading import answers_equivalent, check_answer_format

    check_answer_format(answer_format)
    ans_rx = None
    if answer_pattern is not None:
        try:
            ans_rx = re.compile(answer_pattern)
        except re.error as err:
            raise TwinlensError(f"answer_pattern {answer_pattern!r} is not a valid regex ({err}).") from None
        if ans_rx.groups < 1:
            raise TwinlensError(f"answer_pattern {answer_pattern!r} needs a group around the answer, e.g. 'is (\\d+)'.")
    strat = {k: re.compile(v) for k, v in (strategy_patterns or {}).items()}
    if strategy_patterns is None:
        from probes.labels import RegexLabeler

        default_labeler = RegexLabeler.from_json(None)
    fmts = {k: re.compile(v) for k, v in (format_patterns or {}).items()}

    def answer_span(completion: str):
        if ans_rx is None:
            return find_answer(completion, answer_format)
        ms = list(ans_rx.finditer(completion))
        return ms[-1].span(1) if ms else None

    def extract(completion: str):
        span = answer_span(completion)
        return (completion[span[0] : span[1]].strip() or None) if span else None

    def grade(problem: TaskProblem, completion: str) -> bool | None:
        if problem.answer is None:
            return None  # no reference answer (a problems file without them): not gradable
        return answers_equivalent(extract(completion), problem.answer)

    def spans(completion: str) -> list[CharSpan]:
        if strategy_patterns is None:
            return default_labeler.char_spans(completion)
        out = [(k, m.start(), m.end()) for k, rx in strat.items() for m in rx.finditer(completion)]
        return sorted(out, key=lambda s: s[1])

    def classify(completion: str) -> str:
        for k, rx in fmts.items():
            if rx.search(completion):
                return k
        return "other"

    fixed = list(problems or [])

    def make(n: int, seed: int) -> list[TaskProblem]:
        if n > len(fixed):
            raise TwinlensError(f"Task {name!r} has {len(fixed)} problems; asked for {n}.")
        # Set 0: the file's order; set k: a seeded random order (Task.problems).
        order = range(len(fixed)) if seed == 0 else random.Random(f"{name}/{seed}").sample(range(len(fixed)), len(fixed))
        return [TaskProblem(id=prompt_id(fixed[i][0]), prompt=fixed[i][0], answer=fixed[i][1]) for i in list(order)[:n]]

    return Task(
        name=name, grade=grade, extract_answer=extract, classify_format=classify,
        label_strategies=spans, answer_span=answer_span, make_problems=make if fixed else None,
        formats=tuple(fmts), strategies=tuple(strat), max_new_tokens=max_new_tokens,
        answer_format=answer_format if answer_pattern is None else f"regex:{answer_pattern}",
        n_available=len(fixed) if fixed else None,
    )


def prompt_id(prompt: str) -> str:
    """A stable id for a bare prompt (hash of its text)."""
    return "p-" + hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


# ----------------------------------------------------------------- prompts/problems files
PROBLEMS_FORMAT = 'one JSON object a line, e.g. {"prompt": "What is 2+3?", "answer": "5"}'


@dataclass(frozen=True)
class ProblemRow:
    """One row of a problems file: its 1-based ``line``, the prompt text, the reference answer
    (None where the row has none) and the whole JSON object (extra fields, e.g. "gold")."""

    line: int
    prompt: str
    answer: Hashable | None
    fields: dict = field(compare=False, repr=False)


def _decode_utf8(path: Any, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TwinlensError(
            f"{path}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}). "
            "Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None


def _read_bytes(path: Any, what: str) -> bytes:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise TwinlensError(f"{what} {path} {state}; give the path of a file.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TwinlensError(f"Could not read {what} {path}: {exc.strerror or exc}.") from None


def read_text_file(path: Any, what: str = "File") -> str:
    """The UTF-8 text of ``path``; a missing file, a folder or non-UTF-8 bytes is a TwinlensError
    naming the file (and the line of the first bad byte) with the fix."""
    return _decode_utf8(path, _read_bytes(path, what))


def _check_answer(path: Any, line: int, answer: Any) -> Hashable | None:
    if answer is None or isinstance(answer, str) or (isinstance(answer, int) and not isinstance(answer, bool)):
        return answer
    if isinstance(answer, float) and answer == answer and abs(answer) != float("inf"):
        return answer
    raise TwinlensError(
        f"{path}, line {line}: \"answer\" must be a string or a number (it is compared with the "
        f"answer extracted from a completion), got {type(answer).__name__} {str(answer)[:60]}."
    )


def read_problems_file(path: Any, *, need_answers: bool = False, required: Sequence[str] = (),
                       what: str = "Problems file") -> list[ProblemRow]:
    """The rows of a JSONL prompts/problems file, checked before any model loads: UTF-8, one
    JSON object a line (blank lines skipped), a non-empty string "prompt", an "answer" that is a
    string or a number when present, the ``required`` extra fields, no prompt twice (a prompt's
    hash keys its samples). ``need_answers``: every row must have an answer (a job that grades
    refuses a file without them instead of reporting accuracy 0). Every error names the file,
    the line and the fix (TwinlensError)."""
    text = _decode_utf8(path, _read_bytes(path, what))
    rows: list[ProblemRow] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TwinlensError(
                f"{path}, line {i}: not valid JSON ({exc.msg} at column {exc.colno}). The file needs "
                f"{PROBLEMS_FORMAT}."
            ) from None
        if not isinstance(obj, dict):
            raise TwinlensError(f"{path}, line {i}: a JSON {type(obj).__name__}, not an object; the file needs "
                                f"{PROBLEMS_FORMAT}.")
        if "prompt" not in obj:
            raise TwinlensError(f"{path}, line {i}: no \"prompt\" field (it has {sorted(obj)[:6]}); the file "
                                f"needs {PROBLEMS_FORMAT}.")
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            hint = (" A chat (list of messages) is not supported: apply the chat template and store the "
                    "resulting text." if isinstance(prompt, list) else "")
            raise TwinlensError(f"{path}, line {i}: \"prompt\" must be a string, got "
                                f"{type(prompt).__name__} {str(prompt)[:60]}.{hint}")
        if not prompt.strip():
            raise TwinlensError(f"{path}, line {i}: \"prompt\" is empty; remove the line or give the text.")
        if prompt in seen:
            raise TwinlensError(f"{path}, line {i}: the same prompt as line {seen[prompt]}; a prompt keys its "
                                "samples on disk, so each must occur once. Remove the duplicate.")
        seen[prompt] = i
        missing = [k for k in required if k not in obj]
        if missing:
            raise TwinlensError(f"{path}, line {i}: no {', '.join(repr(k) for k in missing)} field; every row "
                                f"needs {', '.join(['prompt', *required])}.")
        rows.append(ProblemRow(i, prompt, _check_answer(path, i, obj.get("answer")), obj))
    if not rows:
        raise TwinlensError(f"{path} holds no problems (no non-blank lines); the file needs {PROBLEMS_FORMAT}.")
    if need_answers:
        lacking = [r.line for r in rows if r.answer is None]
        if lacking:
            raise TwinlensError(
                f"{path}: {len(lacking)} of {len(rows)} rows have no \"answer\" (lines {lacking[:5]}"
                f"{', ...' if len(lacking) > 5 else ''}). This job grades completions, so every problem needs "
                "its reference answer; without it every sample would count as wrong."
            )
    return rows


def read_prompts_file(path: Any, n: int | None = None) -> list[str]:
    """Prompts from a file: JSONL (``*.jsonl``, rows with "prompt", via read_problems_file) or
    plain UTF-8 text, one prompt a line (blank lines skipped). The first ``n`` (all if None)."""
    from pathlib import Path

    if Path(path).suffix == ".jsonl":
        prompts = [r.prompt for r in read_problems_file(path, what="Prompts file")]
    else:
        text = _decode_utf8(path, _read_bytes(path, "Prompts file"))
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise TwinlensError(f"Prompts file {path} holds no prompts; give one prompt a line.")
    return prompts if n is None else prompts[:n]


def load_task(problems_file: str | None = None, *, difficulty: int = 4, variant: str = "sum",
              confidence: bool = False, answer_format: str | None = None, answer_pattern: str | None = None,
              need_answers: bool = True) -> Task:
    """The task a job runs on: the organism's (default; its own exact grader; ``difficulty``,
    ``variant`` and ``confidence`` as in ``organism_task``), or a JSONL file
    of ``{"prompt": ..., "answer": ...}`` rows (read by ``read_problems_file``) whose answers
    ``answer_format`` finds (default ``auto``; or the regex ``answer_pattern``) and math-verify
    grades (``regex_task``). ``need_answers`` (jobs that grade): every row must have an
    answer; False: answers are optional, and ``task.has_answers`` says whether all rows have one.

    An answer format or pattern without a problems file is refused: the organism's grader is
    exact and takes neither."""
    if problems_file is not None and (variant != "sum" or confidence):
        raise TwinlensError(
            "--variant/--confidence choose among the organism task's prompts; a problems file brings its "
            "own prompts (with --problems, leave them out; calibrate.py's --confidence stated reads a "
            "confidence stated in real text)."
        )
    if problems_file is None:
        if answer_format not in (None, "exact") or answer_pattern is not None:
            raise TwinlensError(
                "--answer-format/--answer-pattern grade real text: give a problems file "
                "(--problems FILE.jsonl) too; the organism task keeps its own exact grader."
            )
        return organism_task(difficulty=difficulty, variant=variant, confidence=confidence)
    from pathlib import Path

    rows = read_problems_file(problems_file, need_answers=need_answers)
    task = regex_task(Path(problems_file).stem, [(r.prompt, r.answer) for r in rows], answer_pattern=answer_pattern,
                      answer_format=answer_format if answer_format not in (None, "exact") else "auto")
    task.has_answers = all(r.answer is not None for r in rows)
    return task
