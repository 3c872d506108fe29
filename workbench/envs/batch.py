"""BatchEnv: the batched core with auto-reset, the object every other adapter wraps."""

from __future__ import annotations

import numpy as np

from workbench.common.errors import ConfigError
from workbench.envs import core
from workbench.envs.config import EnvConfig, make_config
from workbench.envs.render import rgb_frame, text_frame


class BatchEnv:
    """N rooms stepped together. ``step`` resets finished envs automatically and returns their last
    observation in ``info["terminal_obs"]`` (rows where ``done``), as vectorized RL code expects.

    >>> env = BatchEnv("trash", n_envs=256, seed=0)
    >>> obs = env.reset()
    >>> obs, reward, terminated, truncated, info = env.step(np.zeros(256, dtype=np.int64))
    """

    def __init__(self, config: EnvConfig | str = "trash", n_envs: int = 1, seed: int = 0, **options):
        self.config = make_config(config, **options)
        if not isinstance(n_envs, int | np.integer) or n_envs < 1:
            raise ConfigError(f"n_envs={n_envs!r} is not allowed: use a positive integer.")
        self.n_envs = int(n_envs)
        self.reset(seed)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        return self.config.obs_shape

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Restart every env; with a seed, env i plays the episodes of a single env seeded seed + i."""
        if seed is not None:
            self.seed = int(seed)
            self.state = core.init_state(self.config, self.n_envs, self.seed)
        else:
            core.reset_envs(self.config, self.state, np.arange(self.n_envs))
        # Each slot's next episode, prepared in bulk ahead of time: small per-step resets cost ~70 numpy
        # calls each, so they are made once for many envs and copied in when an episode ends.
        self._next = self.state.copy()
        self._stale = np.ones(self.n_envs, dtype=bool)
        self._refresh_next(np.arange(self.n_envs))
        self._last = self._zero_transition()
        return self.state.obs.copy()

    def _refresh_next(self, envs: np.ndarray) -> None:
        core.reset_envs(self.config, self._next, envs)  # _next mirrors state's episode counters: this is the next one
        self._stale[envs] = False

    def _start_next_episodes(self, envs: np.ndarray) -> None:
        stale = envs[self._stale[envs]]
        if len(stale):
            self._refresh_next(stale)
        core.copy_envs(self._next, self.state, envs)
        self._stale[envs] = True
        if self._stale.sum() >= max(1, self.n_envs // 8):
            self._refresh_next(np.flatnonzero(self._stale))

    def _zero_transition(self) -> dict[str, np.ndarray]:
        last = {name: np.zeros(self.n_envs, dtype=bool) for name in core.EVENTS}
        last["reward"] = np.zeros(self.n_envs, dtype=np.float32)
        return last

    def step(self, actions):
        events, reward, terminated, truncated = core.step(self.config, self.state, actions)
        done = terminated | truncated
        info = {**events, "reward": reward, "episode_id": self.episode_id.copy()}
        self._last = {k: v.copy() for k, v in info.items() if k != "episode_id"}
        if done.any():
            finished = np.flatnonzero(done)
            info["terminal_obs"] = self.state.obs[finished].copy()
            self._start_next_episodes(finished)
            for value in self._last.values():
                value[finished] = 0  # a fresh episode has had no transition yet
        return self.state.obs.copy(), reward, terminated, truncated, info

    @property
    def episode_id(self) -> np.ndarray:
        """A unique id per (env slot, episode) within this batch: episode * n_envs + slot."""
        return self.state.episode.astype(np.int64) * self.n_envs + np.arange(self.n_envs)

    def labels(self) -> dict[str, np.ndarray]:
        """Ground-truth labels of the current observations, plus the reward and events of the transition
        that led to them (zero at an episode's start)."""
        return self._labels(np.arange(self.n_envs))

    def _labels(self, envs: np.ndarray) -> dict[str, np.ndarray]:
        out = core.labels(self.config, self.state.take(envs))
        out.update({f"event_{k}": v[envs] for k, v in self._last.items() if k != "reward"})
        out["reward"] = self._last["reward"][envs]
        out["episode_id"] = self.episode_id[envs]
        return out

    def render_rgb(self, i: int = 0, scale: int = 16) -> np.ndarray:
        return rgb_frame(self.state.obs[i], scale)

    def render_text(self, i: int = 0) -> str:
        st = self.state
        return text_frame(st.under[i], st.agent[i], bool(st.carrying[i]), st.wall[i], st.t[i])
