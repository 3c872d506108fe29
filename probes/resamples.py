"""Every probe's test score in each episode-bootstrap resample, and what they make possible: paired intervals of
differences between probes, such as the gap between the best task-side and the best reward-side probe.

All probes of one `fit_probes` or `probe_sweep` call are scored on the same test rows with the same resamples
(`probes.episodes.bootstrap_weights`, from the split's test episodes, `n_boot` and `seed`), so the difference of
two probes' scores resample by resample is a bootstrap of the difference: its interval accounts for what the two
probes share (the same hard or easy test episodes), which two separate intervals cannot.

    result = probes.fit_probes(ds)
    probes.gap(result)                          # best task-side minus best reward-side info_gain, with a CI
    probes.gap("probes.parquet", "carrying", "reward_within_k")   # a sweep written with `out`

On disk beside a sweep's table: `<stem>.resamples.safetensors`, one float32 tensor `values` [probes x metrics,
1 + n_boot] (row 0 the estimate, NaN where a resample is degenerate for the metric) and its index (step, hook,
label, probe, metric per row) as JSON in the file's metadata; written atomically, never pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from probes.directions import table_commit_id
from probes.errors import ProbeError
from workbench.common.io import atomic_write_bytes

MIN_PAIRED = 0.5  # an interval of a difference needs this share of the resamples non-degenerate for both probes


def step_key(step):
    """A step as an index key: None for a dataset without one (NaN in a table), else an int."""
    if step is None or (isinstance(step, float) and math.isnan(step)):
        return None
    return int(step)


@dataclass
class Resamples:
    """keys[i] = (step, hook, label, probe, metric); values[i] its test score in each resample [1 + n_boot]."""

    keys: list[tuple]
    values: np.ndarray
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.keys = [(step_key(k[0]), *k[1:]) for k in self.keys]
        self.values = np.asarray(self.values, dtype=np.float32).reshape(len(self.keys), -1)
        self._index = {k: i for i, k in enumerate(self.keys)}

    @classmethod
    def from_scores(cls, steps: list[tuple]) -> Resamples:
        """From [(step, [ProbeScore, ...]), ...]."""
        keys, values = [], []
        for step, scores in steps:
            for s in scores:
                for metric, v in s.resamples.items():
                    keys.append((step, s.hook, s.label, s.probe, metric))
                    values.append(np.asarray(v, dtype=np.float32))
        widths = {len(v) for v in values}
        if len(widths) > 1:
            raise ProbeError(f"probe scores with different numbers of bootstrap resamples ({sorted(widths)}) "
                             "cannot be paired: fit them with one n_boot.")  # fmt: skip
        return cls(keys, np.stack(values) if values else np.zeros((0, 1), np.float32))

    @property
    def n_boot(self) -> int:
        return self.values.shape[1] - 1

    def get(self, step, hook: str, label: str, probe: str, metric: str) -> np.ndarray:
        key = (step_key(step), hook, label, probe, metric)
        if key not in self._index:
            raise ProbeError(f"no bootstrap resamples for step {key[0]}, hook {hook!r}, label {label!r}, probe "
                             f"{probe!r}, metric {metric!r}: were they fitted in this result or sweep?")  # fmt: skip
        return self.values[self._index[key]]


def resamples_path(out: str | Path) -> Path:
    """`probes.parquet` → `probes.resamples.safetensors`."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    return stem.with_name(stem.name + ".resamples.safetensors")


def resamples_bytes(resamples: Resamples, commit_id: str | None = None) -> bytes:
    """The resamples as safetensors; `commit_id`: the id of the sweep's table and directions, checked by
    `load_resamples`."""
    index = json.dumps([list(k) for k in resamples.keys])
    metadata = {"index": index, **({"commit_id": commit_id} if commit_id else {})}
    return st_save({"values": torch.as_tensor(resamples.values).contiguous()}, metadata=metadata)


def save_resamples(resamples: Resamples, out: str | Path, commit_id: str | None = None) -> Path:
    """Write the resamples beside the table `out` (`probes.sweep.write_outputs` commits them with the table)."""
    return atomic_write_bytes(resamples_path(out), resamples_bytes(resamples, commit_id))


def load_resamples(out: str | Path) -> Resamples:
    """The resamples beside the table `out`; refused when they and the table carry different commit ids (an
    interrupted sweep left one set's table beside another's resamples)."""
    path = resamples_path(out)
    if not path.exists():
        raise ProbeError(f"{path} is missing: the bootstrap resamples are written beside a probe table by "
                         "probe_sweep(..., out=...); re-run the sweep, or pass the ProbeResult.")  # fmt: skip
    with safe_open(str(path), "pt") as f:
        values, metadata = f.get_tensor("values").numpy(), f.metadata()
    stamped, table = metadata.get("commit_id"), table_commit_id(out) if Path(out).is_file() else None
    if stamped and table and stamped != table:
        raise ProbeError(f"{path} (commit {stamped}) was written by another sweep than the table {out} (commit "
                         f"{table}): a sweep was interrupted while committing; re-run it.")  # fmt: skip
    return Resamples([tuple(k) for k in json.loads(metadata["index"])], values)


# ---------------------------------------------------------------------------------------------- the gap


def paired_interval(values: np.ndarray, level: float) -> tuple[float, float, int, str]:
    """(low, high, resamples used, note): the percentile interval of values[1:] without NaN; NaN with a note when
    fewer than MIN_PAIRED of the resamples are left."""
    boot = values[1:]
    finite = boot[~np.isnan(boot)]
    if len(boot) == 0:
        return math.nan, math.nan, 0, "no bootstrap resamples (n_boot=0)"
    if len(finite) < MIN_PAIRED * len(boot):
        return math.nan, math.nan, len(finite), (f"no interval: only {len(finite)} of {len(boot)} resamples are "
                                                 "non-degenerate for both probes")  # fmt: skip
    tail = (1 - level) / 2
    lo, hi = np.quantile(finite, [tail, 1 - tail])
    return float(lo), float(hi), len(finite), ""
