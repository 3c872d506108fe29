"""Roll a policy out on fresh episodes, batched, and summarise what it did.

Evaluation samples actions from the policy by default (argmax behaviour of small PPO policies lags far
behind; both figures are reported). The policy is a hooked torch module (it reads the pixels) or a scripted
policy from `workbench.behaviour.rooms` (a function ``(state, config, rng) -> actions`` that reads the env state)."""

from __future__ import annotations

import numpy as np
import torch

from workbench.common.compute import sample_actions
from workbench.common.errors import ConfigError
from workbench.common.guards import check_int, check_memory
from workbench.envs import BatchEnv, EnvConfig, make_config
from workbench.envs.config import MAX_ROOM, MIN_ROOM
from workbench.envs.core import EVENTS, MOVES, rebuild

EPISODE_EVENTS = ("picked", "deposited", "button_pressed", "goal_reached", "decoy_reached", "task_complete")


def check_policy_fits(policy, cfg: EnvConfig) -> None:
    """Raise ConfigError unless the policy reads the observations of `cfg`'s rooms (scripted policies read any)."""
    shape = getattr(policy, "obs_shape", None)
    if shape is None or tuple(cfg.obs_shape) == tuple(shape):
        return
    fits = [s for s in range(MIN_ROOM, MAX_ROOM + 1) if make_config(cfg, room_size=s).obs_shape == tuple(shape)]
    fix = (
        f"pass -o room_size={fits[0]} (the training room size)"
        if fits
        else "no workbench room gives that observation format: the policy was trained on another environment"
    )
    raise ConfigError(
        f"the policy reads observations of shape {list(shape)} but {cfg.variant} rooms of size "
        f"{cfg.room_size} give {list(cfg.obs_shape)}: {fix}."
    )


def rollout_bytes(obs_shape) -> int:
    """Bytes one episode of a batched rollout holds at once: its env's pixels (uint8, twice: the env's and the copy
    fed to the policy), the float32 observation, and the policy's activations on it, taken as 8 float32 values per
    pixel value (the bundled CNN has ~4, the transformer fewer); the state and counters are small beside them.
    No forward pass is made to measure them: a caller's hooks would see it."""
    import math

    obs = math.prod(obs_shape)
    return 2 * obs + 4 * obs + 4 * 8 * obs + 256


def check_rollout_memory(policy, episodes: int, obs_shape=None, option: str = "--episodes") -> None:
    """Refuse, with the figure, a batch of `episodes` episodes that cannot fit in memory (before any is built)."""
    shape = obs_shape if obs_shape is not None else getattr(policy, "obs_shape", None) or (3, 28, 28)
    per = rollout_bytes(shape)
    check_memory(int(episodes) * per, f"{int(episodes):,} episodes at once", option, per_unit=per)


@torch.no_grad()
def rollout_episodes(policy, env_config, episodes: int, seed: int = 12345, deterministic: bool = False,
                     target_cell=None, edit_start=None) -> dict:  # fmt: skip
    """Play `episodes` episodes in parallel (one per env, the first episode of each) and return per-episode
    arrays: return, length, the count of every task event, ``first_<event>`` (the step, 1-based, at which the
    event first happened; 0: never), ``visited`` (distinct interior cells the agent stood on, the start and the
    last cell included), and ``start``: a copy of the batch's `EnvState` at the start of the episodes. With a
    `target_cell` (row, col), or one per episode ([episodes, 2]): ``first_target``, the step at which the agent
    first stood on it (0: never). `edit_start(state)` edits the starting state in place (objects' positions and
    flags, as contrast pairs do) before the first step; the pixels are redrawn from the edit."""
    episodes = check_int(episodes, "episodes", 1, unit="episode")
    cfg = make_config(env_config) if not isinstance(env_config, dict) else make_config(**env_config)
    check_policy_fits(policy, cfg)
    check_rollout_memory(policy, episodes, cfg.obs_shape)
    env = BatchEnv(cfg, n_envs=episodes, seed=seed)
    if edit_start is not None:
        edit_start(env.state)
        rebuild(cfg, env.state, np.arange(episodes))
    scripted = not isinstance(policy, torch.nn.Module)
    rng = np.random.default_rng(seed)
    if not scripted:
        device = next(policy.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
    obs = env.state.obs.copy()
    finished = np.zeros(episodes, dtype=bool)
    rows = np.arange(episodes)
    visited = np.zeros((episodes, cfg.grid_size, cfg.grid_size), dtype=bool)
    visited[rows, env.state.agent[:, 0], env.state.agent[:, 1]] = True
    first_target = np.zeros(episodes, dtype=np.int64)
    out = {"return": np.zeros(episodes), "length": np.zeros(episodes, dtype=np.int64), "start": env.state.copy()}
    out.update({name: np.zeros(episodes, dtype=np.int64) for name in EVENTS})
    out.update({f"first_{name}": np.zeros(episodes, dtype=np.int64) for name in EVENTS})
    was_training = getattr(policy, "training", False)
    if not scripted:
        policy.eval()
    try:
        while not finished.all():
            if scripted:
                actions = np.asarray(policy(env.state, cfg, rng))
            else:
                # Only the episodes still running are fed to the policy (finished ones no-op until the end).
                live_rows = np.flatnonzero(~finished)
                logits, _ = policy(torch.as_tensor(obs[live_rows], device=device))
                actions = np.zeros(episodes, dtype=np.int64)
                actions[live_rows] = sample_actions(logits, deterministic, generator).cpu().numpy()
            # Where each agent ends up, computed before the step (a finished env is reset by it).
            cell = np.clip(env.state.agent + MOVES[actions], 1, cfg.room_size)
            obs, reward, terminated, truncated, info = env.step(actions)
            live = ~finished
            visited[rows[live], cell[live, 0], cell[live, 1]] = True
            if target_cell is not None:
                hit = live & (cell == np.asarray(target_cell)).all(-1) & (first_target == 0)
                first_target[hit] = out["length"][hit] + 1
            out["return"][live] += reward[live]
            out["length"][live] += 1
            for name in EVENTS:
                out[name][live] += info[name][live]
                first = live & info[name] & (out[f"first_{name}"] == 0)
                out[f"first_{name}"][first] = out["length"][first]
            finished |= terminated | truncated
    finally:
        if not scripted:
            policy.train(was_training)
    out["visited"] = visited.sum((1, 2))
    if target_cell is not None:
        out["first_target"] = first_target
    return out


def summarize(episodes: dict) -> dict:
    n = len(episodes["return"])
    return {
        "episodes": n,
        "success_rate": float(np.mean(episodes["task_complete"] > 0)),
        "deposits_per_episode": float(np.mean(episodes["deposited"])),
        "mean_return": float(np.mean(episodes["return"])),
        "mean_length": float(np.mean(episodes["length"])),
        "button_rate": float(np.mean(episodes["button_pressed"] > 0)),
        "goal_rate": float(np.mean(episodes["goal_reached"] > 0)),
        "decoy_rate": float(np.mean(episodes["decoy_reached"] > 0)),
    }


def evaluate(policy, env_config, episodes: int = 200, seed: int = 12345, played: dict | None = None) -> dict:
    """Metrics with sampled actions, and the same with argmax actions under an `argmax_` prefix. played: the
    sampled episodes already played (`rollout_episodes` with the same policy, config, episodes and seed), so that
    a caller that needs them too plays them once."""
    if played is None:
        played = rollout_episodes(policy, env_config, episodes, seed, deterministic=False)
    sampled = summarize(played)
    greedy = summarize(rollout_episodes(policy, env_config, episodes, seed, deterministic=True))
    return {**sampled, **{f"argmax_{k}": v for k, v in greedy.items() if k != "episodes"}}


def random_rollout(variant: str = "trash", steps: int = 12, seed: int = 0, scale: int = 8, **options):
    """A rollout of uniformly random actions in one env, for people to look at (`workbench render`). Yields the
    start, {"text", "frame"}, then each of `steps` steps as {"action", "reward", "events" (the names of the events
    that fired), "over" (the episode ended, and a new one starts), "text", "frame"}; frames are RGB at `scale`."""
    env = BatchEnv(variant, n_envs=1, seed=seed, **options)
    rng = np.random.default_rng(seed)
    yield {"frame": env.render_rgb(0, scale=scale), "text": env.render_text(0)}
    for _ in range(steps):
        action = rng.integers(0, 5, size=1)
        _, reward, terminated, truncated, info = env.step(action)
        fired = [k for k in ("picked", "deposited", "button_pressed", "goal_reached", "decoy_reached") if info[k][0]]
        yield {"action": int(action[0]), "reward": reward[0], "events": fired, "text": env.render_text(0),
               "frame": env.render_rgb(0, scale=scale), "over": bool(terminated[0] or truncated[0])}  # fmt: skip
