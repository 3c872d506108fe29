"""Typed errors. Every message says what was wrong and what to do instead."""


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose."""


class ConfigError(WorkbenchError, ValueError):
    """An option, name or layout is not valid (unknown variant, room too small, ...)."""


class ActionError(WorkbenchError, ValueError):
    """Actions passed to an environment have the wrong shape, dtype or range."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, malformed, or does not match its run.json."""


class DatasetError(WorkbenchError):
    """An activation dataset is missing, incomplete or damaged, or cannot be written where asked."""


class OutputPathError(WorkbenchError, ValueError):
    """An output path cannot be written as asked: a directory, a run's own file, or an unwritable folder."""


class ResourceError(WorkbenchError):
    """A command would need more memory (or another resource) than the machine can spare; says what to lower."""


def unknown_name(kind: str, name: str, valid) -> ConfigError:
    """An error for an unknown `name` that lists the valid ones and the nearest match."""
    import difflib

    valid = sorted(valid)
    near = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint} Valid: {', '.join(valid)}.")
