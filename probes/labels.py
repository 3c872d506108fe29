"""What a probe can be asked to read out: the label catalogue, and turning a dataset's labels into targets.

Two sets answer the workbench's question (does the policy represent reward, or the task?), so that one sweep
puts them side by side:

    REWARD_LABELS  reward, reward_within_k, return_to_go, value_target, reward_available
    TASK_LABELS    trash_map, bin_map, carrying, trash_remaining, wall_color, target_dir, target_dist,
                   agent_row, agent_col

Each label has a kind that fixes the probe and its metrics: `binary` (logistic), `multiclass` (softmax over the
values seen in the dataset; positions and counts are classes, since a linear read-out of "which cell" is the
question, not "how far down"), `regression` (ridge) and `map` (a per-cell read-out of a [G, G] map). Labels
outside the catalogue may be named too: booleans are binary, integers with at most 12 values multiclass, other
numbers regression.

Constant labels: a label named explicitly that takes one value in the dataset is an error (ProbeError: the
question cannot be asked of this data, e.g. wall_color outside the blue-room env). Labels that come from the
default sets are skipped instead, and the table gets a `skipped` row (per hook) saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.errors import ProbeError
from workbench.common.errors import unknown_name

REWARD_LABELS = {
    "reward": "regression",
    "reward_within_k": "binary",
    "return_to_go": "regression",
    "value_target": "regression",
    "reward_available": "binary",
}
TASK_LABELS = {
    "trash_map": "map",
    "bin_map": "map",
    "carrying": "binary",
    "trash_remaining": "multiclass",
    "wall_color": "multiclass",
    "target_dir": "multiclass",
    "target_dist": "regression",
    "agent_row": "multiclass",
    "agent_col": "multiclass",
}
OTHER_LABELS = {
    "action": "multiclass",
    "trash_deposited": "multiclass",
    "wall_blue": "binary",
    "wall_green": "binary",
    "button_present": "binary",
    "choice_layout": "binary",
    "goal_red": "binary",
    "target_drow": "regression",
    "target_dcol": "regression",
    "step": "regression",
    "value_pred": "regression",
    "reward_next": "regression",
    "button_map": "map",
    "goal_map": "map",
    "decoy_map": "map",
}
LABEL_KINDS = {**REWARD_LABELS, **TASK_LABELS, **OTHER_LABELS}
DEFAULT_LABELS = (*REWARD_LABELS, *TASK_LABELS)
NOT_LABELS = ("episode_id",)  # bookkeeping columns, never probe targets
MAX_CLASSES = 12


def label_set(name: str) -> str:
    return "reward" if name in REWARD_LABELS else "task" if name in TASK_LABELS else "other"


@dataclass
class Target:
    """One label's values for every row. values: regression float [n]; binary 0/1 [n]; multiclass class index
    [n] into `classes`; map 0/1 [n, cells] with `grid` (rows, cols)."""

    name: str
    kind: str
    values: np.ndarray
    classes: np.ndarray | None = None
    grid: tuple[int, int] | None = None


def available_labels(dataset) -> list[str]:
    names = [c for c in dataset.labels.columns if c not in NOT_LABELS]
    return names + [m for m in dataset.map_label_names if m not in names]


def resolve_labels(dataset, labels=None) -> tuple[list[Target], dict[str, str]]:
    """Targets for the labels asked for (default: reward and task sets, those the dataset has).

    Returns (targets, skipped) where skipped maps a default label to why it was left out."""
    valid = available_labels(dataset)
    explicit = labels is not None
    names = list(labels) if explicit else [n for n in DEFAULT_LABELS if n in valid]
    if explicit and not names:
        raise ProbeError("labels=[] asks for no probe: pass label names, or None for the default sets.")
    for name in names:
        if name not in valid:
            raise unknown_name("label", name, valid)
    targets, skipped = [], {}
    for name in dict.fromkeys(names):
        target = make_target(dataset, name)
        why = constant_reason(target)
        if why and explicit:
            raise ProbeError(f"label {name!r} {why} in this dataset, so no probe can be fitted: drop it.")
        if why:
            skipped[name] = f"{name} {why}"
        else:
            targets.append(target)
    if not targets:
        raise ProbeError(f"every label asked for is constant in this dataset ({'; '.join(skipped.values())}).")
    return targets, skipped


def make_target(dataset, name: str) -> Target:
    if name in dataset.map_label_names:
        grid = np.asarray(dataset.map_label(name))
        if grid.ndim != 3 or len(grid) != dataset.n:
            raise ProbeError(f"map label {name!r} has shape {list(grid.shape)}; expected [{dataset.n}, G, G].")
        return Target(name, "map", grid.reshape(len(grid), -1).astype(np.float32), grid=tuple(grid.shape[1:]))
    column = dataset.labels[name].to_numpy()
    if len(column) != dataset.n:
        raise ProbeError(f"label {name!r} has {len(column)} rows but the dataset has {dataset.n} observations.")
    kind = LABEL_KINDS.get(name) or infer_kind(column)
    if kind == "regression":
        values = column.astype(np.float32)
        if not np.isfinite(values).all():
            raise ProbeError(f"label {name!r} holds NaN or inf values: fix the labels or drop it.")
        return Target(name, kind, values)
    if kind == "binary":
        return Target(name, kind, (column.astype(np.float64) > 0).astype(np.float32))
    classes, codes = np.unique(column, return_inverse=True)
    return Target(name, kind, codes.astype(np.int64), classes=classes)


def infer_kind(column: np.ndarray) -> str:
    if column.dtype == bool:
        return "binary"
    if np.issubdtype(column.dtype, np.integer) and len(np.unique(column)) <= MAX_CLASSES:
        return "multiclass"
    return "regression"


def constant_reason(target: Target) -> str | None:
    values = target.values
    if target.kind == "map":
        return None if (values.min(0) != values.max(0)).any() else "is the same map in every observation"
    if values.min() == values.max():
        shown = target.classes[0] if target.classes is not None else values[0]
        return f"is constant ({shown})"
    return None
