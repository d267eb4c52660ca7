"""Scoped interventions on a model's residual stream.

One registry per `Model` holds its open interventions. Each is installed as a forward hook on
*every* copy of the block's module a forward pass can run through: the HF model (`model.hf`:
generation, scoring, HF-engine capture, routing hybrids, attribution) and the bridge's copy
(`model.bridge`: bridge-engine capture and direct bridge use), also when the bridge boots while
the intervention is open. A deep copy of the model made while an intervention is open (e.g. a
patched hybrid) carries the hook function along, but the hook only acts on the modules it was
installed on, so the copy runs clean. Each intervention is a context manager: hooks are added on
entry and removed on exit, also when the body raises. Weights are never modified.

Positions (`add_to_residual(..., positions=...)`) are absolute positions in each row's own
sequence, prompt and generated tokens alike (0 = the row's first real token, padding excluded),
whatever the batch layout. A forward path tells the hooks where its tokens sit with
`forward_layout` (every twinlens path does: `generate`, `capture`, scoring, routing hybrids,
attribution); a position-restricted intervention refuses to run in a forward that did not.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from hooks.errors import TwinlensError
from hooks.validation import check_finite, check_finite_vector

__all__ = [
    "ForwardLayout",
    "ablate_direction",
    "add_to_residual",
    "attach_open_interventions",
    "edit_block_output",
    "expect_applied",
    "forward_layout",
    "open_interventions",
    "refuse_open_interventions",
    "right_padded_layout",
    "suspend_interventions",
]


@dataclass(frozen=True)
class ForwardLayout:
    """Where the tokens of one forward pass sit in the caller's rows.

    positions: Int[Tensor, "batch pos"] absolute position of each token in its row's own sequence
        (prompt and generated tokens alike), -1 for padding.
    rows: Int[Tensor, "batch"] index of each batch row among the call's `n_rows` rows
        (prompt-major: row i * n + j is sample j of prompt i).
    n_rows: rows in the whole call (all batches); n: samples per prompt (n_rows = n_prompts * n).
    """

    positions: Tensor
    rows: Tensor
    n_rows: int
    n: int = 1

    @property
    def n_prompts(self) -> int:
        return self.n_rows // self.n


@dataclass(eq=False)
class _Edit:
    hook_name: str
    fn: Callable[[Tensor, ForwardLayout | None], Tensor]
    description: str
    selection: _Selection | None = None
    handles: list = field(default_factory=list)
    n_fired: int = 0     # forwards of any installed copy that ran this edit
    n_selected: int = 0  # tokens a position-restricted edit changed


@dataclass(eq=False)
class _State:
    edits: list[_Edit] = field(default_factory=list)
    layout: ForwardLayout | None = None    # declared by a twinlens forward path
    implicit: ForwardLayout | None = None  # derived from a direct `model.hf(...)` call
    suspended: int = 0                     # > 0: the kit's own check forwards run clean


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(model: Any) -> _State:
    state = _peek(model)
    if state is None:
        state = _State()
        try:
            _STATES[model] = state
        except TypeError:  # an unhashable model-like object: keep the state on it
            model._twinlens_interventions = state
    return state


def _peek(model: Any) -> _State | None:
    try:
        return _STATES.get(model)
    except TypeError:
        return getattr(model, "_twinlens_interventions", None)


def open_interventions(model: Any) -> list[str]:
    """Descriptions of the interventions open on `model` (empty when it runs clean)."""
    state = _peek(model)
    return [e.description for e in state.edits] if state else []


def refuse_open_interventions(model: Any, path: str) -> None:
    """For a forward path that cannot apply interventions (another process, another engine):
    raise a TwinlensError naming them instead of returning unsteered numbers."""
    edits = open_interventions(model)
    if edits:
        raise TwinlensError(
            f"{path} cannot apply the interventions open on {getattr(model, 'name', 'this model')!r} "
            f"({'; '.join(edits)}); its numbers would be unsteered. Run it outside the `with` block, "
            "or use a path that runs this process's model (e.g. the HF engine)."
        )


# ----------------------------------------------------------------------------- installation
def _hook(state: _State, edit: _Edit, module: torch.nn.Module) -> Callable:
    def hook(mod: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if mod is not module or state.suspended:  # a deep copy made while the edit was open: not this model
            return None
        edit.n_fired += 1
        x = output[0] if isinstance(output, tuple) else output
        y = edit.fn(x, state.layout or state.implicit)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


def _bridge_module(bridge: Any, hook_name: str) -> torch.nn.Module:
    """The bridge copy's HF module behind `hook_name` (what the bridge component calls)."""
    comp_path = hook_name.rpartition(".")[0]
    original = getattr(bridge.get_submodule(comp_path), "original_component", None)
    if original is None:
        raise TwinlensError(f"{hook_name!r} has no HF module inside the bridge to intervene on.")
    return original


def _install(model: Any, state: _State, edit: _Edit, module: torch.nn.Module) -> None:
    edit.handles.append(module.register_forward_hook(_hook(state, edit, module)))


def attach_open_interventions(model: Any, bridge: Any) -> None:
    """Install the interventions open on `model` on its freshly booted `bridge`. Called by
    `Model.bridge` before it keeps the bridge, so a bridge booted inside a `with` block is steered
    too (and one that cannot be is not kept)."""
    state = _peek(model)
    for edit in state.edits if state else []:
        _install(model, state, edit, _bridge_module(bridge, edit.hook_name))


def _install_call_watch(model: Any, state: _State, edit: _Edit) -> None:
    """Hooks on the top-level HF model that derive the layout of a direct `model.hf(...)` call
    (one no twinlens path declared) from its arguments, and forget it when the call ends."""
    top = model.hf

    def before(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if mod is top:
            state.implicit = _call_layout(args, kwargs)

    def after(mod: torch.nn.Module, _args: Any, _output: Any) -> None:
        if mod is top:
            state.implicit = None

    edit.handles.append(top.register_forward_pre_hook(before, with_kwargs=True))
    edit.handles.append(top.register_forward_hook(after, always_call=True))


def _call_layout(args: tuple, kwargs: dict) -> ForwardLayout | None:
    """Absolute positions of a direct HF call's tokens: a token's position is the number of real
    (attention-mask 1) tokens before it in its row, cached ones included; -1 for padding. Rows are
    the batch rows. None when the call's shape cannot be read."""
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
    if not isinstance(x, Tensor) or x.ndim < 2:
        return None
    b, t = x.shape[:2]
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    mask = kwargs.get("attention_mask")
    if isinstance(mask, Tensor) and mask.ndim == 2:
        if tuple(mask.shape) != (b, past + t):
            return None  # a mask that does not cover the cached tokens: positions unknown
        real = mask.bool().cpu()
        positions = torch.where(real, real.long().cumsum(-1) - 1, -1)[:, -t:]
    else:
        positions = (past + torch.arange(t)).expand(b, t).clone()
    return ForwardLayout(positions, torch.arange(b), b)


@contextmanager
def _open_edit(model: Any, edit: _Edit) -> Iterator[_Edit]:
    module, where = model.hf_module(edit.hook_name)
    if where != "output":
        raise TwinlensError(f"{edit.hook_name!r} is not a module output; interventions edit outputs.")
    state = _state(model)
    try:
        if edit.selection is not None:
            _install_call_watch(model, state, edit)
        _install(model, state, edit, module)
        if getattr(model, "_bridge", None) is not None:
            _install(model, state, edit, _bridge_module(model._bridge, edit.hook_name))
        state.edits.append(edit)
        yield edit
    finally:
        for handle in edit.handles:
            handle.remove()
        edit.handles.clear()
        if edit in state.edits:
            state.edits.remove(edit)


@contextmanager
def suspend_interventions(model: Any) -> Iterator[None]:
    """Run the block's forwards clean: for the kit's own checks (e.g. that an HF module gives
    the bridge's value), which compare two paths on a probe input and are no user computation."""
    state = _state(model)
    state.suspended += 1
    try:
        yield
    finally:
        state.suspended -= 1


@contextmanager
def expect_applied(model: Any, path: str) -> Iterator[None]:
    """Around one complete forward pass: raise a TwinlensError if an open intervention did not
    run in it (a component that does not call the hooked module would otherwise drop it silently)."""
    state = _peek(model)
    before = {id(e): e.n_fired for e in state.edits} if state else {}
    yield
    missed = [e.description for e in (state.edits if state else []) if e.n_fired == before.get(id(e))]
    if missed:
        raise TwinlensError(
            f"{path} did not apply {'; '.join(missed)} (the hooked module never ran in its forward "
            "pass); use the HF engine for steered numbers on this architecture."
        )


# ----------------------------------------------------------------------------- layouts
def _check_layout(model: Any, layout: ForwardLayout) -> None:
    for edit in _state(model).edits:
        if edit.selection is not None:
            edit.selection.check(layout, edit.description)


@contextmanager
def forward_layout(model: Any, layout: ForwardLayout) -> Iterator[None]:
    """Declare where the tokens of the forward passes run inside the block sit (see
    `ForwardLayout`). Every twinlens forward path declares one; a new path (another engine, a
    notebook's direct `model.hf(...)`) declares one to let position-restricted interventions act.
    Raises TwinlensError when an open intervention's positions cannot apply to these rows."""
    if layout.positions.ndim != 2 or layout.rows.shape != layout.positions.shape[:1]:
        raise TwinlensError(
            f"ForwardLayout needs positions [batch, pos] and rows [batch], got "
            f"{tuple(layout.positions.shape)} and {tuple(layout.rows.shape)}."
        )
    _check_layout(model, layout)
    state = _state(model)
    previous, state.layout = state.layout, layout
    try:
        yield
    finally:
        state.layout = previous


def right_padded_layout(
    lengths: Sequence[int], width: int, first_row: int, n_rows: int
) -> ForwardLayout:
    """Layout of a right-padded batch of whole sequences (capture, scoring, attribution): token
    t of batch row r sits at position t, padding past `lengths[r]` is -1; batch row r is row
    `first_row + r` of the call's `n_rows`."""
    positions = torch.arange(width).expand(len(lengths), width).clone()
    positions[positions >= torch.tensor(list(lengths))[:, None]] = -1
    rows = torch.arange(first_row, first_row + len(lengths))
    return ForwardLayout(positions, rows, n_rows)


def _layout_for(x: Tensor, layout: ForwardLayout | None, description: str) -> ForwardLayout:
    if layout is None:
        raise TwinlensError(
            f"{description} is restricted to positions, but this forward pass did not say where its "
            "tokens sit in their sequences (a KV-cached step or a padded row would be steered at "
            "the wrong positions). Run it through twinlens (hooks.generate, hooks.capture, "
            "analyses.sampling.score_completions, ...), call model.hf(...) itself with an "
            "attention_mask covering any cached tokens, wrap the call in "
            "hooks.interventions.forward_layout(...), or use positions=None."
        )
    if tuple(layout.positions.shape) != tuple(x.shape[:2]):
        raise TwinlensError(
            f"The declared forward layout covers {tuple(layout.positions.shape)} tokens but the "
            f"forward pass runs {tuple(x.shape[:2])}; declare the layout of this exact forward."
        )
    return layout


# ----------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class _Selection:
    """Absolute positions to edit: the same in every row (`per_row` None, `shared` a bool mask
    over positions) or one bool mask row per prompt or per (prompt, sample) row (`per_row`)."""

    shared: Tensor | None  # Bool[pos]
    per_row: Tensor | None  # Bool[rows, pos]

    @staticmethod
    def parse(positions: Any) -> _Selection:
        if isinstance(positions, range):
            positions = list(positions)
        if isinstance(positions, (list, tuple)) and not positions:
            raise TwinlensError("positions is empty: it selects no token. Use positions=None for every token.")
        if isinstance(positions, Tensor):
            t = positions.detach().cpu()
        elif isinstance(positions, Sequence) and positions and all(
            isinstance(p, (Sequence, Tensor)) and not isinstance(p, str) for p in positions
        ):
            t = _ragged_to_mask(positions)
        else:
            try:
                t = torch.as_tensor(positions)
            except (TypeError, ValueError, RuntimeError):
                t = None
            if t is None or t.dtype not in (torch.bool, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                raise TwinlensError(
                    f"positions={positions!r:.80}: give absolute positions as a list/range of ints "
                    "(every row), a bool mask [pos] (every row), a bool mask [rows, pos] or one "
                    "list of ints per row."
                )
        if t.numel() == 0:
            raise TwinlensError("positions is empty: it selects no token. Use positions=None for every token.")
        if t.dtype != torch.bool:
            if t.is_floating_point() or t.is_complex():
                raise TwinlensError(f"positions must be integers or a bool mask, got dtype {t.dtype}.")
            if t.ndim != 1:
                raise TwinlensError(
                    f"Integer positions must be a flat list (the same positions in every row), got "
                    f"shape {tuple(t.shape)}; for per-row positions give one list per row or a bool mask "
                    "[rows, pos]."
                )
            if int(t.min()) < 0:
                raise TwinlensError(
                    f"positions {sorted(int(p) for p in t if p < 0)[:3]} are negative; positions are "
                    "absolute (0 = a row's first token)."
                )
            mask = torch.zeros(int(t.max()) + 1, dtype=torch.bool)
            mask[t.long()] = True
            t = mask
        if t.ndim not in (1, 2):
            raise TwinlensError(f"A positions mask is [pos] or [rows, pos], got shape {tuple(t.shape)}.")
        if not bool(t.any()):
            raise TwinlensError("The positions mask has no True entry: it selects no token.")
        return _Selection(t, None) if t.ndim == 1 else _Selection(None, t)

    def check(self, layout: ForwardLayout, description: str) -> None:
        if self.per_row is None:
            return
        r = self.per_row.shape[0]
        if r not in (layout.n_rows, layout.n_prompts):
            per = (
                f"{layout.n_prompts} prompts x {layout.n} samples = {layout.n_rows} rows"
                if layout.n > 1 else f"{layout.n_rows} rows"
            )
            raise TwinlensError(
                f"{description}: the positions mask has {r} rows but this call has {per}; give one "
                "mask row per prompt (or per output row), or a [pos] mask for every row."
            )

    def mask_for(self, layout: ForwardLayout) -> Bool[Tensor, "batch pos"]:
        pos = layout.positions
        if self.per_row is None:
            table, idx = self.shared[None], torch.zeros_like(layout.rows)
        else:
            table = self.per_row
            idx = layout.rows if table.shape[0] == layout.n_rows else layout.rows // layout.n
        table = table.to(pos.device)
        idx = idx.to(pos.device)[:, None].expand_as(pos)
        inside = (pos >= 0) & (pos < table.shape[1])
        out = torch.zeros(pos.shape, dtype=torch.bool, device=pos.device)
        out[inside] = table[idx[inside], pos[inside]]
        return out


def _ragged_to_mask(rows: Sequence[Any]) -> Tensor:
    lists = [torch.as_tensor(r).flatten() for r in rows]
    for i, r in enumerate(lists):
        if r.numel() and (r.is_floating_point() or int(r.min()) < 0):
            raise TwinlensError(f"positions row {i}: use non-negative integer positions, got {r.tolist()[:3]}.")
    width = max((int(r.max()) + 1 for r in lists if r.numel()), default=0)
    mask = torch.zeros((len(lists), max(width, 1)), dtype=torch.bool)
    for i, r in enumerate(lists):
        mask[i, r.long()] = True
    return mask


# ----------------------------------------------------------------------------- checks
def _check_layer(model: Any, layer: int) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise TwinlensError(
            f"Layer {layer!r} does not exist: the model has {model.n_layers} blocks "
            f"(0-{model.n_layers - 1})."
        )


def _check_vector(model: Any, vector: Tensor, name: str = "vector", nonzero: bool = False) -> Tensor:
    vector = check_finite_vector(name, vector, size=model.d_model, nonzero=nonzero)
    return vector.to(device=model.device, dtype=model.dtype)


# ----------------------------------------------------------------------------- interventions
@contextmanager
def edit_block_output(
    model: Any, layer: int, edit: Callable[[Float[Tensor, "batch pos d"]], Tensor]
) -> Iterator[None]:
    """Replace the output of block `layer` (= `blocks.{layer}.hook_out`) by `edit(output)` in every
    forward pass of `model` inside the block, HF and bridge alike (`output`: [batch, pos, d_model]).
    Raises TwinlensError for a layer the model does not have."""
    _check_layer(model, layer)
    spec = _Edit(f"blocks.{layer}.hook_out", lambda x, _layout: edit(x), f"edit_block_output(layer={layer})")
    with _open_edit(model, spec):
        yield


@contextmanager
def add_to_residual(
    model: Any,
    layer: int,
    vector: Float[Tensor, " d"],
    alpha: float = 1.0,
    positions: Any = None,
) -> Iterator[None]:
    """Add `alpha * vector` to the output of block `layer` (`blocks.{layer}.hook_out`) in every
    forward pass of `model` inside the block (generation, scoring, capture with any engine, ...).

    positions: which tokens, by **absolute position in each row's own sequence** (0 = the row's
    first real token; prompt and generated tokens count alike; padding never matches), tracked
    through KV-cached decoding whatever the batch layout (left padding, `n` samples, batches):
      - None: every token of every forward (what steering papers do);
      - a list / range / 1-D int tensor of positions, or a bool mask `[pos]`: the same positions in
        every row (e.g. `range(len(prompt))` = the prompt only);
      - a bool mask `[rows, pos]`, or one list of positions per row: row r of the call, where rows
        are the prompts (every sample of prompt i gets row i) or the output rows `i * n + j`.
    Positions past a mask's end are not edited.

    Raises TwinlensError: a bad layer/vector/positions on entry; a per-row mask whose row count is
    neither the call's prompts nor its output rows; a restricted intervention in a forward that
    declared no layout (`forward_layout`); and, on exit, a restricted intervention that ran in some
    forward pass but matched no token (its positions lie beyond every sequence).
    """
    _check_layer(model, layer)
    v = _check_vector(model, vector) * check_finite("alpha", alpha)
    selection = None if positions is None else _Selection.parse(positions)
    where = "" if positions is None else ", positions=..."
    spec = _Edit(f"blocks.{layer}.hook_out", None, f"add_to_residual(layer={layer}, alpha={alpha}{where})",
                 selection)

    def fn(x: Tensor, layout: ForwardLayout | None) -> Tensor:
        if selection is None:
            return x + v
        layout = _layout_for(x, layout, spec.description)
        selection.check(layout, spec.description)
        mask = selection.mask_for(layout).to(x.device)
        spec.n_selected += int(mask.sum())
        return x + mask.unsqueeze(-1).to(x.dtype) * v

    spec.fn = fn
    with _open_edit(model, spec):
        yield
    if selection is not None and spec.n_fired and not spec.n_selected:
        raise TwinlensError(
            f"{spec.description} ran in {spec.n_fired} forward pass(es) but its positions matched no "
            "token: they lie beyond every sequence (or every row ended before reaching them), or "
            "the rows they name were not run. Positions are absolute (0 = a row's first token)."
        )


@contextmanager
def ablate_direction(model: Any, layer: int, direction: Float[Tensor, " d"]) -> Iterator[None]:
    """Project `direction` out of block `layer`'s output at every position of every forward
    pass of `model` inside the block (HF and bridge alike). Raises TwinlensError for a bad layer
    or a direction that is not finite, not of the residual width, or all zeros."""
    _check_layer(model, layer)
    u = _check_vector(model, direction, "direction", nonzero=True)
    u = u / u.norm().clamp_min(1e-12)
    spec = _Edit(f"blocks.{layer}.hook_out", lambda x, _layout: x - (x @ u).unsqueeze(-1) * u,
                 f"ablate_direction(layer={layer})")
    with _open_edit(model, spec):
        yield

