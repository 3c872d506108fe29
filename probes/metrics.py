"""Held-out metrics, computed for many resamples at once.

Every function takes row weights `w [R, N]` (row 0 all ones: the estimate; rows 1.. episode-bootstrap resamples,
see `probes.episodes.bootstrap_weights`) and returns one value per resample, so a confidence interval costs a
few matrix products rather than R Python loops. Undefined values (a class absent from a resample) are NaN.

- regression: R^2 (against the resample's own mean, as sklearn's r2_score)
- binary / multiclass: accuracy, balanced accuracy (mean recall over the classes present), AUROC (binary;
  macro one-vs-rest over the classes present for multiclass); tied scores count one half
- map (one binary read-out per grid cell): accuracy is the mean per-cell accuracy over all cells; balanced
  accuracy and AUROC are means over the cells that are ever positive in the test set
"""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = {
    "regression": ("r2",),
    "binary": ("accuracy", "balanced_accuracy", "auroc"),
    "multiclass": ("accuracy", "balanced_accuracy", "auroc"),
    "map": ("accuracy", "balanced_accuracy", "auroc"),
}


def score(kind: str, y: Tensor, output: Tensor, w: Tensor) -> dict[str, Tensor]:
    """Every metric of `kind` for each resample. y and output by kind:
    regression y [N] float, output [N] prediction; binary y [N] 0/1, output [N] logit; multiclass y [N] class
    index, output [N, K] scores; map y [N, cells] 0/1, output [N, cells] logits."""
    w, output = w.float(), output.float()
    y = y.long() if kind == "multiclass" else y.float()
    if kind == "regression":
        return {"r2": r2(y, output, w)}
    if kind == "binary":
        y, output = y[:, None], output[:, None]
    if kind in ("binary", "map"):
        pred = (output > 0).to(y.dtype)
        ever = y.amax(0) > 0  # cells (or the one binary column) with a positive in the test set
        recall = recalls(y[:, ever], pred[:, ever], w)  # [R, cells, 2]
        return {
            "accuracy": ((w @ (pred == y).float()) / w.sum(1, keepdim=True)).mean(1),
            "balanced_accuracy": recall.nanmean(2).nanmean(1),
            "auroc": auroc(output[:, ever], y[:, ever], w).nanmean(1),
        }
    onehot = torch.nn.functional.one_hot(y.long(), output.shape[1]).float()
    correct = (output.argmax(1) == y).float()
    seen = w @ onehot  # [R, K] weight of each class
    recall = torch.where(seen > 0, (w @ (onehot * correct[:, None])) / seen, torch.nan)
    return {
        "accuracy": w @ correct / w.sum(1),
        "balanced_accuracy": recall.nanmean(1),
        "auroc": auroc(output, onehot, w).nanmean(1),
    }


def r2(y: Tensor, pred: Tensor, w: Tensor) -> Tensor:
    """y, pred [N] → [R]."""
    sw = w.sum(1)
    centred = y - y.mean()  # centring first keeps the weighted variance accurate in float32
    mean = w @ centred / sw
    ss_tot = w @ (centred * centred) - sw * mean * mean
    ss_res = w @ ((y - pred) ** 2)
    return torch.where(ss_tot > 1e-12 * sw, 1 - ss_res / ss_tot, torch.nan)


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
