"""MiniGrid as a second world: its environments behind the batched interface that collection uses, with labels
read from MiniGrid's own grid state.

    cfg = minigrid_config("MiniGrid-DoorKey-5x5-v0", obs="rgb")   # or {"world": "minigrid", "env_id": ...}
    ds = collect(workbench.hook(sb3_model), cfg, n_steps=5_000)     # policy trained on the same observations

`MiniGridBatch` steps `n_envs` MiniGrid envs (a Python loop: MiniGrid is single-env) with auto-reset, returning
channel-first uint8 observations like the workbench's own envs, so a policy trained through SB3 (whose
VecTransposeImage makes images channel-first) reads them as it did in training. Observations (`obs`):

- "image": MiniGrid's partial, egocentric view (agent_view_size, 7 by default), symbolic (object type, colour,
  state per cell): [3, V, V];
- "rgb": the same view rendered as pixels (`RGBImgPartialObsWrapper`, 8 px per tile): [3, 8V, 8V], which SB3's
  stock CnnPolicy (NatureCNN) can read.

Env kwargs (`kwargs`, e.g. {"agent_view_size": 9, "max_steps": 40}) go to `gymnasium.make` and are kept in the
config, so every place that rebuilds the env (collection, evaluation, contrast pairs, the report) builds the same.

Coordinates. MiniGrid indexes its grid and its symbolic "image" as [x, y] (column first); SB3's channel-first
transpose keeps that, so an "image" observation is [C, x, y] of the *view*, which is egocentric (the agent at
x = V // 2, y = V - 1, facing up the view), not the grid. "rgb" observations are pictures, [C, y, x] of the view.
Policies must get the layout they were trained on, so observations are left as SB3 hands them over. Every label
and map, by contrast, is in grid coordinates as (row, col) = (y, x), like the workbench's own rooms: agent_row is
`agent_pos[1]`, and a map's [row, col] cell is MiniGrid's grid.get(col, row).

Labels, per observation (`labels()`; rows and columns count from the grid's top-left, walls included):
agent_row, agent_col, agent_dir (0 right, 1 down, 2 left, 3 up), carrying (bool), carrying_type (0 nothing, else
MiniGrid's OBJECT_TO_IDX of the object), goal_row / goal_col (-1 if no goal), door_open / door_locked (of the
first door, False if none), n_doors, step, reward (of the transition that led here, 0 at an episode's start),
episode_id; and per-cell maps [height, width] of the grid: agent_map, goal_map, wall_map, door_map, key_map,
ball_map, box_map, lava_map.

Beside collection: `check_spaces` / `matching_config` (does a policy's observation and action space fit an env
built with given kwargs), `rollout_episodes` and `behaviour_table` (success rate and return over fresh episodes,
for `workbench eval`), `contrast_pairs` (observations that differ in one factor: key, carrying, door; for
`workbench patch`) and `episode` (one rollout with full-grid frames, for the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.common.compute import sample_actions
from workbench.common.errors import ActionError, ConfigError, unknown_name
from workbench.common.guards import check_int
from workbench.common.tables import mean_row, rate_row, tidy_rows

OBS_KINDS = ("image", "rgb")
MAP_OBJECTS = ("goal", "wall", "door", "key", "ball", "box", "lava")
ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")  # MiniGrid's Actions, in order
INTERVAL = "{} (episode-level)"  # intervals of evaluation rows are over episodes


@dataclass
class MiniGridConfig:
    """Which MiniGrid env and observation; the rest is read from the env: `max_steps`, `obs_shape` ([C, ...] as
    the policy reads it), `grid_shape` (height, width), `grid_size` (the larger side), `n_actions` and the
    observation space's dtype and bounds."""

    env_id: str
    obs: str = "image"
    max_steps: int = 0
    obs_shape: tuple[int, int, int] = (0, 0, 0)
    grid_size: int = 0
    kwargs: dict = field(default_factory=dict)
    grid_shape: tuple[int, int] = (0, 0)
    n_actions: int = 0
    obs_dtype: str = "uint8"
    obs_low: float = 0.0
    obs_high: float = 255.0

    def to_dict(self) -> dict:
        return {"world": "minigrid", "env_id": self.env_id, "obs": self.obs, "kwargs": dict(self.kwargs)}

    def describe(self) -> str:
        kwargs = f", kwargs {self.kwargs}" if self.kwargs else ""
        return f"{self.env_id} (obs {self.obs!r}{kwargs})"


def minigrid_config(env_id: str, obs: str = "image", kwargs: dict | None = None, **_ignored) -> MiniGridConfig:
    """A checked MiniGridConfig (`_ignored`: the 'world' key of a stored `to_dict()`)."""
    if obs not in OBS_KINDS:
        raise unknown_name("MiniGrid observation", obs, OBS_KINDS)
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"MiniGrid kwargs {kwargs!r}: pass a dict of keyword arguments for gymnasium.make.")
    env = _make(env_id, obs, kwargs or {})
    try:
        base = env.unwrapped
        space = env.observation_space  # [H, W, C] as MiniGrid gives it
        image = space.shape
        return MiniGridConfig(
            env_id, obs, int(base.max_steps), (image[2], image[0], image[1]), max(base.width, base.height),
            dict(kwargs or {}), (int(base.height), int(base.width)), int(env.action_space.n), str(space.dtype),
            float(np.min(space.low)), float(np.max(space.high)),
        )  # fmt: skip
    finally:
        env.close()


def check_spaces(cfg: MiniGridConfig, obs_shape, obs_dtype: str, n_actions: int, low=None, high=None) -> list[str]:
    """What differs between a policy's spaces and the env's: [] when the policy fits `cfg`."""
    problems = []
    if tuple(int(d) for d in obs_shape) != tuple(cfg.obs_shape):
        problems.append(f"observation shape {list(obs_shape)} vs {list(cfg.obs_shape)}")
    if str(np.dtype(obs_dtype)) != cfg.obs_dtype:
        problems.append(f"observation dtype {np.dtype(obs_dtype)} vs {cfg.obs_dtype}")
    for name, mine, theirs in (("low", low, cfg.obs_low), ("high", high, cfg.obs_high)):
        if mine is not None and not (np.asarray(mine, dtype=np.float64) == theirs).all():
            problems.append(f"observation {name} bound {np.min(mine):g}..{np.max(mine):g} vs {theirs:g}")
    if int(n_actions) != cfg.n_actions:
        problems.append(f"{int(n_actions)} actions vs {cfg.n_actions}")
    return problems


def matching_config(env_id: str, obs_kind: str | None, kwargs: dict | None, obs_shape, obs_dtype: str,
                    n_actions: int, low=None, high=None) -> MiniGridConfig:  # fmt: skip
    """The MiniGridConfig of `env_id` built with `kwargs` whose spaces fit the policy's, with observation kind
    `obs_kind` (None: whichever kind fits); a ConfigError naming both sides' spaces where none does."""
    kinds = (obs_kind,) if obs_kind is not None else OBS_KINDS
    tried = []
    for kind in kinds:
        cfg = minigrid_config(env_id, obs=kind, kwargs=kwargs)
        problems = check_spaces(cfg, obs_shape, obs_dtype, n_actions, low, high)
        if not problems:
            return cfg
        tried.append(f"obs {kind!r} gives {list(cfg.obs_shape)} {cfg.obs_dtype} and {cfg.n_actions} actions "
                     f"({'; '.join(problems)})")  # fmt: skip
    kwargs_text = f" with kwargs {kwargs}" if kwargs else ""
    hint = _fix_hint(env_id, kwargs or {}, obs_shape, obs_dtype, n_actions, low, high)
    raise ConfigError(
        f"the policy reads observations {list(obs_shape)} {np.dtype(obs_dtype)} and chooses among {n_actions} "
        f"actions, but {env_id}{kwargs_text}: {', '.join(tried)}. Pass the env it was trained on, with the kwargs "
        f"it was made with (-o key=value) and its observation kind (--obs-kind image|rgb){hint}."
    )


def _fix_hint(env_id: str, kwargs: dict, obs_shape, obs_dtype, n_actions, low, high) -> str:
    """'; --obs-kind K [-o agent_view_size=V] gives ...' where such a change of kind or view size makes `env_id`
    fit the policy; '' where none does."""
    shape = tuple(int(d) for d in obs_shape)
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        return ""
    candidates = [("image", shape[1]), ("rgb", shape[1] // 8)] if shape[1] % 8 == 0 else [("image", shape[1])]
    for kind, view in candidates:
        for extra in ({}, {"agent_view_size": view}):
            if extra and (view < 3 or view % 2 == 0):
                continue
            try:
                cfg = minigrid_config(env_id, obs=kind, kwargs={**kwargs, **extra})
            except ConfigError:
                continue
            if not check_spaces(cfg, obs_shape, obs_dtype, n_actions, low, high):
                option = f" -o agent_view_size={view}" if extra else ""
                return f"; --obs-kind {kind}{option} gives exactly the policy's spaces"
    return ""


def _make(env_id: str, obs: str, kwargs: dict):
    try:
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
        from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper
    except ImportError as err:
        raise ConfigError(f"MiniGrid is not installed ({err}): pip install minigrid (the 'bench' extra).") from err
    if not isinstance(env_id, str) or not env_id.startswith(("MiniGrid-", "BabyAI-")):
        raise ConfigError(f"{env_id!r} is not a MiniGrid env id: use e.g. 'MiniGrid-Empty-5x5-v0'.")
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as err:
        ids = sorted(k for k in gym.registry if k.startswith("MiniGrid-"))
        raise unknown_name("MiniGrid env", env_id, ids) from err
    except (TypeError, ValueError, AssertionError) as err:  # a kwarg the env does not take, or a bad value
        why = f"{type(err).__name__}: {err}" if str(err) else f"{type(err).__name__} in its constructor"
        raise ConfigError(
            f"{env_id} cannot be made with kwargs {kwargs} ({why}): pass only keyword arguments its constructor "
            "takes, with values it accepts (e.g. agent_view_size=9: odd, at least 3; max_steps=100)."
        ) from err
    if obs == "rgb":
        env = RGBImgPartialObsWrapper(env)
    return ImgObsWrapper(env)


@dataclass
class _State:
    obs: np.ndarray


class MiniGridBatch:
    """n MiniGrid envs stepped together with auto-reset (the BatchEnv interface: state.obs, step, labels)."""

    def __init__(self, config: MiniGridConfig, n_envs: int = 1, seed: int = 0):
        self.config, self.n_envs, self.seed = config, n_envs, seed
        self.envs = [_make(config.env_id, config.obs, config.kwargs) for _ in range(n_envs)]
        self.episode = np.zeros(n_envs, dtype=np.int64)
        self._reward = np.zeros(n_envs, dtype=np.float32)
        first = [env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]
        self.state = _State(np.stack([o.transpose(2, 0, 1) for o in first]).astype(np.uint8))

    @property
    def episode_id(self) -> np.ndarray:
        return self.episode * self.n_envs + np.arange(self.n_envs)

    def step(self, actions):
        actions = np.asarray(actions)
        if actions.shape != (self.n_envs,):
            raise ActionError(f"actions of shape {actions.shape}: pass one action per env, shape ({self.n_envs},).")
        reward = np.zeros(self.n_envs, dtype=np.float32)
        terminated = np.zeros(self.n_envs, dtype=bool)
        truncated = np.zeros(self.n_envs, dtype=bool)
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            obs, reward[i], terminated[i], truncated[i], _ = env.step(int(action))
            if terminated[i] or truncated[i]:
                self.episode[i] += 1
                # unique per (slot, episode) and different from the first reset's seeds
                obs, _ = env.reset(seed=int(self.seed + self.n_envs * self.episode[i] + i))
            self.state.obs[i] = obs.transpose(2, 0, 1)
        self._reward = np.where(terminated | truncated, 0.0, reward).astype(np.float32)
        return self.state.obs.copy(), reward, terminated, truncated, {"reward": reward}

    def labels(self) -> dict[str, np.ndarray]:
        """Ground truth of the current observations (module docstring)."""
        from minigrid.core.constants import OBJECT_TO_IDX

        n, shape = self.n_envs, self.config.grid_shape
        ints = ("agent_row", "agent_col", "agent_dir", "step", "carrying_type", "goal_row", "goal_col", "n_doors")
        out = {name: np.zeros(n, dtype=np.int64) for name in ints}
        out |= {name: np.zeros(n, dtype=bool) for name in ("carrying", "door_open", "door_locked")}
        maps = {f"{name}_map": np.zeros((n, *shape), dtype=bool) for name in ("agent", *MAP_OBJECTS)}
        out["goal_row"][:] = out["goal_col"][:] = -1
        for i, env in enumerate(self.envs):
            base = env.unwrapped
            if (base.height, base.width) != shape:
                raise ConfigError(
                    f"{self.config.env_id} changed its grid from {shape[0]}x{shape[1]} to {base.height}x{base.width} "
                    "between episodes: maps need one grid size; use an env (or kwargs) with a fixed size."
                )
            col, row = base.agent_pos  # MiniGrid positions are (x, y)
            out["agent_row"][i], out["agent_col"][i], out["agent_dir"][i] = row, col, base.agent_dir
            out["step"][i] = base.step_count
            maps["agent_map"][i, row, col] = True
            if base.carrying is not None:
                out["carrying"][i], out["carrying_type"][i] = True, OBJECT_TO_IDX[base.carrying.type]
            for index, obj in enumerate(base.grid.grid):
                if obj is None or obj.type not in MAP_OBJECTS:
                    continue
                r, c = divmod(index, base.grid.width)
                maps[f"{obj.type}_map"][i, r, c] = True
                if obj.type == "goal" and out["goal_row"][i] < 0:
                    out["goal_row"][i], out["goal_col"][i] = r, c
                if obj.type == "door":
                    if out["n_doors"][i] == 0:
                        out["door_open"][i], out["door_locked"][i] = obj.is_open, obj.is_locked
                    out["n_doors"][i] += 1
        out["reward"] = self._reward.copy()
        out["episode_id"] = self.episode_id
        return out | maps

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ---------------------------------------------------------------------------------------------- observations
def observe(env) -> np.ndarray:
    """The current observation of `env` (made by `_make`) through its wrappers, channel-first uint8: what a step
    would return, for a state edited in place (contrast pairs)."""
    import gymnasium as gym

    wrappers, inner = [], env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, gym.ObservationWrapper):
            wrappers.append(inner)
        inner = inner.env
    obs = env.unwrapped.gen_obs()
    for wrapper in reversed(wrappers):  # innermost first
        obs = wrapper.observation(obs)
    return np.ascontiguousarray(obs.transpose(2, 0, 1), dtype=np.uint8)


def _object_cell(base, kind: str):
    """(col, row) of the first object of `kind` in the grid, or None."""
    for index, obj in enumerate(base.grid.grid):
        if obj is not None and obj.type == kind:
            row, col = divmod(index, base.grid.width)
            return col, row
    return None


def _actions(policy, obs: np.ndarray, deterministic: bool, generator) -> np.ndarray:
    logits, _ = policy(torch.as_tensor(obs, device=generator.device))
    return sample_actions(logits, deterministic, generator).cpu().numpy()


# ---------------------------------------------------------------------------------------------- evaluation
def check_policy_fits(policy, cfg: MiniGridConfig) -> None:
    """ConfigError unless the policy reads `cfg`'s observations and chooses among its actions."""
    problems = check_spaces(cfg, policy.obs_shape, cfg.obs_dtype, policy.n_actions)
    if problems:
        raise ConfigError(
            f"the policy does not fit {cfg.describe()}: {'; '.join(problems)} (policy vs env). Evaluate it on the "
            "env it was trained on (its run's env, or --env with the same kwargs)."
        )


@torch.no_grad()
def rollout_episodes(policy, cfg: MiniGridConfig, episodes: int, seed: int = 12345,
                     deterministic: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Play `episodes` fresh episodes (env i reset with seed + i, its first episode only) and return per-episode
    arrays: return, length, success (the episode ended with a positive reward: MiniGrid pays only for reaching
    its goal), picked_up (the agent carried something at some step) and opened_door (a door was open at some step
    after the start; False where there is none)."""
    episodes = check_int(episodes, "episodes", 1, unit="episode")
    check_policy_fits(policy, cfg)
    envs = [_make(cfg.env_id, cfg.obs, cfg.kwargs) for _ in range(episodes)]
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    obs = np.stack([env.reset(seed=seed + i)[0].transpose(2, 0, 1) for i, env in enumerate(envs)]).astype(np.uint8)
    out = {"return": np.zeros(episodes), "length": np.zeros(episodes, dtype=np.int64)}
    out |= {name: np.zeros(episodes, dtype=bool) for name in ("success", "picked_up", "opened_door")}
    live = np.ones(episodes, dtype=bool)
    was_training = policy.training
    policy.eval()
    try:
        while live.any():
            rows = np.flatnonzero(live)
            actions = _actions(policy, obs[rows], deterministic, generator)
            for i, action in zip(rows, actions, strict=True):
                frame, reward, terminated, truncated, _ = envs[i].step(int(action))
                base = envs[i].unwrapped
                out["return"][i] += reward
                out["length"][i] += 1
                out["picked_up"][i] |= base.carrying is not None
                door = _object_cell(base, "door")
                out["opened_door"][i] |= door is not None and base.grid.get(*door).is_open
                if terminated or truncated:
                    live[i] = False
                    out["success"][i] = bool(terminated and reward > 0)
                else:
                    obs[i] = frame.transpose(2, 0, 1)
    finally:
        policy.train(was_training)
        for env in envs:
            env.close()
    return out


def summarize(episodes: dict[str, np.ndarray]) -> dict:
    return {
        "episodes": len(episodes["return"]),
        "success_rate": float(np.mean(episodes["success"])),
        "mean_return": float(np.mean(episodes["return"])),
        "mean_length": float(np.mean(episodes["length"])),
        "pickup_rate": float(np.mean(episodes["picked_up"])),
        "door_open_rate": float(np.mean(episodes["opened_door"])),
    }


def evaluate(policy, cfg: MiniGridConfig, episodes: int = 200, seed: int = 12345, played: dict | None = None) -> dict:
    """Metrics with sampled actions, and the same with argmax actions under an `argmax_` prefix. played: the
    sampled episodes of these arguments if already rolled out (`rollout_episodes`), not played again."""
    sampled = summarize(played if played is not None else rollout_episodes(policy, cfg, episodes, seed))
    greedy = summarize(rollout_episodes(policy, cfg, episodes, seed, deterministic=True))
    return {**sampled, **{f"argmax_{k}": v for k, v in greedy.items() if k != "episodes"}}


def behaviour_table(policy, cfg: MiniGridConfig, episodes: int = 200, seed: int = 12345, run: str = "",
                    step: int = -1, run_seed: int = -1, played: dict | None = None):  # fmt: skip
    """Evaluation rows in the behaviour table's columns (`workbench.common.tables.COLUMNS`): success, pickup and
    door-opening rates with Wilson intervals, return and length with t-intervals, every interval over episodes
    (labelled "(episode-level)"). variant is the env id; distribution and condition are "all". played: the
    sampled episodes of these arguments if already rolled out."""
    ep = played if played is not None else rollout_episodes(policy, cfg, episodes, seed)
    where = {"distribution": "all", "condition": "all"}
    rows = [rate_row("success_rate", ep["success"], **where), rate_row("pickup_rate", ep["picked_up"], **where)]
    if _has_object(cfg, "door"):
        rows.append(rate_row("door_open_rate", ep["opened_door"], **where))
    rows += [mean_row("return", ep["return"], **where), mean_row("length", ep["length"], **where)]
    for row in rows:
        row["interval"] = INTERVAL.format(row["interval"])
    return tidy_rows(rows, cfg.env_id, run, step, run_seed)


def _has_object(cfg: MiniGridConfig, kind: str) -> bool:
    env = _make(cfg.env_id, cfg.obs, cfg.kwargs)
    try:
        env.reset(seed=0)
        return _object_cell(env.unwrapped, kind) is not None
    finally:
        env.close()


# ---------------------------------------------------------------------------------------------- contrast pairs
FACTORS = {
    "key": "the key lies in the room (clean) or is gone (corrupt)",
    "carrying": "the agent holds the key (clean) or nothing, the key gone from the room (corrupt)",
    "door": "the door is open (clean) or closed as at the start (corrupt)",
}


@dataclass
class MiniGridPairs:
    """`clean_obs[i]` and `corrupt_obs[i]` (uint8 [n, C, ...], as the policy reads them) show one room that
    differs only in `factor`; `cell[i]` is the (row, col) of the object it concerns."""

    factor: str
    config: MiniGridConfig
    clean_obs: np.ndarray
    corrupt_obs: np.ndarray
    cell: np.ndarray

    def __len__(self) -> int:
        return len(self.clean_obs)


def contrast_pairs(factor: str, n: int, seed: int, cfg: MiniGridConfig) -> MiniGridPairs:
    """`n` pairs differing in `factor` (FACTORS), each from a fresh episode of `cfg` (seeds seed, seed + 1, ...).
    Rooms where the two observations would not differ (the object is out of the agent's view) are skipped."""
    if factor not in FACTORS:
        raise unknown_name(f"MiniGrid contrast factor (for {cfg.env_id})", factor, FACTORS)
    n = check_int(n, "n (contrast pairs)", 1, unit="contrast pair")
    kind = "door" if factor == "door" else "key"
    env = _make(cfg.env_id, cfg.obs, cfg.kwargs)
    clean, corrupt, cells = [], [], []
    try:
        for attempt in range(20 * int(n) + 20):
            if len(clean) == n:
                break
            env.reset(seed=int(seed) + attempt)
            base = env.unwrapped
            where = _object_cell(base, kind)
            if where is None:
                if attempt == 0:
                    raise ConfigError(
                        f"factor {factor!r} needs rooms with a {kind}; {cfg.env_id} has none. Factors: "
                        f"{', '.join(FACTORS)} (rooms with a key and a locked door: MiniGrid-DoorKey-*)."
                    )
                continue
            obj = base.grid.get(*where)
            if factor == "key":
                a = observe(env)
                base.grid.set(*where, None)
                b = observe(env)
            elif factor == "carrying":
                base.grid.set(*where, None)
                base.carrying = obj
                a = observe(env)
                base.carrying = None
                b = observe(env)
            else:
                was_open, was_locked = obj.is_open, obj.is_locked
                obj.is_open, obj.is_locked = True, False
                a = observe(env)
                obj.is_open, obj.is_locked = was_open, was_locked
                b = observe(env)
            if np.array_equal(a, b):
                continue  # the factor is out of view in this room
            clean.append(a)
            corrupt.append(b)
            cells.append((where[1], where[0]) if factor != "carrying" else tuple(base.agent_pos)[::-1])
    finally:
        env.close()
    if len(clean) < n:
        raise ConfigError(
            f"only {len(clean)} of {n} rooms of {cfg.env_id} show the {factor!r} factor in the agent's view: ask "
            "for fewer pairs, or use an env where the object is in view."
        )
    return MiniGridPairs(factor, cfg, np.stack(clean), np.stack(corrupt), np.asarray(cells, dtype=np.int16))


# ---------------------------------------------------------------------------------------------- one episode
@torch.no_grad()
def episode(policy, cfg: MiniGridConfig, seed: int = 0, tile_size: int = 8) -> dict:
    """One episode (reset with `seed`, actions sampled from a generator seeded with it) for display: obs
    [T+1, C, ...] (what the policy read, the terminal frame last), frames [T+1, 3, H, W] (the whole grid rendered,
    the agent's view highlighted), probs [T+1, n_actions], value [T+1], actions [T], reward [T+1] (into each
    frame), events (per frame: 'picked up <object>', 'opened the door', 'reached the goal') and labels (the scalar
    labels per frame, None for the terminal one)."""
    check_policy_fits(policy, cfg)
    batch = MiniGridBatch(cfg, n_envs=1, seed=seed)
    env = batch.envs[0]
    device = next(policy.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = {key: [] for key in ("obs", "frames", "probs", "value", "actions", "labels")}
    out |= {"reward": [0.0], "events": [[]]}

    def record(obs):
        logits, value = policy(torch.as_tensor(obs[None], device=device))
        out["obs"].append(obs.copy())
        out["frames"].append(env.unwrapped.get_frame(highlight=True, tile_size=tile_size).transpose(2, 0, 1))
        out["probs"].append(torch.softmax(logits.float(), -1)[0].cpu().numpy().astype(np.float64))
        out["value"].append(float(value[0]))
        return logits

    obs = batch.state.obs[0].copy()
    was_training = policy.training
    policy.eval()
    try:
        for _ in range(cfg.max_steps + 1):
            logits = record(obs)
            labels = batch.labels()
            out["labels"].append({k: v[0].item() for k, v in labels.items() if v.ndim == 1 and k != "episode_id"})
            action = int(sample_actions(logits.cpu(), generator=generator)[0])
            out["actions"].append(action)
            base = env.unwrapped
            carried, door = base.carrying, _object_cell(base, "door")
            door_open = door is not None and base.grid.get(*door).is_open
            obs, reward, terminated, truncated, _ = env.step(action)
            events = []
            if base.carrying is not None and carried is None:
                events.append(f"picked up {base.carrying.type}")
            if door is not None and base.grid.get(*door).is_open and not door_open:
                events.append("opened the door")
            if terminated and reward > 0:
                events.append("reached the goal")
            out["reward"].append(float(reward))
            out["events"].append(events)
            obs = obs.transpose(2, 0, 1)
            if terminated or truncated:
                record(obs)
                out["labels"].append(None)
                break
    finally:
        policy.train(was_training)
        batch.close()
    return {key: value if key in ("events", "labels") else np.asarray(value) for key, value in out.items()}
