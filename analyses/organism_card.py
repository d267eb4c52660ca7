"""The organism's model card: every number ``organism/checkpoints/README.md`` states, measured from
the checkpoints on held-out problems (issue 14, "Done means"), as one JSON-able dict, a markdown
table, and the claim rows (planted true / planted false) computed from it.

    card = measure_card({"base": path, "rl-seed0": path, ...}, CardSettings(), cache="runs/card/stages")
    card_markdown(card)                          # the tables (markdown)
    card_claims(card)                            # [{claim, checkpoints, measured, holds}, ...]
    fill_model_card(readme_text, card)           # README with its generated block replaced

What is measured (``measure_card``), on the eval partition (``organism.task.eval_problems``):

- **per tier** (operands 2..7), the base: greedy accuracy (95% Wilson CI over problems), sampled
  pass@k for k = 1, 2, 4, ..., ``passk_samples`` with the unbiased estimator
  (``analyses.passk.pass_at_k_curve``, percentile bootstrap over problems) against the uniform
  guesser's 1 - 0.99^k (``analyses.passk.guesser_pass_at_k``, answer space 100). Sampling follows
  RESEARCH.md s.4: temperature 0.6, top-p 0.95. The same curve for ``passk_twins`` at
  ``passk_twin_tier`` (default the hardest tier, where the base's pass@256 has room).
- **per twin** at ``twin_tier``: greedy and sampled (temperature 1, one sample per problem)
  accuracy, format shares, strategy frequencies, mean length (``organism.evaluation.decoding_stats``,
  Wilson CIs); bf16 weights unchanged vs the base (``organism.training.bf16_unchanged_fraction``);
  KL(base || twin) and KL(twin || base) per token on the base's temperature-1 samples; the twin's
  per-token entropy on its own temperature-1 samples and its change from the base's on the base's
  own (paired by problem), for the structured task and the open domain
  (``analyses.drift.measure_drift``: mean over a sample's tokens, then problems; bootstrap CI over
  problems); open-domain accuracy (temperature 1).
- **sparse seeds**: overlap of the two ``rl-sparse-seed*`` runs' changed sets (bf16 inequality vs
  the base), o1, o2 and Jaccard against the random-subset baselines (RESEARCH.md s.2,
  ``analyses.subnetworks.overlap_of``).
- **stated confidence** ('?' prompts, the pretraining tiers round robin, temperature 1): the share of
  completions that state one (``organism.task.extract_confidence``), and over those ECE (10
  equal-width bins), Brier and AUROC with bootstrap CIs (``analyses.calibration``), for base,
  rl-binary, rl-brier.
- Generation budgets: ``analyses.task.organism_max_new_tokens`` (the tier's longest trace + room
  for a backtrack, within the 160-token context).

Engines: the base's pass@k sampling (hundreds of thousands of completions) goes through vLLM
(``hooks.vllm_engine``) when it is available; any call with fewer than ``VLLM_MIN_ROWS`` rows, and
everything when vLLM is missing or fails, through the kit's HF loop (``hooks.generate``). Which engine
made which numbers, and why a fallback happened, is recorded under ``engine``.

Sampled numbers are seeded: the same settings and checkpoints give the same card (vLLM and the HF
loop draw from different random streams, so their sampled numbers agree in distribution only).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analyses.calibration import calibration_report
from analyses.drift import measure_drift
from analyses.passk import default_ks, guesser_pass_at_k, pass_at_k_curve
from analyses.sampling import SampleRow
from analyses.subnetworks import overlap_of
from analyses.task import organism_max_new_tokens
from hooks.errors import TwinlensError
from organism.evaluation import Rate, decoding_stats
from organism.task import (
    ANSWER_SPACE,
    FORMATS,
    MAX_OPERANDS,
    MIN_OPERANDS,
    OPEN_LENGTHS,
    PRETRAIN_TIERS,
    STRATEGIES,
    Problem,
    answer_span,
    eval_problems,
    extract_confidence,
    grade,
    label_strategies,
)
from organism.training import bf16_unchanged_fraction

CARD_TIERS: tuple[int, ...] = tuple(range(MIN_OPERANDS, MAX_OPERANDS + 1))
PASSK_TEMPERATURE, PASSK_TOP_P = 0.6, 0.95  # RESEARCH.md s.4 protocol
SAMPLE_TEMPERATURE = 1.0  # "sampled" per-twin numbers: the model's own distribution
SPARSE_TWINS = ("rl-sparse-seed0", "rl-sparse-seed1")
CALIBRATION_TWINS = ("base", "rl-binary", "rl-brier")
OPEN_TWIN = "rl-open"
DENSE_TWIN = "rl-seed0"
HARD_TWIN = "rl-hard"
# Below this many rows a vLLM start-up (15-35 s on 2 shared cores) costs more than the HF loop.
VLLM_MIN_ROWS = 4096
# Claim thresholds (issue 14's twin table).
SPARSE_UNCHANGED_MIN = 0.70
SPARSE_GAIN_MIN = 0.10
TIER_PASS1_BAND = (0.05, 0.60)
# The largest k the demo's pass@k job reports (scripts/passk.py: 16 samples per problem); issue 14
# asks the base to stay clear of the guesser at every k the demo reports. The card shows every k.
DEMO_PASSK_MAX_K = 16
HARD_TIER_PASSK_MAX = 0.90
ENTROPY_COLLAPSE = 0.5  # "collapsed": own-sample entropy below this share of the base's
ENGINES = ("auto", "vllm", "hf")
MARK_BEGIN = "<!-- card:begin (generated by scripts/model_card.py from the card JSON; do not edit) -->"
MARK_END = "<!-- card:end -->"


@dataclass
class CardSettings:
    """Sizes and seeds of a card run. ``n_problems``: held-out problems per sampled measurement;
    ``passk_problems``: per tier for pass@k (default ``n_problems``); ``passk_samples``: samples per
    problem (the largest k); ``twin_tier``: operands of the per-twin problems; ``passk_twins``: twins
    that also get a pass@k curve at ``twin_tier``. Sizes: see the comments; the card states the ones used."""

    n_problems: int = 500
    # 100 x 256 samples per tier keeps the whole card near 10 minutes on 2 free cores (vLLM draws
    # ~600 organism completions/s there); 500 x 256, the papers' n on the card's problem count, is
    # --passk-problems 500 (about 4x the sampling time).
    passk_problems: int | None = 100
    passk_samples: int = 256
    passk_tiers: tuple[int, ...] = CARD_TIERS
    passk_twins: tuple[str, ...] = ("rl-seed0", "rl-nsr", "rl-psr")
    twin_tier: int = 4
    # the twins' pass@k tier: the hardest, where the base's pass@256 stays far from 1 (pass@k curves
    # of RL twins can cross the base's only where the base has room)
    passk_twin_tier: int = MAX_OPERANDS
    eval_set: int = 0
    seed: int = 0
    n_boot: int = 1000
    engine: str = "auto"
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise TwinlensError(f"engine must be one of {ENGINES}, got {self.engine!r}.")
        for name in ("n_problems", "passk_samples", "n_boot", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TwinlensError(f"{name} must be a positive integer, got {v!r}.")
        if self.passk_problems is not None and (not isinstance(self.passk_problems, int) or self.passk_problems < 1):
            raise TwinlensError(f"passk_problems must be a positive integer, got {self.passk_problems!r}.")
        for t in (*self.passk_tiers, self.twin_tier, self.passk_twin_tier):
            if not isinstance(t, int) or not MIN_OPERANDS <= t <= MAX_OPERANDS:
                raise TwinlensError(f"tiers are operand counts in {MIN_OPERANDS}..{MAX_OPERANDS}, got {t!r}.")

    @property
    def n_passk(self) -> int:
        return self.passk_problems or self.n_problems


# (model name, model, prompts, max_new_tokens, temperature, top_p, n, seed) -> texts, prompt-major
GenerateTexts = Callable[[str, Any, list[str], int, float, float, int, int], list[str]]


class CardSampler:
    """Text completions from a kit Model through vLLM or the HF loop, recording which engine
    served each call (``record``) and why vLLM was not used (``fallback``)."""

    def __init__(self, engine: str = "auto", batch_size: int = 512):
        self.requested = engine
        self.batch_size = batch_size
        self.fallback: str | None = None
        self.record: list[dict] = []
        self._vllm_ok: bool | None = None if engine != "hf" else False
        if engine == "auto":
            from hooks.vllm_engine import vllm_available

            if not vllm_available():
                self._vllm_ok, self.fallback = False, "vLLM is not installed (see hooks.vllm_engine)"
        self.vllm_models: set[str] = set()

    def _use_vllm(self, rows: int) -> bool:
        if self._vllm_ok is False:
            return False
        return self.requested == "vllm" or rows >= VLLM_MIN_ROWS

    def __call__(self, name: str, model: Any, prompts: list[str], max_new_tokens: int, temperature: float,
                 top_p: float, n: int, seed: int) -> list[str]:
        from hooks import generate

        ids = [model.encode(p) for p in prompts]
        t0 = time.time()
        engine = "hf"
        if self._use_vllm(len(prompts) * n):
            try:
                out = generate(model, ids, max_new_tokens, temperature=temperature, top_p=top_p, n=n,
                               seed=seed, engine="vllm")
                engine = "vllm"
                self._vllm_ok = True
                self.vllm_models.add(name)
            except Exception as exc:  # a worker that fails to start or dies: the HF loop is the reference
                self._vllm_ok = False
                self.fallback = f"vLLM failed on {name!r}: {str(exc).splitlines()[0][:300]}"
                print(f"note: {self.fallback}; using the HF loop", file=sys.stderr, flush=True)
        if engine == "hf":
            out = generate(model, ids, max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed,
                           batch_size=self.batch_size, progress=len(ids) * n > 2000)
        self.record.append({"model": name, "rows": len(prompts) * n, "temperature": temperature,
                            "top_p": top_p, "engine": engine, "seconds": round(time.time() - t0, 1)})
        return [model.tokenizer.decode(o, skip_special_tokens=True) for o in out]

    def release(self, name: str, model: Any) -> None:
        if name in self.vllm_models:
            from hooks.vllm_engine import release_engine

            release_engine(model)
            self.vllm_models.discard(name)

    def describe(self) -> dict:
        used = sorted({r["engine"] for r in self.record})
        return {"requested": self.requested, "used": used, "fallback": self.fallback,
                "vllm_min_rows": VLLM_MIN_ROWS, "calls": self.record}


# ---------------------------------------------------------------- pieces (each testable alone)
def passk_block(problems: Sequence[Problem], completions: Sequence[str], n: int, ks: Sequence[int], *,
                n_boot: int = 1000, seed: int = 0) -> dict:
    """pass@k of ``n`` samples per problem (prompt-major ``completions``) with the bootstrap CI
    over problems, beside the uniform guesser's curve; ``above_guesser``: the lowest k-wise margin
    ci_low - guesser over every k (> 0: clear of the guesser at every k), ``above_guesser_demo``:
    the same over k <= DEMO_PASSK_MAX_K."""
    if len(completions) != n * len(problems):
        raise TwinlensError(f"{len(completions)} completions for {len(problems)} problems x {n} samples.")
    c = np.array([sum(grade(p, completions[i * n + j]) for j in range(n)) for i, p in enumerate(problems)])
    curve = pass_at_k_curve(np.full(len(problems), n), c, list(ks), n_boot=n_boot, seed=seed)
    guess = guesser_pass_at_k(curve.k, ANSWER_SPACE)
    margins = [lo - g for lo, g in zip(curve.ci_low, guess, strict=True)]
    demo = [m for k, m in zip(curve.k, margins, strict=True) if k <= DEMO_PASSK_MAX_K]
    return {**curve.to_dict(), "guesser": guess, "above_guesser": float(min(margins)),
            "above_guesser_demo": float(min(demo)) if demo else float("nan"),
            "n_problems": len(problems), "n_samples": n,
            "unsolved_share": float(np.mean(c == 0))}


def confidence_block(problems: Sequence[Problem], completions: Sequence[str], *, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Calibration of the *stated* confidence (``@d`` after the answer; one completion per problem):
    share stating one (Wilson CI), and ECE / Brier / AUROC with bootstrap CIs over the completions
    that state one (``analyses.calibration.calibration_report``)."""
    if len(completions) != len(problems):
        raise TwinlensError(f"{len(completions)} completions for {len(problems)} problems (one each).")
    conf, corr = [], []
    for p, text in zip(problems, completions, strict=True):
        q = extract_confidence(text)
        if q is not None:
            conf.append(q)
            corr.append(grade(p, text))
    out: dict[str, Any] = {"stated": Rate.of(len(conf), len(problems)),
                           "accuracy_all": Rate.of(sum(grade(p, t) for p, t in zip(problems, completions,
                                                                                     strict=True)), len(problems))}
    if len(conf) >= 2:
        rep = calibration_report(conf, corr, n_boot=n_boot, seed=seed)
        out.update({"n": rep.n, "accuracy": rep.accuracy, "mean_confidence": rep.mean_confidence,
                    "ece": rep.ece, "brier": rep.brier, "auroc": rep.auroc,
                    "ci": {k: list(v) for k, v in rep.ci.items()}})
    return out


def weight_overlap(base: str | Path, run_a: str | Path, run_b: str | Path, names: tuple[str, str]) -> dict:
    """Overlap of two runs' changed sets (bf16 value differs from the base's) with the random
    baselines (``analyses.subnetworks.overlap_of``; tensors as stored, the organism's tied
    embedding once)."""
    from organism.training import update_counts

    n, n_a, n_b, both = update_counts(base, run_a, run_b)
    return overlap_of(names[0], names[1], n, n_a, n_b, both, tolerance="bf16-equality").to_dict()


def sample_rows(problems: Sequence[Problem], completions: Sequence[str], model: Any, label: str) -> list[SampleRow]:
    """SampleRows (one per problem, drawn by ``label``) for ``analyses.drift.measure_drift``: token
    ids through the model's tokenizer (one token per character), strategy and answer spans from
    organism.task; problem id = the prompt."""
    rows = []
    for i, (p, text) in enumerate(zip(problems, completions, strict=True)):
        ids = model.encode(text) if text else []
        span = answer_span(text) if p.variant != "open" else None
        rows.append(SampleRow(model=label, problem_id=p.prompt, sample_index=i, prompt_ids=model.encode(p.prompt),
                              completion_ids=ids, text=text, logprobs={}, finished=True,
                              correct=grade(p, text), format=None,
                              strategy_spans=[[s.strategy, s.start, s.end] for s in label_strategies(text)]
                              if p.variant != "open" else [],
                              answer_span=list(span) if span else None))
    if any(len(r.completion_ids) != len(r.text) for r in rows):
        raise TwinlensError("The card needs the organism's character tokenizer (one token per character).")
    return rows


def _per_problem(rows: Sequence[SampleRow], values: np.ndarray) -> dict[str, float]:
    """measure_drift's per-problem array keyed by problem id (its order: sorted ids of the rows
    with a non-empty completion)."""
    ids = sorted({r.problem_id for r in rows if r.completion_ids})
    return dict(zip(ids, values.tolist(), strict=True))


def drift_block(base_model: Any, twin_model: Any, base_rows: Sequence[SampleRow], twin_rows: Sequence[SampleRow],
                twin: str, *, n_boot: int, seed: int) -> dict:
    """KL(base || twin) and KL(twin || base) on the base's samples, both models' entropy there, and
    the entropy change as the kit's drift job defines it (RESEARCH.md s.8): the twin's entropy on
    its own samples minus the base's on the base's samples, paired by problem, bootstrap CI over
    problems. Nats per token."""
    # batch 256: forwards of this tiny model cost their per-batch overhead, not their FLOPs
    r = measure_drift({"base": base_model, twin: twin_model}, base_rows, base="base", other=twin, n_boot=n_boot,
                      seed=seed, batch_size=256)
    own = measure_drift({"base": base_model, twin: twin_model}, twin_rows, base="base", other=twin,
                        n_boot=n_boot, seed=seed, batch_size=256)
    hb = _per_problem(base_rows, r.per_problem["entropy_base"])
    ho = _per_problem(twin_rows, own.per_problem[f"entropy_{twin}"])
    common = sorted(set(hb) & set(ho))
    d = np.array([ho[p] - hb[p] for p in common])
    b = np.array([hb[p] for p in common])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), (n_boot, len(common)))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return {"kl_base_rl": r.kl_base_rl, "kl_rl_base": r.kl_rl_base,
            "kl_base_rl_ci": list(r.ci["kl_base_rl"]), "kl_rl_base_ci": list(r.ci["kl_rl_base"]),
            "entropy_base": r.entropy["base"], "entropy_base_ci": list(r.ci["entropy_base"]),
            "entropy_on_base_samples": r.entropy[twin], "entropy_on_base_samples_ci": list(r.ci[f"entropy_{twin}"]),
            "entropy_own": own.entropy[twin], "entropy_own_ci": list(own.ci[f"entropy_{twin}"]),
            "entropy_change": float(d.mean()), "entropy_change_ci": [float(lo), float(hi)],
            "entropy_change_relative": float(d.mean() / b.mean()) if b.mean() else float("nan"),
            "n_problems": r.n_problems, "n_tokens": r.n_tokens}


def checkpoint_facts(paths: Mapping[str, str | Path]) -> dict:
    """Per checkpoint: folder, bytes on disk, and from its ``training_info.json`` the stage, the
    hyper-parameters (lr, steps, beta, seed, ...) and the compute spent (samples, tokens, seconds);
    for the folder holding them: total bytes of every checkpoint there (folders with a config.json;
    the 40 MB budget) and the
    rebuild's wall time from ``build_report.json`` when present."""
    import json

    out: dict[str, Any] = {"checkpoints": {}}
    parents = set()
    for name, p in paths.items():
        p = Path(p)
        parents.add(p.parent)
        info = {}
        if (p / "training_info.json").is_file():
            info = json.loads((p / "training_info.json").read_text())
        out["checkpoints"][name] = {
            "path": str(p), "bytes": sum(f.stat().st_size for f in p.rglob("*") if f.is_file()),
            "stage": info.get("stage"), "init": info.get("init"), "n_params": info.get("n_params"),
            "hyperparameters": {k: v for k, v in (info.get("hyperparameters") or {}).items()
                                if isinstance(v, (int, float, str, bool)) or v is None},
            "samples_seen": info.get("samples_seen", info.get("sequences_seen")),
            "tokens_generated": info.get("tokens_generated", info.get("tokens_trained")),
            "seconds": info.get("seconds"), "reward": info.get("reward")}
    if len(parents) == 1:
        folder = parents.pop()
        out["folder"] = str(folder)
        out["folder_bytes"] = sum(f.stat().st_size for d in folder.iterdir() if (d / "config.json").is_file()
                                  for f in d.rglob("*") if f.is_file())
        report = folder / "build_report.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            out["build"] = {k: rep.get(k) for k in ("total_wall_seconds", "stage_wall_seconds", "threads", "command")}
    return out


def _open_problems(n: int, eval_set: int) -> list[Problem]:
    per = [n // len(OPEN_LENGTHS) + (i < n % len(OPEN_LENGTHS)) for i in range(len(OPEN_LENGTHS))]
    return [p for k, length in zip(per, OPEN_LENGTHS, strict=True)
            for p in eval_problems(k, eval_set, difficulty=length, variant="open")]


def _confidence_problems(n: int, eval_set: int) -> list[Problem]:
    tiers = PRETRAIN_TIERS
    per = [n // len(tiers) + (i < n % len(tiers)) for i in range(len(tiers))]
    return [p for k, t in zip(per, tiers, strict=True) for p in eval_problems(k, eval_set, difficulty=t,
                                                                               confidence=True)]


def _stats_dict(problems: Sequence[Problem], completions: Sequence[str]) -> dict:
    return asdict(decoding_stats(list(problems), list(completions), 1, n_examples=3))


# ---------------------------------------------------------------- the whole card
def weights_digest(folder: str | Path) -> str:
    """sha256 (first 16 hex digits) of a checkpoint's model.safetensors: what a cached stage is keyed on."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(folder) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class StageCache:
    """Finished stages of a card run as JSON files in ``folder`` (``stages/<key hash>.json``), keyed by
    the stage, the weights it read and the settings it used: a rerun (more checkpoints, an interrupted
    run, a base measured before its twins were trained) reuses every stage whose inputs are unchanged.
    None: nothing cached."""

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder)
        self.reused: list[str] = []

    def _path(self, key: Mapping) -> Path:
        import hashlib
        import json

        text = json.dumps(key, sort_keys=True)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"

    def get(self, key: Mapping) -> dict | None:
        import json

        if self.folder is None or not self._path(key).is_file():
            return None
        stored = json.loads(self._path(key).read_text())
        if stored.get("key") != json.loads(json.dumps(key)):
            return None
        self.reused.append(key["stage"])
        return stored["value"]

    def put(self, key: Mapping, value: Any) -> Any:
        import json

        from analyses.reporting import to_jsonable, write_text_atomic

        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self._path(key), json.dumps({"key": key, "value": to_jsonable(value)}))
        return value


def measure_card(paths: Mapping[str, str | Path], settings: CardSettings | None = None, *,
                 load: Callable[[str | Path], Any] | None = None, generate_texts: GenerateTexts | None = None,
                 progress: bool = True, cache: str | Path | None = None) -> dict:
    """Every number of the model card (see the module docstring) for the checkpoints ``paths``
    (name -> HF folder; must hold ``base``). ``load`` (folder -> kit Model; default
    ``hooks.load_model`` in float32) and ``generate_texts`` (default: a ``CardSampler``) are
    replaceable for tests. ``cache``: a folder of finished stages (``StageCache``; a rerun reuses
    those whose weights and settings are unchanged). Returns a JSON-able dict (numbers in [0, 1]
    are shares/rates, KL and entropy in nats per token, lengths in tokens)."""
    st = settings or CardSettings()
    if "base" not in paths:
        raise TwinlensError(f"The card compares twins with the base: give a checkpoint named 'base' (got {list(paths)}).")
    if load is None:
        from hooks import load_model

        def load(p):
            return load_model(str(p), device="cpu", dtype=torch.float32)
    sampler = None
    if generate_texts is None:
        sampler = generate_texts = CardSampler(st.engine, st.batch_size)
    stages = StageCache(cache)
    digests = {n: weights_digest(p) for n, p in paths.items()}
    common = {"card_version": 1, "eval_set": st.eval_set, "seed": st.seed, "n_boot": st.n_boot,
              "base": digests["base"], "sampler": "caller" if sampler is None else "card"}
    passk_key = {"n_passk": st.n_passk, "passk_samples": st.passk_samples}
    twin_key = {"n_problems": st.n_problems, "twin_tier": st.twin_tier}
    times: dict[str, float] = {}
    t_all = time.time()
    twins = [n for n in paths if n != "base"]
    ks = default_ks(st.passk_samples)
    card: dict[str, Any] = {
        "card_version": 1,
        "settings": {**asdict(st), "n_passk": st.n_passk, "ks": ks, "passk_temperature": PASSK_TEMPERATURE,
                     "passk_top_p": PASSK_TOP_P, "sample_temperature": SAMPLE_TEMPERATURE,
                     "answer_space": ANSWER_SPACE,
                     "max_new_tokens": "analyses.task.organism_max_new_tokens(tier, variant, confidence)"},
        "checkpoints": {n: str(p) for n, p in paths.items()},
        "weights_sha256_16": digests,
        "facts": checkpoint_facts(paths),
        "tiers": {}, "twins": {}, "passk_twins": {}, "calibration": {},
    }
    steps = len(st.passk_tiers) + 1 + len(twins)
    bar = tqdm(total=steps, desc="card", disable=not progress)
    base = load(paths["base"])

    # 1. base per tier: greedy accuracy, pass@k against the guesser
    t0 = time.time()
    for tier in st.passk_tiers:
        bar.set_postfix_str(f"base pass@k tier {tier}")
        key = {"stage": f"tier {tier}", **common, **passk_key}
        block = stages.get(key)
        if block is None:
            probs = eval_problems(st.n_passk, st.eval_set, difficulty=tier)
            prompts = [p.prompt for p in probs]
            budget = organism_max_new_tokens(tier)
            greedy = generate_texts("base", base, prompts, budget, 0.0, 1.0, 1, st.seed)
            sampled = generate_texts("base", base, prompts, budget, PASSK_TEMPERATURE, PASSK_TOP_P,
                                     st.passk_samples, st.seed)
            block = stages.put(key, {
                "greedy": Rate.of(sum(grade(p, c) for p, c in zip(probs, greedy, strict=True)), len(probs)),
                "pass_at_k": passk_block(probs, sampled, st.passk_samples, ks, n_boot=st.n_boot, seed=st.seed),
                "mean_length": float(np.mean([len(c) for c in sampled]))})
        card["tiers"][str(tier)] = block
        bar.update()
    times["base_passk"] = time.time() - t0

    # 2. the base's own row, and its T=1 samples for drift (structured and open)
    t0 = time.time()
    twin_probs = eval_problems(st.n_problems, st.eval_set, difficulty=st.twin_tier)
    open_probs = _open_problems(st.n_problems, st.eval_set)
    conf_probs = _confidence_problems(st.n_problems, st.eval_set)
    twin_budget = organism_max_new_tokens(st.twin_tier)
    open_budget = max(organism_max_new_tokens(n, "open") for n in OPEN_LENGTHS)
    conf_budget = max(organism_max_new_tokens(t, confidence=True) for t in PRETRAIN_TIERS)

    def evaluate(name: str, model: Any) -> dict:
        prompts = [p.prompt for p in twin_probs]
        g = generate_texts(name, model, prompts, twin_budget, 0.0, 1.0, 1, st.seed)
        s = generate_texts(name, model, prompts, twin_budget, SAMPLE_TEMPERATURE, 1.0, 1, st.seed)
        o = generate_texts(name, model, [p.prompt for p in open_probs], open_budget, SAMPLE_TEMPERATURE,
                           1.0, 1, st.seed)
        row = {"greedy": _stats_dict(twin_probs, g), "sampled": _stats_dict(twin_probs, s),
               "open_accuracy": Rate.of(sum(grade(p, c) for p, c in zip(open_probs, o, strict=True)),
                                        len(open_probs)),
               "open_distinct": len(set(o)) / max(1, len(o))}
        out = {"row": row, "sampled": s, "open": o}
        if name in CALIBRATION_TWINS:
            c = generate_texts(name, model, [p.prompt for p in conf_probs], conf_budget, SAMPLE_TEMPERATURE,
                               1.0, 1, st.seed)
            out["calibration"] = confidence_block(conf_probs, c, n_boot=st.n_boot, seed=st.seed)
        return out

    bar.set_postfix_str("base")
    key = {"stage": "base", **common, **twin_key}
    ev = stages.get(key) or stages.put(key, evaluate("base", base))
    card["twins"]["base"] = ev["row"]
    if "calibration" in ev:
        card["calibration"]["base"] = ev["calibration"]
    rows_struct = sample_rows(twin_probs, ev["sampled"], base, "base")
    rows_open = sample_rows(open_probs, ev["open"], base, "base")
    bar.update()
    times["base"] = time.time() - t0

    # 3. every twin
    for name in twins:
        t0 = time.time()
        bar.set_postfix_str(name)
        key = {"stage": f"twin {name}", "twin": digests[name], **common, **twin_key,
               **({**passk_key, "passk_twin_tier": st.passk_twin_tier} if name in st.passk_twins else {})}
        done = stages.get(key)
        if done is None:
            model = load(paths[name])
            ev = evaluate(name, model)
            row = ev["row"]
            row["unchanged_fraction"] = bf16_unchanged_fraction(paths["base"], paths[name])["unchanged_fraction"]
            row["drift"] = {
                "structured": drift_block(base, model, rows_struct, sample_rows(twin_probs, ev["sampled"], model, name),
                                          name, n_boot=st.n_boot, seed=st.seed),
                "open": drift_block(base, model, rows_open, sample_rows(open_probs, ev["open"], model, name), name,
                                    n_boot=st.n_boot, seed=st.seed)}
            done = {"row": row, "calibration": ev.get("calibration")}
            if name in st.passk_twins:  # the same problems and protocol as the base's row of this tier
                probs = eval_problems(st.n_passk, st.eval_set, difficulty=st.passk_twin_tier)
                s = generate_texts(name, model, [p.prompt for p in probs], organism_max_new_tokens(st.passk_twin_tier),
                                   PASSK_TEMPERATURE, PASSK_TOP_P, st.passk_samples, st.seed)
                done["passk"] = passk_block(probs, s, st.passk_samples, ks, n_boot=st.n_boot, seed=st.seed)
            if sampler is not None:
                sampler.release(name, model)
            del model
            stages.put(key, done)
        card["twins"][name] = done["row"]
        if done.get("calibration"):
            card["calibration"][name] = done["calibration"]
        if done.get("passk"):
            card["passk_twins"][name] = done["passk"]
        times[name] = time.time() - t0
        bar.update()
    bar.close()
    if HARD_TWIN in paths:  # s.6 is about the tier rl-hard trained on: base and rl-hard sampled there
        import json

        info_path = Path(paths[HARD_TWIN]) / "training_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        hard_tier = int(info.get("difficulty") or MAX_OPERANDS)
        hard_probs = eval_problems(st.n_problems, st.eval_set, difficulty=hard_tier)
        card["hard"] = {"tier": hard_tier}
        for name in ("base", HARD_TWIN):
            key = {"stage": f"hard {name}", "model": digests[name], "tier": hard_tier, **common, **twin_key}
            stats = stages.get(key)
            if stats is None:
                model = base if name == "base" else load(paths[name])
                texts = generate_texts(name, model, [p.prompt for p in hard_probs], organism_max_new_tokens(hard_tier),
                                       SAMPLE_TEMPERATURE, 1.0, 1, st.seed)
                stats = stages.put(key, _stats_dict(hard_probs, texts))
            card["hard"][name] = stats
    if card["passk_twins"] and str(st.passk_twin_tier) in card["tiers"]:  # the base's curve beside the twins'
        card["passk_twins"] = {"base": card["tiers"][str(st.passk_twin_tier)]["pass_at_k"], **card["passk_twins"]}
    if all(s in paths for s in SPARSE_TWINS):
        card["sparse_overlap"] = weight_overlap(paths["base"], paths[SPARSE_TWINS[0]], paths[SPARSE_TWINS[1]],
                                                SPARSE_TWINS)
    if sampler is not None:
        sampler.release("base", base)
        card["engine"] = sampler.describe()
    else:
        card["engine"] = {"requested": "caller's generate_texts", "used": ["caller"], "fallback": None}
    card["engine"]["reused_stages"] = stages.reused
    times["total"] = time.time() - t_all
    card["seconds"] = {k: round(v, 1) for k, v in times.items()}
    card["claims"] = card_claims(card)
    return card


# ---------------------------------------------------------------- reading a card
def _r(x: Any) -> dict:
    """A Rate given as a Rate or its dict."""
    return asdict(x) if isinstance(x, Rate) else dict(x)


def _fmt_rate(x: Any, digits: int = 3) -> str:
    r = _r(x)
    if r.get("value") is None or (isinstance(r["value"], float) and math.isnan(r["value"])):
        return "n/a"
    return f"{r['value']:.{digits}f} [{r['low']:.{digits}f}, {r['high']:.{digits}f}]"


def _fmt_ci(v: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if not ci or ci[0] is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _at_k(block: Mapping, k: int) -> tuple[float, float, float, float] | None:
    if k not in block["k"]:
        return None
    i = block["k"].index(k)
    return block["mean"][i], block["ci_low"][i], block["ci_high"][i], block["guesser"][i]


def _format_entropy(stats: Mapping) -> float:
    """Entropy (nats) of the sampled format shares: 0 = one format."""
    ps = [_r(stats["formats"][f])["value"] for f in (*FORMATS, "other")]
    return float(-sum(p * math.log(p) for p in ps if p and p > 0))


def card_claims(card: Mapping) -> list[dict]:
    """The claim rows of issue 14's twin table, decided from the card's numbers: each
    {claim, checkpoints, planted ("true" / "false" / "property"), measured (text), holds (bool, or
    None where a checkpoint is missing)}. Thresholds: SPARSE_UNCHANGED_MIN, SPARSE_GAIN_MIN,
    TIER_PASS1_BAND, HARD_TIER_PASSK_MAX; "lower"/"higher" claims need the CIs apart."""
    rows: list[dict] = []
    twins = card.get("twins", {})
    tiers = card.get("tiers", {})

    def add(claim, checkpoints, planted, measured, holds):
        rows.append({"claim": claim, "checkpoints": checkpoints, "planted": planted, "measured": measured,
                     "holds": holds})

    for t, block in sorted(tiers.items(), key=lambda kv: int(kv[0])):
        pk = block["pass_at_k"]
        p1 = _at_k(pk, 1)
        kmax = pk["k"][-1]
        pmax = _at_k(pk, kmax)
        kd = max(k for k in pk["k"] if k <= DEMO_PASSK_MAX_K)
        add(f"tier {t}: base clear of the uniform guesser at every k the demo reports (<= {kd})", ["base"],
            "property", f"min over k <= {kd} of (CI low - guesser) = {pk['above_guesser_demo']:+.3f}; over every k "
            f"{pk['above_guesser']:+.3f}; pass@{kmax} {pmax[0]:.3f} vs guesser {pmax[3]:.3f}",
            pk["above_guesser_demo"] > 0)
        lo, hi = TIER_PASS1_BAND
        if int(t) in PRETRAIN_TIERS:  # the tiers the base, the RL twins and the demo use
            add(f"tier {t}: base pass@1 in [{lo}, {hi}]", ["base"], "property",
                f"pass@1 {p1[0]:.3f} [{p1[1]:.3f}, {p1[2]:.3f}]", lo <= p1[0] <= hi)
    if tiers:
        kmax = max(b["pass_at_k"]["k"][-1] for b in tiers.values())
        worst = min(((t, _at_k(b["pass_at_k"], kmax)) for t, b in tiers.items() if _at_k(b["pass_at_k"], kmax)),
                    key=lambda x: x[1][0], default=None)
        if worst:
            add(f"some tier with base pass@{kmax} < {HARD_TIER_PASSK_MAX} (room for pass@k curves to cross)",
                ["base"], "property", f"tier {worst[0]}: pass@{kmax} {worst[1][0]:.3f}",
                worst[1][0] < HARD_TIER_PASSK_MAX)

    base = twins.get("base")

    def acc(name, mode="sampled"):
        return _r(twins[name][mode]["accuracy"])

    # sparse subnetworks (s.2): planted true on the sparse seeds, false on the dense rl-seed0
    for name in SPARSE_TWINS:
        if name in twins and base:
            u = twins[name]["unchanged_fraction"]
            gain = max(acc(name)["value"] - acc("base")["value"], acc(name, "greedy")["value"] - acc("base", "greedy")["value"])
            add(f"s.2 sparse update: >= {SPARSE_UNCHANGED_MIN:.0%} bf16 weights unchanged and accuracy >= base + "
                f"{SPARSE_GAIN_MIN:.0%}", [name], "true",
                f"unchanged {u:.3f}; accuracy gain (best of greedy/sampled) {gain:+.3f}",
                u >= SPARSE_UNCHANGED_MIN and gain >= SPARSE_GAIN_MIN)
        else:
            add("s.2 sparse update", [name], "true", "checkpoint missing", None)
    ov = card.get("sparse_overlap")
    if ov:
        add("s.2 the sparse seeds' updated sets overlap above random", list(SPARSE_TWINS), "true",
            f"o1 {ov['o1']:.3f} vs random {ov['random_o1']:.3f}; o2 {ov['o2']:.3f} vs random {ov['random_o2']:.3f}",
            ov["o1"] > ov["random_o1"] and ov["o2"] > ov["random_o2"])
    if DENSE_TWIN in twins:
        u = twins[DENSE_TWIN]["unchanged_fraction"]
        add(f"s.2 sparse update: >= {SPARSE_UNCHANGED_MIN:.0%} bf16 weights unchanged (dense lr regime)", [DENSE_TWIN],
            "false", f"unchanged {u:.3f}", u >= SPARSE_UNCHANGED_MIN)

    # overly hard problems (s.6): the shortcut of answering directly, shorter responses, on the tier
    # rl-hard trained on (card["hard"]), else on the twin tier
    if HARD_TWIN in twins and base:
        hard = card.get("hard")
        h, b0 = ((hard[HARD_TWIN], hard["base"]) if hard else (twins[HARD_TWIN]["sampled"], twins["base"]["sampled"]))
        where = f"{hard['tier']} operands (rl-hard's training tier)" if hard else "the twin tier"
        dh, db = _r(h["formats"]["direct"]), _r(b0["formats"]["direct"])
        add("s.6 RL on overly hard problems teaches the shortcut: more direct answers (CIs apart), shorter responses",
            [HARD_TWIN], "true",
            f"on {where}: direct share {_fmt_rate(dh)} vs base {_fmt_rate(db)}; mean length {h['mean_length']:.1f} vs "
            f"{b0['mean_length']:.1f} tokens; sampled acc {_fmt_rate(h['accuracy'])} vs {_fmt_rate(b0['accuracy'])}",
            dh["low"] > db["high"] and h["mean_length"] < b0["mean_length"])

    # KL penalty (s.3/s.5): lower KL to base and more diverse formats than rl-seed0
    if DENSE_TWIN in twins:
        d0 = twins[DENSE_TWIN]["drift"]["structured"]
        f0 = _format_entropy(twins[DENSE_TWIN]["sampled"])
        for name in sorted(n for n in twins if n.startswith("rl-kl-")):
            d = twins[name]["drift"]["structured"]
            f = _format_entropy(twins[name]["sampled"])
            add("s.3/s.5 KL penalty: KL(base||rl) lower than rl-seed0's (CIs apart), formats more diverse",
                [name, DENSE_TWIN], "true",
                f"KL {_fmt_ci(d['kl_base_rl'], d['kl_base_rl_ci'])} vs {_fmt_ci(d0['kl_base_rl'], d0['kl_base_rl_ci'])}; "
                f"format entropy {f:.3f} vs {f0:.3f} nats; sampled acc {acc(name)['value']:.3f} vs "
                f"{acc(DENSE_TWIN)['value']:.3f}",
                d["kl_base_rl_ci"][1] < d0["kl_base_rl_ci"][0] and f > f0)

    # NSR / PSR (s.2 mechanism, Zhu et al.)
    pt = card.get("passk_twins", {})
    if "rl-nsr" in twins and base:
        d = twins["rl-nsr"]["drift"]["structured"]
        kmax_txt, keeps = "", None
        if "rl-nsr" in pt and "base" in pt:
            kmax = pt["rl-nsr"]["k"][-1]
            a, b = _at_k(pt["rl-nsr"], kmax), _at_k(pt["base"], kmax)
            kmax_txt = f"pass@{kmax} {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] vs base {b[0]:.3f} [{b[1]:.3f}, {b[2]:.3f}]; "
            keeps = a[2] >= b[1]  # CIs touch or NSR above
        near = d["entropy_own_ci"][1] >= ENTROPY_COLLAPSE * d["entropy_base"]
        add(f"s.2 NSR keeps pass@k at large k (CIs touch or above) and entropy above {ENTROPY_COLLAPSE:g}x the base's",
            ["rl-nsr"], "true",
            kmax_txt + f"entropy {_fmt_ci(d['entropy_own'], d['entropy_own_ci'])} vs base {d['entropy_base']:.3f} "
            "nats/token (own samples)", False if not near else (None if keeps is None else bool(keeps)))
    if "rl-psr" in twins:
        d = twins["rl-psr"]["drift"]["structured"]
        add(f"s.2 PSR collapses entropy (below {ENTROPY_COLLAPSE:g}x the base's, CI included)", ["rl-psr"], "true",
            f"entropy {_fmt_ci(d['entropy_own'], d['entropy_own_ci'])} vs base {d['entropy_base']:.3f} nats/token "
            "(own samples)", d["entropy_own_ci"][1] < ENTROPY_COLLAPSE * d["entropy_base"])

    # calibration (s.7)
    cal = card.get("calibration", {})
    if "base" in cal and "ece" in cal["base"]:
        cb = cal["base"]
        for name, worse in (("rl-binary", True), ("rl-brier", False)):
            c = cal.get(name)
            if not c or "ece" not in c:
                add(f"s.7 calibration ({name})", [name], "true" if worse else "false", "checkpoint missing", None)
                continue
            text = (f"ECE {_fmt_ci(c['ece'], c['ci']['ece'])} vs base {_fmt_ci(cb['ece'], cb['ci']['ece'])}; "
                    f"Brier {c['brier']:.3f} vs {cb['brier']:.3f}; stated {_fmt_rate(c['stated'])}")
            add("s.7 RL worsens calibration of the stated confidence: ECE above the base's (CIs apart)",
                [name], "true" if worse else "false", text, c["ci"]["ece"][0] > cb["ci"]["ece"][1])
        cbin, cbr = cal.get("rl-binary"), cal.get("rl-brier")
        if cbin and cbr and "ece" in cbin and "ece" in cbr:
            add("s.7 the binary reward leaves the stated confidence worse calibrated than the Brier reward "
                "(ECE, CIs apart)", ["rl-binary", "rl-brier"], "true",
                f"ECE {_fmt_ci(cbin['ece'], cbin['ci']['ece'])} vs {_fmt_ci(cbr['ece'], cbr['ci']['ece'])}; "
                f"Brier {cbin['brier']:.3f} vs {cbr['brier']:.3f}", cbin["ci"]["ece"][0] > cbr["ci"]["ece"][1])

    # entropy by domain (s.8)
    if OPEN_TWIN in twins and DENSE_TWIN in twins:
        ds, do = twins[DENSE_TWIN]["drift"]["structured"], twins[OPEN_TWIN]["drift"]["open"]
        cs, co = ds["entropy_change_relative"], do["entropy_change_relative"]
        add("s.8 RL lowers entropy on the structured task more than on the open one (relative change)",
            [DENSE_TWIN, OPEN_TWIN], "true",
            f"{DENSE_TWIN} structured {cs:+.3f} ({_fmt_ci(ds['entropy_change'], ds['entropy_change_ci'])} nats); "
            f"{OPEN_TWIN} open {co:+.3f} ({_fmt_ci(do['entropy_change'], do['entropy_change_ci'])} nats)",
            ds["entropy_change_ci"][1] < 0 and cs < co)
    return rows


def as_planted(claim: Mapping) -> bool | None:
    """Whether a claim row came out as planted: holds where planted true (or a property), does not
    hold where planted false; None when untested."""
    if claim["holds"] is None:
        return None
    return (not claim["holds"]) if claim["planted"] == "false" else bool(claim["holds"])


def card_markdown(card: Mapping) -> str:
    """The card's tables as markdown (every number read from ``card``; nothing typed by hand)."""
    st = card["settings"]
    L: list[str] = []
    L += [f"Measured by `python scripts/evaluate.py --card` (held-out eval set {st['eval_set']}, seed {st['seed']}; "
          f"engine of this run's own calls: {', '.join(card['engine']['used']) or 'none'}"
          + (f"; fallback: {card['engine']['fallback']}" if card["engine"].get("fallback") else "")
          + (f"; {len(card['engine']['reused_stages'])} stage(s) reused from the stage cache, measured by earlier runs"
             if card["engine"].get("reused_stages") else "")
          + f"; {card['seconds']['total']:.0f} s). Rates: 95% Wilson intervals; pass@k, KL, entropy, ECE/Brier/AUROC: "
          f"95% percentile bootstrap over problems ({st['n_boot']} resamples).", ""]
    facts = card.get("facts")
    if facts:
        L += ["### Checkpoints as built (from each `training_info.json`)", "",
              "| checkpoint | stage | from | recipe | steps | lr | beta | seed | samples / sequences | tokens | seconds "
              "| MB |", "|---" * 12 + "|"]
        for name, f in facts["checkpoints"].items():
            h = f.get("hyperparameters") or {}

            def cell(v):
                return "" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{v:g}"
                                             if isinstance(v, float) else str(v))
            recipe = ", ".join(f"{k} {h[k]}" for k in ("problems", "reward", "advantage_sign", "master_dtype")
                               if h.get(k) is not None)
            L.append("| " + " | ".join([f"`{name}`", cell(f.get("stage")), cell(f.get("init")), recipe,
                                        cell(h.get("steps")),
                                        cell(h.get("lr")), cell(h.get("beta")), cell(h.get("seed")),
                                        cell(f.get("samples_seen")), cell(f.get("tokens_generated")),
                                        cell(f.get("seconds")), f"{f['bytes'] / 1e6:.2f}"]) + " |")
        tail = []
        if "folder_bytes" in facts:
            tail.append(f"All checkpoints in the folder (intermediate steps included): "
                        f"{facts['folder_bytes'] / 1e6:.1f} MB.")
        if facts.get("build", {}).get("total_wall_seconds") is not None:
            tail.append(f"Rebuild wall time: {facts['build']['total_wall_seconds']:.0f} s "
                        f"({facts['build'].get('threads')} torch thread(s); `build_report.json`).")
        L += ["", " ".join(tail), ""] if tail else [""]
    if card["tiers"]:
        ks = [k for k in (1, 4, 16, 64, 256) if k in st["ks"]] or st["ks"][:5]
        if st["ks"][-1] not in ks:
            ks.append(st["ks"][-1])
        L += [f"### Base per tier ({st['n_passk']} problems per tier; pass@k from {st['passk_samples']} samples per "
              f"problem at temperature {st['passk_temperature']}, top-p {st['passk_top_p']}; guesser = "
              f"1 - (1 - 1/{st['answer_space']})^k)", "",
              "| operands | greedy acc | " + " | ".join(f"pass@{k}" for k in ks) + " | unsolved at "
              f"k={st['passk_samples']} | mean length |",
              "|---" * (4 + len(ks)) + "|"]
        for t, b in sorted(card["tiers"].items(), key=lambda kv: int(kv[0])):
            cells = [t, _fmt_rate(b["greedy"])]
            for k in ks:
                m, lo, hi, g = _at_k(b["pass_at_k"], k)
                cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}] (guesser {g:.3f})")
            cells += [f"{b['pass_at_k']['unsolved_share']:.3f}", f"{b['mean_length']:.1f}"]
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    tw = card["twins"]
    if tw:
        L += [f"### Every checkpoint on {st['n_problems']} held-out {st['twin_tier']}-operand problems", "",
              "Greedy and sampled (temperature 1, one sample per problem) accuracy; format shares, strategy "
              "frequencies (share of completions using it) and mean length of the sampled completions; bf16 "
              "weights unchanged vs base; KL(base || twin) per token on the base's temperature-1 samples.", "",
              "| checkpoint | greedy acc | sampled acc | " + " | ".join(FORMATS) + " | other | "
              + " | ".join(STRATEGIES) + " | mean len | unchanged vs base | KL(base‖twin) |",
              "|---" * (7 + len(FORMATS) + len(STRATEGIES)) + "|"]
        for name, r in tw.items():
            s = r["sampled"]
            d = r.get("drift", {}).get("structured")
            cells = [f"`{name}`", _fmt_rate(r["greedy"]["accuracy"]), _fmt_rate(s["accuracy"])]
            cells += [f"{_r(s['formats'][f])['value']:.3f}" for f in (*FORMATS, "other")]
            cells += [f"{_r(s['strategies'][x])['value']:.3f}" for x in STRATEGIES]
            cells += [f"{s['mean_length']:.1f}",
                      "1 (itself)" if name == "base" else f"{r['unchanged_fraction']:.3f}",
                      "0" if name == "base" else "n/a" if d is None else _fmt_ci(d["kl_base_rl"], d["kl_base_rl_ci"], 4)]
            L.append("| " + " | ".join(cells) + " |")
        L += ["", "### Entropy by domain and the open domain", "",
              "Mean next-token entropy (nats per token) of each model on its own temperature-1 samples; change = "
              "that minus the base's on its own, paired by problem (the kit's drift job's definition, "
              "RESEARCH.md s.8).", "",
              "| checkpoint | entropy, structured | change, structured | entropy, open | change, open | "
              "KL(base‖twin), open | open accuracy (T=1) | distinct open answers |", "|---" * 8 + "|"]
        base_s = next((r["drift"]["structured"] for r in tw.values() if "drift" in r), None)
        base_o = next((r["drift"]["open"] for r in tw.values() if "drift" in r), None)
        for name, r in tw.items():
            if name == "base":
                es = _fmt_ci(base_s["entropy_base"], base_s["entropy_base_ci"]) if base_s else "n/a"
                eo = _fmt_ci(base_o["entropy_base"], base_o["entropy_base_ci"]) if base_o else "n/a"
                cs = co = kl = "0"
            elif "drift" not in r:
                es = cs = eo = co = kl = "n/a"
            else:
                ds, do = r["drift"]["structured"], r["drift"]["open"]
                es, eo = _fmt_ci(ds["entropy_own"], ds["entropy_own_ci"]), _fmt_ci(do["entropy_own"], do["entropy_own_ci"])
                cs = _fmt_ci(ds["entropy_change"], ds["entropy_change_ci"])
                co = _fmt_ci(do["entropy_change"], do["entropy_change_ci"])
                kl = _fmt_ci(do["kl_base_rl"], do["kl_base_rl_ci"], 4)
            L.append(f"| `{name}` | {es} | {cs} | {eo} | {co} | {kl} | {_fmt_rate(r['open_accuracy'])} | "
                     f"{r['open_distinct']:.3f} |")
        L.append("")
    if card.get("passk_twins"):
        pt = card["passk_twins"]
        ks = [k for k in (1, 4, 16, 64, 256) if k in st["ks"]]
        L += [f"### pass@k of twins on {st.get('passk_twin_tier', st['twin_tier'])}-operand problems (same problems "
              "and protocol as the base's row)", "", "| checkpoint | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (1 + len(ks)) + "|"]
        for name, b in pt.items():
            cells = [f"`{name}`"]
            for k in ks:
                v = _at_k(b, k)
                cells.append("n/a" if v is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]")
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    if card.get("hard"):
        h = card["hard"]
        L += [f"### `rl-hard` on its training tier ({h['tier']} operands, {st['n_problems']} held-out problems, "
              "temperature 1)", "",
              "| checkpoint | sampled acc | " + " | ".join(FORMATS) + " | other | mean len |", "|---" * (4 + len(FORMATS)) + "|"]
        for name in ("base", HARD_TWIN):
            r = h[name]
            L.append(f"| `{name}` | {_fmt_rate(r['accuracy'])} | "
                     + " | ".join(f"{_r(r['formats'][f])['value']:.3f}" for f in (*FORMATS, "other"))
                     + f" | {r['mean_length']:.1f} |")
        L.append("")
    if card.get("sparse_overlap"):
        o = card["sparse_overlap"]
        L += ["### Overlap of the sparse seeds' updated weights (bf16 value differs from the base's)", "",
              "| pair | updated (a, b) | o1 | random o1 | o2 | random o2 | Jaccard | random Jaccard |",
              "|---" * 8 + "|",
              f"| `{o['run_a']}` / `{o['run_b']}` | {o['n_a']:,} / {o['n_b']:,} of {o['n_params']:,} | {o['o1']:.3f} | "
              f"{o['random_o1']:.3f} | {o['o2']:.3f} | {o['random_o2']:.3f} | {o['jaccard']:.3f} | "
              f"{o['random_jaccard']:.3f} |", ""]
    if card.get("calibration"):
        L += [f"### Stated confidence ('?' prompts, {st['n_problems']} problems over tiers "
              f"{', '.join(map(str, PRETRAIN_TIERS))}, temperature 1; metrics over completions stating one)", "",
              "| checkpoint | states a confidence | accuracy | mean confidence | ECE (10 bins) | Brier | AUROC |",
              "|---" * 7 + "|"]
        for name, c in card["calibration"].items():
            if "ece" not in c:
                L.append(f"| `{name}` | {_fmt_rate(c['stated'])} | n/a | n/a | n/a | n/a | n/a |")
                continue
            L.append(f"| `{name}` | {_fmt_rate(c['stated'])} | {c['accuracy']:.3f} | {c['mean_confidence']:.3f} | "
                     f"{_fmt_ci(c['ece'], c['ci']['ece'])} | {_fmt_ci(c['brier'], c['ci']['brier'])} | "
                     f"{_fmt_ci(c['auroc'], c['ci']['auroc'])} |")
        L.append("")
    claims = card_claims(card)  # the rules as they are now, on the card's numbers
    if claims:
        L += ["### Claims: planted true / false, and whether the measured numbers bear them out", "",
              "A claim planted *false* came out as planted when it does not hold. A row that did not come out as "
              "planted makes that claim's control untested (issue 14), not the claim false.", "",
              "| claim | checkpoints | planted | measured | holds | as planted |", "|---" * 6 + "|"]
        for c in claims:
            holds = {True: "yes", False: "no", None: "untested"}[c["holds"]]
            ok = as_planted(c)
            L.append(f"| {c['claim']} | {', '.join(f'`{x}`' for x in c['checkpoints'])} | {c['planted']} | "
                     f"{c['measured']} | {holds} | {'untested' if ok is None else 'yes' if ok else '**no**'} |")
        L.append("")
    return "\n".join(L)


def fill_model_card(readme: str, card: Mapping) -> str:
    """``readme`` with the text between MARK_BEGIN and MARK_END replaced by ``card_markdown(card)``.
    Raises TwinlensError when the markers are missing or out of order."""
    i, j = readme.find(MARK_BEGIN), readme.find(MARK_END)
    if i < 0 or j < 0 or j < i:
        raise TwinlensError(
            "The model card has no generated block: put the lines\n" + MARK_BEGIN + "\n" + MARK_END
            + "\nwhere the measured tables belong, then run scripts/model_card.py again.")
    return readme[: i + len(MARK_BEGIN)] + "\n\n" + card_markdown(card) + "\n" + readme[j:]


__all__ = ["CardSettings", "CardSampler", "measure_card", "card_markdown", "card_claims", "fill_model_card",
           "passk_block", "confidence_block", "as_planted", "weight_overlap", "drift_block", "sample_rows", "checkpoint_facts", "StageCache", "weights_digest",
           "CARD_TIERS", "MARK_BEGIN", "MARK_END"]
