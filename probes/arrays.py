"""An in-memory dataset with the read interface of `workbench.data.ActivationDataset`, for probing plain
arrays (synthetic data, activations gathered by other means) and for tests.

    ds = ArrayDataset({"h": X}, labels=pd.DataFrame({"y": y}), episode_ids=episodes)
    probes.fit_probe(ds, "h", "y")

`input_types` (optional, one hashable id per row, equal for rows that show the same input) enables the
control_task control (`probes.controls`); without it that control is left out (NaN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from probes.errors import ProbeError


class ArrayDataset:
    def __init__(
        self,
        activations: dict[str, torch.Tensor | np.ndarray],
        labels: pd.DataFrame,
        episode_ids: np.ndarray,
        maps: dict[str, np.ndarray] | None = None,
        meta: dict | None = None,
        input_types: np.ndarray | None = None,
    ):
        self._acts = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in activations.items()}
        self.labels = labels.reset_index(drop=True)
        self._episodes = np.asarray(episode_ids, dtype=np.int64)
        self._maps = {k: np.asarray(v, dtype=bool) for k, v in (maps or {}).items()}
        self.meta = dict(meta or {})
        self.n = len(self._episodes)
        self._types = None if input_types is None else np.asarray(input_types)
        extra = [] if self._types is None else [("input_types", self._types)]
        for name, value in [*self._acts.items(), *self._maps.items(), ("labels", self.labels), *extra]:
            if len(value) != self.n:
                raise ProbeError(f"{name} has {len(value)} rows but episode_ids has {self.n}: pass one per row.")

    @property
    def hook_names(self) -> list[str]:
        return list(self._acts)

    @property
    def hook_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self._acts.items()}

    @property
    def map_label_names(self) -> list[str]:
        return list(self._maps)

    def map_label(self, name: str) -> np.ndarray:
        return self._maps[name]

    def activations(self, hook: str) -> torch.Tensor:
        return self._acts[hook]

    def episode_ids(self) -> np.ndarray:
        return self._episodes

    def input_types(self) -> np.ndarray | None:
        return self._types
