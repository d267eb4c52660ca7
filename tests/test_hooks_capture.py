"""The foundation: loading through the real path, exact activations, the streaming store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hooks import ActivationStore, TwinlensError, capture, load_model, load_pair

PROMPTS = ["3+5+8+2+1:", "1+1:", "9+9+9+9+9:3+5=08;", "7+2+4:", "0:", "4+4+4+4:#6", "12345", "8+"]


def hf_block_outputs(path: Path, ids: list[int]) -> list[torch.Tensor]:
    """Block outputs from a freshly loaded HF model: hidden_states[1:-1] and, for the last block
    (whose hidden_states entry has the final norm applied), a forward hook on the layer."""
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    layers = hf.base_model.layers if hasattr(hf.base_model, "layers") else hf.base_model.h
    grabbed = {}
    handle = layers[-1].register_forward_hook(
        lambda m, i, o: grabbed.__setitem__("last", o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        hs = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    handle.remove()
    return [h[0] for h in hs[1:-1]] + [grabbed["last"][0]]


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "llama"])
def test_stored_block_outputs_equal_hf_hidden_states_fp32(tiny_models, tmp_path, arch):
    model = load_model(tiny_models[arch])
    store = capture(model, PROMPTS, hooks="blocks.*.hook_out", out=tmp_path / "acts", batch_size=3, progress=False)
    assert store.hooks == [f"blocks.{i}.hook_out" for i in range(model.n_layers)]
    for ex, prompt in enumerate(PROMPTS):
        ids = model.encode(prompt)
        expected = hf_block_outputs(tiny_models[arch], ids)
        rows = store.example_index == ex
        assert store.tokens[rows].tolist() == ids
        for layer in range(model.n_layers):
            got = store.read(f"blocks.{layer}.hook_out")[rows]
            # fp32, same kernels up to batching/padding: 1e-5 is ~100x float32 eps at |x| ~ 1.
            torch.testing.assert_close(got, expected[layer], atol=1e-5, rtol=0)


def test_bridge_leaves_the_users_hf_model_generating_like_a_fresh_one(tiny_models):
    from hooks import generate

    model = load_model(tiny_models["llama"])
    before = model.hf.config._attn_implementation
    layer0 = model.hf.model.layers[0]
    _ = model.bridge  # boot it: it rewires its own copy, never model.hf
    assert model.bridge.original_model.config._attn_implementation == "eager"  # the copy was switched
    assert model.hf.config._attn_implementation == before != "eager"  # the user's model was not
    assert model.hf.model.layers[0] is layer0  # nor its modules wrapped
    # ...while the two share weight storage (no second copy in memory)
    assert model.bridge.original_model.lm_head.weight.data_ptr() == model.hf.lm_head.weight.data_ptr()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    prompt = model.encode("3+5+8+2+1:")
    ours = generate(model, [prompt], max_new_tokens=12, stop_at_eos=False)[0]
    theirs = fresh.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                            eos_token_id=None, pad_token_id=model.tokenizer.pad_token_id)[0, len(prompt):]
    assert ours == theirs.tolist()


def test_positions_last_and_mask(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"])
    last = capture(model, PROMPTS, hooks="blocks.1.hook_out", out=tmp_path / "last", positions="last", progress=False)
    full = capture(model, PROMPTS, hooks="blocks.1.hook_out", out=tmp_path / "all", progress=False)
    assert last.n_rows == len(PROMPTS)
    ends = [int((full.example_index == i).nonzero().max()) for i in range(len(PROMPTS))]
    assert torch.equal(last.read("blocks.1.hook_out"), full.read("blocks.1.hook_out")[ends])
    masks = [[p % 2 == 0 for p in range(len(model.encode(t)))] for t in PROMPTS]
    even = capture(model, PROMPTS, hooks="blocks.1.hook_out", out=tmp_path / "even", positions=masks, progress=False)
    assert (even.position % 2 == 0).all() and even.n_rows == sum(sum(m) for m in masks)


def test_paired_store_holds_the_same_tokens_for_both_models(tiny_models, tmp_path):
    pair = load_pair(tiny_models["llama"], tiny_models["llama_b"])
    store = capture(pair, PROMPTS, hooks=["blocks.0-1.hook_out"], out=tmp_path / "pair", batch_size=4, progress=False)
    base, rl = store.read("blocks.1.hook_out", model="base"), store.read("blocks.1.hook_out", model="rl")
    assert base.shape == rl.shape == (store.n_rows, pair.base.d_model)
    assert not torch.allclose(base, rl)  # different weights, different activations
    ex0 = store.example_index == 0
    expected_rl = hf_block_outputs(tiny_models["llama_b"], pair.base.encode(PROMPTS[0]))[1]
    torch.testing.assert_close(rl[ex0], expected_rl, atol=1e-5, rtol=0)
    with pytest.raises(TwinlensError, match="several models"):
        store.read("blocks.1.hook_out")


def test_memory_is_bounded_by_a_shard_not_the_dataset(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"])
    store = capture(model, PROMPTS * 4, hooks="blocks.*.hook_out", out=tmp_path / "s", batch_size=2,
                    shard_bytes=1, progress=False)
    assert len(store.shards) == len(PROMPTS * 4) // 2  # one shard per batch at this shard size
    assert sum(s.rows for s in store.shards) == store.n_rows
    assert sorted(p.name for p in (tmp_path / "s").glob("*.tmp")) == []


CHILD = textwrap.dedent(
    """
    import sys, time
    import hooks.capturing as cap
    from hooks import load_model, capture
    real = cap._forward_capture
    def slow(*a, **k):
        time.sleep(0.05)  # slow the real capture so the parent can kill it mid-run
        return real(*a, **k)
    cap._forward_capture = slow
    model = load_model(sys.argv[1])
    prompts = [p for p in sys.argv[3:]]
    capture(model, prompts, hooks="blocks.*.hook_out", out=sys.argv[2], batch_size=2, shard_bytes=1, progress=False)
    """
)


def test_capture_killed_mid_run_and_rerun_gives_exactly_the_uninterrupted_rows(tiny_models, tmp_path):
    prompts = [f"{i}+{i % 7}+{i % 3}:" for i in range(60)]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_models["llama"]), str(out), *prompts], env=env)
    deadline = time.time() + 120
    shards = 0
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.json").exists():
            try:
                shards = len(json.loads((out / "manifest.json").read_text())["shards"])
            except json.JSONDecodeError:
                shards = 0
            if shards >= 3:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 3 <= len(manifest["shards"]) < 30, "the kill must land mid-run"

    model = load_model(tiny_models["llama"])
    resumed = capture(model, prompts, hooks="blocks.*.hook_out", out=out, batch_size=2, shard_bytes=1, progress=False)
    clean = capture(model, prompts, hooks="blocks.*.hook_out", out=tmp_path / "clean", batch_size=2, progress=False)
    assert resumed.complete
    for key in ("tokens", "example_index", "position"):
        assert torch.equal(getattr(resumed, key), getattr(clean, key))
    for hook in clean.hooks:
        assert torch.equal(resumed.read(hook), clean.read(hook))


def test_reopening_a_store_with_another_model_or_arguments_is_refused(tiny_models, tmp_path):
    out = tmp_path / "acts"
    capture(load_model(tiny_models["llama"]), PROMPTS, hooks="blocks.0.hook_out", out=out, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TwinlensError, match="models"):
        capture(load_model(tiny_models["llama_b"]), PROMPTS, hooks="blocks.0.hook_out", out=out, progress=False)
    with pytest.raises(TwinlensError, match="hooks"):
        capture(load_model(tiny_models["llama"]), PROMPTS, hooks="blocks.1.hook_out", out=out, progress=False)
    with pytest.raises(TwinlensError, match="inputs"):
        capture(load_model(tiny_models["llama"]), PROMPTS[:3], hooks="blocks.0.hook_out", out=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing already written is lost


def test_corrupted_or_truncated_shard_is_reported_by_name(tiny_models, tmp_path):
    store = capture(load_model(tiny_models["llama"]), PROMPTS, hooks="blocks.0.hook_out", out=tmp_path / "c",
                    batch_size=2, shard_bytes=1, progress=False)
    victim = store.root / store.shards[1].file
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(TwinlensError, match=store.shards[1].file):
        ActivationStore.open(store.root).read("blocks.0.hook_out")


def test_bad_inputs_get_clear_errors(tiny_models, tmp_path):
    model = load_model(tiny_models["llama"])
    with pytest.raises(TwinlensError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(TwinlensError, match="architecture"):
        load_pair(tiny_models["llama"], tiny_models["qwen2"])
    with pytest.raises(TwinlensError, match=r"Closest valid names: \['blocks.0.hook_out'"):
        model.resolve_hooks(["blocks.0.hook_ouy"])
    with pytest.raises(TwinlensError, match="out of range"):
        model.resolve_hooks(["blocks.0-7.hook_out"])
    with pytest.raises(TwinlensError, match="empty"):
        capture(model, [], out=tmp_path / "e", progress=False)
    with pytest.raises(TwinlensError, match="longer than the model's context of 128"):
        capture(model, ["1" * 200], out=tmp_path / "l", progress=False)
    with pytest.raises(TwinlensError, match="not an activation store"):
        ActivationStore.open(tmp_path)


def test_pickle_checkpoint_is_refused_and_the_converter_fixes_it(tiny_models, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from hooks.convert import convert_to_safetensors

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(TwinlensError, match="pickle.*hooks.convert"):
        load_model(folder)
    convert_to_safetensors(folder)
    assert load_model(folder).weight_hash == load_model(tiny_models["llama"]).weight_hash


def test_mismatched_vocabulary_is_named(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "othervocab"
    shutil.copytree(tiny_models["llama"], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["Z"] = vocab.pop("z")
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TwinlensError, match="tokenizer vocabulary.*only in base \\['z'\\]"):
        load_pair(tiny_models["llama"], folder)


def test_hf_engine_and_bridge_engine_store_the_same_numbers(tiny_models, tmp_path):
    model = load_model(tiny_models["qwen2"])
    hooks = ["blocks.0.hook_in", "blocks.0.mlp.hook_out", "blocks.1.hook_out"]
    fast = capture(model, PROMPTS, hooks=hooks, out=tmp_path / "hf", engine="hf", progress=False)
    slow = capture(model, PROMPTS, hooks=hooks, out=tmp_path / "bridge", engine="bridge", progress=False)
    for h in hooks:
        torch.testing.assert_close(fast.read(h), slow.read(h), atol=1e-5, rtol=0)
    # Hooks with no HF module go through the bridge under engine="auto".
    scale = capture(model, PROMPTS[:2], hooks=["blocks.0.ln1.hook_normalized"], out=tmp_path / "n", progress=False)
    assert scale.read("blocks.0.ln1.hook_normalized").shape == (scale.n_rows, model.d_model)
    # Per-head attention patterns are not per-token rows: a clear error, not a wrong store.
    with pytest.raises(TwinlensError, match="not \\[batch, pos"):
        capture(model, PROMPTS[:2], hooks=["blocks.0.attn.hook_pattern"], out=tmp_path / "p", progress=False)
