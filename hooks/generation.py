"""Batched, seeded generation with a KV cache on the untouched HF model.

Each row (prompt i, sample j) draws its randomness from its own generator seeded by
(seed, i, j), so the samples do not depend on the batch size or on which rows were generated
before: a resumed job reproduces exactly the rows an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks.errors import TwinlensError
from hooks.interventions import ForwardLayout, forward_layout
from hooks.validation import (
    check_int,
    check_positive_int,
    check_temperature,
    check_token_ids,
    check_top_p,
)

LogitsProcessor = Callable[[Tensor, Tensor], Tensor]  # (logits [B, V], generated [B, t]) -> logits


def _cache_kwarg(hf: Any) -> str:
    """transformers >= 5.2x renamed `past_key_values` to `cache`; accept both."""
    import inspect

    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def forward_step(
    hf: Any, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Any = None
) -> tuple[Tensor, Any]:
    """One cached forward: (logits [B, T, V], new cache). Shared by every decoding loop."""
    kwargs = {_cache_kwarg(hf): cache} if cache is not None else {}
    out = hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
             use_cache=True, **kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = out.past_key_values
    return out.logits, new_cache


def embedding_rows(model: Any) -> int:
    """How many token ids the model can embed (the input embedding's rows; config.vocab_size
    when the model has no embedding module to ask)."""
    emb = model.hf.get_input_embeddings() if hasattr(model.hf, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    return int(rows if rows is not None else model.hf.config.vocab_size)


def check_generation_args(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                          top_p: float, *, temperature: float = 0.0, n: int = 1, batch_size: int = 1,
                          seed: int = 0) -> list[list[int]]:
    """The input checks every decoding loop shares, each with the fix in its message; returns
    the prompts as lists of int token ids."""
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise TwinlensError("No prompts given; pass at least one prompt (list of token ids).")
    prompts = check_token_ids(list(prompts), embedding_rows(model))
    if any(len(p) == 0 for p in prompts):
        raise TwinlensError("An empty prompt was given; every prompt needs at least one token.")
    check_positive_int("max_new_tokens", max_new_tokens)
    check_top_p(top_p)
    check_temperature(temperature)
    check_positive_int("n (samples per prompt)", n)
    check_positive_int("batch_size", batch_size)
    check_int("seed", seed)
    n_ctx = model.n_ctx
    longest = max(len(p) for p in prompts)
    if n_ctx is not None and longest + max_new_tokens > n_ctx:
        raise TwinlensError(
            f"A prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context of {n_ctx}; shorten the prompt or lower max_new_tokens."
        )
    return prompts


def pad_token_id(tokenizer: Any) -> int:
    """The id padding is written with: the tokenizer's pad token, else eos, else 0."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def expand_rows(
    prompts: Sequence[Sequence[int]], n: int, row_ids: Sequence[Any] | None
) -> list[tuple[list[int], Any, int]]:
    """(prompt ids, row id, sample index j) per decoded row, prompt-major: row i * n + j.
    The row id (default: the prompt index) keys the row's seed."""
    ids = list(row_ids) if row_ids is not None else list(range(len(prompts)))
    if len(ids) != len(prompts):
        raise TwinlensError(f"row_ids has {len(ids)} entries for {len(prompts)} prompts; give one per prompt.")
    return [(list(prompts[i]), ids[i], j) for i in range(len(prompts)) for j in range(n)]


def left_padded(
    prompts: Sequence[Sequence[int]], pad: int, device: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """Left padding with an explicit mask and positions, as HF's own generate does:
    (input ids [B, T], attention mask [B, T], position ids [B, T]) on `device`."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def token_positions(mask: Tensor, position_ids: Tensor) -> Tensor:
    """Absolute position of each token in its row's own sequence, -1 for padding
    (`hooks.interventions.ForwardLayout.positions`), from a left-padded batch's attention mask and
    position ids (both [B, T]; the mask may cover cached tokens too, its last T columns are used)."""
    return torch.where(mask[:, -position_ids.shape[1]:].bool(), position_ids, -1)


def strip_eos(toks: list[int], eos: int | None) -> list[int]:
    """A completion up to (not including) its first eos."""
    return toks[: toks.index(eos)] if eos is not None and eos in toks else toks


# Memory the KV cache of one HF-loop batch may take (CPU: a fixed budget, so the batch, and with
# it the padding of every row, does not depend on the machine's free memory; CUDA: a share of
# the device). More rows per step amortise the per-step Python and kernel-launch cost until the
# cache outgrows the CPU's caches. Measured on the organism (2 shared CPU cores, 2048 rows x
# <= 100 tokens, benchmarks/sampling.py): batch 256 410 tok/s, 512 434, 1024 259, 2048 227
# (and 4x from 64 to 512 in issue 19): the best is ~512 rows = 170 MB of cache.
CPU_KV_BUDGET_BYTES = 160 << 20
CUDA_KV_SHARE = 0.25
MAX_AUTO_BATCH = 4096


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token takes in ``model.hf``: 2 (K and V) x layers x KV heads x
    head_dim x bytes per element (``model.dtype``)."""
    cfg = model.hf.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    return 2 * n_layers * n_kv * head_dim * torch.finfo(model.dtype).bits // 8


def default_batch_size(model: Any, max_len: int, budget_bytes: int | None = None) -> int:
    """Rows per HF-loop batch whose KV cache (``kv_bytes_per_token(model) x max_len`` bytes a row,
    max_len = longest prompt + max_new_tokens) fits ``budget_bytes`` (default: CPU_KV_BUDGET_BYTES
    on CPU; CUDA_KV_SHARE of the device's memory on CUDA), between 1 and MAX_AUTO_BATCH.
    Organism (3 kB a token), 110 tokens a row: 496 rows."""
    if max_len < 1:
        raise TwinlensError(f"max_len must be >= 1, got {max_len}.")
    if budget_bytes is None:
        device = torch.device(model.device)
        if device.type == "cuda":
            budget_bytes = int(CUDA_KV_SHARE * torch.cuda.get_device_properties(device).total_memory)
        else:
            budget_bytes = CPU_KV_BUDGET_BYTES
    rows = budget_bytes // (kv_bytes_per_token(model) * max_len)
    return int(min(MAX_AUTO_BATCH, max(1, rows)))


def hf_has_hooks(hf: Any) -> bool:
    """Whether any module of ``hf`` has a forward (pre-)hook: an intervention is active."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in hf.modules())


def row_seed(seed: int, *keys: Any) -> int:
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_next_tokens(
    logits: Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # smallest set with mass >= top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u.unsqueeze(-1).to(cdf.dtype)).squeeze(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    stop_at_eos: bool = True,
    logits_processor: LogitsProcessor | None = None,
    row_ids: Sequence[Any] | None = None,
    progress: bool = False,
    engine: str = "hf",
) -> list[list[int]]:
    """Generate `n` completions per prompt (token ids, eos stripped), prompt-major:
    result[i * n + j]. temperature 0 = greedy. `row_ids` (one per prompt) replace the prompt
    index in the per-row seed, so a problem keeps its samples wherever it sits in a list.
    batch_size None: ``default_batch_size`` (from the memory a batch's KV cache needs).
    engine "vllm": the same contract through ``hooks.vllm_engine`` (same per-row seeds; greedy
    tokens equal this loop's; refused with a logits_processor, stop_at_eos=False, or an
    intervention hooked on ``model.hf``, which vLLM would silently ignore)."""
    if engine == "vllm":
        from hooks.vllm_engine import generate_vllm

        if logits_processor is not None or not stop_at_eos or hf_has_hooks(model.hf):
            raise TwinlensError(
                "engine='vllm' runs the checkpoint as saved: it cannot apply a logits processor, an "
                "intervention hooked on model.hf, or stop_at_eos=False; use engine='hf' for this."
            )
        return [c for c, _ in generate_vllm(model, prompts, max_new_tokens, temperature=temperature,
                                            top_p=top_p, n=n, seed=seed, row_ids=row_ids)]
    if engine != "hf":
        raise TwinlensError(f"Unknown engine {engine!r}; choose 'hf' or 'vllm'.")
    # Checks first: the default batch size reads the prompts (an empty list crashed max()).
    prompts = check_generation_args(model, prompts, max_new_tokens, top_p, temperature=temperature, n=n,
                                    batch_size=1 if batch_size is None else batch_size, seed=seed)
    if batch_size is None:
        batch_size = default_batch_size(model, max(len(p) for p in prompts) + max_new_tokens)
    rows = expand_rows(prompts, n, row_ids)
    eos = model.tokenizer.eos_token_id
    pad = pad_token_id(model.tokenizer)
    hf, device = model.hf, model.device
    out: list[list[int]] = []
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress, leave=False):
        chunk = rows[start : start + batch_size]
        gens = [torch.Generator().manual_seed(row_seed(seed, rid, j)) for _, rid, j in chunk]
        input_ids, mask, positions = left_padded([p for p, _, _ in chunk], pad, device)
        rows_here = torch.arange(start, start + len(chunk))
        with forward_layout(model, ForwardLayout(token_positions(mask, positions), rows_here, len(rows), n)):
            logits, cache = forward_step(hf, input_ids, mask, positions)
        logits = logits[:, -1]
        generated = torch.empty((len(chunk), 0), dtype=torch.long, device=device)
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        last_pos = positions[:, -1]
        for _ in range(max_new_tokens):
            if logits_processor is not None:
                logits = logits_processor(logits, generated)
            nxt = sample_next_tokens(logits, temperature, top_p, gens).to(device)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            generated = torch.cat([generated, nxt[:, None]], dim=1)
            if stop_at_eos and eos is not None:
                done |= nxt == eos
                if bool(done.all()):
                    break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            step_pos = torch.where(done, -1, last_pos)[:, None]  # a finished row's pad is no token
            with forward_layout(model, ForwardLayout(step_pos, rows_here, len(rows), n)):
                logits, cache = forward_step(hf, nxt[:, None], mask, last_pos[:, None], cache)
            logits = logits[:, -1]
        for toks in generated.tolist():
            out.append(strip_eos(toks, eos) if stop_at_eos else toks)
    return out
