"""Probes on one dataset, with their methodology built in: what `fit_probes` does to every (hook, label).

1. Split rows by episode into train / validation / test (60/20/20, from `seed`; `probes.episodes`).
2. Standardise each feature with the train rows' mean and standard deviation (constant features stay 0).
3. Fit every label's probe over the regularisation grid `probes.fit.GRID`, batched (`probes.fit`), and keep,
   per probe, the strength with the lowest validation loss (squared error for ridge, at every strength;
   cross-entropy for classifiers, along the path from strong to weak until it stops improving).
4. Score on the test rows, with a 95% percentile confidence interval from resampling test episodes
   (`n_boot` resamples), leaving out the resamples degenerate for the metric (`probes.metrics`: a near-constant
   label for R², a class of the test set missing); with fewer than MIN_RESAMPLES of them left, no interval (NaN,
   and a note). Every resample's value is kept (`ProbeResult.resamples`, `probes.resamples`), so differences of
   probes on the same test episodes get paired intervals (`probes.gap`, `probes.conditional_probes`). Every
   probe and control is also scored on the validation rows (`val_value`, `control_val_value`, `val_selectivity`):
   what picks a best hook or probe (`summary`, `probes.gap`) reads those, and reports the test scores.
5. Score the controls on the same test rows:
   - shuffled: the same probe refitted on train labels dealt out across episodes (`shuffle_across_episodes`);
   - random_init: the same probe on the activations of randomly initialised policies of the same architecture,
     one per init seed (`random_init_seeds`, default 5, seeds `seed`, `seed + 1`, ...; one replay of the dataset
     each); control_value is their median, control_sd / control_min / control_max their spread (one draw moved a
     selectivity by 0.2 between seeds, measured);
   - control_task (classification labels; Hewitt & Liang 2019): the same probe fitted and scored on a control
     task, where each distinct input (observation) is given the label of one row drawn at random, fixed per
     input: the same label distribution, but a function of the input that no feature of the world explains, so a
     probe scores above chance on it only by memorising inputs seen in training (`probes.controls`);
   - baseline: the train majority class (per cell for maps) or the train mean (its info_gain is 0: it is the
     prior);
   - best_unit: a probe on the one standardised feature (channel, for conv1x1) most correlated with the label
     on train (for multiclass: the highest between-class share of variance).
   selectivity = score − the highest control.

Any hook shape can be probed: activations are flattened to one feature vector a row, so a hook with one value a
row (hook_value, shape []) is a one-feature probe, which is its own best single unit (selectivity ≤ 0 there).

Probes by label kind: regression → ridge; binary → logistic; multiclass → multinomial (softmax); map → per_cell
(one logistic read-out from the whole activation per grid cell; cells constant on train predict the train prior,
half a count smoothed) and, on hooks shaped [C, G, G] like the map, conv1x1 (one logistic read-out of the C
channels shared by all cells, i.e. a 1x1 convolution, on channels centred per cell; see `_score_conv1x1`).
Metrics: `probes.metrics`; the headline, comparable across kinds, is info_gain.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probes.controls import RandomInitDraws, control_task_targets, random_init_datasets, random_init_seeds_for
from probes.directions import Direction
from probes.episodes import Split, bootstrap_weights, shuffle_across_episodes, split_by_episode
from probes.errors import ProbeError, known_names
from probes.fit import GRID, Features, UnitFeatures, fit_classifiers, fit_ridge
from probes.labels import Target, label_set, resolve_labels
from probes.metrics import HEADLINE, REL_VARIANCE, info_gain, score, score_resamples, temper, temperature
from probes.resamples import Resamples
from workbench.common.compute import one_torch_thread, resolve_precision
from workbench.policies.names import with_roles

CONTROLS = ("shuffled", "random_init", "control_task", "baseline", "best_unit")
PROBES = {"regression": "ridge", "binary": "logistic", "multiclass": "multinomial", "map": "per_cell"}
COLUMNS = ["run", "step", "hook", "label", "label_set", "kind", "probe", "metric", "value", "ci_low", "ci_high",
           "val_value", "control", "control_value", "control_sd", "control_min", "control_max", "control_val_value",
           "control_gap", "selectivity", "val_selectivity", "reg", "n_train", "n_test", "n_boot_degenerate",
           "note"]  # fmt: skip
MIN_RESAMPLES = 0.5  # an interval needs at least this share of the bootstrap resamples to be non-degenerate
SATURATED_LOGIT = 20.0  # the majority-class baseline's logit (near certainty)


@dataclass
class ProbeScore:
    """One fitted probe's scores: metrics {name: (test value, ci_low, ci_high)}, val {name: validation value},
    resamples {name: test value in each resample [1 + n_boot], row 0 the estimate, NaN where degenerate};
    controls {name: {metric: test value}}, control_val {name: {metric: validation value}}, spread
    {name: {metric: (sd, min, max)}} of a control with several draws (random_init); per metric, the bootstrap
    resamples degenerate for it (`probes.metrics`) and a note on its interval."""

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
    val: dict[str, float] = field(default_factory=dict)
    resamples: dict[str, np.ndarray] = field(default_factory=dict)
    control_val: dict[str, dict[str, float]] = field(default_factory=dict)
    spread: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)


@dataclass
class ProbeResult:
    """`table`: the tidy table (see `probes.sweep` for its columns); `directions`: the fitted probes;
    `resamples`: every probe's test score in each bootstrap resample (`probes.resamples`; for `probes.gap`)."""

    table: pd.DataFrame
    directions: list[Direction]
    resamples: Resamples | None = None

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
    random_init_seeds: int = 5,
    n_boot: int = 200,
    precision: str = "auto",
) -> ProbeResult:
    """Every (hook, label) probe of a dataset (an `ActivationDataset` or `probes.ArrayDataset`), with controls.

    hooks: default as `default_hooks`; labels: default the reward and task sets
    (`probes.labels`). random_init: "auto" to replay the dataset through `random_init_seeds` randomly initialised
    policies built from the dataset's meta (init seeds seed, seed + 1, ...; an ArrayDataset without a "policy" in
    its meta gets none), a dataset (or a list of datasets) of the same rows replayed through such policies, or
    None to leave that control out (its rows then hold NaN). The control_task control needs the inputs' identity
    (`probes.controls.input_types`: a collected dataset's observations, an ArrayDataset's `input_types`)."""
    if dataset.n == 0:
        raise ProbeError("the dataset is empty: collect some steps first (workbench.data.collect).")
    hooks = default_hooks(list(dataset.hook_names), hooks)
    targets, skipped = resolve_labels(dataset, labels)
    split = split_by_episode(np.asarray(dataset.episode_ids()), seed)
    options = {"seed": seed, "device": device, "precision": precision}
    draws = RandomInitDraws()
    for replayed in _random_init_sources(dataset, hooks, random_init, random_init_seeds, seed):
        for hook in hooks:
            draws.add(score_hook(replayed.activations(hook), hook, targets, split, with_controls=False, **options))
    control_targets = control_task_targets(dataset, targets, seed)
    scores = [s for hook in hooks
              for s in score_hook(dataset.activations(hook), hook, targets, split, n_boot=n_boot,
                                  control_targets=control_targets, **options)]  # fmt: skip
    step = (dataset.meta.get("policy") or {}).get("step")
    run = (dataset.meta.get("policy") or {}).get("run_dir")
    for s in scores:
        draws.apply(s)
        if s.direction is not None:
            s.direction.step = step
    table = tidy(scores, run=run, step=step, split=split, skipped=skipped, hooks=hooks)
    directions = [s.direction for s in scores if s.direction is not None]
    return ProbeResult(table, directions, Resamples.from_scores([(step, scores)]))


def _random_init_sources(dataset, hooks: list[str], random_init, n_seeds: int, seed: int):
    """The random-init replays `fit_probes` was asked for, one at a time (each is dropped once scored)."""
    if random_init is None:
        return
    if isinstance(random_init, str):
        if random_init != "auto":
            raise ProbeError(f"random_init={random_init!r}: pass 'auto', a replayed dataset (or a list of them), "
                             "or None to leave the random-init control out.")  # fmt: skip
        if "policy" not in dataset.meta:
            return
        yield from random_init_datasets(dataset, hooks, random_init_seeds_for(n_seeds, seed))
        return
    yield from random_init if isinstance(random_init, list | tuple) else [random_init]


DEFAULT_ROLES = ("stem", "conv", "fc", "resid_post")  # layer outputs and the transformer's residual stream


def default_hooks(valid: list[str], hooks: list[str] | str | None = None) -> list[str]:
    """The hooks asked for, checked against `valid`; by default every layer output (`workbench.policies.names`
    roles DEFAULT_ROLES: the CNN's conv and fc outputs, the transformer's stem and residual stream after each block),
    else every hook but hook_obs, whose pixels are no representation of the policy's."""
    if hooks is None:
        hooks = with_roles(valid, *DEFAULT_ROLES) or [h for h in valid if h != "hook_obs"]
        hooks = hooks or list(valid)
    return known_names(hooks, valid, "hook",
                       "hooks=[] asks for no probe: pass hook names (`workbench hooks CKPT` lists them).")  # fmt: skip


def random_init_dataset(dataset, hooks: list[str], seed: int = 0):
    """The dataset's rows replayed through a freshly initialised policy of the same architecture (seeded), in one
    torch thread: the same activations whatever this process's thread count (`probes.sweep.score_checkpoints`)."""
    return next(random_init_datasets(dataset, hooks, [seed]))


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
    intervals: bool | None = None,
    control_targets: dict[str, Target] | None = None,
    feature_scale: Tensor | None = None,
) -> list[list[ProbeScore]]:
    """All targets' probes on each of several activation tensors of one shape [n, *shape] on the same rows (one
    hook at several checkpoints), fitted as one batch (`probes.fit`); one list of scores per tensor. Without
    controls (a random-init replay): test and validation values, no directions, and no confidence intervals
    unless `intervals`. control_targets: the control-task target of each label that has one
    (`probes.controls.control_task_targets`). feature_scale [features]: a factor on each standardised feature, so
    that the penalty on its weight is μ / factor² (`probes.conditional`; without controls only, as the directions
    are not rescaled). Runs in one CPU thread (`workbench.common.compute.one_torch_thread`)."""
    n, shape = len(split.episode_ids), tuple(stack[0].shape[1:])
    for acts in stack:
        if len(acts) != n or tuple(acts.shape[1:]) != shape:
            raise ProbeError(
                f"{hook}: activations of shape {list(acts.shape)} for {n} labelled rows (stack of shape "
                f"[{n}, {', '.join(map(str, shape))}]): pass one row per observation."
            )
    intervals = with_controls if intervals is None else intervals
    if feature_scale is not None and (with_controls or len(feature_scale) != math.prod(shape)):
        raise ProbeError(f"feature_scale needs with_controls=False and one factor per feature ({math.prod(shape)}), "
                         f"not {len(feature_scale)}.")  # fmt: skip
    control_targets = (control_targets or {}) if with_controls else {}
    with one_torch_thread():
        precision = _precision(precision, device)
        X = torch.stack([acts.reshape(n, -1).to(device=device, dtype=torch.float32) for acts in stack])
        bad = 0 if bool(torch.isfinite(X.sum(1)).all()) else int((~torch.isfinite(X)).any(2).sum())  # sum: one pass
        if bad:
            raise ProbeError(f"{hook}: {bad} rows hold NaN or inf activations; a probe cannot be fitted on them. "
                             "Check the policy's weights (a diverged checkpoint?) or drop those rows.")  # fmt: skip
        weights = bootstrap_weights(split.episode_ids[split.test], n_boot if intervals else 0, seed).to(device)
        scalar = [t for t in targets if t.kind != "map"]
        maps = [t for t in targets if t.kind == "map"]
        scale = None if feature_scale is None else torch.as_tensor(feature_scale, dtype=torch.float32, device=device)
        context = _Context(split, weights, seed, device, precision, with_controls, control_targets, scale)
        out = _score_design(X, shape, hook, scalar + maps, context)
        conv_maps = [t for t in maps if len(shape) == 3 and shape[1:] == t.grid]
        if conv_maps:
            conv = _score_conv1x1(X.reshape(*X.shape[:2], shape[0], -1), shape, hook, conv_maps, context)
            out = [a + b for a, b in zip(out, conv, strict=True)]
        return out


@dataclass
class _Context:
    """What every design of a `score_stack` call shares."""

    split: Split
    weights: Tensor  # [1 + n_boot, test rows]
    seed: int
    device: str
    precision: str
    with_controls: bool
    control_targets: dict[str, Target]
    feature_scale: Tensor | None = None  # [features] of the flattened design (not for conv1x1 rows)


def _score_conv1x1(X, shape, hook, targets, context: _Context):
    """One read-out of the C channels shared by every cell (a 1x1 convolution): rows are (observation, cell)
    pairs. Channels are first centred per cell (train means), so that neither the probe nor its controls can
    read *where* a cell is (floor vs wall, which a shuffled-label probe would turn into an object detector),
    only what its channels say; in the original basis that is a 1x1 convolution with a bias per cell."""
    cell_mean = X[:, context.split.train].mean(1, keepdim=True)  # [H, 1, C, cells]
    h, n, c, cells = X.shape
    rows = (X - cell_mean).transpose(2, 3).reshape(h, n * cells, c)
    scores = _score_design(rows, shape[:1], hook, targets, context, cells=cells)
    for design, cell_mean_h in zip(scores, cell_mean[:, 0].cpu(), strict=True):
        for s in design:
            d = s.direction
            if d is not None:  # fold the per-cell centring into the bias: b[y, x] = b - w · mean[:, y, x]
                d.bias = (d.bias - d.weight @ cell_mean_h).reshape(shape[1:])
                d.mean = (d.mean[:, None] + cell_mean_h).reshape(shape)
    return scores


def _precision(precision: str, device: str) -> str:
    return resolve_precision(precision, device)


def _score_design(X, shape, hook, targets, context: _Context, cells=None):
    """Fit, select, score and control every target on a stack of designs X [H, rows, D]. `cells`: rows are
    (observation, cell) pairs (the conv1x1 probe), `cells` per observation; `shape` is one row's activation
    shape. Returns one list of scores per design."""
    split, weights, seed, device, with_controls = (context.split, context.weights, context.seed, context.device,
                                                   context.with_controls)  # fmt: skip
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
    if context.feature_scale is not None and cells is None:
        Z = {k: z * context.feature_scale[keep] for k, z in Z.items()}
    del X
    feats = Features(Z["train"], GRID, context.precision)
    shuffled = None
    if with_controls:  # train labels dealt out across train episodes: a source train row for every train row
        shuffled = shuffle_across_episodes(split.train, split.episode_ids[split.train], seed + 1)
    controls = {t.name: context.control_targets[t.name] for t in targets if t.name in context.control_targets}
    batch = _Batch(targets, split, shuffled, cells, device, controls)
    fitted = _fit_select(feats, Z, batch, torch.bmm)
    units = _best_units(feats, Z, _Batch(targets, split, None, cells, device)) if with_controls else {}
    one, one_val = weights[:1], torch.ones(1, len(split.val), device=device)
    scores = [[] for _ in range(feats.h)]
    for t in targets:
        y = {k: torch.as_tensor(t.values[getattr(split, k)], device=device) for k in ("test", "val")}
        prior = _prior(t, split.train, device)
        baseline, baseline_val = None, None
        if with_controls:
            baseline = _baseline_scores(t, y["test"], prior, one, split.train)
            baseline_val = _baseline_scores(t, y["val"], prior, one_val, split.train)
        control = controls.get(t.name)
        if control is not None:
            y_control = {k: torch.as_tensor(control.values[getattr(split, k)], device=device) for k in ("test", "val")}
            prior_control = _prior(control, split.train, device)
        real = fitted[t.name, "real"]
        for h in range(feats.h):
            values, degenerate, val = _scored(t.kind, y, real, h, weights, prior)
            s = ProbeScore(hook, t.name, t.kind, "conv1x1" if cells else PROBES[t.kind], real["reg"][h], {}, val=val)
            for m, v in values.items():
                value, lo, hi, s.degenerate[m], s.notes[m] = _estimate(m, t.kind, v, degenerate[m])
                s.metrics[m] = (value, lo, hi)
                s.resamples[m] = v.cpu().numpy()
            if with_controls:
                for name, outputs in (("shuffled", fitted[t.name, "shuffled"]), ("best_unit", units[t.name, "real"])):
                    test, _, s.control_val[name] = _scored(t.kind, y, outputs, h, one, prior)
                    s.controls[name] = _values(test)
                s.controls["baseline"], s.control_val["baseline"] = baseline, baseline_val
                if control is not None:
                    test, _, s.control_val["control_task"] = _scored(t.kind, y_control, fitted[t.name, "control_task"],
                                                                     h, one, prior_control)  # fmt: skip
                    s.controls["control_task"] = _values(test)
                s.direction = _direction(hook, t, s.probe, real, h, full_mean[h], std[h], keep, shape, cells)
            scores[h].append(s)
    return scores


def _scored(kind: str, y: dict, fitted: dict, h: int, weights: Tensor, prior: Tensor):
    """Design h's outputs of one fitted entry scored: (test values per resample, their degenerate masks, validation
    values), info_gain at the validation temperature (`probes.metrics.temperature`). y: test and val labels."""
    output, val_output = fitted["output"][h], fitted["val_output"][h]
    t = temperature(kind, y["val"], val_output)
    values, degenerate = score_resamples(kind, y["test"], output, weights, prior, temper(kind, output, t))
    one_val = torch.ones(1, len(y["val"]), device=weights.device)
    val = _values(score(kind, y["val"], val_output, one_val, prior, temper(kind, val_output, t)))
    return values, degenerate, val


def _rows(index: np.ndarray, cells: int | None) -> np.ndarray:
    return index if not cells else (index[:, None] * cells + np.arange(cells)).reshape(-1)


@dataclass
class _Entry:
    """One target's columns in a joint fit; `variant` is "real", "shuffled" or "control_task" (whose `target` is
    the control task's)."""

    target: Target
    variant: str
    cols: slice
    cells: np.ndarray | None = None  # per-cell map: the cells fitted (those not constant on train)
    prior: np.ndarray | None = None  # per-cell map: every cell's train prior logit (what constant cells predict)


class _Batch:
    """The columns of one joint fit: regression targets (ridge) and classification targets (sigmoid or softmax
    columns); train labels real, shuffled (`shuffled`: the source train row of each train row; validation labels
    real) or a control task's (`controls`: label name → the control task's target, train and validation)."""

    def __init__(self, targets: list[Target], split: Split, shuffled: np.ndarray | None, cells, device,
                 controls: dict[str, Target] | None = None):  # fmt: skip
        self.entries: dict[tuple[str, str], _Entry] = {}
        parts = {"reg": ([], []), "cls": ([], [])}
        problem, softmax = [], []
        for t in targets:
            variants = [("real", t, split.train)]
            if shuffled is not None:
                variants.append(("shuffled", t, shuffled))
            if controls and t.name in controls:
                variants.append(("control_task", controls[t.name], split.train))
            for variant, source, train_rows in variants:
                train, val = source.values[train_rows], source.values[split.val]
                if cells:  # conv1x1: one row per (observation, cell), one sigmoid column per map
                    train, val = train.reshape(-1), val.reshape(-1)
                entry = _Entry(source, variant, slice(0))
                if t.kind == "multiclass":
                    eye = np.eye(len(t.classes), dtype=np.float32)
                    train, val = eye[train], eye[val]
                elif t.kind == "map" and not cells:  # per-cell: a sigmoid column per cell not constant on train
                    varies = train.min(0) != train.max(0)
                    entry.cells, entry.prior = np.flatnonzero(varies), _prior_logit(train)
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
    basis), μ per design, and test and validation output per design. apply(X, W): logits of rows X [H, rows, D]
    without intercepts (torch.bmm; for single units torch.mul). parts: which of ridge / classifiers to fit."""
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
    logits = {split: {k: apply(Z[split], W) + b[:, None, :] for k, (W, b, _) in chosen.items()}
              for split in ("test", "val")}  # fmt: skip
    out = {}
    for key, entry in batch.entries.items():
        which = "reg" if entry.target.kind == "regression" else "cls"
        if which not in parts:
            continue
        if which in chosen:
            W, b, m = (x[..., entry.cols] for x in chosen[which])
            outputs = {split: logits[split][which][..., entry.cols] for split in logits}
        else:  # a map whose every cell is constant on train: nothing to fit
            W, b = Z["test"].new_zeros(feats.h, Z["test"].shape[2], 0), Z["test"].new_zeros(feats.h, 0)
            m = torch.zeros(feats.h, 0, dtype=torch.long)
            outputs = {split: Z[split].new_zeros(feats.h, len(Z[split][0]), 0) for split in ("test", "val")}
        regs = [float(np.median([GRID[i] for i in mh.tolist()])) if mh.numel() else math.nan for mh in m]
        out[key] = {"W": W, "b": b, "reg": regs, "cells": entry.cells, "prior": entry.prior,
                    "output": [_output(entry, logits_h) for logits_h in outputs["test"]],
                    "val_output": [_output(entry, logits_h) for logits_h in outputs["val"]]}  # fmt: skip
    return out


def _output(entry: _Entry, logits: Tensor) -> Tensor:
    """Logits of an entry's columns → the output `probes.metrics.score` takes for its kind."""
    t = entry.target
    if t.kind in ("regression", "binary"):
        return logits[:, 0]
    if t.kind == "multiclass":
        return torch.softmax(logits, 1)
    if entry.cells is None:  # conv1x1: rows are (observation, cell) pairs
        return logits.reshape(-1, math.prod(t.grid))
    full = torch.as_tensor(entry.prior, dtype=torch.float32, device=logits.device).repeat(len(logits), 1)
    full[:, torch.as_tensor(entry.cells, device=logits.device)] = logits
    return full


def _saturated(values: np.ndarray, device) -> Tensor:
    """Logits that predict 0/1 `values` with near certainty (the majority-class baseline)."""
    return torch.as_tensor(np.where(values > 0, SATURATED_LOGIT, -SATURATED_LOGIT), dtype=torch.float32, device=device)


def _prior_logit(train: np.ndarray) -> np.ndarray:
    """Per column of 0/1 train labels [n, cols]: the log-odds of the train frequency, smoothed by half a count
    (finite for a column constant on train)."""
    p = (train.sum(0, dtype=np.float64) + 0.5) / (len(train) + 1)
    return np.log(p / (1 - p)).astype(np.float32)


def _prior(t: Target, train_rows: np.ndarray, device) -> Tensor:
    """The train prior's output for one row, in the form `probes.metrics.score` takes (broadcast over rows): the
    train mean; the log-odds (binary, per cell for maps) or probabilities (multiclass) of the class frequencies,
    smoothed by half a count."""
    train = t.values[train_rows]
    if t.kind == "regression":
        return torch.tensor([float(train.mean())], device=device)
    if t.kind == "multiclass":
        counts = np.bincount(train, minlength=len(t.classes)) + 0.5
        return torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=device)[None]
    logit = torch.as_tensor(_prior_logit(train.reshape(len(train), -1)), device=device)
    return logit if t.kind == "binary" else logit[None]


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
                if kind == "regression" else "no row of some class of the test set")  # fmt: skip
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


def _baseline(t: Target, train_rows: np.ndarray, n: int, device) -> Tensor:
    """The train mean / majority class (per cell for maps), as a constant output for `n` rows."""
    train = t.values[train_rows]
    if t.kind == "regression":
        return torch.full((n,), float(train.mean()), device=device)
    if t.kind == "multiclass":
        freq = np.bincount(train, minlength=len(t.classes)) / len(train)
        return torch.as_tensor(freq, dtype=torch.float32, device=device).expand(n, -1)
    majority = _saturated((train.mean(0) > 0.5).astype(np.float32), device)
    return majority.expand(n) if t.kind == "binary" else majority.expand(n, -1)


def _baseline_scores(t: Target, y: Tensor, prior: Tensor, ones: Tensor, train_rows: np.ndarray) -> dict[str, float]:
    """The baseline control's scores on rows y: the majority / mean's, and info_gain of the prior itself (0, or NaN
    where info_gain is undefined)."""
    values = _values(score(t.kind, y, _baseline(t, train_rows, len(y), y.device), ones))
    prior_output = prior.expand(len(y), *prior.shape[1:])
    values[HEADLINE] = _values({HEADLINE: info_gain(t.kind, y, prior_output, prior, ones)})[HEADLINE]
    return values


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
        full_b = torch.as_tensor(fitted["prior"], dtype=torch.float32, device=W.device).clone()
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
    nan3 = (math.nan,) * 3
    for s in scores:
        for metric, (value, lo, hi) in s.metrics.items():
            controls = {c: s.controls.get(c, {}).get(metric, math.nan) for c in CONTROLS}
            controls_val = {c: s.control_val.get(c, {}).get(metric, math.nan) for c in CONTROLS}
            val_value = s.val.get(metric, math.nan)
            selectivity, val_selectivity = _selectivity(value, controls), _selectivity(val_value, controls_val)
            for control, control_value in controls.items():
                spread = s.spread.get(control, {}).get(metric, nan3)
                rows.append([run, step, s.hook, s.label, label_set(s.label), s.kind, s.probe, metric, value, lo, hi,
                             val_value, control, control_value, *spread, controls_val[control],
                             value - control_value, selectivity, val_selectivity, s.reg, n_train, n_test,
                             s.degenerate.get(metric, 0), s.notes.get(metric, "")])  # fmt: skip
    for name, why in skipped.items():
        warnings.warn(f"probes: skipped label {why}", stacklevel=3)
        for hook in hooks:
            rows.append([run, step, hook, name, label_set(name), None, None, "skipped", *[math.nan] * 4, None,
                         *[math.nan] * 9, n_train, n_test, 0, why])  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    floats = ["value", "ci_low", "ci_high", "val_value", "control_value", "control_sd", "control_min", "control_max",
              "control_val_value", "control_gap", "selectivity", "val_selectivity", "reg"]  # fmt: skip
    return table.astype({**dict.fromkeys(floats, float), "n_boot_degenerate": "int64"})


def _selectivity(value: float, controls: dict[str, float]) -> float:
    finite = [v for v in controls.values() if not math.isnan(v)]
    return value - max(finite) if finite else math.nan


SUMMARY_COLUMNS = ["label", "label_set", "kind", "metric", "step", "hook", "probe", "value", "ci_low", "ci_high",
                   "selectivity", "val_value", "val_selectivity"]  # fmt: skip


def summary(table: pd.DataFrame, metric: str = HEADLINE) -> pd.DataFrame:
    """The best probe per label over steps, hooks and probes, and where it was reached: chosen by its validation
    selectivity (`val_selectivity`: the validation score minus the highest control's validation score), reported
    with its test score, interval and selectivity. Choosing on the test split would report the maximum of many
    noisy test scores, biased upward. metric: info_gain by default, the one scale for every label kind
    (`probes.metrics`); any metric of the table may be named (R² exists for regression labels only, the
    classification metrics for class and map labels only)."""
    missing = [c for c in ("val_value", "val_selectivity") if c not in table.columns]
    if missing:
        raise ProbeError(f"this probe table has no {', '.join(missing)} column (written by an older version of "
                         "probes): re-run probe_sweep or fit_probes to get validation scores.")  # fmt: skip
    fitted = table[table["metric"] != "skipped"]
    if not fitted.empty and metric not in set(fitted["metric"]):
        raise ProbeError(f"metric {metric!r} is not in this probe table; its metrics: "
                         f"{', '.join(sorted(set(fitted['metric'])))}.")  # fmt: skip
    best = best_by_validation(fitted[fitted["metric"] == metric])
    if best.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return best[SUMMARY_COLUMNS].sort_values(["label_set", "label"])


def best_by_validation(rows: pd.DataFrame, by=("label",)) -> pd.DataFrame:
    """Per group of `by`, the row of the probe with the highest validation selectivity (rows of one metric; rows
    without a validation selectivity are never chosen): the choice `summary` reports per label, and the dashboard
    shows per step x hook x label."""
    rows = rows.dropna(subset=["val_selectivity"])
    rows = rows.drop_duplicates(["step", "hook", "label", "probe", "metric"])  # one row per probe, not per control
    if rows.empty:
        return rows
    return rows.loc[rows.groupby(list(by))["val_selectivity"].idxmax()]
