"""`--backend ray`: seeds and probe-sweep checkpoints as Ray tasks on a local Ray instance give what the local
backend gives. Skipped where Ray is not installed, except in CI (CI=true), where the `ray` extra is installed."""

import os
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

if os.environ.get("CI") == "true":
    import ray
else:
    ray = pytest.importorskip("ray")

from tests.conftest import tiny_config  # noqa: E402
from workbench.common.errors import ConfigError, WorkbenchError  # noqa: E402
from workbench.common.tasks import run_tasks  # noqa: E402
from workbench.training.seeds import parse_seeds, seed_run_dir, train_seeds  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    return train_seeds(
        tiny_config(256, eval_episodes=2), [0, 1], tmp_path_factory.mktemp("local") / "tiny", device="cpu"
    )


def slow_square(x, offset=0):
    time.sleep(0.05 * (3 - x))  # the first items finish last
    return x * x + offset


def fails_on_two(x, error):
    if x == 2:
        raise error
    return x


def test_run_tasks_ray_gives_the_local_results_in_order():
    done = []
    local = run_tasks(slow_square, range(4), shared={"offset": 1})
    remote = run_tasks(slow_square, range(4), backend="ray", shared={"offset": 1}, progress=lambda *a: done.append(a))
    assert local == remote == [1, 2, 5, 10]
    assert done[-1] == (4, 4) and len(done) == 4


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_failing_task_surfaces_clearly(backend):
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


def test_seeds_through_ray_equal_local_runs(local_runs, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    out = tmp_path / "tiny"
    args = ["train", "--config", "trash-cnn", "-o", "room_size=5", "--steps", "256", "--ppo", "n_envs=16", "--ppo",
            "n_steps=8", "--ppo", "batch_size=64", "--ppo", "n_epochs=1", "--checkpoints", "3", "--eval-episodes",
            "2", "--device", "cpu", "--seeds", "0,1", "--backend", "ray", "--out", str(out)]  # fmt: skip
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


def test_probe_sweep_through_ray_equals_local(local_runs, tmp_path):
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
