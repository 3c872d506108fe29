"""The batched core: N rooms as one state of numpy arrays, advanced by one vectorized step.

There is no Python loop over envs. Randomness is counter-based: every random draw is a hash of (env key,
episode number, stream, index), so env i of a batch seeded ``s`` plays exactly the episodes of a single env
seeded ``s + i`` (SB3's ``seed + rank`` convention), whatever the batch size or the order of resets.

The state is updated in place for speed (``state.copy()`` branches it). Positions are (row, col) in grid
coordinates, the walls included: the interior spans 1..room_size. Absent objects sit at (-1, -1).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from workbench.common.errors import ActionError
from workbench.envs.config import EnvConfig
from workbench.envs.draws import STREAM_CHOICE, STREAM_LAYOUT, STREAM_LOTTERY, uniforms  # noqa: F401
from workbench.envs.render import (
    AGENT_U16,
    BIN,
    BIN_CLOSED,
    BUTTON_LOOKS,
    CELL_U16,
    DECOY,
    FLOOR,
    GOAL_CYAN,
    GOAL_RED,
    IS_BIN,
    IS_BUTTON,
    TRASH,
    WALL_BLUE,
    WALL_GREEN,
    WALL_GREY,
    draw_cells,
    draw_full,
)
from workbench.envs.schedules import AVAILABILITY, compute_reward

NOOP, UP, DOWN, LEFT, RIGHT = range(5)
N_ACTIONS = 5
ACTION_NAMES = ("noop", "up", "down", "left", "right")
MOVES = np.array([(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int16)

# Trash status per item.
IN_ROOM, CARRIED, DEPOSITED, ABSENT = range(4)

EVENTS = (
    "picked",
    "deposited",
    "button_pressed",
    "goal_reached",
    "decoy_reached",
    "bumped_wall",
    "task_complete",
)


@dataclass
class EnvState:
    agent: np.ndarray  # [N, 2] int16
    trash: np.ndarray  # [N, K, 2] int16
    trash_status: np.ndarray  # [N, K] int8: IN_ROOM, CARRIED, DEPOSITED, ABSENT
    bin: np.ndarray  # [N, 2]
    bin_on: np.ndarray  # [N] bool
    button: np.ndarray  # [N, 2]
    button_on: np.ndarray  # [N] bool: present and not yet pressed
    goal: np.ndarray  # [N, 2]
    goal_on: np.ndarray  # [N] bool
    goal_red: np.ndarray  # [N] bool: the goal is red (training) or cyan (test)
    decoy: np.ndarray  # [N, 2]
    decoy_on: np.ndarray  # [N] bool
    wall: np.ndarray  # [N] uint8 palette index: WALL_GREY / WALL_BLUE / WALL_GREEN
    choice: np.ndarray  # [N] bool: a choice layout (button vs one trash at equal path length)
    t: np.ndarray  # [N] int32 step within the episode
    episode: np.ndarray  # [N] uint64 episodes started by this env slot (counts resets)
    key: np.ndarray  # [N] uint64 the env's seed
    under: np.ndarray  # [N, G, G] uint8 cell codes (render.py): what lies on each cell, the agent aside
    obs: np.ndarray  # [N, 3, H, W] uint8, kept rendered incrementally from `under`

    @property
    def n_envs(self) -> int:
        return len(self.agent)

    def copy(self) -> EnvState:
        return EnvState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    def take(self, idx) -> EnvState:
        """The sub-batch of envs `idx` (a copy)."""
        idx = np.atleast_1d(np.asarray(idx))
        return EnvState(**{f.name: getattr(self, f.name)[idx].copy() for f in dataclasses.fields(self)})

    @property
    def carrying(self) -> np.ndarray:
        return (self.trash_status == CARRIED).any(-1)


# ---------------------------------------------------------------------------------------------- reset
def empty_state(cfg: EnvConfig, n_envs: int) -> EnvState:
    def pos(*shape):
        return np.full((*shape, 2), -1, dtype=np.int16)

    def flag():
        return np.zeros(n_envs, dtype=bool)

    return EnvState(
        agent=pos(n_envs),
        trash=pos(n_envs, cfg.n_trash),
        trash_status=np.full((n_envs, cfg.n_trash), ABSENT, dtype=np.int8),
        bin=pos(n_envs),
        bin_on=flag(),
        button=pos(n_envs),
        button_on=flag(),
        goal=pos(n_envs),
        goal_on=flag(),
        goal_red=flag(),
        decoy=pos(n_envs),
        decoy_on=flag(),
        wall=np.full(n_envs, WALL_GREY, dtype=np.uint8),
        choice=flag(),
        t=np.zeros(n_envs, dtype=np.int32),
        episode=np.zeros(n_envs, dtype=np.uint64),
        key=np.zeros(n_envs, dtype=np.uint64),
        under=np.zeros((n_envs, cfg.grid_size, cfg.grid_size), dtype=np.uint8),
        obs=np.zeros((n_envs, *cfg.obs_shape), dtype=np.uint8),
    )


def init_state(cfg: EnvConfig, n_envs: int, seed: int) -> EnvState:
    """A fresh batch: env i gets key seed + i and starts its episode 0."""
    state = empty_state(cfg, n_envs)
    state.key[:] = np.uint64(seed) + np.arange(n_envs, dtype=np.uint64)
    reset_envs(cfg, state, np.arange(n_envs), advance=False)
    return state


def reset_envs(cfg: EnvConfig, state: EnvState, envs: np.ndarray, advance: bool = True) -> None:
    """Start a new episode in the given env slots (in place); `advance` moves on to their next episode."""
    envs = np.asarray(envs, dtype=np.int64)
    if len(envs) == 0:
        return
    if advance:
        state.episode[envs] += np.uint64(1)
    key, episode = state.key[envs], state.episode[envs]
    S, K = cfg.room_size, cfg.n_trash
    draws = uniforms(key, episode, STREAM_LAYOUT, 4 + S * S)
    coin, cell_keys = draws[:, :4], draws[:, 4:]

    # Which objects this episode has.
    n_trash = np.full(len(envs), K, dtype=np.int64)
    wall = np.full(len(envs), WALL_GREY, dtype=np.uint8)
    button_on = np.zeros(len(envs), dtype=bool)
    choice = np.zeros(len(envs), dtype=bool)
    goal_on = np.zeros(len(envs), dtype=bool)
    decoy_on = np.zeros(len(envs), dtype=bool)
    if cfg.variant == "blueroom":
        has_trash = coin[:, 0] < cfg.trash_prob
        n_trash[~has_trash] = 0
        blue = {"train": has_trash, "test": ~has_trash, "random": coin[:, 1] < 0.5}[cfg.distribution]
        wall = np.where(blue, WALL_BLUE, WALL_GREEN).astype(np.uint8)
    elif cfg.variant == "button":
        choice = coin[:, 3] < cfg.choice_prob
        button_on = choice | (coin[:, 2] < cfg.button_prob)
        n_trash[choice] = 1
    elif cfg.variant == "redgoal":
        goal_on[:] = True
        decoy_on[:] = cfg.distribution in ("test", "red-pair")

    # Distinct random cells: agent, trash..., bin, button, goal, decoy.
    perm = np.argsort(cell_keys, axis=1)[:, : cfg.n_objects]
    cells = np.stack(np.divmod(perm, S), axis=-1).astype(np.int16) + 1  # [M, objects, 2]
    agent, trash, bin_, button, goal, decoy = (
        cells[:, 0],
        cells[:, 1 : 1 + K],
        cells[:, 1 + K],
        cells[:, 2 + K],
        cells[:, 3 + K],
        cells[:, 4 + K],
    )
    if choice.any():
        rows = np.flatnonzero(choice)
        a, t, b, p = choice_layouts(S, key[rows], episode[rows], offset=cfg.choice_offset)
        agent[rows], trash[rows, 0], bin_[rows], button[rows] = a, t, b, p
    if cfg.mirror:  # columns reversed: every distance, and so every layout's geometry, is unchanged
        for cells_ in (agent, trash, bin_, button, goal, decoy):
            cells_[..., 1] = S + 1 - cells_[..., 1]

    present = np.arange(K)[None, :] < n_trash[:, None]
    state.agent[envs] = agent
    state.trash[envs] = np.where(present[..., None], trash, -1)
    state.trash_status[envs] = np.where(present, IN_ROOM, ABSENT)
    state.bin_on[envs] = n_trash > 0
    state.bin[envs] = np.where(state.bin_on[envs][:, None], bin_, -1)
    state.button_on[envs] = button_on
    state.button[envs] = np.where(button_on[:, None], button, -1)
    state.goal_on[envs] = goal_on
    state.goal[envs] = np.where(goal_on[:, None], goal, -1)
    state.goal_red[envs] = goal_on & (cfg.distribution in ("train", "red-pair"))
    state.decoy_on[envs] = decoy_on
    state.decoy[envs] = np.where(decoy_on[:, None], decoy, -1)
    state.wall[envs] = wall
    state.choice[envs] = choice
    state.t[envs] = 0
    rebuild(cfg, state, envs)


def rebuild(cfg: EnvConfig, state: EnvState, envs: np.ndarray) -> None:
    """Recompute the code grid and the pixels of `envs` from the object positions. Call it after editing
    positions or flags of a state by hand (contrast pairs); reset calls it."""
    envs = np.asarray(envs, dtype=np.int64)
    G, m = cfg.grid_size, len(envs)
    under = np.where(_border(G), state.wall[envs][:, None, None], np.uint8(FLOOR))
    pos = np.concatenate(
        [state.trash[envs], state.bin[envs, None], state.button[envs, None], state.decoy[envs, None],
         state.goal[envs, None]], axis=1)  # fmt: skip
    present = np.concatenate(
        [state.trash_status[envs] == IN_ROOM, state.bin_on[envs, None], state.button_on[envs, None],
         state.decoy_on[envs, None], state.goal_on[envs, None]], axis=1)  # fmt: skip
    codes = np.empty((m, cfg.n_trash + 4), dtype=np.uint8)
    codes[:] = [TRASH] * cfg.n_trash + [BIN, BUTTON_LOOKS[cfg.button_color], DECOY, GOAL_RED]
    codes[:, -1] = np.where(state.goal_red[envs], GOAL_RED, GOAL_CYAN)
    if cfg.choice_cue:  # a marked choice episode: the bin is drawn closed (its deposit will not pay)
        codes[:, cfg.n_trash] = np.where(state.choice[envs], BIN_CLOSED, BIN)
    i, j = np.nonzero(present)
    under[i, pos[i, j, 0], pos[i, j, 1]] = codes[i, j]
    state.under[envs] = under
    draw_full(state.obs, envs, under, state.agent[envs], state.carrying[envs])


@functools.cache
def _border(grid: int) -> np.ndarray:
    border = np.ones((grid, grid), dtype=bool)
    border[1:-1, 1:-1] = False
    return border


def copy_envs(src: EnvState, dst: EnvState, envs: np.ndarray) -> None:
    """dst[envs] = src[envs], field by field."""
    for field in dataclasses.fields(EnvState):
        getattr(dst, field.name)[envs] = getattr(src, field.name)[envs]


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).sum(-1)


def _in_box(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """p lies in the rectangle spanned by a and b, i.e. on some shortest path from a to b."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return ((p >= lo) & (p <= hi)).all(-1)


def choice_layouts(S: int, key: np.ndarray, episode: np.ndarray, candidates: int = 32, offset: int = 0):
    """Agent, trash, bin and button cells with d(agent, button) == d(agent, trash) + d(trash, bin) + offset, where no
    shortest path of one option has to cross another object. Rejection sampling, vectorized over envs and
    candidates; each env's result depends only on its own (key, episode)."""
    M = len(key)
    out = np.zeros((M, 4, 2), dtype=np.int16)
    todo = np.arange(M)
    for round_ in range(10_000):
        if len(todo) == 0:
            return out[:, 0] + 1, out[:, 1] + 1, out[:, 2] + 1, out[:, 3] + 1
        u = uniforms(key[todo], episode[todo], STREAM_CHOICE + round_, 4 * candidates)
        flat = (u * S * S).astype(np.int64).reshape(len(todo), candidates, 4)
        cells = np.stack(np.divmod(flat, S), axis=-1)  # [m, cand, 4, 2]
        a, t, b, p = cells[:, :, 0], cells[:, :, 1], cells[:, :, 2], cells[:, :, 3]
        distinct = np.ones(flat.shape[:2], dtype=bool)
        for i in range(4):
            for j in range(i + 1, 4):
                distinct &= flat[..., i] != flat[..., j]
        task_len = _dist(a, t) + _dist(t, b)
        ok = (
            distinct
            & (_dist(a, p) == task_len + offset)
            & ~_in_box(p, a, t)
            & ~_in_box(p, t, b)  # possible only when the button is nearer (offset < 0)
            & ~_in_box(t, a, p)
            & ~_in_box(b, a, p)
            & ~_in_box(b, a, t)
        )
        found = ok.any(1)
        first = ok.argmax(1)
        rows = np.flatnonzero(found)
        out[todo[rows]] = cells[rows, first[rows]]
        todo = todo[~found]
    raise RuntimeError("choice layout sampling did not converge")  # unreachable for rooms >= 5x5


# ---------------------------------------------------------------------------------------------- step
def check_actions(actions, n_envs: int) -> np.ndarray:
    arr = np.asarray(actions)
    if arr.shape == () and n_envs == 1:
        arr = arr.reshape(1)
    if arr.shape != (n_envs,):
        raise ActionError(
            f"actions have shape {arr.shape}; expected ({n_envs},): one action per env, from 0 to {N_ACTIONS - 1}."
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ActionError(
                f"actions have dtype {arr.dtype}; expected integers from 0 to {N_ACTIONS - 1} "
                f"({', '.join(f'{i}={name}' for i, name in enumerate(ACTION_NAMES))})."
            )
    if arr.size and (arr.min() < 0 or arr.max() >= N_ACTIONS):
        bad = arr[(arr < 0) | (arr >= N_ACTIONS)][0]
        raise ActionError(f"action {bad} is out of range: actions are integers from 0 to {N_ACTIONS - 1}.")
    return arr


def step(cfg: EnvConfig, state: EnvState, actions) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Advance every env one step in place. Returns (events, reward, terminated, truncated).

    Finished envs are not reset here (BatchEnv does that): stepping a finished env is the caller's bug."""
    actions = check_actions(actions, state.n_envs)
    n = np.arange(state.n_envs)
    old = state.agent.copy()
    new = old + MOVES[actions]
    np.clip(new, 1, cfg.room_size, out=new)  # the walls block
    bumped = (new == old).all(-1) & (actions != NOOP)
    state.agent[:] = new
    r, c = new[:, 0], new[:, 1]

    # What the agent stepped on, by one lookup in the code grid.
    code = state.under[n, r, c]
    carrying = state.carrying
    picked = (code == TRASH) & ~carrying  # capacity 1
    deposited = IS_BIN[code] & carrying
    button_pressed = IS_BUTTON[code]
    goal_reached = (code == GOAL_RED) | (code == GOAL_CYAN)
    decoy_reached = code == DECOY
    if picked.any():
        i = np.flatnonzero(picked)
        item = ((state.trash[i] == new[i, None]).all(-1) & (state.trash_status[i] == IN_ROOM)).argmax(-1)
        state.trash_status[i, item] = CARRIED
        state.under[i, r[i], c[i]] = FLOOR
    if button_pressed.any():
        state.button_on &= ~button_pressed
        state.under[n[button_pressed], r[button_pressed], c[button_pressed]] = FLOOR
    task_complete = np.zeros_like(deposited)
    if deposited.any():
        i = np.flatnonzero(deposited)
        status = state.trash_status[i]
        state.trash_status[i] = status = np.where(status == CARRIED, DEPOSITED, status)
        task_complete[i] = ((status == DEPOSITED) | (status == ABSENT)).all(-1)
    state.t += 1

    events = {
        "picked": picked,
        "deposited": deposited,
        "button_pressed": button_pressed,
        "goal_reached": goal_reached,
        "decoy_reached": decoy_reached,
        "bumped_wall": bumped,
        "task_complete": task_complete,
    }
    reward = compute_reward(cfg.schedule, events, state)
    terminated = task_complete | button_pressed | goal_reached | decoy_reached | (state.choice & deposited)
    truncated = (state.t >= cfg.max_steps) & ~terminated

    # Only the cell left and the cell entered can have changed; draw the agent last (it may not have moved).
    draw_cells(state.obs, n, old[:, 0], old[:, 1], CELL_U16[state.under[n, old[:, 0], old[:, 1]]])
    draw_cells(state.obs, n, r, c, AGENT_U16[state.carrying.astype(np.int64), state.under[n, r, c]])
    return events, reward, terminated, truncated


# ---------------------------------------------------------------------------------------------- labels
def object_map(state: EnvState, pos: np.ndarray, present: np.ndarray, grid: int) -> np.ndarray:
    """[N, grid, grid] bool map of objects at `pos` ([N, 2] or [N, K, 2]) where `present`."""
    if pos.ndim == 2:
        pos, present = pos[:, None], present[:, None]
    out = np.zeros((len(pos), grid, grid), dtype=bool)
    n, k = np.nonzero(present)
    out[n, pos[n, k, 0], pos[n, k, 1]] = True
    return out


def task_target(state: EnvState) -> tuple[np.ndarray, np.ndarray]:
    """Where the task leads next, per env: the bin while carrying, else the nearest trash in the room (Manhattan;
    the first of equals), else the goal (RedGoal); and whether there is such a target ([N, 2], [N] bool)."""
    in_room = state.trash_status == IN_ROOM
    if state.trash.shape[1]:
        d_trash = np.where(in_room, _dist(state.trash, state.agent[:, None]), 10_000)
        nearest = state.trash[np.arange(state.n_envs), d_trash.argmin(-1)]
    else:
        nearest = np.full_like(state.agent, -1)
    carrying = state.carrying
    target = np.where(carrying[:, None], state.bin, np.where(in_room.any(-1)[:, None], nearest, state.goal))
    return target, carrying | in_room.any(-1) | state.goal_on


def labels(cfg: EnvConfig, state: EnvState) -> dict[str, np.ndarray]:
    """Ground truth for the current observation of every env (batch-first arrays).

    target: the bin while carrying, else the nearest trash in the room, else the goal (RedGoal); with none,
    target_dist is -1 and target_dir 0. Rooms are open, so path distance is the Manhattan distance."""
    G = cfg.grid_size
    in_room = state.trash_status == IN_ROOM
    carrying = state.carrying
    target, has_target = task_target(state)
    delta = (target - state.agent).astype(np.int64)
    dist = np.where(has_target, np.abs(delta).sum(-1), -1)
    vertical = np.abs(delta[:, 0]) >= np.abs(delta[:, 1])
    direction = np.where(
        vertical,
        np.where(delta[:, 0] < 0, UP, DOWN),
        np.where(delta[:, 1] < 0, LEFT, RIGHT),
    )
    direction = np.where(has_target & (dist > 0), direction, NOOP)
    out = {
        "agent_row": state.agent[:, 0].astype(np.int64),
        "agent_col": state.agent[:, 1].astype(np.int64),
        "carrying": carrying,
        "trash_remaining": ((state.trash_status == IN_ROOM) | (state.trash_status == CARRIED)).sum(-1),
        "trash_deposited": (state.trash_status == DEPOSITED).sum(-1),
        "wall_color": state.wall.astype(np.int64) - WALL_GREY,  # 0 grey, 1 blue, 2 green
        "wall_blue": state.wall == WALL_BLUE,
        "wall_green": state.wall == WALL_GREEN,
        "button_present": state.button_on.copy(),
        "choice_layout": state.choice.copy(),
        "goal_red": state.goal_red & state.goal_on,
        "target_dist": dist,
        "target_dir": direction,
        "target_drow": np.where(has_target, delta[:, 0], 0),
        "target_dcol": np.where(has_target, delta[:, 1], 0),
        "step": state.t.astype(np.int64),
        "trash_map": object_map(state, state.trash, in_room, G),
        "bin_map": object_map(state, state.bin, state.bin_on, G),
        "button_map": object_map(state, state.button, state.button_on, G),
        "goal_map": object_map(state, state.goal, state.goal_on, G),
        "decoy_map": object_map(state, state.decoy, state.decoy_on, G),
    }
    if cfg.schedule in AVAILABILITY:
        out["reward_available"] = np.asarray(AVAILABILITY[cfg.schedule](state), dtype=bool)
    return out
