"""Checks made before any work starts, shared by every command: each refusal is one line that names the input, the
value, what is allowed and what to do instead.

    check_int("1e6", "--steps", 1, 10**8)    # 1_000_000 (scientific form accepted), or one ConfigError line
    check_float("nan", "--coef", -1e6, 1e6)   # finite and in range, or ConfigError
    check_output("runs/x/probes.parquet")     # not a directory, not a run's own file, in a folder we can write
    check_memory(need, "probe --steps 1000000", "--steps", per_unit=row)   # refused with the figure and the option

The CLI's option parsers (`workbench.cli.parsers`) build on these. Output paths and memory before the
first checkpoint is loaded or the first episode played, so a bad input never costs the work before it.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import numbers
import os
import re
import tempfile
from pathlib import Path

from workbench.common.errors import ConfigError, OutputPathError, ResourceError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most RNGs take 32-bit seeds
MEMORY_FRACTION = 0.8  # of the memory free now, the most one command may plan to take


# ---------------------------------------------------------------------------------------------- numeric values
def integer(value, shown: str, lo: int, hi: int | None, unit: str | None = None) -> int:
    """`value` (int, numpy int, or text like 200000, 200_000 or 1e6) as an int in [lo, hi] (hi None: no upper
    bound); ConfigError otherwise, naming the value (`shown`), what is wrong with it and the range (`unit` names what
    is counted, for a value below lo)."""
    if hi is not None:
        allowed = f"use an integer from {lo:,} to {hi:,}"
    else:
        allowed = f"use at least {lo:,} {unit}" if unit else f"use an integer of at least {lo:,}"
    if isinstance(value, bool):
        raise ConfigError(f"{shown} is not a number: {allowed}.")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise ConfigError(f"{shown} is not a number: {allowed}.") from None
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise ConfigError(f"{shown} is not a whole number: {allowed}.") from None
            value = int(as_float)
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ConfigError(f"{shown} is not a whole number: {allowed}.")
        value = int(value)
    elif isinstance(value, numbers.Integral):  # numpy ints (gym spaces, array elements) too
        value = int(value)
    else:
        raise ConfigError(f"{shown} is not a number: {allowed}.")
    if value < lo or (hi is not None and value > hi):
        least = f" (at least {lo:,} {unit})" if unit and hi is not None and value < lo else ""
        raise ConfigError(f"{shown} is out of range: {allowed}{least}.")
    return value


def real(value, shown: str, lo: float, hi: float) -> float:
    """`value` as a finite float in [lo, hi]; ConfigError otherwise, naming the value (`shown`) and the range."""
    allowed = f"use a finite number from {lo:g} to {hi:g}"
    try:
        if isinstance(value, bool):
            raise TypeError
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{shown} is not a number: {allowed}.") from None
    if not math.isfinite(result):
        raise ConfigError(f"{shown} is not finite: {allowed}.")
    if not lo <= result <= hi:
        raise ConfigError(f"{shown} is out of range: {allowed}.")
    return result


def check_int(value, name: str, lo: int, hi: int | None = None, unit: str | None = None) -> int:
    """`value` as an int in [lo, hi] (hi None: no upper bound), or ConfigError naming `name` (for values that do
    not come from the CLI; `unit` names what is counted)."""
    return integer(value, f"{name} {value!r}", lo, hi, unit)


def check_float(value, name: str, lo: float, hi: float) -> float:
    """`value` as a finite float in [lo, hi], or ConfigError naming `name`."""
    return real(value, f"{name} {value!r}", lo, hi)


def split_names(values, option: str) -> list[str] | None:
    """Comma-separated names, from one string or several (`--labels a,b --labels c`); None when nothing was given.
    Given but naming nothing (`--labels ,`) is refused rather than read as "the default"."""
    values = [values] if isinstance(values, str) else list(values or [])
    split = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if values and not split:
        raise ConfigError(f"{option} {','.join(values)!r} names nothing: pass names separated by commas, or leave "
                          f"{option} out for the default.")  # fmt: skip
    return split or None


# ---------------------------------------------------------------------------------------------- output paths
# In a run directory (a folder holding run.json) these names are the run's own: its config, checkpoints, resume
# state, lock and the temporary files of atomic writes. Nothing else may write them.
RUN_OWN = re.compile(r"^(run\.json|step-.*|.*\.lock|\.lock.*|\..*\.tmp|\..*\.partial.*)$")


def is_run_dir(path: Path) -> bool:
    return (path / "run.json").exists() or (path / "run.json").is_symlink()


def _run_owner(path: Path) -> Path | None:
    """The run directory whose own file `path` is (None: it is no run's own file)."""
    if RUN_OWN.match(path.name) and is_run_dir(path.parent):
        return path.parent
    return None


def check_output(path, kind: str = "file", option: str = "--out", companions=()) -> Path:
    """Refuse an output path before any work: a directory where a file is expected (or the reverse), anything that
    is not a regular file (a device, a FIFO), a run directory's own files (RUN_OWN), or a folder that cannot be
    written. `companions`: other paths the command writes beside it (a probe table's directions), checked alike.
    Returns `path` as a Path."""
    if path is None:
        return None
    text = str(path)
    if not text or "\x00" in text:
        raise OutputPathError(f"{option} {text!r} is not a path: pass a file name such as results/table.parquet.")
    path = Path(text)
    for target in (path, *map(Path, companions)):
        _check_one(target, kind if target is path else "file", option, path)
    return path


def _check_one(target: Path, kind: str, option: str, given: Path) -> None:
    what = f"{option} {given}" if target == given else f"{option} {given} (which also writes {target})"
    for candidate in dict.fromkeys([target, target.resolve()]):  # the path as given, and where its links lead
        run = _run_owner(candidate)
        if run is not None:
            example = run / ("results" + (given.suffix or ".parquet"))
            fix = f"write elsewhere, e.g. {example}" if kind == "file" else "pass a new folder"
            raise OutputPathError(f"{what} is one of the run's own files in {run} (run.json, step-*, its lock and "
                                  f"temporary files), which nothing else may write: {fix}.")  # fmt: skip
    resolved = target.resolve()
    if os.path.lexists(target) or resolved.exists():
        if kind == "file":
            if resolved.is_dir():
                raise OutputPathError(f"{what} is a directory: pass a file path inside it, e.g. {target / 'out'}"
                                      f"{given.suffix or '.parquet'}.")  # fmt: skip
            if resolved.exists() and not resolved.is_file():
                raise OutputPathError(f"{what} is not a regular file (a device, FIFO or socket): pass a file path.")
        elif resolved.exists() and not resolved.is_dir():
            raise OutputPathError(f"{what} is a file, and a folder is written here: pass a folder path.")
    folder = (resolved if kind == "dir" else resolved.parent) if resolved.exists() else resolved.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{what} lies under {folder}, which is a file, not a folder: pass another path.")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".workbench-write-check."):
            pass
    except OSError as err:
        raise OutputPathError(f"{what} cannot be written: {folder} refuses new files ({err.strerror}); choose a "
                              "folder you can write to, or fix its permissions.") from None  # fmt: skip


def check_outputs(paths, kind: str = "dir", option: str = "--out") -> list[Path]:
    return [check_output(p, kind, option) for p in paths]


# ---------------------------------------------------------------------------------------------- memory
def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
        return None if text in ("max", "") else int(text)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the memory the OS has free (MemAvailable, else free
    physical pages), the cgroup's limit minus its usage, and the address-space rlimit minus what is mapped."""
    figures = []
    free = _meminfo("MemAvailable")
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    if free is not None:
        figures.append(free)
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:
            figures.append(max(cap - used, 0))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            mapped = 0
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        mapped = int(line.split()[1]) * 1024
            figures.append(max(soft - mapped, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(figures) if figures else 1 << 62


def check_memory(need: float, what: str, option: str, per_unit: float | None = None) -> None:
    """Refuse `what` when it needs more than MEMORY_FRACTION of the memory free now: one line with the figure,
    what is free, and the option to change (with the largest value that would fit, given the bytes per unit)."""
    cap = MEMORY_FRACTION * available_memory()
    if need <= cap:
        return
    most = f" (at most about {int(cap // per_unit):,} here)" if per_unit else ""
    raise ResourceError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(cap)} this "
                        f"machine can spare now: pass a smaller {option}{most}.")  # fmt: skip


# ---------------------------------------------------------------------------------------------- hosts
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    host = str(host).strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host name of an HTTP Host header (`name:port`, `[v6]:port`), lower-cased."""
    header = str(header or "").strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Refuse, before a server starts, a host that does not resolve to this machine or a port in use (the server
    would print several lines and exit 1)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host!r} cannot be resolved ({err}): pass an address of this machine, e.g. "
                          "127.0.0.1.") from None  # fmt: skip
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            fix = {
                errno.EADDRINUSE: f"another program listens on port {port}: pass another --port",
                errno.EADDRNOTAVAIL: "this machine has no such address: pass --host 127.0.0.1 or one of its addresses",
                errno.EACCES: "ports below 1024 need privileges: pass --port 8050 or another above 1023",
            }.get(err.errno, "pass another --host or --port")
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}): {fix}.") from None


# ---------------------------------------------------------------------------------------------- OS errors
FIXES = {
    errno.EACCES: "check its permissions, or choose a path you can write to",
    errno.EPERM: "check its permissions, or choose a path you can write to",
    errno.EROFS: "the filesystem is read-only: choose a path on a writable one",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EISDIR: "it is a directory: pass a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.ENOENT: "it does not exist: check the path",
    errno.EEXIST: "it exists already: pass a new path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "it is a loop of symbolic links: check the path",
    errno.EADDRINUSE: "the port is in use: pass another --port",
    errno.EADDRNOTAVAIL: "this machine has no such address: pass another --host (127.0.0.1 is this machine)",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
}


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError that a user's input causes (a path or a port), naming it and the fix; None for any
    other OSError (a bug or an unexpected failure, which must show in full)."""
    import socket

    if isinstance(err, socket.gaierror):
        return f"the host name cannot be resolved ({err.strerror or err}): pass --host 127.0.0.1 or an address."
    fix = FIXES.get(err.errno)
    if fix is None:
        return None
    where = err.filename if err.filename is not None else None
    if where is None and err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENOSPC, errno.EDQUOT):
        return None
    subject = f"{where}: " if where is not None else ""
    return f"{subject}{err.strerror or os.strerror(err.errno)}; {fix}."
