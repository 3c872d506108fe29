"""What a training run is: `TrainConfig`, the named configs, their checks, and the checkpoint schedule.

    cfg = named_config("trash-cnn")               # a copy: change it freely
    cfg.total_steps = 200_000
    check_config(cfg)                              # every setting in range, or one ConfigError line naming it

Each field of `TrainConfig` documents itself in its metadata: "help" says what it holds, "option" is its
`workbench train` option and "range" the values that option takes; a dict field lists its options under "options"
(one that sets one key of the dict, or a repeatable key=value option merged into it), and "cli": False keeps a field
off the command line. `field_options()` reads them; the `train` command's options are made from it, and
`train_config` builds the config those options ask for.

This module is light (no torch, no SB3): the command line reads it to build its options; `workbench.training.ppo`
trains, and re-exports these names.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.common import guards
from workbench.common.errors import CheckpointError, ConfigError, unknown_name
from workbench.envs import make_config
from workbench.envs.config import VARIANTS

# PPO settings that solve the default TrashGrid fast on 2 CPU cores: many envs, short rollouts,
# mid-size minibatches (tuned on a 2-core CPU).
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

# The trained architectures. The transformer's per-cell conv stem made the difference between no learning in
# 1M env-steps and solving TrashGrid in ~0.8M (a linear patch embedding of raw pixels did not learn under PPO).
POLICIES = {
    "cnn": {"arch": "cnn", "channels": [16, 16], "hidden": 128},
    "transformer": {"arch": "transformer", "stem": 32},
}
# Transformers want a smaller learning rate and some entropy; bf16 autocast does not speed them up on CPU.
TRANSFORMER_PPO = {"learning_rate": 1e-3, "ent_coef": 0.01}

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
CLI_MAX_CHECKPOINTS = 1000  # `workbench train --checkpoints` takes at most this many (a config in Python more)


@dataclass
class TrainConfig:
    """One training run: the env, the policy, the PPO settings, how long, what to save, and the seed."""

    env: dict = field(
        default_factory=lambda: {"variant": "trash"},
        metadata={
            "help": "env options (`workbench.envs.EnvConfig` fields): the variant and its settings",
            "options": (
                {"option": "--env", "key": "variant", "help": "variant: " + " | ".join(VARIANTS)},
                {"option": "--option", "short": "-o", "pairs": True, "help": "env option key=value, repeatable"},
                {"option": "--schedule", "key": "schedule", "help": "reward schedule (see `workbench envs`)"},
            ),
        },
    )
    policy: dict = field(
        default_factory=lambda: dict(POLICIES["cnn"]),
        metadata={
            "help": "the policy's architecture and its sizes (`POLICIES`)",
            "options": (
                {
                    "option": "--policy",
                    "key": "arch",
                    "help": " | ".join(POLICIES) + " (without --config: its tuned trash-<policy> settings)",
                },
            ),
        },
    )
    ppo: dict = field(
        default_factory=lambda: dict(FAST_PPO),
        metadata={
            "help": "every PPO setting (`FAST_PPO` names them)",
            "options": (
                {
                    "option": "--ppo",
                    "pairs": True,
                    "help": f"PPO setting key=value ({', '.join(list(FAST_PPO)[:3])}, ...)",
                },
            ),
        },
    )
    total_steps: int = field(
        default=500_000,
        metadata={"help": "total env-steps (1e6 form accepted)", "option": "--steps", "range": (1, MAX_TOTAL_STEPS)},
    )
    n_checkpoints: int = field(
        default=20,
        metadata={
            "help": f"checkpoints in the series (log-spaced, step 0 included; 2-{CLI_MAX_CHECKPOINTS})",
            "option": "--checkpoints",
            "range": (2, CLI_MAX_CHECKPOINTS),
        },
    )
    eval_episodes: int = field(
        default=200,
        metadata={
            "help": "evaluation episodes per checkpoint",
            "option": "--eval-episodes",
            "range": (1, MAX_EVAL_EPISODES),
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the policy's initialisation, the envs and PPO",
            "option": "--seed",
            "range": (0, MAX_SEED),
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "fp32 | bf16 | auto: bf16 where the device has fast bf16 (2x faster updates on CPU)",
            "cli": False,  # the named configs choose it per architecture
        },
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FieldOption:
    """One `workbench train` option, read from the metadata of the TrainConfig field it sets.

    name is the option's Python name, the command's parameter and `train_config`'s keyword: the field's own name
    for a scalar field; for a dict field's options, _OPTION_NAMES (--env sets env["variant"] and is `env`)."""

    name: str
    field: str  # the TrainConfig field it sets
    flags: tuple[str, ...]  # "--steps"; "--option", "-o"
    help: str
    type: type  # int | str | list (repeatable key=value strings)
    key: str | None = None  # a dict field: the key it sets
    pairs: bool = False  # a dict field: repeatable key=value settings merged into it
    range: tuple[int, int] | None = None  # an integer option: the values it takes

    @property
    def flag(self) -> str:
        """The flag a refusal names (`-o`, `--ppo`, `--steps`): the short one where there is one."""
        return self.flags[-1]


# Python names of the dict fields' options (`train_config`'s keywords), by (field, key or "pairs").
_OPTION_NAMES = {("env", "variant"): "env", ("env", "pairs"): "env_options", ("env", "schedule"): "schedule",
                 ("policy", "arch"): "policy", ("ppo", "pairs"): "ppo"}  # fmt: skip


def field_options() -> list[FieldOption]:
    """The options of `workbench train` that set TrainConfig fields, in field order, from each field's metadata
    (module docstring). A field marked "cli": False, or without an option, has none."""
    hints = typing.get_type_hints(TrainConfig)
    options = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        if "option" in meta:
            options.append(FieldOption(f.name, f.name, (meta["option"],), meta["help"], hints[f.name],
                                       range=meta.get("range")))  # fmt: skip
        for entry in meta.get("options", ()):
            flags = (entry["option"], *([entry["short"]] if "short" in entry else []))
            pairs = bool(entry.get("pairs"))
            name = _OPTION_NAMES[(f.name, "pairs" if pairs else entry["key"])]
            options.append(FieldOption(name, f.name, flags, entry["help"], list if pairs else str,
                                       key=entry.get("key"), pairs=pairs))  # fmt: skip
    return options


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
    """A copy of the named config `name` (NAMED_CONFIGS); an unknown name is a ConfigError listing the names."""
    if name not in NAMED_CONFIGS:
        raise unknown_name("training config", name, NAMED_CONFIGS)
    return copy.deepcopy(NAMED_CONFIGS[name])


def checkpoint_steps(total_steps: int, rollout: int, n_checkpoints: int) -> list[int]:
    """Step 0 (the random initialisation) plus log-spaced steps up to total_steps, at update boundaries,
    so that early learning, where most changes happen, is sampled densely."""
    updates = max(1, -(-total_steps // rollout))
    points = np.geomspace(1, updates, num=max(1, n_checkpoints - 1))
    return [0] + sorted({int(round(p)) * rollout for p in points})


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
        raise ConfigError(f"ppo lacks {', '.join(missing)}: give every PPO setting (workbench.training.ppo.FAST_PPO).")
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
    free = guards.available_memory()  # looked up when called, so that a test can set the machine's free memory
    if need > free * MEMORY_SHARE:
        raise ConfigError(
            f"ppo.n_envs={config.ppo['n_envs']} x ppo.n_steps={config.ppo['n_steps']} needs a rollout buffer of "
            f"{need / 2**30:.1f} GiB ({rollout:,} observations of {obs_size:,} float32 values), more than "
            f"{MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB this process can take: lower --ppo n_steps or n_envs."
        )


def config_from_run(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was trained with (its run.json): where `--resume` starts from, so that the options
    given on the command line are compared with it (`train(resume=True)`) and the others are kept."""
    from workbench.training import checkpoints as ckpt  # lazy: torch; this module is imported at CLI startup

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


def train_config(
    config: str | None = None,
    *,
    resume: str | Path | None = None,
    policy: str | None = None,
    env: str | None = None,
    env_options: dict | None = None,
    schedule: str | None = None,
    ppo: dict | None = None,
    **fields,
) -> TrainConfig:
    """The TrainConfig that `workbench train`'s options ask for (each keyword is a `field_options()` name).

    It starts from the named `config`; without one, from the run's own config when `resume` (the run directory to
    be resumed) holds a run.json, so that only the options given are compared with it by `train(resume=True)` and
    the others need not be repeated (`policy` then sets its arch); else from the tuned settings of `policy`
    (trash-cnn / trash-transformer). On top:
    `env` (a variant: the env becomes that variant with its defaults), the `env_options`, the `schedule`, the `ppo`
    settings, and each of `fields` (total_steps, n_checkpoints, eval_episodes, seed) that is not None. An unknown
    `policy` is a ConfigError listing the architectures."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train_config() got unexpected keyword arguments {sorted(unknown)}")
    if policy is not None and policy not in POLICIES:
        raise unknown_name("policy", policy, POLICIES)
    if config is None and resume is not None and (Path(resume) / "run.json").is_file():
        cfg = config_from_run(resume)
        if policy is not None:
            cfg.policy = {**cfg.policy, "arch": policy}
    else:
        cfg = named_config(config or f"trash-{policy or 'cnn'}")
    if env:
        cfg.env = {"variant": env}
    cfg.env.update(env_options or {})
    if schedule:
        cfg.env["schedule"] = schedule
    cfg.ppo.update(ppo or {})
    for name, value in fields.items():
        if value is not None:
            setattr(cfg, name, value)
    return cfg
