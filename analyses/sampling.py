"""The sampling engine: n samples per problem from one model or a family, scored under every
model of the family, saved as JSONL (one row per sample) and resumable.

Randomness: each (problem id, sample index) draws from its own generator seeded by
(seed, problem id, sample index) (``hooks.generate`` with ``row_ids``), so a resumed run gives
exactly the rows an uninterrupted one would, whatever the batch composition. Models sampled
with the same seed share those random numbers (common random numbers: paired comparisons
have less noise).

Log-probs are under each model's own next-token distribution (temperature 1, no top-p), from
one teacher-forced forward of ``model.hf`` over prompt + completion: what the model believes,
not the tempered sampling distribution.

Engines (``engine=``): "hf", the kit's KV-cached loop (``hooks.generate``, the reference), or
"vllm" (``hooks.vllm_engine``: same per-row seeds, greedy tokens equal to the HF loop's,
samples from vLLM's own random stream). Scorers (``scorer=``): "hf", the teacher-forced forward
above, or "vllm" (vLLM prompt_logprobs: the same numbers within 1e-4, tested). The samples'
metadata records both (``engine``, ``scored_by``) and resuming refuses a file made by another.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from analyses.task import Task, TaskProblem, prompt_id
from hooks.cluster import RayCluster, as_cluster, load_model_on_worker, model_spec
from hooks.errors import TwinlensError
from hooks.generation import hf_has_hooks, pad_token_id
from hooks.interventions import forward_layout, right_padded_layout
from hooks.validation import check_int, check_positive_int, check_temperature, check_top_p

META_SUFFIX = ".meta.json"
# Settings that must match for rows on disk to be reused.
_RESUME_KEYS = ("temperature", "top_p", "max_new_tokens", "seed", "task", "scored_with", "engine", "scored_by")
# Values a key had before it was recorded (files written before engines existed).
_RESUME_DEFAULTS = {"engine": "hf", "scored_by": "hf"}
ENGINES = ("hf", "vllm")
# Rows per vLLM call between disk writes: large enough that vLLM's own batching is not starved.
VLLM_ROWS_PER_CALL = 2048


@dataclass
class SampleRow:
    """One sample. Spans are [start, end) in completion tokens."""

    model: str  # label of the model that sampled it
    problem_id: str
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    logprobs: dict[str, list[float]]  # model label -> log p(token) per completion token
    finished: bool  # ended with eos (False: cut at max_new_tokens)
    correct: bool | None = None
    answer: Any = None
    reference: Any = None
    format: str | None = None
    strategy_spans: list[list] = field(default_factory=list)  # [strategy, start, end]
    answer_span: list[int] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model, self.problem_id, self.sample_index)

    def token_labels(self, none: str = "none") -> list[str]:
        """One label per completion token: its strategy, "answer", or ``none``."""
        labels = [none] * len(self.completion_ids)
        for name, s, e in self.strategy_spans:
            labels[s:e] = [name] * (e - s)
        if self.answer_span is not None:
            s, e = self.answer_span
            labels[s:e] = ["answer"] * (e - s)
        return labels


@dataclass
class Samples:
    """Rows of samples (ordered by model, problem, sample index) and the settings used."""

    rows: list[SampleRow]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    @property
    def problem_ids(self) -> list[str]:
        return list(dict.fromkeys(r.problem_id for r in self.rows))

    def for_model(self, model: str) -> Samples:
        rows = [r for r in self.rows if r.model == model]
        if not rows:
            raise TwinlensError(f"No samples from model {model!r}; models present: {self.models}.")
        return Samples(rows, self.meta, self.path)

    def by_problem(self, model: str, attr: str = "correct") -> dict[str, list]:
        """problem id -> [row.attr for each sample], samples in index order."""
        out: dict[str, list] = {}
        for r in self.for_model(model).rows:
            out.setdefault(r.problem_id, []).append(getattr(r, attr))
        return out

    def references(self) -> dict[str, Any]:
        return {r.problem_id: r.reference for r in self.rows}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Samples:
        path = Path(path)
        if not path.exists():
            raise TwinlensError(f"No samples file at {path}; create it with analyses.sampling.sample(..., out=path).")
        meta_path = Path(str(path) + META_SUFFIX)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(_read_rows(path), meta, path)


def _read_rows(path: Path) -> list[SampleRow]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # a line cut by an interrupt; repaired before the next append
            rows.append(SampleRow(**json.loads(line)))
    return rows


def _repair_tail(path: Path) -> None:
    """Drop a trailing partial line (an interrupted write) so appends stay one row a line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def as_model_family(models: Any) -> dict[str, Any]:
    """Model | ModelPair | {label: Model} -> {label: Model}; refuses different tokenizers."""
    if hasattr(models, "models") and isinstance(models.models, Mapping):
        family = dict(models.models)  # ModelPair
    elif isinstance(models, Mapping):
        family = dict(models)
    elif hasattr(models, "hf") and hasattr(models, "tokenizer"):
        family = {Path(str(models.name)).name or "model": models}
    else:
        raise TwinlensError(
            f"Expected a Model, a ModelPair or a {{label: Model}} dict, got {type(models).__name__}."
        )
    if not family:
        raise TwinlensError("No models given.")
    first_label, first = next(iter(family.items()))
    vocab = first.tokenizer.get_vocab()
    for label, m in family.items():
        if m.tokenizer.get_vocab() != vocab or m.tokenizer.eos_token_id != first.tokenizer.eos_token_id:
            raise TwinlensError(
                f"Models {first_label!r} and {label!r} have different tokenizers; per-token "
                "log-probs and KL need one shared vocabulary. Compare checkpoints trained from "
                "the same base (same tokenizer)."
            )
    return family


def as_problems(problems: Sequence[TaskProblem | str]) -> list[TaskProblem]:
    if problems is None or len(problems) == 0:
        raise TwinlensError("No problems given; pass at least one problem or prompt (e.g. task.problems(100)).")
    out = [p if isinstance(p, TaskProblem) else TaskProblem(id=prompt_id(str(p)), prompt=str(p)) for p in problems]
    seen: set[str] = set()
    for p in out:
        if p.id in seen:
            raise TwinlensError(f"Problem id {p.id!r} occurs twice; ids key the samples on disk and must be unique.")
        seen.add(p.id)
    return out


def _padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


# Positions whose full-vocabulary log-softmax is held at once: 256 x 152k vocab x 4 bytes x ~3
# live copies (logits, log-softmax, float32 cast) ~ 0.5 GB at most, whatever the batch and length.
LOGPROB_CHUNK = 256


def output_logits(model: Any, hidden: Tensor) -> Tensor:
    """The LM head of ``model.hf`` on final hidden states (after the final norm), with the
    post-processing HF's own forward applies for the architectures that have one: Gemma 2's
    ``final_logit_softcapping`` (tanh(z / c) * c), Cohere's ``logit_scale`` (z * s), Granite's
    ``logits_scaling`` (z / s). Equals ``model.hf(...).logits`` at those positions (tests check
    GPT-2, Llama, Qwen2, Gemma 2 with soft-capping, and SmolLM2)."""
    hf = model.hf
    z = hf.get_output_embeddings()(hidden)
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    scale = getattr(cfg, "logit_scale", None)
    if isinstance(scale, (int, float)):
        z = z * scale
    scaling = getattr(cfg, "logits_scaling", None)
    if isinstance(scaling, (int, float)):
        z = z / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


@torch.no_grad()
def iter_logprob_chunks(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    chunk: int = LOGPROB_CHUNK,
) -> Iterator[tuple[int, int, Tensor]]:
    """For each (prompt, completion), the model's log-softmax next-token distributions at the
    positions that predict the completion tokens, ``chunk`` positions at a time:
    yields (row index, first completion position of the chunk, Float[Tensor, "n vocab"] float32
    on the model's device), rows in order, a row's chunks in order.

    One teacher-forced forward of the model body per batch (right padding; causal attention:
    the padding never reaches a real token) gives the final hidden states; the LM head and the
    log-softmax run on ``chunk`` positions at a time (``output_logits``), so peak memory is
    chunk x vocab, not batch x length x vocab."""
    if len(prompt_ids) != len(completion_ids):
        raise TwinlensError("One completion per prompt is needed.")
    if chunk < 1:
        raise TwinlensError(f"chunk (positions per log-softmax) must be >= 1, got {chunk}.")
    pad = pad_token_id(model.tokenizer)
    body = model.hf.base_model
    empty = torch.empty(0, model.hf.get_output_embeddings().weight.shape[0])
    for start in range(0, len(prompt_ids), batch_size):
        ps = prompt_ids[start : start + batch_size]
        cs = completion_ids[start : start + batch_size]
        if all(len(c) == 0 for c in cs):
            for r in range(len(ps)):
                yield start + r, 0, empty
            continue
        seqs = [list(p) + list(c) for p, c in zip(ps, cs, strict=True)]
        ids, mask = _padded(seqs, pad)
        layout = right_padded_layout([len(q) for q in seqs], ids.shape[1], start, len(prompt_ids))
        with forward_layout(model, layout):  # open interventions act at absolute positions
            hidden = body(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
        for r, (p, c) in enumerate(zip(ps, cs, strict=True)):
            if len(c) == 0:
                yield start + r, 0, empty
            for c0 in range(0, len(c), chunk):
                c1 = min(len(c), c0 + chunk)
                h = hidden[r, len(p) - 1 + c0 : len(p) - 1 + c1]
                yield start + r, c0, torch.log_softmax(output_logits(model, h).float(), dim=-1)
        del hidden


def iter_completion_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> Iterator[Tensor]:
    """For each (prompt, completion), the model's log-softmax next-token distributions at the
    positions that predict the completion tokens: Float[Tensor, "completion vocab"] (float32,
    on CPU), from ``iter_logprob_chunks`` (one row's distributions held at a time)."""
    row, parts = None, []
    for r, _, lp in iter_logprob_chunks(model, prompt_ids, completion_ids, batch_size):
        if r != row and row is not None:
            yield torch.cat(parts).cpu() if len(parts) > 1 else parts[0].cpu()
            parts = []
        row = r
        parts.append(lp)
    if row is not None:
        yield torch.cat(parts).cpu() if len(parts) > 1 else parts[0].cpu()


def score_completions(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    chunk: int = LOGPROB_CHUNK,
) -> list[list[float]]:
    """log p(completion token | prefix) under ``model``, per token (teacher forcing; natural
    log, untempered). Gathered ``chunk`` positions at a time (``iter_logprob_chunks``): peak
    memory ~ chunk x vocab floats beside the hidden states, not batch x length x vocab."""
    out: list[list[float]] = [[] for _ in completion_ids]
    for r, c0, lp in iter_logprob_chunks(model, prompt_ids, completion_ids, batch_size, chunk):
        if lp.numel() == 0:
            continue
        idx = torch.tensor(list(completion_ids[r][c0 : c0 + lp.shape[0]]), dtype=torch.long, device=lp.device)
        out[r] += lp.gather(-1, idx[:, None]).squeeze(-1).tolist()
    return out


def char_spans_to_tokens(
    tokenizer: Any, ids: Sequence[int], spans: Sequence[tuple[str, int, int]]
) -> list[list]:
    """Character spans of ``completion_text(tokenizer, ids)`` -> ``[name, start, end)`` token
    spans (a span takes every token it overlaps), through the kit's one mapping
    (probes.labels.token_char_offsets: the tokenizer's offsets; special tokens never shift)."""
    from probes.labels import token_char_offsets

    _, offsets = token_char_offsets(tokenizer, ids)
    return spans_through_offsets(spans, offsets)


def spans_through_offsets(spans: Sequence[tuple[str, int, int]], offsets: Sequence[tuple[int, int]]) -> list[list]:
    from probes.labels import char_spans_to_token_spans

    return [[t.strategy, t.start, t.end] for t in char_spans_to_token_spans(spans, offsets)]


def completion_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of a completion as every job sees it: special tokens skipped (the one decode
    convention of probes.labels.token_char_offsets, so character spans in it map back)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def _annotate(row: SampleRow, problem: TaskProblem, task: Task | None, tokenizer: Any) -> None:
    row.reference = problem.answer
    if task is None:
        return
    from probes.labels import token_char_offsets

    offsets = None
    if not (task.char_tokens and len(row.text) == len(row.completion_ids)):
        # Text and offsets from one decode: labels and answer spans land on the tokens they
        # were found in, whatever special tokens sit inside the completion.
        row.text, offsets = token_char_offsets(tokenizer, row.completion_ids)
    text = row.text
    row.answer = task.extract_answer(text)
    # a grader's None (no reference answer, e.g. a problems file without them): not graded, not wrong
    graded = task.grade(problem, text)
    row.correct = None if graded is None else bool(graded)
    row.format = task.classify_format(text)
    spans = list(task.label_strategies(text))
    ans = task.answer_span(text)
    if offsets is None:  # a character tokenizer: character spans are token spans
        row.strategy_spans = [[n, s, e] for n, s, e in spans]
        row.answer_span = list(ans) if ans else None
    else:
        row.strategy_spans = spans_through_offsets(spans, offsets)
        mapped = spans_through_offsets([("answer", *ans)], offsets) if ans else []
        row.answer_span = mapped[0][1:] if mapped else None


def _check_meta(path: Path, meta: dict) -> dict:
    """The settings saved beside `path` ({} if none); refuses settings that differ from `meta`."""
    meta_path = Path(str(path) + META_SUFFIX)
    if not meta_path.exists():
        return {}
    old = json.loads(meta_path.read_text())
    diffs = [k for k in _RESUME_KEYS if old.get(k, _RESUME_DEFAULTS.get(k)) != meta.get(k)]
    for label, h in meta["weights"].items():
        if label in old.get("weights", {}) and old["weights"][label] != h:
            diffs.append(f"weights of {label!r}")
    if diffs:
        raise TwinlensError(
            f"{path} holds samples made with other settings ({', '.join(diffs)}); resuming would "
            "mix them. Use another output path, or delete the file to start over."
        )
    return old


def _one_writer_per_file(fn: Callable[..., Samples]) -> Callable[..., Samples]:
    """Around sample(out=path): one writer per samples file (``.<name>.lock`` beside it, held with
    hooks.locking's flock), so two runs appending to one file at once (two notebooks, a job and a
    notebook) are refused with the owner's pid instead of writing every row twice; a write that
    fails for space or permissions is a TwinlensError saying how many rows were kept (jobdir)."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Samples:
        out = kwargs.get("out")
        if out is None:
            return fn(*args, **kwargs)
        from analyses.jobdir import write_failure
        from hooks.locking import WRITE_ERRNOS, FolderLock

        path = Path(out)
        with FolderLock(path.parent, what="sample", name=f".{path.name}.lock"):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                if exc.errno in WRITE_ERRNOS:
                    raise write_failure(path.parent, exc) from None
                raise

    return locked


@_one_writer_per_file
def sample(
    models: Any,
    problems: Sequence[TaskProblem | str],
    n: int,
    *,
    task: Task | None = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    sample_from: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    cluster: RayCluster | str | bool | None = None,
    engine: str = "hf",
    scorer: str | None = None,
) -> Samples:
    """Draw ``n`` samples per problem from each model in ``sample_from`` (default: all).

    models: a Model, a ModelPair (labels "base", "rl") or {label: Model}; every sample is
    scored under every model given. task: grades, classifies formats and labels strategies
    (None: text and log-probs only). out: JSONL path; rows already there (key: model, problem
    id, sample index) are kept and not redrawn, so an interrupted run resumes. Returns the
    requested rows, ordered by model, problem, sample index.
    cluster: a hooks.cluster.RayCluster (or a Ray address, or True) to sample on Ray actors that
    each hold the models; the rows, and the file, are those of a run in this process.

    engine: "hf" (the kit's loop; batch_size rows per batch, None: chosen from the memory a
    batch's KV cache needs, ``hooks.generation.default_batch_size``) or "vllm" (batch_size rows
    per call, default VLLM_ROWS_PER_CALL; in this process only, not with a cluster). scorer: "hf"
    (teacher forcing) or "vllm" (prompt_logprobs); default: the engine's. Unknown names, a
    missing vLLM, or vLLM with a cluster raise TwinlensError before any model is run.
    """
    from hooks.generation import default_batch_size

    check_engine(engine)
    scorer = check_engine(scorer if scorer is not None else engine, what="scorer")
    if cluster and "vllm" in (engine, scorer):
        raise TwinlensError("engine/scorer 'vllm' runs in this process (one vLLM worker per model); "
                            "sample with cluster=None, or with engine='hf' and scorer='hf' on the cluster.")
    cluster = as_cluster(cluster)
    family = as_model_family(models)
    specs = {k: model_spec(m, cluster.gpus_per_worker > 0) for k, m in family.items()} if cluster else None
    probs = as_problems(problems)
    # checked here, before the settings file is written or any model samples
    n = check_positive_int("n (samples per problem)", n)
    temperature, top_p = check_temperature(temperature), check_top_p(top_p)
    seed = check_int("seed", seed)
    if batch_size is not None:  # None: chosen below from memory (HF) or VLLM_ROWS_PER_CALL
        batch_size = check_positive_int("batch_size", batch_size)
    if max_new_tokens is not None:
        max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    labels = list(sample_from) if sample_from is not None else list(family)
    unknown = [m for m in labels if m not in family]
    if unknown:
        raise TwinlensError(f"sample_from names {unknown}, not among the models {list(family)}.")
    if max_new_tokens is None:
        max_new_tokens = task.max_new_tokens if task is not None else 256
    meta = {
        "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
        "task": task.name if task is not None else None, "scored_with": sorted(family),
        "weights": {k: m.weight_hash for k, m in family.items()},
        "models": {k: str(m.path) for k, m in family.items()},
        "logprobs": "log p under each model's untempered next-token distribution "
                    + ("(teacher forcing)" if scorer == "hf" else "(vLLM prompt_logprobs)"),
        "engine": engine, "scored_by": scorer,
    }
    done: dict[tuple[str, str, int], SampleRow] = {}
    path = Path(out) if out is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = _check_meta(path, meta)
        if path.exists():
            _repair_tail(path)
            done = {r.key: r for r in _read_rows(path)}
        _write_meta(path, {**meta, "weights": {**old.get("weights", {}), **meta["weights"]},
                           "models": {**old.get("models", {}), **meta["models"]}})
    encoded = {p.id: _encode(family[labels[0]], p.prompt) for p in probs}
    longest = max(len(ids) for ids in encoded.values()) + max_new_tokens
    engines: dict[str, Any] = {}
    if "vllm" in (engine, scorer):
        from hooks.vllm_engine import get_engine

        served = list(dict.fromkeys((labels if engine == "vllm" else []) + (list(family) if scorer == "vllm" else [])))
        for label in served:  # every check before the first engine starts
            check_vllm_context(family[label], longest, scorer == "vllm")
            if hf_has_hooks(family[label].hf):
                raise TwinlensError(f"An intervention is hooked on {label!r}; vLLM runs the checkpoint as "
                                    "saved and would ignore it. Use engine='hf' and scorer='hf'.")
        for label in served:
            engines[label] = get_engine(family[label])
        meta["vllm"] = {label: e.describe() for label, e in engines.items()}
        if path is not None:
            _write_meta(path, {**json.loads(Path(str(path) + META_SUFFIX).read_text()), "vllm": meta["vllm"]})
    if batch_size is None:
        batch_size = (VLLM_ROWS_PER_CALL if engine == "vllm"
                      else min(default_batch_size(family[label], longest) for label in labels))
    score_batch = max(1, batch_size // 2) if engine == "hf" else 32
    # Problems per generate call: about one batch of rows, so progress and disk writes are regular.
    # The groups are the same with or without a cluster (same batches: same numbers).
    chunk = max(1, batch_size // n)
    groups: list[_Group] = []
    for label in labels:
        todo = [p for p in probs if any((label, p.id, j) not in done for j in range(n))]
        for start in range(0, len(todo), chunk):
            group = todo[start : start + chunk]
            groups.append(_Group(label, group, [encoded[p.id] for p in group],
                                 frozenset((p.id, j) for p in group for j in range(n) if (label, p.id, j) in done)))
    draw = functools.partial(_draw_group, n=n, temperature=temperature, top_p=top_p,
                             max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, task=task,
                             engine=engine, scorer=scorer, engines=engines, score_batch=score_batch)
    if cluster is None:
        bar = tqdm(total=sum(len(g.problems) for g in groups), desc="sample", disable=not progress or not groups,
                   leave=False)
        results = ((i, draw(family, g)) for i, g in enumerate(groups))
    else:
        bar = tqdm(disable=True)
        setup = functools.partial(_load_family, specs)
        results = cluster.map(setup, draw, groups, desc="sample (ray)", weights=[len(g.problems) for g in groups],
                              progress=progress, unit="problem")
    for i, new in results:
        for r in new:
            done[r.key] = r
        if path is not None and new:
            with open(path, "a", encoding="utf-8") as fh:
                for r in new:
                    fh.write(json.dumps(asdict(r)) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        bar.update(len(groups[i].problems))
    bar.close()
    rows = [done[(label, p.id, j)] for label in labels for p in probs for j in range(n)]
    return Samples(rows, meta, path)


@dataclass(frozen=True)
class _Group:
    """Problems sampled in one generate call: the unit of work (in process or on a cluster)."""

    label: str  # the model that samples
    problems: list[TaskProblem]
    prompt_ids: list[list[int]]
    skip: frozenset  # (problem id, sample index) already on disk


def _draw_group(family: Mapping[str, Any], group: _Group, *, n: int, temperature: float, top_p: float,
                max_new_tokens: int, seed: int, batch_size: int, task: Task | None,
                engine: str = "hf", scorer: str = "hf", engines: Mapping[str, Any] | None = None,
                score_batch: int | None = None) -> list[SampleRow]:
    """Sample, score under every model and annotate the rows of one group. Rows depend only on
    the group and the settings (seeds per (problem id, sample index)), not on where it runs.
    engine / scorer "vllm": through ``engines`` ({label: hooks.vllm_engine.VLLMEngine}); "hf":
    the HF loop / the teacher-forced scorer (score_batch rows a forward)."""
    from hooks import generate

    tokenizer = next(iter(family.values())).tokenizer
    row_ids = [p.id for p in group.problems]
    if engine == "vllm":
        from hooks.vllm_engine import generate_vllm

        drawn = generate_vllm(family[group.label], group.prompt_ids, max_new_tokens, temperature=temperature,
                              top_p=top_p, n=n, seed=seed, row_ids=row_ids, engine=engines[group.label])
    else:
        drawn = [(c, len(c) < max_new_tokens) for c in generate(
            family[group.label], group.prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p,
            n=n, seed=seed, batch_size=batch_size, row_ids=row_ids,
        )]
    new: list[SampleRow] = []
    for i, p in enumerate(group.problems):
        for j in range(n):
            if (p.id, j) in group.skip:
                continue
            comp, finished = drawn[i * n + j]
            new.append(SampleRow(
                model=group.label, problem_id=p.id, sample_index=j, prompt_ids=group.prompt_ids[i],
                completion_ids=list(comp), text=completion_text(tokenizer, comp),
                logprobs={}, finished=finished,
            ))
    for name, m in family.items():
        ps, cs = [r.prompt_ids for r in new], [r.completion_ids for r in new]
        scores = (engines[name].score(ps, cs) if scorer == "vllm"
                  else score_completions(m, ps, cs, batch_size=score_batch or max(1, batch_size // 2)))
        for r, s in zip(new, scores, strict=True):
            r.logprobs[name] = s
    by_id = {p.id: p for p in group.problems}
    for r in new:
        _annotate(r, by_id[r.problem_id], task, tokenizer)
    return new


def _load_family(specs: Mapping[str, dict]) -> dict[str, Any]:
    """On a cluster worker: the driver's family, loaded from the same folders (weights checked)."""
    return {label: load_model_on_worker(spec) for label, spec in specs.items()}


def _write_meta(path: Path, meta: dict) -> None:
    meta_path = Path(str(path) + META_SUFFIX)
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)


def check_engine(name: str, what: str = "engine") -> str:
    """``name`` if it is a sampling engine ("hf" or "vllm"); "vllm" also needs vLLM installed
    (checked without importing it). TwinlensError naming the fix otherwise."""
    if name not in ENGINES:
        raise TwinlensError(f"Unknown {what} {name!r}; choose one of {', '.join(ENGINES)}.")
    if name == "vllm":
        from hooks.vllm_engine import vllm_python

        vllm_python()
    return name


def check_vllm_context(model: Any, longest: int, vllm_scoring: bool) -> None:
    """vLLM serves at most the model's context; scoring takes one more position (its one
    generated token) than the sequence, so a sequence must leave room for it."""
    n_ctx = model.n_ctx
    need = longest + (1 if vllm_scoring else 0)
    if n_ctx is not None and need > n_ctx:
        raise TwinlensError(
            f"The longest prompt + max_new_tokens is {longest} tokens; vLLM needs {need} within the "
            f"model's context of {n_ctx}. Lower max_new_tokens, or score with scorer='hf'."
        )


def _encode(model: Any, prompt: str) -> list[int]:
    ids = model.encode_prompt(prompt) if hasattr(model, "encode_prompt") else list(model.tokenizer(prompt)["input_ids"])
    if not ids:
        raise TwinlensError(f"Prompt {prompt!r} encodes to no tokens.")
    return list(ids)


def mean_logprob(row: SampleRow, model: str) -> float:
    """Mean per-token log-prob of a sample under ``model`` (NaN for an empty completion)."""
    lp = row.logprobs[model]
    return sum(lp) / len(lp) if lp else math.nan


def resolve_model_spec(spec: str | os.PathLike) -> tuple[str, Path | str]:
    """(label, folder or hub id): an organism checkpoint name (``base``, ``rl-seed0``, ...)
    resolves to its shipped folder; anything else is a folder or hub id labelled by its last
    path component."""
    text = str(spec)
    if "/" not in text and not Path(text).exists():
        import organism

        if text in organism.list_checkpoints():
            return text, organism.checkpoint_path(text)
    return Path(text).name or text, text


def load_models(specs: Sequence[str | os.PathLike], *, labels: Sequence[str] | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """Load every model of a family ({label: Model}), refusing different tokenizers."""
    from hooks import load_model

    if not specs:
        raise TwinlensError("No models given.")
    resolved = [resolve_model_spec(s) for s in specs]
    names = list(labels) if labels is not None else [label for label, _ in resolved]
    if len(set(names)) != len(names):
        raise TwinlensError(f"Two models share a label ({names}); pass distinct models.")
    family = {name: load_model(path, device=device) for name, (_, path) in zip(names, resolved, strict=True)}
    return as_model_family(family)


def checkpoint_series(run: str = "rl-seed0", include_final: bool = True) -> list[dict]:
    """The organism's intermediate checkpoints of ``run`` (``{run}-step{N}``, plus ``run``
    itself), sorted by step: [{"name", "path", "step", "compute", "info"}]. ``compute`` is the
    checkpoint's training_info "compute" when it has one, else the samples seen."""
    import re

    import organism

    names = [n for n in organism.list_checkpoints() if re.fullmatch(rf"{re.escape(run)}-step\d+", n)]
    if include_final and run in organism.list_checkpoints():
        names.append(run)
    out = []
    for name in names:
        info = organism.checkpoint_info(name)
        step = info.get("step")
        if step is None:
            continue
        out.append({"name": name, "path": organism.checkpoint_path(name), "step": step,
                    "compute": compute_of(info), "info": info})
    out.sort(key=lambda d: d["step"])
    # The final checkpoint may repeat the last intermediate step: keep one of them.
    dedup: dict = {}
    for d in out:
        dedup.setdefault(d["step"], d)
    return list(dedup.values())


def compute_of(info: Mapping[str, Any]) -> float | None:
    """Training compute recorded in a training_info dict (a number under "compute", or its
    "samples_seen"/"tokens_generated")."""
    c = info.get("compute")
    if isinstance(c, (int, float)):
        return float(c)
    if isinstance(c, Mapping):
        for key in ("flops", "gpu_hours", "cpu_seconds", "samples_seen", "tokens_generated"):
            if isinstance(c.get(key), (int, float)):
                return float(c[key])
    for key in ("samples_seen", "tokens_generated"):
        if isinstance(info.get(key), (int, float)):
            return float(info[key])
    return None


def sample_each(
    models: Mapping[str, Any],
    problems: Sequence[TaskProblem | str],
    n: int,
    *,
    out_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Samples:
    """Sample every model on its own (each sample scored only under the model that drew it;
    one resumable file per model, ``out_dir/{label}.jsonl``) and return all rows together.
    Cheaper than ``sample(family, ...)`` when a job needs no cross-model log-probs."""
    family = as_model_family(models)
    rows: list[SampleRow] = []
    meta: dict[str, Any] = {}
    for label, model in family.items():
        path = Path(out_dir) / f"{label}.jsonl" if out_dir is not None else None
        s = sample({label: model}, problems, n, out=path, **kwargs)
        rows += s.rows
        meta[label] = s.meta
    return Samples(rows, {"per_model": meta}, Path(out_dir) if out_dir is not None else None)
