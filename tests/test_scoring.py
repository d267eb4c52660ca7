"""Per-token log-probs gathered in chunks of positions (analyses.sampling.score_completions):
equal to the full-vocabulary log-softmax of HF's own logits, for every chunk size."""

from __future__ import annotations

import pytest
import torch
from conftest import CHARS, save_char_tokenizer
from transformers import AutoModelForCausalLM

from analyses.sampling import iter_completion_logprobs, score_completions
from hooks import TwinlensError, load_model

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
COMPLETIONS = [[11, 12, 13, 14, 15, 16, 17], [18, 19], []]


def make_tiny_gemma2(folder, softcap: float | None = 0.1):
    """Gemma 2 (final-logit soft-capping, tanh(z / c) * c) with random weights; a small cap so
    that the capping changes the log-probs by far more than the tolerance."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(CHARS) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                       final_logit_softcapping=softcap, pad_token_id=len(CHARS), eos_token_id=len(CHARS) + 1,
                       bos_token_id=None)
    Gemma2ForCausalLM(cfg).save_pretrained(folder)
    save_char_tokenizer(folder)
    return folder


def reference_logprobs(path, prompts, completions) -> list[list[float]]:
    """Full-vocabulary log-softmax of HF's own logits, one unpadded sequence at a time."""
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for p, c in zip(prompts, completions, strict=True):
        if not c:
            out.append([])
            continue
        with torch.no_grad():
            logits = hf(torch.tensor([p + c])).logits[0, len(p) - 1 : len(p) - 1 + len(c)]
        lp = torch.log_softmax(logits.float(), -1)
        out.append(lp.gather(-1, torch.tensor(c)[:, None]).squeeze(-1).tolist())
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma2"])
def test_chunked_logprobs_equal_the_full_logit_log_softmax(tiny_models, tmp_path, arch):
    path = make_tiny_gemma2(tmp_path / "g2") if arch == "gemma2" else tiny_models[arch]
    model = load_model(path)
    want = reference_logprobs(path, PROMPTS, COMPLETIONS)
    for chunk in (1, 3, 10_000):  # one position, chunks that split rows, one chunk per row
        got = score_completions(model, PROMPTS, COMPLETIONS, batch_size=2, chunk=chunk)
        assert [len(g) for g in got] == [len(c) for c in COMPLETIONS]
        for g, w in zip(got, want, strict=True):
            # float32 throughout; the batch is right-padded, the reference is not: padding never
            # reaches a real token (causal), so only summation order differs, ~1e-7 at |lp| ~ 4.
            torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=1e-5, rtol=0)
    # Distributions too (drift's KL, phases' entropy): rows of exp(lp) sum to 1.
    dists = list(iter_completion_logprobs(model, PROMPTS, COMPLETIONS, batch_size=2))
    assert [tuple(d.shape) for d in dists] == [(len(c), len(CHARS) + 2) for c in COMPLETIONS]
    torch.testing.assert_close(dists[0].exp().sum(-1), torch.ones(len(COMPLETIONS[0])), atol=1e-5, rtol=0)


def test_softcapping_is_applied(tmp_path):
    """Without the cap the log-probs differ by far more than the tolerance: the check above
    would catch a head applied without Gemma 2's soft-capping."""
    capped = load_model(make_tiny_gemma2(tmp_path / "a", softcap=0.1))
    plain = load_model(make_tiny_gemma2(tmp_path / "b", softcap=None))
    a = torch.tensor(score_completions(capped, PROMPTS[:1], COMPLETIONS[:1])[0])
    b = torch.tensor(score_completions(plain, PROMPTS[:1], COMPLETIONS[:1])[0])
    assert (a - b).abs().max() > 0.01


def test_bad_chunk_is_refused(tiny_models):
    with pytest.raises(TwinlensError, match="chunk"):
        score_completions(load_model(tiny_models["llama"]), PROMPTS, COMPLETIONS, chunk=0)


