"""Sampling, capture and the weight diff on a two-node local Ray cluster give exactly the results
of one process, also when a worker is killed in the middle of an item (it is restarted and the
item retried). One cluster for the whole file (~5-15 s to start on a busy 2-core machine).

The kill: ``KillOnce`` wraps the library's work function so that the first item a worker runs
ends its process with ``os._exit`` (no cleanup, like a lost node) the first time only, detected
by a marker file; cloudpickle ships the wrapper by value, so the workers need not import this
test module.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import ray  # installed by the dev extra: twinlens[ray]
import torch
from ray import cloudpickle  # the pickler Ray ships work with

import organism
from analyses.sampling import sample
from analyses.task import organism_task
from hooks import ActivationStore, TwinlensError, capture, load_pair
from hooks.cluster import RayCluster, as_cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _die_once(fn, marker, state, item):
    """The first call anywhere on the cluster kills its worker process; later calls run ``fn``."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return fn(state, item)
    os.close(fd)
    os._exit(1)


class KillOnce(RayCluster):
    """A RayCluster whose first work item kills its worker (once per marker file)."""

    marker: str = ""

    def map(self, setup, fn, items, **kw):
        return super().map(setup, functools.partial(_die_once, fn, self.marker), items, **kw)


@pytest.fixture(scope="module")
def ray_cluster():
    """Two 1-CPU nodes on this machine, Ray's test harness for multi-node runs."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 200 << 20})
    cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _kill_once(tmp_path: Path, **kw) -> KillOnce:
    c = KillOnce(workers=2, max_retries=2, **kw)
    c.marker = str(tmp_path / "killed")
    return c


def test_without_cluster_ray_is_not_imported():
    code = ("import sys, argparse, hooks, hooks.cluster, analyses.sampling, analyses.subnetworks, probes.sweep;"
            "from scripts import _cli as cli; from hooks.cluster import as_cluster;"
            "assert as_cluster(None) is None and cli.cluster(argparse.Namespace(ray=None)) is None;"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_bad_cluster_arguments_are_refused_before_any_work():
    with pytest.raises(TwinlensError, match="RayCluster"):
        as_cluster(3)
    with pytest.raises(TwinlensError, match="workers"):
        RayCluster(workers=0)
    with pytest.raises(TwinlensError, match="not both 0"):
        RayCluster(cpus_per_worker=0)


@pytest.fixture(scope="module")
def organism_pair():
    return load_pair(organism.checkpoint_path("base"), organism.checkpoint_path("rl-seed0"))


@pytest.mark.slow
def test_sampling_on_two_nodes_resumes_and_writes_the_rows_of_one_process_after_a_worker_kill(
        ray_cluster, organism_pair, tmp_path):
    """A file left by an interrupted run (first 2 problems) is resumed on the cluster, where a
    worker dies on its first item: the file has the bytes of the same resume in one process
    (token ids, log-probs under both models, grades, row order), and the rows are those of one
    uninterrupted run."""
    task = organism_task()
    problems = task.problems(6, seed=3)
    kw = dict(task=task, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5, batch_size=4, progress=False)
    full = sample(organism_pair, problems, 2, **kw)
    for name, cluster in (("local", None), ("ray", _kill_once(tmp_path))):
        sample(organism_pair, problems[:2], 2, out=tmp_path / f"{name}.jsonl", **kw)
        got = sample(organism_pair, problems, 2, out=tmp_path / f"{name}.jsonl", cluster=cluster, **kw)
        assert [json.dumps(asdict(r)) for r in got.rows] == [json.dumps(asdict(r)) for r in full.rows]
    assert Path(tmp_path / "killed").exists()  # a worker really died
    assert len(full) == 2 * 6 * 2
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def _read_all(store: ActivationStore) -> dict:
    out = {k: getattr(store, k) for k in ("tokens", "example_index", "position")}
    for model in store.model_keys:
        for hook in store.hooks:
            out[f"{model}/{hook}"] = store.read(hook, model=model)
    return out


@pytest.mark.slow
def test_capture_on_two_nodes_reads_as_the_single_process_store_after_a_worker_kill(
        ray_cluster, organism_pair, tmp_path):
    """Workers write shards of one store; the driver's manifest lists them in example order with
    checksums and no overlap, and every read equals the single-process capture bit for bit.
    Then a store stopped half-way is resumed."""
    prompts = [p.prompt + "3+5=08;" for p in organism_task().problems(24, seed=2)]
    kw = dict(hooks=["blocks.*.hook_out"], positions="all", batch_size=3, shard_bytes=6 << 10, progress=False)
    local = capture(organism_pair, prompts, out=tmp_path / "local", **kw)
    cluster = _kill_once(tmp_path)
    remote = capture(organism_pair, prompts, out=tmp_path / "ray", cluster=cluster, **kw)
    assert (tmp_path / "killed").exists()
    assert remote.complete and len(remote.shards) >= 4  # several units, several shards
    ranges = [(s.example_start, s.example_end) for s in remote.shards]
    assert ranges[0][0] == 0 and ranges[-1][1] == 24
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # in order, no gap, no overlap
    remote.verify()  # every checksum
    want, got = _read_all(local), _read_all(remote)
    assert want.keys() == got.keys() and len(want) == 3 + 2 * organism_pair.base.n_layers
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # A run stopped half-way (the later shards never listed, the manifest not complete): the
    # rerun keeps the listed shards and captures the rest only.
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    del manifest["shards"][len(manifest["shards"]) // 2:]
    manifest["complete"] = False
    (tmp_path / "ray" / "manifest.json").write_text(json.dumps(manifest))
    kept = {s["file"]: s["sha256"] for s in manifest["shards"]}
    resumed = capture(organism_pair, prompts, out=tmp_path / "ray", **kw)
    assert {s.file: s.sha256 for s in resumed.shards if s.file in kept} == kept
    assert sum(s.rows for s in resumed.shards) == local.n_rows
    got = _read_all(resumed)
    for key in want:
        assert torch.equal(want[key], got[key]), key


@pytest.mark.slow
def test_weight_diff_on_two_nodes_equals_one_process_masks_included_after_a_worker_kill(ray_cluster, tmp_path):
    """Two RL seeds and the SFT model against the base: every count, rank, spectrum, overlap,
    consensus bin and packed mask bit of the cluster run equals the single-process diff."""
    from analyses.subnetworks import diff_runs

    base = organism.checkpoint_path("base")
    runs = [organism.checkpoint_path("rl-seed0"), organism.checkpoint_path("rl-seed1")]
    sft = organism.checkpoint_path("sft")
    local = diff_runs(base, runs, sft=sft, keep_masks=True, progress=False)
    cluster = _kill_once(tmp_path)
    remote = diff_runs(base, runs, sft=sft, keep_masks=True, progress=False, cluster=cluster)
    assert (tmp_path / "killed").exists()
    assert json.dumps(remote.to_dict(), sort_keys=True) == json.dumps(local.to_dict(), sort_keys=True)
    n_tensors = len(local.primary.tensors)
    assert n_tensors > 10 and [t.name for t in remote.primary.tensors] == [t.name for t in local.primary.tensors]
    for run in [*local.runs, "sft"]:
        a = local.runs[run] if run != "sft" else local.sft
        b = remote.runs[run] if run != "sft" else remote.sft
        assert a.masks.packed.keys() == b.masks.packed.keys()
        assert all((a.masks.packed[n] == b.masks.packed[n]).all() for n in a.masks.packed)


def test_a_cluster_run_under_an_open_intervention_is_refused_before_any_work(organism_pair, tmp_path):
    """Workers load their own models: a steering hook on the driver's model would silently not
    apply there, so the job refuses (no Ray connection, nothing written)."""
    from hooks import add_to_residual

    vector = torch.ones(organism_pair.base.d_model)
    with add_to_residual(organism_pair.base, layer=0, vector=vector, alpha=1.0):
        with pytest.raises(TwinlensError, match="intervention"):
            capture(organism_pair, ["1+2+3+4+5:"], out=tmp_path / "acts", cluster=RayCluster(address="nowhere:1"),
                    progress=False)
        with pytest.raises(TwinlensError, match="intervention"):
            sample(organism_pair, ["1+2+3+4+5:"], 1, out=tmp_path / "s.jsonl", progress=False,
                   cluster=RayCluster(address="nowhere:1"))
    assert not (tmp_path / "acts").exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_diff_script_with_ray_writes_the_results_of_a_run_without(ray_cluster, tmp_path):
    """scripts/diff.py --ray ADDRESS (a driver process of its own joining the cluster) writes the
    results.json of the same command without --ray."""
    root = Path(__file__).resolve().parents[1]
    results = {}
    for name, extra in (("local", []), ("ray", ["--ray", ray_cluster.address])):
        res = subprocess.run([sys.executable, str(root / "scripts" / "diff.py"), "--out", str(tmp_path / name),
                              "--no-progress", "--save-masks", *extra], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
        assert set(results[name].pop("masks")) == {"rl-seed0", "rl-seed1", "sft"}  # paths in its own --out
    assert results["ray"] == results["local"]
    # (not the files' bytes: safetensors writes its metadata map in a per-process hash order)
    from analyses.subnetworks import load_masks, read_mask_metadata

    masks = sorted(p.name for p in (tmp_path / "local").glob("masks_*.safetensors"))
    assert len(masks) == 3
    for m in masks:
        a, b = load_masks(tmp_path / "local" / m), load_masks(tmp_path / "ray" / m)
        assert read_mask_metadata(tmp_path / "local" / m) == read_mask_metadata(tmp_path / "ray" / m)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_ray_option_of_the_scripts_names_the_cluster(tmp_path):
    from scripts import _cli as cli

    ap = cli.make_parser(None)
    cli.add_ray_arg(ap)
    assert cli.cluster(ap.parse_args([])) is None
    assert cli.cluster(ap.parse_args(["--ray"])).address is None  # Ray's default address
    assert cli.cluster(ap.parse_args(["--ray", "10.0.0.1:6379"])).address == "10.0.0.1:6379"
    gpu = cli.cluster(argparse.Namespace(ray="", device="cuda:0"))
    assert (gpu.gpus_per_worker, cli.cluster(argparse.Namespace(ray="", device="cpu")).gpus_per_worker) == (1, 0)


def test_a_gpu_model_on_cpu_workers_is_refused(organism_pair):
    """Workers without a GPU would run a GPU model on the CPU (other rounding): refused."""
    from hooks.cluster import model_spec

    class OnGpu:  # the attributes model_spec reads, as a GPU model has them
        name, path, weight_hash, device, dtype = "m", Path("/m"), "h", torch.device("cuda:0"), torch.float32
        hf = organism_pair.base.hf

    with pytest.raises(TwinlensError, match="gpus_per_worker"):
        model_spec(OnGpu(), gpu=False)
    assert model_spec(OnGpu(), gpu=True)["device"] == "cuda"


def _square(state, item):
    if item == "bad":
        raise TwinlensError("item 'bad' is bad input: fix it")
    return state + item * item


def _always_die(state, item):
    os._exit(1)


@pytest.mark.slow
def test_runner_keeps_item_order_passes_item_errors_and_names_a_worker_lost_for_good(ray_cluster):
    """Results come back in item order whatever order they finish in; a TwinlensError raised by
    an item reaches the caller with its message (not retried); a worker that dies on every try
    ends in a TwinlensError saying what is kept and how to resume."""
    cluster = RayCluster(workers=2, max_retries=0)
    items = list(range(9))
    got = list(cluster.map(functools.partial(int, "100"), _square, items, progress=False))
    assert got == [(i, 100 + i * i) for i in items]
    with pytest.raises(TwinlensError, match="item 'bad' is bad input: fix it"):
        list(cluster.map(functools.partial(int, "0"), _square, [1, "bad", 2], progress=False))
    with pytest.raises(TwinlensError, match=r"(?s)died on all 1 tries of one item.*rerun the same command to resume"):
        list(cluster.map(functools.partial(int, "0"), _always_die, [1], progress=False))


def test_workers_refuse_other_weights_or_another_checkpoint_at_the_drivers_path(organism_pair):
    """What a node loads is checked against the driver's: weight hash for models, tensor headers
    for the weight diff (run here in-process, as a worker would)."""
    from analyses.subnetworks import SafetensorsCheckpoint
    from analyses.subnetworks.weight_diff import _header, _open_on_worker
    from hooks.cluster import load_model_on_worker, model_spec

    spec = model_spec(organism_pair.base)
    assert load_model_on_worker(spec).weight_hash == organism_pair.base.weight_hash
    with pytest.raises(TwinlensError, match="other weights at"):
        load_model_on_worker({**spec, "weight_hash": "0" * 32})
    base, rl = organism.checkpoint_path("base"), organism.checkpoint_path("rl-seed0")
    header = _header(SafetensorsCheckpoint(base))
    assert set(_open_on_worker({"__base__": str(base)}, {"__base__": header}, "numpy")) == {"__base__"}
    with pytest.raises(TwinlensError, match="sees another checkpoint"):
        _open_on_worker({"__base__": str(base)}, {"__base__": {**header, "extra.weight": ("f", "F32", (1,), 0, 4)}},
                        "numpy")
    assert _header(SafetensorsCheckpoint(rl)).keys() == header.keys()
