"""Gridworlds where reward is decoupled from the task. See README.md for the variants."""

from workbench.envs.batch import BatchEnv
from workbench.envs.config import VARIANTS, EnvConfig, make_config
from workbench.envs.core import ACTION_NAMES, EVENTS, N_ACTIONS, EnvState, labels, step
from workbench.envs.gym_env import GYM_IDS, TrashGridEnv, register_envs
from workbench.envs.schedules import SCHEDULES, register_schedule

register_envs()

__all__ = [
    "ACTION_NAMES",
    "EVENTS",
    "N_ACTIONS",
    "SCHEDULES",
    "VARIANTS",
    "BatchEnv",
    "EnvConfig",
    "EnvState",
    "GYM_IDS",
    "TrashGridEnv",
    "labels",
    "make_config",
    "register_schedule",
    "step",
]
