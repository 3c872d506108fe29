"""Training seeds: one run per seed, here (one after the other, or `jobs` at once in worker processes) or as Ray
tasks (`workbench.common.tasks`).

    runs = train_seeds(named_config("trash-cnn"), [0, 1, 2], "runs/trash-cnn", backend="ray")
    # -> runs/trash-cnn-s0, runs/trash-cnn-s1, runs/trash-cnn-s2
    runs = train_seeds(named_config("trash-cnn"), [0, 1, 2, 3], "runs/trash-cnn", jobs=2)  # two seeds at a time

One PPO run of the bundled sizes uses a second core only in part (its env steps and much of the rest run on one
thread between the torch ops), so seeds in separate processes keep the cores busier (`workbench.bench.training`
measures by how much). On a busy machine, a torch op's threads also wait for each other while the other process
holds a core, and one thread per run avoids that.

A task's files do not depend on a shared filesystem: a training task trains into a temporary folder on its node
and sends the run's files back, which this process writes (atomically) under `out`.
"""

from __future__ import annotations

import copy
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from workbench.common.compute import resolve_device
from workbench.common.errors import ConfigError, WorkbenchError, unknown_name
from workbench.common.guards import SEED_MAX, integer, split_names
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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` narrow), else the
    machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_jobs(jobs, backend: str = "local") -> int:
    """`jobs` as an int from 1 to `usable_cpus()`, or a ConfigError naming --jobs and the range; jobs > 1 is for
    the local backend only (Ray places its tasks itself)."""
    jobs = integer(jobs, f"--jobs {jobs}", 1, usable_cpus())
    if jobs > 1 and backend != "local":
        raise ConfigError(f"--jobs {jobs} with --backend {backend}: --jobs runs seeds side by side on this machine "
                          "(--backend local); Ray runs as many tasks at once as its CPUs allow.")  # fmt: skip
    return jobs


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
    jobs: int = 1,
) -> list[Path]:
    """Train one run of `config` per seed, each into `seed_run_dir(out, seed)`; returns the run directories in the
    order of `seeds`. seeds=None: the config's own seed into `out` itself (one run, as `train` would write it).

    Local backend: jobs=1 trains the seeds one after the other in this process, at its torch thread count.
    jobs > 1 (up to `usable_cpus()`) trains `jobs` seeds at a time, each in a fresh worker process (spawned: torch
    and fork do not mix) with max(1, cpus // jobs) torch threads, and writes the same run directories: each run is
    locked and written atomically by its own worker, as `train` writes it. `resume` continues every seed's run.
    `progress(done, total)` is called as each run finishes. A seed that fails stops the others: a WorkbenchError
    names the seed and the cause, and which seeds' runs finished (kept), which are unfinished with checkpoints to
    continue with `resume`, and which have none yet. Ctrl-C stops the workers (they ignore SIGINT themselves;
    this process terminates them), and their runs can be resumed from their last checkpoint. A script that calls
    this with jobs > 1 keeps its top level under `if __name__ == "__main__":`: spawned workers import the main
    module again.

    A run's numbers depend on its torch thread count: LAPACK and BLAS sum floats in another order with another
    thread count (a 3e-7 difference in the initial weights, measured), and PPO amplifies such differences. So a
    seed trained with jobs=2 on 2 CPUs (one thread per worker) equals, bit for bit, the seed trained alone in a
    process at one torch thread, but not the seed trained alone at two threads.

    On Ray every seed is one task of `cpus_per_task` CPUs, training with as many torch threads. The default, this
    process's torch thread count, makes each run identical to local training of its seed, bit for bit. Fewer
    CPUs per task fit more seeds on a node at once. `resume` continues local runs only (their files are here)."""
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    jobs = check_jobs(jobs, backend)
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed: each seed gets one run, so list each once.")
    work = []
    for seed in [config.seed] if seeds is None else seeds:
        cfg = copy.deepcopy(config)
        cfg.seed = int(seed)
        work.append((cfg, Path(out) if seeds is None else seed_run_dir(out, seed)))
    if backend == "local" and jobs == 1:
        return run_tasks(_train_here, work, progress=progress, shared={"device": device, "resume": resume})
    if backend == "local":
        return _train_in_workers(work, jobs, resolve_device(device), resume, progress)

    if resume:
        raise ConfigError("--resume with --backend ray: the runs' files are on this machine; resume with --backend "
                          "local, or train fresh runs under another --out.")  # fmt: skip
    _check_fresh(work)
    device = resolve_device(device)
    threads = int(cpus_per_task or torch.get_num_threads())
    files = run_tasks(_train_remote, [cfg for cfg, _ in work], backend="ray", address=address, progress=progress,
                      shared={"device": device, "threads": threads}, num_cpus_per_task=threads,
                      num_gpus_per_task=1 if device.startswith("cuda") else 0)  # fmt: skip
    for (_, run_dir), run_files in zip(work, files, strict=True):
        _write_run_files(run_dir, run_files)
    return [run_dir for _, run_dir in work]


def _check_fresh(work: list[tuple]) -> None:
    """Refuse here, before any worker or task starts, a bad config or a run directory that already holds
    checkpoints (what each training would refuse, one after the other)."""
    for cfg, run_dir in work:
        check_config(cfg)
        if run_dir.exists() and list_steps(run_dir):
            raise ConfigError(f"{run_dir} already holds checkpoints: choose another --out (or continue the runs "
                              "with --resume, on --backend local).")  # fmt: skip


def _train_here(job, device: str, resume: bool) -> Path:
    from workbench.training.ppo import train  # lazy: ppo imports stable_baselines3

    cfg, run_dir = job
    return train(cfg, run_dir, resume=resume, device=device)


# ---------------------------------------------------------------------------------------------- worker processes
def _train_in_workers(work: list[tuple], jobs: int, device: str, resume: bool, progress) -> list[Path]:
    """Train each (config, run_dir) of `work` in its own spawned process, `jobs` at a time; the run directories in
    the order of `work`. A failure stops the others and raises a WorkbenchError naming the seed (`_seeds_failed`)."""
    import multiprocessing
    from multiprocessing.connection import wait

    if not resume:
        _check_fresh(work)
    else:
        for cfg, _ in work:
            check_config(cfg)
    context = multiprocessing.get_context("spawn")
    threads = max(1, usable_cpus() // jobs)
    report = progress or (lambda done, total: None)
    waiting, running, finished = list(range(len(work))), {}, {}
    failure = None
    try:
        while running or (waiting and failure is None):
            while waiting and failure is None and len(running) < jobs:
                index = waiting.pop(0)
                cfg, run_dir = work[index]
                receive, send = context.Pipe(duplex=False)
                worker = context.Process(target=_train_worker, args=(cfg, run_dir, device, resume, threads, send),
                                         name=f"workbench-train-s{cfg.seed}", daemon=True)  # fmt: skip
                with _sigint_ignored():  # the worker inherits SIG_IGN: Ctrl-C reaches this process only
                    worker.start()
                send.close()
                running[worker.sentinel] = (index, worker, receive)
            for sentinel in wait(list(running)):
                index, worker, receive = running.pop(sentinel)
                worker.join()
                outcome = _received(receive)
                if outcome is not None and outcome[0] == "done":
                    finished[index] = Path(outcome[1])
                    report(len(finished), len(work))
                elif failure is None:
                    failure = (index, outcome, worker.exitcode)
            if failure is not None:
                _stop(running)  # the others stop at once; their runs resume from their last checkpoint
    finally:
        _stop(running)
    if failure is not None:
        raise _seeds_failed(work, failure, finished)
    return [finished[index] for index in range(len(work))]


def _train_worker(cfg, run_dir: Path, device: str, resume: bool, threads: int, send) -> None:
    """A worker process's whole life: train one run and send ("done", path) or ("failed", kind, message, error
    class when it is a WorkbenchError) through `send`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers
    torch.set_num_threads(threads)
    try:
        from workbench.training.ppo import train  # lazy: ppo imports stable_baselines3

        outcome = ("done", str(train(cfg, run_dir, resume=resume, device=device)))
    except Exception as err:
        message = str(err) if len(str(err)) <= 2000 else str(err)[:1997] + "..."
        outcome = ("failed", type(err).__name__, message, type(err) if isinstance(err, WorkbenchError) else None)
    try:
        send.send(outcome)
    except Exception:  # an error class that does not pickle: its name and message still go
        send.send(outcome[:3] + (None,))
    send.close()


def _received(receive):
    """What a finished worker sent (None when it ended without sending), and the pipe closed."""
    try:
        return receive.recv() if receive.poll() else None
    except (EOFError, OSError):
        return None
    finally:
        receive.close()


def _stop(running: dict) -> None:
    """Terminate the workers still running (SIGTERM, then SIGKILL after 10 s) and wait for them."""
    for _, worker, _ in running.values():
        worker.terminate()
    for _, worker, receive in running.values():
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
        receive.close()
    running.clear()


@contextmanager
def _sigint_ignored():
    """SIGINT ignored inside the block (in the main thread; signal handlers can be set there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _seeds_failed(work: list[tuple], failure: tuple, finished: dict) -> WorkbenchError:
    """The error for a failed seed: its cause (the worker's error, or how its process ended), then the seeds whose
    runs finished (kept), those with checkpoints to resume from and those without any yet."""
    index, outcome, exitcode = failure
    cfg, run_dir = work[index]
    error_class = None
    if outcome is not None:
        _, kind, message, error_class = outcome
        cause = message if error_class is not None else f"{kind}: {message}"
    else:
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else -exitcode
            cause = f"its worker process was killed by signal {name} (out of memory?)"
        else:  # e.g. a script that starts training at its top level: spawned workers import it again
            cause = (
                f"its worker process exited with code {exitcode} before it reported (its error is on stderr; a "
                "script that trains with jobs > 1 keeps its top level under `if __name__ == '__main__':`)"
            )
    text = f"seed {cfg.seed} ({run_dir}) failed: {cause}"
    others = [(i, seed_cfg.seed, seed_dir) for i, (seed_cfg, seed_dir) in enumerate(work) if i != index]
    done = [seed for i, seed, _ in others if i in finished]
    resumable = [seed for i, seed, path in others if i not in finished and list_steps(path)]
    fresh = [seed for i, seed, path in others if i not in finished and not list_steps(path)]
    if done:
        text += f" Finished and kept: seeds {_listed(done)}."
    if resumable:
        text += f" Unfinished, with checkpoints to continue with --resume: seeds {_listed(resumable)}."
    if fresh:
        text += f" Unfinished, without a checkpoint: seeds {_listed(fresh)}."
    try:
        return (error_class or WorkbenchError)(text)
    except TypeError:  # a WorkbenchError subclass that takes other arguments
        return WorkbenchError(text)


def _listed(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


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
