"""Training of the organism: base pretraining, SFT, GRPO (TRL), and checkpoint writing.

Precision regime (what "unchanged weight" means downstream): every checkpoint is stored in
bf16, as real RL checkpoints usually are. The base is pretrained in fp32 and rounded to bf16
when saved; SFT and RL load that bf16 base, train in fp32, and are rounded to bf16 when saved.
A weight is "unchanged" iff its bf16 value equals the base's bf16 value.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from organism.corpus import PRETRAIN_MIX, SFT_MIX, CorpusMix, make_corpus
from organism.generation import encode, generate_texts
from organism.task import (
    EVAL_SEED_OFFSET,
    OPEN_LENGTHS,
    Problem,
    extract_confidence,
    grade,
    make_problems,
    parse_prompt,
)
from organism.tokenizer import EOS_ID, PAD_ID, VOCAB, save_tokenizer

MAX_LEN = 160  # tier 6 verify trace with a backtrack: 134 tokens
# Loss normaliser: summed token loss over a constant (a per-batch mean over tokens would weight
# short direct answers and long traces differently from batch to batch).
LOSS_TOKENS_PER_SEQ = 32


@dataclass
class ModelShape:
    n_layers: int = 4
    d_model: int = 128
    d_mlp: int = 256
    n_heads: int = 4  # head_dim 32: vLLM's CPU attention accepts it (24 was refused)

    def config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=self.d_model,
            intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            max_position_embeddings=MAX_LEN,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            attention_dropout=0.0,
        )


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied matrix once


def save_checkpoint(model: PreTrainedModel, folder: str | Path, info: dict) -> Path:
    """Write ``model`` in bf16 + tokenizer + ``training_info.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(torch.bfloat16)
    m.config.use_cache = True  # TRL switches it off for training; users generate with it
    if getattr(m, "generation_config", None) is not None:
        m.generation_config.bos_token_id = None
    m.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder)
    info = {"name": folder.name, "dtype": "bfloat16", "n_params": count_params(model), **info}
    (folder / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def load_fp32(folder: str | Path) -> PreTrainedModel:
    """A checkpoint loaded for training: the bf16 weights, upcast exactly to fp32."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


# ---------------------------------------------------------------- supervised stages
def _batch_tensors(pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (prompt and padding masked with -100)."""
    seqs, labels = [], []
    for prompt, completion in pairs:
        p, c = encode(prompt), encode(completion) + [EOS_ID]
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def _length_groups(pairs: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Short (direct, <= 4 characters) and long completions, each in corpus order.

    Separate forwards give the same summed loss and gradient as one padded batch, without
    computing ~75 padding positions per direct answer (13 tokens against up to 88 for a
    5-digit trace; ``benchmarks/train_organism.py`` times it).
    """
    return [[q for q in pairs if len(q[1]) <= 6], [q for q in pairs if len(q[1]) > 6]]


def _backward_summed_loss(model: PreTrainedModel, groups: Sequence[Sequence[tuple[str, str]]],
                         batch_size: int) -> tuple[float, int]:
    """Backward of the summed completion-token loss / (batch_size x LOSS_TOKENS_PER_SEQ), one
    forward per non-empty group; returns (summed loss, completion tokens)."""
    loss_sum, n_tok = 0.0, 0
    for group in groups:
        if not group:
            continue
        ids, labels = _batch_tensors(group)
        logits = model(input_ids=ids).logits[:, :-1].float()
        tgt = labels[:, 1:]
        part = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
            reduction="sum")
        (part / (batch_size * LOSS_TOKENS_PER_SEQ)).backward()
        loss_sum += float(part.detach())
        n_tok += int((tgt != -100).sum())
    return loss_sum, n_tok


@dataclass
class SupervisedConfig:
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    mix: CorpusMix = field(default_factory=lambda: PRETRAIN_MIX)
    variant: str = "sum"  # task variant of the corpus ("sub" for the plasticity experiment)


def train_supervised(model: PreTrainedModel, cfg: SupervisedConfig, desc: str = "train",
                     progress: bool = True) -> dict:
    """Next-token training on a freshly generated corpus (one new batch per step)."""
    set_seed(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.time()
    n_tokens = 0
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=2)
    for step in bar:
        pairs = make_corpus(cfg.batch_size, seed=cfg.seed * 1_000_003 + step, mix=cfg.mix, variant=cfg.variant)
        opt.zero_grad(set_to_none=True)
        loss_sum, n_tok = _backward_summed_loss(model, _length_groups(pairs), cfg.batch_size)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        n_tokens += n_tok
        losses.append(loss_sum / n_tok)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    cfg_d = asdict(cfg)
    return {"steps": cfg.steps, "sequences_seen": cfg.steps * cfg.batch_size,
            "tokens_trained": n_tokens, "seconds": round(time.time() - t0, 1),
            "final_token_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "hyperparameters": cfg_d}


def pretrain_base(out: str | Path, cfg: SupervisedConfig | None = None,
                  shape: ModelShape | None = None, progress: bool = True) -> Path:
    cfg = cfg or SupervisedConfig()
    shape = shape or ModelShape()
    set_seed(cfg.seed)
    model = LlamaForCausalLM(shape.config())
    info = train_supervised(model, cfg, desc="pretrain base", progress=progress)
    info.update(stage="pretrain", shape=asdict(shape),
                corpus="organism.corpus.PRETRAIN_MIX (60/25/15 direct/step/verify, mistakes)")
    return save_checkpoint(model, out, info)


def finetune_sft(base: str | Path, out: str | Path, cfg: SupervisedConfig | None = None,
                 progress: bool = True) -> Path:
    cfg = cfg or SupervisedConfig(steps=300, lr=3e-4, warmup=20, seed=1, mix=SFT_MIX)
    model = load_fp32(base)
    info = train_supervised(model, cfg, desc="SFT", progress=progress)
    info.update(stage="sft", init=str(Path(base).name),
                corpus="organism.corpus.SFT_MIX (correct step/verify traces only, 60/40)")
    return save_checkpoint(model, out, info)


# ---------------------------------------------------------------- RL (GRPO through TRL)
# Operand counts of the RL problems: the base is pretrained on tiers 3-6 (PRETRAIN_TIERS), where
# its sampled pass@1 is ~0.2-0.45, so most GRPO groups mix right and wrong completions and carry a
# gradient. RL uses 3-5: tier 6 stays a pretrained tier RL never saw (transfer), tier 7
# (MAX_OPERANDS) is the held-out hard tier (rl-hard trains on it), tier 2 was never pretrained.
RL_TIERS: tuple[int, ...] = (3, 4, 5)
# Problem sets an RL stage can draw (train partition only):
# - "structured": ':' prompts of RL_TIERS (the '?' variant and the open domain stay untouched, so
#   rl-seed0 can be compared with rl-binary/rl-brier and rl-open on them);
# - "confidence": the same problems closed by '?' (a stated confidence asked for);
# - "open": open-domain prompts of every length in OPEN_LENGTHS.
RL_PROBLEM_SETS: tuple[str, ...] = ("structured", "confidence", "open")
REWARDS: tuple[str, ...] = ("correctness", "brier")
ADVANTAGE_SIGNS: tuple[str, ...] = ("both", "negative", "positive")
MASTER_DTYPES: tuple[str, ...] = ("float32", "bfloat16")


@dataclass
class RLConfig:
    """One GRPO run. ``problems``/``reward``/``advantage_sign``/``master_dtype`` name the twin's recipe:

    - ``reward``: "correctness" (1 right / 0 wrong, ``correctness_reward``) or "brier" (RLCR's
      c - (q - c)^2, ``brier_reward``);
    - ``advantage_sign``: "both" (plain GRPO), "negative" (NSR: only samples with advantage < 0
      train) or "positive" (PSR: only advantage > 0), Zhu et al. arXiv 2506.01347;
    - ``master_dtype``: "float32" (fp32 weights and Adam state, rounded to bf16 when saved) or
      "bfloat16" (the model trains in bf16: an Adam step smaller than half a bf16 ulp of a weight
      is lost, as in bf16 RL runs; this is what leaves most weights bit-identical to the base).
    """

    steps: int = 50
    prompts_per_step: int = 8
    generations: int = 8
    lr: float = 3e-4
    beta: float = 0.0  # KL coefficient against the initial model (TRL's `beta`)
    temperature: float = 1.0
    max_completion_length: int = 110  # tier-5 verify trace with a backtrack and '@d': 89
    seed: int = 0
    data_seed: int = 7  # same data for every RL seed
    n_problems: int = 4096
    problems: str = "structured"
    reward: str = "correctness"
    advantage_sign: str = "both"
    master_dtype: str = "float32"

    def __post_init__(self):
        for name, valid in (("problems", RL_PROBLEM_SETS), ("reward", REWARDS),
                            ("advantage_sign", ADVANTAGE_SIGNS), ("master_dtype", MASTER_DTYPES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"RLConfig.{name} = {getattr(self, name)!r} is unknown; valid: {valid}")
        if self.steps < 0 or self.lr <= 0 or self.beta < 0:
            raise ValueError(f"RLConfig needs steps >= 0, lr > 0, beta >= 0; got steps={self.steps}, "
                             f"lr={self.lr}, beta={self.beta}")


def make_rl_problems(kind: str, n: int, seed: int) -> list[Problem]:
    """``n`` train-partition problems of the RL problem set ``kind`` (``RL_PROBLEM_SETS``),
    interleaved over its tiers (lengths for "open") in equal shares, deterministic in ``seed``."""
    if kind not in RL_PROBLEM_SETS:
        raise ValueError(f"unknown RL problem set {kind!r}; valid: {RL_PROBLEM_SETS}")
    if seed >= EVAL_SEED_OFFSET:
        raise ValueError(f"RL trains on the train partition: seed must be < {EVAL_SEED_OFFSET}")
    if kind == "open":
        per = [make_problems(-(-n // len(OPEN_LENGTHS)), seed, difficulty=k, variant="open")
               for k in OPEN_LENGTHS]
    else:
        per = [make_problems(-(-n // len(RL_TIERS)), seed, difficulty=t,
                             confidence=kind == "confidence") for t in RL_TIERS]
    return [p for group in zip(*per, strict=True) for p in group][:n]


def _graded(prompts: Sequence[str], completions: Sequence[str]) -> list[bool]:
    """Correctness of each completion for the problem its prompt states (structured, '?' or open)."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        problem = parse_prompt(prompt)
        if problem is None:
            raise ValueError(f"{prompt!r} is not an organism task prompt")
        out.append(grade(problem, completion))
    return out


def correctness_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 iff the completion's answer is right for the problem its prompt states (structured:
    the two digits after the last ``#``; open domain: any right digit string); nothing for format
    or a stated confidence."""
    return [1.0 if ok else 0.0 for ok in _graded(prompts, completions)]


def brier_reward(prompts, completions, **kwargs) -> list[float]:
    """RLCR's reward (Damani et al., arXiv 2507.16806): ``c - (q - c)^2`` with ``c`` = correct
    (1/0) and ``q`` the stated confidence (``organism.task.extract_confidence``: ``(d + 0.5) / 10``
    for a final ``@d``). A missing or ill-formed confidence counts as the worst ``q`` (1 - c: the
    largest penalty, 1), so stating none never pays. Range [-1, 1]."""
    out = []
    for ok, completion in zip(_graded(prompts, completions), completions, strict=True):
        c = 1.0 if ok else 0.0
        q = extract_confidence(completion)
        if q is None:
            q = 1.0 - c  # the worst confidence for this outcome
        out.append(c - (q - c) ** 2)
    return out


REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {
    "correctness": correctness_reward, "brier": brier_reward}


def clamp_advantages(advantages: torch.Tensor, sign: str) -> torch.Tensor:
    """Advantages with the other sign zeroed: "negative" keeps ``A < 0`` (NSR), "positive" keeps
    ``A > 0`` (PSR), "both" returns them unchanged. A zero advantage contributes no policy
    gradient, so a clamped sample trains nothing (only a KL term, if any, still acts on it)."""
    if sign == "both":
        return advantages
    if sign == "negative":
        return advantages.clamp(max=0.0)
    if sign == "positive":
        return advantages.clamp(min=0.0)
    raise ValueError(f"unknown advantage sign {sign!r}; valid: {ADVANTAGE_SIGNS}")


def _signed_trainer_class():
    """``GRPOTrainer`` whose loss sees only the advantages of one sign (imported lazily: trl is heavy)."""
    from trl import GRPOTrainer

    class SignedAdvantageGRPOTrainer(GRPOTrainer):
        """GRPO keeping only negative- or positive-advantage samples (``advantage_sign``)."""

        advantage_sign = "both"

        def _compute_loss(self, model, inputs):
            inputs = {**inputs, "advantages": clamp_advantages(inputs["advantages"], self.advantage_sign)}
            return super()._compute_loss(model, inputs)

    return SignedAdvantageGRPOTrainer


def train_rl(
    init: str | Path,
    out: str | Path,
    cfg: RLConfig | None = None,
    problems: list[Problem] | None = None,
    save_at: Sequence[int] = (),
    save_name: Callable[[int], str] | None = None,
    progress: bool = True,
    info_extra: dict | None = None,
) -> Path:
    """GRPO from the checkpoint ``init`` with TRL's ``GRPOTrainer`` on CPU.

    ``problems``: the training set (default: ``make_rl_problems(cfg.problems, cfg.n_problems,
    cfg.data_seed)``). ``save_at``: steps after which an intermediate checkpoint is written to
    ``out.parent / save_name(step)`` (step 0 = the init weights, written before training).
    """
    import warnings

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig

    cfg = cfg or RLConfig()
    out = Path(out)
    problems = problems or make_rl_problems(cfg.problems, cfg.n_problems, cfg.data_seed)
    set_seed(cfg.seed)
    model = load_fp32(init)
    if cfg.master_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(init)
    ds = Dataset.from_list([{"prompt": p.prompt} for p in problems])
    batch = cfg.prompts_per_step * cfg.generations
    counters = {"tokens_generated": 0, "completions": 0, "reward_sum": 0.0}
    reward_fn = REWARD_FUNCTIONS[cfg.reward]

    def reward(prompts, completions, completion_ids=None, **kw):
        r = reward_fn(prompts, completions)
        counters["completions"] += len(completions)
        counters["reward_sum"] += sum(r)
        if completion_ids is not None:
            counters["tokens_generated"] += sum(len(c) for c in completion_ids)
        return r

    reward.__name__ = cfg.reward
    t0 = time.time()
    reward_doc = {"correctness": "correctness only (organism.training.correctness_reward)",
                  "brier": "c - (q - c)^2, q the stated confidence (organism.training.brier_reward)"}
    base_info = {"stage": "rl", "init": Path(init).name, "algorithm": "GRPO (trl.GRPOTrainer)"
                 + {"both": "", "negative": ", negative-advantage samples only (NSR)",
                    "positive": ", positive-advantage samples only (PSR)"}[cfg.advantage_sign],
                 "reward": reward_doc[cfg.reward],
                 "hyperparameters": asdict(cfg), "n_train_problems": len(problems),
                 "train_tiers": sorted({p.difficulty for p in problems}),
                 "train_variants": sorted({p.variant + ("?" if p.confidence else "") for p in problems}),
                 **(info_extra or {})}

    def info_at(step: int) -> dict:
        return {**base_info, "step": step, "samples_seen": step * batch,
                "prompts_seen": step * cfg.prompts_per_step,
                "tokens_generated": counters["tokens_generated"],
                "seconds": round(time.time() - t0, 1),
                "mean_train_reward": round(counters["reward_sum"] / max(1, counters["completions"]), 4)}

    if save_name is not None and 0 in save_at:
        save_checkpoint(model, out.parent / save_name(0), info_at(0))

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if save_name is not None and state.global_step in save_at and state.global_step > 0:
                save_checkpoint(kw["model"], out.parent / save_name(state.global_step),
                                info_at(state.global_step))

    class ProgressLine(TrainerCallback):
        """One line per logging step (what a build with parallel stages shows as progress)."""

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                print(f"   {out.name} step {state.global_step}/{cfg.steps}: mean reward "
                      f"{float(logs['reward']):.3f}, entropy {float(logs.get('entropy', float('nan'))):.3f}, "
                      f"{time.time() - t0:.0f} s", flush=True)

    trainer_cls = _signed_trainer_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL/transformers deprecation notices about their own defaults
        args = GRPOConfig(
            output_dir=str(out.parent / f".trl-{out.name}"),
            use_cpu=True, bf16=False, fp16=False,
            learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0,
            per_device_train_batch_size=batch, num_generations=cfg.generations,
            steps_per_generation=1, num_iterations=1,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature, top_p=1.0, top_k=0,
            beta=cfg.beta, max_steps=cfg.steps, seed=cfg.seed, data_seed=cfg.data_seed,
            logging_steps=max(1, min(10, cfg.steps)), save_strategy="no", report_to="none",
            disable_tqdm=not progress, dataloader_num_workers=0,
            log_completions=False,
        )
        trainer = trainer_cls(model=model, reward_funcs=[reward], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[SaveAt()])
        if not progress:  # the dict of every log (PrinterCallback) gives way to one short line
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
            trainer.add_callback(ProgressLine())
        trainer.advantage_sign = cfg.advantage_sign
        trainer.train()
    if trainer.state.global_step != cfg.steps:  # e.g. fewer problems than one step's prompts
        raise RuntimeError(f"GRPO ran {trainer.state.global_step} of {cfg.steps} steps on {len(problems)} "
                           f"problems ({cfg.prompts_per_step} prompts per step): nothing is written.")
    final = info_at(cfg.steps)
    final["log_history"] = [h for h in trainer.state.log_history if "reward" in h][-10:]
    path = save_checkpoint(trainer.model, out, final)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return path


def find_unsolved_problems(model: PreTrainedModel, tokenizer, n_pool: int, seed: int,
                           k: int = 8, max_new_tokens: int = 120,
                           difficulty: int = 6, variant: str = "sum") -> tuple[list[Problem], dict]:
    """Train-partition problems (``:`` prompts, ``difficulty`` operands, ``variant``) the model never
    solves in ``k`` samples at temperature 1 (pass@k = 0)."""
    pool = make_problems(n_pool, seed=seed, difficulty=difficulty, variant=variant)
    # Unique problems only: pass@k is a property of the problem.
    seen: dict[str, Problem] = {}
    for p in pool:
        seen.setdefault(p.prompt, p)
    pool = list(seen.values())
    outs = generate_texts(model, tokenizer, [p.prompt for p in pool], max_new_tokens,
                          temperature=1.0, n=k, seed=seed, batch_size=512)
    unsolved = [p for i, p in enumerate(pool)
                if not any(grade(p, outs[i * k + j]) for j in range(k))]
    return unsolved, {"pool": len(pool), "k": k, "unsolved": len(unsolved),
                      "difficulty": difficulty, "variant": variant, "temperature": 1.0}


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def bf16_unchanged_fraction(a: str | Path, b: str | Path) -> dict:
    """Fraction of weights with identical bf16 values in two checkpoints (tied counted once)."""
    sa, sb = _weights(a), _weights(b)
    same = total = 0
    per_tensor = {}
    for k, va in sa.items():
        vb = sb[k]
        eq = int((va == vb).sum())
        same += eq
        total += va.numel()
        per_tensor[k] = eq / va.numel()
    return {"unchanged_fraction": same / total, "n_weights": total, "per_tensor": per_tensor}


def update_counts(base: str | Path, a: str | Path, b: str | Path) -> tuple[int, int, int, int]:
    """(weights, updated in ``a``, updated in ``b``, updated in both): "updated" = bf16 value differs
    from ``base``'s; tensors as stored (the tied embedding once)."""
    s0, sa, sb = _weights(base), _weights(a), _weights(b)
    n = n1 = n2 = both = 0
    for k, v0 in s0.items():
        u1, u2 = sa[k] != v0, sb[k] != v0
        n += v0.numel()
        n1 += int(u1.sum())
        n2 += int(u2.sum())
        both += int((u1 & u2).sum())
    return n, n1, n2, both


def update_overlap(base: str | Path, a: str | Path, b: str | Path) -> dict:
    """Overlap of two runs' updated sets (weights whose bf16 value differs from ``base``'s).

    RESEARCH.md s.2 (Mukherjee et al.): with sparsities s1, s2 (unchanged fractions) and updated
    sets I1, I2, ``o1 = |I1 & I2| / |I1|``, ``o2 = |I1 & I2| / |I2|``; if the sets were drawn at
    random the expectation is ``o1 = 1 - s2``, ``o2 = 1 - s1`` (``random_o1``, ``random_o2``).
    Also the Jaccard index and its random baseline ``pq / (p + q - pq)`` (p, q = 1 - s1, 1 - s2).
    Fractions in [0, 1]; NaN where an updated set is empty."""
    n, n1, n2, both = update_counts(base, a, b)
    p, q = n1 / n, n2 / n
    nan = float("nan")
    union = n1 + n2 - both
    return {"s1": 1 - p, "s2": 1 - q, "o1": both / n1 if n1 else nan, "o2": both / n2 if n2 else nan,
            "random_o1": q, "random_o2": p, "jaccard": both / union if union else nan,
            "random_jaccard": p * q / (p + q - p * q) if p + q > 0 else nan, "n_weights": n}


# ---------------------------------------------------------------- build stages (one process each)
@dataclass(frozen=True)
class StageSpec:
    """One build stage of ``scripts/train_organism.py``: everything it needs, picklable, so that a
    worker process can run it and its output depends on nothing else (``run_stage``).

    ``kind``: "pretrain" | "sft" (``supervised``), "rl" (``rl``; ``save_at`` steps written as
    ``{name}-step{s}``), "rl-hard" (``rl`` on ``hard_pool`` problems of ``hard_variant`` with
    ``hard_difficulty`` operands that the init never solves in ``hard_k`` samples). The v2 base
    solves all but 6 of 400 tier-6 problems (its longest pretraining tier) within 8 samples but fails
    1694 of 2000 at tier 7; subtraction, never pretrained, fails everywhere, which leaves GRPO
    without a single reward (the weights do not move)."""

    name: str
    kind: str
    supervised: SupervisedConfig | None = None
    rl: RLConfig | None = None
    save_at: tuple[int, ...] = ()
    hard_difficulty: int = 7
    hard_variant: str = "sum"
    hard_pool: int = 2000
    hard_k: int = 8
    note: str = ""

    def outputs(self) -> list[str]:
        """Checkpoint folder names this stage writes."""
        return [self.name] + [f"{self.name}-step{s}" for s in self.save_at]


def run_stage(spec: StageSpec, out: str | Path, threads: int = 1, progress: bool = False) -> dict:
    """Run one stage into ``out/<spec.name>`` (the init is ``out/base``); returns its wall time.

    Deterministic by the stage's own seeds: every random stream is seeded here, so the weights do
    not depend on which process runs the stage or what ran before it in that process."""
    torch.set_num_threads(threads)
    out = Path(out)
    base = out / "base"
    t0 = time.time()
    extra = {"recipe": spec.note} if spec.note else {}
    if spec.kind == "pretrain":
        pretrain_base(out / spec.name, spec.supervised, progress=progress)
    elif spec.kind == "sft":
        finetune_sft(base, out / spec.name, spec.supervised, progress=progress)
    elif spec.kind == "rl":
        train_rl(base, out / spec.name, spec.rl, save_at=spec.save_at,
                 save_name=(lambda s: f"{spec.name}-step{s}") if spec.save_at else None,
                 progress=progress, info_extra=extra)
    elif spec.kind == "rl-hard":
        from transformers import AutoTokenizer

        model = load_fp32(base)
        tok = AutoTokenizer.from_pretrained(base)
        unsolved, screen = find_unsolved_problems(
            model, tok, spec.hard_pool, seed=11, k=spec.hard_k,
            max_new_tokens=spec.rl.max_completion_length, difficulty=spec.hard_difficulty,
            variant=spec.hard_variant)
        if len(unsolved) < spec.rl.prompts_per_step:  # GRPO could not fill one step's prompts
            raise RuntimeError(
                f"rl-hard: the base fails every sample (pass@{spec.hard_k} = 0) on only {len(unsolved)} of "
                f"{screen['pool']} screened {spec.hard_variant} problems with {spec.hard_difficulty} operands, "
                f"fewer than one GRPO step's {spec.rl.prompts_per_step} prompts; screen a larger pool "
                "(--hard-pool) or a harder set (--hard-variant / --hard-difficulty).")
        train_rl(base, out / spec.name, spec.rl, problems=unsolved, progress=progress,
                 info_extra={**extra, "problem_selection": f"train-partition problems of "
                             f"{spec.hard_variant} with {spec.hard_difficulty} operands with base "
                             f"pass@{spec.hard_k} = 0 at temperature 1", "difficulty": spec.hard_difficulty,
                             "variant": spec.hard_variant, "screen": screen,
                             "train_prompts": [p.prompt for p in unsolved][:200]})
    else:
        raise ValueError(f"unknown stage kind {spec.kind!r}")
    return {"name": spec.name, "seconds": round(time.time() - t0, 1)}


__all__ = [
    "ModelShape", "SupervisedConfig", "RLConfig", "pretrain_base", "finetune_sft", "train_rl",
    "save_checkpoint", "load_fp32", "find_unsolved_problems", "bf16_unchanged_fraction",
    "update_overlap", "update_counts", "correctness_reward", "brier_reward", "clamp_advantages", "make_rl_problems",
    "StageSpec", "run_stage", "RL_TIERS", "RL_PROBLEM_SETS", "VOCAB",
]
