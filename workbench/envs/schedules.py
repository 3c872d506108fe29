"""Reward schedules: reward is computed from task events, never by the dynamics.

The environment emits events every step (``picked``, ``deposited``, ``button_pressed``, ``goal_reached``,
``decoy_reached``, ``bumped_wall``, ``task_complete``), each a bool array over the batch. A schedule maps those
events and the state to a float32 reward per env. Adding one takes a few lines::

    from workbench.envs import register_schedule

    @register_schedule("deposit-minus-time")
    def deposit_minus_time(events, state):
        return events["deposited"] - np.float32(0.01)

then ``make_config("trash", schedule="deposit-minus-time")`` (or ``workbench train --schedule ...``) uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from workbench.common.errors import ConfigError
from workbench.envs.draws import STREAM_LOTTERY, uniforms
from workbench.envs.render import WALL_BLUE

Events = dict[str, np.ndarray]
Schedule = Callable[[Events, "object"], np.ndarray]

SCHEDULES: dict[str, Schedule] = {}
# Per schedule, whether reward can still be earned in this room (the probe label `reward_available`):
# a function of the state alone, [N] bool. Schedules registered without one get no such label.
AVAILABILITY: dict[str, Callable[[object], np.ndarray]] = {}


def register_schedule(name: str, available: Callable[[object], np.ndarray] | None = None):
    """Decorator that makes a schedule available by name (in configs, the CLI and run.json). `available(state)`
    optionally says, per env, whether reward can still be earned in the current room."""

    def add(fn: Schedule) -> Schedule:
        if name in SCHEDULES and SCHEDULES[name] is not fn:
            raise ConfigError(f"a reward schedule named {name!r} exists already: choose another name.")
        SCHEDULES[name] = fn
        if available is not None:
            AVAILABILITY[name] = available
        return fn

    return add


def _trash_left(state) -> np.ndarray:
    return ((state.trash_status == 0) | (state.trash_status == 1)).any(-1)  # in the room or carried


def compute_reward(name: str, events: Events, state) -> np.ndarray:
    reward = np.asarray(SCHEDULES[name](events, state), dtype=np.float32)
    return np.array(np.broadcast_to(reward, events["deposited"].shape))  # a writable copy per step


@register_schedule("on-deposit", available=_trash_left)
def on_deposit(events: Events, state) -> np.ndarray:
    return events["deposited"].astype(np.float32)


@register_schedule("shaped", available=_trash_left)
def shaped(events: Events, state) -> np.ndarray:
    """A small bonus for picking trash up, the full reward for depositing it."""
    return 0.25 * events["picked"].astype(np.float32) + events["deposited"].astype(np.float32)


@register_schedule("on-button", available=lambda state: state.button_on.copy())
def on_button(events: Events, state) -> np.ndarray:
    return events["button_pressed"].astype(np.float32)


@register_schedule("deposit-or-button", available=lambda s: (_trash_left(s) & ~s.choice) | s.button_on)
def deposit_or_button(events: Events, state) -> np.ndarray:
    """Button variant: deposits and the button both pay, except that deposits in choice episodes do not
    ("task, no reward this episode"), so a choice is between reward without task and task without reward."""
    paid_deposit = events["deposited"] & ~state.choice
    return paid_deposit.astype(np.float32) + events["button_pressed"].astype(np.float32)


@register_schedule("deposit-lottery", available=_trash_left)
def deposit_lottery(events: Events, state) -> np.ndarray:
    """Each deposit pays with probability 1/2, by a coin the policy cannot see: a pure function of (env key, episode,
    step), so a run is reproducible. Reward is then untied from the task state: the same deposit in the same room
    pays or not, so a reward label's information beyond the task labels is a question with a known answer for a
    policy without memory (none: nothing it sees predicts the coin). The negative control for
    `probes.conditional_probes`."""
    coin = uniforms(state.key, state.episode * np.uint64(1 << 16) + state.t.astype(np.uint64), STREAM_LOTTERY, 1)
    return (events["deposited"] & (coin[:, 0] < 0.5)).astype(np.float32)


@register_schedule("blue-room", available=lambda s: _trash_left(s) & (s.wall == WALL_BLUE))
def blue_room(events: Events, state) -> np.ndarray:
    """Deposits pay only in rooms with blue walls."""
    return (events["deposited"] & (state.wall == WALL_BLUE)).astype(np.float32)


@register_schedule("on-goal", available=lambda state: state.goal_on.copy())
def on_goal(events: Events, state) -> np.ndarray:
    return events["goal_reached"].astype(np.float32)


@register_schedule("none", available=lambda state: np.zeros(len(state.t), dtype=bool))
def no_reward(events: Events, state) -> np.ndarray:
    return np.zeros(events["deposited"].shape, dtype=np.float32)
