"""Run a job's work items on a Ray cluster: the one runner that sampling, capture and the weight
diff share when given ``cluster=`` (the ``--ray [ADDRESS]`` option of the scripts).

The job stays defined in the library; only *where* each item runs changes (nnsight's split of an
experiment from its executor). ``RayCluster.map(setup, fn, items)`` starts one actor per worker
slot; each actor builds its state once with ``setup()`` (loads the models, opens the
checkpoints: a fresh worker's first task pays ~8 s of imports and loading on the organism, so
state lives in actors, not in tasks) and then runs ``fn(state, item)`` for the items it is given.
Results come back to the driver **in item order** whatever order they finish in, so the caller
writes exactly what one process would. One tqdm bar on the driver counts the items of the whole
cluster.

Failures: an actor whose process dies mid-item (node lost, OOM kill, ``os._exit``) is restarted
(setup runs again) and the item is retried, up to ``max_retries`` times (Ray's ``max_restarts``
/ ``max_task_retries``). The items are pure functions of their inputs (seeds per row, not per
worker), so a retried item gives the same result. An exception raised by ``fn`` itself is not
retried: a ``TwinlensError`` there is re-raised as is on the driver.

Ray is imported only when a RayCluster is used; without ``cluster=`` nothing changes. Every
worker needs twinlens and its dependencies importable (same versions as the driver), and the
paths a job reads or writes (checkpoints, the activation store) visible at the same place on
every node (a shared file system); see README "Running on a Ray cluster".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hooks.errors import TwinlensError

__all__ = ["RayCluster", "as_cluster", "load_model_on_worker", "model_spec"]


@dataclass
class RayCluster:
    """Where a job's items run: a Ray cluster.

    address: what ``ray.init(address=...)`` takes: None (Ray's default: ``RAY_ADDRESS``, else a
    cluster started with ``ray start`` on this machine, else a new local one), ``"auto"``,
    ``"HOST:6379"`` or ``"ray://HOST:10001"``. When Ray is already initialised in this process
    that connection is used and left open; a connection made here is closed after the job.
    workers: actors to start (None: the cluster's CPUs / cpus_per_worker, or its GPUs /
    gpus_per_worker when gpus_per_worker > 0). cpus_per_worker, gpus_per_worker: Ray resources
    each actor holds (its models run on ``cuda`` when gpus_per_worker > 0 and the driver's
    models are on a GPU). max_retries: restarts of a dead actor and retries of its item.
    in_flight: items queued per actor (2 keeps an actor busy while the driver takes a result).
    runtime_env: passed to the actors (e.g. ``{"working_dir": "."}`` or ``{"pip": [...]}``).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3
    in_flight: int = 2
    runtime_env: dict | None = None
    _started: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise TwinlensError(f"workers must be >= 1, got {self.workers}.")
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0 or self.cpus_per_worker + self.gpus_per_worker == 0:
            raise TwinlensError("cpus_per_worker and gpus_per_worker must be >= 0 and not both 0.")
        if self.max_retries < 0:
            raise TwinlensError(f"max_retries must be >= 0, got {self.max_retries}.")
        if self.in_flight < 1:
            raise TwinlensError(f"in_flight must be >= 1, got {self.in_flight}.")

    # ------------------------------------------------------------------ connection
    def connect(self) -> Any:
        """Import Ray and connect (or reuse this process's connection); returns the ray module."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise TwinlensError(
                "Running on a cluster needs Ray: pip install 'twinlens[ray]' (on the driver and on "
                "every worker node)."
            ) from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level="WARNING")
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise TwinlensError(
                    f"Could not connect to the Ray cluster at {self.address or '(default)'}: {exc}. "
                    "Start one with `ray start --head` (then --ray auto) or give its address "
                    "(--ray HOST:6379)."
                ) from None
            self._started = True
        return ray

    def close(self) -> None:
        """Disconnect if this object connected (a connection made by the caller stays open)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def n_workers(self, ray: Any) -> int:
        if self.workers is not None:
            return self.workers
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            n = int(res.get("GPU", 0) // self.gpus_per_worker)
        else:
            n = int(res.get("CPU", 0) // self.cpus_per_worker)
        if n < 1:
            raise TwinlensError(
                f"The Ray cluster has no room for one worker ({self.cpus_per_worker} CPU, "
                f"{self.gpus_per_worker} GPU each; cluster resources {res}). Lower cpus_per_worker / "
                "gpus_per_worker or add nodes."
            )
        return n

    # ------------------------------------------------------------------ running
    def map(
        self,
        setup: Callable[[], Any],
        fn: Callable[[Any, Any], Any],
        items: Sequence[Any],
        *,
        desc: str = "cluster",
        weights: Sequence[float] | None = None,
        progress: bool = True,
        unit: str = "it",
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(state, items[i]))`` for every item, in item order, computed on the
        cluster's actors (each with ``state = setup()``, built once per actor and again after a
        restart). ``setup`` and ``fn`` must be picklable (module-level functions, or
        functools.partial of them); their modules must import on the workers. ``weights``: what
        each item adds to the progress bar (default 1).

        Raises TwinlensError when an item fails for good (its message if it raised one; else the
        worker failure after ``max_retries`` restarts). Items yielded before that are final."""
        items = list(items)
        if not items:
            return
        weights = list(weights) if weights is not None else [1.0] * len(items)
        from tqdm.auto import tqdm

        ray = self.connect()
        actors: list[Any] = []
        bar = tqdm(total=sum(weights), desc=desc, unit=unit, disable=not progress)
        try:
            n = min(self.n_workers(ray), len(items))
            worker = ray.remote(_Worker).options(
                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                max_restarts=self.max_retries, max_task_retries=self.max_retries,
                runtime_env=self.runtime_env,
            )
            actors = [worker.remote(setup) for _ in range(n)]
            pending: dict[Any, tuple[int, Any]] = {}
            finished: dict[int, Any] = {}
            next_item, next_out = 0, 0

            def submit(actor: Any) -> None:
                nonlocal next_item
                pending[actor.run.remote(fn, items[next_item])] = (next_item, actor)
                next_item += 1

            for _ in range(self.in_flight):
                for actor in actors:
                    if next_item < len(items):
                        submit(actor)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i, actor = pending.pop(ref)
                finished[i] = self._result(ray, ref, desc)
                bar.update(weights[i])
                if next_item < len(items):
                    submit(actor)
                while next_out in finished:
                    yield next_out, finished.pop(next_out)
                    next_out += 1
        finally:
            bar.close()
            for actor in actors:
                ray.kill(actor, no_restart=True)
            self.close()

    def _result(self, ray: Any, ref: Any, desc: str) -> Any:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TwinlensError):
                raise TwinlensError(str(cause)) from None
            raise TwinlensError(f"{desc}: a work item failed on the cluster:\n{exc}") from None
        except RayActorError as exc:
            raise TwinlensError(
                f"{desc}: a worker died on all {self.max_retries + 1} tries of one item ({type(exc).__name__}: "
                f"{str(exc)[:500]}). What finished before is kept; rerun the same command to resume "
                "(or raise max_retries)."
            ) from None


class _Worker:
    """A Ray actor: builds its state on the first item (so an error in setup is an ordinary
    item error with its message), then applies ``fn`` to items."""

    def __init__(self, setup: Callable[[], Any]):
        self._setup = setup
        self._state: Any = None
        self._ready = False

    def run(self, fn: Callable[[Any, Any], Any], item: Any) -> Any:
        if not self._ready:
            self._state = self._setup()
            self._ready = True
        return fn(self._state, item)


def as_cluster(cluster: RayCluster | str | bool | None) -> RayCluster | None:
    """None / False -> None (run in this process); True -> RayCluster() (Ray's default address);
    a string -> RayCluster(address=that string); a RayCluster as is."""
    if cluster is None or cluster is False:
        return None
    if cluster is True:
        return RayCluster()
    if isinstance(cluster, str):
        return RayCluster(address=cluster or None)
    if isinstance(cluster, RayCluster):
        return cluster
    raise TwinlensError(
        f"cluster={cluster!r}: pass a hooks.cluster.RayCluster, a Ray address string, True "
        "(Ray's default address) or None (this process)."
    )


# ---------------------------------------------------------------------- models on workers
def model_spec(model: Any, gpu: bool = False) -> dict:
    """What a worker needs to load the same model: folder, dtype, device, weight hash.
    ``gpu``: the workers hold a GPU (Ray sets CUDA_VISIBLE_DEVICES): a model on a GPU here loads
    on ``cuda`` there; a model on a GPU with ``gpu`` False is refused. Refuses a model with forward hooks on it (an
    open intervention such as add_to_residual): the workers' fresh copies would run without it."""
    hooked = [name for name, m in model.hf.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise TwinlensError(
            f"{model.name} has forward hooks on {hooked[:3]} (an open intervention?); cluster workers load "
            "their own copy of the model and would run without them. Run interventions in this process "
            "(no cluster=/--ray), or close the intervention first."
        )
    device = str(model.device)
    if device.startswith("cuda"):
        if not gpu:
            raise TwinlensError(
                f"{model.name} is on {device}, but the cluster's workers hold no GPU (they would run it on "
                "the CPU, with other float rounding than this process). Pass RayCluster(gpus_per_worker=1) "
                "(scripts: --device cuda does), or load the model on the CPU."
            )
        device = "cuda"
    return {
        "path": str(model.path.absolute()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": device,
        "weight_hash": model.weight_hash,
        # a model that loaded on the driver with custom code was trusted there
        "trust_remote_code": bool(getattr(model.hf.config, "auto_map", None)),
    }


def load_model_on_worker(spec: dict) -> Any:
    """Load the model of ``model_spec`` on a worker, refusing weights that differ from the
    driver's (another file at the same path on this node)."""
    import socket

    from hooks.loading import load_model

    model = load_model(spec["path"], device=spec["device"], dtype=spec["dtype"],
                       trust_remote_code=spec["trust_remote_code"])
    if model.weight_hash != spec["weight_hash"]:
        raise TwinlensError(
            f"Node {socket.gethostname()} has other weights at {spec['path']} than the driver "
            f"(hash {model.weight_hash} vs {spec['weight_hash']}); put the same checkpoint at the "
            "same path on every node (or on a shared file system)."
        )
    return model
