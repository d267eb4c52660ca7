"""The vLLM sampling engine against the HF loop (the reference), on the shipped organism.

vLLM runs in its own environment (`make vllm` builds .venv-vllm; `make test` does it first and sets
TWINLENS_REQUIRE_VLLM=1, so there these tests fail instead of skipping when vLLM is missing).
Engines are shared across the module (start-up ~15-20 s each on 2 CPU cores): one for the base,
one for rl-seed0. Organism v2 has head_dim 32, which vLLM's CPU attention takes: the engine serves
the checkpoint as it is (the zero-padded rewrite, for head_dims vLLM refuses, is tested on its own
below on a tiny model, without vLLM).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import organism
from analyses.sampling import Samples, check_engine, sample, score_completions
from analyses.task import organism_task
from hooks import TwinlensError, generate, load_model
from hooks.generation import default_batch_size, kv_bytes_per_token
from hooks.vllm_engine import cpu_head_dim_target, pad_head_dim, served_checkpoint, vllm_available

needs_vllm = pytest.mark.skipif(
    not vllm_available() and not os.environ.get("TWINLENS_REQUIRE_VLLM"),
    reason="vLLM not installed (make vllm); make test sets TWINLENS_REQUIRE_VLLM=1 and runs these",
)


@pytest.fixture(scope="module")
def organism_pair():
    return {"base": load_model(organism.checkpoint_path("base")),
            "rl": load_model(organism.checkpoint_path("rl-seed0"))}


@pytest.fixture(scope="module")
def task():
    return organism_task()


@pytest.fixture(scope="module", autouse=True)
def _rewrite_cache(tmp_path_factory):
    """Padded rewrites go to a temp cache, not the user's home."""
    old = os.environ.get("TWINLENS_CACHE")
    os.environ["TWINLENS_CACHE"] = str(tmp_path_factory.mktemp("twinlens_cache"))
    yield
    if old is None:
        os.environ.pop("TWINLENS_CACHE")
    else:
        os.environ["TWINLENS_CACHE"] = old


# --- without vLLM ---------------------------------------------------------------------------

def test_padded_head_dim_rewrite_reproduces_hf_logits(tmp_path, tiny_models):
    """head_dim 8 (tiny Llama, 4 heads x 8, 2 KV heads) -> 32: same logits within fp32 rounding,
    on text the check inside pad_head_dim did not use."""
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_models["llama"])
    assert cpu_head_dim_target(8) == 32 and cpu_head_dim_target(24) == 32
    assert cpu_head_dim_target(64) is None and cpu_head_dim_target(128) is None
    assert cpu_head_dim_target(48) == 64
    info = pad_head_dim(model, tmp_path / "padded", 32)
    assert info["from_head_dim"] == 8 and info["to_head_dim"] == 32
    padded = AutoModelForCausalLM.from_pretrained(tmp_path / "padded", dtype=torch.float32)
    assert padded.config.head_dim == 32
    ids = torch.tensor([model.encode("3+5+8+2+1:3+5=08;8+8=16;wait")])
    diff = (padded(input_ids=ids).logits - model.hf(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-5  # logits of a random tiny model are ~0.1-1: rounding of the q scale only
    assert info["max_abs_logit_diff"] < 1e-5


def test_padded_rewrite_refuses_an_unsupported_architecture(tmp_path, tiny_models):
    with pytest.raises(TwinlensError, match="engine='hf'"):
        pad_head_dim(load_model(tiny_models["gpt2"]), tmp_path / "x", 32)


def test_unknown_engine_and_missing_vllm_are_refused_before_any_work(monkeypatch, tmp_path):
    with pytest.raises(TwinlensError, match="choose one of hf, vllm"):
        check_engine("vlm")
    monkeypatch.setenv("TWINLENS_VLLM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(TwinlensError, match="make vllm"):
        check_engine("vllm")
    with pytest.raises(TwinlensError, match="make vllm"):
        sample({}, ["1+2:"], 1, engine="vllm")  # refused before the (empty) family is even read


def test_the_organism_is_served_as_it_is_with_no_head_dim_rewrite(organism_pair):
    """Organism v2's head_dim 32 is one vLLM's CPU attention takes: no padded copy is made."""
    for model in organism_pair.values():
        assert model.hf.config.head_dim == 32 and cpu_head_dim_target(32) is None
        folder, rewrite = served_checkpoint(model, cpu=True)
        assert folder == model.path and rewrite is None


def test_default_batch_size_follows_kv_cache_memory(organism_pair):
    base = organism_pair["base"]
    # 2 (K, V) x 4 layers x 4 KV heads x head_dim 32 x 4 bytes (fp32)
    assert kv_bytes_per_token(base) == 2 * 4 * 4 * 32 * 4 == 4096
    assert default_batch_size(base, 110) == (160 << 20) // (4096 * 110) == 372
    assert default_batch_size(base, 220) == 186  # twice the length, half the rows
    assert default_batch_size(base, 110, budget_bytes=4096 * 110 * 7) == 7
    assert default_batch_size(base, 110, budget_bytes=1) == 1
    assert default_batch_size(base, 1, budget_bytes=1 << 40) == 4096  # MAX_AUTO_BATCH
    with pytest.raises(TwinlensError):
        default_batch_size(base, 0)


def test_default_batch_gives_the_same_rows_as_a_fixed_batch(organism_pair, task):
    """The batch only groups rows: per-row seeds make the samples independent of it."""
    base = organism_pair["base"]
    prompts = [base.encode(p.prompt) for p in task.problems(12, seed=3)]
    auto = generate(base, prompts, 30, temperature=1.0, n=2, seed=5)
    fixed = generate(base, prompts, 30, temperature=1.0, n=2, seed=5, batch_size=5)
    assert auto == fixed


# --- with vLLM ------------------------------------------------------------------------------

@needs_vllm
def test_vllm_greedy_completions_equal_the_hf_loop(organism_pair, task):
    """Both models, 64 problems, greedy, the task's budget: identical token ids (v1: 256/256)."""
    from hooks.vllm_engine import generate_vllm

    problems = task.problems(64, seed=0)
    for model in organism_pair.values():
        prompts = [model.encode(p.prompt) for p in problems]
        ours = [c for c, _ in generate_vllm(model, prompts, task.max_new_tokens)]
        ref = generate(model, prompts, task.max_new_tokens)
        assert sum(a == b for a, b in zip(ours, ref, strict=True)) == len(ref)


@needs_vllm
def test_vllm_logprobs_within_1e4_of_the_hf_scorer(organism_pair, task, tmp_path):
    """vLLM samples scored by vLLM prompt_logprobs under both models vs the HF teacher-forced
    scorer on the same tokens: max |difference| < 1e-4 (measured 1.4e-6 on v1's padded rewrite;
    v2 is served as it is)."""
    s = sample(organism_pair, task.problems(16, seed=1), 4, task=task, engine="vllm", scorer="vllm",
               out=tmp_path / "s.jsonl", progress=False)
    assert s.meta["engine"] == "vllm" and s.meta["scored_by"] == "vllm"
    saved = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert saved["vllm"]["base"]["rewrite"] is None  # head_dim 32: the checkpoint as it is
    worst, n_tokens = 0.0, 0
    for label, model in organism_pair.items():
        ref = score_completions(model, [r.prompt_ids for r in s.rows], [r.completion_ids for r in s.rows])
        for r, lp in zip(s.rows, ref, strict=True):
            assert len(r.logprobs[label]) == len(lp) == len(r.completion_ids)
            n_tokens += len(lp)
            worst = max([worst] + [abs(a - b) for a, b in zip(r.logprobs[label], lp, strict=True)])
    assert n_tokens > 1000 and worst < 1e-4


@needs_vllm
def test_seeded_vllm_run_reproduces_itself_and_resume_equals_uninterrupted(organism_pair, task, tmp_path):
    problems = task.problems(24, seed=2)
    kw = dict(task=task, temperature=0.8, top_p=0.95, seed=7, engine="vllm", scorer="hf", progress=False)
    whole = sample(organism_pair, problems, 4, out=tmp_path / "a.jsonl", **kw)
    again = sample(organism_pair, problems, 4, **kw)
    assert [r.completion_ids for r in whole.rows] == [r.completion_ids for r in again.rows]
    other_seed = sample(organism_pair["base"], problems, 4, **{**kw, "seed": 8})
    base_rows = [r.completion_ids for r in whole.rows if r.model == "base"]
    assert sum(a != b.completion_ids for a, b in zip(base_rows, other_seed.rows, strict=True)) > 40
    # An interrupt: 50 of the base's 96 rows (problem 12 half done) and half a line are on disk.
    lines = (tmp_path / "a.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path / "b.jsonl"
    path.write_text("".join(lines[:50]) + lines[50][:40])
    (tmp_path / "b.jsonl.meta.json").write_text((tmp_path / "a.jsonl.meta.json").read_text())
    resumed = sample(organism_pair, problems, 4, out=path, batch_size=32, **kw)
    assert [json.loads(x) for x in path.read_text().splitlines()][:50] == [json.loads(x) for x in lines[:50]]
    assert [(r.key, r.completion_ids) for r in resumed.rows] == [(r.key, r.completion_ids) for r in whole.rows]
    # Log-probs: the HF scorer's batches differ after a resume (float rounding only).
    assert max(abs(a - b) for r, w in zip(resumed.rows, whole.rows, strict=True) for m in r.logprobs
               for a, b in zip(r.logprobs[m], w.logprobs[m], strict=True)) < 1e-5
    assert len(Samples.load(path).rows) == len(whole.rows)  # nothing redrawn twice
    with pytest.raises(TwinlensError, match="engine"):  # an HF run may not extend a vLLM file
        sample(organism_pair, problems, 4, out=path, **{**kw, "engine": "hf"})


def _sign_flip_max_t_p(d: np.ndarray, n_flips: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of "every column of d [problems, stats] has mean 0" by random sign flips
    of whole rows (one sign per problem, shared by its stats) and the max over columns of
    |mean| / (its sign-flip standard error, sqrt(sum d^2) / problems): Westfall-Young's max-T, so
    one p-value covers correlated stats with no Bonferroni loss. Exact (up to the n_flips Monte
    Carlo) when each row is symmetric about 0, as the difference of two independent draws of the
    same distribution on one problem is. Columns that are 0 on every problem carry no evidence."""
    scale = np.sqrt((d**2).sum(0)) / len(d)
    d, scale = d[:, scale > 0], scale[scale > 0]
    if d.shape[1] == 0:
        return 1.0
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_flips, len(d)))
    observed = np.max(np.abs(d.mean(0)) / scale)
    null = np.max(np.abs(signs @ d / len(d)) / scale, axis=1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_flips))


@needs_vllm
def test_vllm_and_hf_samples_agree_as_distributions(organism_pair, task):
    """Base model, 96 problems x 8 samples at temperature 0.6 / top-p 0.95 from each engine, on
    independent seeds (11 and 12): accuracy, the share of each format and the mean length agree
    per problem: a sign-flip max-T test over the five stats (``_sign_flip_max_t_p``) does not
    reject at 0.01, a false alarm at most 1% for the five together (five 99% CIs, as before,
    allowed up to ~5%). Measured on organism v2 at 128 x 8: accuracy vLLM 0.425, HF 0.396
    (difference 1.3 standard errors); both engines' first-token step share at 512 x 8 lies within
    1.3 sd of the exact tempered, top-p distribution."""
    problems = task.problems(96, seed=4)
    kw = dict(task=task, temperature=0.6, top_p=0.95, sample_from=["base"], scorer="hf", progress=False)
    pair = {"base": organism_pair["base"]}
    ours = sample(pair, problems, 8, engine="vllm", seed=11, **kw).rows
    ref = sample(pair, problems, 8, engine="hf", seed=12, **kw).rows
    groups = np.array([r.problem_id for r in ours])
    assert [r.problem_id for r in ref] == list(groups)
    stats = {
        "accuracy": lambda r: float(r.correct),
        "length": lambda r: float(len(r.completion_ids)),
        **{f"format={f}": (lambda r, f=f: float(r.format == f)) for f in ("direct", "step", "verify")},
    }
    ids = list(dict.fromkeys(groups))
    d = np.array([[np.mean([f(a) - f(b) for a, b in zip(ours, ref, strict=True) if a.problem_id == g])
                   for f in stats.values()] for g in ids])
    p = _sign_flip_max_t_p(d)
    assert p > 0.01, dict(zip(stats, d.mean(0).round(3), strict=True)) | {"p": p}
    acc = np.mean([r.correct for r in ours])
    # a real sampled accuracy, not a degenerate one: organism v2's base is built to pass@1 in
    # [0.05, 0.6] on tier 4 (issue 14), and 768 samples put 0.02 many standard errors below that
    assert 0.02 < acc < 0.9 and not math.isnan(acc)


def test_vllm_is_refused_while_an_intervention_is_hooked(organism_pair, task, monkeypatch):
    """vLLM runs the checkpoint as saved: a steering hook on model.hf would be silently ignored."""
    import sys

    from hooks import add_to_residual

    base = organism_pair["base"]
    monkeypatch.setenv("TWINLENS_VLLM_PYTHON", sys.executable)  # "installed": the refusal comes first
    with add_to_residual(base, layer=1, vector=torch.ones(base.d_model), alpha=1.0):
        with pytest.raises(TwinlensError, match="engine='hf'"):
            generate(base, [base.encode("1+2+3+4+5:")], 5, engine="vllm")
        with pytest.raises(TwinlensError, match="intervention"):
            sample({"base": base}, task.problems(2), 1, task=task, engine="vllm")


def _load_script(name: str, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / name
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_demo_passes_the_engine_to_every_sampling_job_and_only_to_them(tmp_path, monkeypatch):
    import argparse
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    demo = _load_script("demo.py", monkeypatch)
    class DemoArgs(argparse.Namespace):  # the demo's other options left at None, whatever they are
        def __getattr__(self, name):
            return None

    args = DemoArgs(engine="vllm")
    with_engine = {j.name for j in demo.JOBS if "--engine" in demo.job_command(j, args, tmp_path)}
    assert with_engine == {"passk", "drift", "calibrate", "formats", "scaling", "mechanism", "route", "evaluate"}
    for job in demo.JOBS:  # each of them really parses --engine
        if job.name in with_engine - {"evaluate"}:  # evaluate parses inside main()
            script = _load_script(job.script, monkeypatch)
            scorer = [] if job.name == "route" else ["--scorer", "hf"]
            parsed = script.parse_args(["--engine", "vllm", *scorer, "--out", str(tmp_path)])
            assert parsed.engine == "vllm", job.name
    # Without vLLM the demo stops before any job runs, naming the install command.
    env = {**__import__("os").environ, "TWINLENS_VLLM_PYTHON": str(tmp_path / "none")}
    res = subprocess.run([sys.executable, str(root / "scripts" / "demo.py"), "--engine", "vllm",
                          "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "make vllm" in res.stderr
    assert not (tmp_path / "demo" / "evaluate").exists()


def test_a_sampling_script_refuses_a_missing_vllm_before_loading_models(tmp_path, monkeypatch, capsys):
    passk = _load_script("passk.py", monkeypatch)
    monkeypatch.setenv("TWINLENS_VLLM_PYTHON", str(tmp_path / "none"))
    # A base model that does not exist: loading it would fail with another message.
    rc = passk.main(["--engine", "vllm", "--base", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "make vllm" in capsys.readouterr().err


def test_sign_flip_max_t_keeps_its_level_and_sees_a_shift():
    """Binomial(8, p) per problem, 32 problems (the passk test's shape; p = 0.3-0.5 as organism
    v2's base), pass@1..8 per problem: under H0 the test rejects at 0.005 at most ~0.5% of the
    time (400 draws: 0 or 1 expected, <= 4 allowed: P(Binomial(400, 0.005) > 4) = 0.05); a shift
    of p by +0.3 is caught every time (measured power at +0.2: 0.93)."""
    from analyses.passk import pass_at_k

    rng = np.random.default_rng(1)
    p = rng.uniform(0.3, 0.5, 32)

    def diffs(pa, pb):
        ca, cb = rng.binomial(8, pa), rng.binomial(8, pb)
        return np.stack([pass_at_k(8, ca, k) - pass_at_k(8, cb, k) for k in (1, 2, 4, 8)], 1)

    alarms = sum(_sign_flip_max_t_p(diffs(p, p), n_flips=2000, seed=i) <= 0.005 for i in range(400))
    assert alarms <= 4
    assert all(_sign_flip_max_t_p(diffs(p, p + 0.3), n_flips=2000, seed=i) <= 0.005 for i in range(20))
    assert _sign_flip_max_t_p(np.zeros((32, 4))) == 1.0


@needs_vllm
def test_passk_job_with_vllm_records_the_engine_and_agrees_with_hf(tmp_path, monkeypatch):
    """scripts/passk.py --engine vllm (in-process: the module's shared engines) against --engine hf,
    32 problems x 8 samples: results.json records engine, scorer and the head_dim rewrite, and
    the per-problem pass@k (k = 1, 2, 4, 8) of the two engines agree for both models.

    Agreement is a paired test, not CI overlap: the engines draw with different seeds (independent
    samples, so under "same distribution" each problem's difference is symmetric about 0) and a
    sign-flip max-T test over k (``_sign_flip_max_t_p``) must not reject at 0.005 per model: a
    false alarm at most 1% for the two models together. The overlap of two 95% CIs it replaces
    failed by chance on organism v2 (base pass@4 HF [0.669, 0.884] vs vLLM [0.900, 0.954]: three
    HF problems with 0 of 8 right where 0.55 are expected; that draw's max-T p = 0.018); simulated
    on v2's base (per-problem P(step) 0.30-0.50), it raised a false alarm in 2.2% of draws per model.
    Measured on v2: base pass@1..8 HF 0.355-0.906, vLLM 0.426-0.938, p = 0.26; rl-seed0 solves every
    tier-4 problem in both (pass@k 1, p = 1: a worse rl sample from either engine would show)."""
    from analyses.passk import pass_at_k

    passk = _load_script("passk.py", monkeypatch)
    common = ["--n-problems", "32", "--n-samples", "8", "--n-boot", "300", "--json"]
    res, samples = {}, {}
    for engine, seed in (("hf", "0"), ("vllm", "1")):
        out = tmp_path / engine
        assert passk.main([*common, "--engine", engine, "--seed", seed, "--out", str(out)]) == 0
        res[engine] = json.loads((out / "results.json").read_text())
        samples[engine] = Samples.load(out / "samples.jsonl")
    assert res["hf"]["sampling"] == {"engine": "hf", "scored_by": "hf"}
    rec = res["vllm"]["sampling"]
    assert (rec["engine"], rec["scored_by"]) == ("vllm", "vllm")
    assert rec["vllm"]["base"]["rewrite"] is None  # organism v2: head_dim 32, served as it is
    for model in ("base", "rl-seed0"):
        ks = res["hf"]["pass_at_k"][model]["k"]
        assert ks == res["vllm"]["pass_at_k"][model]["k"] == [1, 2, 4, 8]
        counts = {}
        for engine, s in samples.items():
            by = s.by_problem(model, "correct")
            counts[engine] = np.array([sum(by[pid]) for pid in sorted(by)])
            assert len(counts[engine]) == 32 and all(len(v) == 8 for v in by.values())
        d = np.stack([pass_at_k(8, counts["hf"], k) - pass_at_k(8, counts["vllm"], k) for k in ks], 1)
        p = _sign_flip_max_t_p(d)
        assert p > 0.005, (model, p, d.mean(0))
