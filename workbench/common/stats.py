"""Intervals and tests, in one place for every experiment.

Episode-level (describe one policy): `wilson_interval` for a rate, `newcombe_interval` for the difference of two
rates, `mean_interval` (Student t) for a mean over episodes. Seed-level (describe policies trained one way; seeds
are the unit of evidence): `seed_interval` (a percentile bootstrap over seeds of the mean or the interquartile mean),
`difference_interval` (a stratified bootstrap of the difference between two groups of seeds: each group resampled
on its own) and `permutation_p` (a two-sided permutation test of the difference of means). The seed-level ones
are scipy.stats' `bootstrap` and `permutation_test`, seeded so that a table is reproducible. (rliable offers the
same stratified bootstrap but needs `arch`, whose releases rliable accepts do not import beside pandas 3.)

Resampling as weights (torch, imported on first use): `resample_counts` draws the bootstrap once (how often each
unit, an episode or a contrast pair, is drawn per resample); `bootstrap_weights` turns it into weights, so that a
bootstrap mean is one matrix product; `mean_ci` and `ratio_ci` are percentile intervals from them; `derangement`
pairs every unit with another (a noise baseline).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as sps

from workbench.common.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

Z95 = 1.959963984540054
N_RESAMPLES = 10_000


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate: sound at 0 and 1 and for small n, unlike the normal one."""
    if n < 1:
        raise ConfigError("a rate needs at least 1 episode: evaluate more episodes.")
    if not 0 <= successes <= n:
        raise ConfigError(f"{successes} successes out of {n} is not a rate.")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds where float rounding would blur them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# Student-t 97.5% quantiles for 1..30 degrees of freedom; beyond, a Cornish-Fisher expansion (error < 1e-4).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042)  # fmt: skip


def t_quantile(df: int) -> float:
    """The two-sided 95% Student-t quantile (0.975) for `df` degrees of freedom."""
    if df < 1:
        raise ConfigError("a t-interval needs at least 2 values.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t-interval of the mean; a single value has no interval (nan)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ConfigError("a mean needs at least 1 value: evaluate more episodes or pass more runs.")
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def newcombe_interval(a: int, n_a: int, b: int, n_b: int) -> tuple[float, float, float]:
    """(difference, low, high): p_a - p_b with Newcombe's hybrid score interval (from the two Wilson intervals),
    which stays inside [-1, 1] and is sound at 0 and 1. It treats the two rates as independent samples."""
    p_a, p_b = a / n_a, b / n_b
    lo_a, hi_a = wilson_interval(a, n_a)
    lo_b, hi_b = wilson_interval(b, n_b)
    d = p_a - p_b
    return d, d - math.sqrt((p_a - lo_a) ** 2 + (hi_b - p_b) ** 2), d + math.sqrt((hi_a - p_a) ** 2 + (p_b - lo_b) ** 2)


def iqm(values, axis=-1):
    """The interquartile mean: the mean of the middle half (scipy's 25% trimmed mean)."""
    return sps.trim_mean(values, 0.25, axis=axis)


STATISTICS = {"mean": np.mean, "iqm": iqm}


def _seeds(values, name: str = "values") -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ConfigError(f"{name} must be finite numbers, one per seed; got {values.tolist()}.")
    return values


def seed_interval(values, statistic: str = "mean", seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic (mean | iqm) over seeds with a 95% percentile bootstrap over seeds.
    Fewer than 2 seeds, or seeds that all agree, have no interval to draw (nan, or the value itself)."""
    values, fn = _seeds(values), STATISTICS[statistic]
    estimate = float(fn(values))
    if values.size < 2:
        return estimate, math.nan, math.nan
    if np.ptp(values) == 0:
        return estimate, estimate, estimate
    res = sps.bootstrap((values,), fn, n_resamples=N_RESAMPLES, method="percentile", rng=np.random.default_rng(seed))
    return estimate, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def difference_interval(values, baseline, seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): mean(values) - mean(baseline) over seeds, with a 95% stratified percentile bootstrap
    (the seeds of each group resampled within their group)."""
    x, y = _seeds(values), _seeds(baseline, "baseline")
    estimate = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return estimate, math.nan, math.nan
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return estimate, estimate, estimate
    res = sps.bootstrap((x, y), _mean_difference, n_resamples=N_RESAMPLES, method="percentile",
                        rng=np.random.default_rng(seed))  # fmt: skip
    return estimate, float(res.confidence_interval.low), float(res.confidence_interval.high)


def permutation_p(values, baseline, seed: int = 0) -> float:
    """The two-sided permutation-test p-value of mean(values) - mean(baseline) (seeds exchanged between the groups;
    exact when there are at most N_RESAMPLES ways to split them; otherwise N_RESAMPLES random splits)."""
    x, y = _seeds(values), _seeds(baseline, "baseline")
    if x.size < 2 or y.size < 2:
        return math.nan  # one seed on a side: nothing to exchange
    if np.ptp(np.concatenate([x, y])) == 0:
        return 1.0
    exact = math.comb(x.size + y.size, x.size) <= N_RESAMPLES
    res = sps.permutation_test((x, y), _mean_difference, permutation_type="independent", vectorized=True,
                               n_resamples=np.inf if exact else N_RESAMPLES, alternative="two-sided",
                               rng=np.random.default_rng(seed))  # fmt: skip
    return float(res.pvalue)


# ---------------------------------------------------------------------------------------------- resampling (torch)
# Bootstraps drawn once as weights, so that every statistic of every resample is one matrix product: over episodes
# (probes, steering) or contrast pairs (patching).
def resample_counts(n: int, n_boot: int, seed) -> np.ndarray:
    """[n_boot, n] int64: how often each of n units is drawn in each bootstrap resample (n draws with replacement);
    `seed` an int or a numpy Generator."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def bootstrap_weights(n: int, n_boot: int, seed: int) -> Tensor:
    """[n_boot, n] resample counts / n: a bootstrap mean is values @ weights.T."""
    import torch

    return torch.as_tensor(resample_counts(n, n_boot, seed) / n, dtype=torch.float64)


def mean_ci(values: Tensor, weights: Tensor, confidence: float = 0.95) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over the last axis and its percentile bootstrap interval (`weights` from `bootstrap_weights`)."""
    import torch

    values = values.double().cpu()
    boots = values @ weights.T
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(boots, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=-1)
    return values.mean(-1), low, high


def ratio_ci(num: Tensor, den: Tensor, weights: Tensor, confidence: float = 0.95) -> tuple[Tensor, Tensor, Tensor]:
    """mean(num) / mean(den) with a bootstrap interval; nan where the denominator is ~0 (in patching: the factor
    does not move the clean run's logit difference, so there is nothing to recover)."""
    import torch

    num, den = num.double().cpu(), den.double().cpu()
    boot_den = weights @ den
    ratio = (num @ weights.T) / boot_den
    ratio[..., boot_den.abs() < 1e-6] = float("nan")
    alpha = (1 - confidence) / 2
    low, high = torch.nanquantile(ratio, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=-1)
    point = num.mean(-1) / den.mean() if den.mean().abs() >= 1e-6 else torch.full(num.shape[:-1], float("nan"))
    return point, low, high


def derangement(n: int, seed: int) -> Tensor:
    """A permutation with no fixed point (a random cycle): unit i is paired with another unit (in patching, pair i
    takes the corrupted run of another pair)."""
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty_like(perm)
    out[perm] = perm.roll(1)
    return out
