"""Atomic file writes and small encoders. A crash at any moment leaves either the old file or the new one,
never a half-written file: write a temp file in the same folder, fsync it, rename it over the target."""

from __future__ import annotations

import errno
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | Path, data, direct: bool = False) -> Path:
    """Write `data` (bytes or any buffer) to `path` atomically. direct: write the page-aligned bulk with O_DIRECT,
    bypassing the page cache. Buffered writes cost ~2.4 s of kernel CPU per GB on our 2-core VMs (measured with dd:
    as much as a whole activation collection's compute); direct writes ran at ~3 GB/s with next to none. Where the
    OS or the filesystem (tmpfs) has no O_DIRECT, everything is written buffered."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    data = memoryview(data).cast("B")
    try:
        with os.fdopen(fd, "wb") as f:
            done = _write_blocks_direct(tmp, data[: len(data) // 4096 * 4096]) if direct else 0
            f.seek(done)
            f.write(data[done:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
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


def _fsync_dir(folder: Path) -> None:
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


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array [H, W, 3] as PNG (no imaging library needed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
