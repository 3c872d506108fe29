"""`gap`: the paired interval of the difference between the best task-side and the best reward-side probe, each
chosen on validation, from every probe's bootstrap resamples (the same episodes resampled on both sides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probes.errors import ProbeError
from probes.metrics import HEADLINE
from probes.probe import ProbeResult, summary
from probes.resamples import load_resamples, paired_interval, step_key
from workbench.common.errors import unknown_name

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
            raise ProbeError(f"step {step_key(step)}: no {missing}-side probe with a {metric} score to compare; "
                             f"name the labels (task_label=, reward_label=) or fit the {missing} set.")  # fmt: skip
        a = resamples.get(step, task.hook, task.label, task.probe, metric).astype(np.float64)
        b = resamples.get(step, reward.hook, reward.label, reward.probe, metric).astype(np.float64)
        diff = a - b
        lo, hi, n, note = paired_interval(diff, level)
        shift = (task.selectivity - task.value) - (reward.selectivity - reward.value)
        rows.append([step_key(step), metric, task.label, task.hook, task.probe, task.value, reward.label, reward.hook,
                     reward.probe, reward.value, float(diff[0]), lo, hi, float(diff[0]) + shift, lo + shift,
                     hi + shift, n, note])  # fmt: skip
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def _pick(best: pd.DataFrame, label: str | None, label_set: str):
    chosen = best[best["label"] == label] if label is not None else best[best["label_set"] == label_set]
    if chosen.empty:
        return None
    return chosen.loc[chosen["val_selectivity"].idxmax()]
