"""Training seeds: `--jobs` (seeds side by side in worker processes) and `--backend ray` (seeds and probe-sweep
checkpoints as Ray tasks on a local Ray instance) give what the local backend gives. The Ray tests are skipped where
Ray is not installed, except in CI (CI=true), where the `ray` extra is installed."""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from workbench.common.compute import one_torch_thread
from workbench.common.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.common.tasks import run_tasks
from workbench.training.checkpoints import list_steps, read_json, step_stem
from workbench.training.seeds import parse_seeds, seed_run_dir, train_seeds, usable_cpus

ROOT = Path(__file__).resolve().parents[2]
# The CLI options that make tiny_config(256, eval_episodes=2) from the named config trash-cnn.
TINY_ARGS = ["train", "--config", "trash-cnn", "-o", "room_size=5", "--steps", "256", "--ppo", "n_envs=16", "--ppo",
             "n_steps=8", "--ppo", "batch_size=64", "--ppo", "n_epochs=1", "--checkpoints", "3", "--eval-episodes",
             "2", "--device", "cpu"]  # fmt: skip
two_cpus = pytest.mark.skipif(usable_cpus() < 2, reason="--jobs 2 needs 2 CPUs")


@pytest.fixture(scope="module")
def local_ray():
    if os.environ.get("CI") == "true":
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    return train_seeds(
        tiny_config(256, eval_episodes=2), [0, 1], tmp_path_factory.mktemp("local") / "tiny", device="cpu"
    )


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory):
    """Seeds 0 and 1 of the tiny config trained by `workbench train --seeds 0,1 --jobs 2` (one torch thread each)."""
    from typer.testing import CliRunner

    from workbench.cli.main import app

    out = tmp_path_factory.mktemp("jobs") / "tiny"
    result = CliRunner().invoke(app, [*TINY_ARGS, "--seeds", "0,1", "--jobs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "trained 2/2 runs" in result.output
    return [seed_run_dir(out, 0), seed_run_dir(out, 1)]


# ---------------------------------------------------------------------------------------------- --jobs
def test_jobs_are_checked(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    cfg, cpus = tiny_config(256, eval_episodes=2), usable_cpus()
    for jobs in (0, cpus + 1, "two"):
        with pytest.raises(ConfigError, match=rf"--jobs {jobs} .*use an integer from 1 to {cpus}\."):
            train_seeds(cfg, [0, 1], tmp_path / "tiny", jobs=jobs)
    if cpus >= 2:
        with pytest.raises(ConfigError, match="--jobs 2 with --backend ray: .*--backend local"):
            train_seeds(cfg, [0, 1], tmp_path / "tiny", backend="ray", jobs=2)
        result = CliRunner().invoke(app, [*TINY_ARGS, "--jobs", "2", "--out", str(tmp_path / "one")])
        assert result.exit_code == 2 and "--jobs 2 without --seeds" in result.output
    result = CliRunner().invoke(app, [*TINY_ARGS, "--seeds", "0,1", "--jobs", str(cpus + 1), "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"use an integer from 1 to {cpus}" in result.output
    assert not list(tmp_path.iterdir())  # refused before anything was written


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / f"{step_stem(step)}.safetensors")


def measured(run: Path, step: int) -> dict:
    """A checkpoint's metrics without its wall time and run id."""
    return {k: v for k, v in read_json(run / f"{step_stem(step)}.json").items() if k not in ("train_seconds", "run_id")}


@two_cpus
def test_seeds_in_two_workers_equal_seeds_trained_alone_at_one_thread(worker_runs, tmp_path):
    """jobs=2 on 2 CPUs trains each seed at one torch thread: the same numbers, bit for bit, as the seed trained
    alone at one thread (the docstring's claim), every checkpoint's weights and metrics."""
    with one_torch_thread():
        alone = train_seeds(tiny_config(256, eval_episodes=2), [0, 1], tmp_path / "tiny", device="cpu")
    for there, here in zip(worker_runs, alone, strict=True):
        assert there.name == here.name and list_steps(there) == list_steps(here) == [0, 128, 256]
        for step in list_steps(here):
            a, b = weights(there, step), weights(here, step)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (here.name, step)
            assert measured(there, step) == measured(here, step), (here.name, step)
    assert not torch.equal(weights(worker_runs[0], 256)["fc.weight"], weights(worker_runs[1], 256)["fc.weight"])
    assert not [p.name for run in worker_runs for p in run.iterdir() if p.name.endswith(".tmp")]


@two_cpus
def test_jobs_resume_and_a_failing_seed_names_it_and_keeps_the_others(worker_runs, tmp_path):
    """Resume with jobs=2: seeds 0 and 1 continue to 512; seed 7 has no run to resume, so its worker fails: a
    CheckpointError (the worker's own class) names seed 7, its run directory and the cause, and the seeds whose
    runs finished are said to be kept, and are."""
    import shutil

    out = tmp_path / "tiny"
    for seed, run in enumerate(worker_runs):
        shutil.copytree(run, seed_run_dir(out, seed))
    done = []
    with pytest.raises(CheckpointError) as failed:
        train_seeds(tiny_config(512, eval_episodes=2), [0, 1, 7], out, device="cpu", resume=True, jobs=2,
                    progress=lambda *a: done.append(a))  # fmt: skip
    message = str(failed.value)
    assert message.startswith(f"seed 7 ({seed_run_dir(out, 7)}) failed: ") and "run.json" in message
    assert "Traceback" not in message and "Finished and kept: seeds 0,1." in message, message
    assert done == [(1, 3), (2, 3)]
    for seed in (0, 1):
        run = seed_run_dir(out, seed)
        assert list_steps(run)[-1] == 512 and read_json(run / "run.json")["total_steps"] == 512
        assert (run / f"{step_stem(512)}.train.safetensors").exists()


@two_cpus
def test_a_killed_worker_is_named_and_the_others_are_stopped(tmp_path):
    """A worker that dies without reporting (SIGKILL, as the kernel's OOM killer sends) fails its seed by name;
    the other worker is stopped, and its run keeps the checkpoints it had written."""
    out, outcome = tmp_path / "tiny", {}

    def train_in_thread():
        try:
            train_seeds(tiny_config(10**7, eval_episodes=2, n_checkpoints=200), [0, 1], out, device="cpu", jobs=2)
        except WorkbenchError as err:
            outcome["error"] = err

    thread = threading.Thread(target=train_in_thread, daemon=True)
    thread.start()
    workers = wait_for_workers(lambda: multiprocessing.active_children(), [seed_run_dir(out, s) for s in (0, 1)])
    victim = next(w for w in workers if w.name.endswith("-s1"))
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive() and not multiprocessing.active_children()
    message = str(outcome["error"])
    assert message.startswith(f"seed 1 ({seed_run_dir(out, 1)}) failed: its worker process was killed by signal "
                              "SIGKILL")  # fmt: skip
    assert "continue with --resume: seeds 0." in message
    assert list_steps(seed_run_dir(out, 0))


def wait_for_workers(children, runs: list[Path], timeout: float = 60.0) -> list:
    """The worker processes, once every run has committed its step 0 (training is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(list_steps(run) for run in runs):
            return children()
        time.sleep(0.2)
    raise AssertionError(f"the workers did not write step 0 within {timeout} s")


@two_cpus
def test_ctrl_c_stops_the_workers(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) ends the command and its
    workers, which ignore it themselves; the runs keep their checkpoints, to resume from."""
    out = tmp_path / "tiny"
    script = ("from tests.conftest import tiny_config\n"
              "from workbench.training.seeds import train_seeds\n"
              "if __name__ == '__main__':\n"
              f"    train_seeds(tiny_config(10**7, eval_episodes=2, n_checkpoints=200), [0, 1], {str(out)!r}, "
              "device='cpu', jobs=2)\n")  # fmt: skip
    (tmp_path / "train.py").write_text(script)
    command = subprocess.Popen([sys.executable, str(tmp_path / "train.py")], cwd=ROOT, start_new_session=True,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        wait_for_workers(lambda: None, [seed_run_dir(out, s) for s in (0, 1)])
        children = Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text().split()
        workers = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.killpg(command.pid, signal.SIGINT)
        _, stderr = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
    assert command.returncode != 0 and b"KeyboardInterrupt" in stderr
    assert stderr.count(b"Traceback") == 1, stderr.decode()  # the command's own, none from a worker
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # stopped and reaped
    assert all(list_steps(seed_run_dir(out, s)) for s in (0, 1))


# ---------------------------------------------------------------------------------------------- Ray
def slow_square(x, offset=0):
    time.sleep(0.05 * (3 - x))  # the first items finish last
    return x * x + offset


def fails_on_two(x, error):
    if x == 2:
        raise error
    return x


def test_run_tasks_ray_gives_the_local_results_in_order(local_ray):
    done = []
    local = run_tasks(slow_square, range(4), shared={"offset": 1})
    remote = run_tasks(slow_square, range(4), backend="ray", shared={"offset": 1}, progress=lambda *a: done.append(a))
    assert local == remote == [1, 2, 5, 10]
    assert done[-1] == (4, 4) and len(done) == 4


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_failing_task_surfaces_clearly(backend, request):
    if backend == "ray":
        request.getfixturevalue("local_ray")
    with pytest.raises(ConfigError, match="no such room"):  # a WorkbenchError keeps its type and message
        run_tasks(fails_on_two, [1, 2, 3], backend=backend, shared={"error": ConfigError("no such room")})
    with pytest.raises(WorkbenchError, match=r"task 2 of 3 \(2\) failed: ZeroDivisionError: boom"):
        run_tasks(fails_on_two, [1, 2, 3], backend=backend, shared={"error": ZeroDivisionError("boom")})


def test_bad_backend_seeds_and_missing_ray(monkeypatch):
    with pytest.raises(ConfigError, match="unknown backend 'rey'. Did you mean 'ray'"):
        run_tasks(slow_square, [1], backend="rey")
    with pytest.raises(ConfigError, match="--seeds 'a,b'"):
        parse_seeds("a,b")
    with pytest.raises(ConfigError, match="repeat a seed"):
        train_seeds(tiny_config(256, eval_episodes=2), [1, 1], "/nonexistent/x", backend="local")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install "reward-workbench\[ray\]"'):
        run_tasks(slow_square, [1], backend="ray")


def test_seeds_through_ray_equal_local_runs(local_ray, local_runs, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    out = tmp_path / "tiny"
    args = [*TINY_ARGS, "--seeds", "0,1", "--backend", "ray", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    remote = [seed_run_dir(out, 0), seed_run_dir(out, 1)]
    assert [r.name for r in remote] == ["tiny-s0", "tiny-s1"] and [r.name for r in local_runs] == ["tiny-s0", "tiny-s1"]
    for here, there in zip(local_runs, remote, strict=True):
        assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in there.iterdir())
        a, b = load_file(here / "step-000000256.safetensors"), load_file(there / "step-000000256.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seed0, seed1 = (load_file(r / "step-000000256.safetensors") for r in remote)
    assert not torch.equal(seed0["fc.weight"], seed1["fc.weight"])  # the seeds differ
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already holds checkpoints" in str(again.exception)


def test_probe_sweep_through_ray_equals_local(local_ray, local_runs, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    import probes
    from workbench.cli.main import app

    hooks, labels = ["conv.1.hook_out", "fc.hook_out"], ["carrying", "trash_map", "reward"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        local = probes.probe_sweep(local_runs[0], hooks=hooks, labels=labels, n_steps=600)
    out = tmp_path / "sweep.parquet"
    args = ["probe", str(local_runs[0]), "--hooks", ",".join(hooks), "--labels", ",".join(labels), "--steps", "600",
            "--backend", "ray", "--quiet", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(local) > 0 and local.step.nunique() == 3
    # Ray's workers run torch in one thread (OMP_NUM_THREADS=1), this process in as many as it has cores; the sweep
    # replays and fits in one thread wherever it runs, so the tables are bit-equal on one machine (measured). They
    # are compared within 1e-4 all the same, as numbers from two processes: torch does not promise them bit-equal,
    # and what this guards against was 10x larger (before, 20 of 204 rows differed, by up to 2e-3 in a score).
    remote = pd.read_parquet(out)
    assert list(remote.columns) == list(local.columns) and len(remote) == len(local)
    floats = [c for c in local.columns if local[c].dtype.kind == "f"]
    assert remote.drop(columns=floats).equals(local.drop(columns=floats))
    for column in floats:
        np.testing.assert_allclose(remote[column], local[column], rtol=0, atol=1e-4, equal_nan=True, err_msg=column)
