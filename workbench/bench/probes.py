"""`bench_probes`: our batched probe fitting against the loop of scikit-learn fits a researcher would write.

The same probes on the same data: `n_hooks` hooks x 10 labels (4 binary, 3 multiclass, 3 regression) at each
width D, split by episode. Data (`data=`):

- "policy" (default): real activations and labels. TrashGrid observations from a rollout, through `n_hooks`
  randomly initialised CNNs (seeds) built so that one hook has exactly D features (fc.hook_out with hidden = D,
  or conv.1.hook_out with D / 81 channels on the 9x9 grid: D = 2592 is 32 channels), and ten env labels.
  Correlated ReLU features like these are what probes meet, and what makes unpreconditioned solvers slow.
- "synthetic": ReLU features of 16 latent factors plus unit noise (well conditioned: the easy case for
  scikit-learn), labels planted on the latents.

- ours: `probes.probe.score_stack` without controls (on a GPU the hooks of one width as one stacked batch; on
  CPU one at a time, as `probe_sweep` does): standardise, fit every probe along the regularisation grid, choose
  each strength on validation, score on test. The full
  methodology (shuffled and best-unit controls, bootstrap CIs) is timed too, as `ours_with_controls_s`.
- reference (the same job): per hook a StandardScaler fitted on train, then per label Ridge or
  LogisticRegression (lbfgs, scikit-learn's defaults otherwise) at every strength of the same grid, strongest
  first and warm-started, keeping the strength with the lowest validation loss; scored on test.
  `speedup` = its seconds / ours, `max_metric_diff_points` the largest difference in test accuracy (classifiers)
  or R² (ridge) over all probes, in points (0.01).
- lower bound: one scikit-learn fit per probe at the strength our validation chose (no search at all):
  `speedup_vs_single_fit`, `max_metric_diff_points_same_reg`.

Ours runs in one CPU thread (`workbench.common.compute.one_torch_thread`); scikit-learn uses its BLAS threads
(reported). Run it on a quiet machine: another busy process distorts both sides.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from probes.episodes import split_by_episode
from probes.fit import CURVATURE, GRID
from probes.labels import Target
from probes.probe import score_stack
from workbench.data import collect, replay
from workbench.policies import build_policy

EPISODE_LENGTH = 50
CLASSES = (3, 5, 7)
POLICY_LABELS = {  # label → kind; all vary under a random policy in TrashGrid
    "carrying": "binary",
    "event_bumped_wall": "binary",
    "reward_within_k": "binary",
    "trash_deposited": "binary",
    "target_dir": "multiclass",
    "agent_row": "multiclass",
    "agent_col": "multiclass",
    "target_dist": "regression",
    "step": "regression",
    "value_target": "regression",
}


def policy_hooks(n: int, d: int, n_hooks: int, seed: int = 0):
    """(activations per hook [n, d], targets, episode ids) from TrashGrid rollouts through random-init CNNs."""
    grid_cells = 81  # the default 7x7 room inside walls: a 9x9 grid
    arch = {"channels": [16, d // grid_cells], "hidden": 64} if d % grid_cells == 0 else {"hidden": d}
    hook = "conv.1.hook_out" if d % grid_cells == 0 else "fc.hook_out"
    hooks, dataset = {}, None
    for h in range(n_hooks):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + h)
            policy = build_policy({"arch": "cnn", "obs_shape": [3, 18, 18], "n_actions": 5, **arch})
        if dataset is None:
            dataset = collect(policy, "trash", n, hooks=[hook], seed=seed)
            data = dataset
        else:
            data = replay(dataset, policy, hooks=[hook])
        hooks[f"seed{seed + h}.{hook}"] = data.activations(hook).reshape(n, -1)
    targets = []
    for name, kind in POLICY_LABELS.items():
        column = dataset.labels[name].to_numpy()
        if kind == "binary":
            targets.append(Target(name, kind, (column > 0).astype("f4")))
        elif kind == "multiclass":
            classes, codes = np.unique(column, return_inverse=True)
            targets.append(Target(name, kind, codes, classes=classes))
        else:
            targets.append(Target(name, kind, column.astype("f4")))
    return hooks, targets, dataset.episode_ids()


def synthetic_hooks(n: int, d: int, n_hooks: int, seed: int = 0):
    """(activations per hook [n, d], targets, episode ids): ReLU features of 16 latent factors plus noise; labels
    are noisy functions of the latents (so every hook carries them, more or less linearly)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 16)).astype(np.float32)
    hooks = {}
    for h in range(n_hooks):
        mixing = rng.normal(size=(16, d)).astype(np.float32) / 4
        hooks[f"hook{h}"] = torch.from_numpy(np.maximum(latent @ mixing + rng.normal(size=(n, d)), 0).astype("f4"))
    targets = []
    for i in range(4):
        logit = latent @ rng.normal(size=16) + rng.logistic(size=n)
        targets.append(Target(f"binary{i}", "binary", (logit > np.quantile(logit, 0.3 + 0.1 * i)).astype("f4")))
    for k in CLASSES:
        scores = latent @ rng.normal(size=(16, k)) + rng.gumbel(size=(n, k))
        targets.append(Target(f"multiclass{k}", "multiclass", scores.argmax(1), classes=np.arange(k)))
    for i in range(3):
        y = latent @ rng.normal(size=16) + np.sin(latent[:, i]) + rng.normal(size=n)
        targets.append(Target(f"regression{i}", "regression", y.astype("f4")))
    episodes = np.arange(n) // EPISODE_LENGTH
    return hooks, targets, episodes


def bench_probes(
    n: int = 20_000,
    device: str = "cpu",
    dims=(64, 512, 2592),
    n_hooks: int = 3,
    seed: int = 0,
    precision: str = "auto",
    reference_hooks: int | None = None,
    data: str = "policy",
    sklearn_threads: int | None = 1,
) -> dict:
    """Seconds, speedups and the largest held-out metric difference at each width D (module docstring).

    reference_hooks: on how many hooks to run the scikit-learn grid search (its time is scaled to n_hooks; the
    hooks are alike); default all up to D = 512 and one above, where it takes minutes per hook.
    sklearn_threads: BLAS threads for scikit-learn (None: its default). One is faster for it here: on a 2-core
    machine OpenBLAS's second thread made these fits 4-8x slower at D = 64."""
    from threadpoolctl import threadpool_limits

    out = {"n": n, "n_hooks": n_hooks, "labels": 10, "data": data, "grid": list(GRID), "device": device,
           "threads_ours": 1, "threads_sklearn_blas": sklearn_threads or _blas_threads()}  # fmt: skip
    make = {"policy": policy_hooks, "synthetic": synthetic_hooks}[data]
    for d in dims:
        hooks, targets, episodes = make(n, d, n_hooks, seed)
        split = split_by_episode(episodes, seed)
        stack = 1 if device == "cpu" else n_hooks  # see probes.sweep.probe_sweep on stacking
        t0 = time.perf_counter()
        ours = _ours(hooks, targets, split, stack, device=device, precision=precision, with_controls=False)
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ours(hooks, targets, split, stack, device=device, precision=precision)
        full_s = time.perf_counter() - t0
        measured = reference_hooks or (n_hooks if d <= 512 else 1)
        subset = dict(list(hooks.items())[:measured])
        with threadpool_limits(sklearn_threads):
            t0 = time.perf_counter()
            grid, warned = _sklearn(subset, targets, split)
            grid_s = (time.perf_counter() - t0) * n_hooks / measured
            t0 = time.perf_counter()
            single, _ = _sklearn(hooks, targets, split, {h: {s.label: s.reg for s in ours[h]} for h in hooks})
            single_s = time.perf_counter() - t0
        diffs = [abs(_metric(s) - grid[h, s.label]) for h in subset for s in ours[h]]
        same_reg = [abs(_metric(s) - single[h, s.label]) for h in hooks for s in ours[h]]
        out[f"D={d}"] = {
            "ours_s": round(ours_s, 3),
            "ours_with_controls_s": round(full_s, 3),
            "sklearn_grid_s": round(grid_s, 2),
            "sklearn_grid_hooks_measured": measured,
            "speedup": round(grid_s / ours_s, 1),
            "max_metric_diff_points": round(100 * max(diffs), 2),
            "sklearn_single_fit_s": round(single_s, 2),
            "speedup_vs_single_fit": round(single_s / ours_s, 1),
            "max_metric_diff_points_same_reg": round(100 * max(same_reg), 2),
            "sklearn_convergence_warnings": warned,
        }
    out["goal_speedup"] = 20
    out["goal_max_metric_diff_points"] = 1.0
    return out


def _ours(hooks: dict, targets, split, stack: int, **kwargs) -> dict:
    names, out = list(hooks), {}
    for lo in range(0, len(names), stack):
        group = names[lo : lo + stack]
        out |= dict(zip(group, score_stack([hooks[h] for h in group], "bench", targets, split, **kwargs), strict=True))
    return out


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=None)


def _metric(s) -> float:
    return s.metrics["r2" if s.kind == "regression" else "accuracy"][0]


def _sklearn(hooks, targets, split, regs: dict | None = None) -> tuple[dict, int]:
    """The reference loop: per hook a StandardScaler on train, per label Ridge / LogisticRegression (lbfgs,
    scikit-learn's defaults otherwise) at every strength of the grid, strongest first and warm-started, the
    strength with the lowest validation loss kept; or, with `regs` ({hook: {label: μ}}), one fit at that μ.
    Returns {(hook, label): test accuracy or R²} and the number of convergence warnings."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score
    from sklearn.preprocessing import StandardScaler

    result, warned = {}, 0
    n_train = split.train.size
    for h, X in hooks.items():
        X = X.numpy()
        scaler = StandardScaler().fit(X[split.train])
        train, val, test = (scaler.transform(X[rows]) for rows in (split.train, split.val, split.test))
        for t in targets:
            y_train, y_val, y_test = (t.values[rows] for rows in (split.train, split.val, split.test))
            grid = [regs[h][t.name]] if regs else sorted(GRID, reverse=True)
            if t.kind == "regression":
                fits = [Ridge(alpha=mu * n_train).fit(train, y_train) for mu in grid]
                best = min(fits, key=lambda m: mean_squared_error(y_val, m.predict(val)))
                result[h, t.name] = r2_score(y_test, best.predict(test))
                continue
            c = CURVATURE["softmax" if t.kind == "multiclass" else "sigmoid"]
            model, best, best_loss = LogisticRegression(warm_start=True), None, np.inf
            for mu in grid:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    model.set_params(C=1 / (c * mu * n_train)).fit(train, y_train)
                warned += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
                loss = log_loss(y_val, model.predict_proba(val), labels=model.classes_)
                if loss < best_loss:
                    best, best_loss = accuracy_score(y_test, model.predict(test)), loss
            result[h, t.name] = best
    return result, warned


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_probes(*(int(a) for a in sys.argv[1:2])), indent=2))
