"""The probes' own error type. Unknown hook or label names raise workbench's `ConfigError` (via
`workbench.errors.unknown_name`, which lists the valid names and the nearest match); everything else that is
wrong with the data given to a probe raises `ProbeError`."""

from workbench.errors import WorkbenchError


class ProbeError(WorkbenchError, ValueError):
    """Data a probe cannot be fitted on: empty, too few episodes, mismatched lengths, NaN or inf activations,
    a constant label that was asked for by name."""
