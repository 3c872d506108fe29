"""A probe sweep over a run's checkpoint series: which features are linearly readable at each step of training.

    table = probe_sweep("runs/trash-cnn", out="probes.parquet")

1. Load the run's last checkpoint (or the one checkpoint given) and collect one dataset of `n_steps`
   observations with it, so that every checkpoint is probed on the same observations.
2. Replay the dataset through `random_init_seeds` randomly initialised policies of the same architecture (init
   seeds seed, seed + 1, ...): the random_init control, fitted once per seed and shared by all steps.
3. For every checkpoint: replay the dataset through it and fit every (hook, label) probe, batched per hook, with
   the methodology of `probes.probe` (episode split, train-only standardisation, validation-chosen
   regularisation, episode-bootstrap CIs, five controls).

The table is tidy: one row per (step, hook, label, probe, metric, control).

    run, step            the run directory and checkpoint step
    hook, label          what was probed; label_set: reward | task | other
    kind, probe          regression/ridge, binary/logistic, multiclass/multinomial, map/per_cell or map/conv1x1
    metric               info_gain | r2 | accuracy | balanced_accuracy | auroc ("skipped" for a constant label; see
                         note). info_gain, the headline on one scale for every kind (`probes.metrics`): 1 - test
                         log-loss / the train prior's (classes, maps; logits at the validation temperature), or R²
                         against the train mean (regression)
    value, ci_low, ci_high   the test score and its 95% episode-bootstrap interval over the non-degenerate
                         resamples (repeated on the rows of one probe and metric: one row per control keeps every
                         control beside the score it controls)
    val_value            the same probe's score on the validation rows (what `probes.summary` chooses by)
    control, control_value   shuffled | random_init | control_task | baseline | best_unit, and its test score
                         (random_init: the median over its draws; control_task: classification labels with input
                         identities, else NaN; baseline: info_gain 0, the prior itself)
    control_sd, control_min, control_max   random_init rows: the sample standard deviation, min and max of the
                         control's test score over its draws (random_init_seeds); NaN on the other controls
    control_val_value    the control's validation score
    control_gap          value - control_value: the selectivity against that control
    selectivity          value - the highest of the controls (the same on the rows of one probe and metric)
    val_selectivity      val_value - the highest control_val_value: the selectivity on validation
    reg                  the regularisation μ chosen on validation (median over cells for maps)
    n_train, n_test      rows in the train and test sets
    n_boot_degenerate    bootstrap resamples degenerate for the metric, of n_boot (`probes.metrics`): for R² (and
                         a regression label's info_gain), label variance below 1e-3 of the test set's (the few test
                         episodes that vary the label all left out); for balanced accuracy and AUROC, a class of
                         the test set absent (for maps: in some cell). Left out of the interval, which is NaN when
                         they are more than half; a map's per-cell means keep every resample, with the test-set
                         value of a cell that lacks a class
    note                 why a label was skipped, or why a metric has no interval (or a map's many filled cells)

With `out`, the table is written as parquet and the probe directions (weights in the original activation basis, bias,
standardisation; `probes.directions`) beside it, for steering and patching to reuse, and every probe's bootstrap
resamples (`probes.resamples`), for paired intervals such as `probes.gap(out)`. They are committed together
(`write_outputs`): all staged under temporary names, then renamed, the table last, and the table and its directions
share a commit id that `load_directions` checks. The output path is checked before any work, and every checkpoint of the
series is opened and checked (`workbench.training.checkpoints.check_series`) before the collection, so a damaged
checkpoint fails in seconds, not after the sweep's minutes of work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probes.controls import RandomInitDraws, control_task_targets, random_init_datasets, random_init_seeds_for
from probes.directions import COMMIT_KEY, directions_files, new_commit_id
from probes.episodes import split_by_episode
from probes.errors import ProbeError
from probes.labels import resolve_labels
from probes.probe import ProbeResult, default_hooks, score_hook, score_stack, tidy
from probes.resamples import Resamples, resamples_bytes, resamples_path
from workbench.common.compute import one_torch_thread, resolve_precision
from workbench.common.errors import unknown_name
from workbench.common.guards import check_memory, check_output
from workbench.common.io import commit_files, parquet_bytes
from workbench.common.tasks import BACKENDS, run_tasks
from workbench.data import collect, dataset_row_bytes, replay
from workbench.policies import hook_shapes
from workbench.training.checkpoints import check_series, list_steps, load_policy, resolve, step_stem


def probe_sweep(
    run_or_ckpt: str | Path,
    hooks: list[str] | None = None,
    labels: list[str] | None = None,
    n_steps: int = 20_000,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path | None = None,
    n_envs: int = 64,
    n_boot: int = 200,
    precision: str = "auto",
    max_stack_bytes: int = 2 << 30,
    progress: Callable[[str, int, int], None] | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    random_init_seeds: int = 5,
    result: bool = False,
    steps: list[int] | None = None,
) -> pd.DataFrame | ProbeResult:
    """Probe every checkpoint of a run (or the one checkpoint given); returns the tidy table (module docstring),
    or with result=True a `ProbeResult` (the table, the directions and every probe's bootstrap resamples, for
    `probes.gap`).

    hooks: default every `*.hook_out` (CNN) or `*.hook_resid_post` (transformer) hook; labels: default the
    reward and task sets (`probes.labels`). On a GPU, checkpoints are fitted in stacks (one batch per hook for
    several checkpoints, `probes.probe.score_stack`) of at most about max_stack_bytes of working memory: there
    each tensor op's launch costs more than its work, and a stack shares them. On CPU the work grows with the
    stack about as fast as the ops are shared, so checkpoints go one by one. progress(what, done, total) is called
    as each stage finishes. random_init_seeds: how many randomly initialised policies the random_init control draws
    (one replay of the dataset each). steps: probe only these checkpoints of the run (default every one; the
    last of them collects the dataset).

    backend="ray": the checkpoints are fitted as Ray tasks (`workbench.common.tasks`; one checkpoint and one CPU,
    or GPU on cuda, per task; address: ray_address or RAY_ADDRESS), after collection and the random-init control
    here. The dataset goes to Ray's object store once and the checkpoints' weights with their tasks, so no node
    needs this machine's files. The table is the same as the local backend's."""
    if backend not in BACKENDS:  # before the collection, not after it
        raise unknown_name("backend", backend, BACKENDS)
    init_seeds = random_init_seeds_for(random_init_seeds, seed)
    if out is not None:
        check_output(out, option="out")  # before the work, not after it
    run_dir, step = resolve(run_or_ckpt)
    steps = _chosen_steps(run_dir, steps) if Path(run_or_ckpt).is_dir() else [step]
    check_series(run_dir, steps)  # every checkpoint opened and checked now: a damaged one fails in seconds
    total = len(steps) + 2
    report = progress or (lambda what, done, total: None)

    last = load_policy(run_dir / f"{step_stem(steps[-1])}.json", device=device)
    shapes = hook_shapes(last)
    hooks = default_hooks(list(shapes), hooks)
    # Resolved once here, so that every task fits in the same precision whatever CPU or GPU its node has.
    precision = resolve_precision(precision, str(device))
    report("collect", 0, total)
    with one_torch_thread():  # forward passes in one thread, as the tasks make theirs (see score_checkpoints)
        dataset = collect(last, None, n_steps, hooks=hooks, seed=seed, n_envs=n_envs)
    targets, skipped = resolve_labels(dataset, labels)
    split = split_by_episode(dataset.episode_ids(), seed)
    report("random-init control", 1, total)

    draws = RandomInitDraws()
    for control in random_init_datasets(dataset, hooks, init_seeds):
        for hook in hooks:
            draws.add(score_hook(control.activations(hook), hook, targets, split, seed=seed, device=device,
                                 precision=precision, with_controls=False))  # fmt: skip
        del control
    control_targets = control_task_targets(dataset, targets, seed)

    # ~6 float32 copies of a design live at once while it is fitted (activations, train/val/test, conv1x1 rows)
    per_step = 6 * 4 * dataset.n * max(math.prod(shapes[h]) for h in hooks)
    chunk = max(1, min(len(steps), max_stack_bytes // per_step)) if str(device).startswith("cuda") else 1
    fit = {"hooks": hooks, "targets": targets, "split": split, "seed": seed, "device": device, "precision": precision,
           "n_boot": n_boot, "control_targets": control_targets}  # fmt: skip
    if backend == "local":
        scored = []
        for lo in range(0, len(steps), chunk):
            group = steps[lo : lo + chunk]
            report(f"steps {group[0]}..{group[-1]}" if len(group) > 1 else f"step {group[0]}", 2 + lo, total)
            group = [_Checkpoint(step, None if step == steps[-1] else run_dir / f"{step_stem(step)}.json")
                     for step in group]  # fmt: skip
            scored += score_checkpoints(group, dataset=dataset, **fit)
    else:
        # The weights travel with each task (a few MB), so the nodes need none of this machine's files.
        items = [[_Checkpoint(step, None if step == steps[-1] else load_policy(run_dir / f"{step_stem(step)}.json"))]
                 for step in steps]  # fmt: skip
        groups = run_tasks(
            score_checkpoints,
            items,
            backend=backend,
            address=ray_address,
            progress=lambda done, _: report(f"{done} checkpoints fitted", 2 + done, total),
            shared={"dataset": dataset, **fit},
            num_gpus_per_task=int(str(device).startswith("cuda")),
        )
        scored = [scores for group in groups for scores in group]
    tables, directions = [], []
    for step, step_scores in zip(steps, scored, strict=True):
        for s in step_scores:
            draws.apply(s)
            s.direction.step = step
            directions.append(s.direction)
        tables.append(tidy(step_scores, run=str(run_dir), step=step, split=split, skipped=skipped, hooks=hooks))
    report("done", total, total)
    table = pd.concat(tables, ignore_index=True)
    resamples = Resamples.from_scores(list(zip(steps, scored, strict=True)))
    if out is not None:
        write_outputs(table, directions, resamples, out)
    return ProbeResult(table, directions, resamples) if result else table


def _chosen_steps(run_dir: Path, steps: list[int] | None) -> list[int]:
    """The run's steps, or the ones asked for (sorted, each once), checked against the run's."""
    have = list_steps(run_dir)
    if steps is None:
        return have
    missing = [s for s in steps if s not in have]
    if missing or not steps:
        what = f"no checkpoint at step {missing[0]}" if missing else "no step given"
        raise ProbeError(f"steps={list(steps)}: {what} in {run_dir}; its steps: {', '.join(map(str, have))}.")
    return sorted(set(int(s) for s in steps))


@dataclass
class _Checkpoint:
    """One checkpoint to probe: its policy (or the step file to load it from), or None for the checkpoint that
    collected the dataset (its activations are the dataset's own)."""

    step: int
    policy: object

    def __repr__(self) -> str:  # names the task in errors, without the weights
        return f"step {self.step}"


def score_checkpoints(group: list[_Checkpoint], *, dataset, hooks, targets, split, seed, device, precision, n_boot,
                      control_targets=None):  # fmt: skip
    """Replay the dataset through each checkpoint of `group` and fit every probe, one stack per hook; returns one
    list of ProbeScores per checkpoint. The unit of work of a sweep: run here, or as a Ray task.

    Everything runs in one torch thread, so that the scores do not depend on the thread count of the process
    that runs it (a Ray worker has one, OMP_NUM_THREADS=1; this process as many as cores): BLAS sums a matrix
    product in another order with another thread count, and the last-bit differences of a replay's float32
    activations flip some of their float16 roundings in the dataset (57 of 76,800 fc activations of a
    600-observation replay, by one float16 step), which the fits then carry into the scores (validation-chosen
    strength, early stopping). Measured before: a sweep at 1 and at 2 threads differed in 34 of 204 rows, by up
    to 6e-3 in a score; the Ray and local tables in 20 of 204."""
    data, scores = [], [[] for _ in group]
    # one thread (above); and a dataset from Ray's object store is read-only, which replay and fitting only read
    with one_torch_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for checkpoint in group:
            policy = checkpoint.policy
            if isinstance(policy, Path):
                policy = load_policy(policy, device=device)
            data.append(dataset if policy is None else replay(dataset, policy.to(device), hooks=hooks))
        for hook in hooks:
            stacked = score_stack([d.activations(hook) for d in data], hook, targets, split, seed=seed,
                                  device=device, precision=precision, n_boot=n_boot,
                                  control_targets=control_targets)  # fmt: skip
            for step_scores, more in zip(scores, stacked, strict=True):
                step_scores += more
    return scores


def table_bytes(table: pd.DataFrame, commit_id: str | None = None) -> bytes:
    """The table as parquet, with `commit_id` in its metadata (the id its directions carry)."""
    return parquet_bytes(table, None if commit_id is None else {COMMIT_KEY: commit_id})


def write_table(table: pd.DataFrame, out: str | Path, commit_id: str | None = None) -> Path:
    return commit_files([(out, table_bytes(table, commit_id))])[0]


def write_outputs(table: pd.DataFrame, directions: list, resamples: Resamples | None, out: str | Path) -> str:
    """Commit a sweep's table, directions and resamples together: every file written under a temporary name
    first, then renamed over its target, the table last, with one commit id in the table's metadata and in both
    directions files. A kill before the renames leaves the old set; one during them, directions that
    `load_directions` refuses beside the old table, never a silent mix. Returns the commit id."""
    out = Path(out)
    commit_id = new_commit_id()
    files = list(directions_files(directions, out, commit_id))
    if resamples is not None:
        files.append((resamples_path(out), resamples_bytes(resamples, commit_id)))
    commit_files([*files, (out, table_bytes(table, commit_id))])  # last: the table commits the set
    return commit_id


def check_probe_memory(run_or_ckpt: str | Path, hooks: list[str] | None, n_steps: int) -> None:
    """Refuse `probe --steps` whose dataset and fits cannot fit in memory, before the collection: per observation,
    the dataset's row (datasets.dataset_row_bytes: stored activations, pixels, labels), a random-init replay's
    activations beside it, the float32 activations read for a fit, and ~6 float32 copies of the widest design while
    it is fitted (this module's own figure for its stacks)."""
    policy = load_policy(run_or_ckpt)
    shapes = hook_shapes(policy)
    chosen = default_hooks(list(shapes), hooks)
    widest = max((math.prod(shapes[h]) for h in chosen if h in shapes), default=0)
    row = dataset_row_bytes(policy, chosen)
    per_step = 2 * row + 4 * widest + 6 * 4 * widest
    check_memory(n_steps * per_step, f"probe --steps {n_steps:,}", "--steps", per_unit=per_step)
