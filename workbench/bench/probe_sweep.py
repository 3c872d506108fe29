"""`bench_probe_sweep`: the E1 probe sweep, ours against the scikit-learn loop over the same grid, at the level a
user waits for: one TrashGrid CNN series, `n_checkpoints` checkpoints x its default hooks x every label, with
every control (shuffled labels, control task, best single unit, baseline, `random_init_seeds` random-init
networks) and the episode-bootstrap intervals.

- ours: `probes.probe_sweep(run, steps=..., n_steps, n_boot, random_init_seeds)`, end to end (collection,
  replays, every fit and statistic), in one torch thread.
- reference: the same collection (the same call, so the same observations), the same replays, then
  `workbench.bench.reference_probes.reference_hook` per checkpoint and hook: scikit-learn fits along the same grid
  for every probe and control, and scikit-learn metrics on the same bootstrap replicates. A full reference sweep
  takes hours on two cores, so it runs on `reference_steps` of the checkpoints and `reference_init_seeds` of the
  random-init draws, and its time is projected to the whole sweep (collection once, plus the measured seconds per
  checkpoint and per random-init draw times their counts; the checkpoints of a series have the same shapes and
  labels). `reference_steps="all"` and `reference_init_seeds=random_init_seeds` measure it all.
- agreement: on every measured (checkpoint, hook, label, probe, metric), the test estimate, the validation value
  and every control's value of both sides, in points (0.01); the interval bounds are reported apart (percentiles
  of the same replicates; they move with the estimates).
- convergence: the largest absolute gradient of the penalised objective (mean cross-entropy + cμ/2 |W|², the same
  objective both sides minimise) at each real logistic and multinomial probe's chosen strength, both sides, on the
  same standardised train rows; scikit-learn runs at `tol` (its lbfgs stops when that largest gradient is below
  it), and the share of fits at or under `tol` is reported for both.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from probes.controls import control_task_targets, random_init_datasets, random_init_seeds_for
from probes.episodes import bootstrap_weights, shuffle_across_episodes, split_by_episode
from probes.labels import resolve_labels
from probes.probe import default_hooks, score_hook
from probes.sweep import probe_sweep
from workbench.bench.reference_probes import Clock, _grad, reference_hook
from workbench.common.compute import one_torch_thread
from workbench.common.errors import WorkbenchError
from workbench.data import collect, replay
from workbench.policies import hook_shapes
from workbench.training.checkpoints import list_steps, load_policy, step_stem

SERIES = "trash-cnn-s0"
QUICK_LABELS = ("carrying", "target_dir", "return_to_go", "trash_map")  # binary, multiclass, regression, map
COMPARED_CONTROLS = ("shuffled", "control_task", "best_unit", "baseline")


def default_series(name: str = SERIES) -> Path:
    """The bundled series: $WORKBENCH_CHECKPOINTS/<name>, else the checkout's checkpoints/<name>."""
    root = Path(os.environ.get("WORKBENCH_CHECKPOINTS") or Path(__file__).resolve().parents[2] / "checkpoints")
    path = root / name
    if not (path / "run.json").is_file():
        raise WorkbenchError(f"no checkpoint series at {path}: run from a checkout (its checkpoints/ folder) or set "
                             "WORKBENCH_CHECKPOINTS to the folder that holds the bundled series.")  # fmt: skip
    return path


def spaced_steps(steps: list[int], n: int) -> list[int]:
    """n of a series' steps, evenly spaced along it (its steps are log-spaced), the first and the last included."""
    if n >= len(steps):
        return list(steps)
    return [steps[i] for i in np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))]


def bench_probe_sweep(
    quick: bool = False,
    run: str | Path | None = None,
    n_checkpoints: int | None = None,
    n_steps: int | None = None,
    n_boot: int | None = None,
    random_init_seeds: int = 5,
    reference_steps: int | str | None = None,
    reference_init_seeds: int | None = None,
    tol: float = 1e-4,
    seed: int = 0,
    labels: list[str] | None = None,
) -> dict:
    """Seconds of the whole sweep both sides, the speedup, the largest held-out difference and both sides'
    convergence (module docstring). quick: 2 checkpoints, 1,200 observations, 20 replicates and four labels (one
    of each kind): a smoke run. labels: default every label of the env (`probes.labels`' reward and task sets).
    reference_steps: how many of the checkpoints the reference measures (spread along the series; "all" for every
    one; default 1, the last); reference_init_seeds: how many random-init draws it measures (default 1)."""
    run_dir = Path(run) if run else default_series()
    n_checkpoints = n_checkpoints or (2 if quick else 10)
    n_steps, n_boot = n_steps or (1200 if quick else 8000), n_boot or (20 if quick else 200)
    steps = spaced_steps(list_steps(run_dir), n_checkpoints)
    labels = labels or (list(QUICK_LABELS) if quick else None)
    if reference_steps == "all":
        measured = steps
    else:
        k = int(reference_steps or 1)
        measured = [steps[-1]] if k == 1 else spaced_steps(steps, k)
    init_seeds = random_init_seeds_for(random_init_seeds, seed)
    init_measured = init_seeds[: reference_init_seeds or 1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # labels constant in this env are skipped, with a row
        start = time.perf_counter()
        ours = probe_sweep(run_dir, labels=labels, n_steps=n_steps, steps=steps, n_boot=n_boot,
                           random_init_seeds=random_init_seeds, seed=seed, result=True)  # fmt: skip
        ours_s = time.perf_counter() - start

    # ---- the reference: the same collection and replays, scikit-learn's fits and metrics, at one BLAS thread (its
    # fastest setting on two cores; threadpoolctl applies the limit at once, and it is restored below)
    limiter = threadpool_limits(1)
    start = time.perf_counter()
    last = load_policy(run_dir / f"{step_stem(steps[-1])}.json")
    shapes = hook_shapes(last)
    hooks = default_hooks(list(shapes))
    with one_torch_thread():
        dataset = collect(last, None, n_steps, hooks=hooks, seed=seed, n_envs=64)
    targets, skipped = resolve_labels(dataset, labels)
    split = split_by_episode(dataset.episode_ids(), seed)
    weights = bootstrap_weights(split.episode_ids[split.test], n_boot, seed).double().numpy()
    shuffled = shuffle_across_episodes(split.train, split.episode_ids[split.train], seed + 1)
    controls = control_task_targets(dataset, targets, seed)
    collect_s = time.perf_counter() - start

    reference, replay_s, grads_ours = {}, 0.0, []
    by_direction = {(d.step, d.hook, d.label, d.probe): d for d in ours.directions}
    step_clock = Clock()
    for step in measured:
        start = time.perf_counter()
        with one_torch_thread():
            data = (
                dataset if step == steps[-1] else replay(dataset, load_policy(_step_file(run_dir, step)), hooks=hooks)
            )
        replay_s += time.perf_counter() - start
        for hook in hooks:
            acts = data.activations(hook).numpy()
            entries = reference_hook(acts, shapes[hook], targets, split, weights, step_clock, shuffled=shuffled,
                                     control_targets=controls, tol=tol)  # fmt: skip
            for (label, probe), entry in entries.items():
                reference[step, hook, label, probe] = entry
            grads_ours += _our_grads(acts, hook, step, targets, split, by_direction)
    per_step_s = (replay_s + step_clock.fit + step_clock.stats) / len(measured)

    init_clock, ours_init = Clock(), {}
    for init_seed, control in zip(init_measured, random_init_datasets(dataset, hooks, init_measured), strict=True):
        for hook in hooks:
            acts = control.activations(hook)
            entries = reference_hook(acts.numpy(), shapes[hook], targets, split, weights, init_clock,
                                     with_controls=False, tol=tol)  # fmt: skip
            for (label, probe), entry in entries.items():
                reference["init", init_seed, hook, label, probe] = entry
            for s in score_hook(acts, hook, targets, split, seed=seed, with_controls=False):
                ours_init[init_seed, hook, s.label, s.probe] = s
    init_s = _timed_replays(dataset, hooks, init_measured) + init_clock.fit + init_clock.stats
    per_init_s = init_s / len(init_measured)
    reference_s = collect_s + per_step_s * len(steps) + per_init_s * len(init_seeds)

    limiter.restore_original_limits()
    agreement = _agreement(ours.table, reference, ours_init)
    grads_ref = [e.grad for k, e in reference.items() if k[0] != "init" and not math.isnan(e.grad)]
    return {
        "run": run_dir.name,
        "checkpoints": steps,
        "hooks": hooks,
        "labels": [t.name for t in targets],
        "labels_skipped_constant": sorted(skipped),
        "n_observations": dataset.n,
        "n_boot": n_boot,
        "random_init_seeds": len(init_seeds),
        "ours_s": round(ours_s, 1),
        "reference": {
            "collect_s": round(collect_s, 1),
            "per_checkpoint_s": round(per_step_s, 1),
            "per_random_init_draw_s": round(per_init_s, 1),
            "fit_s_measured": round(step_clock.fit + init_clock.fit, 1),
            "stats_s_measured": round(step_clock.stats + init_clock.stats, 1),
            "checkpoints_measured": measured,
            "random_init_draws_measured": len(init_measured),
            "projected_total_s": round(reference_s, 1),
            "fits": step_clock.fits + init_clock.fits,
            "convergence_warnings": step_clock.convergence_warnings + init_clock.convergence_warnings,
        },
        "speedup": round(reference_s / ours_s, 1),
        "speedup_reference_fits_only": round(
            _fits_only(
                collect_s, replay_s, step_clock, init_clock, measured, steps, init_measured, init_seeds, dataset, hooks
            )
            / ours_s,
            1,
        ),  # fmt: skip
        **agreement,
        "convergence": {
            "tol": tol,
            "objective": "mean cross-entropy + (c mu / 2) |W|^2 on the standardised train rows; max |gradient|",
            "ours": _grad_summary(grads_ours, tol),
            "sklearn": _grad_summary(grads_ref, tol),
        },
        "threads": {"ours": 1, "sklearn_blas": 1},
        "load_average_after": round(os.getloadavg()[0], 2),
        "goal_speedup": 20,
        "goal_max_metric_diff_points": 1.0,
    }


def _step_file(run_dir: Path, step: int) -> Path:
    return run_dir / f"{step_stem(step)}.json"


def _timed_replays(dataset, hooks, seeds) -> float:
    """Seconds of the random-init replays alone (the generator above interleaves them with the fits)."""
    start = time.perf_counter()
    for _ in random_init_datasets(dataset, hooks, seeds):
        pass
    return time.perf_counter() - start


def _fits_only(collect_s, replay_s, step_clock, init_clock, measured, steps, init_measured, init_seeds, dataset,
               hooks) -> float:  # fmt: skip
    """The reference's projected seconds without its statistics (collection, replays and fits only): how much of
    the speedup is left if the reference's metrics cost nothing."""
    per_step = (replay_s + step_clock.fit) / len(measured)
    per_init = _timed_replays(dataset, hooks, init_measured[:1]) + init_clock.fit / len(init_measured)
    return collect_s + per_step * len(steps) + per_init * len(init_seeds)


def _our_grads(acts: np.ndarray, hook: str, step: int, targets, split, by_direction) -> list[float]:
    """Our real logistic / multinomial probes' largest |gradient| at their chosen strength (their directions mapped
    back to the standardised basis they were fitted in)."""
    flat = acts.reshape(len(acts), -1).astype(np.float64)[split.train]
    out = []
    for t in targets:
        if t.kind not in ("binary", "multiclass"):
            continue
        d = by_direction.get((step, hook, t.name, "logistic" if t.kind == "binary" else "multinomial"))
        if d is None:
            continue
        W = d.weight.numpy().reshape(-1 if t.kind == "multiclass" else 1, flat.shape[1]).astype(np.float64)
        mean, std = d.mean.numpy().reshape(-1).astype(np.float64), d.std.numpy().reshape(-1).astype(np.float64)
        coef, intercept = W * std, d.bias.numpy().reshape(-1).astype(np.float64) + W @ mean
        classes = np.arange(len(coef)) if t.kind == "multiclass" else np.array([0.0, 1.0])
        z = (flat - mean) / std
        out.append(_grad(z, t.values[split.train], (coef, intercept, classes, d.reg), t.kind, len(classes)))
    return out


def _grad_summary(grads: list[float], tol: float) -> dict:
    g = np.asarray(grads, dtype=np.float64)
    if not len(g):
        return {"fits": 0}
    return {"fits": len(g), "median_max_abs_grad": float(np.median(g)), "p90": float(np.quantile(g, 0.9)),
            "max": float(g.max()), "share_at_or_below_tol": round(float((g <= tol).mean()), 3)}  # fmt: skip


def _agreement(table, reference: dict, ours_init: dict) -> dict:
    """Differences in points between ours and the reference on everything the reference measured."""
    fitted = table[table.metric != "skipped"]
    first = fitted.drop_duplicates(["step", "hook", "label", "probe", "metric"]).set_index(
        ["step", "hook", "label", "probe", "metric"]
    )
    control = fitted.set_index(["step", "hook", "label", "probe", "metric", "control"])
    diffs, interval = [], []
    for key, e in reference.items():
        if key[0] == "init":
            _, init_seed, hook, label, probe = key
            s = ours_init.get((init_seed, hook, label, probe))
            for m, (value, _, _) in e.metrics.items():
                if s is not None:
                    diffs.append(
                        ("random_init", f"init {init_seed} {hook} {label} {probe} {m}", s.metrics[m][0], value)
                    )
            continue
        step, hook, label, probe = key
        for m, (value, lo, hi) in e.metrics.items():
            row = first.loc[(step, hook, label, probe, m)]
            diffs.append(("probe", f"step {step} {hook} {label} {probe} {m}", row.value, value))
            diffs.append(("validation", f"step {step} {hook} {label} {probe} {m}", row.val_value, e.val[m]))
            interval += [abs(row.ci_low - lo), abs(row.ci_high - hi)]
            for c in COMPARED_CONTROLS:
                if c in e.controls and m in e.controls[c]:
                    theirs = control.loc[(step, hook, label, probe, m, c)].control_value
                    diffs.append((c, f"step {step} {hook} {label} {probe} {m}", theirs, e.controls[c][m]))
    both = [(what, where, float(a), float(b)) for what, where, a, b in diffs]
    points = [(what, where, 100 * abs(a - b)) for what, where, a, b in both if not (math.isnan(a) and math.isnan(b))]
    worst = sorted(points, key=lambda p: -p[2] if not math.isnan(p[2]) else -math.inf)
    by_kind = {}
    for what, _, p in points:
        by_kind[what] = max(by_kind.get(what, 0.0), p)
    interval = [100 * v for v in interval if not math.isnan(v)]
    return {
        "compared": len(points),
        "max_metric_diff_points": round(max((p for *_, p in points), default=math.nan), 2),
        "max_metric_diff_points_by": {k: round(v, 2) for k, v in by_kind.items()},
        "over_1_point": int(sum(p > 1 for *_, p in points)),
        "nan_on_one_side": int(sum(math.isnan(p) for *_, p in points)),
        "worst": [f"{what}: {where}: {p:.2f}" for what, where, p in worst[:8]],
        "max_interval_bound_diff_points": round(max(interval, default=math.nan), 2),
    }
