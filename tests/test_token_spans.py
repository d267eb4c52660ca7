"""Character spans -> token spans through one decode convention (probes.labels.token_char_offsets),
on the tokenizer families real models use: SentencePiece with byte fallback (Gemma/Llama style),
byte-level BPE (GPT-2/SmolLM2/Qwen style), each with special tokens inside the completion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analyses.sampling import SampleRow, _annotate, completion_text
from analyses.task import TaskProblem, regex_task
from probes.labels import RegexLabeler, char_spans_to_token_spans, token_char_offsets

SPECIAL = "<start_of_turn>"
LETTERS = "abcdefghijklmnopqrstuvwxyzTW0123456789.,:!?"


def save_sentencepiece_byte_fallback(folder: Path, add_bos: bool = False):
    """A tiny Gemma-style tokenizer (with `add_bos`, <bos> on every encode, as Gemma's): spaces
    become '▁' (no pre-tokenizer), BPE with byte fallback
    (é, € and emoji become <0xNN> pieces), decoder Replace('▁',' ') + ByteFallback + Fuse, and
    <bos>/<eos>/<start_of_turn> special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, SPECIAL: 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁" + LETTERS:
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "W"), ("▁W", "a"), ("▁Wa", "i"), ("▁Wai", "t"), ("▁", "t"), ("h", "e")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    if add_bos:  # Gemma's tokenizer prepends <bos> to every encode
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=[SPECIAL])
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def save_byte_level_bpe(folder: Path):
    """A tiny GPT-2-style byte-level BPE (every byte a token; ' W','ai' merges) with <|im_start|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1}
    for c in sorted(alphabet):
        vocab[c] = len(vocab)
    merges = [("Ġ", "W"), ("a", "i"), ("ĠW", "ai")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=["sentencepiece", "bytelevel"])
def tokenizer_and_special(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "sentencepiece":
        return save_sentencepiece_byte_fallback(folder), SPECIAL
    return save_byte_level_bpe(folder), "<|im_start|>"


def completion_ids(tok, special: str) -> list[int]:
    """'Wait, café € 🙂 is 12.' + <special> + ' Wait: the answer is 7.' (no BOS)."""
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    return enc("Wait, café € 🙂 is 12.") + [tok.convert_tokens_to_ids(special)] + enc(" Wait: the answer is 7.")


def assert_spans_cover_exactly(tok, ids, text, char_spans, token_spans):
    """Each token span decodes to text holding its character span, and is minimal: dropping its
    first or last token loses part of it (tokens may carry a leading space, '▁')."""
    assert len(token_spans) == len(char_spans)
    for (_, c0, c1), span in zip(char_spans, token_spans, strict=True):
        want = text[c0:c1]
        got = tok.decode(ids[span.start : span.end], skip_special_tokens=True)
        assert want in got, (want, got)
        for inner in (ids[span.start + 1 : span.end], ids[span.start : span.end - 1]):
            assert want not in tok.decode(inner, skip_special_tokens=True)


def test_special_token_inside_a_completion_does_not_shift_later_spans(tokenizer_and_special):
    tok, special = tokenizer_and_special
    ids = completion_ids(tok, special)
    text, offsets = token_char_offsets(tok, ids)
    assert text == tok.decode(ids, skip_special_tokens=True) == completion_text(tok, ids)
    assert special not in text
    assert len(offsets) == len(ids)
    sp = ids.index(tok.convert_tokens_to_ids(special))
    assert offsets[sp][0] == offsets[sp][1]  # the special token covers no character
    char_spans = [("num", m.start(), m.end()) for m in re.finditer(r"\d+", text)]
    char_spans += [("wait", m.start(), m.end()) for m in re.finditer(r"Wait", text)]
    char_spans += [("sym", m.start(), m.end()) for m in re.finditer(r"[é€🙂]", text)]
    token_spans = char_spans_to_token_spans(char_spans, offsets)
    assert_spans_cover_exactly(tok, ids, text, char_spans, token_spans)
    # The answer after the special token lands on "7", not on a neighbour.
    seven = [s for (n, c0, _), s in zip(char_spans, token_spans, strict=True) if text[c0] == "7"][0]
    assert tok.decode(ids[seven.start : seven.end], skip_special_tokens=True).strip() == "7"


def test_byte_fallback_pieces_of_one_character_share_its_range(tmp_path):
    tok = save_sentencepiece_byte_fallback(tmp_path)
    ids = tok("a€b", add_special_tokens=False).input_ids
    assert len(ids) == 5  # a, <0xE2>, <0x82>, <0xAC>, b
    text, offsets = token_char_offsets(tok, ids + [tok.convert_tokens_to_ids(SPECIAL)] + ids)
    assert text == "a€ba€b"
    assert offsets[1:4] == [(1, 2)] * 3 and offsets[5] == (3, 3) and offsets[7:10] == [(4, 5)] * 3


def test_sampling_rows_put_the_answer_span_on_the_answer_after_a_special_token(tokenizer_and_special):
    """The old path decoded the row text without special tokens but mapped spans on a decode
    with them: every span after <|im_start|> slid by its length (the answer '7' on ' Wait')."""
    tok, special = tokenizer_and_special
    ids = completion_ids(tok, special)
    task = regex_task("t", answer_pattern=r"answer is (\d+)")
    row = SampleRow(model="m", problem_id="p", sample_index=0, prompt_ids=[5], completion_ids=ids,
                    text=completion_text(tok, ids), logprobs={}, finished=True)
    _annotate(row, TaskProblem(id="p", prompt="q", answer="7"), task, tok)
    s, e = row.answer_span
    assert tok.decode(ids[s:e], skip_special_tokens=True).strip() == "7"
    assert row.correct is True
    # The regex labeler's backtracking span (from 'Wait' to the sentence end) after the special
    # token starts on the ' Wait' token.
    labeler = RegexLabeler({"backtracking": [r"\bWait\b"]}, extent="match")
    labels = labeler.label_tokens([5] + ids, tok, reasoning_start=1)
    starts = [tok.decode(ids[sp.start - 1 : sp.end - 1]).strip() for sp in labels.spans]
    assert starts == ["Wait", "Wait"]


def test_windowed_offsets_equal_the_prefix_decodes(tokenizer_and_special):
    """The O(n) windowed decode (used when a special token or a non-canonical tokenization
    defeats the tokenizer's own offsets) gives the ranges of the O(n^2) prefix decodes."""
    from probes.labels import _prefix_offsets, _windowed_offsets, special_token_ids

    tok, special = tokenizer_and_special
    ids = completion_ids(tok, special) * 3
    text = tok.decode(ids, skip_special_tokens=True)
    windowed = _windowed_offsets(tok, ids, text)
    assert windowed is not None
    assert windowed == _prefix_offsets(tok, ids, text, special_token_ids(tok, ids))
