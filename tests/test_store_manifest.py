"""The store cross-checks manifest.json against its shards when opened or resumed (issue 17,
kind D): an edited or damaged manifest is a TwinlensError naming the shard and the fix, never a
``len(store)`` that disagrees with ``read()`` or a resume that appends overlapping rows."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hooks import ActivationStore, TwinlensError, capture, load_model

PROMPTS = ["1+2+3:", "4+5:", "6+7+8+9:", "3+3:", "2+9+1:", "7+7+7+7:"]


@pytest.fixture()
def store(tiny_models, tmp_path):
    # batch 2, one batch per shard: three shards over examples 0-2, 2-4, 4-6
    return capture(load_model(tiny_models["llama"]), PROMPTS, hooks="blocks.0.hook_out", out=tmp_path / "s",
                   batch_size=2, shard_bytes=1, progress=False)


def edit(store, fn) -> None:
    path = store.root / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_the_intact_store_opens_and_its_length_equals_the_rows_read(store):
    again = ActivationStore.open(store.root)
    assert len(store.shards) == 3
    assert len(again) == again.read("blocks.0.hook_out").shape[0] == sum(len(p) for p in PROMPTS)


def test_a_shard_row_count_edited_in_the_manifest_is_refused_by_name(store):
    # the case: len(store) said rows + 5 while read() returned the real rows
    edit(store, lambda m: m["shards"][1].__setitem__("rows", m["shards"][1]["rows"] + 5))
    name = re.escape(store.shards[1].file)
    with pytest.raises(TwinlensError, match=rf"Shard {name} of .* holds \d+ rows but manifest.json says"):
        ActivationStore.open(store.root)


def test_a_manifest_without_shards_is_refused(store):
    edit(store, lambda m: m.pop("shards"))
    with pytest.raises(TwinlensError, match="lacks 'shards'"):
        ActivationStore.open(store.root)


@pytest.mark.parametrize("change, match", [
    (lambda m: m["shards"][1].__setitem__("example_start", 1), "covers examples 1-4, but the shards before it end at example 2"),
    (lambda m: m["shards"].pop(1), "covers examples 4-6, but the shards before it end at example 2"),
    (lambda m: m["shards"][2].__setitem__("example_end", 9), "covers examples 4-9"),
    (lambda m: m["shards"][2].__setitem__("file", "../elsewhere.safetensors"), "must be a shard name in the store folder"),
    (lambda m: m["shards"][2].__setitem__("file", m["shards"][0]["file"]), "listed once"),
    (lambda m: m["shards"][0].__setitem__("sha256", "abc"), "not a sha256 digest"),
    (lambda m: m["shards"][0].pop("rows"), "lacks one of"),
    (lambda m: m["shards"][0].__setitem__("rows", "7"), "wrong type"),
    (lambda m: m.__setitem__("hooks", "blocks.0.hook_out"), "lacks 'hooks'"),
    (lambda m: m["shards"].pop(), "says the capture is complete, but its shards end at example 4 of 6"),
])
def test_inconsistent_manifests_are_refused_with_the_shard_named(store, change, match):
    edit(store, change)
    with pytest.raises(TwinlensError, match=match):
        ActivationStore.open(store.root)


def test_a_missing_or_truncated_shard_is_named_at_open(store):
    victim = store.root / store.shards[2].file
    data = victim.read_bytes()
    victim.write_bytes(data[:40])
    with pytest.raises(TwinlensError, match=rf"Shard {re.escape(victim.name)} .* corrupted or truncated"):
        ActivationStore.open(store.root)
    victim.unlink()
    with pytest.raises(TwinlensError, match=rf"Shard {re.escape(victim.name)} .* is missing"):
        ActivationStore.open(store.root)


def test_a_shard_swapped_for_another_of_a_different_size_is_refused(store):
    a, b = (store.root / store.shards[i].file for i in (0, 2))
    a.write_bytes(b.read_bytes())  # same keys, other row count: the header tells
    with pytest.raises(TwinlensError, match=re.escape(a.name)):
        ActivationStore.open(store.root)


def test_resume_refuses_an_overlapping_manifest_and_appends_nothing(tiny_models, store):
    # an entry moved back over rows already stored: resuming would duplicate examples 2-3
    edit(store, lambda m: (m["shards"].pop(), m.__setitem__("complete", False),
                           m["shards"][1].__setitem__("example_start", 0)))
    before = sorted(p.name for p in store.root.iterdir())
    with pytest.raises(TwinlensError, match="contiguous, non-overlapping"):
        capture(load_model(tiny_models["llama"]), PROMPTS, hooks="blocks.0.hook_out", out=store.root,
                batch_size=2, shard_bytes=1, progress=False)
    assert sorted(p.name for p in store.root.iterdir()) == before


def test_resume_after_dropping_trailing_entries_gives_exactly_the_clean_rows(tiny_models, store, tmp_path):
    # what the error messages tell the user to do: drop the bad entry and every later one, rerun
    edit(store, lambda m: (m["shards"].pop(), m["shards"].pop(), m.__setitem__("complete", False)))
    model = load_model(tiny_models["llama"])
    resumed = capture(model, PROMPTS, hooks="blocks.0.hook_out", out=store.root, batch_size=2, shard_bytes=1,
                      progress=False)
    clean = capture(model, PROMPTS, hooks="blocks.0.hook_out", out=tmp_path / "clean", batch_size=2, progress=False)
    assert torch.equal(resumed.example_index, clean.example_index)
    assert torch.equal(resumed.read("blocks.0.hook_out"), clean.read("blocks.0.hook_out"))
    assert len(resumed) == len(clean)


def test_example_tokens_outside_the_store_is_a_clear_error(store):
    assert len(store.example_tokens(5)) == len(PROMPTS[5])  # the character tokenizer: one id a character
    with pytest.raises(TwinlensError, match=r"example index must be an integer in 0..5, got 6"):
        store.example_tokens(6)
    with pytest.raises(TwinlensError, match="example index must be an integer in 0..5, got -1"):
        store.example_tokens(-1)  # used to return [] silently
