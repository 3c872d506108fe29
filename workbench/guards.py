"""Checks made before any work starts, shared by every command: each refusal is one line that names the input, the
value, what is allowed and what to do instead.

    count("--steps", 1, 10**8)("1e6")        # a parser for integer options: 1_000_000 (scientific form accepted)
    number("--coef", -1e6, 1e6)("nan")        # a parser for float options: finite and in range, or BadParameter
    parse_pairs(["room_size=9"], "-o", ENV)   # key=value options, typed per key, null and NaN refused
    check_output("runs/x/probes.parquet")     # not a directory, not a run's own file, in a folder we can write
    check_memory(need, "probe --steps 1000000", "--steps", per_unit=row)   # refused with the figure and the option

Numeric options are checked where they are parsed (the typer parsers above); output paths and memory before the
first checkpoint is loaded or the first episode played, so a bad input never costs the work before it.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import tempfile
from pathlib import Path

import typer

from workbench.envs.config import MAX_STEPS as MAX_EPISODE_STEPS  # -o max_steps: eval cannot run forever
from workbench.errors import ConfigError, OutputPathError, ResourceError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding and most RNGs take 32-bit seeds
MEMORY_FRACTION = 0.8  # of the memory free now, the most one command may plan to take


# ---------------------------------------------------------------------------------------------- numeric options
class BadValue(typer.BadParameter):
    """An option value refused where it is parsed (the CLI reports it as one line and as a ConfigError)."""


def _key(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _shown(option: str, value) -> str:
    """How a refusal names the value: `key=value` for an option (`--n-random -3`: n_random=-3)."""
    return f"{_key(option)}={str(value).strip() if isinstance(value, str) else value}"


def _integer(value, shown: str, lo: int, hi: int, unit: str | None = None) -> int:
    """`value` (int, or text like 200000, 200_000 or 1e6) as an int in [lo, hi]; BadValue otherwise, naming the
    value (`shown`), what is wrong with it and the range."""
    allowed = f"use an integer from {lo:,} to {hi:,}"
    if isinstance(value, bool):
        raise BadValue(f"{shown} is not a number: {allowed}.")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise BadValue(f"{shown} is not a number: {allowed}.") from None
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise BadValue(f"{shown} is not a whole number: {allowed}.") from None
            value = int(as_float)
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise BadValue(f"{shown} is not a whole number: {allowed}.")
        value = int(value)
    elif not isinstance(value, int):
        raise BadValue(f"{shown} is not a number: {allowed}.")
    if not lo <= value <= hi:
        least = f" (at least {lo:,} {unit})" if unit and value < lo else ""
        raise BadValue(f"{shown} is out of range: {allowed}{least}.")
    return value


def count(option: str, lo: int, hi: int, unit: str | None = None):
    """A typer parser for an integer option in [lo, hi] (`typer.Option(..., parser=count("--steps", 1, 10**8))`);
    `unit` names what is counted ("episode") in the refusal of a value below lo."""

    def parse(value):
        return None if value is None else _integer(value, _shown(option, value), lo, hi, unit)

    parse.__name__ = f"integer from {lo} to {hi}"
    return parse


def seed(option: str = "--seed"):
    """A typer parser for a seed: an integer from 0 to 2**32 - 1."""
    return count(option, 0, SEED_MAX)


def number(option: str, lo: float, hi: float, label: str | None = None):
    """A typer parser for a float option: finite, in [lo, hi]."""

    def parse(value):
        if value is None:
            return None
        shown = _shown(option, value) if label is None else label
        allowed = f"use a finite number from {lo:g} to {hi:g}"
        try:
            if isinstance(value, bool):
                raise TypeError
            result = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise BadValue(f"{shown} is not a number: {allowed}.") from None
        if not math.isfinite(result):
            raise BadValue(f"{shown} is not finite: {allowed}.")
        if not lo <= result <= hi:
            raise BadValue(f"{shown} is out of range: {allowed}.")
        return result

    parse.__name__ = f"number from {lo:g} to {hi:g}"
    return parse


def check_int(value, name: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi], or ConfigError naming `name` (for values that do not come from typer)."""
    try:
        return _integer(value, f"{name} {value!r}", lo, hi)
    except BadValue as err:
        raise ConfigError(err.message) from None


def check_float(value, name: str, lo: float, hi: float) -> float:
    try:
        return number(name, lo, hi, label=f"{name} {value!r}")(value)
    except BadValue as err:
        raise ConfigError(err.message) from None


def names(values: list[str], option: str) -> list[str] | None:
    """Repeatable, comma-separated names (`--labels a,b --labels c`); None when the option was not given. Given
    but naming nothing (`--labels ,`) is refused rather than read as "the default"."""
    split = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if values and not split:
        raise ConfigError(f"{option} {','.join(values)!r} names nothing: pass names separated by commas, or leave "
                          f"{option} out for the default.")  # fmt: skip
    return split or None


# ---------------------------------------------------------------------------------------------- key=value options
# Types of key=value options: "int" | "float" | "bool" | "str", optionally with a (lo, hi) range checked here.
PPO_TYPES = {"n_envs": "int", "n_steps": "int", "batch_size": "int", "n_epochs": "int", "learning_rate": "float",
             "gamma": "float", "gae_lambda": "float", "clip_range": "float", "ent_coef": "float", "vf_coef": "float",
             "max_grad_norm": "float"}  # fmt: skip
RANGES = {"max_steps": (1, MAX_EPISODE_STEPS)}


def env_types() -> dict[str, str]:
    """The type of every environment option, read from EnvConfig's fields (`int | None` is int: null is refused)."""
    import dataclasses

    from workbench.envs import EnvConfig

    kinds = {}
    for f in dataclasses.fields(EnvConfig):
        text = str(f.type)
        kinds[f.name] = next((k for k in ("bool", "int", "float", "str") if re.search(rf"\b{k}\b", text)), "str")
    return kinds


def parse_pairs(pairs: list[str], option: str, types: dict[str, str] | None = None) -> dict:
    """`key=value` strings to a dict; values are JSON where they parse (numbers, true/false), text otherwise.
    Keys in `types` must hold that type (an integer-valued float such as 1e5 counts as an int; true is not a
    number); null, NaN and infinity are refused for every key, and keys in RANGES must lie in their range."""
    import json

    types = types or {}
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r} is not key=value: write e.g. {option} room_size=9.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{option} {key}={text}: {text!r} is not a value; leave {key} out for its default.")
        if isinstance(value, list | dict):
            raise ConfigError(f"{option} {key}={text}: give one number, word, true or false, not a JSON "
                              f"{type(value).__name__}.")  # fmt: skip
        kind = types.get(key)
        where = f"{option} {key}={text}"
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise ConfigError(f"{where}: use a whole number.")
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: use a number.")
            value = float(value)
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}: use true or false.")
        elif kind == "str" and not isinstance(value, str):
            value = text  # a name that happens to parse as a number (a colour "1"): the text as given
        if key in RANGES and not isinstance(value, bool) and isinstance(value, int | float):
            lo, hi = RANGES[key]
            if not lo <= value <= hi:
                raise ConfigError(f"{where} is out of range: use a whole number from {lo:,} to {hi:,}.")
        options[key] = value
    return options


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
