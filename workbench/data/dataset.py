"""The read side of an activation dataset: `ActivationDataset` (tensors read on first use and cached, labels as a
DataFrame) and `open_dataset`, which checks dataset.json and every shard's header before anything is read.

    ds = open_dataset("data/trash-cnn")   # lazy: tensors are read when first asked for
    ds.activations("conv.1.hook_out")     # float32 [n, 16, 9, 9]
    ds.labels                             # pandas, one row per observation: carrying, return_to_go, ...
    ds.map_label("trash_map")             # bool [n, G, G]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from workbench.common.errors import DatasetError, unknown_name
from workbench.data.storage import DERIVED_HOOK, SHARD_RE, Shard, read_spec


class ActivationDataset:
    """Activations of chosen hooks, observations and labels, one row per observation (see `workbench.data`).

    Tensors are read on first use and cached per name; `labels` is a DataFrame with index 0..n-1."""

    def __init__(self, path, labels, hook_shapes, map_shapes, meta, obs_shape, shards, derived=None):
        self.path: Path | None = path
        self.labels: pd.DataFrame = labels
        self.n: int = len(labels)
        self.hook_names: list[str] = list(hook_shapes)
        self.hook_shapes: dict[str, tuple] = {name: tuple(shape) for name, shape in hook_shapes.items()}
        self.map_shapes: dict[str, tuple] = {name: tuple(shape) for name, shape in map_shapes.items()}
        self.map_label_names: list[str] = list(map_shapes)
        # {hook: divisor} of hooks derived from the observations rather than stored (hook_obs, see `workbench.data`)
        self.derived: dict[str, float] = dict(derived or {})
        self.meta: dict = meta
        self.obs_shape: tuple[int, int, int] = tuple(obs_shape)
        self._shards: list[Shard] = shards
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "in memory"
        return f"ActivationDataset(n={self.n}, hooks={self.hook_names}, {where})"

    def activations(self, hook: str) -> torch.Tensor:
        """float32 [n, *hook_shapes[hook]], every shard concatenated (read once, then cached)."""
        if hook not in self.hook_shapes:
            raise unknown_name("hook in this dataset", hook, self.hook_shapes)
        if hook not in self._cache:
            if hook in self.derived:  # the very op of the policy's preprocessing (`workbench.data`)
                self._cache[hook] = self.observations().float() / self.derived[hook]
            else:
                self._cache[hook] = self._gather(hook, torch.float32, self.hook_shapes[hook])
        return self._cache[hook]

    def map_label(self, name: str) -> np.ndarray:
        """bool [n, rows, cols] (`map_shapes[name]`): where the named object lies in each observation's grid
        (trash_map, bin_map, ...; rows and columns of the env's grid, (row, col) = (y, x))."""
        if name not in self.map_label_names:
            raise unknown_name("map label", name, self.map_label_names)
        if name not in self._cache:
            self._cache[name] = self._gather(name, torch.bool, None)
        return self._cache[name].numpy()

    def observations(self) -> torch.Tensor:
        """uint8 [n, C, H, W], the observations the policy saw."""
        if "observations" not in self._cache:
            self._cache["observations"] = self._gather("observations", torch.uint8, self.obs_shape)
        return self._cache["observations"]

    def episode_ids(self) -> np.ndarray:
        """int64 [n]: the episode of each row (rows of one episode are contiguous)."""
        return self.labels["episode_id"].to_numpy()

    def _gather(self, name: str, dtype: torch.dtype, shape) -> torch.Tensor:
        """One tensor over all shards, filled shard by shard (no second full-size copy, as torch.cat would make)."""
        out = None
        pos = 0
        with torch.inference_mode(False):  # a cached result must stay usable by autograd (probe fitting)
            for shard in self._shards:
                part = shard.get(name)
                if out is None:
                    out = torch.empty((self.n, *(shape if shape is not None else part.shape[1:])), dtype=dtype)
                out[pos : pos + shard.rows].copy_(part)
                pos += shard.rows
        return out


def open_dataset(path) -> ActivationDataset:
    """A dataset folder written by `collect` or `replay`. Reads dataset.json and the labels now, checks every
    shard's header against it, and reads tensors only when asked for."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a dataset folder: pass the `out` folder of collect() or replay().")
    spec = read_spec(folder / "dataset.json")
    hooks = {hook["name"]: tuple(hook["shape"]) for hook in spec["hooks"]}
    derived = _read_derived(spec, hooks, folder)
    map_shapes = _read_map_shapes(spec, folder)
    expected = {name: shape for name, shape in hooks.items() if name not in derived}
    expected["observations"] = tuple(spec["obs_shape"])
    expected |= map_shapes
    shards, labels = [], []
    for record in spec["shards"]:
        name, rows = record.get("name"), record.get("rows")
        if not isinstance(name, str) or not SHARD_RE.match(name) or not isinstance(rows, int) or rows < 1:
            raise DatasetError(f"{folder}/dataset.json lists a malformed shard {record!r}: the file is damaged.")
        tensors = folder / f"{name}.safetensors"
        _check_shard(tensors, expected, rows)
        labels.append(_read_labels(folder / f"{name}.parquet", rows))
        shards.append(Shard(rows, path=tensors))
    labels = pd.concat(labels, ignore_index=True)
    if len(labels) != spec["n"]:
        raise DatasetError(f"{folder}: the shards hold {len(labels)} rows but dataset.json says {spec['n']}.")
    return ActivationDataset(folder, labels, hooks, map_shapes, spec["meta"], spec["obs_shape"], shards, derived)


def _read_map_shapes(spec: dict, folder: Path) -> dict[str, tuple]:
    """{map label: shape}, as recorded; datasets written before shapes were recorded hold our rooms' maps, whose
    grid is half the observation's side."""
    shapes = spec.get("map_shapes")
    if shapes is None:
        grid = spec["obs_shape"][1] // 2
        return {name: (grid, grid) for name in spec["map_labels"]}
    if (
        not isinstance(shapes, dict)
        or set(shapes) != set(spec["map_labels"])
        or not all(isinstance(v, list) and all(isinstance(d, int) and d > 0 for d in v) for v in shapes.values())
    ):
        raise DatasetError(f"{folder}/dataset.json has a malformed 'map_shapes' entry: the file is damaged.")
    return {name: tuple(shapes[name]) for name in spec["map_labels"]}


def _read_derived(spec: dict, hooks: dict[str, tuple], folder: Path) -> dict[str, float]:
    """{hook: divisor} of the hooks derived from the observations; datasets written before this was recorded
    derive hook_obs as observations / 255 (the workbench policies' contract)."""
    derived = spec.get("derived")
    if derived is None:
        return {DERIVED_HOOK: 255.0} if DERIVED_HOOK in hooks else {}
    try:
        out = {name: float(d["divisor"]) for name, d in derived.items() if d["from"] == "observations"}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{folder}/dataset.json has a malformed 'derived' entry ({err}): the file is damaged."
        ) from err
    if set(out) != set(derived) or not set(out) <= {DERIVED_HOOK} & set(hooks) or not all(d > 0 for d in out.values()):
        raise DatasetError(f"{folder}/dataset.json has a malformed 'derived' entry {derived}: the file is damaged.")
    return out


def _check_shard(path: Path, expected: dict[str, tuple], rows: int) -> None:
    try:
        with safe_open(path, framework="pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except FileNotFoundError as err:
        raise DatasetError(f"{path} is missing: the dataset is incomplete; collect it again.") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a valid safetensors file ({err}): it is damaged; collect again.") from err
    for name, shape in expected.items():
        if found.get(name) != (rows, *shape):
            raise DatasetError(
                f"{path}: tensor {name!r} has shape {found.get(name)}, but dataset.json implies {(rows, *shape)}. "
                "The shard belongs to another dataset or is damaged."
            )


def _read_labels(path: Path, rows: int) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError(f"{path} is missing: the dataset is incomplete; collect it again.")
    try:
        labels = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean the same here
        raise DatasetError(f"{path} is not a readable parquet file ({err}): it is damaged; collect again.") from err
    if len(labels) != rows or "episode_id" not in labels:
        raise DatasetError(f"{path} holds {len(labels)} label rows, expected {rows} with an episode_id column.")
    return labels
