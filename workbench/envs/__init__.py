"""Gridworlds where reward is decoupled from the task (the variants: README, "Environments").

core, batch, config, schedules, render, draws   the batched rooms, their options, reward schedules, pixels, randomness
gym_env, sb3_vec                               gymnasium and SB3 VecEnv faces of the same rooms
contrast                                       pairs of states differing in one factor (for patching and steering)
oracles                                        scripted policies that plan on the state
rollouts                                       playing any policy for whole episodes, and the evaluation summary
minigrid                                       MiniGrid worlds for imported policies
"""

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
