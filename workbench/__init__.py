"""reward-workbench: what do RL policies learn when we reward them?

The packages, in the order the pipeline runs (each imports only those above it in this list; `make lint` checks it):

    workbench.common         errors, files (atomic writes), statistics, torch helpers, input guards, progress, tasks
    workbench.envs           the rooms (TrashGrid, BlueRoom, Button, RedGoal), reward schedules, contrast pairs,
                             scripted oracles, rollouts, MiniGrid
    workbench.policies       the CNN and the transformer, hook names by role, hooked views of outside models
    workbench.training       TrainConfig and named configs, PPO (stable-baselines3), checkpoints, seeds, SB3 import
    workbench.data           activation datasets: collect, store, open, replay
    probes                   linear probes with their controls, probe sweeps, the chiseling tracer
    workbench.interventions  activation patching, steering vectors, attribution
    workbench.behaviour      behavioural tests: the choice test, blue room, red goal
    workbench.bench          `workbench bench`: ours beside the reference implementations
    workbench.apps           the report and the dashboard
    analysis                 the study E1-E5 (`workbench demo`)
    workbench.cli            the `workbench` command

Modules that moved when the packages were laid out keep their old names as aliases (`workbench.patching` is
`workbench.interventions.patching`), so scripts written against them still run.
"""

import importlib
import importlib.abc
import importlib.util
import sys

import workbench.envs  # noqa: F401  (registers the gymnasium ids Workbench/TrashGrid-v0 ... RedGoal-v0)
from workbench.common.errors import ActionError, CheckpointError, ConfigError, WorkbenchError

__version__ = "0.1.0"
__all__ = ["ActionError", "CheckpointError", "ConfigError", "WorkbenchError", "__version__", "hook", "load_policy"]

# Old module name -> where it lives now.
MOVED = {
    "workbench.errors": "workbench.common.errors",
    "workbench.io": "workbench.common.io",
    "workbench.stats": "workbench.common.stats",
    "workbench.threads": "workbench.common.compute",
    "workbench.progress": "workbench.common.progress",
    "workbench.guards": "workbench.common.guards",
    "workbench.distributed": "workbench.training.seeds",
    "workbench.contrast": "workbench.envs.contrast",
    "workbench.evaluate": "workbench.envs.rollouts",
    "workbench.minigrid_world": "workbench.envs.minigrid",
    "workbench.hooked": "workbench.policies.views",
    "workbench.sb3_import": "workbench.training.sb3_import",
    "workbench.policies.sb3": "workbench.training.sb3_policy",
    "workbench.train": "workbench.training.ppo",
    "workbench.checkpoints": "workbench.training.checkpoints",
    "workbench.datasets": "workbench.data",
    "workbench.patching": "workbench.interventions.patching",
    "workbench.steering": "workbench.interventions.steering",
    "workbench.attribution": "workbench.interventions.attribution",
    "workbench.choice": "workbench.behaviour.choice",
    "workbench.tracer": "probes.tracer",
    "workbench.report": "workbench.apps.report",
    "workbench.dashboard": "workbench.apps.dashboard",
    "workbench.dashboard.data": "workbench.apps.data",
    "workbench.dashboard.figures": "workbench.apps.figures",
    "workbench.dashboard.paths": "workbench.apps.paths",
    "workbench.bench_collect": "workbench.bench.collect",
    "workbench.bench_hooked": "workbench.bench.hooked",
    "workbench.bench_patching": "workbench.bench.patching",
    "workbench.policies._bench": "workbench.bench.policies",
    "probes.bench": "workbench.bench.probes",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that now holds its code (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name; the import system files it under the old one too


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    # Lazy, so that `import workbench` (and the envs) does not pay for torch and stable-baselines3.
    if name == "load_policy":
        from workbench.training.checkpoints import load_policy

        return load_policy
    if name == "hook":
        from workbench.policies.views import hook

        return hook
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
