"""Two controls that need more than the probe's own data: random-init policies (several draws) and control tasks.

- random_init: the same probe on the activations of a randomly initialised policy of the same architecture. One
  draw is one sample of a wide distribution: on the bundled TrashGrid CNNs, changing only the init seed (0..3)
  moved the best reward-side selectivity between 0.13 and 0.34, which flipped a verdict. So the control is
  `n` draws (init seeds seed, seed + 1, ...; one replay of the dataset per seed, every hook at once), and the
  table reports their median (the control_value that selectivity is taken against) and spread (control_sd,
  control_min, control_max). The median, not the mean: a draw whose features have a near-zero spread on the train
  rows can blow up on the test rows (a ridge probe of return-to-go on one random CNN scored R² -206 while the
  other draws scored ~0.4), and a mean would carry that draw into every selectivity (0.94 instead of 0.47).
  `RandomInitDraws` gathers the draws' scores and sets them on each probe's score.
- control_task (Hewitt & Liang 2019, "Designing and interpreting probes with control tasks"): a task with the
  label's distribution whose answers the world does not explain. Each distinct input (an observation: its
  pixels, `input_types`) gets the label of one row drawn at random, fixed for every row that shows that input;
  the same probe is fitted on its train rows and scored on its test rows. Rows of one input always agree, so a
  probe can fit it only by telling inputs apart and memorising their labels: a high control_task score says the
  probe is expressive enough to memorise, and selectivity against it asks for more than that. Inputs seen only
  in test get labels no probe can know, so on data where inputs rarely repeat across episodes it stays near
  chance. Classification labels only (binary, multiclass, map; for a map, the whole map of the drawn row).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from probes.errors import ProbeError
from probes.labels import Target
from workbench.common.compute import one_torch_thread
from workbench.data import replay
from workbench.policies import build_policy

CONTROL_TASK_KINDS = ("binary", "multiclass", "map")


# ---------------------------------------------------------------------------------------------- random init
def random_init_seeds_for(n: int, seed: int) -> list[int]:
    """The init seeds of `n` random-init draws: seed, seed + 1, ..., seed + n - 1."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ProbeError(f"random_init_seeds={n!r}: pass the number of randomly initialised policies to draw (an "
                         "integer, at least 1; 5 or more for a useful spread), or random_init=None to leave the "
                         "random-init control out.")  # fmt: skip
    return [seed + i for i in range(int(n))]


def random_init_datasets(dataset, hooks: list[str], seeds: list[int]) -> Iterator:
    """The dataset's rows replayed through a freshly initialised policy of the same architecture per seed, one at a
    time, in one torch thread: the same activations whatever this process's thread count."""
    for seed in seeds:
        with one_torch_thread():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                policy = build_policy(dataset.meta["policy"]["config"])
            replayed = replay(dataset, policy, hooks=hooks)
        yield replayed
        del replayed  # before the next replay is made: one at a time in memory


class RandomInitDraws:
    """The random-init control's scores, gathered over draws: per (hook, label, probe), each draw's test and
    validation values of every metric."""

    def __init__(self):
        self.draws: dict[tuple[str, str, str], list[tuple[dict, dict]]] = {}

    def add(self, scores) -> None:
        """One draw's `ProbeScore`s (fitted without controls) of one hook."""
        for s in scores:
            test = {m: v[0] for m, v in s.metrics.items()}
            self.draws.setdefault((s.hook, s.label, s.probe), []).append((test, dict(s.val)))

    def __len__(self) -> int:
        return len(self.draws)

    def apply(self, s) -> None:
        """Set a probe's random_init control: the median over draws (test and validation) and the test spread."""
        draws = self.draws.get((s.hook, s.label, s.probe))
        if not draws:
            return
        test = {m: np.array([d[0].get(m, math.nan) for d in draws], dtype=np.float64) for m in draws[0][0]}
        val = {m: np.array([d[1].get(m, math.nan) for d in draws], dtype=np.float64) for m in draws[0][1]}
        s.controls["random_init"] = {m: _median(v) for m, v in test.items()}
        s.control_val["random_init"] = {m: _median(v) for m, v in val.items()}
        s.spread["random_init"] = {m: _spread(v) for m, v in test.items()}


def _median(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(np.median(finite)) if len(finite) else math.nan


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    """(sample standard deviation, min, max) over the finite draws; sd NaN for a single draw."""
    finite = values[~np.isnan(values)]
    if not len(finite):
        return math.nan, math.nan, math.nan
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    return sd, float(finite.min()), float(finite.max())


# ---------------------------------------------------------------------------------------------- control tasks
def input_types(dataset) -> np.ndarray | None:
    """int64 [n]: an id per row, equal for rows that show the same input; None when the dataset cannot say.
    A dataset with an `input_types()` method (`probes.ArrayDataset` given them) answers it; a collected dataset
    answers by its observations' pixels."""
    if hasattr(dataset, "input_types"):
        types = dataset.input_types()
        return None if types is None else np.asarray(types)
    if hasattr(dataset, "observations"):
        obs = np.ascontiguousarray(dataset.observations().numpy().reshape(dataset.n, -1))
        rows = obs.view(np.dtype((np.void, obs.shape[1])))[:, 0]  # one opaque value per row: fast unique
        return np.unique(rows, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return None


def control_task_targets(dataset, targets: list[Target], seed: int = 0) -> dict[str, Target]:
    """label name → its control task's target (module docstring), for the classification labels, when the
    dataset says which rows show the same input (`input_types`); {} otherwise."""
    wanted = [t for t in targets if t.kind in CONTROL_TASK_KINDS]
    if not wanted:
        return {}
    types = input_types(dataset)
    if types is None:
        return {}
    if len(types) != dataset.n:
        raise ProbeError(f"input_types has {len(types)} rows but the dataset has {dataset.n}: pass one per row.")
    return {t.name: control_task(t, types, seed) for t in wanted}


def control_task(target: Target, types: np.ndarray, seed: int = 0) -> Target:
    """The control task of one label: each distinct input type gets the label of one row drawn at random (fixed
    from `seed` and the label's name), so the control labels follow the label's distribution."""
    _, inverse = np.unique(np.asarray(types), return_inverse=True)
    inverse = inverse.reshape(-1)
    n_types = int(inverse.max()) + 1
    name_key = int.from_bytes(target.name.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, name_key, 0xC0])
    source = rng.integers(0, len(inverse), n_types)  # a row per type, whose label the type takes
    values = target.values[source[inverse]]
    return Target(target.name, target.kind, values, classes=target.classes, grid=target.grid)
