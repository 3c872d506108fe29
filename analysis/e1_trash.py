"""E1 trash: rewarded for depositing trash, do the policies represent trash, bin and carrying, or a reward variable?
And does patching trash activations move their behaviour?

For each trained TrashGrid policy (the CNN at three seeds, the transformer), on its own rollouts:
- probes with every control on its hooks, reward-side labels (reward, reward within k steps, return-to-go, value
  target) beside task-side ones (trash and bin maps, carrying, trash remaining, direction and distance to the
  nearest target, position); the best selectivity of each side;
- activation patching of trash-present into trash-removed rooms at every cell / position of each hook: where does
  the trash's effect on the action live, against a noise baseline.

    python analysis/e1_trash.py [--quick] [--out DIR]
"""

from __future__ import annotations

import warnings

import pandas as pd
import plotly.graph_objects as go

import probes
from analysis.common import CHECKPOINTS, Result, best_selectivity, main_for, report, series
from workbench.checkpoints import load_policy
from workbench.contrast import contrast_pairs
from workbench.datasets import collect
from workbench.patching import default_patch_hooks, patch
from workbench.steering import policy_env

POLICIES = ("trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2", "trash-transformer-s0")
REWARD = ["reward", "reward_within_k", "return_to_go", "value_target"]
TASK = ["trash_map", "bin_map", "carrying", "trash_remaining", "target_dir", "target_dist", "agent_row", "agent_col"]


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None, policies=None) -> Result:
    result = Result("e1", "E1 trash: task features or a reward variable?")
    n_steps, n_pairs = (4000, 32) if quick else (12000, 128)
    names = policies or (POLICIES[:1] + POLICIES[3:] if quick else POLICIES)
    tables, patches = [], []
    for name in names:
        policy = load_policy(series(checkpoints, name))
        report(progress, f"E1 {name}: collecting {n_steps} observations and fitting probes")
        data = collect(policy, None, n_steps, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # constant labels of this env are skipped, with a row
            table = probes.fit_probes(data, None, REWARD + TASK, n_boot=100 if quick else 200).table
        tables.append(table.assign(policy=name))
        report(progress, f"E1 {name}: patching trash into trash-free rooms ({n_pairs} pairs)")
        pairs = contrast_pairs("trash", n_pairs, seed=0, config=policy_env(policy))
        patches.append(patch(policy, pairs, default_patch_hooks(policy), n_boot=200).assign(policy=name))
    probe_table, patch_table = pd.concat(tables, ignore_index=True), pd.concat(patches, ignore_index=True)
    result.tables = {"probes": probe_table, "patching": patch_table}
    for name in names:
        mine = probe_table[probe_table.policy == name]
        reward, task = best_selectivity(mine, "reward"), best_selectivity(mine, "task")
        effect = patch_table[(patch_table.policy == name) & (patch_table.metric == "normalised_effect")]
        clean, noise = effect[effect.source == "clean"], effect[effect.source == "noise"]
        top = clean.loc[clean.value.idxmax()] if not clean.empty else None
        result.summary[name] = {
            "best_reward_probe": _describe(reward),
            "best_task_probe": _describe(task),
            "top_patch_site": None
            if top is None
            else {
                "hook": top.hook,
                "site": top.site,
                "effect": top.value,
                "ci": [top.ci_low, top.ci_high],
                "noise_max": float(noise.value.max()),
            },  # fmt: skip
        }
        if reward is not None and task is not None:
            side = "task" if task.selectivity > reward.selectivity else "reward"
            result.findings.append(
                f"{name}: the best task-side probe ({task.label} at {task.hook}, selectivity {task.selectivity:.2f}) "
                f"{'beats' if side == 'task' else 'trails'} the best reward-side probe ({reward.label} at "
                f"{reward.hook}, {reward.selectivity:.2f})."
            )
    result.figures = {"selectivity": _selectivity_figure(probe_table), "patching": _patching_figure(patch_table)}
    return result


def _describe(row) -> dict | None:
    if row is None:
        return None
    return {"label": row.label, "hook": row.hook, "metric": row.metric, "value": float(row.value),
            "selectivity": float(row.selectivity)}  # fmt: skip


def _selectivity_figure(table: pd.DataFrame) -> go.Figure:
    """Best selectivity per label (over hooks), reward-side labels beside task-side, one group per policy."""
    main = table[table.metric.isin(["r2", "balanced_accuracy"])].dropna(subset=["selectivity"])
    best = main.loc[main.groupby(["policy", "label"]).selectivity.idxmax()]
    fig = go.Figure()
    for policy, rows in best.groupby("policy", sort=False):
        rows = rows.sort_values(["label_set", "selectivity"])
        fig.add_bar(x=[f"{s}: {label}" for s, label in zip(rows.label_set, rows.label, strict=True)],
                    y=rows.selectivity, name=policy)  # fmt: skip
    fig.update_layout(title="E1: best probe selectivity per label (score minus the best control)", barmode="group",
                      yaxis_title="selectivity", height=420)  # fmt: skip
    return fig


def _patching_figure(table: pd.DataFrame) -> go.Figure:
    """Per policy and hook: the largest normalised effect of patching one site, beside the noise baseline's."""
    effect = table[table.metric == "normalised_effect"]
    rows = effect.groupby(["policy", "hook", "source"]).value.max().unstack("source").reset_index()
    fig = go.Figure()
    for source in ("clean", "noise"):
        if source in rows:
            fig.add_bar(x=[f"{p} {h}" for p, h in zip(rows.policy, rows.hook, strict=True)], y=rows[source],
                        name=f"patched from {source}")  # fmt: skip
    fig.update_layout(title="E1: patching trash-present activations into trash-free rooms (best single site)",
                      barmode="group", yaxis_title="normalised effect (0 corrupted, 1 clean)", height=420)  # fmt: skip
    return fig


if __name__ == "__main__":
    main_for(run)
