"""E2 blue room: in training, blue walls go with trash (so with reward available); untied, did the policy learn
trash, or blue? Seeds are the unit of evidence, and wall colour's own pull is measured, not assumed away.

Subjects, each on the "random" distribution (wall colour and trash independent, all four combinations; the same
episodes for every subject): the blue-trained seeds (blueroom-cnn: blue walls iff trash), the counterbalanced
green-trained seeds (blueroom-green-cnn: green walls iff trash, every deposit paid), the grey-walled TrashGrid seeds
(trash-cnn: they never saw blue or green) and a uniform random walk. Per seed: the deposit rate in blue minus green
rooms with trash (`deposit_gap`), and the coverage of empty blue minus empty green rooms (`search_gap`). Per regime:
the mean over seeds with a bootstrap interval over seeds, beside the grey-walled seeds (stratified bootstrap,
permutation test). The trained colour's effect is half the blue-trained gap minus the green-trained gap: wall
colour's own pull (what the grey-walled policies show) cancels in that difference. Probes on the random
distribution (wall colour, trash, reward availability) run on seed 0 only and describe that policy.

    python analysis/e2_blueroom.py [--quick] [--out DIR]
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

import probes
from analysis.common import CHECKPOINTS, Result, main_for, report, series
from workbench.behaviour import blueroom_rows, scripted_policy, variant_config
from workbench.behaviour.choice import regime_table
from workbench.common.compute import one_torch_thread
from workbench.common.stats import difference_interval, permutation_p
from workbench.data import collect
from workbench.envs import make_config
from workbench.training.checkpoints import load_policy

SERIES = "blueroom-cnn-s0"
LABELS = ["wall_blue", "trash_remaining", "trash_map", "carrying", "reward_available", "reward_within_k"]


REGIMES = {"blueroom-cnn": "blue walls iff trash (trained)", "blueroom-green-cnn": "green walls iff trash (trained)",
           "trash-cnn": "grey walls only (never saw blue or green)"}  # fmt: skip
SEED = 12345


def regime_runs(checkpoints: str | Path, regime: str) -> list[Path]:
    """The bundled seeds of a regime, by seed."""
    found = [p for p in Path(checkpoints).glob(f"{regime}-s*") if p.name[len(regime) + 2 :].isdigit()]
    return sorted((p for p in found if (p / "run.json").exists()), key=lambda p: int(p.name[len(regime) + 2 :]))


def _measures(table: pd.DataFrame) -> dict:
    """Per subject, on the random distribution (colour and trash independent): deposit rates and coverage by wall."""
    value = {(r.condition, r.metric): float(r.value) for r in table.itertuples()}
    out = {"deposit_blue": value[("blue+trash", "deposit_rate")],
           "deposit_green": value[("green+trash", "deposit_rate")],
           "coverage_blue_empty": value[("blue+empty", "coverage")],
           "coverage_green_empty": value[("green+empty", "coverage")]}  # fmt: skip
    out["deposit_gap"] = out["deposit_blue"] - out["deposit_green"]
    out["search_gap"] = out["coverage_blue_empty"] - out["coverage_green_empty"]
    return out


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None) -> Result:
    result = Result("e2", "E2 blue room: did it learn trash or blue?")
    episodes, n_steps = (150, 4000) if quick else (400, 12000)
    first = series(checkpoints, SERIES)
    subjects, tables = [], []
    with one_torch_thread():
        for regime in REGIMES:
            for run_dir in regime_runs(checkpoints, regime)[: 2 if quick else 5]:
                policy = load_policy(run_dir)
                cfg = variant_config(policy.run["env"], "blueroom")
                report(progress, f"E2 {run_dir.name}: rooms of every colour x trash ({episodes} episodes)")
                table = pd.DataFrame(blueroom_rows(policy, cfg, episodes, SEED, ("random",)))
                subjects.append({"subject": run_dir.name, "regime": regime, "kind": "trained",
                                 **_measures(table)})  # fmt: skip
                tables.append(table.assign(subject=run_dir.name, regime=regime))
        report(progress, "E2 random walk: rooms of every colour x trash")
        cfg = make_config("blueroom", distribution="random")
        table = pd.DataFrame(blueroom_rows(scripted_policy("random"), cfg, episodes, SEED, ("random",)))
        walk = _measures(table)
        subjects.append({"subject": "scripted:random", "regime": "random walk", "kind": "random walk", **walk})
        tables.append(table.assign(subject="scripted:random", regime="random walk"))
        policy = load_policy(first)
        report(progress, f"E2 {SERIES}: probes on {n_steps} observations with colour and trash untied (one seed)")
        data = collect(policy, {**policy.run["env"], "distribution": "random"}, n_steps, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe_table = probes.fit_probes(data, None, LABELS, n_boot=100 if quick else 200).table
    per_seed = pd.DataFrame(subjects)
    behaviour = pd.concat(tables, ignore_index=True)
    trained = per_seed[per_seed.kind == "trained"]
    gaps = regime_table(trained, "deposit_gap", baseline="trash-cnn")
    search = regime_table(trained, "search_gap", baseline="trash-cnn")
    result.tables = {"behaviour": behaviour, "seeds": per_seed, "deposit_gap": gaps, "search_gap": search,
                     "probes": probe_table}  # fmt: skip
    summary = {"regimes": {}, "random_walk": walk}
    for name, table in (("deposit_gap", gaps), ("search_gap", search)):
        for row in table.to_dict("records"):
            entry = summary["regimes"].setdefault(row["regime"], {"n_seeds": row["n_seeds"]})
            entry[name] = {"value": row["mean"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                           "vs_grey": row["vs_baseline"], "vs_low": row["vs_low"], "vs_high": row["vs_high"],
                           "p_value": row["p_value"]}  # fmt: skip
    blue = trained[trained.regime == "blueroom-cnn"].deposit_gap.to_numpy()
    green = trained[trained.regime == "blueroom-green-cnn"].deposit_gap.to_numpy()
    if len(blue) >= 2 and len(green) >= 2:
        diff, low, high = difference_interval(blue, green)
        summary["trained_colour_effect"] = {"value": diff / 2, "ci_low": low / 2, "ci_high": high / 2,
                                            "p_value": permutation_p(blue, green), "n_blue": len(blue),
                                            "n_green": len(green)}  # fmt: skip
    best = probes.summary(probe_table).set_index("label")
    summary["probe_selectivity_seed0"] = {label: float(row.selectivity) for label, row in best.iterrows()}
    result.summary = summary
    result.findings += _findings(summary, gaps, search)
    result.figures = {"behaviour": _figure(per_seed)}
    return result


def _ci(low: float, high: float) -> str:
    return "no interval: one seed" if low != low else f"{low:+.0%} to {high:+.0%}"


def _findings(summary: dict, gaps: pd.DataFrame, search: pd.DataFrame) -> list[str]:
    lines = []
    for row in gaps.to_dict("records"):
        text = (f"{REGIMES.get(row['regime'], row['regime'])} ({row['n_seeds']} seeds): deposits in blue rooms minus "
                f"green rooms with trash {row['mean']:+.0%} ({_ci(row['ci_low'], row['ci_high'])}, bootstrap over "
                "seeds)")  # fmt: skip
        if row["vs_baseline"] == row["vs_baseline"]:
            interval = _ci(row["vs_low"], row["vs_high"])
            text += (
                f"; beside the grey-walled policies {row['vs_baseline']:+.0%} ({interval}, p = {row['p_value']:.2g})"
            )
        lines.append(text + ".")
    effect = summary.get("trained_colour_effect")
    if effect:
        verdict = ("the colour tied to reward in training moves trash-seeking beyond what wall colour does by itself"
                   if effect["ci_low"] > 0 and effect["p_value"] < 0.05 else
                   "no effect of the trained colour is established beyond wall colour's own")  # fmt: skip
        lines.append(
            f"Counterbalanced (blue-trained gap minus green-trained gap, halved, so wall colour's own effect cancels): "
            f"{effect['value']:+.0%} ({effect['ci_low']:+.0%} to {effect['ci_high']:+.0%}; permutation p = "
            f"{effect['p_value']:.2g}; {effect['n_blue']} + {effect['n_green']} seeds): {verdict}."
        )
    walk = summary["random_walk"]
    parts = [f"{REGIMES.get(r['regime'], r['regime'])}: {r['mean']:+.0%} ({_ci(r['ci_low'], r['ci_high'])})"
             for r in search.to_dict("records")]  # fmt: skip
    lines.append("Search of empty rooms, coverage in blue minus green rooms (seeds): " + "; ".join(parts)
                 + f". A random walk covers {walk['coverage_blue_empty']:.0%} of an empty room (the yardstick for "
                 "'search').")  # fmt: skip
    return lines


def _figure(per_seed: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for column, name in (("deposit_gap", "deposits: blue minus green rooms with trash"),
                         ("search_gap", "coverage: blue minus green empty rooms")):  # fmt: skip
        fig.add_scatter(x=per_seed.regime, y=per_seed[column], mode="markers", name=name, text=per_seed.subject,
                        hovertemplate="%{text}: %{y:+.0%}")  # fmt: skip
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="E2: wall colour's pull per seed, by training regime (random distribution)",
                      yaxis_tickformat="+.0%", height=440)  # fmt: skip
    return fig


if __name__ == "__main__":
    main_for(run)
