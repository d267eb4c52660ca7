"""Character tokenizer of the organism, built with ``tokenizers`` and saved as a HF tokenizer.

One token per character, plus ``<pad>`` (id 0), ``<eos>`` (id 1) and ``<unk>`` (id 2). No BOS is
ever added (the organism never saw one). Build it with ``save_tokenizer(folder)`` and use the
reloaded ``AutoTokenizer.from_pretrained(folder)``: a tokenizer built in memory breaks inside
TransformerLens's bridge (``KeyError: 'name_or_path'``).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)
# Every character the task grammar writes (both variants).
CHARACTERS = tuple("0123456789+-=;:# ") + tuple("waitchkon") + tuple("@?>")
VOCAB: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS + CHARACTERS)}
PAD_ID, EOS_ID = VOCAB[PAD], VOCAB[EOS]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer object, in memory (save it with ``save_tokenizer`` before using it)."""
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=160,  # organism.training.MAX_LEN
    )


def save_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Write the tokenizer files into ``folder`` and return the reloaded tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)
