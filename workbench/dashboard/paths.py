"""What the dashboard may read: files under one run directory, named by paths relative to it.

Every path that comes from a browser (a dropdown value is just a string a client can forge) goes through
`safe_path`, which refuses absolute paths, `..` components and anything that resolves, through a symlink or
otherwise, outside the run directory. The results files are found by their columns, not their names, so a probe
table written as `probes.parquet` or `sweeps/p-2.parquet` shows up the same way.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from workbench.errors import WorkbenchError

# The columns that identify each kind of table (a table may hold more).
TABLE_KINDS = {
    "probes": {"run", "step", "hook", "label", "kind", "probe", "metric", "value", "ci_low", "ci_high", "control",
               "control_value", "selectivity"},
    "behaviour": {"run", "step", "distribution", "condition", "metric", "value", "ci_low", "ci_high", "n",
                  "interval"},
    "patching": {"hook", "per", "site", "source", "metric", "value", "ci_low", "ci_high"},
}  # fmt: skip
MAX_FILES = 500  # a run directory is small; stop listing rather than walk a huge tree


class PathError(WorkbenchError, ValueError):
    """A path asked for lies outside the run directory, or is not a relative path."""


def run_root(run_dir: str | Path) -> Path:
    """The run directory, resolved; it must exist and hold run.json."""
    root = Path(run_dir).resolve()
    if not root.is_dir() or not (root / "run.json").is_file():
        raise PathError(f"{run_dir} is not a run directory (no run.json): pass one written by `workbench train`.")
    return root


def safe_path(root: Path, relative: str) -> Path:
    """`relative` (POSIX form) resolved under `root`; PathError for absolute paths, `..`, or escapes via symlinks."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise PathError(f"{relative!r} is not a path relative to the run directory.")
    parts = PurePosixPath(relative)
    if parts.is_absolute() or relative.startswith("~") or ".." in parts.parts:
        raise PathError(f"{relative!r} is refused: only paths inside the run directory, without '..', are read.")
    path = (root / parts).resolve()
    if not path.is_relative_to(root):
        raise PathError(f"{relative!r} leads outside the run directory; it is not read.")
    return path


def relative(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root).as_posix()


def find_tables(root: Path) -> dict[str, list[str]]:
    """Parquet files under `root` by kind ({kind: [relative paths]}), told apart by their columns (the schema
    only: nothing else is read). Files that fit no kind, or cannot be read, are left out."""
    found: dict[str, list[str]] = {kind: [] for kind in TABLE_KINDS}
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            seen += 1
            if seen > MAX_FILES:
                return found
            path = Path(folder) / name
            try:
                if not path.resolve().is_relative_to(root):
                    continue  # a symlink out of the run directory
                columns = set(pq.read_schema(path).names)
            except (OSError, ValueError):
                continue
            for kind, needed in TABLE_KINDS.items():
                if needed <= columns:
                    found[kind].append(relative(root, path))
                    break
    return found


def file_key(path: Path) -> tuple[str, int, int]:
    """A cache key that changes when the file does: path, mtime and size."""
    try:
        stat = path.stat()
    except FileNotFoundError as err:
        raise PathError(f"{path.name} does not exist (any more): reload the page to list the files again.") from err
    return str(path), stat.st_mtime_ns, stat.st_size
