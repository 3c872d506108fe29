"""Held-out metrics, computed for many resamples at once.

Every function takes row weights `w [R, N]` (row 0 all ones: the estimate; rows 1.. episode-bootstrap resamples,
see `probes.episodes.bootstrap_weights`) and returns one value per resample, so a confidence interval costs a
few matrix products rather than R Python loops.

- regression: R^2 (against the resample's own mean, as sklearn's r2_score)
- binary / multiclass: accuracy, balanced accuracy (mean recall over the classes of the test set), AUROC (binary;
  macro one-vs-rest over the classes of the test set for multiclass); tied scores count one half
- map (one binary read-out per grid cell): accuracy is the mean per-cell accuracy over all cells; balanced
  accuracy and AUROC are means over the cells that are ever positive in the test set (AUROC: and ever negative)
- every kind, when the train prior is given: info_gain, the headline metric, threshold-free and on one scale for
  every kind: 1 - loss(probe) / loss(prior) over the test rows, with the prior the train set's own prediction
  (`probes.probe._prior`: the train mean; the class frequencies, smoothed by half a count; per cell for maps).
  Loss: cross-entropy (log-loss) for binary, multiclass and map labels (summed over a map's cells), so class
  balance is the prior's business and no threshold enters; squared error for regression, where info_gain is the
  out-of-sample R² against the train mean (its Gaussian analogue). 0: the probe knows no more than the label's
  frequencies; 1: it predicts every test label with certainty; below 0: worse than the prior (overconfident).
  Probabilities are clipped to [1e-6, 1 - 1e-6] (a log-loss of at most 13.8 nats a row and cell). `probes.probe`
  scores each classifier's info_gain at its validation temperature (`temperature`: one factor on its logits, the
  one with the lowest validation log-loss), so that it measures what the probe's scores know, not how confident
  its regularisation happened to leave it; accuracy, balanced accuracy and AUROC use the untempered output.

Degenerate resamples (`score_resamples`). A resample can lack what a metric needs on the test set: R^2 divides by
the resample's label variance, which is (nearly) 0 when the few test episodes with a non-zero label were all left
out (then float32 rounding alone made R^2 -3e7, measured); balanced accuracy and AUROC need every class of the test
set. Such a resample is degenerate for that metric: its R^2 (and a regression label's info_gain), balanced accuracy
or AUROC is NaN (R^2: label variance below REL_VARIANCE of the test set's), and `probes.probe` leaves it out of the
interval. For a map the per-cell mean would average other cells than the estimate does, so a cell that lacks a
class in a resample takes its test-set value there instead (and the resample counts as degenerate, but keeps its
value). info_gain of a class label is never degenerate (the prior's loss is positive on every row).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HEADLINE = "info_gain"  # the metric that ranks probes across label kinds (`probes.summary`)
METRICS = {
    "regression": ("r2", HEADLINE),
    "binary": ("accuracy", "balanced_accuracy", "auroc", HEADLINE),
    "multiclass": ("accuracy", "balanced_accuracy", "auroc", HEADLINE),
    "map": ("accuracy", "balanced_accuracy", "auroc", HEADLINE),
}
REL_VARIANCE = 1e-3  # a resample's test-label variance below this fraction of the test set's: degenerate for R^2
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] for the log-loss
LOGIT_CLIP = math.log((1 - EPS) / EPS)
TEMPERATURES = tuple(2.0 ** (k / 2) for k in range(-6, 15))  # 1/8 .. 128: the calibration grid (`temperature`)


def score(
    kind: str, y: Tensor, output: Tensor, w: Tensor, prior: Tensor | None = None, loss_output: Tensor | None = None
) -> dict[str, Tensor]:
    """Every metric of `kind` for each resample (`score_resamples` without the degenerate masks)."""
    return score_resamples(kind, y, output, w, prior, loss_output)[0]


def score_resamples(
    kind: str, y: Tensor, output: Tensor, w: Tensor, prior: Tensor | None = None, loss_output: Tensor | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(values, degenerate): every metric of `kind` for each resample, and per metric a bool [R] of the resamples
    that are degenerate for it (module docstring; accuracy never is). y and output by kind:
    regression y [N] float, output [N] prediction; binary y [N] 0/1, output [N] logit; multiclass y [N] class
    index, output [N, K] probabilities; map y [N, cells] 0/1, output [N, cells] logits. prior: the train prior's
    output in the same form (broadcastable to `output`); with it, info_gain is scored too, of `loss_output`
    (default `output`; `probes.probe` passes the output at its validation temperature, `temper`)."""
    values, degenerate = _score(kind, y, output, w)
    if prior is not None:
        values[HEADLINE] = info_gain(kind, y, output if loss_output is None else loss_output, prior, w)
        degenerate[HEADLINE] = torch.isnan(values[HEADLINE])
    return values, degenerate


def temperature(kind: str, y: Tensor, output: Tensor) -> float:
    """The temperature in TEMPERATURES (a factor on the logits) with the lowest log-loss of `output` on rows y (the
    validation rows); 1 for regression. A probe's regularisation sets how confident it is, and a model with more
    features, or a weaker penalty, is more confident for that alone: on a label that both a small and a large
    design predict without error, the larger one's log-loss was lower by 2e-5 of the prior's, an "information
    gain" with an interval above 0 that was only sharper logits. One factor fitted on validation gives each probe
    the confidence its own scores support."""
    if kind == "regression":
        return 1.0
    y = y.long() if kind == "multiclass" else y.float()
    losses = [float(row_loss(kind, y, temper(kind, output.float(), t)).double().sum()) for t in TEMPERATURES]
    return TEMPERATURES[min(range(len(losses)), key=losses.__getitem__)]


def temper(kind: str, output: Tensor, t: float) -> Tensor:
    """`output` with its logits multiplied by t (multiclass: softmax(t · log p))."""
    if kind == "regression" or t == 1.0:
        return output
    if kind == "multiclass":
        return torch.softmax(t * output.clamp_min(1e-30).log(), -1)
    return output * t


def info_gain(kind: str, y: Tensor, output: Tensor, prior: Tensor, w: Tensor) -> Tensor:
    """1 - loss(output) / loss(prior) for each resample [R] (module docstring); for regression NaN where the
    resample is degenerate for R² (a near-constant test label)."""
    y = y.long() if kind == "multiclass" else y.float()
    output, prior = output.float(), prior.float().expand_as(output)
    w = w.double()
    value = 1 - (w @ row_loss(kind, y, output).double()) / (w @ row_loss(kind, y, prior).double()).clamp_min(1e-300)
    if kind == "regression":
        value = torch.where(torch.isnan(r2(y, output, w.float())), torch.nan, value)
    return value.float()


def row_loss(kind: str, y: Tensor, output: Tensor) -> Tensor:
    """Each row's loss [N]: squared error (regression), cross-entropy in nats (classes; summed over a map's
    cells), from logits (binary, map) or probabilities (multiclass) clipped to [EPS, 1 - EPS]."""
    if kind == "regression":
        return (y - output) ** 2
    if kind == "multiclass":
        p = output.gather(1, y[:, None])[:, 0]
        return -p.clamp(EPS, 1 - EPS).log()
    z = output.clamp(-LOGIT_CLIP, LOGIT_CLIP)
    loss = torch.nn.functional.softplus(z) - y * z
    return loss.sum(1) if kind == "map" else loss


def _score(kind: str, y: Tensor, output: Tensor, w: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    w, output = w.float(), output.float()
    y = y.long() if kind == "multiclass" else y.float()
    never = torch.zeros(len(w), dtype=torch.bool, device=w.device)
    if kind == "regression":
        value = r2(y, output, w)
        return {"r2": value}, {"r2": torch.isnan(value)}
    if kind == "binary":
        y, output = y[:, None], output[:, None]
    if kind in ("binary", "map"):
        pred = (output > 0).to(y.dtype)
        accuracy = ((w @ (pred == y).float()) / w.sum(1, keepdim=True)).mean(1)
        ever = y.amax(0) > 0  # cells (or the one binary column) with a positive in the test set
        y, pred, output = y[:, ever], pred[:, ever], output[:, ever]
        present = torch.stack([(y == 0).any(0), (y == 1).any(0)], -1)  # [cells, 2]: the test set's classes
        both = present.all(1)
        balanced, lacking = _balanced(recalls(y, pred, w), present)  # [R, cells]
        auc = auroc(output[:, both], y[:, both], w)  # NaN where a resample lacks a class of the cell
        if kind == "map":  # the same cells in every resample as in the estimate: undefined ones take their value
            ones = torch.ones(1, len(y), device=w.device)
            balanced = _fill(balanced, _balanced(recalls(y, pred, ones), present)[0])
            auc = _fill(auc, auroc(output[:, both], y[:, both], ones))
        values = {"accuracy": accuracy, "balanced_accuracy": balanced.mean(1), "auroc": auc.mean(1)}
        return values, {"accuracy": never, "balanced_accuracy": lacking.any(1), "auroc": lacking[:, both].any(1)}
    onehot = torch.nn.functional.one_hot(y.long(), output.shape[1]).float()
    correct = (output.argmax(1) == y).float()
    present = onehot.sum(0) > 0  # [K] the test set's classes
    seen = w @ onehot  # [R, K] weight of each class
    lacking = ((seen == 0) & present).any(1)
    recall = (w @ (onehot * correct[:, None]))[:, present] / seen[:, present].clamp_min(1e-30)
    auc = auroc(output[:, present], onehot[:, present], w).nanmean(1)  # NaN for a class that is all the rows
    nan = torch.tensor(torch.nan, device=w.device)
    values = {"accuracy": w @ correct / w.sum(1), "balanced_accuracy": torch.where(lacking, nan, recall.mean(1)),
              "auroc": torch.where(lacking, nan, auc)}  # fmt: skip
    return values, {"accuracy": never, "balanced_accuracy": lacking, "auroc": lacking}


def _balanced(recall: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Recalls [R, cells, 2] → (per-cell balanced accuracy over the test set's classes [R, cells], NaN where a
    resample lacks one of them; that lack as a bool [R, cells])."""
    lacking = (present & torch.isnan(recall)).any(2)
    mean = torch.where(present, recall.nan_to_num(0.0), 0.0).sum(2) / present.sum(1).clamp_min(1)
    return torch.where(lacking, torch.nan, mean), lacking


def _fill(values: Tensor, full: Tensor) -> Tensor:
    """values [R, cells] with each NaN replaced by the cell's value `full` [1, cells]."""
    return torch.where(torch.isnan(values), full.expand_as(values), values)


def r2(y: Tensor, pred: Tensor, w: Tensor) -> Tensor:
    """y, pred [N] → [R]; NaN where a resample's label variance is below REL_VARIANCE of the test set's (in float64:
    in float32 the rounding of a constant resample's variance is as large as a rare label's)."""
    w = w.double()
    sw = w.sum(1)
    centred = (y - y.mean()).double()  # centring first keeps the weighted variance accurate
    mean = w @ centred / sw
    ss_tot = w @ (centred * centred) - sw * mean * mean
    ss_res = w @ ((y - pred).double() ** 2)
    floor = REL_VARIANCE * float((centred * centred).mean())
    return torch.where((ss_tot > floor * sw) & (ss_tot > 0), 1 - ss_res / ss_tot, torch.nan).float()


def recalls(y: Tensor, pred: Tensor, w: Tensor) -> Tensor:
    """Binary y, pred [N, L] → [R, L, 2]: recall of the negatives and of the positives (NaN where absent)."""
    out = []
    for cls in (0.0, 1.0):
        member = (y == cls).float()
        seen = w @ member
        hit = w @ (member * (pred == cls).float())
        out.append(torch.where(seen > 0, hit / seen, torch.nan))
    return torch.stack(out, -1)


def auroc(scores: Tensor, y: Tensor, w: Tensor, budget: int = 1 << 23) -> Tensor:
    """Weighted AUROC of each column: scores, y [N, L] (y 0/1) → [R, L]; NaN where a class is absent.

    AUROC = P(score of a positive > score of a negative) + P(equal)/2, with pairs weighted by their rows'
    weights. Per column: sort once; a cumulative sum of negative weight (per resample) gives, for each row,
    the negative weight strictly below its score group and within it."""
    n, n_cols = scores.shape
    out = torch.empty(w.shape[0], n_cols, device=scores.device)
    step = max(1, budget // max(1, w.shape[0] * n))  # columns per chunk, to bound memory
    for lo in range(0, n_cols, step):
        s, order = scores[:, lo : lo + step].sort(0)
        pos = y[:, lo : lo + step].gather(0, order).float()
        # tie groups: first and last sorted position of each row's group
        new = torch.ones_like(s, dtype=torch.bool)
        new[1:] = s[1:] != s[:-1]
        idx = torch.arange(n, device=s.device)[:, None].expand_as(s)
        first = torch.where(new, idx, 0).cummax(0).values
        last_new = torch.ones_like(new)
        last_new[:-1] = new[1:]
        last = torch.where(last_new, idx, n - 1).flip(0).cummin(0).values.flip(0)
        wr = w[:, order]  # [R, N, cols] weights in sorted order
        neg_cum = (wr * (1 - pos)).cumsum(1)  # negative weight up to and including each sorted row
        before = (first - 1).clamp_min(0).expand(w.shape[0], -1, -1)  # the row before each tie group
        below = neg_cum.gather(1, before) * (first > 0)
        upto = neg_cum.gather(1, last.expand(w.shape[0], -1, -1))
        wpos = wr * pos
        num = (wpos * (below + upto) / 2).sum(1)
        den = wpos.sum(1) * neg_cum[:, -1]
        out[:, lo : lo + step] = torch.where(den > 0, num / den.clamp_min(1e-30), torch.nan)
    return out
