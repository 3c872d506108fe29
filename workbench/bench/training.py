"""What training a seed population gains from the machine's other cores: `bench_train_seeds()` trains the same seeds
of the bundled series' recipe twice, one run at a time and several at once, and reports the wall times.

- sequential: `train_seeds(..., jobs=1)` at the process's full torch thread count (one thread per CPU), what
  `workbench train --seeds` does without --jobs;
- parallel:   `train_seeds(..., jobs=min(cpus, seeds))`, each run in its own worker process at cpus // jobs torch
  threads (one each on 2 CPUs), what `workbench train --seeds ... --jobs 2` does.

The recipe is the one `checkpoints/make.py` trains the trash-cnn series with (its named config, its CNN size, its
10 log-spaced checkpoints, 200 evaluation episodes each), at a truncated budget per seed: full mode 4 seeds of
`FULL_STEPS`, quick mode 2 seeds of `QUICK_STEPS` (a smoke test; its figures are mostly process start-up). The wall
times include everything a user waits for: the workers' start-up (spawned processes import torch again) and the
checkpoints' evaluations. The goal is to use every core, so the figure is the speedup; there is no target number.

The bundled population's size is read from make.py's series list (`SERIES`, `series_config`), loaded from the
checkout by its path (the `checkpoints` folder is not a package, and an installed wheel does not carry it). Its
projected wall times divide that many env-steps by each mode's measured trash-cnn rate: projected, not measured.
The other series (other env variants, the transformer) train at other rates per env-step, so the projection gives
the scale of the population's training time, not a forecast; the ratio between the modes is the figure.
Timings are only meaningful on a machine that is otherwise idle: the load averages before and after are reported.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from workbench.common.guards import check_int
from workbench.training.checkpoints import list_steps
from workbench.training.config import MAX_TOTAL_STEPS, checkpoint_steps, named_config
from workbench.training.seeds import train_seeds, usable_cpus

CONFIG = "trash-cnn"
FULL_SEEDS, FULL_STEPS = 4, 409_600  # 100 PPO rollouts of 4,096 env-steps per seed
QUICK_SEEDS, QUICK_STEPS = 2, 8_192  # 2 rollouts per seed


def bench_train_seeds(
    quick: bool = False,
    seeds: int | None = None,
    steps: int | None = None,
    out: str | Path | None = None,
    sequential_threads: int | None = None,
) -> dict:
    """Wall time to train `seeds` seeds (default 4, quick 2) of the bundled trash-cnn recipe for `steps` env-steps
    each (default `FULL_STEPS`, quick `QUICK_STEPS`; rounded up to whole PPO rollouts), one run at a time vs
    min(cpus, seeds) at once; the speedup, both modes' env-steps/s and the bundled population's projected time.

    The runs are trained into a temporary folder, or into `out` (kept: `out`/sequential/trash-cnn-s<seed>, and
    `out`/parallel/...). `runs_complete` says that every run holds its last scheduled checkpoint.
    `sequential_threads`: the sequential runs' torch threads (default: one per CPU, a process's default; tests pass
    1, which a busy machine does not slow down as it slows two threads that wait for each other). Returns a
    JSON-able dict."""
    n_seeds = check_int(seeds if seeds is not None else QUICK_SEEDS if quick else FULL_SEEDS, "seeds", 1, 64)
    n_steps = check_int(steps if steps is not None else QUICK_STEPS if quick else FULL_STEPS, "steps", 1,
                        MAX_TOTAL_STEPS)  # fmt: skip
    make = _make_module()
    config, recipe = _recipe(make)
    config.total_steps = n_steps
    rollout = config.ppo["n_envs"] * config.ppo["n_steps"]
    last_step = checkpoint_steps(config.total_steps, rollout, config.n_checkpoints)[-1]
    cpus = usable_cpus()
    threads = check_int(sequential_threads if sequential_threads is not None else cpus, "sequential_threads", 1, cpus)
    jobs = min(cpus, n_seeds)
    seed_list = list(range(n_seeds))
    load_before = _load()

    with tempfile.TemporaryDirectory(prefix="workbench-bench-seeds-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # by default what a process gets: one torch thread per core
        try:
            start = time.perf_counter()
            sequential = train_seeds(config, seed_list, root / "sequential" / CONFIG, device="cpu", jobs=1)
            sequential_s = time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
        start = time.perf_counter()
        parallel = train_seeds(config, seed_list, root / "parallel" / CONFIG, device="cpu", jobs=jobs)
        parallel_s = time.perf_counter() - start
        last_steps = {
            "sequential": [list_steps(run)[-1] if list_steps(run) else None for run in sequential],
            "parallel": [list_steps(run)[-1] if list_steps(run) else None for run in parallel],
        }

    env_steps = n_seeds * last_step
    rates = {"sequential": env_steps / sequential_s, "parallel": env_steps / parallel_s}
    result = {
        "goal": "use every core: the speedup of training seeds side by side over one run at a time",
        "config": CONFIG,
        "recipe": recipe,
        "seeds": n_seeds,
        "env_steps_per_seed": last_step,
        "cpus": cpus,
        "sequential_jobs": 1,
        "sequential_threads_per_run": threads,
        "parallel_jobs": jobs,
        "parallel_threads_per_run": max(1, cpus // jobs),
        "sequential_s": round(sequential_s, 2),
        "parallel_s": round(parallel_s, 2),
        "speedup": round(sequential_s / parallel_s, 2),
        "sequential_env_steps_per_s": round(rates["sequential"]),
        "parallel_env_steps_per_s": round(rates["parallel"]),
        "runs_last_steps": last_steps,
        "runs_complete": all(step == last_step for steps_ in last_steps.values() for step in steps_),
        "load_average_before": load_before,
        "load_average_after": _load(),
    }
    result["projected_population"] = _projection(make, rates)
    return result


def _make_module() -> ModuleType | None:
    """checkpoints/make.py of the checkout this package runs from, loaded by its path; None where there is none
    (an installed package)."""
    path = Path(__file__).resolve().parents[2] / "checkpoints" / "make.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("workbench_bundled_series_make", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(make: ModuleType | None):
    """The config the bundled trash-cnn series are trained with (seed 0's, at make.py's standard checkpoint count),
    and a line saying where it came from."""
    if make is None:
        config = named_config(CONFIG)
        return config, f"named config {CONFIG} as it is (checkpoints/make.py is not in this installation)"
    config = make.series_config(f"{CONFIG}-s0")
    config.n_checkpoints = make.N_CHECKPOINTS
    return config, (
        f"checkpoints/make.py's {CONFIG} series: policy {config.policy}, {config.n_checkpoints} checkpoints, "
        f"{config.eval_episodes} evaluation episodes each, total_steps truncated"
    )


def _projection(make: ModuleType | None, rates: dict[str, float]) -> dict:
    """The bundled population's env-steps (sum of make.py's series' total_steps) over each mode's measured rate."""
    if make is None:
        return {"note": "checkpoints/make.py is not in this installation: no population to project"}
    totals = [make.series_config(name).total_steps for name in make.SERIES]
    env_steps = int(sum(totals))
    return {
        "series": len(totals),
        "env_steps": env_steps,
        "sequential_hours": round(env_steps / rates["sequential"] / 3600, 2),
        "parallel_hours": round(env_steps / rates["parallel"] / 3600, 2),
        "note": "projected: the population's env-steps at the trash-cnn rates measured here (the other series, "
        "the transformer's among them, train at other rates)",
    }


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
