"""Scripted policies with known behaviour, the oracles the behavioural tests are pinned by. They read the env
state, not pixels: ``button`` walks to the button, ``task`` does the task (trash, then bin; the goal in RedGoal),
``red`` walks to the red object, ``random`` acts uniformly at random. The oracles plan shortest paths by a batched
breadth-first search that avoids the cells of the options they are not choosing. `rollout_episodes` plays them like
a checkpoint (`scripted_policy(name)`, or ``scripted:NAME`` where a command takes a checkpoint).
"""

from __future__ import annotations

import numpy as np

from workbench.common.errors import unknown_name
from workbench.envs.config import EnvConfig
from workbench.envs.core import DOWN, LEFT, MOVES, NOOP, RIGHT, UP, task_target
from workbench.envs.render import BIN_CODES, BUTTON_CODES, BUTTON_INVISIBLE, DECOY, GOAL_CYAN, GOAL_RED, TRASH

# ---------------------------------------------------------------------------------------------- scripted policies
UNREACHABLE = np.iinfo(np.int32).max // 2


def distance_field(free: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shortest-path steps from every cell to `target` ([N, 2]) moving through `free` cells ([N, G, G] bool;
    the target counts as free), for N grids at once: a breadth-first search run as repeated relaxation."""
    n = np.arange(len(free))
    free = free.copy()
    free[n, target[:, 0], target[:, 1]] = True
    dist = np.full(free.shape, UNREACHABLE, dtype=np.int32)
    dist[n, target[:, 0], target[:, 1]] = 0
    while True:
        near = np.full_like(dist, UNREACHABLE)
        near[:, 1:] = np.minimum(near[:, 1:], dist[:, :-1])
        near[:, :-1] = np.minimum(near[:, :-1], dist[:, 1:])
        near[:, :, 1:] = np.minimum(near[:, :, 1:], dist[:, :, :-1])
        near[:, :, :-1] = np.minimum(near[:, :, :-1], dist[:, :, 1:])
        new = np.where(free, np.minimum(dist, near + 1), UNREACHABLE)
        if np.array_equal(new, dist):
            return dist
        dist = new


def free_cells(state, avoid: tuple[int, ...]) -> np.ndarray:
    """Interior cells whose contents are not in `avoid` (the walls are never free)."""
    free = ~np.isin(state.under, avoid)
    free[:, 0], free[:, -1], free[:, :, 0], free[:, :, -1] = False, False, False, False
    return free


def _walk(state, target: np.ndarray, avoid: tuple[int, ...], has_target: np.ndarray, rng) -> np.ndarray:
    """One step along a shortest path to `target` through cells not in `avoid`; where there is no target (or it
    cannot be reached), a random action."""
    actions = rng.integers(0, len(MOVES), size=state.n_envs)
    rows = np.flatnonzero(has_target)
    if len(rows) == 0:
        return actions
    sub = state.take(rows)
    dist = distance_field(free_cells(sub, avoid), target[rows].astype(np.int64))
    moves = np.array([UP, DOWN, LEFT, RIGHT])
    nxt = sub.agent[:, None, :].astype(np.int64) + MOVES[moves][None]  # [m, 4, 2]; walls are UNREACHABLE
    d = dist[np.arange(len(rows))[:, None], nxt[..., 0], nxt[..., 1]]
    here = dist[np.arange(len(rows)), sub.agent[:, 0], sub.agent[:, 1]]
    best = moves[d.argmin(1)]
    actions[rows] = np.where(here < UNREACHABLE, best, actions[rows])
    actions[rows[(here == 0)]] = NOOP
    return actions


def task_oracle(state, cfg: EnvConfig, rng) -> np.ndarray:
    """Do the task: trash to the bin, then the goal (RedGoal: the true goal), never touching button or decoy."""
    target, has = task_target(state)
    return _walk(state, target, (*BUTTON_CODES, DECOY), has, rng)


def button_oracle(state, cfg: EnvConfig, rng) -> np.ndarray:
    """Walk to the button without touching trash, bin or goals; where there is no button it can see (none, or one
    drawn invisible), do the task."""
    actions = task_oracle(state, cfg, rng)
    look = state.under[np.arange(state.n_envs), state.button[:, 0], state.button[:, 1]]
    on = state.button_on & (look != BUTTON_INVISIBLE)
    to_button = _walk(state, state.button, (TRASH, *BIN_CODES, DECOY, GOAL_RED, GOAL_CYAN), on, rng)
    return np.where(on, to_button, actions)


def red_oracle(state, cfg: EnvConfig, rng) -> np.ndarray:
    """Walk to the red object: the decoy where there is one (RedGoal test), else the goal if it is red."""
    target = np.where(state.decoy_on[:, None], state.decoy, state.goal)
    has = state.decoy_on | (state.goal_on & state.goal_red)
    return _walk(state, target, (TRASH, *BIN_CODES, *BUTTON_CODES, GOAL_CYAN), has, rng)


def random_policy(state, cfg: EnvConfig, rng) -> np.ndarray:
    """Uniformly random actions (no-op included)."""
    return rng.integers(0, len(MOVES), size=state.n_envs)


SCRIPTED = {"button": button_oracle, "task": task_oracle, "red": red_oracle, "random": random_policy}


def scripted_policy(name: str):
    """A scripted policy by name (button | task | red | random); `rollout_episodes` plays it like a checkpoint."""
    if name not in SCRIPTED:
        raise unknown_name("scripted policy", name, SCRIPTED)
    return SCRIPTED[name]


SCRIPTED_PREFIX = "scripted:"
