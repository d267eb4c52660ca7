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
from organism.task import Problem, extract_answer, grade, make_problems
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
    steps: int = 1500
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
@dataclass
class RLConfig:
    steps: int = 50
    prompts_per_step: int = 8
    generations: int = 8
    lr: float = 3e-4
    beta: float = 0.0  # KL coefficient against the initial model (TRL's `beta`)
    temperature: float = 1.0
    max_completion_length: int = 100
    seed: int = 0
    data_seed: int = 7  # same data for every RL seed
    n_problems: int = 4096


def correctness_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 iff the answer after the last ``#`` is right; nothing for format."""
    return [1.0 if extract_answer(c) == int(a) else 0.0
            for c, a in zip(completions, answer, strict=True)]


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

    ``save_at``: steps after which an intermediate checkpoint is written to
    ``out.parent / save_name(step)`` (step 0 = the init weights, written before training).
    """
    import warnings

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg = cfg or RLConfig()
    out = Path(out)
    problems = problems or make_problems(cfg.n_problems, seed=cfg.data_seed)
    set_seed(cfg.seed)
    model = load_fp32(init)
    tok = AutoTokenizer.from_pretrained(init)
    ds = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])
    batch = cfg.prompts_per_step * cfg.generations
    counters = {"tokens_generated": 0, "completions": 0, "reward_sum": 0.0}

    def reward(prompts, completions, answer, completion_ids=None, **kw):
        r = correctness_reward(prompts, completions, answer)
        counters["completions"] += len(completions)
        counters["reward_sum"] += sum(r)
        if completion_ids is not None:
            counters["tokens_generated"] += sum(len(c) for c in completion_ids)
        return r

    reward.__name__ = "correctness"
    t0 = time.time()
    base_info = {"stage": "rl", "init": Path(init).name, "algorithm": "GRPO (trl.GRPOTrainer)",
                 "reward": "correctness only (answer after the last '#')",
                 "hyperparameters": asdict(cfg), "n_train_problems": len(problems),
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
        logging_steps=10, save_strategy="no", report_to="none",
        disable_tqdm=not progress, dataloader_num_workers=0,
        log_completions=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[SaveAt()])
        trainer.train()
    final = info_at(cfg.steps)
    final["log_history"] = [h for h in trainer.state.log_history if "reward" in h][-10:]
    path = save_checkpoint(trainer.model, out, final)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return path


def find_unsolved_problems(model: PreTrainedModel, tokenizer, n_pool: int, seed: int,
                           k: int = 8, max_new_tokens: int = 100,
                           difficulty: int = 5) -> tuple[list[Problem], dict]:
    """Train-partition problems the model never solves in ``k`` samples (pass@k = 0)."""
    pool = make_problems(n_pool, seed=seed, difficulty=difficulty)
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
                      "difficulty": difficulty, "temperature": 1.0}


def bf16_unchanged_fraction(a: str | Path, b: str | Path) -> dict:
    """Fraction of weights with identical bf16 values in two checkpoints (tied counted once)."""
    sa, sb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    same = total = 0
    per_tensor = {}
    for k, va in sa.items():
        vb = sb[k]
        eq = int((va == vb).sum())
        same += eq
        total += va.numel()
        per_tensor[k] = eq / va.numel()
    return {"unchanged_fraction": same / total, "n_weights": total, "per_tensor": per_tensor}


__all__ = [
    "ModelShape", "SupervisedConfig", "RLConfig", "pretrain_base", "finetune_sft", "train_rl",
    "save_checkpoint", "load_fp32", "find_unsolved_problems", "bf16_unchanged_fraction",
    "correctness_reward", "VOCAB",
]
