"""Batched linear probes in torch: every label's probe on a stack of designs (one hook at several checkpoints,
or several hooks of one width, all on the same rows), over a small regularisation grid, fitted together so that
each pass of the optimiser serves all of them.

A loop of scikit-learn fits spends its time in a hundred-odd full passes over X per probe and strength
(`workbench bench --only probes` compares the two). Here the passes are shared, and made few:

- Features are standardised on the train rows by the caller; `Features` keeps, per design of the stack
  X [H, N, D], their covariance Σ = XᵀX/N and one Cholesky factor of Σ + μI per grid value μ.
- Ridge (squared error): for every regression label at every μ the solution is (Σ + μI)⁻¹ Xᵀy/N, two
  triangular solves with the shared factor; the caller picks μ on validation.
- Classifiers (sigmoid for binary labels and map cells, softmax for multiclass labels): one L-BFGS over all
  probes at once, each probe with its own curvature memory, line search and stopping test, so one matrix product
  over X per iteration serves all of them; the stack's designs share every step of the loop (batched products),
  so its fixed costs are paid once per stack, not per design. The logistic loss's Hessian is bounded by cΣ
  (c = 1/4 sigmoid, 1/2 softmax; Böhning 1992), so the initial inverse Hessian (cΣ + λI)⁻¹ = (Σ + μI)⁻¹/c,
  the same Cholesky factor again, makes the problem well conditioned whatever the features' correlations. From
  W = 0 (intercepts at the class frequencies) the first step is exactly the ridge solution on the class
  indicators divided by c: the warm start from ridge, for free. The grid is walked as a path from the
  strongest penalty to the weakest, warm-started, and each probe leaves it when its validation loss stops
  improving (`fit_classifiers`).
- Penalties are in units of each loss's curvature bound (λ = cμ), which is what lets one factor per μ serve
  ridge and both classifiers. In scikit-learn's terms: Ridge(alpha=μN); LogisticRegression(C=1/(cμN)).

The optimiser's passes over X may run in bfloat16 (`precision="bf16"`, on CPUs with avx512_bf16 and on GPUs,
where it is faster); the Gram matrix (accumulated in float64), the factors, ridge and every prediction
that is scored stay in float32 or better.
"""

from __future__ import annotations

import itertools
from collections import deque

import torch
from torch import Tensor

from probes.errors import ProbeError
from workbench.common.compute import one_torch_thread

GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # μ; features are standardised, so Σ has a unit diagonal
CURVATURE = {"sigmoid": 0.25, "softmax": 0.5}


class Features:
    """A stack of standardised train designs X [H, N, D], with the Cholesky factors of Σ_h + μI for each μ."""

    def __init__(self, X: Tensor, grid=GRID, precision: str = "fp32"):
        self.X, (self.h, self.n, self.d), self.grid = X, X.shape, tuple(grid)
        self.fast = X.to(torch.bfloat16) if precision == "bf16" else X
        self.fast_t = self.fast.transpose(1, 2).contiguous()  # Xᵀ G reads contiguous rows, not a strided view
        gram = _gram(X) / self.n
        eye = torch.eye(self.d, device=X.device, dtype=gram.dtype)
        try:
            self.chol = [_cholesky(gram + mu * eye) for mu in self.grid]
        except ProbeError:
            # A wide design (many more features than train rows: most of Σ's eigenvalues are 0) can get eigenvalues
            # below -μ from the float32 products' rounding alone (measured: -3e-4 for 3,328 features on 353 rows, an
            # SB3 policy's first conv layer); from float64 products they stay at ~-1e-12.
            gram = _gram(X, exact=True) / self.n
            self.chol = [_cholesky(gram + mu * eye) for mu in self.grid]

    def matmul(self, W: Tensor, cols: Tensor) -> Tensor:
        """X @ W for the columns `cols` of a probe batch ([H, D, k] → [H, N, k])."""
        return torch.bmm(self.fast, W.to(self.fast.dtype)).float()

    def rmatmul(self, G: Tensor, cols: Tensor, exact: bool = False) -> Tensor:
        """Xᵀ G / N ([H, N, k] → [H, D, k])."""
        if exact:
            return torch.bmm(self.X.transpose(1, 2), G) / self.n
        return torch.bmm(self.fast_t, G.to(self.fast.dtype)).float() / self.n

    def solve(self, R: Tensor, m: int, cols: Tensor) -> Tensor:
        """(Σ + μ_m I)⁻¹ R, as two triangular solves (torch.cholesky_solve is much slower on CPU)."""
        L = self.chol[m]
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, R, upper=False), upper=True)

    def whiten(self, R: Tensor, m: int, cols: Tensor) -> Tensor:
        """L⁻¹ R, so that Rᵀ(Σ + μ_m I)⁻¹R = |L⁻¹ R|² at the cost of one triangular solve."""
        return torch.linalg.solve_triangular(self.chol[m], R, upper=False)


def _gram(X: Tensor, blocks: int = 4, rows: int = 8192, exact: bool = False) -> Tensor:
    """XᵀX per design, in float64 from float32 products over chunks of `rows` rows (a float32 sum over a million
    rows, as a conv1x1 design has, is off by ~1e-3: enough to make Σ + 1e-4 I indefinite), each from the blocks
    on and above the diagonal only (10 of 16 products: torch has no symmetric rank-k update). exact: float64
    products (about twice as slow on CPU)."""
    d = X.shape[2]
    edges = [d * i // blocks for i in range(blocks + 1)]
    out = torch.zeros(X.shape[0], d, d, device=X.device, dtype=torch.float64)
    for start in range(0, X.shape[1], rows):
        chunk = X[:, start : start + rows]
        chunk = chunk.double() if exact else chunk
        for lo, hi in itertools.pairwise(edges):
            strip = torch.bmm(chunk[:, :, lo:hi].transpose(1, 2), chunk[:, :, lo:]).double()
            out[:, lo:hi, lo:] += strip
            out[:, hi:, lo:hi] += strip[:, :, hi - lo :].transpose(1, 2)
    return out


class UnitFeatures:
    """One standardised feature per probe column and design ([H, N, P]): the best-single-unit control, with the
    interface of `Features` so that ridge and the classifiers fit it unchanged."""

    def __init__(self, X: Tensor, grid=GRID):
        self.X, (self.h, self.n, _), self.grid, self.d = X, X.shape, tuple(grid), 1
        self.var = (X * X).mean(1)  # [H, P]

    def matmul(self, W: Tensor, cols: Tensor) -> Tensor:
        return self.X[:, :, cols] * W

    def rmatmul(self, G: Tensor, cols: Tensor, exact: bool = False) -> Tensor:
        return (self.X[:, :, cols] * G).mean(1, keepdim=True)

    def solve(self, R: Tensor, m: int, cols: Tensor) -> Tensor:
        return R / (self.var[:, None, cols] + self.grid[m])

    def whiten(self, R: Tensor, m: int, cols: Tensor) -> Tensor:
        return R / (self.var[:, None, cols] + self.grid[m]).sqrt()


def _cholesky(A: Tensor) -> Tensor:
    """Float32 Cholesky factors of the float64 matrices A [H, D, D] (PSD + μI), in float32 where that is stable."""
    L, info = torch.linalg.cholesky_ex(A.float())
    if not bool(info.any()):
        return L
    # float32 rounding made one indefinite at a tiny μ: factor in float64, with a little jitter if even that fails
    scale = A.diagonal(dim1=1, dim2=2).mean(1)[:, None, None]
    eye = torch.eye(A.shape[1], device=A.device, dtype=A.dtype)
    for k in range(8):
        L, info = torch.linalg.cholesky_ex(A + (k > 0) * 10.0 ** (k - 11) * scale * eye)
        if not bool(info.any()):
            return L.float()
    raise ProbeError("the features' covariance cannot be factored even with jitter: are they finite?")


# ---------------------------------------------------------------------------------------------- ridge
def fit_ridge(feats: Features | UnitFeatures, Y: Tensor) -> tuple[Tensor, Tensor]:
    """Ridge for every column of Y [N, P] (shared by the stack) at every μ: W [len(grid), H, D, P], b [P]."""
    cols = torch.arange(Y.shape[1], device=Y.device)
    b = Y.mean(0)
    rhs = feats.rmatmul((Y - b).expand(feats.h, -1, -1), cols, exact=True)
    return torch.stack([feats.solve(rhs, m, cols) for m in range(len(feats.grid))]), b


# ---------------------------------------------------------------------------------------------- classifiers
class ClassLoss:
    """Mean cross-entropy of a batch of probes, one value per design and problem, and its gradient w.r.t. the
    logits.

    Columns are logits. A sigmoid problem owns one column; a softmax problem owns K columns (one per class, as
    scikit-learn's multinomial). Y [N, P] holds 0/1 targets (one-hot within a softmax problem), shared by the
    stack. Columns must come sigmoid first, then softmax problems grouped by K (`class_order` sorts them so), so
    that every group of problems is a view [H, N, problems, K] of Z rather than a gather."""

    def __init__(self, Y: Tensor, problem: Tensor, softmax: Tensor):
        self.Y, self.problem, self.n_problems = Y, problem, int(problem.max()) + 1
        self.n_sigmoid = int((~softmax).sum())
        sizes = torch.bincount(problem, minlength=self.n_problems)[problem].tolist()
        self.blocks = []  # (first column, last column + 1, K)
        col = self.n_sigmoid
        while col < len(problem):
            k = sizes[col]
            end = col
            while end < len(problem) and sizes[end] == k:
                end += k
            self.blocks.append((col, end, k))
            col = end

    def __call__(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        """Z [H, N, P] logits → (loss per problem [H, Q], dloss/dZ · N [H, N, P])."""
        h, n = Z.shape[:2]
        loss = torch.zeros(h, self.n_problems, device=Z.device)
        dZ = torch.empty_like(Z)
        s = self.n_sigmoid
        if s:
            z, y = Z[..., :s], self.Y[:, :s]
            loss.index_add_(1, self.problem[:s], (torch.nn.functional.softplus(z) - y * z).mean(1))
            torch.sub(torch.sigmoid(z), y, out=dZ[..., :s])
        for lo, hi, k in self.blocks:
            z, y = Z[..., lo:hi].view(h, n, -1, k), self.Y[:, lo:hi].view(n, -1, k)
            top = z.amax(-1, keepdim=True)
            e = (z - top).exp_()
            total = e.sum(-1, keepdim=True)
            per_row = (top + total.log()).squeeze(-1) - (y * z).sum(-1)
            loss.index_add_(1, self.problem[lo:hi:k], per_row.mean(1))
            dZ[..., lo:hi].view(h, n, -1, k).copy_(e.div_(total).sub_(y))
        return loss, dZ

    def intercepts(self) -> Tensor:
        """The optimal intercepts at W = 0 [P]: log-odds / log class frequencies of the train targets."""
        freq = self.Y.mean(0).clamp(1e-6, 1 - 1e-6)
        b = freq.log()
        s = self.n_sigmoid
        b[:s] = freq[:s].log() - (1 - freq[:s]).log()
        return b


def class_order(problem: Tensor, softmax: Tensor) -> Tensor:
    """A column order with sigmoid columns first, then softmax problems grouped by class count, each contiguous."""
    sizes = torch.bincount(problem)[problem]
    key = softmax.long() * (1 << 40) + torch.where(softmax, sizes, 0) * (1 << 20) + problem
    return torch.argsort(key, stable=True)


def fit_classifiers(
    feats: Features | UnitFeatures,
    Y: Tensor,
    problem: Tensor,
    softmax: Tensor,
    val_logits,
    Y_val: Tensor,
    max_iter: int = 50,
    rtol: float = 3e-3,
    memory: int = 10,
    min_delta: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Every classification problem of every design in the stack along the regularisation path, each stopped
    where validation says.

    Y [N, P] 0/1 train targets (shared by the stack), problem [P] the problem id of each column (0..Q-1),
    softmax [P] whether the column belongs to a softmax problem; val_logits(W) the validation rows' logits
    without intercepts ([H, D, P] → [H, N_val, P]), Y_val their targets. Returns W [H, D, P] and b [H, P] at the
    μ with the lowest validation loss per design and problem, that μ's grid index [H, P], and the iterations.

    The path runs from the strongest penalty to the weakest, each μ warm-started from the last (a few iterations
    each); a problem leaves the path as soon as its validation loss improves by less than min_delta of itself (early
    stopping: weaker penalties would overfit further, and on (nearly) separable labels only inflate the weights,
    slowly, for no gain in accuracy), so most problems never pay for the slow, weakly regularised end. Within a
    μ, a problem stops when a step moves its weights by less than rtol of their norm (at 1e-2 some of the E1
    sweep's held-out metrics were more than a point from scikit-learn's fits converged to a 1e-4 gradient; at 3e-3
    they agree within one, `workbench bench probe-sweep`), when it stops
    improving, or after max_iter iterations at that μ. scikit-learn's absolute gradient test suits a path badly:
    at strong penalties the weights, and so the gradients, are tiny from the start. Converged problems leave the
    batch: once half of them have, the rest are copied into a smaller one, so work follows the problems still
    moving."""
    with one_torch_thread():
        return _fit_path(feats, Y, problem, softmax, val_logits, Y_val, max_iter, rtol, memory, min_delta)


def _fit_path(feats, Y, problem, softmax, val_logits, Y_val, max_iter, rtol, memory, min_delta):
    dev, (n, n_cols), h = Y.device, Y.shape, feats.h
    # ClassLoss's column order; `source` maps a working column back to the caller's (and the features')
    source = class_order(problem, softmax)
    Y, Y_val, problem, softmax = Y[:, source], Y_val[:, source], problem[source], softmax[source]
    restore = torch.argsort(source)
    n_problems = int(problem.max()) + 1
    curvature = torch.where(softmax, CURVATURE["softmax"], CURVATURE["sigmoid"])
    everything = ClassLoss(Y, problem, softmax)
    W = torch.zeros(h, feats.d, n_cols, device=dev)
    b = everything.intercepts().expand(h, -1).clone()  # optimal at W = 0: the first step is ridge / c
    Z = b[:, None, :].expand(h, n, -1).clone()
    loss, dZ = everything(Z)
    grad = (feats.rmatmul(dZ, source), dZ.mean(1))  # of the loss alone; the penalty is added per μ
    gamma = torch.ones(h, n_problems, device=dev)
    val_loss = ClassLoss(Y_val, problem, softmax)
    on_path = torch.ones(h, n_problems, dtype=torch.bool, device=dev)
    best = torch.full((h, n_problems), torch.inf, device=dev)
    chosen = (W.clone(), b.clone(), torch.zeros(h, n_cols, dtype=torch.long, device=dev))
    iterations = 0
    for m in reversed(range(len(feats.grid))):
        todo, budget = on_path.clone(), max_iter
        while bool(todo.any()) and budget > 0:
            # the batch: every column of a problem still moving in some design
            ids = torch.nonzero(todo.any(0)).squeeze(1)
            cols = torch.nonzero(todo.any(0)[problem]).squeeze(1)
            local = torch.searchsorted(ids, problem[cols])
            part = _Part(feats, m, Y[:, cols], local, softmax[cols], curvature[cols], source[cols])
            state = [_take(W, cols), _take(b, cols), _take(Z, cols), _take(loss, ids),
                     (_take(grad[0], cols), _take(grad[1], cols)), _take(gamma, ids), _take(todo, ids)]  # fmt: skip
            state, still, used = _descend(part, state, budget, rtol, memory)
            W, b, Z = _put(W, cols, state[0]), _put(b, cols, state[1]), _put(Z, cols, state[2])
            loss, gamma = _put(loss, ids, state[3]), _put(gamma, ids, state[5])
            grad = (_put(grad[0], cols, state[4][0]), _put(grad[1], cols, state[4][1]))
            todo[:, ids] = still
            budget, iterations = budget - used, iterations + used
        # validation decides: keep this μ where it beats the stronger ones, go on only where it beat them by
        # min_delta of the best loss so far (relative: a rare label's or map cell's loss is small in nats)
        val = val_loss(val_logits(W[..., restore])[..., source] + b[:, None, :])[0]
        better = on_path & (val < best)
        pick = better[:, problem]
        chosen = (torch.where(pick[:, None, :], W, chosen[0]), torch.where(pick, b, chosen[1]),
                  torch.where(pick, m, chosen[2]))  # fmt: skip
        on_path &= val < torch.where(torch.isinf(best), best, best * (1 - min_delta))
        best = torch.where(better, val, best)
        if not bool(on_path.any()):
            break
    return (*(x[..., restore] for x in chosen), iterations)


class _Part:
    """A batch of whole problems (columns `feature_cols` of the features) at grid value m, for every design."""

    def __init__(self, feats, m: int, Y: Tensor, problem: Tensor, softmax: Tensor, curvature: Tensor, feature_cols):
        self.feats, self.m, self.problem, self.curvature, self.feature_cols = feats, m, problem, curvature, feature_cols
        self.loss = ClassLoss(Y, problem, softmax)
        self.n_problems = self.loss.n_problems
        self.lam = feats.grid[m] * curvature

    def per_problem(self, values: Tensor) -> Tensor:
        """[H, columns] → [H, problems]."""
        return torch.zeros(len(values), self.n_problems, device=values.device).index_add_(1, self.problem, values)

    def dot(self, a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
        return self.per_problem((a[0] * b[0]).sum(1) + a[1] * b[1])

    def precondition(self, q: tuple[Tensor, Tensor], cols: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ + μI)⁻¹ q / c on the columns `cols` (zero elsewhere)."""
        rW = torch.zeros_like(q[0])
        rW = _put(rW, cols, self.feats.solve(_take(q[0], cols), self.m, self.feature_cols[cols]) / self.curvature[cols])
        return rW, q[1] / self.curvature

    def scaled_norm(self, y: tuple[Tensor, Tensor], cols: Tensor) -> Tensor:
        """yᵀ P y per problem for the preconditioner P = (Σ + μI)⁻¹/c (one triangular solve, not two)."""
        v = self.feats.whiten(_take(y[0], cols), self.m, self.feature_cols[cols])
        per_col = torch.zeros_like(y[1]).index_copy_(1, cols, (v * v).sum(1)) + y[1] * y[1]
        return self.per_problem(per_col / self.curvature)


def _descend(part: _Part, state: list, budget: int, rtol: float, memory: int) -> tuple[list, Tensor, int]:
    """L-BFGS on a batch of problems at one μ, until each has converged or half of them have (the caller then
    continues the rest in a smaller batch). state: [W, b, Z, loss per problem, (loss gradient W, b), γ, active];
    per design and problem, `active` says which still move."""
    W, b, Z, loss, g_loss, gamma, active = state
    problem, lam = part.problem, part.lam
    f = loss + part.per_problem(0.5 * lam * (W * W).sum(1))
    g = (g_loss[0] + lam * W, g_loss[1])
    active = active.clone()
    start = int(active.sum())
    history: deque = deque(maxlen=memory)  # (s, y, 1/(s·y)) per design and problem
    used = 0
    while used < budget and 2 * int(active.sum()) > start:
        used += 1
        mask = active[:, problem]  # [H, columns]
        # two-loop recursion, per problem; initial inverse Hessian γ (Σ + μI)⁻¹/c. The bound cΣ overestimates
        # the curvature where the model is already confident (p(1-p) << 1/4, as on nearly separable labels):
        # γ = s·y / y·Py of the newest pair (the usual L-BFGS scaling, in the preconditioner's metric) adapts it.
        q = (g[0] * mask[:, None, :], g[1] * mask)
        alphas = []
        for s, y, rho in reversed(history):
            a = (rho * part.dot(s, q))[:, problem]
            alphas.append(a)
            q = (q[0] - a[:, None, :] * y[0], q[1] - a * y[1])
        cols = torch.nonzero(mask.any(0)).squeeze(1)
        r = part.precondition(q, cols)
        scale = gamma[:, problem]
        r = (scale[:, None, :] * r[0], scale * r[1])
        for (s, y, rho), a in zip(history, reversed(alphas), strict=True):
            c = a - (rho * part.dot(y, r))[:, problem]
            r = (r[0] + c[:, None, :] * s[0], r[1] + c * s[1])
        direction = (-r[0], -r[1])
        slope = part.dot(g, direction)
        if history and bool((active & (slope >= 0)).any()):  # a stale pair made it uphill: restart the memory
            history.clear()
            continue
        active &= -slope > 1e-8 * f  # nothing left to gain
        mask = active[:, problem]
        cols = torch.nonzero(mask.any(0)).squeeze(1)
        if len(cols) == 0:
            break
        direction = (direction[0] * mask[:, None, :], direction[1] * mask)
        # one product X @ direction serves every step length of the backtracking line search
        XD = torch.zeros_like(Z)
        XD = _put(
            XD,
            cols,
            part.feats.matmul(_take(direction[0], cols), part.feature_cols[cols])
            + _take(direction[1], cols)[:, None, :],
        )
        ww, wd, dd = (W * W).sum(1), (W * direction[0]).sum(1), (direction[0] * direction[0]).sum(1)
        step = torch.ones_like(f)
        for _ in range(30):
            a = step[:, problem]
            loss_new, dZ = part.loss(Z + a[:, None, :] * XD)
            f_new = loss_new + part.per_problem(0.5 * lam * (ww + 2 * a * wd + a * a * dd))
            ok = (f_new <= f + 1e-4 * step * slope) | ~active
            if bool(ok.all()):
                break
            step = torch.where(ok, step, step / 2)
        moved = active & ok
        a = torch.where(moved, step, 0.0)[:, problem]
        s = (a[:, None, :] * direction[0], a * direction[1])
        W, b, Z = W + s[0], b + s[1], Z + a[:, None, :] * XD
        f_new, loss = torch.where(moved, f_new, f), torch.where(moved, loss_new, loss)
        dZ_cols = _take(dZ, cols)
        g_loss = (
            _put(g_loss[0], cols, part.feats.rmatmul(dZ_cols, part.feature_cols[cols])),
            _put(g_loss[1], cols, dZ_cols.mean(1)),
        )
        g_new = (g_loss[0] + lam * W, g_loss[1])
        y = (g_new[0] - g[0], g_new[1] - g[1])
        sy = part.dot(s, y)
        history.append((s, y, torch.where(sy > 1e-12, 1 / sy.clamp_min(1e-12), 0.0)))  # ρ = 0 skips a flat pair
        y_scaled = part.scaled_norm(y, cols)
        gamma = torch.where(moved & (y_scaled > 0), sy / y_scaled.clamp_min(1e-30), gamma).clamp(1e-2, 1e4)
        # converged once a step moves the weights by less than rtol of their size (not on the first step, which
        # γ has not scaled yet; relative, as the weights grow by orders of magnitude along the path)
        small = (part.dot(s, s) <= rtol**2 * part.dot((W, b), (W, b))) & (used > 1)
        flat = (f - f_new) <= 1e-9 * f_new.abs().clamp_min(1.0)
        active &= ok & ~flat & ~small
        f, g = f_new, g_new
    return [W, b, Z, loss, g_loss, gamma], active, used


def _take(x: Tensor, index: Tensor) -> Tensor:
    """x[..., index] for a sorted index of distinct columns; x itself when the index is every column (the usual
    case: advanced indexing copies, and was 40% of the fitting time)."""
    return x if index.numel() == x.shape[-1] else x.index_select(-1, index)


def _put(x: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """x with x[..., index] = values, out of place; `values` itself when the index is every column."""
    return values if index.numel() == x.shape[-1] else x.index_copy(-1, index, values)
