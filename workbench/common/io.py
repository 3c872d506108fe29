"""Safe file reads and atomic file writes, and small encoders.

Writes: a crash at any moment leaves either the old file or the new one, never a half-written file: write a temp
file in the same folder, fsync it, rename it over the target. Files get the usual permissions (0666 less the
umask, like `open`), not the 0600 of `mkstemp`. Several files that belong together are staged first and renamed
in a given order (`commit_files`).

Reads: `read_regular_bytes` opens a path only if it is a regular file under a size cap (a directory, a FIFO, a
device or a symlink to one is one clear error, never a hang), and `loads_json` parses JSON with a nesting cap.

Encoders: `parquet_bytes` (every parquet file the workbench writes: tables and dataset labels), `png_bytes`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from workbench.common.errors import WorkbenchError

MAX_JSON_BYTES = 64 << 20  # a run.json or step JSON is a few KB; a directions index a few MB at most
MAX_JSON_DEPTH = 64  # the deepest JSON the workbench writes nests 6 levels


# ---------------------------------------------------------------------------------------------- reading
def read_regular_bytes(path: str | Path, cap: int, what: str, error: type[Exception] = WorkbenchError) -> bytes:
    """The bytes of `path`, if it is a regular file (a symlink to one is followed) of at most `cap` bytes; else
    `error` with one line naming `what`. The file is opened non-blocking and checked with fstat before any read,
    so a FIFO or a device (/dev/urandom) is refused at once instead of hanging or filling memory. A missing file
    raises FileNotFoundError, for the caller to say what it should have been."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file.") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be opened ({err.strerror or err}).") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} {path} is a directory, not a file.")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file (a FIFO, socket or device); refused.")
        if info.st_size > cap:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {cap:,} allowed; refused.")
        chunks, size = [], 0
        while True:  # read up to cap + 1 bytes: a file that grows while read is refused too
            chunk = os.read(fd, min(1 << 24, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise error(f"{what} {path} grew past the {cap:,} bytes allowed while it was read; refused.")
        return b"".join(chunks)
    except OSError as err:
        raise error(f"{what} {path} cannot be read ({err.strerror or err}).") from None
    finally:
        os.close(fd)


def is_regular_file(path: str | Path) -> bool:
    """Whether `path` is a regular file (a symlink to one counts), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def loads_json(data: bytes | str, what: str, error: type[Exception] = WorkbenchError,
               max_depth: int = MAX_JSON_DEPTH):  # fmt: skip
    """Parse JSON text; text that is not UTF-8 or not JSON, or nests deeper than `max_depth`, is `error` with one
    line naming `what`."""
    try:
        text = data.decode() if isinstance(data, bytes | bytearray | memoryview) else data
        obj = json.loads(text)
    except UnicodeDecodeError as err:
        raise error(f"{what} is not UTF-8 text ({err.reason} at byte {err.start}); the file is damaged.") from None
    except json.JSONDecodeError as err:
        raise error(f"{what} is not valid JSON ({err.msg}, line {err.lineno}); the file is damaged.") from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels; refused (not a file the workbench wrote).") from None
    if json_depth(obj) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels; refused (not a file the workbench wrote).")
    return obj


def json_depth(obj) -> int:
    """How deep lists and dicts nest in `obj` (a scalar: 0), computed without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((value, depth + 1) for value in item if isinstance(value, dict | list))
    return deepest


def read_json_file(path: str | Path, what: str, error: type[Exception] = WorkbenchError, cap: int = MAX_JSON_BYTES):
    """`read_regular_bytes` then `loads_json`: a JSON file read safely (FileNotFoundError passes through)."""
    return loads_json(read_regular_bytes(path, cap, what, error), f"{what} {path}", error)


# ---------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    """The process's umask, read without changing it (Linux's /proc; elsewhere the set-and-restore idiom)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_temp(path: str | Path, data, direct: bool = False) -> Path:
    """Write `data` to a new temp file beside `path` (fsynced, with normal permissions) and return the temp's
    path; rename it over `path` to commit it (`atomic_write_bytes`, `commit_files`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    data = memoryview(data).cast("B")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; the workbench's are ordinary files
            done = _write_blocks_direct(tmp, data[: len(data) // 4096 * 4096]) if direct else 0
            f.seek(done)
            f.write(data[done:])
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit_files(files: list[tuple[str | Path, object]]) -> list[Path]:
    """Write several files that belong together: every one to a temp name first (nothing is renamed until all are
    written), then renamed over its target in the order given (put the file that commits the set last). A failure
    while writing leaves the old files untouched and no temp behind. Returns the targets."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            staged.append((write_temp(path, data), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in staged}:
        fsync_dir(folder)
    return [path for _, path in staged]


def atomic_write_bytes(path: str | Path, data, direct: bool = False) -> Path:
    """Write `data` (bytes or any buffer) to `path` atomically. direct: write the page-aligned bulk with O_DIRECT,
    bypassing the page cache, whose copies cost kernel CPU comparable to a whole activation collection's compute on
    small machines. Where the OS or the filesystem (tmpfs) has no O_DIRECT, everything is written buffered."""
    path = Path(path)
    tmp = write_temp(path, data, direct)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _write_blocks_direct(path: str, data: memoryview) -> int:
    """Write whole 4096-byte blocks at the start of `path` with O_DIRECT; the bytes written (0 where the OS or the
    filesystem does not support it)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or not len(data):
        return 0
    try:
        fd = os.open(path, os.O_WRONLY | flag)
    except OSError:
        return 0
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        return done
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: this filesystem rejects direct I/O after all
            raise
        return 0
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def parquet_bytes(frame, metadata: dict[str, str] | None = None) -> bytes:
    """A DataFrame as parquet bytes (no index; the bytes `frame.to_parquet(index=False)` writes), with `metadata`
    added to the schema's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        extra = {str(key).encode(): str(value).encode() for key, value in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_parquet(path: str | Path, frame, metadata: dict[str, str] | None = None) -> Path:
    """`parquet_bytes(frame, metadata)` written to `path` atomically."""
    return atomic_write_bytes(path, parquet_bytes(frame, metadata))


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array [H, W, 3] as PNG (no imaging library needed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
