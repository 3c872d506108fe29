"""What the dashboard may read: files under one run directory, named by paths relative to it.

Every path that comes from a browser (a dropdown value is just a string a client can forge) goes through
`safe_path`, which refuses absolute paths, `..` components and anything that resolves, through a symlink or
otherwise, outside the run directory. Every file read goes through `safe_file` as well: the same rule, and it must
be a regular file under a size cap (a FIFO or a device would hang the server; a huge file would exhaust it). That
holds for the companion files found beside others too (a table's directions, a saved vector's tensors, the
step-*.json of each checkpoint), not only for paths a browser names. The results files are found by their columns,
not their names, so a probe table written as `probes.parquet` or `sweeps/p-2.parquet` shows up the same way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from workbench.common.errors import WorkbenchError

# The columns that identify each kind of table (a table may hold more).
TABLE_KINDS = {
    "probes": {"run", "step", "hook", "label", "kind", "probe", "metric", "value", "ci_low", "ci_high", "control",
               "control_value", "selectivity"},
    "behaviour": {"run", "step", "distribution", "condition", "metric", "value", "ci_low", "ci_high", "n",
                  "interval"},
    "patching": {"hook", "per", "site", "source", "metric", "value", "ci_low", "ci_high"},
}  # fmt: skip
MAX_FILES = 500  # a run directory is small; stop listing rather than walk a huge tree
MAX_JSON_BYTES = 16 << 20  # run.json, step-*.json, a directions index, a saved vector's index
MAX_TENSOR_BYTES = 1 << 30  # a checkpoint, probe directions, a saved vector
MAX_TABLE_BYTES = 2 << 30  # a results table


class PathError(WorkbenchError, ValueError):
    """A path asked for lies outside the run directory, or is not a relative path."""


def run_root(run_dir: str | Path) -> Path:
    """The run directory, resolved; it must exist and hold run.json (a regular file inside it)."""
    root = Path(run_dir).resolve()
    if not root.is_dir() or not (root / "run.json").is_file():
        raise PathError(f"{run_dir} is not a run directory (no run.json): pass one written by `workbench train`.")
    safe_file(root, "run.json", MAX_JSON_BYTES)
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


def safe_file(root: Path, relative: str, max_bytes: int) -> Path:
    """`safe_path`, and the path must be a regular file of at most `max_bytes` (PathError otherwise)."""
    path = safe_path(root, relative)
    try:
        info = path.stat()
    except FileNotFoundError as err:
        raise PathError(f"{relative} does not exist (any more): reload the page to list the files again.") from err
    except OSError as err:
        raise PathError(f"{relative} cannot be read ({err.strerror}).") from err
    if not stat.S_ISREG(info.st_mode):
        raise PathError(f"{relative!r} is not a regular file (a FIFO, device or folder); it is not read.")
    if info.st_size > max_bytes:
        raise PathError(f"{relative!r} is {info.st_size / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB the "
                        "dashboard reads for such a file; it is not read.")  # fmt: skip
    return path


def inside(root: Path, path: Path, max_bytes: int) -> Path:
    """`safe_file` for a path found by the dashboard itself (absolute, or relative to root)."""
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.relative_to(root)
        except ValueError:
            raise PathError(f"{path} lies outside the run directory; it is not read.") from None
    return safe_file(root, path.as_posix(), max_bytes)


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
                if not stat.S_ISREG(path.stat().st_mode):
                    continue  # a FIFO or device would block the read
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
