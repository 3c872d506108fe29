"""reward-workbench: what do RL policies learn when we reward them?"""

from workbench.errors import ActionError, CheckpointError, ConfigError, WorkbenchError

__version__ = "0.1.0"
__all__ = ["ActionError", "CheckpointError", "ConfigError", "WorkbenchError", "__version__"]
