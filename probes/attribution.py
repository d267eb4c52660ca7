"""Layer choice by attribution (Venhoff et al., arXiv 2506.18167; RESEARCH.md section 1).

For a segment starting at position `start`, take the next-token distribution at `start - 1`
(the logits that emit the segment's first token) and the KL metric of the authors' code,
`F.kl_div(log_softmax(z), log_softmax(z).detach(), reduction="batchmean")`. A true KL between a
distribution and itself has zero gradient; the code passes log-probabilities as the target
without `log_target=True`, so its gradient with respect to the log-probabilities is
`-log p / V` (V = vocabulary size). We use the surrogate `-(log p.detach() * log p).sum() / V`,
whose gradient is exactly that (and whose value is finite). The attribution of a vector `v_L`
at layer L is `|v_L . dM/dh_L[start - 1]|`, averaged over segments; the chosen layer has the
largest attribution.

Differences from the code, on purpose: the code reads the logits one position after the
gradient position (its token positions are shifted by one by a BOS it drops); here the metric
and the gradient are both at `start - 1`, as the paper describes. As in the code, a strategy's
vector is attributed at the starts of the OTHER strategies' segments by default
(`segments="others"`); "own" and "all" are offered.

Runs on `model.hf`, reading the block outputs through `hooks.edit_block_output` (an identity
edit that keeps the output); the hooks are removed on exit, also on an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch

from hooks.errors import TwinlensError
from hooks.interventions import edit_block_output, forward_layout, right_padded_layout
from probes.labels import ExampleLabels
from probes.vectors import StrategyVector

__all__ = ["AttributionResult", "attribute_layers", "kl_metric"]


def kl_metric(logits: torch.Tensor) -> torch.Tensor:
    """Scalar metric of one next-token distribution `logits` `[V]` whose gradient equals the
    authors' `F.kl_div(log_softmax(z), log_softmax(z.detach()), reduction="batchmean")`."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.detach() * logp).sum() / logits.shape[-1]


@dataclass
class AttributionResult:
    strategy: str
    layers: list[int]
    effect: np.ndarray  # [n_layers] mean |v . grad| over segments
    effect_sem: np.ndarray  # [n_layers] standard error over segments
    n_segments: int
    segments: str

    @property
    def chosen_layer(self) -> int:
        return int(self.layers[int(np.argmax(self.effect))])

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "layers": list(self.layers),
            "effect": self.effect.tolist(),
            "effect_sem": self.effect_sem.tolist(),
            "chosen_layer": self.chosen_layer,
            "n_segments": self.n_segments,
            "segments": self.segments,
        }


def _segment_starts(
    labels: Sequence[ExampleLabels], strategy: str, segments: str
) -> list[tuple[int, int]]:
    """(example index, start) of the segments the attribution is measured at."""
    if segments not in ("others", "own", "all"):
        raise TwinlensError(f"segments must be 'others', 'own' or 'all', got {segments!r}.")
    out = []
    for i, lab in enumerate(labels):
        for s in lab.spans:
            own = s.strategy == strategy
            if (segments == "own" and own) or (segments == "others" and not own) or segments == "all":
                if s.start >= 1:
                    out.append((i, s.start))
    return out


def attribute_layers(
    model,
    labels: Sequence[ExampleLabels],
    vectors: Sequence[StrategyVector],
    segments: str = "others",
    max_segments: int = 200,
    seed: int = 0,
) -> AttributionResult:
    """Attribution of one strategy's per-layer vectors (one `StrategyVector` per layer, e.g. from
    `diff_of_means_vectors`) on `model` over the labelled sequences `labels`.

    At most `max_segments` segments are used (a seeded random subset)."""
    if not vectors:
        raise TwinlensError("attribute_layers needs at least one vector.")
    strategy = vectors[0].strategy
    for v in vectors:
        v.check_fits(model)
    layers = [v.layer for v in vectors]
    V = torch.stack([v.direction.double() for v in vectors])  # [L, d]
    starts = _segment_starts(labels, strategy, segments)
    if not starts:
        raise TwinlensError(
            f"No segment to attribute {strategy!r} at (segments={segments!r}); use labels that "
            "hold such segments, or segments='all'."
        )
    if len(starts) > max_segments:
        keep = np.random.default_rng(seed).choice(len(starts), max_segments, replace=False)
        starts = [starts[i] for i in sorted(keep)]
    by_example: dict[int, list[int]] = {}
    for i, s in starts:
        by_example.setdefault(i, []).append(s)

    captured: dict[int, torch.Tensor] = {}

    def record(k: int):
        def edit(x: torch.Tensor) -> torch.Tensor:
            captured[k] = x
            return x

        return edit

    effects = []
    hf = model.hf
    with ExitStack() as stack:
        for k, layer in enumerate(layers):
            stack.enter_context(edit_block_output(model, layer, record(k)))
        for i, seg_starts in by_example.items():
            ids = torch.tensor([list(labels[i].token_ids)], device=model.device)
            end = max(seg_starts)  # the metric at start-1 needs tokens up to start-1 only
            ids = ids[:, :end]
            layout = right_padded_layout([ids.shape[1]], ids.shape[1], i, len(labels))
            with torch.enable_grad(), forward_layout(model, layout):
                embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = hf(inputs_embeds=embeds, use_cache=False).logits[0]
                outs = [captured[k] for k in range(len(layers))]
                for s in seg_starts:
                    grads = torch.autograd.grad(kl_metric(logits[s - 1]), outs, retain_graph=True)
                    g = torch.stack([gr[0, s - 1].double().cpu() for gr in grads])  # [L, d]
                    effects.append((g * V).sum(-1).abs())
            captured.clear()
    E = torch.stack(effects).numpy()  # [S, L]
    return AttributionResult(
        strategy=strategy,
        layers=layers,
        effect=E.mean(0),
        effect_sem=E.std(0, ddof=1) / np.sqrt(E.shape[0]) if E.shape[0] > 1 else np.zeros(len(layers)),
        n_segments=int(E.shape[0]),
        segments=segments,
    )
