"""The probes' own error type. Unknown hook or label names raise workbench's `ConfigError` (via
`workbench.common.errors.unknown_name`, which lists the valid names and the nearest match); everything else that is
wrong with the data given to a probe raises `ProbeError`."""

from workbench.common.errors import WorkbenchError, unknown_name


class ProbeError(WorkbenchError, ValueError):
    """Data a probe cannot be fitted on: empty, too few episodes, mismatched lengths, NaN or inf activations,
    a constant label that was asked for by name."""


def known_names(names, valid, what: str, empty: str) -> list[str]:
    """`names` (one name or a list) as a list without repeats, each one of `valid` (else the unknown-name error for
    `what`, with its nearest match); `empty`: the refusal of an empty list."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ProbeError(empty)
    for name in names:
        if name not in valid:
            raise unknown_name(what, name, valid)
    return list(dict.fromkeys(names))
