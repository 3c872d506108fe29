"""E1 trash: rewarded for depositing trash, do the policies represent trash, bin and carrying, or a reward variable?
And does patching or steering trash activations move their behaviour? Seeds are the unit of evidence: the CNN at
five training seeds, the transformer at three.

For each trained TrashGrid policy, on its own rollouts:
- probes with every control (a shuffled-label control, a control task, five random-init networks: `probes.fit_probes`)
  on its hooks, reward-side labels (reward, reward within k steps, return-to-go, value target) beside task-side ones
  (trash and bin maps, carrying, trash remaining, direction and distance to the nearest target, position). The
  comparison is `probes.gap`: the best task-side probe minus the best reward-side probe, each chosen on the
  validation split by its selectivity (score minus the best control), scored on the test split in info_gain (one
  scale for every label kind), with a paired episode-bootstrap interval. Its headline is the selectivity gap (the
  controls' scores taken off both sides): a label any network decodes does not count;
- conditional probes (`probes.conditional_probes`): what the hooks' activations add to each reward-side label beyond
  the ground-truth task labels (a reward label can be almost a function of the task state), the hook chosen on
  validation, the test gain with its paired interval;
- activation patching of trash-present into trash-removed rooms at every cell / position of each hook: where does
  the trash's effect on the action live, against a noise baseline;
- steering the CNNs at their last conv map (the maze-policy study's "cheese vector" experiment, for trash):
  subtracting the trash vector (mean activation with minus without trash), and adding a "trash at cell (r, c)"
  vector at three cells, each beside 20 random vectors of the same norm and 20 with the same norm at every cell
  (random directions there), at the same coefficient and on the same episodes, and beside the vector at -coef:
  does the trash direction move behaviour more than any direction of its size would, and does the move belong to
  its sign (`workbench.interventions.steering.steering_effects` with `n_random`, `reverse`)?

Per architecture, each measure is pooled over seeds: the mean with a 95% Student-t interval over seeds (the
per-seed, episode-level intervals are in the tables), and how many seeds' own intervals exclude 0. With --quick,
two CNN seeds and one transformer seed: too few for a verdict about the training recipe, and the findings say so.

    python analysis/e1_trash.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go

import probes
from analysis.common import CHECKPOINTS, Result, main_for, report, series
from probes.metrics import HEADLINE
from workbench.common.stats import mean_interval
from workbench.data import collect
from workbench.envs.contrast import contrast_pairs
from workbench.interventions.patching import default_patch_hooks, patch
from workbench.interventions.steering import policy_env, resolve_vector, steering_effects
from workbench.training.checkpoints import load_policy

CNN = tuple(f"trash-cnn-s{seed}" for seed in range(5))
TRANSFORMER = tuple(f"trash-transformer-s{seed}" for seed in range(3))
POLICIES = CNN + TRANSFORMER
QUICK = ("trash-cnn-s0", "trash-cnn-s1", "trash-transformer-s0")
MIN_SEEDS = 5  # below this, a pooled interval describes the seeds at hand, not the training recipe
STEER_HOOK, SUBTRACT, RETARGET = "conv.1.hook_out", -3.0, 3.0  # coefficients: past ~10 any vector breaks the policy
REWARD = ["reward", "reward_within_k", "return_to_go", "value_target"]
TASK = ["trash_map", "bin_map", "carrying", "trash_remaining", "target_dir", "target_dist", "agent_row", "agent_col"]
CONDITIONAL = ["reward_within_k", "value_target"]  # reward labels asked "beyond the task labels"


def architecture(name: str) -> str:
    return name.rsplit("-s", 1)[0]


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None, policies=None) -> Result:
    result = Result("e1", "E1 trash: task features or a reward variable?")
    n_steps, n_pairs, n_boot, episodes = (3000, 32, 100, 100) if quick else (8000, 96, 200, 200)
    names = list(policies or (QUICK if quick else POLICIES))
    tables, gaps, conditional, patches, steers = [], [], [], [], []
    for name in names:
        policy = load_policy(series(checkpoints, name))
        report(progress, f"E1 {name}: collecting {n_steps} observations; probes with controls, conditional probes")
        data = collect(policy, None, n_steps, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # constant labels of this env are skipped, with a row
            fitted = probes.fit_probes(data, None, REWARD + TASK, n_boot=n_boot)
            beyond = probes.conditional_probes(data, None, CONDITIONAL, TASK, n_boot=n_boot)
        tables.append(fitted.table.assign(policy=name))
        gaps.append(probes.gap(fitted).assign(policy=name))
        conditional.append(beyond.assign(policy=name))
        report(progress, f"E1 {name}: patching trash into trash-free rooms ({n_pairs} pairs)")
        pairs = contrast_pairs("trash", n_pairs, seed=0, config=policy_env(policy))
        patches.append(patch(policy, pairs, default_patch_hooks(policy), n_boot=200).assign(policy=name))
        if architecture(name) == "trash-cnn":
            report(progress, f"E1 {name}: steering with the trash vector and trash-at-cell vectors, beside random ones")
            steers.append(steering_experiment(policy, episodes).assign(policy=name))
    probe_table, patch_table = pd.concat(tables, ignore_index=True), pd.concat(patches, ignore_index=True)
    gap_table, cond_table = pd.concat(gaps, ignore_index=True), pd.concat(conditional, ignore_index=True)
    steer_table = pd.concat(steers, ignore_index=True) if steers else pd.DataFrame()
    result.tables = {"probes": probe_table, "gap": gap_table, "conditional": cond_table, "patching": patch_table,
                     "steering": steer_table}  # fmt: skip
    chosen = chosen_conditional(cond_table)
    for name in names:
        result.summary[name] = {
            "gap": _gap_entry(gap_table[gap_table.policy == name].iloc[0]),
            "beyond_task": {row.label: _gain_entry(row) for row in chosen[chosen.policy == name].itertuples()},
            "top_patch_site": _top_patch(patch_table[patch_table.policy == name]),
        }
    result.summary["pooled"] = pooled = {}
    for arch in dict.fromkeys(architecture(n) for n in names):
        mine = [n for n in names if architecture(n) == arch]
        pooled[arch] = _pool_probes(mine, gap_table, chosen)
        result.findings += _probe_findings(arch, pooled[arch])
    if not steer_table.empty:
        result.summary["steering"] = {policy: _steering_summary(rows)
                                      for policy, rows in steer_table.groupby("policy", sort=False)}  # fmt: skip
        result.summary["steering_pooled"] = _pool_steering(result.summary["steering"])
        result.findings += _steering_findings(result.summary["steering_pooled"])
    result.figures = {"gap": _gap_figure(gap_table, chosen), "selectivity": _selectivity_figure(probe_table),
                      "patching": _patching_figure(patch_table)}  # fmt: skip
    if not steer_table.empty:
        result.figures["steering"] = _steering_figure(steer_table)
    return result


# ---------------------------------------------------------------------------------------------- probes over seeds
def chosen_conditional(table: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, label): the conditional probe (hook, probe kind) with the best validation gain in info_gain
    (val_value - val_given), reported with its test gain and interval: the hook is not chosen on the test split."""
    rows = table[table.metric == HEADLINE].assign(val_gain=lambda t: t.val_value - t.val_given)
    rows = rows.dropna(subset=["val_gain"])
    return rows.loc[rows.groupby(["policy", "label"], sort=False).val_gain.idxmax()].reset_index(drop=True)


def _gap_entry(row) -> dict:
    return {"task": f"{row.task_label} at {row.task_hook}", "reward": f"{row.reward_label} at {row.reward_hook}",
            "task_value": float(row.task_value), "reward_value": float(row.reward_value), "gap": float(row.gap),
            "ci": [float(row.ci_low), float(row.ci_high)], "selectivity_gap": float(row.selectivity_gap),
            "selectivity_ci": [float(row.selectivity_ci_low), float(row.selectivity_ci_high)]}  # fmt: skip


def _gain_entry(row) -> dict:
    return {"hook": row.hook, "probe": row.probe, "given_value": float(row.given_value), "value": float(row.value),
            "gain": float(row.gain), "ci": [float(row.gain_ci_low), float(row.gain_ci_high)]}  # fmt: skip


def _top_patch(rows: pd.DataFrame) -> dict | None:
    effect = rows[rows.metric == "normalised_effect"]
    clean, noise = effect[effect.source == "clean"], effect[effect.source == "noise"]
    if clean.empty:
        return None
    top = clean.loc[clean.value.idxmax()]
    return {"hook": top.hook, "site": top.site, "effect": float(top.value), "ci": [float(top.ci_low),
            float(top.ci_high)], "noise_max": float(noise.value.max()) if not noise.empty else math.nan}  # fmt: skip


def pool(values, lows, highs) -> dict:
    """Seed-level summary of one measure: the mean over seeds with a 95% t-interval over seeds, the per-seed values,
    and how many seeds' own (episode-level) intervals lie above / below 0."""
    values, lows, highs = (np.asarray(v, dtype=np.float64) for v in (values, lows, highs))
    mean, lo, hi = mean_interval(values)
    return {"n_seeds": int(values.size), "mean": mean, "ci_low": lo, "ci_high": hi, "per_seed": values.tolist(),
            "n_above_zero": int((lows > 0).sum()), "n_below_zero": int((highs < 0).sum())}  # fmt: skip


def _pool_probes(names: list[str], gap_table: pd.DataFrame, chosen: pd.DataFrame) -> dict:
    gaps = gap_table[gap_table.policy.isin(names)]
    out = {"seeds": names,
           "selectivity_gap": pool(gaps.selectivity_gap, gaps.selectivity_ci_low, gaps.selectivity_ci_high),
           "gap": pool(gaps.gap, gaps.ci_low, gaps.ci_high),
           "task_probes": sorted(set(gaps.task_label)), "reward_probes": sorted(set(gaps.reward_label)),
           "beyond_task": {}}  # fmt: skip
    for label, rows in chosen[chosen.policy.isin(names)].groupby("label", sort=False):
        gain = pool(rows.gain, rows.gain_ci_low, rows.gain_ci_high)
        out["beyond_task"][label] = {
            **gain,
            "given_value": float(rows.given_value.mean()),
            "hooks": sorted(set(rows.hook)),
        }
    return out


def seed_text(entry: dict, scale: float = 1.0, unit: str = "", digits: int = 3) -> str:
    """'+0.120 [+0.050, +0.190]': a `pool` entry's mean over seeds with its t-interval over seeds."""
    value = f"{entry['mean'] * scale:+.{digits}f}"
    if entry["ci_low"] != entry["ci_low"]:
        return value + unit + " (one seed, no interval)"
    return value + f" [{entry['ci_low'] * scale:+.{digits}f}, {entry['ci_high'] * scale:+.{digits}f}]" + unit


def seeds_caveat(n: int) -> str:
    return "" if n >= MIN_SEEDS else f" Only {n} seed(s): below the {MIN_SEEDS} a claim about the recipe needs."


def _probe_findings(arch: str, pooled: dict) -> list[str]:
    n = len(pooled["seeds"])
    sel, raw = pooled["selectivity_gap"], pooled["gap"]
    side = ("none over seeds (one seed)" if n < 2
            else "task-side features are more decodable than reward-side ones, beyond what the controls decode"
            if sel["ci_low"] > 0 else "reward-side features are more decodable than task-side ones, beyond the controls"
            if sel["ci_high"] < 0 else "no difference between the two sides is shown")  # fmt: skip
    lines = [
        f"{arch} ({n} seeds): best task-side minus best reward-side probe, chosen on validation, in info_gain after "
        f"the controls (selectivity gap): mean {seed_text(sel)} over seeds (per-seed intervals above 0 in "
        f"{sel['n_above_zero']} of {n}, below 0 in {sel['n_below_zero']}); without the controls {seed_text(raw)}. "
        f"Probes chosen: task {', '.join(pooled['task_probes'])}; reward {', '.join(pooled['reward_probes'])}. "
        f"Verdict: {side}.{seeds_caveat(n)}"
    ]
    for label, g in pooled["beyond_task"].items():
        verdict = ("none over seeds (one seed)" if n < 2
                   else "the activations carry information about it beyond the task labels (a linear read-out of them)"
                   if g["ci_low"] > 0 else "no information beyond the task labels is shown")  # fmt: skip
        lines.append(
            f"{arch} ({n} seeds): {label} from the task labels alone scores {g['given_value']:.3f} info_gain (mean); "
            f"the activations ({', '.join(g['hooks'])}, chosen on validation) add {seed_text(g)} over seeds "
            f"(per-seed intervals above 0 in {g['n_above_zero']} of {n}). Verdict: {verdict}.{seeds_caveat(n)}"
        )
    return lines


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


def _pool_steering(per_policy: dict[str, dict]) -> dict:
    """Per steered (vector, metric): the steered-minus-unsteered difference pooled over seeds (mean, t-interval
    over seeds), at +coef and at -coef, and how many seeds' vectors lie outside every null (rank p <= 0.05 in each)
    and are sign-specific."""
    out = {}
    for key in next(iter(per_policy.values())):
        entries = [summary[key] for summary in per_policy.values()]
        first = entries[0]
        diffs = [e["steered"] - e["baseline"] for e in entries]
        flipped = [e["reversed_steered"] - e["baseline"] for e in entries]
        out[key] = {
            "metric": first["metric"], "unit": first["unit"], "coef": first["coef"],
            "reversed_coef": first["reversed_coef"], "seeds": list(per_policy),
            "baseline": [e["baseline"] for e in entries], "steered": [e["steered"] for e in entries],
            "difference": pool(diffs, [e["ci"][0] for e in entries], [e["ci"][1] for e in entries]),
            "reversed_difference": pool(flipped, [e["reversed_ci"][0] for e in entries],
                                        [e["reversed_ci"][1] for e in entries]),
            "n_outside_nulls": sum(all(n["p_value"] <= 0.05 for n in e["null"].values()) for e in entries),
            "n_sign_specific": sum(e["sign_specific"] for e in entries),
            "n_random": {null: n["n"] for null, n in first["null"].items()},
        }  # fmt: skip
    return out


def _steering_findings(pooled: dict) -> list[str]:
    lines = []
    for key, e in pooled.items():
        spec, metric = key.rsplit(" ", 1)
        n = len(e["seeds"])
        scale, unit = (1.0, " steps") if e["unit"] == "steps" else (100.0, " points")
        d, r = seed_text(e["difference"], scale, unit, 1), seed_text(e["reversed_difference"], scale, unit, 1)
        below, above = e["difference"]["n_below_zero"], e["difference"]["n_above_zero"]
        nulls = " and ".join(f"{k} ({v} random vectors)" for k, v in e["n_random"].items())
        verdict = (
            "the direction moves behaviour beyond random directions of its size, and by its sign, in every seed"
            if e["n_sign_specific"] == n
            else f"outside the nulls in every seed, sign-specific in {e['n_sign_specific']} of {n}: in the others the "
            f"vector at x {e['reversed_coef']:+g} moves the metric the same way" if e["n_outside_nulls"] == n
            else f"inside a null in {n - e['n_outside_nulls']} of {n} seeds: not shown to beat a random vector of "
            "its size"
        )  # fmt: skip
        lines.append(
            f"trash-cnn ({n} seeds), {spec} x {e['coef']:+g} at {STEER_HOOK}: {metric} moves by {d} (mean over "
            f"seeds, t-interval; per-seed intervals below 0 in {below}, above 0 in {above}); "
            f"at x {e['reversed_coef']:+g} by {r}. Outside the {nulls} in {e['n_outside_nulls']} of {n} seeds, "
            f"sign-specific in {e['n_sign_specific']}. Verdict: {verdict}.{seeds_caveat(n)}"
        )
    return lines


def _steering_figure(table: pd.DataFrame) -> go.Figure:
    """Per steered (vector, metric): each seed's steered value (the vector at +coef and at -coef) beside that seed's
    random vectors (both nulls pooled) and the unsteered value."""
    rows = table[table.metric != "steps_to_trash"]
    key = rows.vector + " " + rows.metric
    fig = go.Figure()
    random = rows[rows.kind == "random"]
    fig.add_box(x=key[random.index], y=random.steered, name="random vectors (both nulls, every seed)",
                boxpoints="all", marker_color="grey", opacity=0.5)  # fmt: skip
    for reversed_, symbol, label in ((False, "diamond", "the vector"), (True, "x", "the vector at -coef")):
        mine = rows[(rows.kind == "factor") & (rows.reversed == reversed_)]
        fig.add_scatter(x=key[mine.index], y=mine.steered, mode="markers", marker={"symbol": symbol, "size": 11},
                        name=label, text=mine.policy)  # fmt: skip
    base = rows[rows.kind == "factor"].drop_duplicates(["policy", "vector", "metric"])
    fig.add_scatter(x=key[base.index], y=base.baseline, mode="markers", text=base.policy, name="unsteered",
                    marker={"symbol": "line-ew-open", "size": 24, "color": "black"})  # fmt: skip
    fig.update_layout(title="E1: steering the TrashGrid CNNs (one point per seed), beside random vectors of the same "
                      "norm and the vector at -coef", yaxis_title="rate", yaxis_range=[0, 1], height=420)  # fmt: skip
    return fig


def _gap_figure(gaps: pd.DataFrame, chosen: pd.DataFrame) -> go.Figure:
    """Per seed: the selectivity gap (task minus reward side) and each conditional gain, with their intervals."""
    fig = go.Figure()
    above, below = gaps.selectivity_ci_high - gaps.selectivity_gap, gaps.selectivity_gap - gaps.selectivity_ci_low
    fig.add_scatter(x=gaps.policy, y=gaps.selectivity_gap, mode="markers", name="selectivity gap: task - reward",
                    error_y={"type": "data", "symmetric": False, "array": above, "arrayminus": below})  # fmt: skip
    for label, rows in chosen.groupby("label", sort=False):
        fig.add_scatter(x=rows.policy, y=rows.gain, mode="markers", name=f"{label}: gain beyond the task labels",
                        error_y={"type": "data", "symmetric": False, "array": rows.gain_ci_high - rows.gain,
                                 "arrayminus": rows.gain - rows.gain_ci_low})  # fmt: skip
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(title="E1: task-side minus reward-side selectivity, and what activations add to reward labels "
                      "beyond the task labels (info_gain, 95% episode-bootstrap intervals, one point per seed)",
                      yaxis_title="info_gain", height=420)  # fmt: skip
    return fig


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
