"""Loading refuses checkpoints that do not match their architecture; hook names are served by an
HF module only when it gives the bridge's value; a model the bridge cannot build still works
for everything that runs on the HF model (issue 16, parts 3-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hooks import TwinlensError, add_to_residual, capture, generate, load_model, load_pair
from tests.conftest import make_tiny_model

PROMPTS = ["3+5+8+2+1:", "1+1:", "9+9+9:3+5=08;", "7+2"]


def _rewrite(file: Path, change) -> None:
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_output_matrix_of_an_untied_model_is_refused_by_name(tmp_path):
    folder = make_tiny_model(tmp_path / "untied", "llama", tied=False)
    _rewrite(folder / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(TwinlensError, match=r"lm_head\.weight.*allow_missing_weights=True"):
        load_model(folder)
    with pytest.raises(TwinlensError, match=r"lm_head\.weight"):
        load_pair(folder, folder)
    # The opt-in loads it, says so, and the tensor really is random: two loads disagree.
    with pytest.warns(UserWarning, match=r"lm_head\.weight"):
        a = load_model(folder, allow_missing_weights=True)
    with pytest.warns(UserWarning):
        b = load_model(folder, allow_missing_weights=True)
    assert not torch.equal(a.hf.lm_head.weight, b.hf.lm_head.weight)


def test_unexpected_tensor_is_refused_by_name(tmp_path):
    folder = make_tiny_model(tmp_path / "extra", "llama")
    _rewrite(folder / "model.safetensors", lambda t: t.__setitem__("model.layers.0.extra.weight", torch.ones(3)))
    with pytest.raises(TwinlensError, match=r"not used by the architecture.*model\.layers\.0\.extra\.weight"):
        load_model(folder)


def test_tied_models_load_without_complaint(tmp_path):
    # A tied output matrix is absent from the file by design: not "missing".
    folder = make_tiny_model(tmp_path / "tied", "llama", tied=True)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    model = load_model(folder)
    assert model.hf.lm_head.weight.data_ptr() == model.hf.model.embed_tokens.weight.data_ptr()


def test_weight_hash_covers_exactly_the_loaded_shards(tmp_path):
    folder = make_tiny_model(tmp_path / "sharded", "llama", max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, shards
    model = load_model(folder)
    assert [f.name for f in model.weight_files] == shards
    before = model.weight_hash
    # A stray safetensors file next to the index is not loaded, so it must not change the hash.
    save_file({"x": torch.zeros(4)}, folder / "adapter_model.safetensors")
    assert load_model(folder).weight_hash == before
    # ...while a changed loaded shard does.
    _rewrite(folder / shards[0], lambda t: t.__setitem__(next(iter(t)), next(iter(t.values())) + 1))
    assert load_model(folder).weight_hash != before


def test_single_file_hash_ignores_stray_safetensors(tmp_path):
    folder = make_tiny_model(tmp_path / "single", "gpt2")
    before = load_model(folder).weight_hash
    save_file({"x": torch.zeros(4)}, folder / "optimizer_state.safetensors")
    assert load_model(folder).weight_hash == before


def test_index_naming_an_absent_shard_is_a_clear_error(tmp_path):
    folder = make_tiny_model(tmp_path / "sharded", "llama", max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    (folder / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(TwinlensError, match="names shards that are not there"):
        load_model(folder)


def test_opt_mlp_hook_is_not_served_by_the_whole_decoder_layer(tmp_path):
    # OPT has no MLP submodule: the bridge's mlp maps to the decoder layer, whose output is the
    # block output (0.07-0.12 away from fc2's output). The HF engine must not serve it.
    model = load_model(make_tiny_model(tmp_path / "opt", "opt"))
    with pytest.raises(TwinlensError, match="served by the bridge"):
        model.hf_module("blocks.0.mlp.hook_out")
    hooks = ["blocks.0.mlp.hook_out", "blocks.1.hook_out"]
    auto = capture(model, PROMPTS, hooks=hooks, out=tmp_path / "auto", progress=False)
    bridge = capture(model, PROMPTS, hooks=hooks, out=tmp_path / "bridge", engine="bridge", progress=False)
    for h in hooks:
        torch.testing.assert_close(auto.read(h), bridge.read(h), atol=1e-5, rtol=0)
    block = auto.read("blocks.0.mlp.hook_out") - capture(
        model, PROMPTS, hooks=["blocks.0.hook_out"], out=tmp_path / "blk", progress=False
    ).read("blocks.0.hook_out")
    assert block.abs().max() > 1e-2  # the mlp output is not the block output
    with pytest.raises(TwinlensError, match="engine='hf' cannot serve.*blocks.0.mlp.hook_out"):
        capture(model, PROMPTS, hooks=hooks, out=tmp_path / "hf", engine="hf", progress=False)


def test_per_head_shaped_hooks_are_not_served_by_flat_hf_projections(tmp_path):
    # HF's q_proj output is [batch, pos, heads*d_head]; the bridge's attn.q.hook_out is
    # [batch, pos, heads, d_head]: not the same quantity for the store.
    model = load_model(make_tiny_model(tmp_path / "llama", "llama"))
    refused = model.verify_hf_modules(["blocks.0.attn.q.hook_out", "blocks.0.mlp.hook_out"])
    assert list(refused) == ["blocks.0.attn.q.hook_out"]
    assert "shape" in refused["blocks.0.attn.q.hook_out"]
    assert model.hf_module_name("blocks.0.mlp.hook_out") == ("model.layers.0.mlp", "output")


def test_an_output_changed_in_place_after_its_hook_is_still_verified(tmp_path):
    # Falcon's HF block does `mlp_output += attention_output` after the MLP returns: a check that
    # kept a reference instead of a copy saw attention + MLP and refused the MLP's module.
    model = load_model(make_tiny_model(tmp_path / "falcon", "falcon"))
    assert model.verify_hf_modules(["blocks.0.mlp.hook_out", "blocks.0.attn.hook_out"]) == {}
    assert model.hf_module_name("blocks.0.mlp.hook_out") == ("transformer.h.0.mlp", "output")


def test_falcon_new_decoder_architecture_works_without_a_bridge(tmp_path):
    # TransformerLens 4.3 cannot split Falcon's grouped qkv (num_kv_heads=2): everything that
    # runs on the HF model must keep working, and bridge-only requests get a clear error.
    folder = make_tiny_model(tmp_path / "falcon_new", "falcon_new")
    model = load_model(folder)
    with pytest.raises(TwinlensError, match=r"FalconForCausalLM.*What still works"):
        model.hook_names()
    assert not model.bridge_available
    store = capture(model, PROMPTS, hooks="blocks.*.hook_out", out=tmp_path / "acts", progress=False)
    ids = model.encode(PROMPTS[0])
    with torch.no_grad():
        hs = model.hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(store.read("blocks.0.hook_out")[: len(ids)], hs[1][0], atol=1e-5, rtol=0)
    for hooks, engine in ((["blocks.0.attn.hook_out"], "auto"), (["blocks.0.hook_out"], "bridge")):
        with pytest.raises(TwinlensError, match="could not build its bridge"):
            capture(model, PROMPTS, hooks=hooks, out=tmp_path / f"x{engine}", engine=engine, progress=False)
    plain = generate(model, [ids], max_new_tokens=4)
    v = torch.ones(model.d_model) * 5
    with add_to_residual(model, layer=0, vector=v):
        steered = capture(model, PROMPTS, hooks="blocks.0.hook_out", out=tmp_path / "st", progress=False)
        generate(model, [ids], max_new_tokens=4)
    diff = steered.read("blocks.0.hook_out") - store.read("blocks.0.hook_out")
    torch.testing.assert_close(diff, v.expand_as(diff), atol=1e-5, rtol=0)
    assert generate(model, [ids], max_new_tokens=4) == plain  # removed on exit


def test_a_bridge_that_boots_but_cannot_run_is_refused_as_well(tmp_path):
    # CodeGen: TransformerLens 4.3 boots it, then fails on transformers 5.24's attention
    # (no `embed_positions`); the boot check's forward catches it.
    model = load_model(make_tiny_model(tmp_path / "codegen", "codegen"))
    with pytest.raises(TwinlensError, match=r"CodeGenForCausalLM.*embed_positions"):
        model.resolve_hooks(["blocks.0.attn.hook_out"])
    store = capture(model, PROMPTS, hooks="blocks.1.hook_out", out=tmp_path / "acts", progress=False)
    assert store.read("blocks.1.hook_out").shape == (store.n_rows, model.d_model)


def test_capture_script_refuses_missing_weights_unless_the_flag_is_given(tmp_path, monkeypatch, capsys):
    import importlib.util

    folder = make_tiny_model(tmp_path / "untied", "llama", tied=False)
    _rewrite(folder / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    monkeypatch.delenv("TWINLENS_ALLOW_MISSING_WEIGHTS", raising=False)  # restored after the test
    script = Path(__file__).resolve().parents[1] / "scripts" / "capture.py"
    spec = importlib.util.spec_from_file_location("_test_loading_capture", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--model", str(folder), "--n", "2", "--hooks", "blocks.0.hook_out"]
    assert module.main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "lm_head.weight" in err and "--allow-missing-weights" in err
    with pytest.warns(UserWarning, match=r"lm_head\.weight"):
        assert module.main([*argv, "--out", str(tmp_path / "b"), "--allow-missing-weights"]) == 0
    assert list((tmp_path / "b").rglob("manifest.json"))


def test_job_folder_records_the_hash_of_the_loaded_weights(tmp_path):
    # The job-folder contract hashes a model before loading it: the same files as weight_hash.
    from analyses.jobdir import _model_entry

    folder = make_tiny_model(tmp_path / "sharded", "llama", max_shard_size="20KB")
    save_file({"x": torch.zeros(4)}, folder / "optimizer_state.safetensors")
    assert _model_entry(str(folder))["weight_hash"] == load_model(folder).weight_hash


def test_hooks_transformerlens_computes_only_on_request_get_a_clear_error(tmp_path):
    # blocks.L.hook_mlp_in / attn.hook_result are gated in TransformerLens 4.3: a bare ValueError
    # from inside the forward before; now a TwinlensError naming the switch, before any write.
    model = load_model(make_tiny_model(tmp_path / "llama", "llama"))
    for hook, switch in (("blocks.0.hook_mlp_in", "use_hook_mlp_in"), ("blocks.0.attn.hook_result", "use_attn_result")):
        with pytest.raises(TwinlensError, match=f"set_{switch}\\(True\\)"):
            capture(model, PROMPTS, hooks=[hook], out=tmp_path / hook, progress=False)
        assert not (tmp_path / hook).exists()
    model.bridge.set_use_hook_mlp_in(True)
    store = capture(model, PROMPTS, hooks=["blocks.0.hook_mlp_in"], out=tmp_path / "on", progress=False)
    assert store.read("blocks.0.hook_mlp_in").shape == (store.n_rows, model.d_model)
