"""The chiseling tracer's core: over a checkpoint series, when does a feature become linearly readable at a hook, how
much does its direction move the action distribution, and how does that line up with the reward training received
between checkpoints.

Everything is measured in standardised space, so that no unit counts for more than its own signal:

- standardise: each unit of the hook (flattened) is centred and divided by its standard deviation on the train
  rows; a unit whose sd is at most `DEAD_SD` of the largest unit's is dead: it stays 0 and gets no weight.
- direction: the covariance of the standardised activations with the label on the train rows, unit-normed. For a
  binary label that is the mean-difference direction (mean where the label is 1 minus where it is 0); for any label
  each unit's component is proportional to its correlation with the label. A near-dead unit (tiny but nonzero sd)
  therefore gets exactly the weight its correlation earns, never a weight divided by its sd.
- readout score: the Pearson correlation, on held-out episodes, of the label with the activations' projection on
  the direction (one metric for every label kind), with a 95% interval from resampling test episodes.
  Controls: the same with the train labels permuted (`shuffled`) and on a randomly initialised network of the same
  architecture (`random_init`). selectivity = score - the higher control.
- push: the activations moved `alpha` standard deviations along the unit direction (unit j moves by
  alpha * u_j * sd_j, so a near-dead unit moves by almost nothing), and the mean KL divergence of the pushed action
  distribution from the unpushed one (nats), with its episode-bootstrap interval; beside it the same push along
  random unit directions over the live units (`push_kl_random`), and the mean absolute change in the value.
- stretches: between consecutive checkpoints, the reward rate training received (reward events per env-step, from
  `train_reward_events` / `train_env_steps` in each checkpoint's JSON, never raw counts across unequal stretches)
  beside the change of selectivity and push, also per 1,000 env-steps.
- association: Spearman's rho across stretches between the reward rate and a per-step growth, with a permutation
  p-value (`scipy.stats.permutation_test`, pairings permuted within each seed; several seeds combine as the mean of
  their rhos), and `min_detectable_rho`: the rho such a test detects with a given power, by simulation.

`trace_checkpoints` works on arrays (activations per checkpoint, labels, episode ids, and a forward per checkpoint
for the push), so it can be tested on planted features without training; `trace_run` feeds it a run directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from workbench.common.compute import one_torch_thread
from workbench.common.errors import CheckpointError, ConfigError, unknown_name
from workbench.data import collect, replay
from workbench.envs import N_ACTIONS, BatchEnv, make_config
from workbench.policies import build_policy
from workbench.training.checkpoints import list_steps, load_policy, read_json, step_stem

ALPHA = 2.0  # push size: standard deviations along the unit-norm standardised direction
DEAD_SD = 1e-6  # a unit whose sd is at most this share of the largest unit's is dead
NEAR_DEAD_SD = 0.01  # a live unit whose sd is below this share of the largest unit's is near-dead (reported)
N_BOOT = 200
N_RANDOM = 4  # random directions for the push control
N_RESAMPLES = 9999  # permutations for the association test
TEST_FRACTION = 0.4

# A forward from the hook on: forward(delta) -> (logits [m, A], value [m] or None) for the push rows, with `delta`
# (raw activation units, flattened hook shape) added at the hook; delta None: the unpushed forward.
Forward = Callable[[np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


# ---------------------------------------------------------------------------------------------- checks
def _matrix(acts, what: str = "activations") -> np.ndarray:
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] < 1:
        raise ConfigError(f"{what} of shape {a.shape}: pass one row per observation, [n, ...] with n >= 1.")
    a = a.reshape(a.shape[0], -1)
    if not np.isfinite(a).all():
        raise ConfigError(f"{what} hold NaN or inf: check the hook and the checkpoint they came from.")
    return a


def _label(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.shape[0] != n:
        raise ConfigError(f"label {name!r} has {y.shape[0]} values for {n} rows: pass one value per row.")
    if not np.isfinite(y).all():
        raise ConfigError(f"label {name!r} holds NaN or inf: drop those rows or pick another label.")
    return y


def episode_split(episode_ids, test_fraction: float = TEST_FRACTION, seed: int = 0) -> np.ndarray:
    """A boolean mask of test rows: whole episodes, `test_fraction` of them, chosen from `seed`."""
    ids = np.asarray(episode_ids).ravel()
    episodes = np.unique(ids)
    if episodes.size < 4:
        raise ConfigError(f"{episodes.size} episodes: the tracer needs at least 4 to hold some out; collect more.")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction!r}: use a share between 0 and 1 (0.4 is the default).")
    n_test = min(max(1, round(test_fraction * episodes.size)), episodes.size - 2)
    test = np.random.default_rng(seed).choice(episodes, n_test, replace=False)
    return np.isin(ids, test)


# ---------------------------------------------------------------------------------------------- one checkpoint
def standardise(acts: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, sd, live) of each unit over `rows` (a mask or index; None: all). Dead units (sd at most DEAD_SD of the
    largest) get sd 1 and live False, so their standardised value is a constant 0."""
    a = _matrix(acts)
    part = a if rows is None else a[rows]
    mean, sd = part.mean(0), part.std(0)
    live = sd > DEAD_SD * max(float(sd.max(initial=0.0)), 1e-300)
    return mean, np.where(live, sd, 1.0), live


def feature_direction(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The unit-norm direction in standardised space along which `z` covaries with `y` (for a 0/1 label: the mean
    where it is 1 minus the mean where it is 0, normed). Zero where the label or every unit is constant."""
    d = z.T @ (y - y.mean()) / len(y)
    norm = float(np.linalg.norm(d))
    return d / norm if norm > 0 else d


def _weighted_corr(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson correlation of x and y under each row of weights w [B, n]: one value per row (NaN if degenerate)."""
    sw = w.sum(1)
    mx, my = w @ x / sw, w @ y / sw
    cxy = w @ (x * y) / sw - mx * my
    vx, vy = w @ (x * x) / sw - mx * mx, w @ (y * y) / sw - my * my
    with np.errstate(invalid="ignore", divide="ignore"):
        return cxy / np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))


def episode_weights(episode_ids: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, rows] weights: each resample draws the rows' episodes with replacement; a row counts as often as its
    episode was drawn."""
    _, index = np.unique(episode_ids, return_inverse=True)
    n_ep = int(index.max()) + 1
    counts = rng.multinomial(n_ep, np.full(n_ep, 1.0 / n_ep), size=n_boot).astype(np.float64)
    return counts[:, index]


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class Readout:
    """A feature's direction at one checkpoint and how well it reads the label on held-out episodes."""

    score: float  # held-out Pearson r of projection and label
    ci_low: float
    ci_high: float
    direction: np.ndarray  # unit norm, standardised space, flattened hook
    sd: np.ndarray  # per-unit sd (train rows; 1 for dead units)
    live: np.ndarray


def readout(acts, y, test: np.ndarray, episode_ids, n_boot: int = N_BOOT, seed: int = 0) -> Readout:
    """The direction fitted on the train rows (not `test`) and its held-out score with a 95% episode-bootstrap
    interval."""
    a = _matrix(acts)
    y = _label(y, a.shape[0], "label")
    train = ~test
    if np.ptp(y[train]) == 0 or np.ptp(y[test]) == 0:
        raise ConfigError("the label is constant on the train or test episodes: collect more episodes, or pick a "
                          "label that varies.")  # fmt: skip
    mean, sd, live = standardise(a, train)
    z = np.where(live, (a - mean) / sd, 0.0)
    u = feature_direction(z[train], y[train])
    proj, yt = z[test] @ u, y[test]
    score = float(_weighted_corr(proj, yt, np.ones((1, proj.size)))[0])
    if n_boot > 0:
        w = episode_weights(np.asarray(episode_ids)[test], n_boot, np.random.default_rng(seed))
        low, high = _interval(_weighted_corr(proj, yt, w))
    else:
        low, high = math.nan, math.nan
    return Readout(score if np.isfinite(score) else 0.0, low, high, u, sd, live)


def push_delta(direction: np.ndarray, sd: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The raw-unit shift of moving `alpha` standard deviations along a unit-norm standardised direction: unit j moves
    by alpha * u_j * sd_j."""
    return alpha * direction * sd


def action_kl(base_logits, pushed_logits) -> np.ndarray:
    """KL(base || pushed) of the action distributions, per row, in nats."""
    lp = _log_softmax(np.asarray(base_logits, dtype=np.float64))
    lq = _log_softmax(np.asarray(pushed_logits, dtype=np.float64))
    return np.clip((np.exp(lp) * (lp - lq)).sum(-1), 0.0, None)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def random_directions(live: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """[n, D] unit-norm Gaussian directions over the live units (0 on dead ones): the push's control."""
    g = np.random.default_rng(seed).standard_normal((n, live.size)) * live
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)


def trace_checkpoints(
    steps: Sequence[int],
    acts: Sequence,
    labels: dict[str, np.ndarray],
    episode_ids,
    forwards: Sequence[Forward] | None = None,
    push_rows=None,
    control_acts=None,
    alpha: float = ALPHA,
    n_random: int = N_RANDOM,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (checkpoint, label) over one fixed set of observations replayed through every checkpoint.

    steps          the checkpoints' env-steps, increasing
    acts           per checkpoint, the hook's activations [n, ...] on the same n observations
    labels         name -> one value per observation (binary or continuous)
    episode_ids    per observation; held-out episodes (`episode_split`, from `seed`) score the readout
    forwards       per checkpoint, a `Forward` over the push rows (None: no push columns)
    push_rows      indices of the observations the forwards run on (None: all rows); their episode ids resample
                   the push's interval
    control_acts   the activations of a randomly initialised network of the same architecture (None: no
                   random_init control)

    Columns: step, label, score, ci_low, ci_high (held-out r), control_shuffled, control_random_init,
    selectivity, sel_ci_low, sel_ci_high (score and interval minus the higher control), n_live, top_unit_share
    (the largest unit's share of the direction's squared norm), near_dead_share (the share of near-dead units: live,
    sd below NEAR_DEAD_SD of the largest unit's), and with forwards: push_kl, push_kl_ci_low,
    push_kl_ci_high, push_kl_random (mean over `n_random` random directions), push_value (mean |change of value|).
    """
    steps = [int(s) for s in steps]
    if len(steps) < 2 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"steps {steps}: the tracer needs at least 2 checkpoints at increasing env-steps.")
    if len(acts) != len(steps):
        raise ConfigError(f"{len(acts)} activation arrays for {len(steps)} checkpoints: pass one per checkpoint.")
    if forwards is not None and len(forwards) != len(steps):
        raise ConfigError(f"{len(forwards)} forwards for {len(steps)} checkpoints: pass one per checkpoint, or None.")
    if not labels:
        raise ConfigError("no labels to trace: pass at least one, e.g. {'carrying': ...}.")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha={alpha!r}: the push size must be a positive number of standard deviations.")
    first = _matrix(acts[0], f"activations at step {steps[0]}")
    n = first.shape[0]
    episode_ids = np.asarray(episode_ids).ravel()
    if episode_ids.shape[0] != n:
        raise ConfigError(f"{episode_ids.shape[0]} episode ids for {n} rows: pass one per observation.")
    ys = {name: _label(y, n, name) for name, y in labels.items()}
    test = episode_split(episode_ids, seed=seed)
    rng = np.random.default_rng(seed)
    shuffled = {name: y.copy() for name, y in ys.items()}
    for y in shuffled.values():
        y[~test] = rng.permutation(y[~test])
    controls = {}
    if control_acts is not None:
        control = _matrix(control_acts, "control activations")
        if control.shape[0] != n:
            raise ConfigError(f"control activations have {control.shape[0]} rows for {n}: replay the same rows.")
        controls = {name: readout(control, y, test, episode_ids, 0).score for name, y in ys.items()}
    rows_idx = np.arange(n) if push_rows is None else np.asarray(push_rows)
    push_weights = None
    if forwards is not None and n_boot:
        push_weights = episode_weights(episode_ids[rows_idx], n_boot, np.random.default_rng(seed + 1))

    out = []
    for i, step in enumerate(steps):
        a = first if i == 0 else _matrix(acts[i], f"activations at step {step}")
        if a.shape[0] != n:
            raise ConfigError(f"activations at step {step} have {a.shape[0]} rows, not {n}: replay the same rows.")
        base, random_kl = None, None
        if forwards is not None:
            base = forwards[i](None)
        for name, y in ys.items():
            r = readout(a, y, test, episode_ids, n_boot, seed)
            near_dead = NEAR_DEAD_SD * r.sd[r.live].max(initial=0.0)
            shuffled_score = readout(a, shuffled[name], test, episode_ids, 0).score
            control = max(shuffled_score, controls.get(name, -math.inf))
            row = {"step": step, "label": name, "score": r.score, "ci_low": r.ci_low, "ci_high": r.ci_high,
                   "control_shuffled": shuffled_score, "control_random_init": controls.get(name, math.nan),
                   "selectivity": r.score - control, "sel_ci_low": r.ci_low - control,
                   "sel_ci_high": r.ci_high - control, "n_live": int(r.live.sum()),
                   "top_unit_share": float((r.direction**2).max(initial=0.0)),
                   "near_dead_share": float((r.direction[r.live & (r.sd < near_dead)] ** 2).sum())}  # fmt: skip
            if forwards is not None:
                if random_kl is None:
                    random_kl = _random_push(forwards[i], base, r, alpha, n_random, seed)
                row |= _push(forwards[i], base, r, alpha, push_weights) | {"push_kl_random": random_kl}
            out.append(row)
    return pd.DataFrame(out)


def _push(forward: Forward, base, r: Readout, alpha, weights) -> dict:
    logits, value = base
    pushed_logits, pushed_value = forward(push_delta(r.direction, r.sd, alpha))
    kl = action_kl(logits, pushed_logits)
    low, high = _interval(weights @ kl / weights.sum(1)) if weights is not None else (math.nan, math.nan)
    dv = math.nan if value is None else float(np.abs(np.asarray(pushed_value) - np.asarray(value)).mean())
    return {"push_kl": float(kl.mean()), "push_kl_ci_low": low, "push_kl_ci_high": high, "push_value": dv}


def _random_push(forward: Forward, base, r: Readout, alpha, n_random, seed) -> float:
    """The mean KL of pushes along `n_random` random directions over the live units (the same for every label: the
    standardisation comes from the train rows alone)."""
    kls = [action_kl(base[0], forward(push_delta(d, r.sd, alpha))[0]).mean()
           for d in random_directions(r.live, n_random, seed)]  # fmt: skip
    return float(np.mean(kls)) if kls else math.nan


def onset(table: pd.DataFrame) -> tuple[int, int] | None:
    """The stretch (start, end) at whose end a label's readout became selective for good: the first checkpoint from
    which on the selectivity interval's lower end stays above 0 at every later checkpoint. None if it never does,
    or if it already does at the first checkpoint. `table`: one label's rows of `trace_checkpoints`."""
    t = table.sort_values("step")
    above = (t.sel_ci_low.fillna(t.selectivity) > 0).to_numpy()
    if not above[-1]:
        return None
    i = len(above) - 1
    while i > 0 and above[i - 1]:
        i -= 1
    if i == 0:
        return None
    steps = t.step.to_numpy()
    return int(steps[i - 1]), int(steps[i])


# ---------------------------------------------------------------------------------------------- reward
def wilson(events: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson interval of events / n (a rate per env-step)."""
    if n < 1:
        return math.nan, math.nan
    p = events / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def reward_stretches(run_dir: str | Path, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """What training received between consecutive checkpoints: env_steps, reward_events, reward_sum, reward_rate
    (events per env-step) with its Wilson interval, reward_events_source (`logged`: from the checkpoint's
    train_reward_events / train_env_steps; `estimated`, for a series trained before those were logged: the
    evaluation rollouts' deposits per env-step at the two ends, averaged, over end - start env-steps) and the
    success rate at the stretch's end."""
    run_dir = Path(run_dir)
    steps = list_steps(run_dir) if steps is None else [int(s) for s in steps]
    if len(steps) < 2:
        raise CheckpointError(f"{run_dir} has {len(steps)} checkpoint(s): the tracer needs at least 2 (a series).")
    metrics = {step: read_json(run_dir / f"{step_stem(step)}.json") for step in steps}
    rows = []
    for a, b in zip(steps, steps[1:], strict=False):
        m = metrics[b]
        logged, env_steps = m.get("train_reward_events"), m.get("train_env_steps")
        if logged is not None and env_steps:
            events, n, source = int(logged), int(env_steps), "logged"
            reward_sum = float(m.get("train_reward_sum", math.nan))
        else:
            n = b - a
            events = n * (_eval_rate(metrics[a]) + _eval_rate(m)) / 2  # not a whole number: an estimate
            source, reward_sum = "estimated", math.nan
        low, high = wilson(events, n)
        rows.append({"start": a, "end": b, "env_steps": n, "reward_events": events, "reward_sum": reward_sum,
                     "reward_rate": events / n, "rate_ci_low": low, "rate_ci_high": high,
                     "reward_events_source": source, "success_at_end": m.get("success_rate", math.nan)})  # fmt: skip
    return pd.DataFrame(rows)


def _eval_rate(metrics: dict) -> float:
    """Reward events per env-step under a checkpoint's policy, from its evaluation metrics."""
    try:
        return metrics["deposits_per_episode"] / max(metrics["mean_length"], 1.0)
    except KeyError as e:
        raise CheckpointError(
            f"the checkpoint JSON has neither train_reward_events nor {e.args[0]!r}: the reward rate of its stretch "
            "cannot be logged or estimated; retrain the series."
        ) from None


def random_policy_rate(env, steps: Sequence[int] | None = None, n_envs: int = 256, n_steps: int = 400,
                       repeats: int = 1, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Reward events per env-step of uniformly random actions in `env` (an EnvConfig, variant or dict of options):
    the rate a policy that has learned nothing receives. `n_envs` rooms start together and step in lockstep, as in
    training, so with a checkpoint schedule `steps` each stretch's rate is the one a random policy would have
    received over the same env-steps (the first stretches cover only the first steps of every episode, where
    reward is rarer); without `steps`, one row over n_envs x n_steps env-steps. `repeats` runs that many such
    batches side by side and pools them (env_steps counts them all). Columns: start, end, env_steps, events, rate,
    ci_low, ci_high (Wilson)."""
    cfg = make_config(**env) if isinstance(env, dict) else make_config(env)
    n_envs, repeats = int(n_envs), int(repeats)
    if n_envs < 1 or repeats < 1:
        raise ConfigError(f"n_envs={n_envs!r}, repeats={repeats!r}: use positive whole numbers (n_envs: training's "
                          "ppo.n_envs).")  # fmt: skip
    steps = [0, n_envs * int(n_steps)] if steps is None else [int(s) for s in steps]
    if len(steps) < 2 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[0] < 0:
        raise ConfigError(f"steps {steps}: pass at least 2 increasing env-steps from 0 or more.")
    batch = BatchEnv(cfg, n_envs=n_envs * repeats, seed=seed)
    rng = np.random.default_rng(seed)
    counts = np.zeros(math.ceil(steps[-1] / n_envs), dtype=np.int64)  # reward events per batched step
    for t in range(counts.size):
        _, reward, *_ = batch.step(rng.integers(0, N_ACTIONS, n_envs * repeats))
        counts[t] = np.count_nonzero(reward)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    rows = []
    for a, b in zip(steps, steps[1:], strict=False):
        ta, tb = math.ceil(a / n_envs), math.ceil(b / n_envs)  # the batched steps inside the stretch
        events, n = int(cumulative[tb] - cumulative[ta]), (tb - ta) * n_envs * repeats
        low, high = wilson(events, n)
        rows.append({"start": a, "end": b, "env_steps": n, "events": events, "rate": events / max(n, 1),
                     "ci_low": low, "ci_high": high})  # fmt: skip
    return pd.DataFrame(rows)


def stretch_table(checkpoints: pd.DataFrame, rewards: pd.DataFrame) -> pd.DataFrame:
    """Per (stretch, label): the reward columns of `reward_stretches` beside the change of selectivity and (where
    measured) push over the stretch, and the same per 1,000 env-steps of the stretch."""
    rows = []
    for label, t in checkpoints.groupby("label", sort=False):
        t = t.set_index("step")
        for r in rewards.itertuples(index=False):
            if r.start not in t.index or r.end not in t.index:
                raise ConfigError(f"the stretch {r.start}-{r.end} has no traced checkpoint at one end: trace every "
                                  "checkpoint of the series.")  # fmt: skip
            a, b = t.loc[r.start], t.loc[r.end]
            kstep = (r.end - r.start) / 1000
            row = r._asdict() | {"label": label, "selectivity_start": a.selectivity, "selectivity_end": b.selectivity,
                                 "d_selectivity": b.selectivity - a.selectivity,
                                 "d_selectivity_per_kstep": (b.selectivity - a.selectivity) / kstep}  # fmt: skip
            if "push_kl" in t.columns:
                row |= {"push_kl_start": a.push_kl, "push_kl_end": b.push_kl, "d_push_kl": b.push_kl - a.push_kl,
                        "d_push_kl_per_kstep": (b.push_kl - a.push_kl) / kstep}  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- association
def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of x with y along `axis` (y may carry leading batch dims; average ranks for ties)."""
    rx = sps.rankdata(x, axis=-1)
    ry = sps.rankdata(y, axis=axis)
    ry = np.moveaxis(ry, axis, -1)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))


def association_test(xs: Sequence, ys: Sequence, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Spearman's rho of x with y in each seed (xs[i], ys[i]: one value per stretch) and the mean of those rhos,
    each with a two-sided permutation p-value: `scipy.stats.permutation_test` with the pairings of each seed's y
    permuted within that seed (exact when n_resamples covers every permutation). Seeds with unequal numbers of
    stretches, which scipy's pairings cannot take together, combine by the same permutation drawn in numpy.
    Returns rho (per seed), p (per seed), mean_rho, p_mean, n_stretches."""
    if len(xs) != len(ys) or not xs:
        raise ConfigError(f"{len(xs)} x series and {len(ys)} y series: pass one pair per seed, at least one.")
    pairs = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
        if x.size != y.size or x.size < 3:
            raise ConfigError(f"seed {i}: {x.size} x values and {y.size} y values; a rank correlation needs the "
                              "same number, at least 3 stretches (checkpoints 4 or more).")  # fmt: skip
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ConfigError(f"seed {i}: x or y holds NaN or inf; drop the stretches without a measurement.")
        pairs.append((x, y))
    rng = np.random.default_rng(seed)
    options = {"permutation_type": "pairings", "vectorized": True, "n_resamples": n_resamples,
               "alternative": "two-sided", "rng": rng}  # fmt: skip
    rho, p = [], []
    for x, y in pairs:
        res = sps.permutation_test((y,), lambda yy, axis, x=x: spearman(x, yy, axis), **options)
        rho.append(_nan_if_constant(float(res.statistic), x, y))
        p.append(float(res.pvalue) if np.isfinite(res.statistic) else math.nan)
    if len({x.size for x, _ in pairs}) == 1:

        def mean_rho(*yy, axis):
            return np.mean([spearman(x, y_, axis) for (x, _), y_ in zip(pairs, yy, strict=True)], axis=0)

        res = sps.permutation_test(tuple(y for _, y in pairs), mean_rho, **options)
        stat, p_mean = float(res.statistic), float(res.pvalue)
    else:
        stat, p_mean = _stratified(pairs, n_resamples, rng)
    if not np.isfinite(stat):
        p_mean = math.nan
    return {"rho": rho, "p": p, "mean_rho": stat, "p_mean": p_mean, "n_stretches": [x.size for x, _ in pairs]}


def _nan_if_constant(stat: float, x, y) -> float:
    return math.nan if np.ptp(x) == 0 or np.ptp(y) == 0 else stat


def _stratified(pairs, n_resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """The mean-rho permutation test for seeds of unequal length: each seed's y permuted on its own, n_resamples
    times; the p-value as scipy computes a randomised one (the observed value counted in, two-sided = twice the
    smaller tail)."""
    observed = float(np.mean([spearman(x, y) for x, y in pairs]))
    null = np.zeros(n_resamples)
    for x, y in pairs:
        perm = rng.permuted(np.broadcast_to(y, (n_resamples, y.size)), axis=1)
        null += spearman(x, perm)
    null /= len(pairs)
    eps = 1e-14 * max(1.0, abs(observed))
    greater = (np.count_nonzero(null >= observed - eps) + 1) / (n_resamples + 1)
    less = (np.count_nonzero(null <= observed + eps) + 1) / (n_resamples + 1)
    return observed, min(1.0, 2 * min(greater, less))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, np.nan)
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p[i]))
        out[i] = running
    return out.tolist()


def min_detectable_rho(n_stretches: int, n_seeds: int = 1, alpha: float = 0.05, power: float = 0.8,
                       n_sim: int = 4000, n_null: int = 20000, seed: int = 0) -> float:  # fmt: skip
    """The smallest population Spearman rho that `association_test`'s mean-rho test (two-sided, level `alpha`)
    detects with probability `power`, with `n_seeds` seeds of `n_stretches` stretches each, by simulation: the
    permutation null of the mean rho (random pairings), then bivariate-normal data with correlation r on a grid,
    reported as the Spearman rho of that population, 6/pi * asin(r/2). NaN if even rho near 1 falls short."""
    if n_stretches < 3 or n_seeds < 1:
        raise ConfigError(f"{n_stretches} stretches x {n_seeds} seeds: a rank correlation needs 3 stretches, 1 seed.")
    rng = np.random.default_rng(seed)
    ranks = np.arange(n_stretches, dtype=np.float64)
    null = spearman(ranks, rng.permuted(np.broadcast_to(ranks, (n_null, n_seeds, n_stretches)), axis=-1)).mean(-1)
    critical = np.quantile(np.abs(null), 1 - alpha)
    e1 = rng.standard_normal((n_sim, n_seeds, n_stretches))
    e2 = rng.standard_normal((n_sim, n_seeds, n_stretches))
    for r in np.linspace(0.0, 0.995, 200):
        y = r * e1 + math.sqrt(1 - r * r) * e2
        stat = spearman(e1, y).mean(-1)
        if np.mean(np.abs(stat) >= critical) >= power:
            return float(6 / math.pi * math.asin(r / 2))
    return math.nan


# ---------------------------------------------------------------------------------------------- a run directory
def trace_run(run_dir: str | Path, hook: str, labels: Sequence[str], n_obs: int = 12000, n_push: int = 2048,
              seed: int = 0, alpha: float = ALPHA, n_random: int = N_RANDOM, n_boot: int = N_BOOT,
              progress: Callable[[str], None] | None = None) -> pd.DataFrame:  # fmt: skip
    """`trace_checkpoints` over every checkpoint of a run: `n_obs` observations collected once with the run's last
    checkpoint (sampled actions, env seed `seed` + 1) and replayed through each checkpoint and through a randomly
    initialised network of the same architecture (torch seed `seed`); the push runs on `n_push` of them. Returns
    the table with a `run` column."""
    run_dir = Path(run_dir)
    steps = list_steps(run_dir)
    if len(steps) < 2:
        raise CheckpointError(f"{run_dir} has {len(steps)} checkpoint(s): the tracer needs a series of at least 2.")
    with one_torch_thread():
        final = load_policy(run_dir)
        if hook not in final.hook_dict:
            raise unknown_name("hook", hook, list(final.hook_dict))
        base = collect(final, None, n_obs, hooks=[hook], seed=seed + 1)
        missing = [name for name in labels if name not in base.labels.columns]
        if missing:
            raise unknown_name("label", missing[0], list(base.labels.columns))
        ys = {name: base.labels[name].to_numpy().astype(np.float64) for name in labels}
        episodes = base.labels["episode_id"].to_numpy()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = build_policy(base.meta["policy"]["config"])
        control = replay(base, fresh, hooks=[hook]).activations(hook).float().numpy()
        rows = np.sort(np.random.default_rng(seed).choice(base.n, min(n_push, base.n), replace=False))
        obs = base.observations()[torch.from_numpy(rows)]
        acts, forwards = [], []
        for step in steps:
            if progress is not None:
                progress(f"{run_dir.name}: step {step:,}")
            policy = load_policy(run_dir / f"{step_stem(step)}.safetensors")
            acts.append(replay(base, policy, hooks=[hook]).activations(hook).float().numpy())
            forwards.append(_policy_forward(policy, obs, hook))
        table = trace_checkpoints(steps, acts, ys, episodes, forwards, rows, control, alpha, n_random, n_boot, seed)
    return table.assign(run=run_dir.name)


def _policy_forward(policy, obs, hook: str) -> Forward:
    def forward(delta):
        if delta is None:
            with torch.no_grad():
                logits, value = policy(obs)
        else:
            shift = torch.as_tensor(delta, dtype=torch.float32)

            def add(x, hook):
                return x + shift.reshape(x.shape[1:])

            with torch.no_grad(), policy.hooks(fwd_hooks=[(hook, add)]):
                logits, value = policy(obs)
        return logits.double().numpy(), value.double().numpy()

    return forward
