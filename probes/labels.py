"""Strategy labels as spans of token positions, aligned with stored activations.

A label set for one example is an `ExampleLabels`: the token ids of the whole stored sequence
(prompt + completion), the spans `[start, end)` of token positions that carry each strategy, and
the reasoning span (the completion) that probes and vectors look at. Positions index the stored
sequence, so `labels.spans[k].start` is the row `position == start` of that example in an
`ActivationStore`.

Two sources:
- `organism_labels`: ground truth from the organism task (`organism.task.label_strategies`
  gives character spans of the completion; the organism's tokenizer has one token per
  character, so they are token spans, shifted by the prompt length).
- `RegexLabeler`: patterns from a small JSON file (`probes/default_labels.json` by default)
  for real text; character spans go to token spans through the tokenizer's offsets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hooks.errors import TwinlensError

__all__ = [
    "TokenSpan",
    "ExampleLabels",
    "organism_labels",
    "labels_from_char_spans",
    "task_labeler",
    "RegexLabeler",
    "char_spans_to_token_spans",
    "token_char_offsets",
    "special_token_ids",
    "DEFAULT_LABELS_PATH",
    "DECISION_LABELS_PATH",
    "SHIPPED_LABELS",
    "text_labeler",
]

DEFAULT_LABELS_PATH = Path(__file__).with_name("default_labels.json")
DECISION_LABELS_PATH = Path(__file__).with_name("decision_labels.json")
# Label configs that ship with the kit, by name (--labels default / --labels decision).
SHIPPED_LABELS = {"default": DEFAULT_LABELS_PATH, "decision": DECISION_LABELS_PATH}


@dataclass(frozen=True)
class TokenSpan:
    """One labelled segment: token positions `[start, end)` of the stored sequence."""

    strategy: str
    start: int
    end: int

    def __post_init__(self):
        if not (0 <= self.start < self.end):
            raise ValueError(f"TokenSpan needs 0 <= start < end, got {self}.")


@dataclass(frozen=True)
class ExampleLabels:
    """Strategy labels of one stored sequence.

    token_ids: the ids of the whole stored sequence (prompt + completion); checked against the
        store's tokens when a dataset is built, so labels can never silently slide.
    spans: labelled segments in positions of that sequence.
    reasoning_start, reasoning_end: the reasoning span (completion) `[start, end)`; probes and
        the overall mean of the strategy vectors use only these positions.
    source: where the labels come from ("organism", "regex:<config>", ...), kept as provenance.
    """

    token_ids: tuple[int, ...]
    spans: tuple[TokenSpan, ...]
    reasoning_start: int
    reasoning_end: int
    source: str = "unknown"
    text: str | None = field(default=None, compare=False)

    def __post_init__(self):
        n = len(self.token_ids)
        if not (0 <= self.reasoning_start <= self.reasoning_end <= n):
            raise ValueError(
                f"ExampleLabels: reasoning span [{self.reasoning_start}, {self.reasoning_end}) "
                f"does not fit a sequence of {n} tokens."
            )
        for s in self.spans:
            if s.end > n:
                raise ValueError(
                    f"ExampleLabels: span {s} runs past the end of the sequence ({n} tokens); "
                    "the labels were made from a different text than these token ids."
                )

    @property
    def strategies(self) -> set[str]:
        return {s.strategy for s in self.spans}

    def spans_of(self, strategy: str) -> list[TokenSpan]:
        return [s for s in self.spans if s.strategy == strategy]

    def token_mask(self, strategy: str) -> np.ndarray:
        """Per-token label: bool `[len(token_ids)]`, True inside a span of `strategy`."""
        mask = np.zeros(len(self.token_ids), dtype=bool)
        for s in self.spans_of(strategy):
            mask[s.start : s.end] = True
        return mask

    def start_mask(self, strategy: str, offset: int = 0) -> np.ndarray:
        """True at `start + offset` of every span of `strategy` (inside the sequence)."""
        mask = np.zeros(len(self.token_ids), dtype=bool)
        for s in self.spans_of(strategy):
            p = s.start + offset
            if 0 <= p < len(mask):
                mask[p] = True
        return mask


# ------------------------------------------------------------------ organism (ground truth)
def organism_labels(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    tokenizer,
    label_fn: Callable[[str], Sequence] | None = None,
) -> ExampleLabels:
    """Ground-truth labels of one organism completion, in positions of prompt + completion.

    `label_fn(completion_text) -> [StrategySpan(strategy, start, end)]` in characters of the
    completion; defaults to `organism.task.label_strategies`. The organism tokenizer has one
    token per character, so a character span is a token span; this is checked.
    """
    if label_fn is None:
        from organism.task import label_strategies as label_fn  # organism is upstream of probes
    prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
    text = tokenizer.decode(completion_ids)
    if len(text) != len(completion_ids):
        raise ValueError(
            f"organism_labels: the completion decodes to {len(text)} characters but has "
            f"{len(completion_ids)} tokens; organism labels need the organism's character "
            "tokenizer. For other models use RegexLabeler.label_tokens."
        )
    off = len(prompt_ids)
    spans = tuple(
        TokenSpan(strategy, off + start, off + end)
        for strategy, start, end in map(_as_triple, label_fn(text))
        if end > start
    )
    ids = tuple(prompt_ids + completion_ids)
    return ExampleLabels(ids, spans, off, len(ids), source="organism", text=text)


def _as_triple(span) -> tuple[str, int, int]:
    """A StrategySpan-like object or a (strategy, start, end) tuple."""
    if hasattr(span, "strategy"):
        return span.strategy, int(span.start), int(span.end)
    strategy, start, end = span
    return strategy, int(start), int(end)


def labels_from_char_spans(
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    tokenizer,
    char_label_fn: Callable[[str], Sequence],
    source: str = "task",
) -> ExampleLabels:
    """Labels of one completion from any character-span labeler (e.g. a `Task`'s
    `label_strategies`), mapped to positions of prompt + completion through the tokenizer's
    offsets (exact for a character tokenizer)."""
    prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
    text, offsets = token_char_offsets(tokenizer, completion_ids)
    spans = char_spans_to_token_spans([_as_triple(s) for s in char_label_fn(text)], offsets)
    off = len(prompt_ids)
    ids = tuple(prompt_ids + completion_ids)
    return ExampleLabels(
        ids, tuple(TokenSpan(s.strategy, s.start + off, s.end + off) for s in spans), off,
        len(ids), source=source, text=text,
    )


def task_labeler(task, config: str | Path | None = None, regex: bool = False):
    """The labeler a job hands to `probes.sample_traces` for `task`: a `RegexLabeler` from the
    JSON `config` when one is given; the default config (`DEFAULT_LABELS_PATH`) when `regex`
    (real text without a config); else the task's own character labels (`task.label_strategies`
    through `labels_from_char_spans`, source = the task's name)."""
    if config:
        return RegexLabeler.from_json(config)
    if regex:
        return RegexLabeler.from_json(None)

    def labeler(prompt_ids, completion_ids, tokenizer) -> ExampleLabels:
        return labels_from_char_spans(prompt_ids, completion_ids, tokenizer, task.label_strategies,
                                      source=task.name)

    return labeler


def text_labeler(task, labeler):
    """The completion-text labeler `(text) -> [(strategy, start, end)]` that matches a labeler
    of `task_labeler` (a `RegexLabeler`'s own spans, else the task's), so that steering counts
    the same strategies the probes and vectors were fitted on."""
    return labeler.char_spans if isinstance(labeler, RegexLabeler) else task.label_strategies


# ------------------------------------------------------------------ char -> token spans
def char_spans_to_token_spans(
    spans: Sequence[tuple[str, int, int]], offsets: Sequence[tuple[int, int]]
) -> list[TokenSpan]:
    """Map character spans `(strategy, c0, c1)` to token spans through per-token character
    offsets `[(t0, t1)]`: a token belongs to a span when their character ranges overlap."""
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    ends = np.array([o[1] for o in offsets], dtype=np.int64)
    out = []
    for strategy, c0, c1 in spans:
        hit = np.nonzero((ends > c0) & (starts < c1) & (ends > starts))[0]
        if hit.size:
            out.append(TokenSpan(strategy, int(hit[0]), int(hit[-1]) + 1))
    return out


def special_token_ids(tokenizer, token_ids: Sequence[int]) -> set[int]:
    """The ids among `token_ids` that the tokenizer drops when decoding with
    ``skip_special_tokens=True`` (BOS/EOS, ``<|im_start|>``, ``<start_of_turn>``, every added
    token marked special), found by asking the tokenizer itself, so no list can lag."""
    out = set()
    for i in set(int(t) for t in token_ids):
        if tokenizer.decode([i], skip_special_tokens=True) == "" and tokenizer.decode(
            [i], skip_special_tokens=False
        ) != "":
            out.add(i)
    return out


def token_char_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of `token_ids` and each token's `(start, end)` character range in it.

    The kit's one decode convention, used end to end (sampling rows' ``text``, the labelers,
    MI peaks, graders): ``text == tokenizer.decode(ids, skip_special_tokens=True)``. A special
    token (``<|im_start|>``, BOS, EOS, ...) gets an empty range at its place, so it never falls
    inside a span and never shifts a later one. Byte-fallback pieces of one character (a
    SentencePiece ``<0xE2><0x82><0xAC>``, a byte-level BPE split of an emoji) all get that
    character's range.

    Fast path: the tokenizer's own offset mapping, when re-encoding the text gives the ids back
    (no special token, canonical tokenization). Otherwise each token is decoded with a few
    tokens of left context (O(n) decodes; checked to add up to the text), and as a last resort
    every prefix is decoded (O(n^2) characters).
    """
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    special = special_token_ids(tokenizer, ids)
    if not special:
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if list(enc["input_ids"]) == ids:
                return text, [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            pass  # slow tokenizers have no offsets
    offsets = _windowed_offsets(tokenizer, ids, text)
    if offsets is None:  # the windowed pieces did not add up to the text: decode every prefix
        offsets = _prefix_offsets(tokenizer, ids, text, special)
    return text, offsets


_WINDOW = 8  # tokens of left context when decoding one token (spaces, merges at the boundary)


def _windowed_offsets(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]] | None:
    """Each token's characters from decoding it with a few tokens of left context, O(n) decodes
    (the incremental detokenizer of serving engines). Byte pieces that end inside a character
    (U+FFFD) wait for the piece that completes it and share its range. None when the pieces do
    not concatenate to `text` (a decoder that rewrites across the window)."""
    def dec(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True)

    offsets: list[tuple[int, int]] = []
    pos, first_pending = 0, 0
    for i in range(len(ids)):
        s = max(0, first_pending - _WINDOW)
        head, cur = dec(ids[s:first_pending]), dec(ids[s : i + 1])
        if cur.endswith("\ufffd") and i + 1 < len(ids) and not text.startswith(cur[len(head):], pos):
            continue  # a byte piece in the middle of a character: wait for the rest
        if not cur.startswith(head):
            return None
        piece = cur[len(head):]
        if not text.startswith(piece, pos):
            return None
        offsets += [(pos, pos + len(piece))] * (i + 1 - first_pending)
        pos += len(piece)
        first_pending = i + 1
    return offsets if pos == len(text) and len(offsets) == len(ids) else None


def _prefix_offsets(tokenizer, ids: list[int], text: str, special: set[int]) -> list[tuple[int, int]]:
    """Each token's end from decoding every prefix (O(n^2) characters): the last resort."""
    ends, prev = [], 0
    for i in range(len(ids)):
        if ids[i] in special:
            ends.append(prev)
            continue
        cur = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        # A prefix that ends inside a multi-byte character decodes to U+FFFD, and clean-up of
        # spaces may differ at the cut: count only what agrees with the full text.
        n = len(cur) if text.startswith(cur) else _common_prefix_len(cur, text)
        prev = max(prev, n)
        ends.append(prev)
    offsets = []
    start = 0
    for end in ends:
        offsets.append((start, end))
        start = end
    # Pieces of one character (empty range, not special) take the range of the piece that
    # completes it.
    pending: list[int] = []
    for i, (a, b) in enumerate(offsets):
        if b > a:
            for j in pending:
                offsets[j] = (a, b)
            pending = []
        elif ids[i] not in special:
            pending.append(i)
    return offsets


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ------------------------------------------------------------------ regex labeler
_FLAG_NAMES = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}


class RegexLabeler:
    """Strategy labels for real text from regular expressions.

    Config (JSON): `{"flags": "i", "extent": "sentence" | "match",
    "sentence_end": "[.!?\\n]", "strategies": {"backtracking": ["\\bWait\\b", ...], ...}}`.
    With extent "sentence" a match labels the text from the match to the end of its sentence
    (the segment the strategy opens); with "match" only the matched characters. Overlapping
    spans of one strategy are merged.
    """

    def __init__(
        self,
        strategies: dict[str, Sequence[str]],
        flags: str = "i",
        extent: str = "sentence",
        sentence_end: str = r"[.!?\n]",
        name: str = "custom",
    ):
        if extent not in ("sentence", "match"):
            raise TwinlensError(f"RegexLabeler: extent must be 'sentence' or 'match', got {extent!r}.")
        unknown = set(flags) - set(_FLAG_NAMES)
        if unknown:
            raise TwinlensError(f"RegexLabeler: unknown regex flags {sorted(unknown)}; use i, m, s.")
        flag_bits = 0
        for f in flags:
            flag_bits |= _FLAG_NAMES[f]
        self.patterns: dict[str, list[re.Pattern]] = {}
        for strategy, pats in strategies.items():
            if isinstance(pats, str):
                pats = [pats]
            if not isinstance(pats, (list, tuple)) or not all(isinstance(p, str) for p in pats):
                raise TwinlensError(f"RegexLabeler: strategy {strategy!r} needs a regex or a list of regexes "
                                    f"(strings), got {pats!r}.")
            compiled = []
            for p in pats:
                try:
                    compiled.append(re.compile(p, flag_bits))
                except re.error as err:
                    raise TwinlensError(
                        f"RegexLabeler: pattern {p!r} of strategy {strategy!r} is not a valid "
                        f"regular expression ({err})."
                    ) from err
            self.patterns[strategy] = compiled
        self.extent = extent
        self.sentence_end = re.compile(sentence_end)
        self.name = name

    @classmethod
    def from_json(cls, path: str | Path | None = None) -> RegexLabeler:
        """Load a labeler from a JSON config; `None` loads `probes/default_labels.json`, and a
        name of `SHIPPED_LABELS` ("default", "decision": sentence / line starts, present in
        every trace) that is not a file loads the shipped config of that name."""
        if path is None:
            path = DEFAULT_LABELS_PATH
        elif str(path) in SHIPPED_LABELS and not Path(path).exists():
            path = SHIPPED_LABELS[str(path)]
        path = Path(path)
        if not path.is_file():
            raise TwinlensError(f"RegexLabeler: no label config at {path}; give a JSON file such as "
                                f"{DEFAULT_LABELS_PATH.name} ({{\"strategies\": {{name: [regex, ...]}}}}), or a shipped "
                                f"one by name: {', '.join(SHIPPED_LABELS)}.")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise TwinlensError(f"RegexLabeler: {path}, line {line}: not UTF-8 text; save it as UTF-8.") from None
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as err:
            raise TwinlensError(f"RegexLabeler: {path}, line {err.lineno}: not valid JSON ({err.msg} at column "
                                f"{err.colno}).") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("strategies"), dict):
            raise TwinlensError(
                f"RegexLabeler: {path} needs a 'strategies' object mapping names to patterns."
            )
        return cls(
            cfg["strategies"],
            flags=cfg.get("flags", "i"),
            extent=cfg.get("extent", "sentence"),
            sentence_end=cfg.get("sentence_end", r"[.!?\n]"),
            name=path.stem,
        )

    @property
    def strategies(self) -> list[str]:
        return list(self.patterns)

    def char_spans(self, text: str) -> list[tuple[str, int, int]]:
        """`(strategy, start, end)` character spans in `text`, sorted by start."""
        out = []
        for strategy, pats in self.patterns.items():
            found = []
            for pat in pats:
                for m in pat.finditer(text):
                    if m.end() == m.start():
                        continue
                    end = m.end()
                    if self.extent == "sentence":
                        stop = self.sentence_end.search(text, m.end())
                        end = stop.end() if stop else len(text)
                    found.append((m.start(), end))
            found.sort()
            merged: list[list[int]] = []
            for s, e in found:
                if merged and s <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], e)
                else:
                    merged.append([s, e])
            out += [(strategy, s, e) for s, e in merged]
        return sorted(out, key=lambda t: (t[1], t[0]))

    def label_tokens(
        self, token_ids: Sequence[int], tokenizer, reasoning_start: int = 0
    ) -> ExampleLabels:
        """Labels of one stored sequence: the regexes run on the decoded reasoning part
        (`token_ids[reasoning_start:]`), and their character spans are mapped to positions of
        the whole sequence through the tokenizer's offsets."""
        ids = list(token_ids)
        if not 0 <= reasoning_start <= len(ids):
            raise ValueError(
                f"RegexLabeler: reasoning_start {reasoning_start} is outside the sequence "
                f"({len(ids)} tokens)."
            )
        text, offsets = token_char_offsets(tokenizer, ids[reasoning_start:])
        spans = char_spans_to_token_spans(self.char_spans(text), offsets)
        spans = tuple(
            TokenSpan(s.strategy, s.start + reasoning_start, s.end + reasoning_start)
            for s in spans
        )
        return ExampleLabels(
            tuple(ids), spans, reasoning_start, len(ids), source=f"regex:{self.name}", text=text
        )
