"""reward-workbench: what do RL policies learn when we reward them?"""

import workbench.envs  # noqa: F401  (registers the gymnasium ids Workbench/TrashGrid-v0 ... RedGoal-v0; ~0.2 s)
from workbench.errors import ActionError, CheckpointError, ConfigError, WorkbenchError

__version__ = "0.1.0"
__all__ = ["ActionError", "CheckpointError", "ConfigError", "WorkbenchError", "__version__", "hook", "load_policy"]


def __getattr__(name: str):
    # Lazy, so that `import workbench` (and the envs) does not pay for torch and stable-baselines3.
    if name == "load_policy":
        from workbench.checkpoints import load_policy

        return load_policy
    if name == "hook":
        from workbench.hooked import hook

        return hook
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
