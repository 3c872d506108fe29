"""Single-env gymnasium wrappers over the batched core (a batch of one), registered as
``Workbench/TrashGrid-v0``, ``Workbench/BlueRoom-v0``, ``Workbench/Button-v0`` and ``Workbench/RedGoal-v0``.

``reset(seed=s)`` plays exactly the episodes of env 0 of ``BatchEnv(..., seed=s)``. ``info`` holds the
ground-truth labels of the new observation, the step's task events and its reward.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from workbench.common.errors import WorkbenchError
from workbench.envs import core
from workbench.envs.config import make_config
from workbench.envs.render import rgb_frame, text_frame

GYM_IDS = {
    "Workbench/TrashGrid-v0": "trash",
    "Workbench/BlueRoom-v0": "blueroom",
    "Workbench/Button-v0": "button",
    "Workbench/RedGoal-v0": "redgoal",
}


class TrashGridEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 8}

    def __init__(self, variant: str = "trash", render_mode: str | None = None, **options):
        self.config = make_config(variant, **options)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise WorkbenchError(f"render_mode={render_mode!r} is not supported: use 'rgb_array' or 'ansi'.")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, self.config.obs_shape, dtype=np.uint8)
        self.action_space = spaces.Discrete(core.N_ACTIONS)
        self._state: core.EnvState | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._state is None:
            key = seed if seed is not None else int(self.np_random.integers(2**62))
            self._state = core.init_state(self.config, 1, key)
        else:
            core.reset_envs(self.config, self._state, np.array([0]))
        quiet = {name: False for name in core.EVENTS}
        return self._state.obs[0].copy(), self._info(quiet, 0.0)

    def step(self, action):
        if self._state is None:
            raise WorkbenchError("step() was called before reset(): call env.reset(seed=...) first.")
        events, reward, terminated, truncated = core.step(self.config, self._state, np.asarray(action).reshape(-1))
        info = self._info({k: bool(v[0]) for k, v in events.items()}, float(reward[0]))
        return self._state.obs[0].copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), info

    def _info(self, events: dict, reward: float) -> dict:
        info = {k: (v[0].item() if v[0].ndim == 0 else v[0]) for k, v in core.labels(self.config, self._state).items()}
        info.update({f"event_{k}": v for k, v in events.items()})
        info["reward"] = reward
        info["episode_id"] = int(self._state.episode[0])
        return info

    def render(self):
        if self._state is None:
            return None
        if self.render_mode == "ansi":
            st = self._state
            return text_frame(st.under[0], st.agent[0], bool(st.carrying[0]), st.wall[0], st.t[0])
        return rgb_frame(self._state.obs[0])


def register_envs() -> None:
    for gym_id, variant in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(gym_id, entry_point="workbench.envs.gym_env:TrashGridEnv", kwargs={"variant": variant})
