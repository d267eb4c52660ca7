"""Checks of numeric and typed arguments at the public boundary (DESIGN.md principle 5).

Every public function and every script option that takes a count, size, temperature,
probability, coefficient, vector, layer range, device or dtype goes through one of these, so a
bad value fails at once with a `TwinlensError` that says what is allowed, instead of a raw
traceback from deep inside torch/numpy or, worse, a silently wrong number (a negative
temperature that samples greedily, a NaN steering vector that generates empty strings).

Each ``check_*`` returns the value, normalised (an int for counts, a float for reals, a
``torch.device`` / ``torch.dtype``), so callers write ``n = check_positive_int("n", n)``.
``scripts/_cli.py`` wraps the same functions as argparse types (``cli.positive_int`` ...), so
the command line and the library say the same thing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from hooks.errors import TwinlensError

# dtypes a model can be loaded in (torch names; "fp16"-style aliases are common in configs).
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                  "float": "float32", "double": "float64", "fp64": "float64"}
LOAD_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              allowed: str | None = None) -> int:
    """``value`` as an int within [minimum, maximum] (either bound optional). Bools, floats
    (even 3.0) and strings are refused: a count given as 2.5 is a mistake, not a 2."""
    what = allowed or _range_text(minimum, maximum, "an integer")
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints, numpy / torch integer scalars; not 2.0 or "2"
    except TypeError:
        raise TwinlensError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise TwinlensError(f"{name} must be {what}, got {value}.")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A count or size: an int >= 1 (batch sizes, sample counts, bootstrap resamples, bins...)."""
    return check_int(name, value, minimum=1)


def check_nonnegative_int(name: str, value: Any) -> int:
    """An int >= 0 (seeds, set numbers, indices)."""
    return check_int(name, value, minimum=0)


def check_float(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
                min_open: bool = False, max_open: bool = False, allowed: str | None = None) -> float:
    """``value`` as a finite float within the bounds (``*_open``: the bound itself excluded).
    NaN and +-inf are always refused: no coefficient or threshold means anything there."""
    what = allowed or _interval_text(minimum, maximum, min_open, max_open)
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        value = float(value)  # ints, numpy / 0-d torch scalars
    except (TypeError, ValueError, RuntimeError):
        raise TwinlensError(f"{name} must be {what}, got {value!r} ({type(value).__name__}).") from None
    if not math.isfinite(value):
        raise TwinlensError(f"{name} must be {what}; got {value}, which is not a finite number.")
    low_bad = minimum is not None and (value <= minimum if min_open else value < minimum)
    high_bad = maximum is not None and (value >= maximum if max_open else value > maximum)
    if low_bad or high_bad:
        raise TwinlensError(f"{name} must be {what}, got {value}.")
    return value


def check_finite(name: str, value: Any) -> float:
    """Any finite real (a coefficient such as a steering alpha; negative is allowed)."""
    return check_float(name, value, allowed="a finite number")


def check_probability(name: str, value: Any, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """A probability or fraction in [0, 1] (``allow_zero``/``allow_one`` False: open there)."""
    return check_float(name, value, minimum=0.0, maximum=1.0, min_open=not allow_zero, max_open=not allow_one)


def check_top_p(value: Any, name: str = "top_p") -> float:
    """Nucleus mass in (0, 1]: 1 keeps the whole distribution; 0 would keep nothing."""
    return check_probability(name, value, allow_zero=False)


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A sampling temperature: finite and >= 0 (0 = greedy decoding). A negative value would
    silently decode greedily and NaN would emit one token forever, so both are refused."""
    return check_float(name, value, minimum=0.0, allowed="a number >= 0 (0 = greedy decoding)")


def check_finite_vector(name: str, vector: Any, *, size: int | None = None, nonzero: bool = False) -> Any:
    """A 1-d tensor of finite entries (length ``size`` when given; not all zero when
    ``nonzero``, e.g. a direction to normalise). Returns it as a tensor."""
    import torch

    try:
        t = torch.as_tensor(vector)
    except (TypeError, ValueError, RuntimeError):
        raise TwinlensError(f"{name} must be a 1-d tensor of numbers, got {type(vector).__name__}.") from None
    if t.ndim != 1 or (size is not None and t.shape[0] != size):
        want = f"shape ({size},) (the model's residual width {size})" if size is not None else "a 1-d shape"
        raise TwinlensError(
            f"{name} has shape {tuple(t.shape)}, expected {want}; use a vector found on a model of "
            "the same residual width."
        )
    if not (t.is_floating_point() or t.is_complex()):
        t = t.float()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise TwinlensError(
            f"{name} holds {int(bad.sum())} non-finite entries (NaN/inf) of {t.numel()}, e.g. at index "
            f"{int(bad.nonzero()[0])}; recompute it (a NaN usually comes from a division by a zero norm)."
        )
    if nonzero and not bool(t.ne(0).any()):
        raise TwinlensError(f"{name} is all zeros; a direction needs a nonzero vector.")
    return t


def check_device(device: Any) -> Any:
    """A ``torch.device`` that exists on this machine: 'cpu', 'cuda', 'cuda:1', 'mps'...
    Refuses unknown names and accelerators this torch build or machine lacks, naming them."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise TwinlensError(f"device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TwinlensError(
                f"device {str(device)!r}: CUDA is not available (this torch build "
                f"{'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); use 'cpu'."
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise TwinlensError(f"device {str(device)!r}: this machine has {n} CUDA device(s) (cuda:0-{n - 1}).")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise TwinlensError(f"device {str(device)!r}: MPS is not available on this machine; use 'cpu'.")
    elif dev.type != "cpu":
        avail = getattr(torch, dev.type, None)
        if avail is None or not getattr(avail, "is_available", lambda: False)():
            raise TwinlensError(f"device {str(device)!r} is not available here; use 'cpu' or 'cuda'.")
    return dev


def check_dtype(dtype: Any) -> Any:
    """A floating ``torch.dtype`` from a dtype or its name ('float32', 'bfloat16', 'fp16'...)."""
    import torch

    if isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.lower().removeprefix("torch."), dtype.lower().removeprefix("torch."))
        found = getattr(torch, name, None) if name.isidentifier() else None
        if not isinstance(found, torch.dtype):
            raise TwinlensError(f"dtype {dtype!r} is not a torch dtype; use one of {', '.join(LOAD_DTYPES)}.")
        dtype = found
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TwinlensError(f"dtype {dtype!r}: model weights need a floating dtype, one of {', '.join(LOAD_DTYPES)}.")
    return dtype


def check_layer_range(lo: int, hi: int, n_layers: int | None, pattern: str) -> None:
    """An inclusive block range ``lo-hi`` as written in ``pattern``: lo <= hi < n_layers."""
    if lo > hi:
        raise TwinlensError(
            f"Layer range {lo}-{hi} in {pattern!r} is reversed (it would select nothing); write the "
            f"lower block first: {pattern.replace(f'{lo}-{hi}', f'{hi}-{lo}', 1)!r}."
        )
    if n_layers is not None and hi >= n_layers:
        raise TwinlensError(
            f"Layer range {lo}-{hi} in {pattern!r} is out of range: the model has "
            f"{n_layers} blocks (0-{n_layers - 1})."
        )


def check_token_ids(prompts: Sequence[Sequence[int]], vocab_size: int, name: str = "prompt") -> list[list[int]]:
    """Token-id lists as ints in [0, vocab_size); refuses strings (encode them first), floats and
    ids the embedding has no row for, naming (prompt, id) pairs."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)):
            raise TwinlensError(f"{name} {i} is text; pass token ids (e.g. model.encode(text)).")
        try:
            ids = [operator.index(t) for t in p]
        except TypeError:
            raise TwinlensError(f"{name} {i} must be a list of integer token ids, got {list(p)[:5]!r}...") from None
        out.append(ids)
    bad = [(i, t) for i, ids in enumerate(out) for t in ids if not 0 <= t < vocab_size][:3]
    if bad:
        raise TwinlensError(
            f"Token ids out of the vocabulary (ids 0-{vocab_size - 1}): ({name}, id) {bad}. Encode the "
            "text with this model's tokenizer."
        )
    return out


def _range_text(minimum: int | None, maximum: int | None, kind: str) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in {minimum}..{maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def _interval_text(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"a number in {'(' if min_open else '['}{minimum:g}, {maximum:g}{')' if max_open else ']'}"
    if minimum is not None:
        return f"a number {'>' if min_open else '>='} {minimum:g}"
    if maximum is not None:
        return f"a number {'<' if max_open else '<='} {maximum:g}"
    return "a finite number"


def bootstrap_indices(rng: Any, n_items: int, n_boot: int, *, name: str = "n_boot") -> Any:
    """Resample indices Int[ndarray, "n_boot n_items"] from ``rng`` (a numpy Generator), after
    checking ``n_boot`` >= 1 and ``n_items`` >= 1: the one place a percentile bootstrap draws,
    so zero resamples or an empty sample is a clear error, not numpy's quantile of nothing.
    The draw is ``rng.integers(0, n_items, size=(n_boot, n_items))``."""
    n_boot = check_positive_int(name, n_boot)
    if n_items < 1:
        raise TwinlensError("A bootstrap needs at least one item to resample; got none (no problems/prompts).")
    return rng.integers(0, n_items, size=(n_boot, n_items))
