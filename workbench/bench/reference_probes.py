"""The scikit-learn probe loop a researcher would write for a whole probe sweep, with every control and the bootstrap
intervals: the reference `workbench.bench.probe_sweep` times ours against.

Per hook: a StandardScaler fitted on the train rows; per label (and per control variant) Ridge or
LogisticRegression (lbfgs; scikit-learn's defaults otherwise, `tol` as asked) at every strength of the grid
`probes.fit.GRID`, strongest first and warm-started, keeping the strength with the lowest validation loss;
scored on the test rows. The same data, split, labels and control labels as ours (the shuffled train rows, the
control task's labels and the episode-bootstrap replicates are taken from `probes`, so both sides score the same
resamples); the fitting and every statistic are scikit-learn's and numpy's:

- probes: ridge (regression labels), logistic (binary), multinomial (multiclass), per_cell (one logistic
  regression per grid cell that varies on train; the others predict their train prior), conv1x1 (on a conv map
  whose grid is the label's: one logistic regression over (observation, cell) rows of the channels, centred per
  cell on the train rows);
- controls: shuffled (train labels dealt out across train episodes, validation labels real), control_task (the
  control task's labels on train, validation and test), best_unit (the train feature with the largest |covariance|
  with the label, for a multiclass label the largest between-class share of variance; the same fit on it alone),
  baseline (the train mean or majority class), random_init (the same probes on a random-init replay, no
  controls, no intervals);
- metrics per bootstrap replicate (its episode counts as `sample_weight`): `r2_score`, `accuracy_score`,
  `balanced_accuracy_score`, `roc_auc_score` (a multiclass label: the mean over its test classes of one-vs-rest),
  and info_gain (1 - the probe's test log-loss at its validation temperature / the train prior's; squared error
  for regression), in numpy, with the same clipping. A replicate that lacks a class of the test set (balanced
  accuracy, AUROC) or whose test label is nearly constant (R²) is left out of the interval, as ours leaves it.

`reference_hook` returns, per (label, probe), the test estimate and 95% percentile interval of every metric, the
validation values, each control's test and validation values, and for the real classifiers the largest absolute
gradient of the penalised objective at the solution (the convergence measure both sides report).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from probes.fit import CURVATURE, GRID
from probes.metrics import EPS, LOGIT_CLIP, METRICS, REL_VARIANCE, TEMPERATURES
from probes.probe import MIN_RESAMPLES, PROBES, SATURATED_LOGIT


@dataclass
class Clock:
    """Seconds spent fitting (scaling, fits, predictions) and on the statistics (metrics and their replicates)."""

    fit: float = 0.0
    stats: float = 0.0
    convergence_warnings: int = 0
    fits: int = 0

    @contextmanager
    def timing(self, what: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, what, getattr(self, what) + time.perf_counter() - start)


@dataclass
class Entry:
    """One probe's numbers: metrics {m: (value, lo, hi)}, val {m: value}, controls {control: {m: value}},
    control_val {control: {m: value}}, grad (largest |gradient| at the chosen strength, real classifiers)."""

    reg: float
    metrics: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    controls: dict = field(default_factory=dict)
    control_val: dict = field(default_factory=dict)
    grad: float = math.nan


# ---------------------------------------------------------------------------------------------- fitting
def _lbfgs(tol: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(warm_start=True, tol=tol, max_iter=1000)


def _fit_logistic(Z_train, y_train, Z_val, y_val, kind: str, n_classes: int, tol: float, clock: Clock):
    """The grid path of one classifier: (coef [k, D], intercept [k], classes, μ) at the lowest validation log-loss;
    None when the train labels hold one class."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import log_loss

    classes = np.unique(y_train)
    if len(classes) < 2:
        return None
    # two classes: scikit-learn fits one sigmoid column, whose penalty equals a two-column softmax's at c = 1/4
    c, n = CURVATURE["softmax" if kind == "multiclass" and len(classes) > 2 else "sigmoid"], len(y_train)
    model, best = _lbfgs(tol), None
    for mu in sorted(GRID, reverse=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.set_params(C=1 / (c * mu * n)).fit(Z_train, y_train)
        clock.convergence_warnings += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        clock.fits += 1
        loss = log_loss(y_val, model.predict_proba(Z_val), labels=model.classes_)
        if best is None or loss < best[0]:
            best = (loss, model.coef_.copy(), model.intercept_.copy(), mu)
    return best[1], best[2], model.classes_.copy(), best[3]


def _fit_ridge(Z_train, y_train, Z_val, y_val, clock: Clock):
    from sklearn.linear_model import Ridge

    best = None
    for mu in sorted(GRID, reverse=True):
        model = Ridge(alpha=mu * len(y_train)).fit(Z_train, y_train)
        clock.fits += 1
        err = float(np.mean((model.predict(Z_val) - y_val) ** 2))
        if best is None or err < best[0]:
            best = (err, model, mu)
    return best[1], best[2]


def _classifier_output(fitted, Z, kind: str, n_classes: int, prior: np.ndarray):
    """Logits (binary) or probabilities [n, K] (multiclass) of a fitted classifier; the prior where none was fitted."""
    if fitted is None:
        return (
            np.broadcast_to(prior, (len(Z), *prior.shape[1:])).copy()
            if kind == "multiclass"
            else np.full(len(Z), float(prior))
        )
    coef, intercept, classes, _ = fitted
    logits = Z @ coef.T + intercept
    if kind == "binary":
        return logits[:, 0]
    full = np.full((len(Z), n_classes), -np.inf)
    full[:, classes] = logits if len(classes) > 2 else np.concatenate([-logits / 2, logits / 2], 1)
    full -= full.max(1, keepdims=True)
    p = np.exp(full)
    return p / p.sum(1, keepdims=True)


def _grad(Z, y, fitted, kind: str, n_classes: int) -> float:
    """max |∂/∂(W, b)| of mean cross-entropy + (cμ/2)|W|², the objective both sides minimise (in sklearn's terms
    C = 1/(cμN)), at a fitted classifier."""
    coef, intercept, classes, mu = fitted
    c = CURVATURE["softmax" if coef.shape[0] > 1 else "sigmoid"]
    logits = Z @ coef.T + intercept
    if coef.shape[0] == 1:  # two classes: scikit-learn fits one sigmoid column
        p = 1 / (1 + np.exp(-logits[:, 0]))
        r = (p - (y == classes[1]))[:, None]
    else:
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        r = p - (y[:, None] == classes[None, :])
    g_w = Z.T @ r / len(y) + c * mu * coef.T
    return float(max(np.abs(g_w).max(), np.abs(r.mean(0)).max()))


# ---------------------------------------------------------------------------------------------- statistics
def _prior(kind: str, train: np.ndarray, n_classes: int) -> np.ndarray:
    if kind == "regression":
        return np.array(float(train.mean()))
    if kind == "multiclass":
        counts = np.bincount(train, minlength=n_classes) + 0.5
        return (counts / counts.sum())[None]
    p = (train.reshape(len(train), -1).sum(0, dtype=np.float64) + 0.5) / (len(train) + 1)
    logit = np.log(p / (1 - p))
    return logit[0] if kind == "binary" else logit[None]


def _row_loss(kind: str, y: np.ndarray, output: np.ndarray) -> np.ndarray:
    if kind == "regression":
        return (y - output) ** 2
    if kind == "multiclass":
        return -np.log(np.clip(output[np.arange(len(y)), y], EPS, 1 - EPS))
    z = np.clip(output, -LOGIT_CLIP, LOGIT_CLIP)
    loss = np.logaddexp(0, z) - y * z
    return loss.sum(1) if kind == "map" else loss


def _temper(kind: str, output: np.ndarray, t: float) -> np.ndarray:
    if kind == "regression" or t == 1.0:
        return output
    if kind == "multiclass":
        logits = t * np.log(np.maximum(output, 1e-30))
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)
    return output * t


def temperature(kind: str, y: np.ndarray, output: np.ndarray) -> float:
    """The factor on the logits in TEMPERATURES with the lowest validation log-loss (1 for regression)."""
    if kind == "regression":
        return 1.0
    losses = [_row_loss(kind, y, _temper(kind, output, t)).sum() for t in TEMPERATURES]
    return TEMPERATURES[int(np.argmin(losses))]


def metrics(kind: str, y, output, weights: np.ndarray, prior=None, loss_output=None) -> dict[str, np.ndarray]:
    """Every metric of `kind` per replicate (rows of `weights` [R, n]; NaN where a replicate is degenerate)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score, roc_auc_score

    out = {m: np.full(len(weights), np.nan) for m in METRICS[kind]}
    if prior is not None:
        loss = _row_loss(kind, y, output if loss_output is None else loss_output)
        prior_loss = _row_loss(kind, y, np.broadcast_to(prior, np.shape(output)))
        out["info_gain"] = 1 - (weights @ loss) / np.maximum(weights @ prior_loss, 1e-300)
    else:
        out.pop("info_gain", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "regression":
            centred = y - y.mean()
            floor = REL_VARIANCE * float((centred * centred).mean())
            for r, w in enumerate(weights):
                mean = (w @ centred) / w.sum()
                if (w @ (centred - mean) ** 2) > floor * w.sum():
                    out["r2"][r] = r2_score(y, output, sample_weight=w)
            if "info_gain" in out:
                out["info_gain"][np.isnan(out["r2"])] = np.nan
            return out
        if kind == "binary":
            pred, present = (output > 0).astype(y.dtype), np.unique(y)
            for r, w in enumerate(weights):
                out["accuracy"][r] = accuracy_score(y, pred, sample_weight=w)
                if all(w[y == c].sum() > 0 for c in present):
                    out["balanced_accuracy"][r] = balanced_accuracy_score(y, pred, sample_weight=w)
                    if len(present) == 2:
                        out["auroc"][r] = roc_auc_score(y, output, sample_weight=w)
            return out
        if kind == "multiclass":
            pred, present = output.argmax(1), np.unique(y)
            for r, w in enumerate(weights):
                out["accuracy"][r] = accuracy_score(y, pred, sample_weight=w)
                if all(w[y == c].sum() > 0 for c in present):
                    out["balanced_accuracy"][r] = balanced_accuracy_score(y, pred, sample_weight=w)
                    aucs = [roc_auc_score(y == c, output[:, c], sample_weight=w) for c in present if (y != c).any()]
                    out["auroc"][r] = np.mean(aucs) if aucs else np.nan
            return out
        # map: y, output [n, cells]
        pred = (output > 0).astype(y.dtype)
        ever = np.flatnonzero(y.max(0) > 0)
        both = [c for c in ever if (y[:, c] == 0).any()]
        balanced = np.full((len(weights), len(ever)), np.nan)
        auc = np.full((len(weights), len(both)), np.nan)
        for r, w in enumerate(weights):
            out["accuracy"][r] = np.mean(
                [accuracy_score(y[:, c], pred[:, c], sample_weight=w) for c in range(y.shape[1])]
            )
            for i, c in enumerate(ever):
                if all(w[y[:, c] == v].sum() > 0 for v in np.unique(y[:, c])):
                    balanced[r, i] = balanced_accuracy_score(y[:, c], pred[:, c], sample_weight=w)
            for i, c in enumerate(both):
                if w[y[:, c] == 0].sum() > 0 and w[y[:, c] == 1].sum() > 0:
                    auc[r, i] = roc_auc_score(y[:, c], output[:, c], sample_weight=w)
        # a cell undefined in a replicate takes its value on the whole test set (replicate 0), as ours does
        balanced = np.where(np.isnan(balanced), balanced[:1], balanced)
        auc = np.where(np.isnan(auc), auc[:1], auc)
        out["balanced_accuracy"] = balanced.mean(1) if len(ever) else out["balanced_accuracy"]
        out["auroc"] = auc.mean(1) if len(both) else out["auroc"]
        return out


def _estimate(values: np.ndarray) -> tuple[float, float, float]:
    boot = values[1:]
    kept = boot[~np.isnan(boot)]
    if len(boot) == 0 or len(kept) < MIN_RESAMPLES * len(boot):
        return float(values[0]), math.nan, math.nan
    lo, hi = np.percentile(kept, [2.5, 97.5])
    return float(values[0]), float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- one hook
@dataclass
class Problem:
    """One probe to fit and score: the design's train/val/test rows, and a target's labels on them."""

    kind: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    n_classes: int = 0


def _fit_predict(kind: str, Z: dict, y_train, y_val, n_classes: int, prior, tol: float, clock: Clock):
    """Fit one probe on Z["train"] along the grid; (outputs {split: output}, μ, fitted classifier or None)."""
    if kind == "regression":
        model, mu = _fit_ridge(Z["train"], y_train, Z["val"], y_val, clock)
        return {k: model.predict(Z[k]) for k in ("val", "test")}, mu, None
    fitted = _fit_logistic(Z["train"], y_train, Z["val"], y_val, kind, n_classes, tol, clock)
    mu = math.nan if fitted is None else fitted[3]
    return {k: _classifier_output(fitted, Z[k], kind, n_classes, prior) for k in ("val", "test")}, mu, fitted


def _fit_map(Z: dict, train, val, prior, tol: float, clock: Clock):
    """per_cell: one logistic regression per cell that varies on train; logits [n, cells] for val and test."""
    out = {k: np.tile(prior, (len(Z[k]), 1)) for k in ("val", "test")}
    mus = []
    for cell in np.flatnonzero(train.min(0) != train.max(0)):
        fitted = _fit_logistic(Z["train"], train[:, cell], Z["val"], val[:, cell], "binary", 2, tol, clock)
        for k in out:
            out[k][:, cell] = _classifier_output(fitted, Z[k], "binary", 2, prior[0, cell])
        mus.append(fitted[3])
    return out, float(np.median(mus)) if mus else math.nan


def _best_unit(Z_train: np.ndarray, y: np.ndarray, kind: str, n_classes: int) -> int:
    """The train feature most associated with the label: |covariance|; for a multiclass label the sum over classes
    of covariance² / class frequency (the between-class share of variance)."""
    if kind == "multiclass":
        onehot = np.eye(n_classes)[y]
        freq = np.maximum(onehot.mean(0), 1e-6)
        cov = Z_train.T @ (onehot - onehot.mean(0)) / len(y)
        return int(np.argmax((cov**2 / freq).sum(1)))
    return int(np.argmax(np.abs(Z_train.T @ (y - y.mean()) / len(y))))


def reference_hook(
    X: np.ndarray,
    shape: tuple,
    targets,
    split,
    weights: np.ndarray,
    clock: Clock,
    *,
    shuffled=None,
    control_targets=None,
    with_controls: bool = True,
    tol: float = 1e-4,
) -> dict[tuple[str, str], Entry]:
    """Every target's probes (and, with controls, their controls and intervals) on one hook's activations X [n, *shape]
    (module docstring); {(label, probe): Entry}. weights [1 + n_boot, test rows]: the bootstrap replicates."""
    from sklearn.preprocessing import StandardScaler

    rows = {"train": split.train, "val": split.val, "test": split.test}
    n = len(X)
    flat = X.reshape(n, -1).astype(np.float64)
    with clock.timing("fit"):
        scaler = StandardScaler().fit(flat[split.train])
        Z = {k: scaler.transform(flat[r]) for k, r in rows.items()}
    one = np.ones((1, len(split.test)))
    one_val = np.ones((1, len(split.val)))
    designs = [("flat", Z)]
    if len(shape) == 3 and any(t.kind == "map" and tuple(shape[1:]) == t.grid for t in targets):
        designs.append(("conv1x1", _conv_rows(X, split)))
    out = {}
    for t in targets:
        for design, Zd in designs:
            if design == "conv1x1" and not (t.kind == "map" and tuple(shape[1:]) == t.grid):
                continue
            probe = "conv1x1" if design == "conv1x1" else PROBES[t.kind]
            out[t.name, probe] = _probe(t, Zd, design, split, weights, one, one_val, clock, shuffled,
                                        (control_targets or {}).get(t.name), with_controls, tol)  # fmt: skip
    return out


def _conv_rows(X: np.ndarray, split) -> dict:
    """(observation, cell) rows of a conv map's channels [n, C, H, W], centred per cell on the train rows, then
    standardised per channel on the train rows: {split: [rows * cells, C]}."""
    from sklearn.preprocessing import StandardScaler

    n, c = X.shape[:2]
    cells = X.reshape(n, c, -1).astype(np.float64)
    cells = cells - cells[split.train].mean(0, keepdims=True)
    rows = {k: cells[getattr(split, k)].transpose(0, 2, 1).reshape(-1, c) for k in ("train", "val", "test")}
    scaler = StandardScaler().fit(rows["train"])
    return {k: scaler.transform(v) for k, v in rows.items()}


def _labels(t, rows, design: str):
    values = t.values[rows]
    return values.reshape(-1) if design == "conv1x1" else values


def _probe(t, Z, design, split, weights, one, one_val, clock, shuffled, control, with_controls, tol) -> Entry:
    kind, n_classes = t.kind, len(t.classes) if t.kind == "multiclass" else 0
    fit_kind = "binary" if design == "conv1x1" else kind
    cells = int(np.prod(t.grid)) if kind == "map" else 0

    def fit(target, train_rows, Zd, unit=False):
        """(val output, test output, μ, fitted) of the probe on `target`'s labels at train_rows (val: real rows)."""
        y_train, y_val = _labels(target, train_rows, design), _labels(target, split.val, design)
        prior_train = _prior(kind, target.values[train_rows], n_classes)
        with clock.timing("fit"):
            if fit_kind == "map":
                if unit:  # per cell, the cell's own best unit
                    out = {k: np.tile(prior_train, (len(Zd[k]), 1)) for k in ("val", "test")}
                    mus = []
                    for cell in np.flatnonzero(y_train.min(0) != y_train.max(0)):
                        j = _best_unit(Zd["train"], y_train[:, cell], "binary", 2)
                        one_unit = {k: Zd[k][:, [j]] for k in ("train", "val")} | {"test": Zd["test"][:, [j]]}
                        fitted = _fit_logistic(one_unit["train"], y_train[:, cell], one_unit["val"], y_val[:, cell],
                                               "binary", 2, tol, clock)  # fmt: skip
                        for k in out:
                            out[k][:, cell] = _classifier_output(fitted, one_unit[k], "binary", 2, prior_train[0, cell])
                        mus.append(fitted[3])
                    return out["val"], out["test"], float(np.median(mus)) if mus else math.nan, None
                out, mu = _fit_map(Zd, y_train, y_val, prior_train, tol, clock)
                return out["val"], out["test"], mu, None
            if unit:
                j = _best_unit(Zd["train"], y_train, fit_kind, n_classes)
                Zd = {k: v[:, [j]] for k, v in Zd.items()}
            fit_prior = _prior("binary", y_train, 2) if design == "conv1x1" else prior_train
            outputs, mu, fitted = _fit_predict(fit_kind, Zd, y_train, y_val, n_classes, fit_prior, tol, clock)
            if design == "conv1x1":
                outputs = {k: v.reshape(-1, cells) for k, v in outputs.items()}
            return outputs["val"], outputs["test"], mu, fitted

    def scored(target, val_out, test_out, w, prior):
        """Test values per replicate of w, and validation values (info_gain at the validation temperature)."""
        y_val, y_test = target.values[split.val], target.values[split.test]
        with clock.timing("stats"):
            temp = temperature(kind, y_val, val_out)
            test = metrics(kind, y_test, test_out, w, prior, _temper(kind, test_out, temp))
            val = metrics(kind, y_val, val_out, one_val, prior, _temper(kind, val_out, temp))
        return test, {m: float(v[0]) for m, v in val.items()}

    prior = _prior(kind, t.values[split.train], n_classes)
    val_out, test_out, mu, fitted = fit(t, split.train, Z)
    entry = Entry(reg=mu)
    test, entry.val = scored(t, val_out, test_out, weights if with_controls else one, prior)
    entry.metrics = {m: _estimate(v) for m, v in test.items()}
    if fitted is not None and kind in ("binary", "multiclass") and design == "flat":
        entry.grad = _grad(Z["train"], _labels(t, split.train, design), fitted, kind, n_classes)
    if not with_controls:
        return entry
    variants = [("shuffled", t, prior, False), ("best_unit", t, prior, True)]
    if control is not None:
        variants.append(("control_task", control, _prior(kind, control.values[split.train], n_classes), False))
    for name, target, prior_v, unit in variants:
        source = target if name != "shuffled" else _Shuffled(t, shuffled, split.train)
        val_o, test_o, _, _ = fit(source, split.train, Z, unit=unit)
        test_v, entry.control_val[name] = scored(target, val_o, test_o, one, prior_v)
        entry.controls[name] = {m: float(v[0]) for m, v in test_v.items()}
    with clock.timing("stats"):
        base = _baseline(kind, t.values[split.train], len(split.test), n_classes)
        base_val = _baseline(kind, t.values[split.train], len(split.val), n_classes)
        entry.controls["baseline"] = {m: float(v[0]) for m, v in
                                      metrics(kind, t.values[split.test], base, one).items()}  # fmt: skip
        entry.control_val["baseline"] = {m: float(v[0]) for m, v in
                                         metrics(kind, t.values[split.val], base_val, one_val).items()}  # fmt: skip
        entry.controls["baseline"]["info_gain"] = entry.control_val["baseline"]["info_gain"] = 0.0
    return entry


class _Shuffled:
    """A target whose train rows carry the labels of the shuffled source rows (validation and test rows: real)."""

    def __init__(self, target, source: np.ndarray, train: np.ndarray):
        self.values = target.values.copy()
        self.values[train] = target.values[source]
        self.kind, self.classes, self.grid = target.kind, target.classes, target.grid


def _baseline(kind: str, train: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """The train mean / majority class (per cell for maps) as a constant output for n rows."""
    if kind == "regression":
        return np.full(n, float(train.mean()))
    if kind == "multiclass":
        return np.tile(np.bincount(train, minlength=n_classes) / len(train), (n, 1))
    majority = np.where(train.reshape(len(train), -1).mean(0) > 0.5, SATURATED_LOGIT, -SATURATED_LOGIT)
    return np.full(n, majority[0]) if kind == "binary" else np.tile(majority, (n, 1))
