"""What a checkpoint tensor is, from its name alone: layer index and module kind.

Covers the Llama / Qwen2 / Mistral convention (``model.layers.3.self_attn.q_proj.weight``), GPT-2
(``transformer.h.3.attn.c_attn.weight``, also the old un-prefixed ``h.3...`` hub files) and
GPT-NeoX / BERT-style names. A name no rule recognises is kind ``"other"`` (counted, never dropped).

Kinds: embedding, attn_q, attn_k, attn_v, attn_o, attn_qkv (fused, GPT-2 ``c_attn``), mlp_up,
mlp_gate, mlp_gate_up (fused), mlp_down, norm, unembedding, other.
"""

from __future__ import annotations

import re

__all__ = ["MODULE_KINDS", "module_kind", "layer_index", "non_parameter_reason"]

MODULE_KINDS = (
    "embedding", "attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv",
    "mlp_up", "mlp_gate", "mlp_gate_up", "mlp_down", "norm", "unembedding", "other",
)

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_ATTN_PARENTS = {"self_attn", "attn", "attention", "self_attention", "mixer"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn"}

_UNEMBEDDING = {"lm_head", "embed_out"}
_EMBEDDING = {"embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "position_embeddings",
              "embed_positions", "token_type_embeddings"}
_EXACT_KINDS = {
    "c_attn": "attn_qkv", "qkv_proj": "attn_qkv", "query_key_value": "attn_qkv", "Wqkv": "attn_qkv",
    "q_proj": "attn_q", "query": "attn_q",
    "k_proj": "attn_k", "key": "attn_k",
    "v_proj": "attn_v", "value": "attn_v",
    "o_proj": "attn_o", "out_proj": "attn_o",
    "gate_up_proj": "mlp_gate_up",
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_up", "c_fc": "mlp_up", "fc1": "mlp_up", "fc_in": "mlp_up", "dense_h_to_4h": "mlp_up",
    "down_proj": "mlp_down", "fc2": "mlp_down", "fc_out": "mlp_down", "dense_4h_to_h": "mlp_down",
}


def layer_index(name: str) -> int | None:
    """Block index parsed from ``...layers.3.`` / ``...h.3.`` / ``...blocks.3.``; None outside blocks."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def _is_norm(part: str) -> bool:
    return "norm" in part.lower() or re.fullmatch(r"ln(_\w+)?", part) is not None


def module_kind(name: str) -> str:
    """The module kind of parameter ``name`` (one of ``MODULE_KINDS``); biases share their weight's kind."""
    parts = name.split(".")
    if parts and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    if any(p in _UNEMBEDDING for p in parts):
        return "unembedding"
    if any(_is_norm(p) for p in parts):  # before attention: Qwen3's q_norm is a norm
        return "norm"
    if any(p in _EMBEDDING for p in parts):
        return "embedding"
    for i, p in enumerate(parts):
        if p in _EXACT_KINDS:
            return _EXACT_KINDS[p]
        parent = parts[i - 1] if i else ""
        if p == "c_proj":  # GPT-2 uses c_proj for both the attention output and the MLP down projection
            if parent in _ATTN_PARENTS:
                return "attn_o"
            if parent in _MLP_PARENTS:
                return "mlp_down"
        if p == "dense" and parent in ("attention", "output") and "attention" in parts:
            return "attn_o"
    return "other"


def non_parameter_reason(name: str, dtype_is_float: bool, ndim: int) -> str | None:
    """Why a stored tensor is not a trained parameter (then it is skipped), or None.

    Old GPT-2 files store the causal-mask buffers ``attn.bias`` / ``attn.masked_bias``; some
    checkpoints store rotary ``inv_freq``; integer tensors are buffers (position ids, masks).
    """
    if not dtype_is_float:
        return "not a floating-point tensor (a buffer)"
    if name.endswith("rotary_emb.inv_freq"):
        return "rotary inv_freq buffer"
    if re.search(r"(?:^|\.)attn\.(?:masked_)?bias$", name) and ndim != 1:
        return "GPT-2 causal-mask buffer"
    if name.endswith("attn.masked_bias"):
        return "GPT-2 causal-mask buffer"
    return None
