"""Training seeds: one run per seed, one after the other here or as Ray tasks (`workbench.common.tasks`).

    runs = train_seeds(named_config("trash-cnn"), [0, 1, 2], "runs/trash-cnn", backend="ray")
    # -> runs/trash-cnn-s0, runs/trash-cnn-s1, runs/trash-cnn-s2

A task's files do not depend on a shared filesystem: a training task trains into a temporary folder on its node
and sends the run's files back, which this process writes (atomically) under `out`.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from workbench.common.compute import resolve_device
from workbench.common.errors import ConfigError, unknown_name
from workbench.common.guards import SEED_MAX, split_names
from workbench.common.io import atomic_write_bytes
from workbench.common.tasks import BACKENDS, run_tasks
from workbench.training.checkpoints import RunLock, list_steps
from workbench.training.config import check_config


# ---------------------------------------------------------------------------------------------- training seeds
def seed_run_dir(out: str | Path, seed: int) -> Path:
    """Where `train_seeds` writes seed `seed` of `out`: a sibling folder `<out>-s<seed>` (runs/trash-cnn-s0, ...),
    so that `workbench eval runs/trash-cnn-s*` takes every seed of a config at once."""
    out = Path(out)
    return out.with_name(f"{out.name}-s{seed}")


def train_seeds(
    config,
    seeds: list[int] | None,
    out: str | Path,
    backend: str = "local",
    device: str = "auto",
    resume: bool = False,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cpus_per_task: int | None = None,
) -> list[Path]:
    """Train one run of `config` per seed, each into `seed_run_dir(out, seed)`; returns the run directories in the
    order of `seeds`. seeds=None: the config's own seed into `out` itself (one run, as `train` would write it).

    On Ray every seed is one task of `cpus_per_task` CPUs, training with as many torch threads. The default, this
    process's torch thread count, makes each run identical to local training of its seed, bit for bit: LAPACK and
    BLAS sum in another order with another thread count (a 3e-7 difference in the initial weights, measured). Fewer
    CPUs per task fit more seeds on a node at once. `resume` continues local runs only (their files are here)."""
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed: each seed gets one run, so list each once.")
    jobs = []
    for seed in [config.seed] if seeds is None else seeds:
        cfg = copy.deepcopy(config)
        cfg.seed = int(seed)
        jobs.append((cfg, Path(out) if seeds is None else seed_run_dir(out, seed)))
    if backend == "local":
        return run_tasks(_train_here, jobs, progress=progress, shared={"device": device, "resume": resume})

    if resume:
        raise ConfigError("--resume with --backend ray: the runs' files are on this machine; resume with --backend "
                          "local, or train fresh runs under another --out.")  # fmt: skip
    for cfg, run_dir in jobs:
        check_config(cfg)  # fail here, before any task starts
        if run_dir.exists() and list_steps(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints: choose another --out.")
    device = resolve_device(device)
    threads = int(cpus_per_task or torch.get_num_threads())
    files = run_tasks(_train_remote, [cfg for cfg, _ in jobs], backend="ray", address=address, progress=progress,
                      shared={"device": device, "threads": threads}, num_cpus_per_task=threads,
                      num_gpus_per_task=1 if device.startswith("cuda") else 0)  # fmt: skip
    for (_, run_dir), run_files in zip(jobs, files, strict=True):
        _write_run_files(run_dir, run_files)
    return [run_dir for _, run_dir in jobs]


def _train_here(job, device: str, resume: bool) -> Path:
    from workbench.training.ppo import train  # lazy: ppo imports stable_baselines3

    cfg, run_dir = job
    return train(cfg, run_dir, resume=resume, device=device)


def _train_remote(cfg, device: str, threads: int) -> dict[str, bytes]:
    """Train in a temporary folder of the task's node and return the run's files {name: bytes}."""
    from workbench.training.ppo import train  # lazy: ppo imports stable_baselines3

    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory(prefix="workbench-train-") as tmp:
        run_dir = train(cfg, Path(tmp) / "run", device=device)
        return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir()) if not path.name.startswith(".")}


def _write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """run.json first, then each step's weights and training state before the step's JSON, which commits it (the
    order `train` writes in), so that an interruption leaves a loadable run."""

    def order(name: str) -> tuple:
        return (name != "run.json", name.split(".", 1)[0], name.endswith(".json"))

    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, "writing a run trained elsewhere"):  # one writer per run directory, as `train` holds
        for name in sorted(files, key=order):
            atomic_write_bytes(run_dir / name, files[name])


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of distinct ints (split as `workbench.common.guards.split_names` splits names)."""
    try:
        seeds = [int(part) for part in split_names(text, "--seeds") or []]
    except (ConfigError, ValueError):
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: write integers separated by commas, e.g. --seeds 0,1,2.")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ConfigError(f"--seeds {text!r}: seed {bad[0]} is out of range: use integers from 0 to {SEED_MAX:,}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"--seeds {text!r}: a seed is repeated (two runs would write the same series): list each once."
        )
    return seeds
