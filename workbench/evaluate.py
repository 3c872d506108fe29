"""Roll a policy out on fresh episodes, batched, and summarise what it did.

Evaluation samples actions from the policy by default (argmax behaviour of small PPO policies lags far
behind; both figures are reported)."""

from __future__ import annotations

import numpy as np
import torch

from workbench.envs import BatchEnv, make_config
from workbench.envs.core import EVENTS

EPISODE_EVENTS = ("picked", "deposited", "button_pressed", "goal_reached", "decoy_reached", "task_complete")


@torch.no_grad()
def rollout_episodes(policy, env_config, episodes: int, seed: int = 12345, deterministic: bool = False) -> dict:
    """Play `episodes` episodes in parallel (one per env, the first episode of each) and return per-episode
    arrays: return, length, and the count of every task event."""
    from workbench.errors import ConfigError

    if not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes={episodes!r}: evaluate at least 1 episode.")
    cfg = make_config(env_config) if not isinstance(env_config, dict) else make_config(**env_config)
    env = BatchEnv(cfg, n_envs=episodes, seed=seed)
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    obs = env.state.obs.copy()
    finished = np.zeros(episodes, dtype=bool)
    out = {"return": np.zeros(episodes), "length": np.zeros(episodes, dtype=np.int64)}
    out.update({name: np.zeros(episodes, dtype=np.int64) for name in EVENTS})
    was_training = policy.training
    policy.eval()
    try:
        while not finished.all():
            logits, _ = policy(torch.as_tensor(obs, device=device))
            if deterministic:
                actions = logits.argmax(-1)
            else:
                actions = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)[:, 0]
            obs, reward, terminated, truncated, info = env.step(actions.cpu().numpy())
            live = ~finished
            out["return"][live] += reward[live]
            out["length"][live] += 1
            for name in EVENTS:
                out[name][live] += info[name][live]
            finished |= terminated | truncated
    finally:
        policy.train(was_training)
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


def evaluate(policy, env_config, episodes: int = 200, seed: int = 12345) -> dict:
    """Metrics with sampled actions, and the same with argmax actions under an `argmax_` prefix."""
    sampled = summarize(rollout_episodes(policy, env_config, episodes, seed, deterministic=False))
    greedy = summarize(rollout_episodes(policy, env_config, episodes, seed, deterministic=True))
    return {**sampled, **{f"argmax_{k}": v for k, v in greedy.items() if k != "episodes"}}
