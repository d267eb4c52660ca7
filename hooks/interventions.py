"""Scoped interventions on a model's residual stream.

Hooks go on the untouched HF model (`model.hf`), so they also act during KV-cached generation.
Each intervention is a context manager: hooks are added on entry and removed on exit, also when
the body raises. Weights are never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooks.errors import TwinlensError


def _check_layer(model: Any, layer: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise TwinlensError(
            f"Layer {layer!r} does not exist: the model has {model.n_layers} blocks "
            f"(0-{model.n_layers - 1})."
        )


def _check_vector(model: Any, vector: Tensor) -> Tensor:
    vector = torch.as_tensor(vector)
    if vector.ndim != 1 or vector.shape[0] != model.d_model:
        raise TwinlensError(
            f"Vector of shape {tuple(vector.shape)} does not fit this model's residual width "
            f"{model.d_model}; use a vector found on a model of the same width."
        )
    return vector.to(device=model.device, dtype=model.dtype)


@contextmanager
def edit_block_output(
    model: Any, layer: int, edit: Callable[[Float[Tensor, "batch pos d"]], Tensor]
) -> Iterator[None]:
    """Replace the output of block `layer` (= `blocks.{layer}.hook_out`) by `edit(output)`."""
    _check_layer(model, layer)
    module, _ = model.hf_module(f"blocks.{layer}.hook_out")

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add_to_residual(
    model: Any,
    layer: int,
    vector: Float[Tensor, " d"],
    alpha: float = 1.0,
    positions: Tensor | None = None,
) -> Iterator[None]:
    """Add `alpha * vector` to the output of block `layer`.

    positions: None = every position of every forward (what steering papers do); or a bool
    tensor [batch, pos] applied to forwards of exactly that shape (the prompt forward), other
    forwards (cached decoding steps) untouched.
    """
    v = _check_vector(model, vector) * alpha

    def edit(x: Tensor) -> Tensor:
        if positions is None:
            return x + v
        if positions.shape != x.shape[:2]:
            return x
        return x + positions.to(x.device).unsqueeze(-1).to(x.dtype) * v

    with edit_block_output(model, layer, edit):
        yield


@contextmanager
def ablate_direction(model: Any, layer: int, direction: Float[Tensor, " d"]) -> Iterator[None]:
    """Project `direction` out of block `layer`'s output at every position."""
    u = _check_vector(model, direction)
    u = u / u.norm().clamp_min(1e-12)

    def edit(x: Tensor) -> Tensor:
        return x - (x @ u).unsqueeze(-1) * u

    with edit_block_output(model, layer, edit):
        yield
