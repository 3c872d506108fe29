"""MiniGrid as a second world: its environments behind the batched interface that collection uses, with labels
read from MiniGrid's own grid state.

    cfg = minigrid_config("MiniGrid-DoorKey-5x5-v0", obs="rgb")   # or {"world": "minigrid", "env_id": ...}
    ds = collect(workbench.hook(sb3_model), cfg, n_steps=5_000)     # policy trained on the same observations

`MiniGridBatch` steps `n_envs` MiniGrid envs (a Python loop: MiniGrid is single-env) with auto-reset, returning
channel-first uint8 observations like the workbench's own envs, so a policy trained through SB3 (whose
VecTransposeImage makes images channel-first) reads them as it did in training. Observations (`obs`):

- "image": MiniGrid's partial, egocentric 7x7 view, symbolic (object type, colour, state per cell): [3, 7, 7];
- "rgb": the same view rendered as pixels (`RGBImgPartialObsWrapper`, 8 px per tile): [3, 56, 56], which SB3's
  stock CnnPolicy (NatureCNN) can read.

Labels, per observation (`labels()`; rows and columns count from the grid's top-left, walls included):
agent_row, agent_col, agent_dir (0 right, 1 down, 2 left, 3 up), carrying (bool), carrying_type (0 nothing, else
MiniGrid's OBJECT_TO_IDX of the object), goal_row / goal_col (-1 if no goal), door_open / door_locked (of the
first door, False if none), n_doors, step, reward (of the transition that led here, 0 at an episode's start),
episode_id; and per-cell maps [G, G] (G = the larger grid side): agent_map, goal_map, wall_map, door_map, key_map,
ball_map, box_map, lava_map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from workbench.errors import ConfigError

OBS_KINDS = ("image", "rgb")
MAP_OBJECTS = ("goal", "wall", "door", "key", "ball", "box", "lava")


@dataclass
class MiniGridConfig:
    """Which MiniGrid env and observation; `max_steps`, `obs_shape` and `grid_size` are read from the env."""

    env_id: str
    obs: str = "image"
    max_steps: int = 0
    obs_shape: tuple[int, int, int] = (0, 0, 0)
    grid_size: int = 0
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"world": "minigrid", "env_id": self.env_id, "obs": self.obs, "kwargs": dict(self.kwargs)}


def minigrid_config(env_id: str, obs: str = "image", kwargs: dict | None = None, **_ignored) -> MiniGridConfig:
    """A checked MiniGridConfig (`_ignored`: the 'world' key of a stored `to_dict()`)."""
    if obs not in OBS_KINDS:
        from workbench.errors import unknown_name

        raise unknown_name("MiniGrid observation", obs, OBS_KINDS)
    env = _make(env_id, obs, kwargs or {})
    try:
        base = env.unwrapped
        image = env.observation_space.shape  # [H, W, C]
        return MiniGridConfig(env_id, obs, int(base.max_steps), (image[2], image[0], image[1]),
                              max(base.width, base.height), dict(kwargs or {}))  # fmt: skip
    finally:
        env.close()


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
        from workbench.errors import unknown_name

        raise unknown_name("MiniGrid env", env_id, ids) from err
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
            from workbench.errors import ActionError

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

        n, g = self.n_envs, self.config.grid_size
        ints = ("agent_row", "agent_col", "agent_dir", "step", "carrying_type", "goal_row", "goal_col", "n_doors")
        out = {name: np.zeros(n, dtype=np.int64) for name in ints}
        out |= {name: np.zeros(n, dtype=bool) for name in ("carrying", "door_open", "door_locked")}
        maps = {f"{name}_map": np.zeros((n, g, g), dtype=bool) for name in ("agent", *MAP_OBJECTS)}
        out["goal_row"][:] = out["goal_col"][:] = -1
        for i, env in enumerate(self.envs):
            base = env.unwrapped
            col, row = base.agent_pos
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
