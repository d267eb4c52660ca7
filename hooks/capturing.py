"""Capture activations of a model or a pair into an ActivationStore, streaming shard by shard.

Only the requested hooks and positions are copied out of the forward pass; rows are buffered
until a shard reaches `shard_bytes` and then written atomically, so memory is bounded by one
shard plus one batch, whatever the dataset size. Rerunning the same capture into the same folder
resumes after the last complete shard; a different model, hook list, input or argument set is
refused rather than mixed in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks.cluster import RayCluster, as_cluster, load_model_on_worker, model_spec
from hooks.errors import TwinlensError
from hooks.generation import embedding_rows
from hooks.interventions import expect_applied, forward_layout, right_padded_layout
from hooks.loading import Model, ModelPair
from hooks.locking import LOCK_NAME, WRITE_ERRNOS, FolderLock
from hooks.store import (
    FORMAT,
    INPUTS,
    MANIFEST,
    ActivationStore,
    save_tensors_atomic,
    write_json_atomic,
)
from hooks.validation import check_dtype, check_positive_int, check_token_ids

Positions = str | Sequence[Sequence[int]] | Sequence[Tensor] | Callable[[list[int]], Sequence[int]]


def _models_of(target: Model | ModelPair) -> dict[str, Model]:
    if isinstance(target, ModelPair):
        return target.models
    if isinstance(target, Model):
        return {"model": target}
    raise TwinlensError(
        f"capture() takes a Model or ModelPair (from hooks.load_model / load_pair), got {type(target).__name__}."
    )


def _tokenize(model: Model, inputs: Sequence[str] | Sequence[Sequence[int]] | Tensor) -> list[list[int]]:
    if isinstance(inputs, Tensor):
        inputs = inputs.tolist()
    if isinstance(inputs, (str, bytes)):
        raise TwinlensError("Pass a list of prompts, not a single string: capture(model, [text], ...).")
    inputs = list(inputs)
    if not inputs:
        raise TwinlensError("The prompt list is empty; pass at least one prompt or token-id list.")
    out = []
    for i, item in enumerate(inputs):
        ids = model.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise TwinlensError(f"Prompt {i} tokenizes to nothing; remove it or fix the text.")
        out.append(ids)
    out = check_token_ids(out, embedding_rows(model), name="example")
    n_ctx = model.n_ctx
    if n_ctx is not None:
        long = [(i, len(ids)) for i, ids in enumerate(out) if len(ids) > n_ctx][:3]
        if long:
            raise TwinlensError(
                f"Prompts longer than the model's context of {n_ctx} tokens (example, length): "
                f"{long}. Truncate or split them."
            )
    return out


def _position_lists(positions: Positions, token_ids: list[list[int]]) -> list[list[int]]:
    if positions == "all":
        return [list(range(len(t))) for t in token_ids]
    if positions == "last":
        return [[len(t) - 1] for t in token_ids]
    if isinstance(positions, str):
        raise TwinlensError(f"positions={positions!r}: use 'all', 'last', per-example masks or index lists.")
    if callable(positions):
        chosen = [list(positions(t)) for t in token_ids]
    else:
        chosen = list(positions)
        if len(chosen) != len(token_ids):
            raise TwinlensError(
                f"positions has {len(chosen)} entries for {len(token_ids)} examples; give one mask "
                "or index list per example."
            )
    out = []
    for i, (p, ids) in enumerate(zip(chosen, token_ids, strict=False)):
        p = torch.as_tensor(p)
        if p.dtype == torch.bool:
            if p.numel() != len(ids):
                raise TwinlensError(
                    f"Position mask {i} has length {p.numel()} but example {i} has {len(ids)} tokens."
                )
            idx = p.nonzero().flatten().tolist()
        else:
            idx = sorted(set(int(x) for x in p.flatten().tolist()))
            if idx and not (0 <= idx[0] and idx[-1] < len(ids)):
                raise TwinlensError(
                    f"Positions {idx[:3]}... of example {i} fall outside its {len(ids)} tokens."
                )
        out.append(idx)
    return out


def _inputs_hash(token_ids: list[list[int]], pos: list[list[int]]) -> str:
    h = hashlib.sha256()
    for ids, p in zip(token_ids, pos, strict=False):
        h.update(repr((ids, p)).encode())
    return h.hexdigest()


class _ShardWriter:
    """Buffers the rows of consecutive batches and writes them as one shard, named by its first
    example (unique in a store whoever writes it: shards cover disjoint example ranges);
    ``on_shard`` gets the shard's manifest entry once the file is in place."""

    def __init__(self, root: Path, on_shard: Callable[[dict], None]):
        self.root, self.on_shard = root, on_shard
        self.parts: dict[str, list[Tensor]] = {}
        self.bytes = 0
        self.first_example: int | None = None
        self.last_example = 0

    def add(self, example_start: int, example_end: int, tensors: dict[str, Tensor]) -> None:
        if self.first_example is None:
            self.first_example = example_start
        self.last_example = example_end
        for k, v in tensors.items():
            self.parts.setdefault(k, []).append(v)
            self.bytes += v.numel() * v.element_size()

    def flush(self) -> None:
        if self.first_example is None:
            return
        tensors = {k: torch.cat(v) for k, v in self.parts.items()}
        name = f"shard-{self.first_example:09d}.safetensors"
        digest = save_tensors_atomic(tensors, self.root / name)
        self.on_shard({
            "file": name,
            "rows": int(tensors["tokens"].shape[0]),
            "example_start": self.first_example,
            "example_end": self.last_example,
            "sha256": digest,
        })
        self.parts, self.bytes, self.first_example = {}, 0, None


def _record_shard(root: Path, manifest: dict, shard: dict) -> None:
    """Append a written shard to the manifest and replace it atomically. Shards are recorded in
    example order, each starting where the last ended (the store's row order; hooks.store's
    check_manifest refuses anything else), whoever wrote them."""
    end = manifest["shards"][-1]["example_end"] if manifest["shards"] else 0
    if shard["example_start"] != end:
        raise TwinlensError(f"Shard {shard['file']} starts at example {shard['example_start']}, but the shards in "
                            f"{root / MANIFEST} end at {end}: two captures are writing into one folder. Capture "
                            "into a new folder.")
    manifest["shards"].append(shard)
    write_json_atomic(root / MANIFEST, manifest)


class _StopForward(Exception):
    """Raised by the last needed hook: layers after it would compute nothing we keep."""


@dataclass(frozen=True)
class _Plan:
    """How one model's forward is tapped, decided once per capture (not per batch).
    targets: (hook, HF module, "output"|"input") per hook, None to use the bridge's hook points;
    last: the target after which the forward can stop."""

    targets: list[tuple[str, torch.nn.Module, str]] | None
    last: tuple[str, torch.nn.Module, str] | None


def _plan(model: Model, hooks: list[str], engine: str) -> _Plan:
    """HF module targets when every hook maps to an HF module shown to give the bridge's value
    for it (engine "auto"/"hf"; see Model.hf_module_name), else the bridge (attention patterns,
    normalisation scales, and any hook whose HF module means something else on this
    architecture). Booting or verifying happens here, before anything is written."""
    if engine not in ("auto", "hf", "bridge"):
        raise TwinlensError(f"engine={engine!r}: use 'auto', 'hf' or 'bridge'.")
    targets: list[tuple[str, torch.nn.Module, str]] | None = []
    refused = ""
    if engine != "bridge":
        model.verify_hf_modules(hooks)  # one HF and one bridge forward for all component hooks
        for h in hooks:
            try:
                module, where = model.hf_module(h)
            except TwinlensError as exc:
                targets, refused = None, str(exc)
                break
            targets.append((h, module, where))
    else:
        targets = None
    if engine == "hf" and targets is None:
        raise TwinlensError(f"engine='hf' cannot serve every requested hook: {refused} Use engine='bridge'.")
    if targets is None:
        bridge = model.bridge  # a model TransformerLens cannot bridge fails here, with what still works
        gated = getattr(bridge, "_gated_hook_reason", lambda _name: None)
        for h in hooks:
            point = bridge.hook_dict.get(h)
            reason = gated(getattr(point, "name", None) or h)
            if reason is not None:  # TransformerLens would raise a bare ValueError mid-capture
                raise TwinlensError(
                    f"{h!r} is computed by TransformerLens only on request ({reason} is off). "
                    f"Call model.bridge.set_{reason}(True) first, then capture again."
                )
        return _Plan(None, None)
    order = {id(m): i for i, m in enumerate(model.hf.modules())}
    return _Plan(targets, max(targets, key=lambda t: (order[id(t[1])], t[2] == "output")))


@torch.no_grad()
def _forward_capture(
    model: Model,
    hooks: list[str],
    batch: Tensor,
    sel_b: Tensor,
    sel_p: Tensor,
    store_dtype: torch.dtype,
    plan: _Plan,
) -> dict[str, Tensor]:
    """One forward; each hook copies only the selected (batch, position) rows.

    With plan.targets: forward hooks on the untouched HF model's modules, located through the
    bridge (so names are TransformerLens names and no per-architecture table exists), SDPA
    attention, no LM head, stopping after the last needed module. Without: the bridge's own
    hook points (needed for hooks with no HF module).
    Right padding needs no attention mask for a causal model: real tokens never attend to the
    pads after them, and their positions are 0..len-1 as in an unpadded forward.
    """
    got: dict[str, Tensor] = {}
    targets, last = plan.targets, plan.last

    def keep(name: str, act: Tensor) -> None:
        if act.shape[:2] != batch.shape:
            raise TwinlensError(
                f"Hook {name!r} gives shape {tuple(act.shape)}, not [batch, pos, ...]: the store keeps "
                "per-token activations. For attention patterns use model.bridge.run_with_cache."
            )
        got[name] = act[sel_b, sel_p].to("cpu", dtype=store_dtype)

    if targets is not None:
        handles = []

        def make(name: str, where: str, is_last: bool):
            def post(_m, _args, output):
                keep(name, output[0] if isinstance(output, tuple) else output)
                if is_last and len(got) == len(hooks):
                    raise _StopForward

            def pre(_m, args, kwargs):
                keep(name, args[0] if args else kwargs["hidden_states"])
                if is_last and len(got) == len(hooks):
                    raise _StopForward

            return post if where == "output" else pre

        try:
            for name, module, where in targets:
                fn = make(name, where, (name, module, where) == last)
                if where == "output":
                    handles.append(module.register_forward_hook(fn))
                else:
                    handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            # The body alone (no LM head) unless a target lies outside it (`unembed.hook_*`).
            body = model.hf.base_model
            inside = {id(m) for m in body.modules()}
            runner = body if all(id(t[1]) in inside for t in targets) else model.hf
            runner(input_ids=batch, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
    else:
        def make_bridge(name: str) -> Callable[[Tensor, Any], None]:
            return lambda act, hook=None: keep(name, act)

        with expect_applied(model, "capture(engine='bridge')"):
            model.bridge.run_with_hooks(batch, return_type=None, fwd_hooks=[(h, make_bridge(h)) for h in hooks])
    missing = [h for h in hooks if h not in got]
    if missing:
        raise TwinlensError(f"Hooks {missing[:3]} did not fire in the forward pass.")
    return got


@contextmanager
def _store_write_errors(root: Path) -> Iterator[None]:
    """Disk full / read-only / no permission while writing the store -> TwinlensError saying what
    the store kept and how to resume."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise _store_write_error(root, exc) from None


def _store_write_error(root: Path, exc: OSError) -> TwinlensError:
    try:
        shards = json.loads((root / MANIFEST).read_text())["shards"]
        kept = (f"{len(shards)} complete shards (examples 0-{shards[-1]['example_end']})" if shards
                else "no complete shard yet")
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        kept = "no complete shard yet"
    return TwinlensError(
        f"Writing the activation store {root} failed: {exc.strerror or exc}"
        f"{f' ({exc.filename})' if exc.filename else ''}. The store keeps {kept}; nothing complete was lost. "
        "Free space (or make the folder writable), then rerun the same capture: it resumes after the last "
        "complete shard."
    )


def capture(
    target: Model | ModelPair,
    inputs: Sequence[str] | Sequence[Sequence[int]] | Tensor,
    hooks: str | list[str] = "blocks.*.hook_out",
    out: str | os.PathLike = "acts",
    *,
    positions: Positions = "all",
    batch_size: int = 8,
    shard_bytes: int = 256 << 20,
    store_dtype: torch.dtype | None = None,
    progress: bool = True,
    metadata: dict | None = None,
    engine: str = "auto",
    cluster: RayCluster | str | bool | None = None,
) -> ActivationStore:
    """Run every example through the model(s) and store the chosen hooks at the chosen
    positions. Returns the finished store. See API.md.

    engine: "auto" (HF module hooks where every hook maps to an HF module, else the bridge),
    "hf" or "bridge"; both give the same numbers (tested), "hf" is the fast one.
    cluster: a hooks.cluster.RayCluster (or a Ray address, or True): the missing example ranges
    are captured by Ray actors holding the models, each writing shards into ``out`` (which must
    be on a file system every node sees); the store reads exactly as a single-process one."""
    cluster = as_cluster(cluster)
    models = _models_of(target)
    first = next(iter(models.values()))
    batch_size = check_positive_int("batch_size", batch_size)
    shard_bytes = check_positive_int("shard_bytes", shard_bytes)
    if store_dtype is not None:
        store_dtype = check_dtype(store_dtype)
    token_ids = _tokenize(first, inputs)
    pos = _position_lists(positions, token_ids)
    hook_names = first.resolve_hooks(hooks)
    plans = _plans(models, hook_names, engine)  # before writing anything
    specs = {k: model_spec(m, cluster.gpus_per_worker > 0) for k, m in models.items()} if cluster else None
    store_dtype = store_dtype or first.dtype
    root = Path(out).absolute()  # workers on other nodes have other working folders
    identity = {
        "format": FORMAT,
        "models": {
            key: {
                "name": m.name,
                "path": str(m.path),
                "weight_hash": m.weight_hash,
                "n_layers": m.n_layers,
                "d_model": m.d_model,
                "dtype": str(m.dtype).removeprefix("torch."),
            }
            for key, m in models.items()
        },
        "hooks": hook_names,
        "dtype": str(store_dtype).removeprefix("torch."),
        "n_examples": len(token_ids),
        "inputs_sha256": _inputs_hash(token_ids, pos),
        "capture_args": {
            "positions": positions if isinstance(positions, str) else "explicit",
            "prepend_bos": False,
            "tokenization": "tokenizer default (add_special_tokens=True)" if isinstance(inputs[0], str) else "token ids given",
            "padding": "right, no attention mask (causal)",
            "engine": engine,
        },
        "metadata": metadata or {},
    }

    # One writer per store: a second capture into it (another process, or this one) is refused
    # instead of racing on manifest.json.tmp; a failed write says what the store kept.
    with FolderLock(root, what="capture"), _store_write_errors(root):
        if (root / MANIFEST).exists():
            store = ActivationStore.open(root)
            old = store.manifest
            diffs = [k for k in identity if k != "capture_args" and old.get(k) != identity[k]]
            if diffs:
                raise TwinlensError(
                    f"{root} already holds a capture made with a different {', '.join(diffs)}. "
                    "Capture into a new folder (nothing in the existing store was changed)."
                )
            manifest = old
            for s in store.shards:  # resume only on top of intact shards
                store.verify(s)
        else:
            if root.exists() and any(p.name != LOCK_NAME for p in root.iterdir()):
                raise TwinlensError(
                    f"{root} exists and is not an activation store; pick an empty or new folder."
                )
            root.mkdir(parents=True, exist_ok=True)
            flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)
            offsets = torch.tensor([0] + [len(ids) for ids in token_ids]).cumsum(0)
            save_tensors_atomic({"tokens": flat, "offsets": offsets}, root / INPUTS)
            manifest = {**identity, "shards": [], "complete": False}
            write_json_atomic(root / MANIFEST, manifest)

        done = manifest["shards"][-1]["example_end"] if manifest["shards"] else 0
        todo = [(done, len(token_ids))] if done < len(token_ids) else []
        record = functools.partial(_record_shard, root, manifest)
        run = functools.partial(_capture_range, hook_names=hook_names, batch_size=batch_size, shard_bytes=shard_bytes,
                                store_dtype=store_dtype, root=root, n_examples=len(token_ids))
        if cluster is not None and todo:
            _capture_on_cluster(cluster, specs, plans_of=functools.partial(_plans, hook_names=hook_names, engine=engine),
                                run=run, todo=todo, token_ids=token_ids, pos=pos, record=record, progress=progress,
                                batch_size=batch_size, desc=f"capture -> {root.name} (ray)")
        else:
            bar = tqdm(total=len(token_ids), initial=len(token_ids) - sum(b - a for a, b in todo),
                       desc=f"capture -> {root.name}", disable=not progress or not todo, unit="ex")
            state = (models, plans)
            for a, b in todo:
                run(state, _Range(a, b, token_ids[a:b], pos[a:b]), on_shard=record, on_batch=bar.update)
            bar.close()
        manifest["complete"] = True
        write_json_atomic(root / MANIFEST, manifest)
        return ActivationStore.open(root)


@dataclass(frozen=True)
class _Range:
    """Examples [start, end) to capture: the unit of work (in process or on a cluster)."""

    start: int
    end: int
    token_ids: list[list[int]]
    positions: list[list[int]]


def _plans(models: dict[str, Model], hook_names: list[str], engine: str) -> dict[str, _Plan]:
    return {key: _plan(m, hook_names, engine) for key, m in models.items()}


def _capture_range(state: tuple[dict[str, Model], dict[str, _Plan]], rng: _Range, *, hook_names: list[str],
                   batch_size: int, shard_bytes: int, store_dtype: torch.dtype, root: Path, n_examples: int,
                   on_shard: Callable[[dict], None] | None = None,
                   on_batch: Callable[[int], Any] | None = None) -> list[dict]:
    """Capture one example range (of ``n_examples`` in the capture) in batches of ``batch_size``
    from its start, writing shards of about ``shard_bytes``; returns their manifest entries (each also given to ``on_shard`` as
    soon as its file is in place)."""
    models, plans = state
    if not (root / INPUTS).exists():
        import socket

        raise TwinlensError(f"{root} is not visible from {socket.gethostname()}: a cluster capture writes its "
                            "shards from every worker, so --out must be on a file system all nodes share.")
    first = next(iter(models.values()))
    pad = first.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    written: list[dict] = []

    def keep(shard: dict) -> None:
        written.append(shard)
        if on_shard is not None:
            on_shard(shard)

    writer = _ShardWriter(root, keep)
    for at in range(0, rng.end - rng.start, batch_size):
        start, end = rng.start + at, min(rng.start + at + batch_size, rng.end)
        ids = rng.token_ids[at : at + batch_size]
        pos = rng.positions[at : at + batch_size]
        width = max(len(t) for t in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        for r, t in enumerate(ids):
            batch[r, : len(t)] = torch.tensor(t)
        sel_b = torch.tensor([r for r in range(len(ids)) for _ in pos[r]], dtype=torch.long)
        sel_p = torch.tensor([p for r in range(len(ids)) for p in pos[r]], dtype=torch.long)
        rows: dict[str, Tensor] = {
            "tokens": batch[sel_b, sel_p],
            "example_index": sel_b + start,
            "position": sel_p.clone(),
        }
        layout = right_padded_layout([len(t) for t in ids], width, start, n_examples)
        for key, m in models.items():
            with forward_layout(m, layout):  # where each token sits, for position-restricted steering
                acts = _forward_capture(m, hook_names, batch.to(m.device), sel_b.to(m.device),
                                        sel_p.to(m.device), store_dtype, plans[key])
            rows.update({f"{key}/{h}": a for h, a in acts.items()})
        writer.add(start, end, rows)
        if writer.bytes >= shard_bytes:
            writer.flush()
        if on_batch is not None:
            on_batch(end - start)
    writer.flush()
    return written


def _load_capture_state(specs: dict[str, dict], plans_of: Callable) -> tuple[dict[str, Model], dict[str, _Plan]]:
    """On a cluster worker: the driver's models (weights checked) and their capture plans."""
    models = {key: load_model_on_worker(spec) for key, spec in specs.items()}
    return models, plans_of(models)


def _capture_on_cluster(cluster: RayCluster, specs: dict[str, dict], *, plans_of: Callable, run: Callable,
                        todo: list[tuple[int, int]], token_ids: list[list[int]], pos: list[list[int]],
                        record: Callable[[dict], None], progress: bool, batch_size: int, desc: str) -> None:
    """The missing ranges cut into whole batches (the single-process batches: same numbers),
    about four units per worker, captured by actors that each hold the models; the driver alone
    writes the manifest, as each unit's shards arrive."""
    ray = cluster.connect()
    n_batches = sum(-(-(b - a) // batch_size) for a, b in todo)
    per_unit = max(1, -(-n_batches // (4 * cluster.n_workers(ray)))) * batch_size
    units = [_Range(s, min(s + per_unit, b), token_ids[s : min(s + per_unit, b)], pos[s : min(s + per_unit, b)])
             for a, b in todo for s in range(a, b, per_unit)]
    setup = functools.partial(_load_capture_state, specs, plans_of)
    for _, shards in cluster.map(setup, run, units, desc=desc, weights=[u.end - u.start for u in units],
                                 progress=progress, unit="ex"):
        for shard in shards:
            record(shard)
