"""Nothing lost, nothing silent, the data half: run directories that cannot be written twice, outputs
committed whole, every hostile input file one clear error. Every fixture is made here, in tmp_path; each test
asserts the refusal and that nothing was overwritten or left half-written."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from probes.errors import ProbeError
from tests.conftest import TINY_PPO, tiny_config
from workbench.common.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.common.guards import check_output as check_output_path
from workbench.common.io import atomic_write_bytes, read_regular_bytes
from workbench.training import checkpoints as ckpt
from workbench.training.checkpoints import RunLock, load_policy
from workbench.training.ppo import FAST_PPO, TrainConfig, train

ROOT = Path(__file__).parents[2]
POLICY = {"arch": "cnn", "channels": [4, 4], "hidden": 8, "obs_shape": [3, 14, 14], "n_actions": 5}


@contextmanager
def no_hang(seconds: int = 20):
    """Turn a hang (a FIFO read, /dev/urandom) into a test failure instead of a stuck suite."""

    def fail(*_):
        raise TimeoutError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def make_run(path: Path, steps=(0, 1024), run_id: str | None = "r" * 32, ppo: dict | None = None) -> Path:
    """A run directory written the way `train` writes one (without training: a small CNN, fresh weights per step),
    with run.json holding the training config that --resume compares with."""
    from workbench.envs import make_config
    from workbench.policies import build_policy

    torch.manual_seed(0)
    policy = build_policy(POLICY)
    env = make_config("trash", room_size=5).to_dict()
    run = {"env": env, "policy": POLICY, "ppo": {**FAST_PPO, **TINY_PPO, **(ppo or {})}, "total_steps": max(steps),
           "n_checkpoints": 4, "eval_episodes": 2, "seed": 0, "precision": "fp32", "checkpoint_steps": list(steps),
           "tensors": ckpt.tensor_spec(policy.state_dict())}  # fmt: skip
    if run_id is not None:
        run["run_id"] = run_id
    ckpt.write_run(path, run)
    for step in steps:
        ckpt.save_step(path, step, policy, {"success_rate": 0.5, "mean_return": 1.0}, run_id=run_id)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def small_config(total: int = 256, **changes) -> TrainConfig:
    """The suite's tiny config with this module's defaults: 256 env-steps, two checkpoints, two eval episodes."""
    return tiny_config(total, **{"policy": {"arch": "cnn"}, "n_checkpoints": 2, "eval_episodes": 2, **changes})


# ------------------------------------------------------------------------------------------- 1. one writer, one run id
TRAIN_CMD = [sys.executable, "-m", "workbench.cli.main", "train", "--quiet", "--policy", "cnn", "-o", "room_size=5",
             "--checkpoints", "3", "--ppo", "n_envs=16", "--ppo", "n_steps=8", "--ppo", "batch_size=64",
             "--eval-episodes", "2", "--device", "cpu"]  # fmt: skip


def test_two_trainings_into_one_out_the_second_fails_at_once(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([*TRAIN_CMD, "--steps", "2000000", "--seed", "0", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list(out.glob("step-*.json")) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None and list(out.glob("step-*.json")), "the first training did not start"
        before = snapshot(out)
        t0 = time.time()
        second = subprocess.run([*TRAIN_CMD, "--steps", "512", "--seed", "1", "--out", str(out)], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "being written by another process" in lines[0], second.stderr
        assert f"pid {first.pid}" in lines[0] and "another --out" in lines[0]
        assert time.time() - t0 < 60  # at once: the refusal comes before any work
        assert first.poll() is None  # the first one is untouched and still training
        run = json.loads((out / "run.json").read_bytes())
        assert run["seed"] == 0 and run["run_id"] == json.loads(before["run.json"])["run_id"]
    finally:
        first.kill()
        first.wait()
    for step in ckpt.list_steps(out):  # every committed step is the first run's
        assert json.loads((out / f"{ckpt.step_stem(step)}.json").read_text())["run_id"] == run["run_id"]
        load_policy(out / f"{ckpt.step_stem(step)}.safetensors")


def test_the_lock_refuses_a_second_writer_in_process_and_is_released(tmp_path):
    out = make_run(tmp_path / "run")
    before = snapshot(out)
    with RunLock(out, "training"):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}") as err:
            train(small_config(), out, resume=True, device="cpu")
        one_line(err.value)
        with pytest.raises(ConfigError, match="being written by another process"):
            ckpt.compact_run(out)
        with pytest.raises(ConfigError, match="being written"):
            train(small_config(), tmp_path / "run", device="cpu")
    assert snapshot(out) == before  # nothing written, nothing removed
    assert not (out / ckpt.LOCK_NAME).exists()  # released and removed
    with RunLock(out):  # and can be taken again
        pass
    with pytest.raises(ConfigError, match="not a folder"):
        (tmp_path / "file").write_text("x")
        with RunLock(tmp_path / "file"):
            pass


def test_a_step_of_another_run_is_refused(tmp_path):
    out = make_run(tmp_path / "run", steps=(0, 1024, 2048))
    load_policy(out)
    # a step JSON stamped by another run (what two concurrent writers used to leave)
    path = out / "step-000001024.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "run_id": "x" * 32}))
    with pytest.raises(CheckpointError, match="files of two runs are mixed") as err:
        load_policy(path)
    assert "x" * 32 in one_line(err.value) and "r" * 32 in str(err.value)
    with pytest.raises(CheckpointError, match="files of two runs"):
        ckpt.check_series(out)
    # weights stamped by another run beside this run's step JSON
    weights = out / "step-000002048.safetensors"
    save_file(load_file(weights), str(weights), metadata={"run_id": "y" * 32})
    with pytest.raises(CheckpointError, match="files of two runs"):
        load_policy(out)
    # a step without an id in a run that has one
    step0 = out / "step-000000000.json"
    step0.write_text(json.dumps({k: v for k, v in json.loads(step0.read_text()).items() if k != "run_id"}))
    with pytest.raises(CheckpointError, match="no run id"):
        load_policy(step0)


def test_runs_written_before_run_ids_still_load(tmp_path):
    out = make_run(tmp_path / "legacy", run_id=None)
    assert "run_id" not in ckpt.read_run(out)
    assert load_policy(out).step == 1024


# ---------------------------------------------------------------------------------------------- 2. --resume
@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": 1}, "seed: run.json has 0, given 1"),
        ({"policy": {"arch": "transformer"}}, "policy.arch: run.json has 'cnn', given 'transformer'"),
        ({"env": {"variant": "trash", "room_size": 6}}, "env.room_size: run.json has 5, given 6"),
        ({"env": {"variant": "blueroom", "room_size": 5}}, "env.variant: run.json has 'trash', given 'blueroom'"),
        ({"ppo": {**FAST_PPO, **TINY_PPO, "gamma": 0.9}}, "ppo.gamma: run.json has 0.99, given 0.9"),
    ],
)
def test_resume_refuses_other_settings(tmp_path, change, field):
    out = make_run(tmp_path / "run")
    before = snapshot(out)
    cfg = small_config(total=4096)
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match="differ from its run.json") as err:
        train(cfg, out, resume=True, device="cpu")
    assert field in one_line(err.value)
    assert snapshot(out) == before  # run.json and every step as they were


def test_resume_to_a_larger_total_updates_run_json(tmp_path):
    out = train(small_config(total=256, n_checkpoints=3), tmp_path / "run", device="cpu")
    run_id = ckpt.read_run(out)["run_id"]
    assert ckpt.read_run(out)["checkpoint_steps"] == [0, 128, 256]
    train(small_config(total=512, n_checkpoints=3), out, resume=True, device="cpu")
    run = ckpt.read_run(out)
    assert run["total_steps"] == 512 and run["run_id"] == run_id
    assert ckpt.list_steps(out) == run["checkpoint_steps"] and ckpt.list_steps(out)[-1] == 512
    assert {json.loads((out / f"{ckpt.step_stem(s)}.json").read_text())["run_id"] for s in run["checkpoint_steps"]} == {
        run_id
    }
    assert not (out / ckpt.LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------- 3. steps >= 1e9
def test_steps_past_nine_digits_are_found_and_the_newest_loads(tmp_path):
    from workbench.training.ppo import _remove_uncommitted

    steps = (0, 999_999_999, 1_000_000_000, 12_345_678_901)
    out = make_run(tmp_path / "run", steps=steps)
    assert (out / "step-1000000000.json").exists() and (out / "step-000000000.json").exists()
    (out / "step-0000000007.json").write_text("{}")  # a padding zero too many: not a name the workbench writes
    assert ckpt.list_steps(out) == list(steps)
    assert load_policy(out).step == 12_345_678_901
    assert ckpt.resolve(out / "step-1000000000.safetensors") == (out, 1_000_000_000)
    assert load_policy(out / "step-000000000.safetensors").step == 0  # nine-digit names still read
    _remove_uncommitted(out, 1_000_000_000)  # what --resume drops: the steps after its resume point, by number
    assert ckpt.list_steps(out) == [0, 999_999_999, 1_000_000_000]
    assert not (out / "step-12345678901.safetensors").exists()


# ---------------------------------------------------------------------------------------------- 4. import-sb3
@pytest.fixture(scope="module")
def sb3_zip(tmp_path_factory) -> Path:
    from stable_baselines3 import PPO

    path = tmp_path_factory.mktemp("sb3") / "cartpole.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, device="cpu", seed=0).save(path)
    return path


def _rewrite(src: Path, dst: Path, **members) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, members.get(item.filename, zin.read(item.filename)))
    return dst


def _with_data(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        data = json.loads(z.read("data"))
    edited = edit(data)
    text = edited if isinstance(edited, bytes) else json.dumps(data if edited is None else edited).encode()
    return _rewrite(src, dst, data=text)


def _deep(depth: int):
    obj: object = 0
    for _ in range(depth):
        obj = [obj]
    return obj


SB3_CASES = {
    "timesteps-huge": (lambda d: d.update(num_timesteps=10**12), "num_timesteps is 1000000000000"),
    "timesteps-negative": (lambda d: d.update(num_timesteps=-5), "num_timesteps is -5"),
    "timesteps-float": (lambda d: d.update(num_timesteps=1.5), "num_timesteps is 1.5"),
    "timesteps-text": (lambda d: d.update(num_timesteps="abc"), "num_timesteps is 'abc'"),
    "timesteps-bool": (lambda d: d.update(num_timesteps=True), "num_timesteps is True"),
    "data-list": (lambda d: [1, 2, 3], "JSON list, not an object"),
    "data-deep": (lambda d: d.update(policy_kwargs=_deep(100)), "nests deeper than"),
    "data-very-deep": (lambda d: b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
    "n-huge": (lambda d: d["action_space"].update(n="3000000"), "n is 3000000"),
    "n-list": (lambda d: d["action_space"].update(n=[2]), "n is [2]"),
    "n-bool": (lambda d: d["action_space"].update(n=True), "n is True"),
    "n-mismatch": (lambda d: d["action_space"].update(n=7), "7 actions, but the action head has 2"),
    "start-text": (lambda d: d["action_space"].update(start="abc"), "start is 'abc'"),
    "shape-huge": (lambda d: d["observation_space"].update(_shape=[10**6, 10**6]), "values, more than"),
    "shape-text": (lambda d: d["observation_space"].update(_shape="4"), "shape is '4'"),
    "shape-wrong": (lambda d: d["observation_space"].update(_shape=[5], low="-1.0", high="1.0"), "flattens to 5"),
    "policy-class-list": (lambda d: d.update(policy_class=[1]), "policy class is unknown"),
    "bound-object": (lambda d: d["observation_space"].update(low={"a": 1}), "bound is"),
}


@pytest.mark.parametrize("case", sorted(SB3_CASES))
def test_hostile_sb3_zips_are_refused_before_anything_is_written(sb3_zip, tmp_path, case):
    from workbench.training.sb3_import import import_sb3

    edit, expect = SB3_CASES[case]
    bad = _with_data(sb3_zip, tmp_path / f"{case}.zip", edit)
    with no_hang(), pytest.raises(CheckpointError) as err:
        import_sb3(bad, tmp_path / "out" / "run")
    assert expect in one_line(err.value)
    assert not (tmp_path / "out").exists()  # nothing written, not even the parent


def test_sb3_members_over_their_cap_are_refused_before_decompressing(sb3_zip, tmp_path, monkeypatch):
    from workbench.training import sb3_import

    big = _rewrite(sb3_zip, tmp_path / "big.zip", data=b" " * (sb3_import.MAX_DATA_BYTES + 1))  # deflates to ~16 KB
    assert big.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="refused before decompressing"):
        sb3_import.import_sb3(big, tmp_path / "run")
    # a member whose headers understate its size is read no further than that size, and refused (its CRC fails)
    monkeypatch.setattr(sb3_import, "MAX_DATA_BYTES", 100)
    raw = bytearray(sb3_zip.read_bytes())
    with zipfile.ZipFile(sb3_zip) as z:
        local = z.getinfo("data").header_offset
    raw[local + 22 : local + 26] = (50).to_bytes(4, "little")  # the local header's uncompressed size
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46 : at + 46 + int.from_bytes(raw[at + 28 : at + 30], "little")] != b"data":
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 24 : at + 28] = (50).to_bytes(4, "little")  # the central directory's
    (tmp_path / "forged.zip").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged") as err:
        sb3_import.import_sb3(tmp_path / "forged.zip", tmp_path / "run")
    one_line(err.value)
    monkeypatch.undo()
    with zipfile.ZipFile(sb3_zip) as z:
        state = torch.load(io.BytesIO(z.read("policy.pth")), weights_only=True)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with pytest.raises(CheckpointError, match=f"tensor {name!r} holds"):
        sb3_import.import_sb3(_rewrite(sb3_zip, tmp_path / "nan.zip", **{"policy.pth": buffer.getvalue()}),
                              tmp_path / "run")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_sb3_import_failing_while_writing_leaves_nothing(sb3_zip, tmp_path, monkeypatch):
    from workbench.training import checkpoints, sb3_import

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_step", broken)
    with pytest.raises(CheckpointError, match="No space left"):
        sb3_import.import_sb3(sb3_zip, tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the run nor its staging folder
    monkeypatch.undo()
    (tmp_path / "run").mkdir()  # an empty folder is a fine target
    run = sb3_import.import_sb3(sb3_zip, tmp_path / "run")
    assert load_policy(run).step == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert ckpt.read_run(run)["run_id"] == json.loads((run / "step-000000000.json").read_text())["run_id"]
    with pytest.raises(CheckpointError, match="not empty"):
        sb3_import.import_sb3(sb3_zip, run)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        sb3_import.import_sb3(sb3_zip, tmp_path / "file")


# ---------------------------------------------------------------------------------------------- 5. NaN weights
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    out = make_run(tmp_path / "run")
    path = out / "step-000000000.safetensors"
    tensors = load_file(path)
    name = next(k for k in sorted(tensors) if k.endswith("bias"))
    tensors[name][0] = value
    save_file(tensors, str(path), metadata={"run_id": "r" * 32})
    with pytest.raises(CheckpointError, match=f"tensor {name!r} holds 1 NaN or infinite") as err:
        load_policy(path)
    one_line(err.value)
    with pytest.raises(CheckpointError, match=name):
        ckpt.check_series(out)
    assert load_policy(out).step == 1024  # the other checkpoint is fine


# ---------------------------------------------------------------------------------------------- 6. input files
def _hostile(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "urandom":
        path.symlink_to("/dev/urandom")


@pytest.mark.parametrize("kind", ["directory", "fifo", "urandom"])
@pytest.mark.parametrize("name", ["step-000001024.safetensors", "step-000001024.json", "run.json"])
def test_a_checkpoint_file_that_is_not_a_regular_file_is_one_error(tmp_path, kind, name):
    if kind == "urandom" and not Path("/dev/urandom").exists():
        pytest.skip("no /dev/urandom")
    out = make_run(tmp_path / "run")
    _hostile(out / name, kind)
    with no_hang(), pytest.raises(CheckpointError) as err:
        load_policy(out / "step-000001024.safetensors")
    message = one_line(err.value)
    assert "directory" in message if kind == "directory" else "not a regular file" in message, message


@pytest.mark.parametrize(
    "content, expect",
    [
        ("deep", "nests deeper than"),
        ({"step": 1024, "success_rate": float("nan")}, "'success_rate' is nan, not a finite number"),
        ({"step": 1024, "success_rate": "abc"}, "'success_rate' is 'abc', not a finite number"),
        ({"step": 1024, "success_rate": True}, "not a finite number"),
        ({"step": "1024"}, "'step' is '1024', not 1024"),
        ({"step": 2048}, "'step' is 2048, not 1024"),
        ([1, 2], "should hold a JSON object"),
    ],
)
def test_damaged_step_json_is_one_error(tmp_path, content, expect):
    out = make_run(tmp_path / "run")
    text = "[" * 100_000 + "]" * 100_000 if content == "deep" else json.dumps(content)
    (out / "step-000001024.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        load_policy(out)
    assert expect in one_line(err.value)


def test_damaged_run_json_is_one_error(tmp_path, monkeypatch):
    out = make_run(tmp_path / "run")
    run = json.loads((out / "run.json").read_text())
    cases = [
        ({**run, "policy": {**run["policy"], "hidden": 9}}, "does not fit the weights"),  # shapes disagree
        ({**run, "tensors": {**run["tensors"], "fc.weight": {"shape": "x", "dtype": 1}}}, "the spec of tensor"),
        ({**run, "tensors": {**run["tensors"], "fc.weight": [1]}}, "the spec of tensor"),
        ({**run, "run_id": 5}, "run_id is 5"),
        ({**run, "env": _deep(200)}, "nests deeper than"),
    ]
    for content, expect in cases:
        (out / "run.json").write_text(json.dumps(content))
        with pytest.raises(CheckpointError) as err:
            load_policy(out)
        assert expect in one_line(err.value), (expect, err.value)
    (out / "run.json").write_text(json.dumps(run))
    monkeypatch.setattr(ckpt, "MAX_JSON_FILE_BYTES", 100)
    with pytest.raises(CheckpointError, match="more than the 100 allowed"):
        load_policy(out)


def test_read_regular_bytes_and_output_paths(tmp_path):
    (tmp_path / "ok").write_bytes(b"abc")
    assert read_regular_bytes(tmp_path / "ok", 3, "file") == b"abc"
    with pytest.raises(WorkbenchError, match="more than the 2 allowed"):
        read_regular_bytes(tmp_path / "ok", 2, "file")
    with pytest.raises(FileNotFoundError):
        read_regular_bytes(tmp_path / "missing", 2, "file")
    os.mkfifo(tmp_path / "fifo")
    with no_hang(), pytest.raises(WorkbenchError, match="not a regular file"):
        read_regular_bytes(tmp_path / "fifo", 10, "file")
    run = make_run(tmp_path / "run")
    for path in (run, run / "run.json", run / "step-000000000.safetensors", run / "step-1000000000.json"):
        with pytest.raises(WorkbenchError):
            check_output_path(path)
    assert check_output_path(run / "probes.parquet") == run / "probes.parquet"
    assert check_output_path(tmp_path / "new" / "deeper" / "x.parquet")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(WorkbenchError, match="cannot be written"):
            check_output_path(locked / "x.parquet")


# ---------------------------------------------------------------------------------------------- 7. table + directions
def _sweep_outputs(seed: int):
    from probes.directions import Direction
    from probes.resamples import Resamples

    g = torch.Generator().manual_seed(seed)
    directions = [Direction("fc.hook_out", label, "binary", "logistic", torch.randn(8, generator=g), torch.tensor(0.0),
                            torch.zeros(8), torch.ones(8), step=0) for label in ("carrying", "reward")]  # fmt: skip
    table = pd.DataFrame({"label": ["carrying", "reward"], "value": [seed + 0.1, seed + 0.2], "step": [0, 0]})
    resamples = Resamples([(0, "fc.hook_out", "carrying", "logistic", "info_gain")], np.full((1, 3), seed))
    return table, directions, resamples


def test_a_table_and_its_directions_are_committed_together(tmp_path, monkeypatch):
    import probes
    from probes import sweep
    from probes.directions import paths, table_commit_id

    out = tmp_path / "probes.parquet"
    old_table, old_dirs, old_res = _sweep_outputs(1)
    commit = sweep.write_outputs(old_table, old_dirs, old_res, out)
    assert table_commit_id(out) == commit and pd.read_parquet(out).equals(old_table)
    assert json.loads(paths(out)[1].read_text())["commit_id"] == commit
    assert [d.label for d in probes.load_directions(out)] == ["carrying", "reward"]
    assert probes.load_resamples(out).values[0, 0] == 1
    before = snapshot(tmp_path)

    # a failure while staging: nothing renamed, no temp file left
    table, dirs, res = _sweep_outputs(2)
    monkeypatch.setattr(sweep, "table_bytes", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        sweep.write_outputs(table, dirs, res, out)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before

    # a kill between the renames (the directions renamed, the table not): the mix is refused, the old table kept
    real_replace, done = os.replace, []

    def killed_after_two(src, dst):
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_two)  # workbench.common.io.commit_files renames
    with pytest.raises(KeyboardInterrupt):
        sweep.write_outputs(table, dirs, res, out)
    monkeypatch.undo()
    assert out.read_bytes() == before["probes.parquet"]  # the old table, whole
    assert probes.load_resamples(out).values[0, 0] == 1  # not yet renamed: the old resamples, the old table's
    old_bytes = out.read_bytes()
    sweep.write_outputs(table, dirs, res, out)
    out.write_bytes(old_bytes)  # another sweep's table beside these resamples: refused
    with pytest.raises(ProbeError, match="another sweep"):
        probes.load_resamples(out)
    with pytest.raises(ProbeError, match="interrupted") as err:
        probes.load_directions(out)
    one_line(err.value)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]

    # the directions' two files from different sweeps: refused too
    sweep.write_outputs(table, dirs, res, out)
    tensors_path, index_path = paths(out)
    newer = index_path.read_bytes()
    sweep.write_outputs(*_sweep_outputs(3), out)
    index_path.write_bytes(newer)
    with pytest.raises(ProbeError, match="different sweeps"):
        probes.load_directions(tensors_path)


def test_directions_saved_alone_and_legacy_sets_still_load(tmp_path):
    import probes
    from probes.directions import paths

    _, dirs, _ = _sweep_outputs(0)
    probes.save_directions(dirs, tmp_path / "alone.parquet")  # no table beside them
    assert len(probes.load_directions(tmp_path / "alone.parquet")) == 2
    # a set written before commit ids: neither the table nor the directions carry one
    from safetensors.torch import save as st_save

    tensors_path, index_path = paths(tmp_path / "legacy.parquet")
    tensors_path.write_bytes(st_save({f"0/{k}": getattr(dirs[0], k) for k in ("weight", "bias", "mean", "std")}))
    index_path.write_text(json.dumps({"tensors": tensors_path.name,
                                      "directions": [{"key": "0", **dirs[0].index_entry()}]}))  # fmt: skip
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "legacy.parquet")
    assert probes.load_directions(tmp_path / "legacy.parquet")[0].label == "carrying"


# ---------------------------------------------------------------------------------------------- 8. checked up front
def test_a_sweep_checks_every_checkpoint_before_collecting(tmp_path, monkeypatch):
    import probes
    from probes import sweep

    out = make_run(tmp_path / "run", steps=(0, 512, 1024))
    weights = out / "step-000000512.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # an older checkpoint, truncated

    def collect(*args, **kwargs):
        raise AssertionError("collected before the checkpoints were checked")

    monkeypatch.setattr(sweep, "collect", collect)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="step-000000512.safetensors.*truncated or damaged") as err:
        probes.probe_sweep(out, n_steps=100)
    assert time.perf_counter() - t0 < 10 and one_line(err.value)
    # and an output path that cannot be written is refused before the work too
    with pytest.raises(WorkbenchError, match="is a directory"):
        probes.probe_sweep(out, n_steps=100, out=tmp_path)
    with pytest.raises(WorkbenchError, match="one of the run's own files"):
        probes.probe_sweep(out, n_steps=100, out=out / "run.json")


# ---------------------------------------------------------------------------------------------- 9. permissions
def test_written_files_get_normal_permissions(tmp_path):
    from probes import sweep

    previous = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        run = make_run(tmp_path / "run")
        sweep.write_outputs(*_sweep_outputs(0), tmp_path / "p.parquet")
        os.umask(0o077)
        private = atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(previous)
    for p in [*run.iterdir(), *tmp_path.glob("p.*")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE(private.stat().st_mode) == 0o600  # the umask still rules


# ---------------------------------------------------------------------------------------------- 10. PPO ranges
@pytest.mark.parametrize(
    "where, key, value, expect",
    [
        ("ppo", "gamma", 5, "ppo.gamma=5: use a finite number in (0, 1]"),
        ("ppo", "gamma", 0.0, "ppo.gamma=0.0: use a finite number in (0, 1]"),
        ("ppo", "gae_lambda", 1.5, "ppo.gae_lambda=1.5: use a finite number in (0, 1]"),
        ("ppo", "clip_range", -1, "ppo.clip_range=-1: use a finite number in (0, inf)"),
        ("ppo", "learning_rate", -1, "ppo.learning_rate=-1: use a finite number in (0, inf)"),
        ("ppo", "learning_rate", "abc", "ppo.learning_rate='abc': use a finite number"),
        ("ppo", "learning_rate", float("nan"), "ppo.learning_rate=nan"),
        ("ppo", "learning_rate", float("inf"), "ppo.learning_rate=inf"),
        ("ppo", "n_envs", True, "ppo.n_envs=True: use an integer from 1 to"),
        ("ppo", "n_steps", 1.5, "ppo.n_steps=1.5: use an integer"),
        ("ppo", "batch_size", 1, "ppo.batch_size=1: use an integer from 2 to"),
        ("ppo", "n_steps", 10_000_000, "needs a rollout buffer of"),
        ("cfg", "seed", -1, "seed=-1: use an integer from 0 to 4,294,967,295"),
        ("cfg", "seed", True, "seed=True"),
        ("cfg", "total_steps", 10**13, "total_steps=10000000000000: use an integer from 1 to"),
        ("cfg", "n_checkpoints", 10**12, "n_checkpoints=1000000000000: use an integer from 2 to 10,000"),
        ("cfg", "eval_episodes", 0, "eval_episodes=0"),
    ],
)
def test_training_settings_are_range_checked(tmp_path, where, key, value, expect):
    cfg = small_config()
    if where == "ppo":
        cfg.ppo[key] = value
    else:
        setattr(cfg, key, value)
    with pytest.raises(ConfigError) as err:
        train(cfg, tmp_path / "never", device="cpu")
    assert expect in one_line(err.value), str(err.value)
    assert not (tmp_path / "never").exists()


def test_memory_refusal_names_the_figure_and_the_option(tmp_path):
    cfg = small_config()
    cfg.ppo.update(n_envs=4096, n_steps=1 << 20)
    with pytest.raises(ConfigError, match=r"needs a rollout buffer of [\d.]+ GiB.*lower --ppo n_steps or n_envs"):
        train(cfg, tmp_path / "never", device="cpu")
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------------------- kills
def test_sigkill_during_a_probe_sweep_never_leaves_a_silent_mix(tmp_path):
    """`workbench probe` killed at random moments near its end (where it commits): the table beside its
    directions and resamples is always one sweep's set, or the mix is refused by name; a rerun finishes."""
    import random
    import shutil

    import probes

    run = tmp_path / "run"
    shutil.copytree(ROOT / "checkpoints" / "trash-cnn-s3", run)
    out = tmp_path / "probes.parquet"
    cmd = [sys.executable, "-m", "workbench.cli.main", "probe", str(run), "--steps", "300", "--hooks", "fc.hook_out",
           "--labels", "carrying,reward", "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    duration = time.perf_counter() - start
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.7, 1.05) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = pd.read_parquet(out)  # never torn: the table is renamed into place whole
        assert len(table) > 0
        try:
            directions = probes.load_directions(out)
            probes.load_resamples(out)
        except ProbeError as err:  # a kill between the renames: refused by name, never read as one set
            assert "interrupted" in str(err) or "another sweep" in str(err), err
        else:
            assert {d.label for d in directions} <= {"carrying", "reward"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert probes.load_directions(out) and probes.load_resamples(out) is not None
