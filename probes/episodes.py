"""Episodes are the unit of independence: consecutive steps of one episode are near-copies of each other, so
everything that samples data for a probe samples whole episodes.

- `split_by_episode`: train / validation / test rows, never one episode on two sides; deterministic from a seed.
- `shuffle_across_episodes`: the shuffled-labels control. Labels keep their within-episode order but are dealt
  out to other episodes, so the control probe sees label sequences as autocorrelated as the real ones.
- `bootstrap_weights`: resample test episodes with replacement (`workbench.common.stats.resample_counts`); each
  resample is a weight per test row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes.errors import ProbeError
from workbench.common.stats import resample_counts

FRACTIONS = (0.6, 0.2, 0.2)  # train, validation, test
MIN_EPISODES = 5  # at least 3 train, 1 validation, 1 test; a bootstrap over one test episode says nothing


@dataclass(frozen=True)
class Split:
    """Row indices (ascending) of the train, validation and test sets, and the episode id of every row."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    episode_ids: np.ndarray


def split_by_episode(episode_ids: np.ndarray, seed: int = 0, fractions=FRACTIONS) -> Split:
    episode_ids = np.asarray(episode_ids)
    if episode_ids.ndim != 1 or len(episode_ids) == 0:
        raise ProbeError("the dataset is empty: collect some steps first (workbench.data.collect).")
    episodes = np.unique(episode_ids)
    if len(episodes) < MIN_EPISODES:
        raise ProbeError(
            f"the dataset holds {len(episodes)} episode(s); a split by episode needs at least {MIN_EPISODES} "
            "(and a useful confidence interval many more): collect more steps or more envs."
        )
    order = np.random.default_rng(seed).permutation(episodes)
    n_train = max(3, round(fractions[0] * len(episodes)))
    n_val = max(1, round(fractions[1] * len(episodes)))
    n_train = min(n_train, len(episodes) - n_val - 1)
    side = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    rows = {k: np.flatnonzero(np.isin(episode_ids, v)) for k, v in side.items()}
    return Split(rows["train"], rows["val"], rows["test"], episode_ids)


def shuffle_across_episodes(values: np.ndarray, episode_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """`values` (one per row, first axis) with each episode's sequence moved to other episodes' rows.

    Rows are grouped by episode (time order kept), the groups are concatenated in a random episode order, and
    that sequence is laid back onto the rows in their grouped order. Orders that would leave a row with its own
    value (an episode landing where it started) are redrawn: even a few of those leak the real labels into the
    control."""
    values, episode_ids = np.asarray(values), np.asarray(episode_ids)
    grouped = np.argsort(episode_ids, kind="stable")
    _, starts, counts = np.unique(episode_ids[grouped], return_index=True, return_counts=True)
    if len(starts) < 2:
        raise ProbeError("shuffling labels across episodes needs at least two episodes: collect more steps.")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        order = rng.permutation(len(starts))
        source = np.concatenate([grouped[starts[e] : starts[e] + counts[e]] for e in order])
        if not (source == grouped).any():
            break
    shuffled = np.empty_like(values)
    shuffled[grouped] = values[source]
    return shuffled


def bootstrap_weights(episode_ids: np.ndarray, n_boot: int = 200, seed: int = 0) -> torch.Tensor:
    """[1 + n_boot, rows]: row 0 is all ones (the estimate itself), row b the number of times each row's episode
    was drawn in resample b (episodes drawn with replacement, as many as there are)."""
    episodes, inverse = np.unique(np.asarray(episode_ids), return_inverse=True)
    draws = resample_counts(len(episodes), n_boot, seed)
    weights = np.concatenate([np.ones((1, len(inverse))), draws[:, inverse]])
    return torch.as_tensor(weights, dtype=torch.float32)
