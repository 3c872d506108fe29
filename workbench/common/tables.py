"""The tidy behaviour table (COLUMNS: one row per run, step, seed, condition and metric, with its interval) and the
rows it is made of: a rate with its Wilson interval, a mean with its Student-t interval, over episodes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from workbench.common.stats import mean_interval, wilson_interval

COLUMNS = ("run", "step", "seed", "variant", "distribution", "condition", "metric", "value", "ci_low", "ci_high",
           "n", "interval")  # fmt: skip


def rate_row(metric: str, hits: np.ndarray, **where) -> dict:
    """A rate over episodes (`hits`, bool) with its Wilson interval; `where` names the condition."""
    hits = np.asarray(hits, dtype=bool)
    low, high = wilson_interval(int(hits.sum()), hits.size)
    return {**where, "metric": metric, "value": float(hits.mean()), "ci_low": low, "ci_high": high,
            "n": int(hits.size), "interval": "wilson"}  # fmt: skip


def mean_row(metric: str, values: np.ndarray, **where) -> dict:
    """A mean over episodes with its Student-t interval (NaN with n = 0 when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {**where, "metric": metric, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                "interval": "t"}  # fmt: skip
    mean, low, high = mean_interval(values)
    return {**where, "metric": metric, "value": mean, "ci_low": low, "ci_high": high, "n": int(values.size),
            "interval": "t"}  # fmt: skip


def tidy_rows(rows: list[dict], variant: str, run: str = "", step: int = -1, run_seed: int = -1) -> pd.DataFrame:
    """Behavioural rows (metric, value, interval, ...) as the tidy table (COLUMNS) of one run and step."""
    table = pd.DataFrame(rows)
    table.insert(0, "variant", variant)
    table.insert(0, "seed", int(run_seed))
    table.insert(0, "step", int(step))
    table.insert(0, "run", str(run))
    return table[list(COLUMNS)]
