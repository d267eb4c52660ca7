"""Bad numeric and typed arguments fail at the public boundary with a TwinlensError (library) or
an argparse error (scripts, exit code 2) that says what is allowed, before any model loads
(issue 17, kind A). Before these checks each case below was a raw traceback from torch/numpy or
a silently wrong result (a reversed layer range selected nothing, a negative temperature
sampled greedily while results.json recorded it, a NaN steering vector generated empty text)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hooks import TwinlensError, add_to_residual, generate, load_model, resolve_hook_names
from hooks.interventions import ablate_direction
from hooks.validation import (
    bootstrap_indices,
    check_device,
    check_dtype,
    check_finite_vector,
    check_int,
    check_positive_int,
    check_probability,
    check_temperature,
    check_top_p,
)
from organism.task import MAX_OPERANDS, MIN_OPERANDS

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- the checks themselves
@pytest.mark.parametrize("value", [0, -1, 2.5, 3.0, True, "4", None, float("nan")])
def test_positive_int_refuses_non_counts(value):
    with pytest.raises(TwinlensError, match="batch_size must be an integer >= 1"):
        check_positive_int("batch_size", value)


def test_positive_int_accepts_numpy_and_torch_integers():
    assert check_positive_int("n", np.int64(3)) == 3 and check_positive_int("n", torch.tensor(2)) == 2
    assert type(check_positive_int("n", np.int64(3))) is int


@pytest.mark.parametrize("value", [-1.0, -1e-9, float("nan"), float("inf"), "0.5", None])
def test_temperature_refuses_negative_and_non_finite(value):
    with pytest.raises(TwinlensError, match=r"temperature must be a number >= 0 \(0 = greedy decoding\)"):
        check_temperature(value)


def test_temperature_zero_means_greedy_and_is_allowed():
    assert check_temperature(0) == 0.0 and check_temperature(np.float32(0.7)) == pytest.approx(0.7)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.0001, float("nan")])
def test_top_p_is_in_the_half_open_unit_interval(value):
    with pytest.raises(TwinlensError, match=r"top_p must be a number in \(0, 1\]"):
        check_top_p(value)
    assert check_top_p(1) == 1.0


def test_probability_bounds_open_and_closed():
    assert check_probability("p", 0) == 0.0 and check_probability("p", 1) == 1.0
    with pytest.raises(TwinlensError, match=r"in \(0, 1\)"):
        check_probability("test_fraction", 1.0, allow_zero=False, allow_one=False)


def test_int_range_message_names_both_bounds():
    with pytest.raises(TwinlensError, match=r"difficulty must be an integer in 2..8, got 9"):
        check_int("difficulty", 9, minimum=2, maximum=8)


@pytest.mark.parametrize("vector, match", [
    (torch.tensor([1.0, float("nan"), 0.0]), r"1 non-finite entries \(NaN/inf\) of 3, e.g. at index 1"),
    (torch.tensor([float("inf"), 1.0, float("-inf")]), r"2 non-finite entries .* at index 0"),
    (torch.zeros(3, 1), r"shape \(3, 1\), expected shape \(3,\)"),
    (torch.ones(4), r"shape \(4,\), expected shape \(3,\)"),
])
def test_finite_vector_names_what_is_wrong(vector, match):
    with pytest.raises(TwinlensError, match=match):
        check_finite_vector("vector", vector, size=3)


def test_a_zero_direction_is_refused_where_one_is_normalised():
    with pytest.raises(TwinlensError, match="all zeros"):
        check_finite_vector("direction", torch.zeros(3), nonzero=True)


@pytest.mark.parametrize("dtype, match", [
    ("float99", r"'float99' is not a torch dtype; use one of float32, float16, bfloat16, float64"),
    ("int64", "need a floating dtype"),
    (torch.int8, "need a floating dtype"),
    ("nn", "is not a torch dtype"),
])
def test_dtype_names_the_allowed_ones(dtype, match):
    with pytest.raises(TwinlensError, match=match):
        check_dtype(dtype)


def test_dtype_aliases_resolve():
    assert check_dtype("bf16") is torch.bfloat16 and check_dtype("torch.float16") is torch.float16
    assert check_dtype(torch.float32) is torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable GPU")
def test_cuda_device_on_a_cpu_only_torch_is_refused_with_the_fix():
    with pytest.raises(TwinlensError, match=r"CUDA is not available .*use 'cpu'"):
        check_device("cuda")
    with pytest.raises(TwinlensError, match="CUDA is not available"):
        check_device("cuda:1")


def test_unknown_device_name_is_refused():
    with pytest.raises(TwinlensError, match="is not a device name"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")


def test_bootstrap_with_zero_resamples_or_no_items_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(TwinlensError, match="n_boot must be an integer >= 1, got 0"):
        bootstrap_indices(rng, 5, 0)
    with pytest.raises(TwinlensError, match="at least one item"):
        bootstrap_indices(rng, 0, 10)
    # the same draw the sites made before (results unchanged by the refactor)
    assert np.array_equal(bootstrap_indices(np.random.default_rng(3), 7, 4),
                          np.random.default_rng(3).integers(0, 7, size=(4, 7)))


def test_passk_with_zero_bootstrap_resamples_is_a_clear_error():
    from analyses.passk import pass_at_k_curve

    with pytest.raises(TwinlensError, match="n_boot must be an integer >= 1, got 0"):
        pass_at_k_curve([4, 4], [1, 2], n_boot=0)


def test_calibration_with_zero_bins_or_resamples_is_a_clear_error():
    from analyses.calibration import calibration_report

    with pytest.raises(TwinlensError, match="n_boot must be"):
        calibration_report([0.2, 0.9], [0, 1], n_boot=0)
    with pytest.raises(TwinlensError, match="n_bins must be"):
        calibration_report([0.2, 0.9], [0, 1], n_bins=0)


def test_organism_difficulty_outside_the_tasks_tiers_is_refused():
    from analyses.task import organism_task

    with pytest.raises(TwinlensError, match=rf"difficulty must be an integer in {TIERS} \(operands per problem"):
        organism_task(difficulty=MAX_OPERANDS + 1)
    with pytest.raises(TwinlensError, match=r"difficulty must be an integer in 3..5 \(digits asked for"):
        organism_task(difficulty=2, variant="open")
    with pytest.raises(TwinlensError, match=r"n \(problems\) must be an integer >= 1"):
        organism_task().problems(0)


# ----------------------------------------------------------------- the library cases
def test_reversed_layer_range_is_refused_with_the_fixed_spelling():
    available = [f"blocks.{i}.hook_out" for i in range(4)]
    with pytest.raises(TwinlensError, match=r"reversed .* write the lower block first: 'blocks.1-3.hook_out'"):
        resolve_hook_names(available, ["blocks.3-1.hook_out"], n_layers=4)
    assert resolve_hook_names(available, ["blocks.1-3.hook_out"], n_layers=4) == available[1:]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return load_model(tiny_models["llama"])


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"n": 0}, r"n \(samples per prompt\) must be an integer >= 1, got 0"),
    ({"temperature": -1.0}, "temperature must be a number >= 0"),
    ({"temperature": math.nan}, "temperature must be a number >= 0.*not a finite number"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_generate_refuses_bad_sampling_arguments(llama, kwargs, match):
    with pytest.raises(TwinlensError, match=match):
        generate(llama, [[1, 2, 3]], 4, **kwargs)


def test_generate_refuses_token_ids_the_embedding_has_no_row_for(llama):
    rows = llama.hf.get_input_embeddings().num_embeddings
    with pytest.raises(TwinlensError, match=rf"out of the vocabulary \(ids 0-{rows - 1}\): \(prompt, id\) \[\(0, 999\)\]"):
        generate(llama, [[999]], 2)
    with pytest.raises(TwinlensError, match=r"\(1, -1\)"):
        generate(llama, [[1], [-1]], 2)
    with pytest.raises(TwinlensError, match="is text; pass token ids"):
        generate(llama, ["1+2:"], 2)
    with pytest.raises(TwinlensError, match="row_ids has 1 entries for 2 prompts"):
        generate(llama, [[1], [2]], 2, row_ids=["a"])


@pytest.mark.parametrize("vector_fill, alpha, match", [
    (math.nan, 1.0, "non-finite entries"),
    (math.inf, 1.0, "non-finite entries"),
    (1.0, math.inf, "alpha must be a finite number"),
    (1.0, math.nan, "alpha must be a finite number"),
])
def test_add_to_residual_refuses_non_finite_vectors_and_alphas(llama, vector_fill, alpha, match):
    v = torch.zeros(llama.d_model)
    v[3] = vector_fill
    with pytest.raises(TwinlensError, match=match):
        with add_to_residual(llama, 0, v, alpha=alpha):
            pass
    assert all(len(m._forward_hooks) == 0 for m in llama.hf.modules())  # nothing left behind


def test_ablate_refuses_nan_and_zero_directions(llama):
    v = torch.ones(llama.d_model)
    v[0] = math.nan
    with pytest.raises(TwinlensError, match="direction holds 1 non-finite"):
        with ablate_direction(llama, 0, v):
            pass
    with pytest.raises(TwinlensError, match="direction is all zeros"):
        with ablate_direction(llama, 0, torch.zeros(llama.d_model)):
            pass
    with pytest.raises(TwinlensError, match="Layer 9 does not exist"):
        with ablate_direction(llama, 9, torch.ones(llama.d_model)):
            pass


def test_load_model_refuses_an_unknown_dtype_before_reading_the_folder(tmp_path):
    # tmp_path holds no model: the dtype error must come first (checked before anything is read)
    with pytest.raises(TwinlensError, match="'float99' is not a torch dtype"):
        load_model(tmp_path, dtype="float99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable GPU")
def test_load_model_on_cuda_without_a_gpu_is_refused(tmp_path):
    with pytest.raises(TwinlensError, match="CUDA is not available"):
        load_model(tmp_path, device="cuda")


def test_capture_refuses_reversed_ranges_and_bad_sizes(llama, tmp_path):
    from hooks import capture

    with pytest.raises(TwinlensError, match="reversed"):
        capture(llama, ["1+2:"], hooks=["blocks.1-0.hook_out"], out=tmp_path / "a", progress=False)
    with pytest.raises(TwinlensError, match="shard_bytes must be an integer >= 1"):
        capture(llama, ["1+2:"], out=tmp_path / "b", shard_bytes=0, progress=False)
    with pytest.raises(TwinlensError, match="batch_size must be an integer >= 1, got 0"):
        capture(llama, ["1+2:"], out=tmp_path / "c", batch_size=0, progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ----------------------------------------------------------------- every script option
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_validation_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The organism's structured tiers, as its task module states them.
TIERS = f"{MIN_OPERANDS}..{MAX_OPERANDS}"
# (script, option, bad value, words the error must hold). Every numeric/typed option of every
# script is here at least once.
_BAD = "must be"
SCRIPT_CASES = [
    ("passk", "--temperature", "-1", "a number >= 0"), ("passk", "--temperature", "nan", "not a finite"),
    ("passk", "--top-p", "0", "(0, 1]"), ("passk", "--top-p", "1.5", "(0, 1]"),
    ("passk", "--n-boot", "0", ">= 1"), ("passk", "--k", "0", ">= 1"), ("passk", "--seed", "-1", ">= 0"),
    ("passk", "--n-samples", "0", ">= 1"), ("passk", "--n-samples", "2.5", "not an integer"),
    ("passk", "--n-problems", "-3", ">= 1"), ("passk", "--problem-set", "-1", ">= 0"),
    ("passk", "--difficulty", "1", TIERS), ("passk", "--difficulty", str(MAX_OPERANDS + 1), TIERS),
    ("passk", "--variant", "mul", "invalid choice"), ("mechanism", "--variant", "open", "invalid choice"),
    ("calibrate", "--confidence", "verbal", "invalid choice"),
    ("passk", "--max-new-tokens", "0", ">= 1"), ("passk", "--batch-size", "0", ">= 1"),
    ("passk", "--threads", "-1", ">= 0"), ("passk", "--device", "gpu0", "not a device name"),
    ("calibrate", "--n-bins", "0", ">= 1"), ("calibrate", "--n-boot", "0", ">= 1"),
    ("capture", "--n", "0", ">= 1"), ("capture", "--batch-size", "-2", ">= 1"),
    ("capture", "--device", "gpu0", "not a device name"),
    ("diff", "--tolerance", "-1e-5", ">= 0"), ("diff", "--tolerance", "nan", "not a finite"),
    ("diff", "--spectral-k", "0", ">= 1"),
    ("drift", "--n-boot", "0", ">= 1"), ("drift", "--temperature", "inf", "not a finite"),
    ("evaluate", "--n", "0", ">= 1"), ("evaluate", "--samples", "0", ">= 1"),
    ("evaluate", "--eval-set", "-1", ">= 0"), ("evaluate", "--difficulty", "0", TIERS),
    ("evaluate", "--max-new-tokens", "0", ">= 1"), ("evaluate", "--seed", "x", "not an integer"),
    ("formats", "--threshold", "1.5", "[0, 1]"), ("formats", "--k", "0", ">= 1"),
    ("formats", "--k", "99", "exceed --n-samples 8"), ("passk", "--k", "17", "exceed --n-samples 16"),
    ("formats", "--ngram", "0", ">= 1"), ("formats", "--step", "-1", ">= 0"),
    ("mechanism", "--phase-problems", "0", ">= 1"), ("mechanism", "--phase-samples", "0", ">= 1"),
    ("mechanism", "--budget", "0", ">= 1"), ("mechanism", "--seeds", "-1", ">= 0"),
    ("mechanism", "--ft-lr", "0", "> 0"), ("mechanism", "--ft-batch-size", "0", ">= 1"),
    ("mechanism", "--n-eval", "0", ">= 1"), ("mechanism", "--ngram", "0", ">= 1"),
    ("mi_peaks", "--sigma", "0", "> 0"), ("mi_peaks", "--sigma-grid", "-1", "> 0"),
    ("mi_peaks", "--top-k", "0", ">= 1"), ("mi_peaks", "--n-boot", "0", ">= 1"),
    ("mi_peaks", "--layer", "-1", ">= 0"), ("mi_peaks", "--n-problems", "0", ">= 1"),
    ("mi_peaks", "--eval-set", "-2", ">= 0"), ("mi_peaks", "--difficulty", "1", TIERS),
    ("mi_peaks", "--device", "gpu0", "not a device name"), ("probe", "--difficulty", "0", TIERS),
    ("steer", "--difficulty", "99", TIERS),
    ("probe", "--test-fraction", "1", "(0, 1)"), ("probe", "--test-fraction", "0", "(0, 1)"),
    ("probe", "--C", "0", "> 0"), ("probe", "--n-controls", "0", ">= 1"),
    ("probe", "--n-bootstrap", "0", ">= 1"), ("probe", "--steer-problems", "0", ">= 1"),
    ("probe", "--steer-samples", "0", ">= 1"), ("probe", "--alphas", "1,2", "has no 0"),
    ("probe", "--alphas", "0,nan", "not a finite"), ("probe", "--alphas", "0,,1", "comma list"),
    ("probe", "--temperature", "-0.5", ">= 0"),
    ("route", "--entropy-thresholds", "-1", ">= 0"), ("route", "--probe-thresholds", "inf", "not a finite"),
    ("route", "--alpha", "nan", "not a finite"), ("route", "--temperature", "-1", ">= 0"),
    ("route", "--fit-set", "-1", ">= 0"), ("route", "--layer", "-1", ">= 0"),
    ("route", "--n-boot", "0", ">= 1"), ("route", "--difficulty", "20", TIERS),
    ("scaling", "--bootstrap", "-1", ">= 0"), ("scaling", "--extrapolate", "0", "> 0"),
    ("scaling", "--r0", "nan", "not a finite"), ("scaling", "--exclude-below", "inf", "not a finite"),
    ("steer", "--fractions", "0,0.1", "in (0, 10]"), ("steer", "--fractions", "a", "must be numbers"),
    ("steer", "--where", "prompt", "among all, decision_points"), ("steer", "--n-random", "0", ">= 1"),
    ("steer", "--vector-kinds", "pca", "among decision_point_contrast"),
    ("steer", "--alphas", "1,2", "has no 0"), ("steer", "--alphas", "0,1,1", "repeats"),
    ("steer", "--factor", "0", "> 0"),
    ("steer", "--layers", "3-1", "comma list of block indices"), ("steer", "--layers", "-1", "block indices >= 0"),
    ("steer", "--random-seed", "-1", ">= 0"),
    ("steer", "--n-bootstrap", "0", ">= 1"), ("steer", "--vector-problems", "0", ">= 1"),
    ("train_organism", "--rl-lr", "0", "> 0"), ("train_organism", "--kl-betas", "0.1,0", "> 0"),
    ("train_organism", "--sparse-lr", "0", "> 0"), ("train_organism", "--workers", "0", ">= 1"),
    ("train_organism", "--hard-difficulty", "9", TIERS), ("train_organism", "--hard-pool", "0", ">= 1"),
    ("train_organism", "--max-completion", "0", ">= 1"), ("train_organism", "--pretrain-steps", "-1", ">= 0"),
]


@pytest.mark.parametrize("script, option, value, words", SCRIPT_CASES,
                         ids=[f"{s}{o}={v}" for s, o, v, _ in SCRIPT_CASES])
def test_script_option_out_of_range_is_an_argparse_error_before_any_model_loads(
        script, option, value, words, monkeypatch, capsys, tmp_path):
    import transformers

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    module = _load_script(script)
    with pytest.raises(SystemExit) as exc:
        module.main(["--out", str(tmp_path / "out"), f"{option}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and words in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable GPU")
def test_passk_cli_exits_2_on_cuda_without_a_gpu_and_on_nan_temperature(tmp_path):
    for args in (["--device", "cuda"], ["--temperature", "nan"]):
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "passk.py"), "--out", str(tmp_path / "o"), *args],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and "error: argument" in res.stderr
    assert not (tmp_path / "o").exists()


def test_capture_script_refuses_a_reversed_hook_range(tmp_path, capsys):
    module = _load_script("capture")
    rc = module.main(["--out", str(tmp_path / "o"), "--n", "2", "--hooks", "blocks.3-1.hook_out"])
    assert rc == 2
    assert "reversed" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1.0}, "temperature must be a number >= 0"),
    ({"temperature": math.nan}, "not a finite number"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
])
def test_sample_refuses_bad_settings_before_writing_its_settings_file(llama, tmp_path, kwargs, match):
    from analyses.sampling import sample

    with pytest.raises(TwinlensError, match=match):
        sample({"m": llama}, ["1+2:"], 2, out=tmp_path / "s.jsonl", progress=False, **kwargs)
    assert not list(tmp_path.iterdir())  # no samples.jsonl.meta.json recording the bad value


def test_steering_curve_checks_every_alpha_before_generating(llama, monkeypatch):
    import hooks
    from probes.steering import steering_curve
    from probes.vectors import StrategyVector

    def no_generation(*a, **k):
        raise AssertionError("generated before the arguments were checked")

    monkeypatch.setattr(hooks, "generate", no_generation)
    vec = StrategyVector(strategy="compute", layer=0, method="diff_of_means", direction=torch.ones(llama.d_model))
    nan = torch.ones(llama.d_model)
    nan[1] = math.nan
    with pytest.raises(TwinlensError, match="vector's direction holds 1 non-finite"):
        StrategyVector(strategy="compute", layer=0, method="diff_of_means", direction=nan)
    with pytest.raises(TwinlensError, match=r"alphas\[2\] must be a finite number"):
        steering_curve(llama, vec, [[1, 2]], [0.0, 1.0, math.inf], label_fn=lambda t: [])
    with pytest.raises(TwinlensError, match="n_samples must be an integer >= 1"):
        steering_curve(llama, vec, [[1, 2]], [0.0], label_fn=lambda t: [], n_samples=0)
