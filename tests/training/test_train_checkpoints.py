"""Training, the checkpoint series, resume after SIGKILL, and every malformed-checkpoint case."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import tiny_config
from workbench.common.errors import CheckpointError, ConfigError
from workbench.training import checkpoints as ckpt
from workbench.training.checkpoints import load_policy
from workbench.training.ppo import TrainConfig, checkpoint_steps, named_config, train


def small_config(total=1024, arch="cnn", **env) -> TrainConfig:
    """The suite's tiny config with this module's defaults: two epochs at lr 1e-3, four checkpoints, 8 eval episodes."""
    return tiny_config(total, env=env, ppo={"n_epochs": 2, "learning_rate": 1e-3}, policy={"arch": arch},
                       n_checkpoints=4, eval_episodes=8)  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train(small_config(), tmp_path_factory.mktemp("runs") / "tiny", device="cpu")


def test_series_is_log_spaced_and_complete(run_dir):
    run = ckpt.read_run(run_dir)
    steps = ckpt.list_steps(run_dir)
    assert steps[0] == 0 and steps == run["checkpoint_steps"]
    assert steps[-1] == 1024
    gaps = np.diff(steps)
    assert (gaps > 0).all() and gaps[-1] >= gaps[0]  # denser early
    metrics = json.loads((run_dir / "step-000001024.json").read_text())
    for key in ("success_rate", "argmax_success_rate", "mean_return", "mean_length", "deposits_per_episode"):
        assert key in metrics
    assert run["policy"]["arch"] == "cnn" and run["env"]["room_size"] == 5
    assert list(run_dir.glob("*.train.safetensors")) == [run_dir / "step-000001024.train.safetensors"]


def test_checkpoint_steps_schedule():
    steps = checkpoint_steps(300_000, 4096, 20)
    assert steps[0] == 0 and steps[-1] == 303_104 and len(steps) >= 15
    assert all(s % 4096 == 0 for s in steps)


def test_save_load_round_trip_gives_identical_outputs(run_dir):
    policy = load_policy(run_dir)
    again = load_policy(run_dir / "step-000001024.safetensors")
    obs = torch.randint(0, 256, (7, *policy.obs_shape), dtype=torch.uint8)
    logits, value = policy(obs)
    logits2, value2 = again(obs)
    assert torch.equal(logits, logits2) and torch.equal(value, value2)
    early = load_policy(run_dir / "step-000000000.json")
    assert early.step == 0 and not torch.equal(early(obs)[0], logits)  # training changed the weights


def test_refuses_to_overwrite_a_run(run_dir):
    with pytest.raises(ConfigError, match="--resume"):
        train(small_config(), run_dir, device="cpu")


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


class _Boom:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.write_text, (self.flag, "executed"))


@pytest.mark.parametrize("case", ["truncated", "wrong_shape", "missing_key", "garbage_json", "step_json_garbage",
                                  "pickle_payload", "torch_zip", "schema", "no_run_json", "empty_dir",
                                  "wrong_dtype"])  # fmt: skip
def test_malformed_checkpoints_give_clear_errors(run_dir, tmp_path, case):
    bad = _copy_run(run_dir, tmp_path / "bad")
    weights = bad / "step-000001024.safetensors"
    good = ckpt.read_tensors(weights)[0]
    first = sorted(good)[0]
    flag = tmp_path / "pwned"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        expect = "truncated or damaged"
    elif case == "wrong_shape":
        save_file({**good, first: torch.zeros(3, 3)}, str(weights))
        expect = "run.json says"
    elif case == "wrong_dtype":
        save_file({**good, first: good[first].double()}, str(weights))
        expect = "run.json says"
    elif case == "missing_key":
        save_file({k: v for k, v in good.items() if k != first}, str(weights))
        expect = "missing tensors"
    elif case == "garbage_json":
        (bad / "run.json").write_text("{not json")
        expect = "not valid JSON"
    elif case == "step_json_garbage":
        (bad / "step-000001024.json").write_bytes(b"\xff\xfe\x00garbage")
        expect = "damaged"
    elif case == "pickle_payload":
        weights.write_bytes(pickle.dumps(_Boom(flag)))
        expect = "never unpickled"
    elif case == "torch_zip":
        torch.save({"w": torch.zeros(2)}, weights)
        expect = "never unpickled"
    elif case == "schema":
        run = json.loads((bad / "run.json").read_text())
        run["schema_version"] = 99
        (bad / "run.json").write_text(json.dumps(run))
        expect = "schema_version"
    elif case == "no_run_json":
        (bad / "run.json").unlink()
        expect = "run.json"
    elif case == "empty_dir":
        for p in bad.glob("step-*"):
            p.unlink()
        expect = "no committed checkpoint"
    with pytest.raises(CheckpointError, match=expect):
        load_policy(bad)
    assert not flag.exists()


def test_not_a_checkpoint_path(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="neither a run directory"):
        load_policy(tmp_path / "model.pt")


def test_bad_training_options():
    with pytest.raises(ConfigError, match="training config"):
        named_config("trash-cnnn")
    cfg = small_config()
    cfg.ppo["n_stepz"] = 3
    with pytest.raises(ConfigError, match="n_steps"):
        train(cfg, "/nonexistent/never", device="cpu")
    with pytest.raises(ConfigError, match="room_size"):
        train(small_config(room_size=3), "/nonexistent/never", device="cpu")


@pytest.mark.slow  # 40,960 env-steps of PPO: ~160 s on 2 cores
def test_ppo_learns_on_a_small_room(tmp_path):
    """A short run beats the random initialisation clearly on a 5x5 room with one trash item."""
    cfg = small_config(total=40_960, n_trash=1)
    cfg.ppo.update({"n_envs": 64, "n_steps": 16, "batch_size": 256, "n_epochs": 4, "learning_rate": 2e-3})
    cfg.n_checkpoints, cfg.eval_episodes = 3, 100
    run = train(cfg, tmp_path / "learn", device="cpu")
    first = json.loads((run / "step-000000000.json").read_text())
    last = json.loads((run / f"{ckpt.step_stem(ckpt.list_steps(run)[-1])}.json").read_text())
    assert last["success_rate"] >= first["success_rate"] + 0.3, (first, last)
    assert last["mean_length"] < first["mean_length"]


def test_resume_continues_to_the_target(run_dir, tmp_path):
    copy = _copy_run(run_dir, tmp_path / "resume")
    longer = small_config(total=2048)
    train(longer, copy, resume=True, device="cpu")
    steps = ckpt.list_steps(copy)
    assert steps[-1] == 2048 and 1024 in steps
    assert ckpt.read_run(copy)["total_steps"] == 2048  # run.json says where the series now ends


TRAIN_CMD = [sys.executable, "-m", "workbench.cli.main", "train", "--quiet", "--policy", "cnn", "-o", "room_size=5",
             "--steps", "3072", "--checkpoints", "8", "--ppo", "n_envs=16", "--ppo", "n_steps=8",
             "--ppo", "batch_size=64", "--eval-episodes", "4", "--device", "cpu"]  # fmt: skip


@pytest.mark.slow  # three trainings killed and resumed in subprocesses: ~170 s on 2 cores
def test_sigkill_at_random_moments_leaves_loadable_checkpoints_and_resume_finishes(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    for trial in range(3):
        out = tmp_path / f"kill{trial}"
        proc = subprocess.Popen([*TRAIN_CMD, "--out", str(out)], env=env, stderr=subprocess.PIPE)
        # Kill once the run has started writing, at a random moment.
        deadline = time.time() + 120
        while not list(out.glob("step-*.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for step in ckpt.list_steps(out):
            load_policy(out / f"{ckpt.step_stem(step)}.safetensors")  # every committed checkpoint loads
        done = subprocess.run([*TRAIN_CMD, "--out", str(out), "--resume"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        steps = ckpt.list_steps(out)
        assert steps[-1] == 3072, steps
        assert not list(out.glob(".*.tmp"))
        load_policy(out)


def test_compact_run_halves_the_weights_and_keeps_behaviour(run_dir, tmp_path):
    import shutil

    from workbench.training.checkpoints import compact_run

    copy = tmp_path / "compact"
    shutil.copytree(run_dir, copy)
    before = sum(p.stat().st_size for p in copy.glob("step-*.safetensors"))
    assert list(copy.glob("*.train.safetensors"))
    obs = torch.randint(0, 256, (16, 3, 14, 14), dtype=torch.uint8)
    logits, value = load_policy(run_dir)(obs)
    size = compact_run(copy)
    assert size == sum(p.stat().st_size for p in copy.iterdir()) and not list(copy.glob("*.train.safetensors"))
    assert sum(p.stat().st_size for p in copy.glob("step-*.safetensors")) < 0.55 * before
    small = load_policy(copy)
    assert next(small.parameters()).dtype == torch.float32  # cast back when loaded
    small_logits, small_value = small(obs)
    assert torch.allclose(small_logits, logits, atol=2e-2) and torch.allclose(small_value, value, atol=2e-2)
    assert compact_run(copy) == size  # idempotent: a killed compaction is finished by running it again
    with pytest.raises(CheckpointError, match="floating dtype"):
        compact_run(copy, dtype="int8")


def test_each_checkpoint_records_what_training_received_since_the_last(run_dir):
    steps = ckpt.list_steps(run_dir)
    stretches = [json.loads((run_dir / f"step-{s:09d}.json").read_text()) for s in steps]
    assert stretches[0]["train_env_steps"] == 0
    for a, b, m in zip(steps, steps[1:], stretches[1:], strict=False):
        assert m["train_env_steps"] == b - a  # every env-step of the stretch counted once
        assert 0 <= m["train_reward_events"] <= m["train_env_steps"]
        assert m["train_reward_sum"] >= 0  # TrashGrid pays only on deposits
