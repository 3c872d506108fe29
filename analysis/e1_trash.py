"""E1 trash: rewarded for depositing trash, do the policies represent trash, bin and carrying, or a reward variable?
And does patching trash activations move their behaviour?

For each trained TrashGrid policy (the CNN at three seeds, the transformer), on its own rollouts:
- probes with every control on its hooks, reward-side labels (reward, reward within k steps, return-to-go, value
  target) beside task-side ones (trash and bin maps, carrying, trash remaining, direction and distance to the
  nearest target, position); the best selectivity of each side;
- activation patching of trash-present into trash-removed rooms at every cell / position of each hook: where does
  the trash's effect on the action live, against a noise baseline;
- steering the first CNN at its last conv map (the maze-policy study's "cheese vector" experiment, for trash):
  subtracting the trash vector (mean activation with minus without trash), and adding a "trash at cell (r, c)"
  vector at three cells, each beside 20 random vectors of the same norm and 20 with the same norm at every cell
  (random directions there), at the same coefficient and on the same episodes, and beside the vector at -coef:
  does the trash direction move behaviour more than any direction of its size would, and does the move belong to
  its sign (`workbench.steering.steering_effects` with `n_random`, `reverse`)?

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
from workbench.steering import policy_env, resolve_vector, steering_effects

POLICIES = ("trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2", "trash-transformer-s0")
STEER_HOOK, SUBTRACT, RETARGET = "conv.1.hook_out", -3.0, 3.0  # coefficients: past ~10 any vector breaks the policy
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
    report(progress, f"E1 {names[0]}: steering with the trash vector and trash-at-cell vectors, beside random ones")
    steer_table = steering_experiment(load_policy(series(checkpoints, names[0])), 100 if quick else 300)
    result.tables["steering"] = steer_table.assign(policy=names[0])
    result.summary["steering"] = _steering_summary(steer_table)
    result.findings += _steering_findings(names[0], steer_table)
    result.figures = {"selectivity": _selectivity_figure(probe_table), "patching": _patching_figure(patch_table),
                      "steering": _steering_figure(steer_table)}  # fmt: skip
    return result


def steering_experiment(policy, episodes: int, n_random: int = 20) -> pd.DataFrame:
    """Rows (vector, kind, null, reversed, coef, cell, metric, baseline, steered, difference, ci_low, ci_high, and on
    the vector's rows percentile_<null>, p_<null>, sign_specific): the trash vector subtracted, trash-at vectors added
    at three cells, each also at -coef (`reversed`), and `n_random` random vectors of each null kind ("norm": the
    same norm; "profile": the same norm at every cell) at the same coefficient, all on the same episodes."""
    room = policy_env(policy).room_size
    jobs = [("trash", None, SUBTRACT, ("deposit_rate", "steps_to_trash"))]
    jobs += [
        (f"trash-at:{r},{c}", (r, c), RETARGET, ("retarget_success_rate",)) for r, c in ((1, 1), (1, room), (room, 1))
    ]
    rows = []
    for spec, cell, coef, metrics in jobs:
        vector = resolve_vector(policy, spec, hook=STEER_HOOK)
        effects = steering_effects(policy, vector, coef, episodes=episodes, target_cell=cell, n_random=n_random,
                                   reverse=True)["metrics"]  # fmt: skip
        for metric in metrics:
            e = effects[metric]
            shared = {"vector": spec, "cell": str(cell), "metric": metric, "baseline": e["baseline"]}
            for reversed_, key in ((False, ""), (True, "reversed_")):
                steered, difference = e["reversed" if reversed_ else "steered"], e[f"{key}difference"]
                row = {**shared, "kind": "factor", "null": "", "reversed": reversed_,
                       "coef": -coef if reversed_ else coef, "steered": steered, "difference": difference,
                       "ci_low": e[f"{key}difference_ci"][0], "ci_high": e[f"{key}difference_ci"][1],
                       "sign_specific": e["sign_specific"]}  # fmt: skip
                for null, stats in e["null"].items():
                    row[f"percentile_{null}"] = stats[f"{key}percentile"]
                    row[f"p_{null}"] = stats[f"{key}p_value"]
                rows.append(row)
            for null, stats in e["null"].items():
                for steered, difference in zip(stats["steered"], stats["difference"], strict=True):
                    rows.append({**shared, "kind": "random", "null": null, "reversed": False, "coef": coef,
                                 "steered": steered, "difference": difference})  # fmt: skip
    return pd.DataFrame(rows)


def _steering_summary(table: pd.DataFrame) -> dict:
    out = {}
    for (spec, metric), rows in table.groupby(["vector", "metric"], sort=False):
        factor = rows[(rows.kind == "factor") & ~rows.reversed].iloc[0]
        flipped = rows[(rows.kind == "factor") & rows.reversed].iloc[0]
        random = rows[rows.kind == "random"]
        out[f"{spec} {metric}"] = {
            "metric": metric, "unit": "steps" if metric.startswith("steps_") else "rate",
            "coef": float(factor.coef), "baseline": float(factor.baseline), "steered": float(factor.steered),
            "ci": [float(factor.ci_low), float(factor.ci_high)],
            "reversed_coef": float(flipped.coef), "reversed_steered": float(flipped.steered),
            "reversed_ci": [float(flipped.ci_low), float(flipped.ci_high)],
            "sign_specific": bool(factor.sign_specific),
            "null": {null: {"n": len(group), "steered_range": [float(group.steered.min()), float(group.steered.max())],
                            "percentile": float(factor[f"percentile_{null}"]), "p_value": float(factor[f"p_{null}"]),
                            "reversed_percentile": float(flipped[f"percentile_{null}"]),
                            "reversed_p_value": float(flipped[f"p_{null}"])}
                     for null, group in random.groupby("null", sort=False)},
        }  # fmt: skip
    return out


def steered_text(entry: dict, *values: float, sep: str = " -> ") -> str:
    """Values of one steered metric as they read: steps as steps ("8.2 -> 10.0 steps"), rates as percentages
    ("94% -> 82%")."""
    if entry["unit"] == "steps":
        return sep.join(f"{v:.1f}" for v in values) + " steps"
    return sep.join(f"{v:.0%}" for v in values)


def inside_nulls(nulls: dict, alpha: float = 0.05) -> str:
    """ "norm null", "norm and profile nulls": the nulls an effect is inside of (rank p-value > alpha)."""
    inside = [kind for kind, n in nulls.items() if n["p_value"] > alpha]
    return " and ".join(inside) + (" nulls" if len(inside) > 1 else " null")


def _steering_findings(name: str, table: pd.DataFrame) -> list[str]:
    lines = []
    for key, e in _steering_summary(table).items():
        spec, metric = key.rsplit(" ", 1)
        scale = 1.0 if e["unit"] == "steps" else 100.0
        unit = " steps" if e["unit"] == "steps" else " points"
        nulls = "; ".join(
            f"{null} null ({n['n']} random vectors: {steered_text(e, *n['steered_range'], sep=' to ')}): percentile "
            f"{n['percentile']:.0f}, p = {n['p_value']:.2g} (x {e['reversed_coef']:+g}: {n['reversed_percentile']:.0f})"
            for null, n in e["null"].items()
        )
        outside = all(n["p_value"] <= 0.05 for n in e["null"].values())
        verdict = (
            f"outside the nulls and sign-specific (at x {e['reversed_coef']:+g} it does not move the metric the same "
            "way)" if e["sign_specific"]
            else f"outside the nulls but not sign-specific: at x {e['reversed_coef']:+g} it moves the metric the same "
            "way, beyond the nulls' quartile"
            if outside else f"inside the {inside_nulls(e['null'])}: no more than a random vector of its size does"
        )  # fmt: skip
        lines.append(
            f"{name}, {spec} x {e['coef']:+g} at {STEER_HOOK}: {metric} {steered_text(e, e['baseline'], e['steered'])} "
            f"(difference 95% CI {e['ci'][0] * scale:+.1f} to {e['ci'][1] * scale:+.1f}{unit}); at x "
            f"{e['reversed_coef']:+g}: {steered_text(e, e['reversed_steered'])}; {nulls}. Verdict: {verdict}."
        )
    return lines


def _steering_figure(table: pd.DataFrame) -> go.Figure:
    rows = table[table.metric != "steps_to_trash"]
    fig = go.Figure()
    colours = {"norm": "grey", "profile": "orange"}
    for null, group in rows[rows.kind == "random"].groupby("null", sort=False):
        fig.add_box(x=[f"{v} {m}" for v, m in zip(group.vector, group.metric, strict=True)], y=group.steered,
                    name=f"random vectors, same {'norm' if null == 'norm' else 'norm per cell'}", boxpoints="all",
                    marker_color=colours.get(null, "grey"), opacity=0.6)  # fmt: skip
    for reversed_, symbol, label in ((False, "diamond", "steered"), (True, "x", "steered at -coef")):
        mine = rows[(rows.kind == "factor") & (rows.reversed == reversed_)]
        fig.add_scatter(x=[f"{v} {m}" for v, m in zip(mine.vector, mine.metric, strict=True)], y=mine.steered,
                        mode="markers", marker={"symbol": symbol, "size": 12}, name=f"{label}: the vector")  # fmt: skip
    base = rows.drop_duplicates(["vector", "metric"])
    fig.add_scatter(x=[f"{v} {m}" for v, m in zip(base.vector, base.metric, strict=True)], y=base.baseline,
                    mode="markers", marker={"symbol": "line-ew-open", "size": 30, "color": "black"},
                    name="unsteered")  # fmt: skip
    fig.update_layout(title="E1: steering the TrashGrid CNN (trash vector subtracted; trash-at-cell vectors added), "
                      "beside random vectors and the vector at -coef", boxmode="group", yaxis_title="rate",
                      yaxis_range=[0, 1], height=420)  # fmt: skip
    return fig


def _describe(row) -> dict | None:
    if row is None:
        return None
    return {"label": row.label, "hook": row.hook, "metric": row.metric, "value": float(row.value),
            "selectivity": float(row.selectivity)}  # fmt: skip


def _selectivity_figure(table: pd.DataFrame) -> go.Figure:
    """Best selectivity per label (over hooks), reward-side labels beside task-side, one group per policy."""
    best = pd.concat(
        [probes.summary(rows).assign(policy=policy) for policy, rows in table.groupby("policy", sort=False)]
    )
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
