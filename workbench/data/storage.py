"""How an activation dataset is stored: the per-row fields and their dtypes, shards (read on demand or held in
memory), the shard writer that fills page-aligned safetensors images and writes them in the background, the
folder a dataset is claimed and committed in, and its dataset.json.

On disk a dataset is a folder:

    shard-00000.safetensors   one tensor per hook (the storage dtype, float16 by default), `observations` uint8 and
                              the per-cell map labels as uint8; the first dim of each is the shard's rows
    shard-00000.parquet       the labels of the same rows
    dataset.json              n, hooks and shapes, the map labels and their shapes, how hook_obs is derived,
                              shards, meta

A dataset is written all or nothing: into a hidden folder beside `out` (`.NAME.partial-…`), checked by opening it,
then renamed to `out`. A failed collection removes its partial folder, so `out` either holds a whole dataset or
is as it was; a collection killed outright can leave the hidden partial folder behind (delete it), never a
half-written `out`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import secrets
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from workbench.common.errors import DatasetError, unknown_name
from workbench.common.io import atomic_write_bytes, atomic_write_json, fsync_dir, parquet_bytes

FORMAT, VERSION = "workbench-activation-dataset", 1
DERIVED_HOOK = "hook_obs"  # observations / divisor exactly: derived on read where that holds (`workbench.data`)
SHARD_RE = re.compile(r"^shard-\d{5}$")
SHARD_BYTES = 512 * 2**20  # at most, per shard's tensors; see shard_rows


@dataclass(frozen=True)
class Field:
    """A tensor stored per row: the dtype of its numpy buffers, its torch and safetensors dtypes, its row shape."""

    dtype: np.dtype
    torch_dtype: torch.dtype
    code: str
    shape: tuple[int, ...]


# storage_dtype -> (numpy buffer dtype, torch dtype, safetensors code); numpy has no bfloat16, so buffers hold its bits
# storage_dtype -> (numpy buffer dtype, torch dtype, safetensors code); numpy has no bfloat16, so buffers hold its bits
STORAGE_DTYPES = {
    "float16": (np.dtype(np.float16), torch.float16, "F16"),
    "bfloat16": (np.dtype(np.int16), torch.bfloat16, "BF16"),
    "float32": (np.dtype(np.float32), torch.float32, "F32"),
}


def check_storage_dtype(storage_dtype: str) -> None:
    """ConfigError unless `storage_dtype` is one of STORAGE_DTYPES."""
    if storage_dtype not in STORAGE_DTYPES:
        raise unknown_name("storage dtype", storage_dtype, STORAGE_DTYPES)


def activation_field(storage_dtype: str, shape) -> Field:
    return Field(*STORAGE_DTYPES[storage_dtype], tuple(shape))


def uint8_field(shape) -> Field:
    return Field(np.dtype(np.uint8), torch.uint8, "U8", tuple(shape))


# ---------------------------------------------------------------------------------------------- shards
class Shard:
    """One shard's tensors: read from its safetensors file on demand, or held in memory ({name: (numpy array, torch
    dtype)}). `base` lends the tensors it lacks (an in-memory replay shares its source's observations and map
    labels instead of copying them)."""

    def __init__(self, rows: int, path: Path | None = None, tensors: dict | None = None, base: Shard | None = None):
        self.rows, self.path, self.tensors, self.base = rows, path, tensors or {}, base

    def get(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            array, dtype = self.tensors[name]
            return torch.from_numpy(array).view(dtype)  # made here, not under the writer's inference_mode
        if self.path is None:
            return self.base.get(name)
        try:
            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise DatasetError(
                f"{self.path} cannot be read ({err}); the dataset is damaged: collect it again."
            ) from err


# ---------------------------------------------------------------------------------------------- writing
def shard_rows(shard_size: int, fields: dict[str, Field]) -> int:
    """Rows per shard: shard_size, or fewer where a shard would pass SHARD_BYTES (the writer holds two shards in
    memory, so this bounds memory whatever the hooks: a transformer row with every hook is ~62 kB)."""
    row_bytes = sum(math.prod(f.shape) * f.dtype.itemsize for f in fields.values())
    return max(1, min(shard_size, SHARD_BYTES // row_bytes))


def shard_sizes(n: int, rows: int) -> list[int]:
    """The rows of each shard of an `n`-row dataset with `rows` per shard (the last may hold fewer)."""
    return [min(rows, n - lo) for lo in range(0, n, rows)]


def _layout(fields: dict[str, Field], rows: int) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
    """A shard as the bytes of its safetensors file, with a writable numpy view per tensor: rows are copied
    straight into the file image, which is written as is (safetensors' own save would build a second copy)."""
    # Widest dtype first and an 8-aligned data start keep every tensor naturally aligned; the format wants the
    # data packed without gaps, in offset order.
    order = sorted(fields, key=lambda name: -fields[name].dtype.itemsize)
    header, offset = {"__metadata__": {"format": FORMAT}}, 0
    for name in order:
        size = rows * math.prod(fields[name].shape) * fields[name].dtype.itemsize
        header[name] = {"dtype": fields[name].code, "shape": [rows, *fields[name].shape],
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header with spaces too
    start = 8 + len(text)
    image = mmap.mmap(-1, start + offset)  # page-aligned, as direct writes need (atomic_write_bytes)
    image[:start] = len(text).to_bytes(8, "little") + text
    views = {
        name: np.frombuffer(image, dtype=fields[name].dtype, count=rows * math.prod(fields[name].shape),
                            offset=start + header[name]["data_offsets"][0]).reshape(rows, *fields[name].shape)
        for name in order
    }  # fmt: skip
    return image, views


class ShardWriter:
    """Fills shards of known sizes from blocks of rows; a full shard is written to `folder` (or kept in memory).

    On disk a background thread writes each full shard while the next one fills: writing (to the page cache, then
    fsync) runs at disk speed and would otherwise stall collection, and file writes release the GIL. Two shard
    images alternate, so memory holds at most two shards. Use it as a context manager: leaving waits for the
    write in flight, so that a failed collection can clean up after it."""

    def __init__(self, folder: Path | None, fields: dict[str, Field], label_dtypes: dict, sizes: list[int]):
        self.folder, self.fields, self.label_dtypes, self.sizes = folder, fields, label_dtypes, sizes
        self.shards: list[Shard] = []
        self.labels: list[pd.DataFrame] = []  # in memory only; on disk the parquet files hold them
        self._pool = ThreadPoolExecutor(max_workers=1) if folder is not None else None
        self._writing: Future | None = None
        self._spare = None  # (rows, image, views) of a written shard, to reuse: fresh ones cost page faults
        self._in_flight = None  # (rows, image, views) of the shard being written
        self._open()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            wait([self._writing] if self._writing else [])
            self._pool.shutdown()

    def _open(self) -> None:
        rows = self.sizes[len(self.shards)]
        if self._spare is not None and self._spare[0] == rows:
            _, self.image, self.views = self._spare
        else:
            self.image, self.views = _layout(self.fields, rows)
        self._spare = None
        self.columns = {name: np.empty(rows, dtype=dtype) for name, dtype in self.label_dtypes.items()}
        self.filled = 0

    def append(self, sources: dict[str, np.ndarray], index: np.ndarray) -> None:
        """Copy rows `index` of every source ([rows, ...] arrays, one per field and label) in order."""
        done = 0
        while done < len(index):
            rows = self.sizes[len(self.shards)]
            take = min(len(index) - done, rows - self.filled)
            part, dest = index[done : done + take], slice(self.filled, self.filled + take)
            for name, view in (*self.views.items(), *self.columns.items()):
                # mode="clip" (the indices are valid) lets numpy write into `out` without buffering
                np.take(sources[name], part, axis=0, out=view[dest], mode="clip")
            self.filled += take
            done += take
            if self.filled == rows:
                self._emit(rows)

    def _emit(self, rows: int) -> None:
        labels = pd.DataFrame(self.columns)
        if self.folder is not None:
            path = self.folder / f"shard-{len(self.shards):05d}.safetensors"
            previous, self._writing = self._writing, self._pool.submit(_write_shard, path, self.image, labels)
            if previous is not None:
                previous.result()  # raises a failed write here; its image is free again
            self._spare, self._in_flight = self._in_flight, (rows, self.image, self.views)
            self.shards.append(Shard(rows, path=path))
        else:
            tensors = {name: (view, self.fields[name].torch_dtype) for name, view in self.views.items()}
            self.shards.append(Shard(rows, tensors=tensors))
            self.labels.append(labels)
        self.image = self.views = self.columns = None
        if len(self.shards) < len(self.sizes):
            self._open()

    def finish(self) -> None:
        """Wait until every shard is on disk; a failed write raises here."""
        if self._writing is not None:
            self._writing.result()


def _write_shard(path: Path, image: mmap.mmap, labels: pd.DataFrame) -> None:
    atomic_write_bytes(path, image, direct=True)
    atomic_write_bytes(path.with_suffix(".parquet"), parquet_bytes(labels))


# ---------------------------------------------------------------------------------------------- the folder
@dataclass(frozen=True)
class Destination:
    """Where a dataset is written (`temp`, a hidden folder beside `target`) and where it is committed to."""

    target: Path
    temp: Path

    def commit(self) -> None:
        """Rename the finished dataset to its target (new, or still empty: an empty folder is replaced)."""
        if self.target.exists():
            if not self.target.is_dir() or any(self.target.iterdir()):
                raise DatasetError(_not_empty(self.target) + " (it was filled while this dataset was written)")
            self.target.rmdir()
        self.temp.rename(self.target)
        fsync_dir(self.target.parent)


def claim(out) -> Destination | None:
    """The destination of a dataset written to `out`, which must be a new or an empty folder."""
    if out is None:
        return None
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise DatasetError(f"{target} is a file: pass a new or empty folder as out.")
        if any(target.iterdir()):
            raise DatasetError(_not_empty(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()  # the permissions a new folder gets (mkdtemp's would be private)
    return Destination(target, temp)


def _not_empty(folder: Path) -> str:
    """Why `folder` cannot take a new dataset, saying what it holds and what to do."""
    entries = sorted(p.name for p in folder.iterdir())
    again = f"pass a new folder as out, or delete {folder} to collect into it again"
    if "dataset.json" in entries:
        try:
            spec = read_spec(folder / "dataset.json")
        except DatasetError as err:
            return f"{folder} is not empty: it holds a dataset.json that does not open ({err}); {again}."
        missing = [r.get("name") for r in spec["shards"] if not (folder / f"{r.get('name')}.safetensors").exists()]
        if missing:
            return (f"{folder} is not empty: it holds a dataset.json whose shards are missing ({', '.join(missing)}), "
                    f"a damaged dataset; {again}.")  # fmt: skip
        shards = f"{len(spec['shards'])} shard" + ("s" if len(spec["shards"]) != 1 else "")
        return (f"{folder} is not empty: it holds a dataset ({spec['n']} rows in {shards}; "
                f"open_dataset({str(folder)!r}) reads it); {again}.")  # fmt: skip
    if any(SHARD_RE.match(name.split(".")[0]) for name in entries):
        return (f"{folder} is not empty: it holds dataset shards without a dataset.json, an unfinished collection "
                f"(an older workbench wrote into out directly); {again}.")  # fmt: skip
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    return f"{folder} is not empty: it holds {shown}, which is not a dataset; pass a new or empty folder as out."


# ---------------------------------------------------------------------------------------------- dataset.json
def write_spec(folder: Path, n: int, obs_shape, shapes, map_shapes, derived, sizes: list[int], meta: dict) -> None:
    """Write `folder`/dataset.json: the hooks in order, the map labels, the derived hooks and the shards."""
    atomic_write_json(
        folder / "dataset.json",
        {
            "format": FORMAT,
            "version": VERSION,
            "n": n,
            "obs_shape": list(obs_shape),
            "hooks": [{"name": name, "shape": list(shape)} for name, shape in shapes.items()],  # in order
            "map_labels": list(map_shapes),
            "map_shapes": {name: list(shape) for name, shape in map_shapes.items()},
            "derived": {name: {"from": "observations", "divisor": d} for name, d in derived.items()},
            "shards": [{"name": f"shard-{i:05d}", "rows": rows} for i, rows in enumerate(sizes)],
            "meta": meta,
        },
    )


def read_spec(path: Path) -> dict:
    """A dataset.json, checked: the format and version, every entry of the right type, at least one row."""
    if not path.exists():
        raise DatasetError(
            f"{path} is missing: {path.parent} is not a dataset, or its collection did not finish (dataset.json "
            "is written last). Collect it again into an empty folder."
        )
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} cannot be read as JSON ({err}): the file is damaged; collect again.") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an activation dataset's dataset.json (no format {FORMAT!r}).")
    if spec.get("version") != VERSION:
        raise DatasetError(
            f"{path} has version {spec.get('version')!r}; this workbench reads version {VERSION}: collect again."
        )
    kinds = {"n": int, "obs_shape": list, "hooks": list, "map_labels": list, "shards": list, "meta": dict}
    for key, kind in kinds.items():
        if not isinstance(spec.get(key), kind):
            raise DatasetError(f"{path} lacks a valid {key!r} entry: the file is damaged; collect again.")
    if not all(isinstance(hook, dict) and {"name", "shape"} <= set(hook) for hook in spec["hooks"]):
        raise DatasetError(f"{path} has a malformed 'hooks' entry: the file is damaged; collect again.")
    if spec["n"] < 1 or not spec["shards"]:
        raise DatasetError(f"{path} describes an empty dataset (n={spec['n']}): collect at least one row.")
    return spec
