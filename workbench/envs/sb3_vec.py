"""A stable-baselines3 VecEnv over BatchEnv: auto-reset, ``terminal_observation`` and ``TimeLimit.truncated``
in info as SB3 expects, ``episode`` statistics (as its Monitor writes them) at the end of each episode, and
the step's task events and reward in every env's info. Batched labels: ``venv.labels()``."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from workbench.common.errors import WorkbenchError
from workbench.envs import core
from workbench.envs.batch import BatchEnv


class WorkbenchVecEnv(VecEnv):
    def __init__(self, config="trash", n_envs: int = 8, seed: int = 0, **options):
        self.env = BatchEnv(config, n_envs=n_envs, seed=seed, **options)
        self.config = self.env.config
        self.render_mode = "rgb_array"
        obs_space = spaces.Box(0, 255, self.config.obs_shape, dtype=np.uint8)
        super().__init__(n_envs, obs_space, spaces.Discrete(core.N_ACTIONS))
        self._actions = None
        self._fresh = True
        self._returns = np.zeros(n_envs, dtype=np.float64)
        self._lengths = np.zeros(n_envs, dtype=np.int64)

    def reset(self):
        seed = self._seeds[0]
        if seed is None and self._fresh:
            seed = self.env.seed  # the first reset shows the episodes the constructor's seed promised
        self._fresh = False
        obs = self.env.reset(seed)  # seed() gives seed + i to env i, which BatchEnv(seed) does already
        self._reset_seeds()
        self._returns[:] = 0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, reward, terminated, truncated, info = self.env.step(self._actions)
        done = terminated | truncated
        self._returns += reward
        self._lengths += 1
        names = core.EVENTS
        columns = [info[name].tolist() for name in names]
        infos = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        for i, j in enumerate(np.flatnonzero(done)):
            infos[j]["terminal_observation"] = info["terminal_obs"][i]
            infos[j]["TimeLimit.truncated"] = bool(truncated[j] and not terminated[j])
            infos[j]["episode"] = {"r": float(self._returns[j]), "l": int(self._lengths[j])}
        self._returns[done] = 0
        self._lengths[done] = 0
        return obs, reward, done, infos

    def labels(self) -> dict[str, np.ndarray]:
        return self.env.labels()

    def close(self) -> None:
        pass

    def get_images(self):
        return [self.env.render_rgb(i) for i in range(self.num_envs)]

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name, value, indices=None):
        raise WorkbenchError(f"cannot set {attr_name!r}: a WorkbenchVecEnv is configured once, at construction.")

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise WorkbenchError(
            f"env_method({method_name!r}) is not supported: the envs are one batch; call it on venv.env instead."
        )

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._get_indices(indices)]
