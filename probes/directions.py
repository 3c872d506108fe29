"""Probe directions on disk, for steering and patching to reuse.

A `Direction` is one fitted probe in the original activation basis: logits = weight · activation + bias (for a
conv1x1 probe, at every cell: logit[y, x] = weight · act[:, y, x] + bias[y, x]). `mean` and `std` are the
train-set standardisation the probe was fitted under (weight_standardised = weight * std; a conv1x1 probe's mean
is per channel and cell, [C, G, G], its std per channel).

Written as `<stem>.directions.safetensors` (tensors under `<i>/weight`, `<i>/bias`, `<i>/mean`, `<i>/std`)
beside `<stem>.directions.json` (the index: one entry per direction with its step, hook, label, ...). Both
atomically; never pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from probes.errors import ProbeError
from workbench.io import atomic_write_bytes, atomic_write_json

TENSORS = ("weight", "bias", "mean", "std")


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


def save_directions(directions: list[Direction], out: str | Path) -> tuple[Path, Path]:
    tensors_path, index_path = paths(out)
    tensors = {f"{i}/{k}": getattr(d, k).detach().to("cpu", torch.float32).contiguous().clone()
               for i, d in enumerate(directions) for k in TENSORS}  # fmt: skip
    atomic_write_bytes(tensors_path, st_save(tensors))
    index = [{"key": str(i), **d.index_entry()} for i, d in enumerate(directions)]
    atomic_write_json(index_path, {"tensors": tensors_path.name, "directions": _jsonable(index)})
    return tensors_path, index_path


def load_directions(path: str | Path) -> list[Direction]:
    """Directions written by `probe_sweep(out=...)`: pass the table's path or either directions file."""
    path = Path(path)
    name = path.name
    for suffix in (".directions.safetensors", ".directions.json"):
        if name.endswith(suffix):
            path = path.with_name(name.removesuffix(suffix) + ".parquet")
    tensors_path, index_path = paths(path)
    try:
        index = json.loads(index_path.read_text())["directions"]
        tensors = st_load(tensors_path.read_bytes())
    except FileNotFoundError as err:
        raise ProbeError(f"{err.filename} is missing: write directions with probe_sweep(..., out=...).") from err
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ProbeError(f"{index_path} or {tensors_path} is damaged ({err}): re-run the sweep.") from err
    out = []
    for entry in index:
        key = entry.pop("key")
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
