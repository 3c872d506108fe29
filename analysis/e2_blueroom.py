"""E2 blue room: in training, blue walls go with trash (so with reward available); at test the two are untied.
Did the policy learn trash, or blue?

- behaviour on the training and test distributions: the deposit rate in green rooms with trash (did it learn
  trash?) and the search (coverage) in blue rooms without trash, beside green rooms without trash (did it learn
  blue?);
- probes on the "random" distribution, where wall colour and trash vary independently (all four combinations):
  how selectively are wall colour, trash and reward availability represented?

    python analysis/e2_blueroom.py [--quick] [--out DIR]
"""

from __future__ import annotations

import warnings

import pandas as pd
import plotly.graph_objects as go

import probes
from analysis.common import CHECKPOINTS, Result, main_for, report, series
from workbench.behaviour import behaviour_table, variant_config
from workbench.checkpoints import load_policy
from workbench.datasets import collect

SERIES = "blueroom-cnn-s0"
LABELS = ["wall_blue", "trash_remaining", "trash_map", "carrying", "reward_available", "reward_within_k"]


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None) -> Result:
    result = Result("e2", "E2 blue room: did it learn trash or blue?")
    episodes, n_steps = (150, 4000) if quick else (500, 12000)
    run_dir = series(checkpoints, SERIES)
    policy = load_policy(run_dir)
    report(progress, f"E2 {SERIES}: rollouts on the training and test distributions ({episodes} episodes each)")
    table = behaviour_table(policy, variant_config(policy.run["env"]), episodes, run=SERIES, step=policy.step,
                            run_seed=policy.run["seed"])  # fmt: skip
    report(progress, f"E2 {SERIES}: probes on {n_steps} observations with colour and trash untied")
    data = collect(policy, {**policy.run["env"], "distribution": "random"}, n_steps, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        probe_table = probes.fit_probes(data, None, LABELS, n_boot=100 if quick else 200).table
    result.tables = {"behaviour": table, "probes": probe_table}

    def rate(metric, dist, condition):
        row = table[(table.metric == metric) & (table.distribution == dist) & (table.condition == condition)]
        return None if row.empty else {k: float(row.iloc[0][k]) for k in ("value", "ci_low", "ci_high", "n")}

    best = probes.summary(probe_table).set_index("label")
    result.summary = {
        "green_trash_deposit_rate_test": rate("deposit_rate", "test", "green+trash"),
        "blue_trash_deposit_rate_train": rate("deposit_rate", "train", "blue+trash"),
        "blue_empty_coverage_test": rate("coverage", "test", "blue+empty"),
        "green_empty_coverage_train": rate("coverage", "train", "green+empty"),  # the test has no empty green room
        "probe_selectivity": {label: float(row.selectivity) for label, row in best.iterrows()},
    }
    s = result.summary
    if s["green_trash_deposit_rate_test"] and s["blue_trash_deposit_rate_train"]:
        green, blue = s["green_trash_deposit_rate_test"], s["blue_trash_deposit_rate_train"]
        result.findings.append(
            f"Trash in green rooms (never seen in training) was deposited in {green['value']:.0%} of episodes "
            f"(95% CI {green['ci_low']:.0%}-{green['ci_high']:.0%}), against {blue['value']:.0%} in the blue rooms "
            "of training: "
            + (
                "it learned trash, not blue."
                if green["ci_low"] > 0.5 * blue["value"]
                else "much of its trash-seeking is tied to the blue walls."
            )  # fmt: skip
        )
    if s["blue_empty_coverage_test"] and s["green_empty_coverage_train"]:
        b, g = s["blue_empty_coverage_test"], s["green_empty_coverage_train"]
        searched = b["ci_low"] > g["ci_high"]
        result.findings.append(
            f"In empty rooms it covered {b['value']:.0%} of a blue room (test) vs {g['value']:.0%} of a green one "
            "(training): "
            + (
                "blue walls alone make it search (it learned blue as a cue)."
                if searched
                else "no more search in blue rooms than green ones."
            )  # fmt: skip
        )
    result.figures = {"behaviour": _figure(table)}
    return result


def _figure(table: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for metric in ("deposit_rate", "coverage"):
        rows = table[table.metric == metric]
        fig.add_bar(x=[f"{d}: {c}" for d, c in zip(rows.distribution, rows.condition, strict=True)], y=rows.value,
                    error_y={"type": "data", "symmetric": False, "array": rows.ci_high - rows.value,
                             "arrayminus": rows.value - rows.ci_low}, name=metric)  # fmt: skip
    fig.update_layout(title="E2: blue room, training vs test distribution (95% intervals)", barmode="group",
                      height=420)  # fmt: skip
    return fig


if __name__ == "__main__":
    main_for(run)
