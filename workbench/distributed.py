"""Beyond one machine: run independent pieces of work (training seeds, checkpoints of a probe sweep) one after the
other in this process, or as Ray tasks on a local Ray instance or a cluster.

    results = run_tasks(fn, items, backend="ray")          # [fn(item) for item in items], in the items' order
    runs = train_seeds(named_config("trash-cnn"), [0, 1, 2], "runs/trash-cnn", backend="ray")
    # -> runs/trash-cnn-s0, runs/trash-cnn-s1, runs/trash-cnn-s2

Ray is an optional extra (`pip install "reward-workbench[ray]"`). `ray.init` with no address joins the cluster
named by RAY_ADDRESS or the one `ray start --head` started on this machine, and otherwise starts a local instance.
A task's files do not depend on a shared filesystem: a training task trains into a temporary folder on its node
and sends the run's files back, which this process writes (atomically) under `out`.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from workbench.errors import ConfigError, WorkbenchError, unknown_name

BACKENDS = ("local", "ray")


def run_tasks(
    fn: Callable,
    items: Iterable,
    backend: str = "local",
    num_cpus_per_task: float = 1,
    address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    shared: dict | None = None,
    num_gpus_per_task: float = 0,
) -> list:
    """`[fn(item, **shared) for item in items]`, locally in order or as Ray tasks (results in the items' order).

    fn must be importable by name (a module-level function; Ray workers import it). `shared` holds large objects
    every task reads (a dataset, label arrays): on Ray they go to the object store once instead of once per task.
    `progress(done, total)` is called as each task finishes. A failed task raises its own error when it is a
    WorkbenchError, otherwise a WorkbenchError naming the task; on Ray the tasks not yet finished are cancelled."""
    items, shared = list(items), dict(shared or {})
    report = progress or (lambda done, total: None)
    if backend == "local":
        results = []
        for index, item in enumerate(items):
            try:
                results.append(fn(item, **shared))
            except WorkbenchError:
                raise
            except Exception as err:
                raise _task_error(index, items, err) from err
            report(index + 1, len(items))
        return results
    if backend != "ray":
        raise unknown_name("backend", backend, BACKENDS)
    ray = connect(address)
    remote = ray.remote(num_cpus=num_cpus_per_task, num_gpus=num_gpus_per_task, max_retries=0)(_call)
    shared_refs = {name: ray.put(value) for name, value in shared.items()}  # top-level refs: Ray resolves them
    refs = [remote.remote(fn, item, **shared_refs) for item in items]
    index_of = {ref: index for index, ref in enumerate(refs)}
    results, waiting = [None] * len(refs), list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        for ref in ready:
            try:
                results[index_of[ref]] = ray.get(ref)
            except ray.exceptions.RayError as err:
                for other in waiting:
                    ray.cancel(other)
                cause = getattr(err, "cause", None)
                if isinstance(cause, WorkbenchError):
                    raise cause from err
                raise _task_error(index_of[ref], items, cause or err) from err
        report(len(refs) - len(waiting), len(refs))
    return results


def _call(fn: Callable, item, **shared):
    return fn(item, **shared)


def _task_error(index: int, items: list, err: BaseException) -> WorkbenchError:
    described = repr(items[index])
    described = described if len(described) <= 80 else described[:77] + "..."
    return WorkbenchError(f"task {index + 1} of {len(items)} ({described}) failed: {type(err).__name__}: {err}")


def connect(address: str | None = None):
    """The `ray` module, initialised: joined to the cluster at `address` (or RAY_ADDRESS, or the one started on
    this machine with `ray start --head`), else a fresh local instance. Already initialised: left as it is."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'backend "ray" needs Ray, an optional extra: pip install "reward-workbench[ray]" (or use --backend local).'
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, ignore_reinit_error=True)
        except ConnectionError as err:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address!r} ({err}): start one with `ray start --head`, or check "
                "--ray-address / RAY_ADDRESS."
            ) from err
    return ray


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
    from workbench import train as training

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
    from workbench.checkpoints import list_steps

    for cfg, run_dir in jobs:
        training.check_config(cfg)  # fail here, before any task starts
        if run_dir.exists() and list_steps(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints: choose another --out.")
    import torch

    device = training.resolve_device(device)
    threads = int(cpus_per_task or torch.get_num_threads())
    files = run_tasks(_train_remote, [cfg for cfg, _ in jobs], backend="ray", address=address, progress=progress,
                      shared={"device": device, "threads": threads}, num_cpus_per_task=threads,
                      num_gpus_per_task=1 if device.startswith("cuda") else 0)  # fmt: skip
    for (_, run_dir), run_files in zip(jobs, files, strict=True):
        _write_run_files(run_dir, run_files)
    return [run_dir for _, run_dir in jobs]


def _train_here(job, device: str, resume: bool) -> Path:
    from workbench.train import train

    cfg, run_dir = job
    return train(cfg, run_dir, resume=resume, device=device)


def _train_remote(cfg, device: str, threads: int) -> dict[str, bytes]:
    """Train in a temporary folder of the task's node and return the run's files {name: bytes}."""
    import torch

    from workbench.train import train

    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory(prefix="workbench-train-") as tmp:
        run_dir = train(cfg, Path(tmp) / "run", device=device)
        return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir()) if not path.name.startswith(".")}


def _write_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """run.json first, then each step's weights and training state before the step's JSON, which commits it (the
    order `train` writes in), so that an interruption leaves a loadable run."""
    from workbench.checkpoints import RunLock
    from workbench.io import atomic_write_bytes

    def order(name: str) -> tuple:
        return (name != "run.json", name.split(".", 1)[0], name.endswith(".json"))

    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, "writing a run trained elsewhere"):  # one writer per run directory, as `train` holds
        for name in sorted(files, key=order):
            atomic_write_bytes(run_dir / name, files[name])


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of ints."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: write integers separated by commas, e.g. --seeds 0,1,2.")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise ConfigError(f"--seeds {text!r}: seed {bad[0]} is out of range: use integers from 0 to {2**32 - 1:,}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"--seeds {text!r}: a seed is repeated (two runs would write the same series): list each once."
        )
    return seeds
