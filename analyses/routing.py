"""Routing hybrids: decode with the base model and hand some tokens to the RL model.

RESEARCH.md section 1 (Venhoff et al., arXiv 2510.07364): if RL only teaches *when* to use
strategies the base already has, a base model that is helped at a few well-chosen tokens
should recover most of the accuracy gap. Two hybrids:

- token routing: a routed token is the RL model's own next token (greedy or sampled);
- steered hybrid: a routed token comes from the base model steered with a strategy vector
  (``hooks.add_to_residual`` around that step's base forward); the RL model only picks the
  moment (the router) and the strategy (``StrategyPicker``).

A ``Router`` decides, at every step, which rows route their next token:
``DisagreeRouter`` (greedy tokens differ), ``ProbeRouter`` (a strategy probe on base
activations fires), ``EntropyRouter`` (base next-token entropy), ``PositionsRouter`` (a given
mask) and the control ``RandomRouter`` (a seeded coin with probability ``budget``).

Both models keep a KV cache. The RL cache *lags*: it is only brought up to date (one chunked
forward over the missing tokens) when RL logits or activations are needed, so routers that
do not look at the RL model cost one RL forward per routed token, not per token.

Metrics: accuracy of base / RL / hybrid, gap recovered ``(acc_h - acc_b) / (acc_rl - acc_b)``
with a paired bootstrap CI over problems, fraction of tokens routed, and which strategies the
routed tokens started.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analyses.drift import token_entropy as entropy_of_logp
from hooks.errors import TwinlensError
from hooks.generation import (
    check_generation_args,
    expand_rows,
    forward_step,
    left_padded,
    pad_token_id,
    row_seed,
    sample_next_tokens,
    strip_eos,
    token_positions,
)
from hooks.interventions import ForwardLayout, add_to_residual, forward_layout
from hooks.validation import bootstrap_indices, check_finite

__all__ = [
    "Router",
    "DisagreeRouter",
    "ProbeRouter",
    "EntropyRouter",
    "PositionsRouter",
    "RandomRouter",
    "StrategyPicker",
    "ProjectionPicker",
    "Steering",
    "HybridOutput",
    "hybrid_generate",
    "check_same_tokenizer",
    "gap_recovered",
    "GapRecovered",
    "RoutingResult",
    "routed_strategy_counts",
    "evaluate_hybrid",
    "budget_curve",
    "StrategyTools",
    "fit_strategy_tools",
    "token_entropy",
    "check_budget",
]


# ===================================================================== routers
@dataclass
class StepView:
    """What a router sees at one decoding step (B = rows of the batch).

    step: index of the token about to be chosen (0 = first completion token).
    base_logits / rl_logits: `[B, V]` next-token logits (rl only if the router asks for it).
    base_hidden: `[B, d]` base activation at the router's `base_layer`, last position.
    rows: global row index of each batch row (into the list of (prompt, sample) rows).
    """

    step: int
    base_logits: Float[Tensor, "B V"]
    rl_logits: Float[Tensor, "B V"] | None
    base_hidden: Float[Tensor, "B d"] | None
    rows: Sequence[int]


class Router:
    """Decides which rows route their next token. Subclasses set:

    needs_rl_logits: the decision reads the RL model's logits (forces an RL forward per step);
    base_layer: block whose last-position base output the decision reads (None = none).
    """

    name: str = "router"
    needs_rl_logits: bool = False
    base_layer: int | None = None

    def check(self, base: Any) -> None:
        """Raise a TwinlensError if the router does not fit the base model."""

    def start(self, row_keys: Sequence[tuple[Any, int]], max_new_tokens: int, seed: int) -> None:
        """Called once per batch with the (row id, sample index) of each row."""

    def decide(self, view: StepView) -> Bool[Tensor, " B"]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"router": self.name}


class DisagreeRouter(Router):
    """Route when the base and RL models' greedy next tokens differ."""

    name = "disagree"
    needs_rl_logits = True

    def decide(self, view: StepView) -> Tensor:
        return view.base_logits.argmax(-1) != view.rl_logits.argmax(-1)


def token_entropy(logits: Tensor) -> Tensor:
    """Next-token entropy in nats, `[B]`, from raw logits (`analyses.drift.token_entropy` takes
    log-probs)."""
    return entropy_of_logp(torch.log_softmax(logits.float(), dim=-1))


class EntropyRouter(Router):
    """Route when the base model's next-token entropy (nats) exceeds `threshold`."""

    name = "entropy"

    def __init__(self, threshold: float):
        if not math.isfinite(threshold):
            raise TwinlensError(f"EntropyRouter threshold must be a finite number of nats, got {threshold}.")
        self.threshold = float(threshold)

    def decide(self, view: StepView) -> Tensor:
        return token_entropy(view.base_logits) > self.threshold

    def describe(self) -> dict:
        return {"router": self.name, "threshold": self.threshold}


class ProbeRouter(Router):
    """Route when a strategy probe on the base model's activation (block `layer`, last position)
    scores above `threshold`.

    probe: a fitted binary `probes.LinearProbe` (score = its logit; a multi-class probe needs
        `strategy`, a probe fitted on all layers at once needs `layer_index`), or a
        `probes.StrategyVector` (score = projection on its unit direction, minus `offset`).
    """

    name = "probe"

    def __init__(self, probe: Any, threshold: float, *, layer: int | None = None,
                 strategy: str | None = None, layer_index: int | None = None, offset: float = 0.0):
        if not math.isfinite(threshold):
            raise TwinlensError(f"ProbeRouter threshold must be finite, got {threshold}.")
        self.threshold = float(threshold)
        if hasattr(probe, "direction") and hasattr(probe, "layer"):  # StrategyVector
            self.w = probe.unit.double()
            self.b = -float(offset)
            self.base_layer = int(probe.layer if layer is None else layer)
            self.strategy = strategy or getattr(probe, "strategy", None)
            self.kind = "vector"
        elif hasattr(probe, "coef_"):
            coef = torch.as_tensor(np.asarray(probe.coef_), dtype=torch.float64)
            icpt = torch.as_tensor(np.asarray(probe.intercept_), dtype=torch.float64)
            if coef.ndim == 3:
                if layer_index is None:
                    raise TwinlensError(
                        "This probe was fitted on several layers at once (coef_ [n_layers, k, d]); "
                        "pass layer_index= (its position in the fitted layers) and layer= (the block)."
                    )
                coef, icpt = coef[layer_index], icpt[layer_index]
            classes = list(np.asarray(probe.classes_).tolist())
            if coef.shape[0] == 1:
                k = 0
            else:
                if strategy not in classes:
                    raise TwinlensError(
                        f"Multi-class probe: pass strategy= one of its classes {classes}.")
                k = classes.index(strategy)
            self.w, self.b = coef[k], float(icpt[k])
            if layer is None:
                raise TwinlensError("ProbeRouter with a LinearProbe needs layer= (the block it reads).")
            self.base_layer = int(layer)
            self.strategy = strategy
            self.kind = "linear_probe"
        else:
            raise TwinlensError(
                f"ProbeRouter needs a fitted probes.LinearProbe or a probes.StrategyVector, got "
                f"{type(probe).__name__}.")

    def check(self, base: Any) -> None:
        if self.w.shape[0] != base.d_model:
            raise TwinlensError(
                f"The probe has width {self.w.shape[0]} but the base model {base.name!r} has "
                f"d_model {base.d_model}; use a probe trained on this base model's activations.")
        if not 0 <= self.base_layer < base.n_layers:
            raise TwinlensError(
                f"The probe reads layer {self.base_layer}, but the base model has {base.n_layers} "
                f"blocks (0-{base.n_layers - 1}).")

    def score(self, hidden: Tensor) -> Tensor:
        return hidden.double() @ self.w.to(hidden.device) + self.b

    def decide(self, view: StepView) -> Tensor:
        return self.score(view.base_hidden) > self.threshold

    def describe(self) -> dict:
        return {"router": self.name, "threshold": self.threshold, "layer": self.base_layer,
                "strategy": self.strategy, "probe": self.kind}


class PositionsRouter(Router):
    """Route at the given completion positions.

    mask: bool `[max_new_tokens]` (every row) or `[n_rows, max_new_tokens]` (row-major in the
    order of the hybrid's rows); positions past the mask's end are not routed."""

    name = "positions"

    def __init__(self, mask: Any):
        self.mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if self.mask.ndim not in (1, 2):
            raise TwinlensError(
                f"PositionsRouter mask must be [max_new_tokens] or [n_rows, max_new_tokens], got "
                f"shape {tuple(self.mask.shape)}.")

    def decide(self, view: StepView) -> Tensor:
        B = view.base_logits.shape[0]
        if self.mask.ndim == 1:
            hit = bool(self.mask[view.step]) if view.step < self.mask.shape[0] else False
            return torch.full((B,), hit, dtype=torch.bool, device=view.base_logits.device)
        if max(view.rows) >= self.mask.shape[0]:
            raise TwinlensError(
                f"PositionsRouter mask has {self.mask.shape[0]} rows but the hybrid has more rows; "
                "give one mask row per (prompt, sample) row.")
        if view.step >= self.mask.shape[1]:
            return torch.zeros(B, dtype=torch.bool, device=view.base_logits.device)
        return self.mask[list(view.rows), view.step].to(view.base_logits.device)

    def describe(self) -> dict:
        return {"router": self.name, "fraction_of_mask": float(self.mask.float().mean())}


def check_budget(budget: float) -> float:
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise TwinlensError(f"Routing budget must be a number in [0, 1], got {budget!r}.") from None
    if not 0.0 <= b <= 1.0:  # also rejects NaN
        raise TwinlensError(
            f"Routing budget must be a fraction of tokens in [0, 1], got {budget!r}; e.g. 0.12 "
            "routes 12% of tokens.")
    return b


class RandomRouter(Router):
    """Control: route each token independently with probability `budget`, seeded per row
    (`row_seed(seed, "route", row id, sample)`), so a row's coin flips do not depend on the
    batch it sits in. The realised fraction is binomial around `budget`."""

    name = "random"

    def __init__(self, budget: float, seed: int = 0):
        self.budget = check_budget(budget)
        self.seed = int(seed)
        self._u: Tensor | None = None

    def start(self, row_keys, max_new_tokens, seed) -> None:
        self._u = torch.stack([
            torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(
                row_seed(self.seed, "route", rid, j)), dtype=torch.float64)
            for rid, j in row_keys])

    def decide(self, view: StepView) -> Tensor:
        return (self._u[:, view.step] < self.budget).to(view.base_logits.device)

    def describe(self) -> dict:
        return {"router": self.name, "budget": self.budget, "seed": self.seed}


# ===================================================================== steering
StrategyPicker = Callable[[dict[int, Tensor], Tensor], list[int]]
"""(RL activations {layer: [B, d]} at the last position, RL logits [B, V]) -> index of the
strategy vector to steer with, per row (-1 = none)."""


class ProjectionPicker:
    """Pick the strategy whose vector has the highest projection (unit direction) on the RL
    model's activation, after subtracting `center` (per layer, e.g. the mean RL activation)."""

    def __init__(self, vectors: Sequence[Any], center: dict[int, Tensor] | None = None):
        self.vectors = list(vectors)
        self.center = center or {}

    def __call__(self, rl_hidden: dict[int, Tensor], rl_logits: Tensor) -> list[int]:
        scores = []
        for v in self.vectors:
            h = rl_hidden[v.layer].float()
            if v.layer in self.center:
                h = h - self.center[v.layer].to(h)
            scores.append(h @ v.unit.to(h))
        return torch.stack(scores, -1).argmax(-1).tolist()


@dataclass
class Steering:
    """Steered hybrid: routed tokens come from the base model with `alpha * vector` added at the
    vector's layer during that step's forward; `pick` chooses the vector per routed row from the
    RL model (default `ProjectionPicker(vectors)`)."""

    vectors: Sequence[Any]
    alpha: float = 1.0
    pick: StrategyPicker | None = None

    def __post_init__(self):
        if not self.vectors:
            raise TwinlensError("Steering needs at least one strategy vector.")
        self.alpha = check_finite("Steering alpha", self.alpha)
        if self.pick is None:
            self.pick = ProjectionPicker(self.vectors)

    @property
    def layers(self) -> list[int]:
        return sorted({int(v.layer) for v in self.vectors})

    def check(self, base: Any) -> None:
        for v in self.vectors:
            if hasattr(v, "check_fits"):
                v.check_fits(base)
            elif torch.as_tensor(v.direction).shape[0] != base.d_model:
                raise TwinlensError(
                    f"A steering vector has width {torch.as_tensor(v.direction).shape[0]}, the base "
                    f"model has d_model {base.d_model}; use vectors from this base model.")


# ===================================================================== hybrid decoding
@dataclass
class HybridOutput:
    """tokens[r]: completion ids of row r (eos stripped); routed[r][t]: token t was routed;
    strategy[r][t]: name of the steering vector used for token t (steered hybrid) or None.
    Rows are prompt-major: r = i * n + j."""

    tokens: list[list[int]]
    routed: list[list[bool]]
    strategy: list[list[str | None]]
    n_rl_forwards: int = 0   # RL forward calls (a catch-up over k tokens counts once)
    n_rl_tokens: int = 0     # token positions the RL model processed after the prompt

    @property
    def fraction_routed(self) -> float:
        total = sum(len(r) for r in self.routed)
        return sum(sum(r) for r in self.routed) / total if total else 0.0

    def row_fraction(self) -> np.ndarray:
        return np.array([np.mean(r) if r else 0.0 for r in self.routed])


def check_same_tokenizer(base: Any, rl: Any) -> None:
    """Refuse two models whose vocabularies differ: token routing would mix ids of two codes."""
    vb, vr = base.tokenizer.get_vocab(), rl.tokenizer.get_vocab()
    if vb != vr:
        raise TwinlensError(
            f"The base model {base.name!r} and RL model {rl.name!r} have different tokenizers "
            f"({len(vb)} vs {len(vr)} tokens); a hybrid needs the same vocabulary. Use an RL model "
            "trained from this base (hooks.load_pair checks this).")
    hb, hr = base.hf.config.get_text_config(), rl.hf.config.get_text_config()
    if getattr(hb, "vocab_size", None) != getattr(hr, "vocab_size", None):
        raise TwinlensError(
            f"The base and RL models have different output vocabularies ({hb.vocab_size} vs "
            f"{hr.vocab_size}); load a pair that shares the tokenizer and embedding size.")


def _block_module(model: Any, layer: int, like: Any | None = None) -> torch.nn.Module:
    """HF module behind `blocks.{layer}.hook_out` of `model`, located through `like`'s bridge
    when given (same architecture), so the RL model's bridge is never booted."""
    if not 0 <= layer < model.n_layers:
        raise TwinlensError(f"Layer {layer} does not exist: the model has {model.n_layers} blocks.")
    name, _ = (like or model).hf_module_name(f"blocks.{layer}.hook_out")
    try:
        return model.hf.get_submodule(name)
    except AttributeError:
        raise TwinlensError(
            f"{model.name!r} has no module {name!r} (found on {like.name!r}); the hybrid's two "
            "models need the same architecture.") from None


@contextmanager
def _record_last(model: Any, layers: Sequence[int], into: dict[int, Tensor],
                 like: Any | None = None) -> Iterator[None]:
    """Record block `layer`'s output at the last position of every forward into `into`."""
    handles = []
    try:
        for layer in layers:
            def hook(_m: Any, _inp: Any, output: Any, layer: int = layer) -> None:
                x = output[0] if isinstance(output, tuple) else output
                into[layer] = x[:, -1].detach()
            handles.append(_block_module(model, layer, like).register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _layout(model: Any, mask: Tensor, positions: Tensor, rows: Tensor, n_rows: int, n: int) -> Any:
    """Declare where a forward's tokens sit (absolute positions per row), so interventions
    restricted to positions act on the right tokens of a left-padded, KV-cached batch."""
    return forward_layout(model, ForwardLayout(token_positions(mask, positions), rows, n_rows, n))


class _LaggingCache:
    """The RL model's KV cache, `filled` positions of the sequence behind it; `catch_up` feeds
    the missing positions in one forward and returns the last position's logits."""

    def __init__(self, model: Any, rows: Tensor, n_rows: int, n: int):
        self.model, self.cache, self.filled = model, None, 0
        self.rows, self.n_rows, self.n = rows, n_rows, n  # for the forward layout
        self.n_forwards = self.n_tokens = 0

    def catch_up(self, seq: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        cur = seq.shape[1]
        if self.filled == cur:
            return self.logits
        if self.cache is not None:
            self.n_tokens += cur - self.filled
        sl = slice(self.filled, cur)
        with _layout(self.model, mask[:, :cur], positions[:, sl], self.rows, self.n_rows, self.n):
            logits, self.cache = forward_step(
                self.model.hf, seq[:, sl], mask[:, :cur], positions[:, sl], self.cache)
        self.logits, self.filled = logits[:, -1], cur
        self.n_forwards += 1
        return self.logits


@torch.no_grad()
def hybrid_generate(
    base: Any,
    rl: Any,
    prompts: Sequence[Sequence[int]],
    router: Router,
    max_new_tokens: int,
    *,
    steering: Steering | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    stop_at_eos: bool = True,
    row_ids: Sequence[Any] | None = None,
    lazy_rl: bool = True,
) -> HybridOutput:
    """Decode with `base`, routing the tokens `router` picks (to `rl`, or to the steered base if
    `steering` is given). Same conventions and seeding as `hooks.generate`: a row's sampling
    generator is `row_seed(seed, row id, j)`, so routing nothing reproduces
    `hooks.generate(base, ...)` and routing everything reproduces `hooks.generate(rl, ...)`
    (same batch_size), greedy or sampled.

    lazy_rl=False updates the RL cache every step (reference path for tests and benchmarks).
    """
    prompts = check_generation_args(base, prompts, max_new_tokens, top_p, temperature=temperature, n=n,
                                    batch_size=batch_size, seed=seed)
    if not isinstance(router, Router):
        raise TwinlensError(f"router must be a Router (e.g. DisagreeRouter()), got {type(router).__name__}.")
    check_same_tokenizer(base, rl)
    router.check(base)
    if steering is not None:
        steering.check(base)
        steering.check(rl)  # the picker reads RL activations at the vectors' layers
    rows = expand_rows(prompts, n, row_ids)
    eos = base.tokenizer.eos_token_id
    pad = pad_token_id(base.tokenizer)
    device = base.device
    out = HybridOutput([], [], [])
    base_hidden: dict[int, Tensor] = {}
    rl_hidden: dict[int, Tensor] = {}
    names = [getattr(v, "strategy", str(k)) for k, v in enumerate(steering.vectors)] if steering else []
    base_layers = [router.base_layer] if router.base_layer is not None else []
    need_rl = router.needs_rl_logits or not lazy_rl  # an RL forward every step

    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        B = len(chunk)
        gens = [torch.Generator().manual_seed(row_seed(seed, rid, j)) for _, rid, j in chunk]
        router.start([(rid, j) for _, rid, j in chunk], max_new_tokens, seed)
        seq, mask, positions = left_padded([p for p, _, _ in chunk], pad, device)
        width = seq.shape[1]
        rows_here = torch.arange(start, start + B)
        rl_state = _LaggingCache(rl, rows_here, len(rows), n)
        routed_log = torch.zeros((B, max_new_tokens), dtype=torch.bool)
        strat_log = torch.full((B, max_new_tokens), -1, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        with ExitStack() as stack:
            stack.enter_context(_record_last(base, base_layers, base_hidden))
            if steering is not None:
                stack.enter_context(_record_last(rl, steering.layers, rl_hidden, like=base))
            with _layout(base, mask, positions, rows_here, len(rows), n):
                base_logits, base_cache = forward_step(base.hf, seq, mask, positions)
            base_logits = base_logits[:, -1]
            for step in range(max_new_tokens):
                rl_logits = rl_state.catch_up(seq, mask, positions) if need_rl else None
                view = StepView(step, base_logits, rl_logits,
                                base_hidden.get(router.base_layer), range(start, start + B))
                route = router.decide(view).to(device) & ~done
                any_route = bool(route.any())
                logits = base_logits
                if any_route and steering is None:
                    rl_logits = rl_state.catch_up(seq, mask, positions)
                    logits = torch.where(route[:, None], rl_logits, base_logits)
                elif any_route:
                    rl_logits = rl_state.catch_up(seq, mask, positions)
                    picks = torch.tensor(steering.pick(rl_hidden, rl_logits), device=device)
                    picks = torch.where(route, picks, torch.full_like(picks, -1))
                    strat_log[:, step] = picks.cpu()
                    # Re-run this step's base forward with the vectors on the routed rows: drop
                    # the last position from the cache, feed it again under steering.
                    base_cache.crop(-1)
                    here = positions[:, -1].cpu()  # absolute position of the re-fed token
                    with ExitStack() as steer:
                        for k, v in enumerate(steering.vectors):
                            rows_k = (picks == k).cpu()
                            if bool(rows_k.any()):
                                at = torch.zeros((len(rows), int(here.max()) + 1), dtype=torch.bool)
                                at[rows_here[rows_k], here[rows_k]] = True  # these rows, this token
                                steer.enter_context(add_to_residual(
                                    base, int(v.layer), v.direction, alpha=steering.alpha,
                                    positions=at))
                        steer.enter_context(_layout(base, mask, positions[:, -1:], rows_here, len(rows), n))
                        steered, base_cache = forward_step(
                            base.hf, seq[:, -1:], mask, positions[:, -1:], base_cache)
                    logits = torch.where(route[:, None], steered[:, -1], base_logits)
                routed_log[:, step] = route.cpu()
                nxt = sample_next_tokens(logits, temperature, top_p, gens).to(device)
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                if stop_at_eos and eos is not None:
                    done |= nxt == eos
                    if bool(done.all()):
                        break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
                with _layout(base, mask, positions[:, -1:], rows_here, len(rows), n):
                    base_logits, base_cache = forward_step(
                        base.hf, nxt[:, None], mask, positions[:, -1:], base_cache)
                base_logits = base_logits[:, -1]
        for r, toks in enumerate(seq[:, width:].tolist()):
            toks = strip_eos(toks, eos) if stop_at_eos else toks
            k = len(toks)
            out.tokens.append(toks)
            out.routed.append(routed_log[r, :k].tolist())
            out.strategy.append([names[s] if s >= 0 else None for s in strat_log[r, :k].tolist()])
        out.n_rl_forwards += rl_state.n_forwards
        out.n_rl_tokens += rl_state.n_tokens
    return out


# ===================================================================== metrics
@dataclass
class GapRecovered:
    """Gap recovered = (acc_hybrid - acc_base) / (acc_rl - acc_base), with a paired bootstrap
    CI over problems; `n_undefined` resamples had acc_rl == acc_base and were left out."""

    value: float
    ci: tuple[float, float]
    n_bootstrap: int
    n_undefined: int
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": list(self.ci), "n_bootstrap": self.n_bootstrap,
                "n_undefined": self.n_undefined, "confidence": self.confidence}


def gap_recovered(
    correct_base: Any, correct_rl: Any, correct_hybrid: Any, *,
    n_bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95,
) -> GapRecovered:
    """Per-problem correctness (`[n_problems]`, or `[n_problems, n_samples]` averaged per problem)
    of base, RL and hybrid on the same problems; problems are resampled jointly (paired)."""
    b, r, h = (np.asarray(x, dtype=np.float64) for x in (correct_base, correct_rl, correct_hybrid))
    b, r, h = (x.reshape(x.shape[0], -1).mean(1) for x in (b, r, h))
    if not (b.shape == r.shape == h.shape) or b.size == 0:
        raise TwinlensError(
            f"gap_recovered needs per-problem correctness of the same problems for base, RL and "
            f"hybrid; got {b.shape}, {r.shape}, {h.shape}.")

    def ratio(bm, rm, hm):
        den = rm - bm
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den != 0, (hm - bm) / np.where(den != 0, den, 1), np.nan)

    value = float(ratio(b.mean(), r.mean(), h.mean()))
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(rng, b.size, n_bootstrap, name="n_bootstrap")
    boots = ratio(b[idx].mean(1), r[idx].mean(1), h[idx].mean(1))
    ok = np.isfinite(boots)
    a = (1 - confidence) / 2
    ci = (float(np.quantile(boots[ok], a)), float(np.quantile(boots[ok], 1 - a))) if ok.any() \
        else (math.nan, math.nan)
    return GapRecovered(value, ci, n_bootstrap, int((~ok).sum()), confidence)


def routed_strategy_counts(
    completions: Sequence[str], routed: Sequence[Sequence[bool]],
    label_strategies: Callable[[str], Sequence[Any]],
) -> dict[str, int]:
    """How many routed tokens *started* a strategy segment (per strategy), by the task's
    labeler on the hybrid completion; "none" counts routed tokens that start no segment.
    Spans are characters of the completion (== tokens for a character tokenizer)."""
    counts: Counter = Counter()
    for text, rmask in zip(completions, routed, strict=True):
        starts = {}
        for s in label_strategies(text):
            name, start = (s[0], s[1]) if isinstance(s, tuple) else (s.strategy, s.start)
            starts.setdefault(int(start), name)
        for t, hit in enumerate(rmask):
            if hit:
                counts[starts.get(t, "none")] += 1
    return dict(sorted(counts.items()))


@dataclass
class RoutingResult:
    """One hybrid evaluated on a problem set (greedy unless `temperature` > 0)."""

    router: dict
    accuracy_base: float
    accuracy_rl: float
    accuracy_hybrid: float
    gap_recovered: GapRecovered
    fraction_routed: float
    routed_strategies: dict[str, int]
    routed_positions: list[int]      # histogram: routed tokens at completion position t
    correct_hybrid: np.ndarray = field(repr=False)
    mode: str = "token"              # "token" | "steered"
    temperature: float = 0.0
    n_rl_tokens: int = 0
    # steered hybrid: routed tokens per steering vector (by its strategy name), first-seen order
    routed_vectors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "router": self.router, "mode": self.mode, "temperature": self.temperature,
            "accuracy_base": self.accuracy_base, "accuracy_rl": self.accuracy_rl,
            "accuracy_hybrid": self.accuracy_hybrid, "gap_recovered": self.gap_recovered.to_dict(),
            "fraction_routed": self.fraction_routed, "routed_strategies": self.routed_strategies,
            "routed_positions": self.routed_positions, "n_rl_tokens": self.n_rl_tokens,
        }


def evaluate_hybrid(
    base: Any, rl: Any, prompts: Sequence[Sequence[int]], grade: Callable[[int, str], bool],
    router: Router, correct_base: np.ndarray, correct_rl: np.ndarray, *,
    max_new_tokens: int, steering: Steering | None = None, temperature: float = 0.0,
    seed: int = 0, batch_size: int = 256, label_strategies: Callable[[str], Sequence[Any]] | None = None,
    n_bootstrap: int = 2000,
) -> RoutingResult:
    """Run one hybrid on `prompts` (one completion per prompt) and score it against the base and
    RL correctness already measured on the same prompts with the same decoding.
    grade(i, completion_text) -> correct for prompt i."""
    out = hybrid_generate(base, rl, prompts, router, max_new_tokens, steering=steering,
                          temperature=temperature, seed=seed, batch_size=batch_size)
    texts = [base.tokenizer.decode(t) for t in out.tokens]
    correct = np.array([grade(i, t) for i, t in enumerate(texts)], dtype=bool)
    hist = np.zeros(max_new_tokens, dtype=np.int64)
    for r in out.routed:
        hist[: len(r)] += np.asarray(r, dtype=np.int64)
    return RoutingResult(
        router=router.describe(),
        accuracy_base=float(np.mean(correct_base)), accuracy_rl=float(np.mean(correct_rl)),
        accuracy_hybrid=float(correct.mean()),
        gap_recovered=gap_recovered(correct_base, correct_rl, correct, n_bootstrap=n_bootstrap, seed=seed),
        fraction_routed=out.fraction_routed,
        routed_strategies=routed_strategy_counts(texts, out.routed, label_strategies) if label_strategies else {},
        routed_positions=hist.tolist(), correct_hybrid=correct,
        mode="steered" if steering is not None else "token", temperature=temperature,
        n_rl_tokens=out.n_rl_tokens,
        routed_vectors=dict(Counter(s for row in out.strategy for s in row if s is not None)),
    )


# ===================================================================== the whole experiment
@dataclass
class StrategyTools:
    """What the probe router and the steered hybrid need, fitted on base activations over the
    RL model's own completions (labelled by the task): a probe that fires at the position
    before a `strategy` segment starts, and one difference-of-means vector per strategy."""

    layer: int
    strategy: str
    probe: Any
    vectors: list
    center: Tensor
    n_examples: int


def fit_strategy_tools(
    base: Any, rl: Any, task: Any, *, layer: int, strategy: str, n_problems: int = 200,
    problem_set: int = 1, max_new_tokens: int, workdir: Any, batch_size: int = 256,
    exclude: Sequence[Any] = (),
) -> StrategyTools:
    """Fit the probe and vectors on held-out problem set `problem_set`, none of whose problems
    is in `exclude` (pass the evaluation problems: the fit set must be disjoint from them).
    Needs a task with one token per character (the organism); labels come from its labeler."""
    from hooks import capture, generate
    from probes.datasets import build_dataset
    from probes.labels import organism_labels
    from probes.linear_probe import LinearProbe
    from probes.vectors import diff_of_means_vectors, overall_mean

    if not getattr(task, "char_tokens", False):
        raise TwinlensError(
            "The probe router and the steered hybrid need token-level strategy labels; this task "
            "has no character tokenizer. Run with --no-probe (disagree and entropy routers only).")
    problems = task.problems(n_problems, seed=problem_set, exclude=exclude)
    prompts = [base.encode_prompt(p.prompt) for p in problems]
    completions = generate(rl, prompts, max_new_tokens, batch_size=batch_size)

    def spans(text: str) -> list:
        from organism.task import StrategySpan
        return [StrategySpan(s, a, b) for s, a, b in task.label_strategies(text)]

    labels = [organism_labels(p, c, base.tokenizer, label_fn=spans) for p, c in zip(prompts, completions, strict=True)]
    store = capture(base, [p + c for p, c in zip(prompts, completions, strict=True)],
                    hooks=[f"blocks.{layer}.hook_out"], out=workdir, positions="all",
                    batch_size=batch_size, progress=False)
    ds = build_dataset(store, labels, layers=[layer])
    if strategy not in ds.labels or not ds.labels[strategy].any():
        raise TwinlensError(
            f"The RL model's completions hold no {strategy!r} segment; pick a strategy it uses "
            f"({sorted(s for s in ds.labels if ds.labels[s].any())}).")
    rows = np.nonzero(ds.reasoning | (ds.position == np.array(
        [ds.spans[int(e)].reasoning_start - 1 for e in ds.example])))[0]
    y = np.zeros(ds.n_rows, dtype=bool)
    for e, lab in ds.spans.items():
        starts = lab.start_mask(strategy, offset=-1)
        ex_rows = np.nonzero(ds.example == e)[0]
        y[ex_rows] = starts[ds.position[ex_rows]]
    probe = LinearProbe(C=1.0, class_weight="balanced", max_iter=200).fit(ds.X[0][rows], y[rows])
    vectors = [diff_of_means_vectors(ds, s)[0] for s in sorted(ds.labels) if ds.labels[s].any()]
    return StrategyTools(layer, strategy, probe, vectors, overall_mean(ds)[0].float(), len(problems))


def budget_curve(
    base: Any, rl: Any, prompts: Sequence[Sequence[int]], grade: Callable[[int, str], bool],
    routers: Sequence[Router], correct_base: np.ndarray, correct_rl: np.ndarray, *,
    max_new_tokens: int, seed: int = 0, batch_size: int = 256,
    label_strategies: Callable[[str], Sequence[Any]] | None = None, n_bootstrap: int = 2000,
) -> list[dict]:
    """Each router (e.g. a threshold sweep) beside the `random` control at the fraction of
    tokens that router actually routed: [{"router": RoutingResult, "random": RoutingResult}]."""
    kw = dict(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
              label_strategies=label_strategies, n_bootstrap=n_bootstrap)
    points = []
    for router in routers:
        res = evaluate_hybrid(base, rl, prompts, grade, router, correct_base, correct_rl, **kw)
        ctrl = evaluate_hybrid(base, rl, prompts, grade, RandomRouter(res.fraction_routed, seed=seed),
                               correct_base, correct_rl, **kw)
        points.append({"router": res, "random": ctrl})
    return points
