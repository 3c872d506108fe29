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
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from probes.errors import ProbeError
from probes.metrics import HEADLINE
from workbench.errors import unknown_name
from workbench.io import atomic_write_bytes

MIN_PAIRED = 0.5  # an interval of a difference needs this share of the resamples non-degenerate for both probes


def _step_key(step):
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
        self.keys = [(_step_key(k[0]), *k[1:]) for k in self.keys]
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
        key = (_step_key(step), hook, label, probe, metric)
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
    from probes.directions import table_commit_id

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
GAP_COLUMNS = ["step", "metric", "task_label", "task_hook", "task_probe", "task_value", "reward_label", "reward_hook",
               "reward_probe", "reward_value", "gap", "ci_low", "ci_high", "selectivity_gap", "selectivity_ci_low",
               "selectivity_ci_high", "n_resamples", "note"]  # fmt: skip


def gap(
    source,
    task_label: str | None = None,
    reward_label: str | None = None,
    *,
    metric: str = HEADLINE,
    level: float = 0.95,
) -> pd.DataFrame:
    """The task-minus-reward gap, per step: the test score of the best task-side probe minus that of the best
    reward-side probe, with a paired episode-bootstrap interval (module docstring).

    source: a `ProbeResult` (fit_probes, or probe_sweep(..., result=True)) or the path of a sweep's table written
    with `out` (its resamples beside it). task_label / reward_label: a label each (any label of the table), or
    None for the best of the task set / the reward set. "Best" is `probes.summary`'s choice: the probe (hook,
    probe kind; and label, for a set) with the highest validation selectivity, so that the test scores compared
    were not also used to choose them. metric: info_gain by default, on one scale for every label kind.

    Columns: step; the two probes chosen and their test values; gap = task_value - reward_value with its
    interval (ci_low, ci_high); selectivity_gap = the difference of their selectivities, whose interval
    (selectivity_ci_*) is the gap's shifted by the difference of the controls, which are held at their values
    (their own sampling variation is not in it); n_resamples, the resamples in the interval (non-degenerate for
    both); note, why an interval is missing."""
    from probes.probe import ProbeResult, summary

    if not 0 < level < 1:
        raise ProbeError(f"level={level}: pass the interval's coverage as a fraction, such as 0.95.")
    if isinstance(source, ProbeResult):
        table, resamples = source.table, source.resamples
        if resamples is None:
            raise ProbeError("this ProbeResult holds no bootstrap resamples: fit it with fit_probes, or pass "
                             "probe_sweep(..., result=True).")  # fmt: skip
    elif isinstance(source, str | Path):
        table, resamples = pd.read_parquet(source), load_resamples(source)
    else:
        raise ProbeError(f"gap() takes a ProbeResult or the path of a probe table, not {type(source).__name__}.")
    fitted = table[table["metric"] != "skipped"]
    for name in (task_label, reward_label):
        if name is not None and name not in set(fitted["label"]):
            raise unknown_name("label in this probe table", name, sorted(set(fitted["label"])))
    rows = []
    for step, at_step in fitted.groupby("step", dropna=False, sort=True):
        best = summary(at_step, metric)
        task = _pick(best, task_label, "task")
        reward = _pick(best, reward_label, "reward")
        if task is None or reward is None:
            missing = "task" if task is None else "reward"
            raise ProbeError(f"step {_step_key(step)}: no {missing}-side probe with a {metric} score to compare; "
                             f"name the labels (task_label=, reward_label=) or fit the {missing} set.")  # fmt: skip
        a = resamples.get(step, task.hook, task.label, task.probe, metric).astype(np.float64)
        b = resamples.get(step, reward.hook, reward.label, reward.probe, metric).astype(np.float64)
        diff = a - b
        lo, hi, n, note = _interval(diff, level)
        shift = (task.selectivity - task.value) - (reward.selectivity - reward.value)
        rows.append([_step_key(step), metric, task.label, task.hook, task.probe, task.value, reward.label, reward.hook,
                     reward.probe, reward.value, float(diff[0]), lo, hi, float(diff[0]) + shift, lo + shift,
                     hi + shift, n, note])  # fmt: skip
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def _pick(best: pd.DataFrame, label: str | None, label_set: str):
    chosen = best[best["label"] == label] if label is not None else best[best["label_set"] == label_set]
    if chosen.empty:
        return None
    return chosen.loc[chosen["val_selectivity"].idxmax()]


def _interval(values: np.ndarray, level: float) -> tuple[float, float, int, str]:
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
