#!/usr/bin/env python
"""Scale-out efficiency of sampling on a Ray cluster: rows/s with 2 workers / rows/s with 1
worker, measured in the same run on the same problems (organism pair, both models sampled and
scored under both). Ideal: 2.0. Also printed: the single-process rate (no Ray) and the rates
without the workers' start-up (imports + model load, measured on a one-group run), since a real
job of minutes amortises it and a benchmark of seconds does not.

The cluster is Ray's local test harness: ``--nodes`` nodes of one CPU each on this machine
(``ray.cluster_utils.Cluster``), so 2 workers only gain where 2 cores are free; on a shared box
the ratio says how much of the second core the run got. Every cluster run is checked to give the
single-process rows.

    python benchmarks/scaleout.py [--n-problems 64] [--n-samples 4] [--nodes 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import organism  # noqa: E402
from analyses.sampling import sample  # noqa: E402
from analyses.task import organism_task  # noqa: E402
from hooks import load_pair  # noqa: E402
from hooks.cluster import RayCluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-problems", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--nodes", type=int, default=2, help="1-CPU nodes of the local test cluster (>= 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import ray
    from ray.cluster_utils import Cluster

    pair = load_pair(organism.checkpoint_path("base"), organism.checkpoint_path("rl-seed0"))
    task = organism_task()
    problems = task.problems(args.n_problems, seed=7)
    kw = dict(task=task, temperature=1.0, seed=0, batch_size=args.batch_size, progress=False)

    def timed(cluster, probs):
        t = time.perf_counter()
        s = sample(pair, probs, args.n_samples, cluster=cluster, **kw)
        return s, time.perf_counter() - t

    ref, t_local = timed(None, problems)
    rows = len(ref)
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                             "object_store_memory": 200 << 20})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    ray.init(address=cluster.address, logging_level="ERROR")
    t_cluster = time.perf_counter() - t0
    try:
        one_group = problems[: max(1, args.batch_size // args.n_samples)]
        _, t_start = timed(RayCluster(workers=1), one_group)  # start-up + one group per label
        _, t_group_local = timed(None, one_group)
        startup = max(0.0, t_start - t_group_local)
        times = {}
        for w in (1, 2):
            got, times[w] = timed(RayCluster(workers=w), problems)
            if [r.__dict__ for r in got.rows] != [r.__dict__ for r in ref.rows]:
                print(f"FAIL: {w}-worker rows differ from the single-process rows")
                return 1
    finally:
        ray.shutdown()
        cluster.shutdown()
    rate = {w: rows / t for w, t in times.items()}
    warm = {w: rows / max(1e-9, t - startup) for w, t in times.items()}
    print(f"organism pair, {args.n_problems} problems x {args.n_samples} samples x 2 models = {rows} rows "
          f"(scored under both), batch {args.batch_size}; {args.nodes} local 1-CPU nodes (start {t_cluster:.1f} s)")
    print(f"single process (no Ray):   {rows / t_local:7.1f} rows/s  ({t_local:.1f} s)")
    for w in (1, 2):
        print(f"Ray, {w} worker(s):         {rate[w]:7.1f} rows/s  ({times[w]:.1f} s; "
              f"{warm[w]:.1f} rows/s without the {startup:.1f} s worker start-up)")
    print(f"scale-out efficiency (2 workers / 1 worker, same run): {rate[2] / rate[1]:.2f}x "
          f"(ideal 2.00x); without start-up: {warm[2] / warm[1]:.2f}x")
    print("rows identical to the single-process run: yes (both cluster runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
