"""Probes on one dataset, with their methodology built in: what `fit_probes` does to every (hook, label).

1. Split rows by episode into train / validation / test (60/20/20, from `seed`; `probes.episodes`).
2. Standardise each feature with the train rows' mean and standard deviation (constant features stay 0).
3. Fit every label's probe over the regularisation grid `probes.fit.GRID`, batched (`probes.fit`), and keep,
   per probe, the strength with the lowest validation loss (squared error for ridge, at every strength;
   cross-entropy for classifiers, along the path from strong to weak until it stops improving).
4. Score on the test rows, with a 95% percentile confidence interval from resampling test episodes
   (`n_boot` resamples), leaving out the resamples degenerate for the metric (`probes.metrics`: a near-constant
   label for R², a class of the test set missing); with fewer than MIN_RESAMPLES of them left, no interval (NaN,
   and a note).
5. Score the controls on the same test rows:
   - shuffled: the same probe refitted on train labels dealt out across episodes (`shuffle_across_episodes`);
   - random_init: the same probe on the activations of a randomly initialised policy of the same architecture
     (pass `random_init`, a dataset replayed through it; `fit_probes` builds it from the dataset's meta);
   - baseline: the train majority class (per cell for maps) or the train mean;
   - best_unit: a probe on the one standardised feature (channel, for conv1x1) most correlated with the label
     on train (for multiclass: the highest between-class share of variance).
   selectivity = score − the highest control.

Any hook shape can be probed: activations are flattened to one feature vector a row, so a hook with one value a
row (hook_value, shape []) is a one-feature probe, which is its own best single unit (selectivity ≤ 0 there).

Probes by label kind: regression → ridge; binary → logistic; multiclass → multinomial (softmax); map → per_cell
(one logistic read-out from the whole activation per grid cell; cells constant on train predict that constant)
and, on hooks shaped [C, G, G] like the map, conv1x1 (one logistic read-out of the C channels shared by all
cells, i.e. a 1x1 convolution, on channels centred per cell; see `_score_conv1x1`). Metrics: `probes.metrics`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probes.directions import Direction
from probes.episodes import Split, bootstrap_weights, shuffle_across_episodes, split_by_episode
from probes.errors import ProbeError
from probes.fit import GRID, Features, UnitFeatures, fit_classifiers, fit_ridge
from probes.labels import Target, label_set, resolve_labels
from probes.metrics import REL_VARIANCE, score, score_resamples
from workbench.errors import unknown_name
from workbench.threads import one_torch_thread

CONTROLS = ("shuffled", "random_init", "baseline", "best_unit")
PROBES = {"regression": "ridge", "binary": "logistic", "multiclass": "multinomial", "map": "per_cell"}
COLUMNS = ["run", "step", "hook", "label", "label_set", "kind", "probe", "metric", "value", "ci_low", "ci_high",
           "control", "control_value", "control_gap", "selectivity", "reg", "n_train", "n_test", "n_boot_degenerate",
           "note"]  # fmt: skip
MIN_RESAMPLES = 0.5  # an interval needs at least this share of the bootstrap resamples to be non-degenerate
SATURATED_LOGIT = 20.0  # what a map cell that is constant on train predicts


@dataclass
class ProbeScore:
    """One fitted probe's test scores: metrics {name: (value, ci_low, ci_high)}, controls {name: {metric: value}};
    per metric, the bootstrap resamples degenerate for it (`probes.metrics`) and a note on its interval."""

    hook: str
    label: str
    kind: str
    probe: str
    reg: float
    metrics: dict[str, tuple[float, float, float]]
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    direction: Direction | None = None
    degenerate: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class ProbeResult:
    """`table`: the tidy table (see `probes.sweep` for its columns); `directions`: the fitted probes."""

    table: pd.DataFrame
    directions: list[Direction]

    def __repr__(self) -> str:
        return f"ProbeResult({len(self.directions)} probes)\n{summary(self.table)}"


def fit_probe(dataset, hook: str, label: str, **kwargs) -> ProbeResult:
    """One probe, with all its controls: `fit_probes(dataset, [hook], [label], ...)`."""
    return fit_probes(dataset, [hook], [label], **kwargs)


def fit_probes(
    dataset,
    hooks: list[str] | None = None,
    labels: list[str] | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    random_init="auto",
    n_boot: int = 200,
    precision: str = "auto",
) -> ProbeResult:
    """Every (hook, label) probe of a dataset (an `ActivationDataset` or `probes.ArrayDataset`), with controls.

    hooks: default as `default_hooks`; labels: default the reward and task sets
    (`probes.labels`). random_init: a dataset of the same rows replayed through a randomly initialised policy,
    "auto" to build one from the dataset's meta (seeded by `seed`; an ArrayDataset without a "policy" in its
    meta gets none), or None to leave that control out (its rows then hold NaN)."""
    if dataset.n == 0:
        raise ProbeError("the dataset is empty: collect some steps first (workbench.datasets.collect).")
    hooks = default_hooks(list(dataset.hook_names), hooks)
    targets, skipped = resolve_labels(dataset, labels)
    split = split_by_episode(np.asarray(dataset.episode_ids()), seed)
    if isinstance(random_init, str) and random_init == "auto":
        random_init = random_init_dataset(dataset, hooks, seed) if "policy" in dataset.meta else None
    controls = {}
    if random_init is not None:
        controls = {(hook, s.label, s.probe): s.metrics for hook in hooks
                    for s in score_hook(random_init.activations(hook), hook, targets, split, seed=seed, device=device,
                                        precision=precision, with_controls=False)}  # fmt: skip
    scores = [s for hook in hooks
              for s in score_hook(dataset.activations(hook), hook, targets, split, seed=seed, device=device,
                                  precision=precision, n_boot=n_boot)]  # fmt: skip
    step = (dataset.meta.get("policy") or {}).get("step")
    run = (dataset.meta.get("policy") or {}).get("run_dir")
    for s in scores:
        s.controls["random_init"] = {k: v[0] for k, v in controls.get((s.hook, s.label, s.probe), {}).items()}
        if s.direction is not None:
            s.direction.step = step
    table = tidy(scores, run=run, step=step, split=split, skipped=skipped, hooks=hooks)
    return ProbeResult(table, [s.direction for s in scores if s.direction is not None])


DEFAULT_HOOK_SUFFIXES = (".hook_out", "hook_resid_post")  # CNN layer outputs, transformer residual stream


def default_hooks(valid: list[str], hooks: list[str] | str | None = None) -> list[str]:
    """The hooks asked for, checked against `valid`; by default every `*.hook_out` / `*hook_resid_post` hook
    (else every hook but hook_obs, whose pixels are no representation of the policy's)."""
    if hooks is None:
        hooks = [h for h in valid if h.endswith(DEFAULT_HOOK_SUFFIXES)] or [h for h in valid if h != "hook_obs"]
        hooks = hooks or list(valid)
    if isinstance(hooks, str):
        hooks = [hooks]
    if not hooks:
        raise ProbeError("hooks=[] asks for no probe: pass hook names (`workbench hooks CKPT` lists them).")
    for hook in hooks:
        if hook not in valid:
            raise unknown_name("hook", hook, valid)
    return list(dict.fromkeys(hooks))


def random_init_dataset(dataset, hooks: list[str], seed: int = 0):
    """The dataset's rows replayed through a freshly initialised policy of the same architecture (seeded), in one
    torch thread: the same activations whatever this process's thread count (`probes.sweep.score_checkpoints`)."""
    from workbench.datasets import replay
    from workbench.policies import build_policy

    with one_torch_thread():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = build_policy(dataset.meta["policy"]["config"])
        return replay(dataset, policy, hooks=hooks)


# ---------------------------------------------------------------------------------------------- one hook
def score_hook(acts: Tensor, hook: str, targets: list[Target], split: Split, **options) -> list[ProbeScore]:
    """All targets' probes on one hook's activations [n, *shape]: `score_stack` of one design (same options)."""
    return score_stack([acts], hook, targets, split, **options)[0]


def score_stack(
    stack: list[Tensor],
    hook: str,
    targets: list[Target],
    split: Split,
    *,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "auto",
    n_boot: int = 200,
    with_controls: bool = True,
) -> list[list[ProbeScore]]:
    """All targets' probes on each of several activation tensors of one shape [n, *shape] on the same rows (one
    hook at several checkpoints), fitted as one batch (`probes.fit`); one list of scores per tensor. Without
    controls (the random-init replay): test values only, no confidence intervals, no directions. Runs in one
    CPU thread (`workbench.threads.one_torch_thread`)."""
    n, shape = len(split.episode_ids), tuple(stack[0].shape[1:])
    for acts in stack:
        if len(acts) != n or tuple(acts.shape[1:]) != shape:
            raise ProbeError(
                f"{hook}: activations of shape {list(acts.shape)} for {n} labelled rows (stack of shape "
                f"[{n}, {', '.join(map(str, shape))}]): pass one row per observation."
            )
    with one_torch_thread():
        precision = _precision(precision, device)
        X = torch.stack([acts.reshape(n, -1).to(device=device, dtype=torch.float32) for acts in stack])
        bad = 0 if bool(torch.isfinite(X.sum(1)).all()) else int((~torch.isfinite(X)).any(2).sum())  # sum: one pass
        if bad:
            raise ProbeError(f"{hook}: {bad} rows hold NaN or inf activations; a probe cannot be fitted on them. "
                             "Check the policy's weights (a diverged checkpoint?) or drop those rows.")  # fmt: skip
        weights = bootstrap_weights(split.episode_ids[split.test], n_boot if with_controls else 0, seed).to(device)
        scalar = [t for t in targets if t.kind != "map"]
        maps = [t for t in targets if t.kind == "map"]
        out = _score_design(X, shape, hook, scalar + maps, split, weights, seed, device, precision, with_controls)
        conv_maps = [t for t in maps if len(shape) == 3 and shape[1:] == t.grid]
        if conv_maps:
            conv = _score_conv1x1(X.reshape(*X.shape[:2], shape[0], -1), shape, hook, conv_maps, split, weights, seed,
                                  device, precision, with_controls)  # fmt: skip
            out = [a + b for a, b in zip(out, conv, strict=True)]
        return out


def _score_conv1x1(X, shape, hook, targets, split, weights, seed, device, precision, with_controls):
    """One read-out of the C channels shared by every cell (a 1x1 convolution): rows are (observation, cell)
    pairs. Channels are first centred per cell (train means), so that neither the probe nor its controls can
    read *where* a cell is (floor vs wall, which a shuffled-label probe would turn into an object detector),
    only what its channels say; in the original basis that is a 1x1 convolution with a bias per cell."""
    cell_mean = X[:, split.train].mean(1, keepdim=True)  # [H, 1, C, cells]
    h, n, c, cells = X.shape
    rows = (X - cell_mean).transpose(2, 3).reshape(h, n * cells, c)
    scores = _score_design(rows, shape[:1], hook, targets, split, weights, seed, device, precision, with_controls,
                           cells=cells)  # fmt: skip
    for design, cell_mean_h in zip(scores, cell_mean[:, 0].cpu(), strict=True):
        for s in design:
            d = s.direction
            if d is not None:  # fold the per-cell centring into the bias: b[y, x] = b - w · mean[:, y, x]
                d.bias = (d.bias - d.weight @ cell_mean_h).reshape(shape[1:])
                d.mean = (d.mean[:, None] + cell_mean_h).reshape(shape)
    return scores


def _precision(precision: str, device: str) -> str:
    from workbench.train import resolve_precision

    return resolve_precision(precision, device)


def _score_design(X, shape, hook, targets, split, weights, seed, device, precision, with_controls, cells=None):
    """Fit, select, score and control every target on a stack of designs X [H, rows, D]. `cells`: rows are
    (observation, cell) pairs (the conv1x1 probe), `cells` per observation; `shape` is one row's activation
    shape. Returns one list of scores per design."""
    rows = {k: _rows(getattr(split, k), cells) for k in ("train", "val", "test")}
    train = X[:, rows["train"]]
    mean, std = train.mean(1), train.std(1, correction=0)  # [H, D]
    del train
    # Features constant on train (dead units, wall cells of a conv map) can carry no probe weight: leave out those
    # constant in every design, which also makes the Gram matrix, quadratic in their number, cheaper.
    varies = std > 1e-6 * (1 + mean.abs())
    std = torch.where(varies, std, torch.ones_like(std))
    keep = torch.nonzero(varies.any(0)).squeeze(1)
    full_mean = mean
    if len(keep) < X.shape[2]:
        X, mean, std = X[..., keep], mean[:, keep], std[:, keep]
    Z = {k: (X[:, r] - mean[:, None]) / std[:, None] for k, r in rows.items()}
    del X
    feats = Features(Z["train"], GRID, precision)
    shuffled = None
    if with_controls:  # train labels dealt out across train episodes: a source train row for every train row
        shuffled = shuffle_across_episodes(split.train, split.episode_ids[split.train], seed + 1)
    batch = _Batch(targets, split, shuffled, cells, device)
    fitted = _fit_select(feats, Z, batch, torch.bmm)
    units = _best_units(feats, Z, _Batch(targets, split, None, cells, device)) if with_controls else {}
    one = weights[:1]
    scores = [[] for _ in range(feats.h)]
    for t in targets:
        y_test = torch.as_tensor(t.values[split.test], device=device)
        baseline = _values(score(t.kind, y_test, _baseline(t, split, device), one)) if with_controls else None
        real = fitted[t.name, "real"]
        for h in range(feats.h):
            values, degenerate = score_resamples(t.kind, y_test, real["output"][h], weights)
            s = ProbeScore(hook, t.name, t.kind, "conv1x1" if cells else PROBES[t.kind], real["reg"][h], {})
            for m, v in values.items():
                value, lo, hi, s.degenerate[m], s.notes[m] = _estimate(m, t.kind, v, degenerate[m])
                s.metrics[m] = (value, lo, hi)
            if with_controls:
                s.controls["shuffled"] = _values(score(t.kind, y_test, fitted[t.name, "shuffled"]["output"][h], one))
                s.controls["baseline"] = baseline
                s.controls["best_unit"] = _values(score(t.kind, y_test, units[t.name, "real"]["output"][h], one))
                s.direction = _direction(hook, t, s.probe, real, h, full_mean[h], std[h], keep, shape, cells)
            scores[h].append(s)
    return scores


def _rows(index: np.ndarray, cells: int | None) -> np.ndarray:
    return index if not cells else (index[:, None] * cells + np.arange(cells)).reshape(-1)


@dataclass
class _Entry:
    """One target's columns in a joint fit; `variant` is "real" or "shuffled"."""

    target: Target
    variant: str
    cols: slice
    cells: np.ndarray | None = None  # per-cell map: the cells fitted (those not constant on train)
    constant: np.ndarray | None = None  # per-cell map: every cell's value in the first train row


class _Batch:
    """The columns of one joint fit: regression targets (ridge) and classification targets (sigmoid or softmax
    columns); train labels real or shuffled (`shuffled`: the source train row of each train row), validation
    labels always real."""

    def __init__(self, targets: list[Target], split: Split, shuffled: np.ndarray | None, cells, device):
        self.entries: dict[tuple[str, str], _Entry] = {}
        parts = {"reg": ([], []), "cls": ([], [])}
        problem, softmax = [], []
        variants = {"real": split.train} | ({"shuffled": shuffled} if shuffled is not None else {})
        for t in targets:
            for variant, train_rows in variants.items():
                train, val = t.values[train_rows], t.values[split.val]
                if cells:  # conv1x1: one row per (observation, cell), one sigmoid column per map
                    train, val = train.reshape(-1), val.reshape(-1)
                entry = _Entry(t, variant, slice(0))
                if t.kind == "multiclass":
                    eye = np.eye(len(t.classes), dtype=np.float32)
                    train, val = eye[train], eye[val]
                elif t.kind == "map" and not cells:  # per-cell: a sigmoid column per cell not constant on train
                    varies = train.min(0) != train.max(0)
                    entry.cells, entry.constant = np.flatnonzero(varies), train[0]
                    train, val = train[:, varies], val[:, varies]
                else:
                    train, val = train[:, None], val[:, None]
                which = "reg" if t.kind == "regression" else "cls"
                start = sum(p.shape[1] for p in parts[which][0])
                entry.cols = slice(start, start + train.shape[1])
                parts[which][0].append(train)
                parts[which][1].append(val)
                self.entries[t.name, variant] = entry
                if which == "cls":  # a softmax problem owns its K columns; a sigmoid column is its own problem
                    first = max(problem, default=-1) + 1
                    multi = t.kind == "multiclass"
                    problem += [first] * train.shape[1] if multi else list(range(first, first + train.shape[1]))
                    softmax += [multi] * train.shape[1]

        def stack(arrays):
            if not arrays or sum(a.shape[1] for a in arrays) == 0:
                return None
            return torch.as_tensor(np.concatenate(arrays, 1), dtype=torch.float32, device=device)

        (self.reg_train, self.reg_val), (self.cls_train, self.cls_val) = [tuple(map(stack, parts[k])) for k in parts]
        self.problem = torch.tensor(problem, dtype=torch.long, device=device)
        self.softmax = torch.tensor(softmax, dtype=torch.bool, device=device)


def _fit_select(feats, Z: dict, batch: _Batch, apply, parts=("reg", "cls")) -> dict:
    """Fit the batch's columns over the grid for every design, keep per design and problem the μ with the lowest
    validation loss, and return per entry its weights W [H, D, cols] and intercepts b [H, cols] (standardised
    basis), μ per design, and test output per design. apply(X, W): logits of rows X [H, rows, D] without
    intercepts (torch.bmm; for single units torch.mul). parts: which of ridge / classifiers to fit."""
    chosen = {}
    if "reg" in parts and batch.reg_train is not None:
        W, b = fit_ridge(feats, batch.reg_train)  # [M, H, D, P], [P]
        val_err = torch.stack([((apply(Z["val"], Wm) + b - batch.reg_val) ** 2).mean(1) for Wm in W])  # [M, H, P]
        m = val_err.argmin(0)
        W = W.gather(0, m[None, :, None, :].expand(1, *W.shape[1:]))[0]
        chosen["reg"] = (W, b.expand(len(W), -1), m)
    if "cls" in parts and batch.cls_train is not None:
        W, b, m, _ = fit_classifiers(feats, batch.cls_train, batch.problem, batch.softmax,
                                     lambda W: apply(Z["val"], W), batch.cls_val)  # fmt: skip
        chosen["cls"] = (W, b, m)
    test = {k: apply(Z["test"], W) + b[:, None, :] for k, (W, b, _) in chosen.items()}
    out = {}
    for key, entry in batch.entries.items():
        which = "reg" if entry.target.kind == "regression" else "cls"
        if which not in parts:
            continue
        if which in chosen:
            W, b, m = (x[..., entry.cols] for x in chosen[which])
            logits = test[which][..., entry.cols]
        else:  # a map whose every cell is constant on train: nothing to fit
            W, b = Z["test"].new_zeros(feats.h, Z["test"].shape[2], 0), Z["test"].new_zeros(feats.h, 0)
            m, logits = torch.zeros(feats.h, 0, dtype=torch.long), Z["test"].new_zeros(feats.h, len(Z["test"][0]), 0)
        regs = [float(np.median([GRID[i] for i in mh.tolist()])) if mh.numel() else math.nan for mh in m]
        out[key] = {"W": W, "b": b, "reg": regs, "cells": entry.cells, "constant": entry.constant,
                    "output": [_output(entry, logits_h) for logits_h in logits]}  # fmt: skip
    return out


def _output(entry: _Entry, logits: Tensor) -> Tensor:
    """Test logits of an entry's columns → the output `probes.metrics.score` takes for its kind."""
    t = entry.target
    if t.kind in ("regression", "binary"):
        return logits[:, 0]
    if t.kind == "multiclass":
        return torch.softmax(logits, 1)
    if entry.cells is None:  # conv1x1: rows are (observation, cell) pairs
        return logits.reshape(-1, math.prod(t.grid))
    full = _saturated(entry.constant, logits.device).repeat(len(logits), 1)
    full[:, torch.as_tensor(entry.cells, device=logits.device)] = logits
    return full


def _saturated(values: np.ndarray, device) -> Tensor:
    """Logits that predict 0/1 `values` with near certainty (the cells constant on train)."""
    return torch.as_tensor(np.where(values > 0, SATURATED_LOGIT, -SATURATED_LOGIT), dtype=torch.float32, device=device)


def _estimate(metric: str, kind: str, values: Tensor, degenerate: Tensor) -> tuple[float, float, float, int, str]:
    """(estimate, 2.5th and 97.5th percentile of the resamples, resamples degenerate for the metric, note).

    Degenerate resamples hold NaN (`probes.metrics`; a map's hold their filled-in value) and are left out; when
    fewer than MIN_RESAMPLES of the resamples are left, the interval is NaN and the note says why."""
    boot = values[1:]
    n_boot, n_degenerate = len(boot), int(degenerate[1:].sum())
    boot = boot[~torch.isnan(boot)].double()
    if n_boot == 0:
        return float(values[0]), math.nan, math.nan, 0, ""
    if len(boot) < MIN_RESAMPLES * n_boot:
        if n_degenerate == 0:  # the estimate itself is undefined (say, no positive in the test set)
            return float(values[0]), math.nan, math.nan, 0, ""
        lack = (f"a near-constant test label (variance below {REL_VARIANCE:g} of the test set's)"
                if metric == "r2" else "no row of some class of the test set")  # fmt: skip
        note = (f"{metric}: no interval, {n_degenerate} of {n_boot} bootstrap resamples have {lack}; the test set "
                "holds too few episodes that vary this label (collect more steps)")  # fmt: skip
        return float(values[0]), math.nan, math.nan, n_degenerate, note
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype, device=boot.device))
    note = ""
    if kind == "map" and metric != "accuracy" and n_degenerate > MIN_RESAMPLES * n_boot:
        note = (f"{metric}: in {n_degenerate} of {n_boot} bootstrap resamples some cells lack a class of the test "
                "set and keep their test-set value (cells that few test episodes vary)")  # fmt: skip
    return float(values[0]), float(lo), float(hi), n_degenerate, note


def _values(metrics: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in metrics.items()}


def _baseline(t: Target, split: Split, device) -> Tensor:
    """The train mean / majority class (per cell for maps), as a constant output for every test row."""
    train, n_test = t.values[split.train], len(split.test)
    if t.kind == "regression":
        return torch.full((n_test,), float(train.mean()), device=device)
    if t.kind == "multiclass":
        freq = np.bincount(train, minlength=len(t.classes)) / len(train)
        return torch.as_tensor(freq, dtype=torch.float32, device=device).expand(n_test, -1)
    majority = _saturated((train.mean(0) > 0.5).astype(np.float32), device)
    return majority.expand(n_test) if t.kind == "binary" else majority.expand(n_test, -1)


def _best_units(feats: Features, Z: dict, batch: _Batch) -> dict:
    """The best-single-unit control: per design and column, the train feature most associated with the label
    (|covariance|; for a softmax problem the between-class share of variance, summed over its classes), then the
    same fit and selection as the probe, on that one feature."""
    out = {}
    for which in ("reg", "cls"):
        Y = getattr(batch, f"{which}_train")
        if Y is None:
            continue
        assoc = feats.rmatmul((Y - Y.mean(0)).expand(feats.h, -1, -1), None, exact=True)  # [H, D, P]
        strength = assoc.abs()
        if which == "cls":
            share = assoc**2 / Y.mean(0).clamp_min(1e-6)
            per_problem = torch.zeros(*share.shape[:2], int(batch.problem.max()) + 1, device=share.device)
            per_problem.index_add_(2, batch.problem, share)
            strength = torch.where(batch.softmax, per_problem[..., batch.problem], strength)
        unit = strength.argmax(1, keepdim=True)  # [H, 1, P]
        units = {k: X.gather(2, unit.expand(-1, X.shape[1], -1)) for k, X in Z.items()}
        out |= _fit_select(UnitFeatures(units["train"]), units, batch, torch.mul, parts=(which,))
    return out


def _direction(hook, t: Target, probe: str, fitted: dict, h: int, mean, std, keep, shape, cells) -> Direction:
    """Design h's chosen probe in the original activation basis: w = w_std / std, b = b_std - w · mean. Features
    left out of the fit (constant in every design; `keep` are the others, whose std is `std`) get weight 0."""
    W = torch.zeros(fitted["W"].shape[2], len(mean), device=mean.device)
    W[:, keep] = (fitted["W"][h] / std[:, None]).T  # [cols, D]
    b = fitted["b"][h] - W @ mean
    std = torch.ones_like(mean).index_copy_(0, keep, std)
    classes = [c.item() if hasattr(c, "item") else c for c in t.classes] if t.kind == "multiclass" else []
    out_shape: tuple = ()
    if t.kind == "multiclass":
        out_shape = (len(t.classes),)
    elif t.kind == "map" and not cells:  # every grid cell; those constant on train have weight 0
        full_W = torch.zeros(math.prod(t.grid), W.shape[1], device=W.device)
        full_b = _saturated(fitted["constant"], W.device)
        index = torch.as_tensor(fitted["cells"], device=W.device)
        full_W[index], full_b[index] = W, b
        W, b, out_shape = full_W, full_b, t.grid
    return Direction(hook, t.name, t.kind, probe, W.reshape((*out_shape, *shape)).cpu(), b.reshape(out_shape).cpu(),
                     mean.reshape(shape).cpu(), std.reshape(shape).cpu(), reg=fitted["reg"][h],
                     classes=classes)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the table
def tidy(scores: list[ProbeScore], *, run, step, split: Split, skipped: dict[str, str], hooks) -> pd.DataFrame:
    """One row per (hook, label, probe, metric, control); see `probes.sweep` for the layout."""
    rows = []
    n_train, n_test = len(split.train), len(split.test)
    for s in scores:
        for metric, (value, lo, hi) in s.metrics.items():
            controls = {c: s.controls.get(c, {}).get(metric, math.nan) for c in CONTROLS}
            finite = [v for v in controls.values() if not math.isnan(v)]
            selectivity = value - max(finite) if finite else math.nan
            for control, control_value in controls.items():
                rows.append([run, step, s.hook, s.label, label_set(s.label), s.kind, s.probe, metric, value, lo, hi,
                             control, control_value, value - control_value, selectivity, s.reg, n_train, n_test,
                             s.degenerate.get(metric, 0), s.notes.get(metric, "")])  # fmt: skip
    for name, why in skipped.items():
        warnings.warn(f"probes: skipped label {why}", stacklevel=3)
        for hook in hooks:
            rows.append([run, step, hook, name, label_set(name), None, None, "skipped", *[math.nan] * 3, None,
                         *[math.nan] * 4, n_train, n_test, 0, why])  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"value": float, "ci_low": float, "ci_high": float, "control_value": float,
                         "control_gap": float, "selectivity": float, "reg": float,
                         "n_boot_degenerate": "int64"})  # fmt: skip


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The best selectivity per label over steps, hooks and probes, and where it was reached: R² for regression,
    balanced accuracy for classes and maps."""
    columns = ["label", "label_set", "kind", "metric", "step", "hook", "probe", "value", "selectivity"]
    main = table[table["metric"].isin(["r2", "balanced_accuracy"])].dropna(subset=["selectivity"])
    if main.empty:
        return pd.DataFrame(columns=columns)
    best = main.loc[main.groupby("label")["selectivity"].idxmax()]
    return best[columns].sort_values(["label_set", "label"])
