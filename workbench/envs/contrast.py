"""Contrast pairs: env states that differ in exactly one factor, built through the env's state API.

    pairs = contrast_pairs("trash", n=256, seed=0)            # clean: a trash item; corrupt: the same room without it
    pairs.clean_obs, pairs.corrupt_obs                         # uint8 [n, 3, H, W] each
    pairs.cell                                                 # [n, 2] the grid cell the factor is about

Each pair starts from one fresh episode (`core.init_state`), is edited field by field on the `EnvState` (positions,
flags, status) and re-rendered with `core.rebuild`, so the pixels follow from the state as in any rollout and
labels stay true. *Clean* is the state with the factor (trash there, blue walls, the button, a red goal, carrying);
*corrupt* is the state without it (trash removed or moved, green walls, no button, a cyan goal, not carrying).
Patching moves activations from clean into corrupt; steering vectors are clean minus corrupt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.common.errors import ConfigError, unknown_name
from workbench.envs import core
from workbench.envs.config import EnvConfig, make_config
from workbench.envs.render import FLOOR, WALL_BLUE, WALL_GREEN

# Factor -> the variant whose rooms the pairs come from by default.
FACTORS = {"trash": "trash", "colour": "blueroom", "button": "button", "goal": "redgoal", "carrying": "trash"}
FACTOR_ALIASES = {"color": "colour", "wall": "colour", "carry": "carrying"}
TRASH_MODES = ("remove", "move")


@dataclass
class ContrastPairs:
    """`clean[i]` and `corrupt[i]` differ only in `factor`; `cell[i]` is the (row, col) it concerns ((-1, -1) for
    the wall colour, which is everywhere)."""

    factor: str
    config: EnvConfig
    clean: core.EnvState
    corrupt: core.EnvState
    cell: np.ndarray

    def __len__(self) -> int:
        return self.clean.n_envs

    @property
    def clean_obs(self) -> np.ndarray:
        return self.clean.obs

    @property
    def corrupt_obs(self) -> np.ndarray:
        return self.corrupt.obs


def resolve_factor(factor: str) -> str:
    name = FACTOR_ALIASES.get(str(factor).lower(), str(factor).lower())
    if name not in FACTORS:
        raise unknown_name("contrast factor", factor, FACTORS)
    return name


def pair_config(factor: str, config: EnvConfig | dict | str | None = None, **options) -> EnvConfig:
    """The env config pairs are drawn from: `config` if given (any variant: the edit adds what is missing), else
    the factor's own variant."""
    if config is None:
        return make_config(FACTORS[resolve_factor(factor)], **options)
    if isinstance(config, dict):
        return make_config(**{**config, **options})
    return make_config(config, **options)


def contrast_pairs(
    factor: str,
    n: int,
    seed: int = 0,
    config: EnvConfig | dict | str | None = None,
    mode: str = "remove",
) -> ContrastPairs:
    """`n` pairs differing in `factor` (trash | colour | button | goal | carrying). Trash `mode`: remove the item, or
    move it to another free cell."""
    factor = resolve_factor(factor)
    if not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"n={n!r}: ask for at least one contrast pair.")
    if mode not in TRASH_MODES:
        raise unknown_name("trash contrast mode", mode, TRASH_MODES)
    cfg = pair_config(factor, config)
    if factor in ("trash", "carrying") and cfg.n_trash < 1:
        raise ConfigError(f"factor {factor!r} needs rooms with trash; {cfg.variant!r} has n_trash=0.")
    rng = np.random.default_rng(seed)
    clean = core.init_state(cfg, int(n), seed)
    rows = np.arange(int(n))
    cell = np.full((int(n), 2), -1, dtype=np.int16)

    if factor == "trash":
        item = _ensure_trash(cfg, clean, rng)
        cell = clean.trash[rows, item].copy()
        corrupt = clean.copy()
        if mode == "remove":
            corrupt.trash_status[rows, item] = core.ABSENT
            corrupt.trash[rows, item] = -1
        else:
            corrupt.trash[rows, item] = free_cells(cfg, clean, rng)
    elif factor == "colour":
        clean.wall[:] = WALL_BLUE
        corrupt = clean.copy()
        corrupt.wall[:] = WALL_GREEN
    elif factor == "button":
        absent = ~clean.button_on
        clean.button[absent] = free_cells(cfg, clean, rng)[absent]
        clean.button_on[:] = True
        cell = clean.button.copy()
        corrupt = clean.copy()
        corrupt.button_on[:] = False
        corrupt.button[:] = -1
    elif factor == "goal":
        absent = ~clean.goal_on
        clean.goal[absent] = free_cells(cfg, clean, rng)[absent]
        clean.goal_on[:] = True
        clean.goal_red[:] = True
        cell = clean.goal.copy()
        corrupt = clean.copy()
        corrupt.goal_red[:] = False
    else:  # carrying: the agent holds item 0, or that item is gone (it was never in the room)
        clean.trash_status[:, 0] = core.CARRIED
        corrupt = clean.copy()
        corrupt.trash_status[:, 0] = core.ABSENT
        corrupt.trash[:, 0] = -1
        cell = clean.agent.copy()
    core.rebuild(cfg, clean, rows)
    core.rebuild(cfg, corrupt, rows)
    return ContrastPairs(factor, cfg, clean, corrupt, cell)


def trash_at_pairs(cell: tuple[int, int], n: int, seed: int = 0, config: EnvConfig | dict | str | None = None):
    """Pairs for a retargeting vector: clean has a trash item at grid `cell` (row, col), corrupt the same room
    without it. Rooms whose `cell` holds the agent or another object are skipped (more are drawn)."""
    cfg = pair_config("trash", config)
    row, col = check_cell(cfg, cell)
    if not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"n={n!r}: ask for at least one contrast pair.")
    rng = np.random.default_rng(seed)
    state = core.init_state(cfg, 4 * int(n) + 8, seed)  # a few of the rooms have the cell taken
    free = (state.under[:, row, col] == FLOOR) & ~((state.agent[:, 0] == row) & (state.agent[:, 1] == col))
    keep = np.flatnonzero(free)[: int(n)]
    if len(keep) < n:
        raise ConfigError(f"too few rooms with cell {cell} free; use a cell inside the room away from the corners.")
    clean = state.take(keep)
    rows = np.arange(len(keep))
    item = _ensure_trash(cfg, clean, rng)
    clean.trash[rows, item] = (row, col)
    corrupt = clean.copy()
    corrupt.trash_status[rows, item] = core.ABSENT
    corrupt.trash[rows, item] = -1
    core.rebuild(cfg, clean, rows)
    core.rebuild(cfg, corrupt, rows)
    return ContrastPairs("trash", cfg, clean, corrupt, np.tile(np.array([row, col], np.int16), (len(keep), 1)))


def check_cell(cfg: EnvConfig, cell) -> tuple[int, int]:
    """A (row, col) inside the room's interior (walls are row/col 0 and room_size + 1)."""
    try:
        row, col = (int(v) for v in cell)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cell {cell!r} is not (row, col): pass two integers, e.g. (2, 3).") from err
    if not (1 <= row <= cfg.room_size and 1 <= col <= cfg.room_size):
        raise ConfigError(
            f"cell ({row}, {col}) is outside the room: rows and columns of the interior run from 1 to "
            f"{cfg.room_size} (0 and {cfg.room_size + 1} are walls)."
        )
    return row, col


def free_cells(cfg: EnvConfig, state: core.EnvState, rng: np.random.Generator) -> np.ndarray:
    """[N, 2] one random empty floor cell per room (no object, not the agent)."""
    n = state.n_envs
    free = state.under == FLOOR
    free[np.arange(n), state.agent[:, 0], state.agent[:, 1]] = False
    keys = np.where(free.reshape(n, -1), rng.random((n, free[0].size)), -1.0)
    flat = keys.argmax(1)
    return np.stack(np.divmod(flat, cfg.grid_size), axis=-1).astype(np.int16)


def _ensure_trash(cfg: EnvConfig, state: core.EnvState, rng: np.random.Generator) -> np.ndarray:
    """The index of an in-room trash item per room; rooms without one (BlueRoom) get item 0 placed on a free cell."""
    in_room = state.trash_status == core.IN_ROOM
    none = ~in_room.any(1)
    if none.any():
        state.trash[none, 0] = free_cells(cfg, state, rng)[none]
        state.trash_status[none, 0] = core.IN_ROOM
        core.rebuild(cfg, state, np.flatnonzero(none))  # later free-cell draws must see it
        in_room = state.trash_status == core.IN_ROOM
    return in_room.argmax(1)
