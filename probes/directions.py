"""Probe directions on disk, for steering and patching to reuse.

A `Direction` is one fitted probe in the original activation basis: logits = weight · activation + bias (for a
conv1x1 probe, at every cell: logit[y, x] = weight · act[:, y, x] + bias[y, x]). `mean` and `std` are the
train-set standardisation the probe was fitted under (weight_standardised = weight * std; a conv1x1 probe's mean
is per channel and cell, [C, G, G], its std per channel).

Written as `<stem>.directions.safetensors` (tensors under `<i>/weight`, `<i>/bias`, `<i>/mean`, `<i>/std`)
beside `<stem>.directions.json` (the index: one entry per direction with its step, hook, label, ...); never
pickled. Both files carry one `commit_id`, and a probe sweep writes the same id into its table's parquet metadata
(`probes.sweep.write_outputs`): `load_directions` refuses directions whose two files disagree, or that disagree
with the table beside them, so a sweep killed between renames cannot pair a table with another sweep's directions
(nor one direction's index entry with another's weights).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from probes.errors import ProbeError
from workbench.common.io import commit_files, is_regular_file, loads_json, read_regular_bytes

TENSORS = ("weight", "bias", "mean", "std")
COMMIT_KEY = "workbench.commit_id"  # the parquet metadata key of a probe table's commit id
MAX_DIRECTIONS_BYTES = 8 << 30
MAX_INDEX_BYTES = 256 << 20


@dataclass
class Direction:
    """weight [*out, *activation shape] (out: () for binary/regression, (K,) multiclass, (G, G) per-cell map;
    a conv1x1 probe's weight is [C] and its bias [G, G]); bias [*out]; mean, std: see the module docstring."""

    hook: str
    label: str
    kind: str
    probe: str
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    step: int | None = None
    reg: float = float("nan")
    classes: list = field(default_factory=list)

    def index_entry(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in TENSORS}


def paths(out: str | Path) -> tuple[Path, Path]:
    """`probes.parquet` → (`probes.directions.safetensors`, `probes.directions.json`)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return stem.with_name(stem.name + ".directions.safetensors"), stem.with_name(stem.name + ".directions.json")


def new_commit_id() -> str:
    return uuid.uuid4().hex


def directions_files(directions: list[Direction], out: str | Path, commit_id: str) -> list[tuple[Path, bytes]]:
    """[(tensors path, bytes), (index path, bytes)] of `directions` for the table `out`, stamped with `commit_id`,
    in the order to commit them (`workbench.common.io.commit_files`)."""
    tensors_path, index_path = paths(out)
    tensors = {f"{i}/{k}": getattr(d, k).detach().to("cpu", torch.float32).contiguous().clone()
               for i, d in enumerate(directions) for k in TENSORS}  # fmt: skip
    index = [{"key": str(i), **d.index_entry()} for i, d in enumerate(directions)]
    body = {"tensors": tensors_path.name, "commit_id": commit_id, "directions": _jsonable(index)}
    return [
        (tensors_path, st_save(tensors, {"commit_id": commit_id})),
        (index_path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()),
    ]


def save_directions(directions: list[Direction], out: str | Path, commit_id: str | None = None) -> tuple[Path, Path]:
    """Write the directions beside the table `out` (both files staged, then renamed, the index last). A sweep
    passes the id it stamps into its table too; alone, a fresh id is drawn."""
    files = directions_files(directions, out, commit_id or new_commit_id())
    commit_files(files)
    return files[0][0], files[1][0]


def table_commit_id(table_path: str | Path) -> str | None:
    """The commit id in a probe table's parquet metadata (None for a table written without one); its footer only
    is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(str(table_path)).metadata or {}
    except (OSError, pa.ArrowException) as err:
        raise ProbeError(f"{table_path} is not a readable parquet table ({err}); re-run the sweep.") from None
    value = metadata.get(COMMIT_KEY.encode())
    return value.decode(errors="replace") if value is not None else None


def load_directions(path: str | Path) -> list[Direction]:
    """Directions written by `probe_sweep(out=...)`: pass the table's path or either directions file. The two
    files must carry one commit id, and the table beside them (if there is one) the same."""
    path = Path(path)
    name = path.name
    for suffix in (".directions.safetensors", ".directions.json"):
        if name.endswith(suffix):
            path = path.with_name(name.removesuffix(suffix) + ".parquet")
    tensors_path, index_path = paths(path)
    try:
        body = loads_json(read_regular_bytes(index_path, MAX_INDEX_BYTES, "directions index", ProbeError),
                          str(index_path), ProbeError)  # fmt: skip
        raw = read_regular_bytes(tensors_path, MAX_DIRECTIONS_BYTES, "directions file", ProbeError)
    except FileNotFoundError as err:
        raise ProbeError(f"{err.filename} is missing: write directions with probe_sweep(..., out=...).") from err
    try:
        index = body["directions"]
        if not isinstance(index, list) or not all(isinstance(e, dict) for e in index):
            raise TypeError("'directions' is not a list of objects")
        tensors = st_load(raw)
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        stamped = (header.get("__metadata__") or {}).get("commit_id")
    except (
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        AttributeError,
        SafetensorError,
    ) as err:
        raise ProbeError(f"{index_path} or {tensors_path} is damaged ({err}): re-run the sweep.") from err
    commit = body.get("commit_id")
    if stamped != commit:
        raise ProbeError(f"{index_path} (commit {commit}) and {tensors_path} (commit {stamped}) were written by "
                         "different sweeps (one was interrupted): re-run the sweep.")  # fmt: skip
    table = table_commit_id(path) if is_regular_file(path) else commit
    if table != commit:
        raise ProbeError(f"the directions beside {path} (commit {commit}) are not the table's (commit {table}): a "
                         "sweep was interrupted while writing them. Re-run the sweep.")  # fmt: skip
    out = []
    for entry in index:
        entry = dict(entry)
        key = entry.pop("key", None)
        try:
            out.append(Direction(**entry, **{k: tensors[f"{key}/{k}"] for k in TENSORS}))
        except (KeyError, TypeError) as err:
            raise ProbeError(f"{index_path} does not match {tensors_path} ({err}): re-run the sweep.") from err
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
