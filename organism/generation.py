"""Batched, seeded generation for the organism (plain HF model, KV cache, token tensors, no BOS).

Organism prompts of one difficulty all have the same length, so a batch needs no padding; mixed
lengths are grouped by length. ``hooks.generate`` is the kit-wide helper; this one exists so the
organism can train and evaluate without ``hooks``.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from organism.tokenizer import EOS_ID, PAD_ID, VOCAB


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (one per character, nothing added); equals the saved tokenizer's."""
    try:
        return [VOCAB[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the organism vocabulary") from None


@torch.no_grad()
def generate_ids(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 256,
) -> list[list[int]]:
    """Completion token ids (eos and after stripped), prompt-major: ``out[i * n + j]``.

    ``temperature == 0`` is greedy. Sampling is plain softmax sampling at ``temperature``
    (no top-k/top-p). Deterministic in ``seed`` for a given batch size.
    """
    rows = [(i * n + j, p) for i, p in enumerate(prompt_ids) for j in range(n)]
    by_len: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for r in rows:
        by_len[len(r[1])].append(r)
    out: list[list[int]] = [[] for _ in rows]
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for length in sorted(by_len):
        group = by_len[length]
        for b in range(0, len(group), batch_size):
            chunk = group[b : b + batch_size]
            ids = torch.tensor([p for _, p in chunk], device=device)
            new = _generate_batch(model, ids, max_new_tokens, temperature, gen)
            for (k, _), seq in zip(chunk, new, strict=True):
                out[k] = seq
    return out


def _generate_batch(model, ids: torch.Tensor, max_new_tokens: int, temperature: float,
                    gen: torch.Generator) -> list[list[int]]:
    batch = ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool)
    tokens: list[torch.Tensor] = []
    past = None
    inp = ids
    # transformers >= 5.2x renamed `past_key_values` to `cache`; accept both.
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for _ in range(max_new_tokens):
        res = model(input_ids=inp, use_cache=True, **({key: past} if past is not None else {}))
        past = getattr(res, "cache", None) or res.past_key_values
        logits = res.logits[:, -1, :].float().cpu()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        tokens.append(nxt)
        done |= nxt == EOS_ID
        if bool(done.all()):
            break
        inp = nxt.unsqueeze(-1).to(ids.device)
    seqs = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
    result = []
    for s in seqs:
        if EOS_ID in s:
            s = s[: s.index(EOS_ID)]
        result.append([t for t in s if t != PAD_ID])
    return result


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 256,
) -> list[str]:
    """Completion texts, prompt-major (``out[i * n + j]``)."""
    ids = [encode(p) for p in prompts]
    outs = generate_ids(model, ids, max_new_tokens, temperature, n, seed, batch_size)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
