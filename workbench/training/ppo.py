"""PPO training (stable-baselines3) of a hooked policy on the batched env, writing a checkpoint series.

The config (`TrainConfig`, the named configs, `check_config`, the checkpoint schedule) is defined in
`workbench.training.config` and re-exported here. Read top to bottom: `train`, which builds the env, the
policy and PPO, saves step 0, and lets SB3 learn while a callback saves log-spaced checkpoints (weights,
evaluation metrics, and the optimizer + RNG state that --resume needs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from workbench.common.compute import resolve_device, resolve_precision
from workbench.common.errors import CheckpointError, ConfigError
from workbench.envs import make_config
from workbench.envs.rollouts import evaluate
from workbench.envs.sb3_vec import WorkbenchVecEnv
from workbench.training import checkpoints as ckpt

# The config (TrainConfig, the named configs, their checks and the checkpoint schedule) lives in
# workbench.training.config, which has no torch: its names are re-exported here, where training code finds them.
from workbench.training.config import (  # noqa: F401  (re-exported)
    CLI_MAX_CHECKPOINTS,
    FAST_PPO,
    MAX_CHECKPOINTS,
    MAX_EVAL_EPISODES,
    MAX_SEED,
    MAX_TOTAL_STEPS,
    MEMORY_SHARE,
    NAMED_CONFIGS,
    POLICIES,
    PPO_FLOAT_RANGES,
    PPO_INT_RANGES,
    TRANSFORMER_PPO,
    TrainConfig,
    check_config,
    checkpoint_steps,
    config_from_run,
    named_config,
    train_config,
)
from workbench.training.sb3_policy import HookedActorCriticPolicy


def _resume_differences(run: dict, config: TrainConfig) -> list[str]:
    """What `config` sets differently from the run it would resume: the env options and policy settings it gives,
    every PPO setting, and the seed. Each entry names the field and both values."""
    diffs = []
    env = make_config(**config.env).to_dict()  # normalised: aliases, defaults, as run.json holds them
    for key in config.env:
        if env.get(key) != run["env"].get(key):
            diffs.append(f"env.{key}: run.json has {run['env'].get(key)!r}, given {env.get(key)!r}")
    for key, value in config.policy.items():
        if value != run["policy"].get(key):
            diffs.append(f"policy.{key}: run.json has {run['policy'].get(key)!r}, given {value!r}")
    stored_ppo = run.get("ppo") if isinstance(run.get("ppo"), dict) else {}
    for key in sorted(set(config.ppo) | set(stored_ppo)):
        if config.ppo.get(key) != stored_ppo.get(key):
            diffs.append(f"ppo.{key}: run.json has {stored_ppo.get(key)!r}, given {config.ppo.get(key)!r}")
    if config.seed != run.get("seed"):
        diffs.append(f"seed: run.json has {run.get('seed')!r}, given {config.seed!r}")
    return diffs


# ---------------------------------------------------------------------------------------------- training
def train(
    config: TrainConfig | None = None,
    out: str | Path = "runs/trash-cnn",
    resume: bool = False,
    device: str = "auto",
    progress=None,
    stop_when_solved: float | None = None,
    max_train_seconds: float | None = None,
) -> Path:
    """Train and write a checkpoint series to `out`. With resume=True, continue from the latest checkpoint
    of `out` using its run.json (config is then checked against it, and used only for a larger total_steps).

    `progress(step, total, stats)` is called after every PPO update; `stop_when_solved=0.95` ends training
    at the first checkpoint whose sampled success rate reaches it, and `max_train_seconds` after that much
    training time (benchmarks).

    The run directory is locked for the whole training (`checkpoints.RunLock`): a second training into it fails
    at once. With resume=True, `config` (if given) must agree with run.json on the env options and policy
    settings it sets, every PPO setting and the seed (a ConfigError names each difference); a larger
    total_steps extends the run, and run.json is updated to say so."""
    out = Path(out)
    device = resolve_device(device)
    if config is not None:
        check_config(config)  # before anything is created or locked
    with ckpt.RunLock(out, "resuming" if resume else "training"):  # one writer at a time, for the whole training
        return _train_locked(config, out, resume, device, progress, stop_when_solved, max_train_seconds)


def _train_locked(config, out: Path, resume: bool, device: str, progress, stop_when_solved, max_train_seconds):
    from stable_baselines3 import PPO

    start_step, train_state = 0, None
    if resume:
        run = ckpt.read_run(out)
        stored = config_from_run(out)
        if config is not None:
            diffs = _resume_differences(run, config)
            if diffs:
                raise ConfigError(f"--resume of {out} with settings that differ from its run.json "
                                  f"({'; '.join(diffs)}). Resume with the run's own settings, or train a new run "
                                  "under another --out.")  # fmt: skip
        check_config(stored)
        start_step, train_state = _latest_resumable(out, run)
        series = [s for s in run.get("checkpoint_steps", []) if isinstance(s, int)]
        if config is not None and config.total_steps > stored.total_steps:
            stored.total_steps = config.total_steps
            rollout = stored.ppo["n_envs"] * stored.ppo["n_steps"]
            later = checkpoint_steps(stored.total_steps, rollout, stored.n_checkpoints)
            series = [s for s in series if s <= start_step] + [s for s in later if s > start_step]
            # run.json says what the run now is: its new total and the series it will hold
            ckpt.write_run(out, {k: v for k, v in run.items() if k != "schema_version"}
                           | {"total_steps": stored.total_steps, "checkpoint_steps": series})  # fmt: skip
        config, run_id = stored, run.get("run_id")
        _remove_uncommitted(out, start_step)
    else:
        config = config or TrainConfig()
        check_config(config)
        if ckpt.list_steps(out):
            raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue it, or another --out.")
        run_id = ckpt.new_run_id()

    ppo = dict(config.ppo)
    n_envs = ppo.pop("n_envs")
    rollout = n_envs * ppo["n_steps"]
    schedule = checkpoint_steps(config.total_steps, rollout, config.n_checkpoints)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)  # noqa: NPY002  (SB3 draws minibatch permutations from the global RNG)
    # A resumed run continues on fresh episodes (seeded by the resume point), not a replay of the first ones.
    venv = WorkbenchVecEnv(config.env.get("variant", "trash"), n_envs=n_envs, seed=config.seed * 1_000_003 + start_step,
                           **{k: v for k, v in config.env.items() if k != "variant"})  # fmt: skip
    model = PPO(
        HookedActorCriticPolicy,
        venv,
        policy_kwargs={
            "policy_config": {**config.policy, "obs_shape": list(venv.config.obs_shape), "n_actions": 5},
            "precision": resolve_precision(config.precision, device),
        },
        device=device,
        verbose=0,
        **ppo,
    )
    policy = model.policy.hooked
    if not resume:
        ckpt.write_run(
            out,
            {
                **config.to_dict(),
                "run_id": run_id,
                "env": venv.config.to_dict(),
                "policy": policy.config(),
                "checkpoint_steps": schedule,
                "precision": resolve_precision(config.precision, device),
                "tensors": ckpt.tensor_spec(policy.state_dict()),
                "versions": ckpt.versions(),
            },
        )
    else:
        _restore(model, train_state)
        model.num_timesteps = start_step

    saver = _CheckpointCallback(out, config, schedule, start_step, progress, stop_when_solved, max_train_seconds,
                                run_id)  # fmt: skip
    if not resume:
        saver.save(model, 0)
    remaining = config.total_steps - start_step
    if remaining > 0:
        with unvalidated_distributions():
            model.learn(total_timesteps=remaining, callback=saver, reset_num_timesteps=False)
    if model.num_timesteps not in ckpt.list_steps(out) and saver.solved_at is None:
        saver.save(model, model.num_timesteps)
    return out


class unvalidated_distributions:
    """Skip torch.distributions' argument checks while SB3 builds a Categorical per minibatch and rollout step
    (logits from our own module are always valid); the global default is restored afterwards."""

    def __enter__(self):
        from torch.distributions import Distribution

        self.previous = Distribution._validate_args
        Distribution.set_default_validate_args(False)

    def __exit__(self, *exc):
        from torch.distributions import Distribution

        Distribution.set_default_validate_args(self.previous)


def _latest_resumable(out: Path, run: dict) -> tuple[int, dict]:
    """The newest committed step that has training state. Orphans of an interrupted save are ignored."""
    for step in reversed(ckpt.list_steps(out)):
        if (out / f"{ckpt.step_stem(step)}.train.safetensors").exists():
            ckpt.read_step(out, step, run)  # the step JSON: its run id is the run's
            return step, ckpt.load_train_state(out, step, run)
    raise CheckpointError(f"{out} has no checkpoint with training state to resume from: start a new run.")


def _remove_uncommitted(out: Path, step: int) -> None:
    """Drop what an interrupted save left behind: temp files, and files of steps after `step`."""
    for path in out.glob(".step-*.tmp"):
        path.unlink(missing_ok=True)
    for path in out.glob("step-*"):
        match = ckpt.FILE_RE.match(path.name)
        if match and int(match.group(1)) > step:
            path.unlink(missing_ok=True)


def _train_state(model) -> dict:
    """Policy optimizer and RNG state as tensors + JSON (no pickle)."""
    opt = model.policy.optimizer.state_dict()
    tensors, meta = {}, {"param_groups": opt["param_groups"], "num_timesteps": int(model.num_timesteps)}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (SB3's global RNG)
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta["rng_numpy"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    meta["n_updates"] = int(model._n_updates)
    return {"tensors": tensors, "meta": meta}


def _restore(model, train_state: dict) -> None:
    tensors, meta = train_state["tensors"], train_state["meta"]
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    model.policy.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    r = meta["rng_numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((r["kind"], keys, r["pos"], r["has_gauss"], r["cached"]))  # noqa: NPY002
    model._n_updates = meta.get("n_updates", 0)


class _CheckpointCallback(BaseCallback):
    """Saves the scheduled checkpoints and reports progress. SB3 calls `_on_rollout_start` right after each
    update, which is when the weights for `num_timesteps` are final."""

    def __init__(self, out: Path, config: TrainConfig, schedule: list[int], start_step: int, progress, stop_at,
                 max_seconds, run_id: str | None = None):  # fmt: skip
        super().__init__()
        self.out, self.config, self.progress, self.stop_at = out, config, progress, stop_at
        self.run_id = run_id
        self.max_seconds = max_seconds
        self.start_step = start_step
        self.pending = [s for s in schedule if s > start_step]
        self.start_time = time.perf_counter()
        self.eval_seconds = 0.0
        self.solved_at: int | None = None
        self.recent_success: list[float] = []
        self.recent_return: list[float] = []
        self.stretch = {"env_steps": 0, "reward_events": 0, "reward_sum": 0.0}  # since the last checkpoint

    def save(self, model, step: int) -> dict:
        t0 = time.perf_counter()
        metrics = _evaluate(model.policy.hooked, self.config)
        self.eval_seconds += time.perf_counter() - t0
        metrics["train_seconds"] = round(self.train_seconds(), 3)
        # What training itself received since the previous checkpoint (the chiseling tracer aligns with it).
        metrics |= {f"train_{k}": v for k, v in self.stretch.items()}
        self.stretch = {"env_steps": 0, "reward_events": 0, "reward_sum": 0.0}
        ckpt.save_step(self.out, step, model.policy.hooked, metrics, _train_state(model), run_id=self.run_id)
        _prune_train_state(self.out, keep=step)
        if self.stop_at is not None and metrics["success_rate"] >= self.stop_at:
            self.solved_at = step
        return metrics

    def train_seconds(self) -> float:
        """Wall time of this session minus evaluation time."""
        return time.perf_counter() - self.start_time - self.eval_seconds

    def _on_step(self) -> bool:
        rewards = self.locals["rewards"]
        self.stretch["env_steps"] += len(rewards)
        self.stretch["reward_events"] += int(np.count_nonzero(rewards))
        self.stretch["reward_sum"] += float(rewards.sum())
        for info in self.locals["infos"]:
            if "episode" in info:
                self.recent_return.append(info["episode"]["r"])
                self.recent_success.append(float(info["task_complete"]))
        del self.recent_return[:-500], self.recent_success[:-500]
        over_time = self.max_seconds is not None and self.train_seconds() > self.max_seconds
        return self.solved_at is None and not over_time

    def _on_rollout_start(self) -> None:
        step = self.model.num_timesteps
        if self.pending and step >= self.pending[0]:
            while self.pending and step >= self.pending[0]:
                self.pending.pop(0)
            self.save(self.model, step)
        if self.progress is not None:
            self.progress(step, self.config.total_steps, self.stats())

    def _on_training_end(self) -> None:
        if self.progress is not None:
            self.progress(self.model.num_timesteps, self.config.total_steps, self.stats())

    def stats(self) -> dict:
        return {
            "env_steps_per_s": (self.model.num_timesteps - self.start_step) / max(self.train_seconds(), 1e-9),
            "return": float(np.mean(self.recent_return)) if self.recent_return else float("nan"),
            "success": float(np.mean(self.recent_success)) if self.recent_success else float("nan"),
        }


def _evaluate(policy, config: TrainConfig) -> dict:
    return evaluate(policy, config.env, episodes=config.eval_episodes, seed=10_000 + config.seed)


def _prune_train_state(out: Path, keep: int) -> None:
    """Keep optimizer state for the newest committed step only (it is what --resume needs)."""
    for path in out.glob("step-*.train.safetensors"):
        if path.name != f"{ckpt.step_stem(keep)}.train.safetensors":
            path.unlink(missing_ok=True)
