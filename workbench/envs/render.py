"""Pixels: the palette, the glyph of each cell code, and views for people.

Each grid cell is a 2x2 block of RGB pixels. The env keeps a per-cell code grid (``state.under``: what lies
on each cell, the agent aside) and renders incrementally: a step redraws only the cell the agent left and the
cell it entered, by table lookup. Objects fill their cell with their colour, except the goal, which is a
diagonal (top-left + bottom-right), so goal and decoy differ in shape as well as colour. The agent's cell is
white on top; its bottom-left pixel is trash-coloured while carrying (carried trash is visible) and its
bottom-right pixel shows the object the agent stands on, if any.
"""

from __future__ import annotations

import numpy as np

CELL_PX = 2

# Colours (RGB). Observations hold these values.
COLORS = {
    "floor": (0, 0, 0),
    "wall_grey": (128, 128, 128),
    "wall_blue": (40, 70, 230),
    "wall_green": (40, 190, 70),
    "agent": (255, 255, 255),
    "trash": (190, 120, 40),
    "bin": (140, 60, 200),
    "button": (240, 210, 30),  # yellow: the button's look before `button_color` existed
    "red": (230, 30, 30),  # the training goal, and the decoy
    "cyan": (30, 200, 220),  # the goal at RedGoal test time
    "bin_closed": (60, 30, 90),  # the bin in a marked choice episode (`choice_cue`): its deposit will not pay
    # Other looks of the button (`EnvConfig.button_color`); "invisible" draws it as floor. Teal (the default) and
    # dark teal are the study's counterbalanced looks; pink is its novel-colour control; navy and aqua are spares.
    "button_teal": (0, 110, 100),
    "button_dark_teal": (0, 70, 70),
    "button_aqua": (0, 150, 140),
    "button_navy": (20, 40, 120),
    "button_pink": (250, 140, 200),
}

# Cell codes of state.under (and state.wall uses the three wall codes).
FLOOR, WALL_GREY, WALL_BLUE, WALL_GREEN, TRASH, BIN, BUTTON, DECOY, GOAL_RED, GOAL_CYAN = range(10)
BIN_CLOSED, BUTTON_INVISIBLE, BUTTON_TEAL, BUTTON_DARK_TEAL, BUTTON_AQUA, BUTTON_NAVY, BUTTON_PINK = range(10, 17)
CODE_NAMES = ("floor", "wall_grey", "wall_blue", "wall_green", "trash", "bin", "button", "decoy", "goal_red",
              "goal_cyan", "bin_closed", "button_invisible", "button_teal", "button_dark_teal", "button_aqua",
              "button_navy", "button_pink")  # fmt: skip
# The button's looks by name (`EnvConfig.button_color`): every one is a button cell to the dynamics.
BUTTON_LOOKS = {"teal": BUTTON_TEAL, "dark_teal": BUTTON_DARK_TEAL, "aqua": BUTTON_AQUA, "navy": BUTTON_NAVY,
                "pink": BUTTON_PINK, "yellow": BUTTON, "invisible": BUTTON_INVISIBLE}  # fmt: skip
BUTTON_CODES = tuple(BUTTON_LOOKS.values())
BIN_CODES = (BIN, BIN_CLOSED)
IS_BUTTON = np.isin(np.arange(len(CODE_NAMES)), BUTTON_CODES)
IS_BIN = np.isin(np.arange(len(CODE_NAMES)), BIN_CODES)
WALL_NAMES = {WALL_GREY: "grey", WALL_BLUE: "blue", WALL_GREEN: "green"}
_CODE_COLOR = (
    "floor",
    "wall_grey",
    "wall_blue",
    "wall_green",
    "trash",
    "bin",
    "button",
    "red",
    "red",
    "cyan",
    "bin_closed",
    "floor",
    "button_teal",
    "button_dark_teal",
    "button_aqua",
    "button_navy",
    "button_pink",
)


def _glyph(tl, tr, bl, br) -> np.ndarray:
    """[3, 2, 2] uint8 block from four colour names."""
    return np.array([[COLORS[tl], COLORS[tr]], [COLORS[bl], COLORS[br]]], dtype=np.uint8).transpose(2, 0, 1)


# CELL_RGB[code]: the cell without the agent. AGENT_RGB[carrying, code]: the agent standing on that cell.
CELL_RGB = np.stack(
    [
        _glyph(c, "floor", "floor", c) if name.startswith("goal") else _glyph(c, c, c, c)
        for name, c in zip(CODE_NAMES, _CODE_COLOR, strict=True)
    ]
)
AGENT_RGB = np.stack(
    [
        np.stack(
            [
                _glyph("agent", "agent", "trash" if carrying else "agent", "agent" if c == "floor" else c)
                for c in _CODE_COLOR
            ]  # fmt: skip
        )
        for carrying in (False, True)
    ]
)


def _pixel_pairs(rgb: np.ndarray) -> np.ndarray:
    """[..., 3, 2, 2] uint8 blocks as [..., 6] uint16: each uint16 is the two side-by-side pixels of one
    channel and one pixel row, so a cell is written with 6 scattered stores instead of 12."""
    return np.ascontiguousarray(rgb).view(np.uint16).reshape(*rgb.shape[:-3], 6)


CELL_U16, AGENT_U16 = _pixel_pairs(CELL_RGB), _pixel_pairs(AGENT_RGB)


def draw_cells(obs: np.ndarray, n, r, c, cells_u16: np.ndarray) -> None:
    """Write cells (r, c) of envs n, given as pixel pairs [M, 6] (rows of CELL_U16 / AGENT_U16), into the
    C-contiguous obs [N, 3, H, W] in place."""
    _, _, height, width = obs.shape
    pairs_per_row = width // 2
    flat = obs.view(np.uint16).reshape(-1)
    base = (n * 3 * height + CELL_PX * r) * pairs_per_row + c
    offsets = (np.arange(3)[:, None] * height + np.arange(CELL_PX)[None, :]).reshape(-1) * pairs_per_row
    flat[base[:, None] + offsets] = cells_u16


def draw_full(obs: np.ndarray, envs: np.ndarray, under: np.ndarray, agent: np.ndarray, carrying) -> None:
    """Render whole envs from their code grids under [m, G, G] and agents [m, 2]."""
    m, grid = under.shape[0], under.shape[1]
    obs[envs] = CELL_RGB[under].transpose(0, 3, 1, 4, 2, 5).reshape(m, 3, grid * CELL_PX, grid * CELL_PX)
    r, c = agent[:, 0], agent[:, 1]
    draw_cells(obs, envs, r, c, AGENT_U16[carrying.astype(np.int64), under[np.arange(m), r, c]])


def rgb_frame(obs: np.ndarray, scale: int = 16) -> np.ndarray:
    """One observation [3, H, W] as an upscaled RGB array [H*scale, W*scale, 3] for people."""
    return np.repeat(np.repeat(obs.transpose(1, 2, 0), scale, axis=0), scale, axis=1)


_TEXT = {FLOOR: ".", TRASH: "t", BIN: "B", BIN_CLOSED: "b", DECOY: "R", GOAL_RED: "G", GOAL_CYAN: "G",
         **dict.fromkeys(BUTTON_CODES, "o")}  # fmt: skip


def text_frame(under: np.ndarray, agent: np.ndarray, carrying: bool, wall: int, t: int) -> str:
    """A terminal view of one env: # wall, A agent (a while carrying), t trash, B bin (b: closed, its deposit
    will not pay), o button (in any look, the invisible one too), G goal
    (red in training, cyan at RedGoal test), R red decoy, . floor."""
    grid = under.shape[0]
    rows = []
    for r in range(grid):
        line = []
        for c in range(grid):
            if (r, c) == tuple(agent):
                line.append("a" if carrying else "A")
            else:
                line.append(_TEXT.get(int(under[r, c]), "#"))
        rows.append(" ".join(line))
    return "\n".join(rows) + f"\nwalls: {WALL_NAMES[int(wall)]}  step: {int(t)}"


def frame_strip(frames: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """RGB frames [H, W, 3] side by side, each framed by `pad` white pixels: one image of a rollout."""
    return np.concatenate([np.pad(f, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for f in frames], axis=1)
