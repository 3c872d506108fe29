"""Throughput and memory of activation-dataset collection, against the issue's goals: >= 50k observations/s for the
CNN on CPU with every hook stored, and a peak RSS <= 2 GiB while collecting 1M observations.

Random weights are fine: collection costs the same whatever the weights. The measurement runs in a fresh process,
so that the peak RSS (ru_maxrss, a high-water mark) is this collection's own and not that of whatever ran before.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

from workbench.data import collect
from workbench.policies import build_policy, hook_shapes
from workbench.training.config import POLICIES

GOALS = {"cnn_obs_per_s": 50_000, "peak_rss_bytes_at_1m": 2 * 2**30}


# Envs per batch: the collection ring holds ~(max_steps + 32) x n_envs rows, and a transformer row with every hook
# is ~62 kB (a CNN row ~7 kB), so the transformer gets fewer envs to keep memory near the CNN's.
N_ENVS = {"cnn": 256, "transformer": 64}


def bench_collect(n_obs: int = 1_000_000, arch: str = "cnn", out_dir=None, n_envs: int | None = None) -> dict:
    """Collect `n_obs` rows with all hooks of a random `arch` policy (the trained architecture, 7x7 TrashGrid)
    into a temporary folder under `out_dir` (the system temp dir if None), then delete it. Returns obs/s, peak RSS
    and its rise over the process's baseline (after imports and building the policy), and the bytes on disk.
    Run the transformer with n_obs=200_000: its rows are ~9x larger."""
    n_envs = n_envs or N_ENVS.get(arch, 256)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (n_obs, arch, None if out_dir is None else str(out_dir), n_envs))


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _measure(n_obs: int, arch: str, out_dir: str | None, n_envs: int) -> dict:
    policy = build_policy(dict(POLICIES[arch], obs_shape=[3, 18, 18], n_actions=5))
    hooks = list(hook_shapes(policy))
    baseline = _max_rss_bytes()
    with tempfile.TemporaryDirectory(prefix="bench-collect-", dir=out_dir) as tmp:
        folder = Path(tmp) / "dataset"
        start = time.perf_counter()
        dataset = collect(policy, "trash", n_obs, hooks=hooks, n_envs=n_envs, seed=0, out=folder)
        seconds = time.perf_counter() - start
        peak = _max_rss_bytes()
        disk = sum(path.stat().st_size for path in folder.iterdir())
        shards = len(dataset._shards)
    result = {
        "arch": arch,
        "n_obs": n_obs,
        "n_envs": n_envs,
        "hooks": len(hooks),
        "seconds": round(seconds, 2),
        "obs_per_s": round(n_obs / seconds),
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "rss_increase_bytes": peak - baseline,
        "disk_bytes": disk,
        "disk_bytes_per_obs": round(disk / n_obs),
        "shards": shards,
    }
    if arch == "cnn":
        result["goal_obs_per_s"] = GOALS["cnn_obs_per_s"]
    if n_obs >= 1_000_000:
        result["goal_peak_rss_bytes"] = GOALS["peak_rss_bytes_at_1m"]
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(bench_collect(), indent=2))
