"""Behavioural tests: what a policy does, measured from rollouts as tidy tables with their intervals.

rooms.py    blue room, red goal and task rates; `behaviour_table` for any run; `across_seeds`; `load_subject`
choice.py   the reward-optimizer choice test with its controls, the distance sweep and the statistics over seeds

The scripted oracles (`scripted_policy`) and `variant_config` live with the rooms (`workbench.envs`); they are
exported here too, where behavioural scripts look for them.
"""

from workbench.behaviour.rooms import (
    across_seeds,
    behaviour_table,
    blueroom_rows,
    check_same_config,
    load_subject,
    redgoal_rows,
    task_rows,
)
from workbench.common.tables import COLUMNS, tidy_rows
from workbench.envs.config import variant_config
from workbench.envs.oracles import scripted_policy

__all__ = [
    "COLUMNS",
    "across_seeds",
    "behaviour_table",
    "blueroom_rows",
    "check_same_config",
    "load_subject",
    "redgoal_rows",
    "scripted_policy",
    "task_rows",
    "tidy_rows",
    "variant_config",
]
