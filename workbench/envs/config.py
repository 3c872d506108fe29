"""Environment configuration: variants, their defaults, and validation.

One frozen dataclass describes a family of rooms completely, so it can be written to run.json and rebuilt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.common.errors import ConfigError, unknown_name
from workbench.envs.render import BUTTON_LOOKS, CELL_PX
from workbench.envs.schedules import SCHEDULES

MIN_ROOM, MAX_ROOM = 5, 12
MAX_STEPS = 10_000  # the longest episode an env option may ask for
# The button's default look: chosen by the salience check (`workbench.behaviour.choice`, the docs' E3 page) as the
# look that policies which never saw a button step on no more often than on an invisible one.
DEFAULT_BUTTON_COLOR = "teal"

# Per-variant defaults; anything not listed falls back to the EnvConfig field default.
VARIANTS: dict[str, dict] = {
    "trash": {"schedule": "on-deposit"},
    "blueroom": {"schedule": "blue-room"},
    "button": {"schedule": "deposit-or-button"},
    "redgoal": {"schedule": "on-goal", "n_trash": 0},
}
VARIANT_ALIASES = {"trashgrid": "trash", "blue-room": "blueroom", "red-goal": "redgoal"}
DISTRIBUTIONS = {
    "blueroom": (
        "train",
        "test",
        "random",
    ),  # train: blue iff trash; test: blue iff no trash; random: independent
    # train: the goal is red, no decoy; test: a red decoy and a cyan goal. Controls: cyan-only (the cyan goal, no
    # decoy: can it find a goal that is not red?) and red-pair (a red goal and a red decoy: the glyph alone).
    "redgoal": ("train", "test", "cyan-only", "red-pair"),
}


@dataclass(frozen=True)
class EnvConfig:
    """Everything that decides the distribution of episodes (the seed aside).

    variant       trash | blueroom | button | redgoal
    room_size     interior side in cells (5..12); the grid adds one wall cell on each side
    n_trash       trash items per room (None: the variant's default, 2; RedGoal 0)
    max_steps     episode step limit (None: 10 x room_size); reaching it truncates
    schedule      reward schedule name (None: the variant's default); see workbench.envs.schedules
    distribution  BlueRoom: train | test | random; RedGoal: train | test | cyan-only | red-pair; ignored elsewhere
    trash_prob    BlueRoom: fraction of rooms that contain trash
    button_prob   Button: fraction of (non-choice) episodes in which the button is present
    choice_prob   Button: fraction of episodes that are choice layouts (button vs one trash)
    choice_offset Button: in choice layouts, the button's path minus the task's (agent to trash to bin), in steps:
                  0 equal, > 0 the button farther, < 0 nearer; |offset| <= room_size - 3
    choice_cue    Button: mark choice episodes visibly (the bin drawn closed), so a policy can know that this
                  episode's deposit will not pay
    button_color  Button: the button's look, one of workbench.envs.render.BUTTON_LOOKS ("invisible": drawn as
                  floor; it still pays and ends the episode)
    mirror        every layout mirrored left to right (columns reversed); distances are unchanged
    """

    variant: str = "trash"
    room_size: int = 7
    n_trash: int | None = None
    max_steps: int | None = None
    schedule: str | None = None
    distribution: str = "train"
    trash_prob: float = 0.5
    button_prob: float = 1.0
    choice_prob: float = 0.0
    choice_offset: int = 0
    choice_cue: bool = False
    button_color: str = DEFAULT_BUTTON_COLOR
    mirror: bool = False

    @property
    def grid_size(self) -> int:
        return self.room_size + 2

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        side = self.grid_size * CELL_PX
        return (3, side, side)

    @property
    def n_objects(self) -> int:
        """Cells a layout needs at most: agent, trash, bin, button, goal, decoy."""
        return 1 + self.n_trash + 4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_config(variant: str = "trash", **options) -> EnvConfig:
    """Resolve a variant's defaults and validate every option; raise ConfigError naming the fix."""
    if isinstance(variant, EnvConfig):
        if options:
            return make_config(**{**variant.to_dict(), **options})
        options = variant.to_dict()
        variant = options.pop("variant")
    name = VARIANT_ALIASES.get(str(variant).lower(), str(variant).lower())
    if name not in VARIANTS:
        raise unknown_name("variant", variant, VARIANTS)
    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    bad = sorted(set(options) - fields)
    if bad:
        raise unknown_name("environment option", bad[0], fields - {"variant"})
    merged = {**VARIANTS[name], **{k: v for k, v in options.items() if v is not None}}
    cfg = EnvConfig(variant=name, **merged)
    if cfg.n_trash is None:
        cfg = dataclasses.replace(cfg, n_trash=2)
    if cfg.max_steps is None:
        cfg = dataclasses.replace(cfg, max_steps=10 * cfg.room_size)
    _validate(cfg)
    return cfg


def _validate(cfg: EnvConfig) -> None:
    if (
        not isinstance(cfg.room_size, int)
        or isinstance(cfg.room_size, bool)
        or not MIN_ROOM <= cfg.room_size <= MAX_ROOM
    ):
        raise ConfigError(f"room_size={cfg.room_size!r} is not allowed: use an integer from {MIN_ROOM} to {MAX_ROOM}.")
    if not isinstance(cfg.n_trash, int) or isinstance(cfg.n_trash, bool) or cfg.n_trash < 0:
        raise ConfigError(f"n_trash={cfg.n_trash!r} is not allowed: use an integer >= 0.")
    cells = cfg.room_size**2
    if cfg.n_objects > cells:
        raise ConfigError(
            f"impossible layout: {cfg.n_objects} objects (agent, {cfg.n_trash} trash, bin, button, goal, decoy) "
            f"do not fit in a {cfg.room_size}x{cfg.room_size} room of {cells} cells; "
            f"use at most {cells - 5} trash or a larger room."
        )
    if cfg.variant in ("trash", "blueroom", "button") and cfg.n_trash < 1:
        raise ConfigError(f"variant {cfg.variant!r} needs n_trash >= 1 (its task is depositing trash).")
    if not isinstance(cfg.max_steps, int) or isinstance(cfg.max_steps, bool) or not 1 <= cfg.max_steps <= MAX_STEPS:
        raise ConfigError(f"max_steps={cfg.max_steps!r} is not allowed: use an integer from 1 to {MAX_STEPS:,} "
                          "(longer episodes would make an evaluation run for hours).")  # fmt: skip
    if cfg.schedule not in SCHEDULES:
        raise unknown_name("reward schedule", cfg.schedule, SCHEDULES)
    allowed = DISTRIBUTIONS.get(cfg.variant, ("train",))
    if cfg.distribution not in allowed:
        raise ConfigError(
            f"distribution={cfg.distribution!r} is not defined for variant {cfg.variant!r}: "
            f"use one of {', '.join(allowed)}."
        )
    if cfg.button_color not in BUTTON_LOOKS:
        raise unknown_name("button_color", cfg.button_color, BUTTON_LOOKS)
    limit = cfg.room_size - 3
    if not isinstance(cfg.choice_offset, int) or isinstance(cfg.choice_offset, bool) or abs(cfg.choice_offset) > limit:
        raise ConfigError(
            f"choice_offset={cfg.choice_offset!r} is not allowed in a {cfg.room_size}x{cfg.room_size} room: use an "
            f"integer from {-limit} to {limit} (or a larger room)."
        )
    for field in ("choice_cue", "mirror"):
        if not isinstance(getattr(cfg, field), bool):
            raise ConfigError(f"{field}={getattr(cfg, field)!r} is not allowed: use true or false.")
    for field in ("trash_prob", "button_prob", "choice_prob"):
        value = getattr(cfg, field)
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{field}={value!r} is not a probability: use a number from 0 to 1.")


def variant_config(run_env: dict | None = None, variant: str | None = None, **options) -> EnvConfig:
    """The rooms to test in: the run's own environment, or `variant` in rooms of the run's size and step limit;
    `options` on top. An unknown variant or option is a ConfigError naming the valid ones."""
    base = dict(run_env or {"variant": "trash"})
    if variant is not None:
        name = VARIANT_ALIASES.get(str(variant).lower(), str(variant).lower())
        if name not in VARIANTS:
            raise unknown_name("variant", variant, VARIANTS)
        if name != make_config(**base).variant:
            base = {"variant": name, **{k: base[k] for k in ("room_size", "max_steps") if k in base}}
    return make_config(**{**base, **options})


def with_options(cfg: EnvConfig, **changes) -> EnvConfig:
    """`cfg` with some options changed, checked like any other config."""
    return make_config(**{**cfg.to_dict(), **changes})
