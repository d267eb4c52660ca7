"""MI trajectories: the hidden state behind every generated token, and the gold state.

Alignment follows the authors' code (a forward hook on a decoder layer during ``generate``):
state ``t`` is the block output at the position whose next-token prediction is completion token
``t`` -- the last prompt position for the first generated token, then each generated token in
turn, and finally the position that emits eos when generation stopped there. So
``emitted_ids[t]`` is "the token at state t" (what the paper's token tables count), and at the last
layer greedy decoding of state t through the final norm and unembedding gives ``emitted_ids[t]``.

The states come from one teacher-forced forward over prompt + completion through
``hooks.capture`` (the bridge over the HF model; equal to HF's own hidden states), which gives the
same numbers as hooking every KV-cached generation step, in one pass.

Gold representation: block ``layer`` output at the LAST token of one forward over the reference
solution text (the authors use the dataset's solution text; for the organism we pass prompt +
a correct step-by-step solution, which ends with the answer's two digits).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from hooks import Model, TwinlensError, capture, generate

_GOLD_FIX = ("pass the reference solution text (non-empty), e.g. the prompt followed by a "
             "correct worked solution ending with the answer.")


def resolve_layer(model: Model, layer: int | None) -> int:
    """Block index in 0..n_layers-1; None or -1 = the last block (before the final norm)."""
    n = model.n_layers
    if layer is None:
        return n - 1
    if isinstance(layer, bool) or int(layer) != layer:
        raise TwinlensError(f"layer must be an integer block index, got {layer!r}.")
    layer = int(layer)
    if -n <= layer < 0:
        return n + layer
    if not 0 <= layer < n:
        raise TwinlensError(
            f"Layer {layer} is out of range: {model.name} has {n} blocks, so use 0..{n - 1} "
            f"(or -1 for the last block, the paper's choice)."
        )
    return layer


@dataclass
class Trajectory:
    """One problem's trajectory under one model."""

    problem_id: str
    prompt_ids: list[int]
    completion_ids: list[int]  # eos stripped
    finished: bool  # generation ended with eos; then the eos-emitting state is the last state
    emitted_ids: list[int]  # token emitted by each state: completion_ids (+ [eos] if finished)
    states: Float[Tensor, "T d"]  # block `layer` output at the position emitting emitted_ids[t]
    gold: Float[Tensor, " d"]
    layer: int
    mi: Float[Tensor, " T"] | None = None  # filled by compute_mi
    token_strategy: list[str] = field(default_factory=list)  # strategy of each emitted token or "none"
    strategy_marker: list[bool] = field(default_factory=list)  # emitted token opens a strategy span
    text: str = ""  # decoded completion
    correct: bool | None = None

    @property
    def length(self) -> int:
        return len(self.emitted_ids)


def _check_token_lists(
    lists: Sequence[Sequence[int] | str], what: str, fix: str, model: Model | None = None
) -> list[list[int]]:
    """Token-id lists (a str is encoded with the model's tokenizer); empty ones are refused."""
    out = []
    for i, ids in enumerate(lists):
        if isinstance(ids, str):
            if model is None:
                raise TwinlensError(f"{what} {i} is text; pass token ids.")
            ids = model.encode(ids)
        ids = [int(t) for t in ids]
        if not ids:
            raise TwinlensError(f"{what} {i} tokenizes to nothing (no tokens); {fix}")
        out.append(ids)
    return out


def capture_positions(
    model: Model, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], layer: int,
    batch_size: int = 16,
) -> list[Float[Tensor, "n d"]]:
    """Block `layer` output of each sequence at the given positions (ascending), via
    hooks.capture into a temporary store. Returns one [len(positions[i]), d] tensor per sequence."""
    hook = f"blocks.{layer}.hook_out"
    with tempfile.TemporaryDirectory(prefix="mi_peaks_") as tmp:
        store = capture(model, [list(s) for s in sequences], hooks=[hook], out=f"{tmp}/acts",
                        positions=[sorted(p) for p in positions], batch_size=batch_size, progress=False)
        acts = store.read(hook, model="model").float().clone()
        example = store.example_index.clone()
    counts = torch.bincount(example, minlength=len(sequences)).tolist()
    return list(torch.split(acts, counts))


def collect_trajectories(
    model: Model,
    prompts: Sequence[Sequence[int] | str],
    completions: Sequence[Sequence[int]],
    gold_texts: Sequence[Sequence[int] | str],
    layer: int | None = None,
    finished: Sequence[bool] | None = None,
    problem_ids: Sequence[str] | None = None,
    batch_size: int = 16,
) -> list[Trajectory]:
    """Trajectories of given completions (teacher-forced): states at the positions emitting each
    completion token (and eos where ``finished``, default True) plus each gold state.

    prompts, completions, gold_texts: token ids per problem (prompts and gold texts may be text,
    encoded with the model's tokenizer); gold = the reference solution text.
    """
    layer = resolve_layer(model, layer)
    n = len(prompts)
    if not (len(completions) == len(gold_texts) == n):
        raise TwinlensError(
            f"{n} prompts, {len(completions)} completions and {len(gold_texts)} gold texts: "
            "give one of each per problem."
        )
    if n == 0:
        raise TwinlensError("No problems given; pass at least one prompt.")
    prompts = _check_token_lists(prompts, "Prompt", "pass a non-empty prompt.", model)
    gold_texts = _check_token_lists(gold_texts, "Gold answer text", _GOLD_FIX, model)
    finished = [True] * n if finished is None else [bool(f) for f in finished]
    ids = list(problem_ids) if problem_ids is not None else [str(i) for i in range(n)]
    eos = model.tokenizer.eos_token_id
    seqs, pos, emitted = [], [], []
    for p, c, f in zip(prompts, completions, finished, strict=True):
        c = [int(t) for t in c]
        use_eos = f and eos is not None
        n_states = len(c) + (1 if use_eos else 0)
        seqs.append(p + c if c else p)
        pos.append(list(range(len(p) - 1, len(p) - 1 + n_states)))
        emitted.append(c + ([eos] if use_eos else []))
    empty = [i for i, e in enumerate(emitted) if not e]
    if empty:
        raise TwinlensError(
            f"Problems {empty[:5]} have an empty completion and no eos: nothing to measure. "
            "Raise max_new_tokens or drop them."
        )
    got = capture_positions(model, seqs + gold_texts, pos + [[len(g) - 1] for g in gold_texts],
                            layer, batch_size)
    out = []
    for i in range(n):
        out.append(Trajectory(
            problem_id=ids[i], prompt_ids=prompts[i], completion_ids=[int(t) for t in completions[i]],
            finished=finished[i], emitted_ids=emitted[i], states=got[i], gold=got[n + i][0], layer=layer,
        ))
    return out


def greedy_trajectories(
    model: Model,
    prompts: Sequence[Sequence[int] | str],
    gold_texts: Sequence[Sequence[int] | str],
    layer: int | None = None,
    max_new_tokens: int = 128,
    problem_ids: Sequence[str] | None = None,
    batch_size: int = 64,
) -> list[Trajectory]:
    """Greedy generation (temperature 0, hooks.generate) per prompt, then its trajectory."""
    layer = resolve_layer(model, layer)
    prompts = _check_token_lists(prompts, "Prompt", "pass a non-empty prompt.", model)
    gold_texts = _check_token_lists(gold_texts, "Gold answer text", _GOLD_FIX, model)
    comps = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    # hooks.generate strips eos: a completion shorter than max_new_tokens stopped at eos.
    finished = [len(c) < max_new_tokens for c in comps]
    return collect_trajectories(model, prompts, comps, gold_texts, layer, finished, problem_ids,
                                batch_size=min(batch_size, 16))


@torch.no_grad()
def decode_states(model: Model, states: Float[Tensor, "n d"]) -> list[int]:
    """Token each state decodes to through the model's own final norm and unembedding (the
    logit lens; at the last layer this is the model's greedy next token)."""
    if states.shape[0] == 0:
        return []
    norm, _ = model.hf_module("ln_final.hook_out")
    head = model.hf.get_output_embeddings()
    x = states.to(model.device, model.dtype)
    return head(norm(x)).argmax(-1).tolist()
