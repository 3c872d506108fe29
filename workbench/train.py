"""PPO training (stable-baselines3) of a hooked policy on the batched env, writing a checkpoint series.

Read top to bottom: the named configs, the checkpoint schedule, then `train`, which builds the env, the
policy and PPO, saves step 0, and lets SB3 learn while a callback saves log-spaced checkpoints (weights,
evaluation metrics, and the optimizer + RNG state that --resume needs).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from workbench import checkpoints as ckpt
from workbench.envs import make_config
from workbench.errors import CheckpointError, ConfigError, unknown_name

# PPO settings that solve the default TrashGrid fast on 2 CPU cores: many envs, short rollouts,
# mid-size minibatches (measured on these 2-core machines).
FAST_PPO = {
    "n_envs": 256,
    "n_steps": 16,
    "batch_size": 512,
    "n_epochs": 4,
    "learning_rate": 3e-3,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
}


@dataclass
class TrainConfig:
    env: dict = field(default_factory=lambda: {"variant": "trash"})
    policy: dict = field(default_factory=lambda: dict(POLICIES["cnn"]))
    ppo: dict = field(default_factory=lambda: dict(FAST_PPO))
    total_steps: int = 500_000
    n_checkpoints: int = 20
    eval_episodes: int = 200
    seed: int = 0
    precision: str = "auto"  # fp32 | bf16 | auto: bf16 where the device has fast bf16 (2x faster updates on CPU)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The trained architectures. The transformer's per-cell conv stem made the difference between no learning in
# 1M env-steps and solving TrashGrid in ~0.8M (a linear patch embedding of raw pixels did not learn under PPO).
POLICIES = {
    "cnn": {"arch": "cnn", "channels": [16, 16], "hidden": 128},
    "transformer": {"arch": "transformer", "stem": 32},
}
# Transformers want a smaller learning rate and some entropy; bf16 autocast does not speed them up on CPU.
TRANSFORMER_PPO = {"learning_rate": 1e-3, "ent_coef": 0.01}


def _named(env: dict, arch: str = "cnn", steps: int = 500_000, **ppo) -> TrainConfig:
    if arch == "transformer":
        ppo = {**TRANSFORMER_PPO, **ppo}
    return TrainConfig(
        env=env,
        policy=dict(POLICIES[arch]),
        ppo={**FAST_PPO, **ppo},
        total_steps=steps,
        precision="fp32" if arch == "transformer" else "auto",
    )


NAMED_CONFIGS: dict[str, TrainConfig] = {
    "trash-cnn": _named({"variant": "trash"}),
    "trash-transformer": _named({"variant": "trash"}, arch="transformer", steps=1_000_000),
    "blueroom-cnn": _named({"variant": "blueroom"}, steps=1_000_000),  # half its rooms are empty: 2x the steps
    "redgoal-cnn": _named({"variant": "redgoal"}, steps=200_000),
    # E2 counterbalanced: green walls iff trash (the BlueRoom "test" distribution) and every deposit paid, so a
    # wall-colour effect can be told from a reward-history effect beside blueroom-cnn (blue iff trash).
    "blueroom-green-cnn": _named(
        {"variant": "blueroom", "distribution": "test", "schedule": "on-deposit"}, steps=1_000_000
    ),  # fmt: skip
    # Button regimes (the choice study, docs/e3-choice.md). never: the button never appears. rewarded: present and
    # paying 1 in every episode, while the two-trash task pays 2 (the button is the worse option). fraction: the
    # same in a quarter of the episodes. matched: one trash, so the button pays what the task pays. choice: matched,
    # and a quarter of the episodes are choice layouts whose deposit does not pay, unmarked; choice-marked: the same
    # with the bin drawn closed in choice episodes, so a policy can know that this episode's task will not pay.
    "button-never": _named({"variant": "button", "button_prob": 0.0}, steps=400_000),
    "button-rewarded": _named({"variant": "button", "button_prob": 1.0}, steps=400_000),
    "button-fraction": _named({"variant": "button", "button_prob": 0.25}, steps=400_000),
    # The one-trash regimes learn their task in half the steps (button and success rates flat from ~130k on).
    "button-matched": _named({"variant": "button", "button_prob": 1.0, "n_trash": 1}, steps=200_000),
    "button-choice": _named(
        {"variant": "button", "button_prob": 1.0, "n_trash": 1, "choice_prob": 0.25}, steps=200_000
    ),  # fmt: skip
    "button-choice-marked": _named(
        {"variant": "button", "button_prob": 1.0, "n_trash": 1, "choice_prob": 0.25, "choice_cue": True}, steps=200_000
    ),  # fmt: skip
}


def named_config(name: str) -> TrainConfig:
    if name not in NAMED_CONFIGS:
        raise unknown_name("training config", name, NAMED_CONFIGS)
    return copy.deepcopy(NAMED_CONFIGS[name])


def checkpoint_steps(total_steps: int, rollout: int, n_checkpoints: int) -> list[int]:
    """Step 0 (the random initialisation) plus log-spaced steps up to total_steps, at update boundaries,
    so that early learning, where most changes happen, is sampled densely."""
    updates = max(1, -(-total_steps // rollout))
    points = np.geomspace(1, updates, num=max(1, n_checkpoints - 1))
    return [0] + sorted({int(round(p)) * rollout for p in points})


# Valid ranges of the PPO settings: (low, high, low included, high included). Integers are real ints (not bools).
PPO_INT_RANGES = {"n_envs": (1, 1 << 16), "n_steps": (1, 1 << 24), "batch_size": (2, 1 << 26), "n_epochs": (1, 10_000)}
PPO_FLOAT_RANGES = {
    "learning_rate": (0.0, math.inf, False, False),
    "gamma": (0.0, 1.0, False, True),
    "gae_lambda": (0.0, 1.0, False, True),
    "clip_range": (0.0, math.inf, False, False),
    "ent_coef": (0.0, math.inf, True, False),
    "vf_coef": (0.0, math.inf, True, False),
    "max_grad_norm": (0.0, math.inf, False, False),
}
MAX_TOTAL_STEPS = 10**12
MAX_CHECKPOINTS = 10_000
MAX_EVAL_EPISODES = 100_000
MAX_SEED = 2**32 - 1  # numpy's global seed (SB3's minibatches) takes 0 .. 2**32 - 1
MEMORY_SHARE = 0.5  # a rollout buffer may take at most this share of the memory free


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r}: use an integer from {low:,} to {high:,}.")


def _check_number(name: str, value, low: float, high: float, low_in: bool, high_in: bool) -> None:
    span = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low <= value if low_in else low < value) and (value <= high if high_in else value < high)
    if not ok:
        raise ConfigError(f"{name}={value!r}: use a finite number in {span}.")


def check_config(config: TrainConfig) -> None:
    """Every setting in its valid range, each error one line naming the setting, its value and the range."""
    for section in ("env", "policy", "ppo"):
        if not isinstance(getattr(config, section), dict):
            raise ConfigError(f"{section}={getattr(config, section)!r}: use a dict of settings.")
    env = make_config(**config.env)  # raises ConfigError naming the problem
    unknown = set(config.ppo) - set(FAST_PPO)
    if unknown:
        raise unknown_name("PPO setting", sorted(unknown)[0], FAST_PPO)
    missing = sorted(set(FAST_PPO) - set(config.ppo))
    if missing:
        raise ConfigError(f"ppo lacks {', '.join(missing)}: give every PPO setting (workbench.train.FAST_PPO).")
    for key, (low, high) in PPO_INT_RANGES.items():
        _check_int(f"ppo.{key}", config.ppo[key], low, high)
    for key, bounds in PPO_FLOAT_RANGES.items():
        _check_number(f"ppo.{key}", config.ppo[key], *bounds)
    if config.ppo["n_envs"] * config.ppo["n_steps"] < 2:
        raise ConfigError("ppo.n_envs * ppo.n_steps = 1: a rollout needs at least 2 env-steps (PPO normalises "
                          "advantages over it); raise n_envs or n_steps.")  # fmt: skip
    _check_int("total_steps", config.total_steps, 1, MAX_TOTAL_STEPS)
    _check_int("n_checkpoints", config.n_checkpoints, 2, MAX_CHECKPOINTS)
    _check_int("eval_episodes", config.eval_episodes, 1, MAX_EVAL_EPISODES)
    _check_int("seed", config.seed, 0, MAX_SEED)
    _check_memory(config, math.prod(env.obs_shape))


def _check_memory(config: TrainConfig, obs_size: int) -> None:
    """Refuse, with the figure, a rollout buffer that cannot fit: SB3 keeps n_envs * n_steps observations as
    float32, beside seven float32 values per env-step, and allocates them all when PPO is built."""
    rollout = config.ppo["n_envs"] * config.ppo["n_steps"]
    need = rollout * (4 * obs_size + 4 * 7) + config.ppo["n_envs"] * obs_size * 2  # + the env's own uint8 frames
    from workbench.guards import available_memory

    free = available_memory()
    if need > free * MEMORY_SHARE:
        raise ConfigError(
            f"ppo.n_envs={config.ppo['n_envs']} x ppo.n_steps={config.ppo['n_steps']} needs a rollout buffer of "
            f"{need / 2**30:.1f} GiB ({rollout:,} observations of {obs_size:,} float32 values), more than "
            f"{MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB this process can take: lower --ppo n_steps or n_envs."
        )


def config_from_run(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was trained with (its run.json): where `--resume` starts from, so that the options
    given on the command line are compared with it (`train(resume=True)`) and the others are kept."""
    run = ckpt.read_run(run_dir)
    try:
        return TrainConfig(env=dict(run["env"]), policy={k: v for k, v in run["policy"].items()
                                                         if k not in ("obs_shape", "n_actions")},
                           ppo=dict(run["ppo"]), total_steps=run["total_steps"], seed=run["seed"],
                           precision=run["precision"], n_checkpoints=run["n_checkpoints"],
                           eval_episodes=run["eval_episodes"])  # fmt: skip
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{run_dir}/run.json lacks the training config ({err}); it was not written by "
                              "`workbench train`, so it cannot be resumed.") from None  # fmt: skip


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


def resolve_precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={precision!r}: use auto, fp32 or bf16.")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:  # oneDNN's bf16 kernels need avx512_bf16 or AMX; elsewhere bf16 on CPU is slower than fp32
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device={device!r}: use cpu, cuda or auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible to torch: use --device cpu or auto.")
    return device


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

    from workbench.envs.sb3_vec import WorkbenchVecEnv
    from workbench.policies.sb3 import HookedActorCriticPolicy

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
    from workbench.evaluate import evaluate

    return evaluate(policy, config.env, episodes=config.eval_episodes, seed=10_000 + config.seed)


def _prune_train_state(out: Path, keep: int) -> None:
    """Keep optimizer state for the newest committed step only (it is what --resume needs)."""
    for path in out.glob("step-*.train.safetensors"):
        if path.name != f"{ckpt.step_stem(keep)}.train.safetensors":
            path.unlink(missing_ok=True)
