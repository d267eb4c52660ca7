"""Continuations (text appended to a completion, e.g. MI peaks' thinking token "Wait") are
encoded without special tokens and as a new word (hooks.Model.encode_continuation)."""

from __future__ import annotations

import pytest
import torch
from test_token_spans import save_byte_level_bpe, save_sentencepiece_byte_fallback

from hooks import Model, TwinlensError, load_model


def tokenizer_model(tok) -> Model:
    return Model(name="tok", path=None, hf=None, tokenizer=tok, weight_files=[])


@pytest.fixture(scope="module")
def gemma_like(tmp_path_factory):
    """A tiny Llama over a Gemma-style tokenizer that adds <bos> to every encode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("gemma_like")
    tok = save_sentencepiece_byte_fallback(folder, add_bos=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=2, bos_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_continuation_has_no_bos_and_starts_a_word(gemma_like, tmp_path):
    model = load_model(gemma_like)
    tok = model.tokenizer
    assert model.encode("Wait")[0] == tok.bos_token_id  # the tokenizer's own convention for a prompt
    ids = model.encode_continuation("Wait", "so it is 8.")
    assert tok.bos_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == ["▁Wait"]  # a new word, one merged piece
    assert tok.convert_ids_to_tokens(model.encode_continuation("Wait", "so it is 8. ")) == ["W", "a", "i", "t"]
    assert model.encode_continuation("Wait", "8.", word_boundary=False) == tok("Wait", add_special_tokens=False).input_ids
    with pytest.raises(TwinlensError, match="tokenizes to nothing"):
        model.encode_continuation("", "8.")
    byte_level = tokenizer_model(save_byte_level_bpe(tmp_path))
    # GPT-2 style: the word-initial merge 'ĠWai' (space marker Ġ) + 't', not 'W', 'ai', 't'.
    assert byte_level.tokenizer.convert_ids_to_tokens(byte_level.encode_continuation("Wait", "is 8.")) == ["ĠWai", "t"]


def test_thinking_token_scaling_appends_the_continuation_and_the_control_matches_its_length(gemma_like, monkeypatch):
    """The old step appended encode("Wait") = [<bos>, W, a, i, t] after '8.'; the control drew
    len(encode("Wait")) random tokens (one too many with the BOS), decoded and re-encoded them."""
    import analyses.mi_peaks.interventions as iv

    model = load_model(gemma_like)
    tok = model.tokenizer
    prompt, completion = model.encode("the sum is"), tok(" 8.", add_special_tokens=False).input_ids
    fed = []
    real_generate = iv.generate

    def spy(m, seqs, **kw):
        fed.extend(seqs)
        return real_generate(m, seqs, **kw)

    monkeypatch.setattr(iv, "generate", spy)
    iv.thinking_token_scaling(model, [prompt], [completion], lambda i, t: False, "Wait", max_new_tokens=3)
    appended = fed[0][len(prompt) + len(completion):]
    assert tok.convert_ids_to_tokens(appended) == ["▁Wait"]
    # The control: as many random ids as the continuation has, never a special token, fed as ids.
    n = len(model.encode_continuation("Wait", "x."))
    ctrl = iv.random_token_ids(model, range(len(tok)), n, seed=0)
    assert len(ctrl) == n == 1 and not set(ctrl) & {0, 1, 2, 3, 4}
    fed.clear()
    iv.thinking_token_scaling(model, [prompt], [completion], lambda i, t: False, "ctrl", max_new_tokens=3,
                              append_ids=ctrl)
    assert fed[0][len(prompt) + len(completion):] == ctrl
