"""The paper's two interventions, on any model with a Task's grader.

1. Suppressing the tokens that carry MI peaks: ban the most frequent peak-token types (their
   logits set to -inf at every greedy step) and measure accuracy, against banning the same number
   of random token types drawn (seeded) from the other tokens the model writes. Eos is never
   banned (a completion must be able to end).
2. Thinking-token test-time scaling: after the model's first (greedy) completion, append a
   strategy token string (e.g. ``wait;`` or ``chk `` for the organism, "Wait" for real text) and
   keep generating; grade the final text. The control appends a random string of the same number
   of tokens from the model's own completion vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from analyses.mi_peaks.comparison import Estimate, wilson
from hooks import Model, TwinlensError, generate


def ban_tokens(banned: Sequence[int]) -> Callable[[Tensor, Tensor], Tensor]:
    """A logits processor for hooks.generate that makes ``banned`` token ids impossible."""
    idx = torch.as_tensor(sorted(set(int(t) for t in banned)), dtype=torch.long)

    def processor(logits: Tensor, generated: Tensor) -> Tensor:
        if idx.numel() == 0:
            return logits
        logits = logits.clone()
        logits[:, idx.to(logits.device)] = float("-inf")
        return logits

    return processor


def greedy_accuracy(
    model: Model, prompts: Sequence[Sequence[int]], grade: Callable[[int, str], bool],
    max_new_tokens: int, banned: Sequence[int] = (), batch_size: int = 64,
) -> tuple[Estimate, list[str]]:
    """Greedy accuracy (Wilson CI) with ``banned`` token ids; grade(problem_index, text)."""
    comps = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                     batch_size=batch_size, logits_processor=ban_tokens(banned) if banned else None)
    texts = [model.decode(c) for c in comps]
    ok = [bool(grade(i, t)) for i, t in enumerate(texts)]
    return wilson(sum(ok), len(ok)), texts


@dataclass
class SuppressionResult:
    banned_peak_tokens: list[str]
    accuracy_unbanned: Estimate
    accuracy_peak_banned: Estimate
    random_banned: list[list[str]]  # one set per draw
    accuracy_random_banned: list[Estimate]
    accuracy_random_mean: float
    seed: int


def peak_token_suppression(
    model: Model,
    prompts: Sequence[Sequence[int]],
    grade: Callable[[int, str], bool],
    peak_token_ids: Sequence[int],
    candidate_ids: Sequence[int],
    max_new_tokens: int,
    n_random: int = 5,
    seed: int = 0,
) -> SuppressionResult:
    """Ban ``peak_token_ids`` vs ``n_random`` draws of as many ids from ``candidate_ids`` minus
    the peak ids (draws seeded). Eos is removed from both sets."""
    eos = model.tokenizer.eos_token_id
    peaks = [int(t) for t in dict.fromkeys(peak_token_ids) if int(t) != eos]
    pool = sorted({int(t) for t in candidate_ids} - set(peaks) - {eos})
    if not peaks:
        raise TwinlensError("No peak tokens to ban (only eos peaks?); nothing to suppress.")
    if len(pool) < len(peaks):
        raise TwinlensError(
            f"Only {len(pool)} other token types to draw the random control from, need {len(peaks)}; "
            "ban fewer peak tokens."
        )
    name = lambda ids: [model.tokenizer.decode([i]) for i in ids]  # noqa: E731
    base_acc, _ = greedy_accuracy(model, prompts, grade, max_new_tokens)
    peak_acc, _ = greedy_accuracy(model, prompts, grade, max_new_tokens, banned=peaks)
    rng = np.random.default_rng(seed)
    draws, accs = [], []
    for _ in range(n_random):
        ids = [int(x) for x in rng.choice(pool, size=len(peaks), replace=False)]
        draws.append(name(ids))
        accs.append(greedy_accuracy(model, prompts, grade, max_new_tokens, banned=ids)[0])
    return SuppressionResult(
        banned_peak_tokens=name(peaks), accuracy_unbanned=base_acc, accuracy_peak_banned=peak_acc,
        random_banned=draws, accuracy_random_banned=accs,
        accuracy_random_mean=float(np.mean([a.value for a in accs])) if accs else float("nan"),
        seed=seed,
    )


@dataclass
class ScalingResult:
    appended: str
    accuracy_before: Estimate
    accuracy_after: Estimate
    fixed: int  # wrong before, right after
    broken: int  # right before, wrong after
    p_mcnemar: float  # exact two-sided McNemar (binomial on the discordant pairs)
    n_no_room: int  # rows left out: no room in the context to continue
    n_no_new_answer: int  # continuations without an answer (the first answer stands)
    examples: list[str]


def thinking_token_scaling(
    model: Model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    grade: Callable[[int, str], bool],
    append_text: str,
    max_new_tokens: int,
    extract_answer: Callable[[str], object] | None = None,
    n_examples: int = 3,
    min_room: int = 16,
    append_ids: Sequence[int] | None = None,
    word_boundary: bool = True,
) -> ScalingResult:
    """Append ``append_text`` after each first completion and continue greedily; compare the
    graded accuracy before and after (paired, exact McNemar).

    The appended tokens are ``model.encode_continuation(append_text, completion text,
    word_boundary)``: no BOS, and " Wait" (a new word) after a completion ending in a non-space
    character; ``append_ids`` gives the tokens instead (the random control, whose ids must not be
    re-tokenized from their text).

    The answer after scaling is the model's last answer: with ``extract_answer``, the
    continuation (appended text + new tokens) is graded when it holds an answer, otherwise the
    first answer stands (``n_no_new_answer`` counts those); without it the whole final text is
    graded. Rows whose context has no room for ``min_room`` more tokens are left out
    (``n_no_room``)."""
    from scipy import stats

    if append_ids is not None:
        if not append_ids:
            raise TwinlensError("append_ids is empty; pass at least one token id.")
        extras = [[int(t) for t in append_ids]] * len(completions)
    else:
        extras = [model.encode_continuation(append_text, model.decode(list(c)), word_boundary)
                  for c in completions]
    n_ctx = model.n_ctx or 10**9
    seqs = [list(p) + list(c) + e for p, c, e in zip(prompts, completions, extras, strict=True)]
    # One budget for the batch; rows without room for min_room new tokens are left out (counted).
    keep = [i for i, s in enumerate(seqs) if n_ctx - len(s) >= min(min_room, max_new_tokens)]
    if not keep:
        raise TwinlensError(
            f"No completion leaves room in the model's context ({n_ctx}) to continue after "
            f"appending {append_text!r}; use shorter completions or a smaller min_room."
        )
    budget = min(max_new_tokens, min(n_ctx - len(seqs[i]) for i in keep))
    conts = generate(model, [seqs[i] for i in keep], max_new_tokens=budget, temperature=0.0)
    before, after, examples = [], [], []
    no_new = 0
    for i, k in zip(keep, conts, strict=True):
        c, extra = list(completions[i]), extras[i]
        full = model.decode(c + extra + list(k))
        before.append(bool(grade(i, model.decode(c))))
        if extract_answer is None:
            after.append(bool(grade(i, full)))
        else:
            tail = model.decode(extra + list(k))
            if extract_answer(tail) is None:
                no_new += 1
                after.append(before[-1])
            else:
                after.append(bool(grade(i, tail)))
        if len(examples) < n_examples:
            examples.append(full)
    fixed = sum((not b) and a for b, a in zip(before, after, strict=True))
    broken = sum(b and (not a) for b, a in zip(before, after, strict=True))
    p = float(stats.binomtest(fixed, fixed + broken, 0.5).pvalue) if fixed + broken else 1.0
    return ScalingResult(
        appended=append_text, accuracy_before=wilson(sum(before), len(before)),
        accuracy_after=wilson(sum(after), len(after)), fixed=fixed, broken=broken,
        p_mcnemar=p, n_no_room=len(seqs) - len(keep), n_no_new_answer=no_new, examples=examples,
    )


def random_token_ids(model: Model, candidate_ids: Sequence[int], n_tokens: int, seed: int = 0) -> list[int]:
    """Control for thinking_token_scaling: ``n_tokens`` ids drawn (seeded, with replacement)
    from ``candidate_ids`` (eos and every special token excluded). Pass them as ``append_ids``:
    decoding and re-encoding them need not give ``n_tokens`` tokens back."""
    from probes.labels import special_token_ids

    pool = sorted({int(t) for t in candidate_ids} - {model.tokenizer.eos_token_id}
                  - special_token_ids(model.tokenizer, candidate_ids))
    if not pool:
        raise TwinlensError("No candidate tokens for the random control string.")
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(pool, size=n_tokens, replace=True)]


def random_token_string(model: Model, candidate_ids: Sequence[int], n_tokens: int, seed: int = 0) -> str:
    """``random_token_ids`` decoded (for display; re-encoding it may not give the same ids)."""
    return model.decode(random_token_ids(model, candidate_ids, n_tokens, seed))
