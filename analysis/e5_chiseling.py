"""E5 chiseling: over the checkpoint series of the TrashGrid CNN (three seeds), when do feature directions become
readable at the fc layer, how much does each move the action distribution, and does that growth follow the rate of
reward that training received?

Reward is the cognition-updater: it chisels computations into the policy where it is received. For each seed
(trash-cnn-s0, -s1, -s2), on one fixed set of observations (rollouts of that seed's final policy) replayed through
every checkpoint, and for four features (task-side: carrying, distance to the nearest target; reward-side: reward
within k steps, return-to-go), `probes.tracer` measures in standardised space (so that no near-dead unit can
dominate):

- selectivity: the held-out correlation of the label with the activations' projection on the feature's
  mean-difference direction, minus the higher of two controls (train labels permuted; a randomly initialised
  network of the same architecture), with a 95% episode-bootstrap interval;
- push: the mean KL divergence (nats) of the action distribution when the activations move 2 standard deviations
  along the unit-norm standardised direction, beside the same push along random directions;
- per stretch between consecutive checkpoints: the reward rate training received (reward events per env-step,
  logged by the trainer; never raw counts, which grow with a stretch's length), beside the rate a uniformly random
  policy receives over the same stretches (its rooms started together as in training, so the first stretches,
  which cover only the first steps of every episode, are compared like with like), and the growth of selectivity
  and push per 1,000 env-steps.

Declared test (fixed before it was run on the bundled series):

- unit: a stretch between consecutive checkpoints, within a seed;
- x: the reward rate in the stretch; y (primary): the growth of the feature's selectivity per 1,000 env-steps of
  the stretch; y (secondary, reported, outside the family): the growth of the push per 1,000 env-steps;
- statistic: Spearman's rho across the stretches of a seed; over seeds, the mean of the seeds' rhos;
- p-value: two-sided permutation test, `scipy.stats.permutation_test` with 9,999 random pairings, each seed's
  stretches permuted within that seed;
- family: the four features' primary tests, Holm-adjusted, at alpha 0.05;
- power (by simulation, `probes.tracer.min_detectable_rho`): with 15 stretches per seed (the bundled traced
  series' 16 checkpoints) and 3 seeds the mean-rho test detects a population Spearman rho of 0.44 with 80% power at
  alpha 0.05 (0.52 at 0.0125, Holm's strictest step); one seed alone needs 0.69 (0.78); with 10 checkpoints it was
  0.57. A weaker real association would likely be missed; the summary recomputes these for the stretches present.
- what it cannot show: in every seed the reward rate rises with training time, so an association across stretches
  is one with training progress as much as with reward; the summary gives rho(reward rate, stretch midpoint) per
  seed as the size of that confound. Growth per env-step over the short early stretches (4,096 env-steps) is
  dominated by the readout's sampling noise.

    python analysis/e5_chiseling.py [--quick] [--out DIR]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.common import CHECKPOINTS, Result, main_for, report, series
from probes import tracer
from workbench.common.stats import mean_interval
from workbench.training.checkpoints import read_run

SERIES = ("trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2")
HOOK = "fc.hook_out"
FEATURES = {"carrying": "task", "target_dist": "task", "reward_within_k": "reward", "return_to_go": "reward"}
ALPHA = 0.05
COLOURS = dict(zip(FEATURES, ("#1f77b4", "#2ca02c", "#d62728", "#ff7f0e"), strict=True))
SEED_DASH = ("solid", "dash", "dot", "dashdot", "longdash")


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None, names=SERIES) -> Result:
    result = Result("e5", "E5 chiseling: what did each stretch of training strengthen, and at what reward rate?")
    n_obs, n_push, n_boot, n_random = (3000, 512, 50, 2) if quick else (12000, 2048, 200, tracer.N_RANDOM)
    traced, stretches, floors = [], [], {}
    for i, name in enumerate(names):
        run_dir = series(checkpoints, name)
        report(progress, f"E5 {name}: readout and push at every checkpoint ({n_obs} observations)")
        table = tracer.trace_run(run_dir, HOOK, list(FEATURES), n_obs=n_obs, n_push=n_push, n_random=n_random,
                                 n_boot=n_boot, seed=0)  # fmt: skip
        meta = read_run(run_dir)
        rewards = tracer.reward_stretches(run_dir)
        steps = [*rewards.start, int(rewards.end.iloc[-1])]
        n_envs = int(meta.get("ppo", {}).get("n_envs", 256))
        key = (repr(sorted(meta["env"].items())), n_envs, tuple(steps))
        if key not in floors:  # what a uniformly random policy receives over the same stretches, trained alike
            floors[key] = tracer.random_policy_rate(meta["env"], steps, n_envs=n_envs, repeats=1 if quick else 4)
        random = floors[key][["start", "end", "rate", "ci_low", "ci_high"]]
        random.columns = ["start", "end", "random_rate", "random_ci_low", "random_ci_high"]
        st = tracer.stretch_table(table, rewards.merge(random, on=["start", "end"], how="left"))
        st = st.assign(series=name, seed=i, label_set=st.label.map(FEATURES))
        traced.append(table.assign(series=name, seed=i, label_set=table.label.map(FEATURES)))
        stretches.append(st)
    table, stretches = pd.concat(traced, ignore_index=True), pd.concat(stretches, ignore_index=True)
    floor = next(iter(floors.values())).iloc[-1].to_dict()  # the last stretch: the random policy's steady state
    report(progress, "E5: the declared association test and its power")
    summary, findings = _summarise(table, stretches, floor, quick)
    result.tables = {"checkpoints": table, "stretches": stretches}
    result.summary, result.findings = summary, findings
    result.figures = {"chiseling": _figure(table, stretches),
                      "association": _association_figure(summary)}  # fmt: skip
    return result


def _per_seed(stretches: pd.DataFrame, label: str, column: str) -> tuple[list, list, list]:
    xs, ys, names = [], [], []
    for name, rows in stretches[stretches.label == label].groupby("series", sort=False):
        rows = rows.sort_values("start")
        xs.append(rows.reward_rate.to_numpy())
        ys.append(rows[column].to_numpy())
        names.append(name)
    return xs, ys, names


def _summarise(table: pd.DataFrame, stretches: pd.DataFrame, floor: dict, quick: bool) -> tuple[dict, list[str]]:
    names = list(dict.fromkeys(stretches.series))
    lengths = stretches.drop_duplicates(["series", "start"]).groupby("series").size()
    n_stretches, n_seeds = int(lengths.min()), len(names)
    n_sim = 1000 if quick else 4000
    power = {"n_stretches": n_stretches, "n_seeds": n_seeds, "power": 0.8,
             "mde_rho_mean_over_seeds": tracer.min_detectable_rho(n_stretches, n_seeds, ALPHA, n_sim=n_sim),
             "mde_rho_mean_over_seeds_holm_first": tracer.min_detectable_rho(n_stretches, n_seeds, ALPHA / 4,
                                                                             n_sim=n_sim),
             "mde_rho_one_seed": tracer.min_detectable_rho(n_stretches, 1, ALPHA, n_sim=n_sim)}  # fmt: skip
    rewards = stretches.drop_duplicates(["series", "start"])
    seeds = {}
    for name in names:
        r = rewards[rewards.series == name].sort_values("start")
        mid = np.log(np.maximum(r.start.to_numpy(), r.end.iloc[0] / 2)) + np.log(r.end.to_numpy())
        below, above = r.rate_ci_high < r.random_ci_low, r.rate_ci_low > r.random_ci_high
        seeds[name] = {"reward_rate_per_1k": (1000 * r.reward_rate).round(2).tolist(),
                       "random_rate_per_1k": (1000 * r.random_rate).round(2).tolist(),
                       "stretches": [[int(a), int(b)] for a, b in zip(r.start, r.end, strict=True)],
                       "stretches_below_random": int(below.sum()), "stretches_above_random": int(above.sum()),
                       "first_above_random": None if not above.any() else [int(r.start[above].iloc[0]),
                                                                           int(r.end[above].iloc[0])],
                       "rho_reward_rate_vs_time": float(tracer.spearman(mid, r.reward_rate.to_numpy()))}  # fmt: skip
    features, primary_p = {}, []
    for label in FEATURES:
        entry = {"label_set": FEATURES[label], "per_seed": {}}
        for column, key in (("d_selectivity_per_kstep", "selectivity"), ("d_push_kl_per_kstep", "push")):
            xs, ys, seed_names = _per_seed(stretches, label, column)
            test = tracer.association_test(xs, ys, seed=0)
            entry[key] = {"rho_per_seed": dict(zip(seed_names, test["rho"], strict=True)),
                          "p_per_seed": dict(zip(seed_names, test["p"], strict=True)),
                          "mean_rho": test["mean_rho"], "p": test["p_mean"]}  # fmt: skip
        primary_p.append(entry["selectivity"]["p"])
        for name in names:
            t = table[(table.series == name) & (table.label == label)].sort_values("step")
            st = stretches[(stretches.series == name) & (stretches.label == label)]
            grew = st.loc[st.d_selectivity.idxmax()]
            pushed = st.loc[st.d_push_kl.idxmax()]
            on = tracer.onset(t)
            # push beyond random directions, where those move the output at all (1e-3 nats)
            ratio = (t.push_kl / t.push_kl_random).where(t.push_kl_random > 1e-3).fillna(0).to_numpy()
            on_rate = None
            if on is not None:
                on_rate = float(st[(st.start == on[0])].reward_rate.iloc[0])
            entry["per_seed"][name] = {
                "onset": None if on is None else list(on), "onset_reward_rate": on_rate,
                "selectivity_first": float(t.selectivity.iloc[0]), "selectivity_last": float(t.selectivity.iloc[-1]),
                "selectivity_last_ci": [float(t.sel_ci_low.iloc[-1]), float(t.sel_ci_high.iloc[-1])],
                "selectivity_grew_most": [int(grew.start), int(grew.end)], "d_selectivity": float(grew.d_selectivity),
                "reward_rate_then": float(grew.reward_rate),
                "push_grew_most": [int(pushed.start), int(pushed.end)], "d_push_kl": float(pushed.d_push_kl),
                "push_kl_last": float(t.push_kl.iloc[-1]), "push_kl_random_last": float(t.push_kl_random.iloc[-1]),
                "near_dead_share_max": float(t.near_dead_share.max()),
                "push_over_random_max": float(ratio.max()), "push_over_random_max_at": int(t.step.iloc[ratio.argmax()]),
                "push_over_random_last": float(ratio[-1]),
            }  # fmt: skip
        features[label] = entry
    for label, p in zip(FEATURES, tracer.holm(primary_p), strict=True):
        features[label]["selectivity"]["p_holm"] = p
    summary = {"series": names, "hook": HOOK, "push_sd": tracer.ALPHA, "random_policy_rate": floor,
               "declared_test": {"x": "reward rate per env-step in the stretch",
                                 "y": "selectivity growth per 1,000 env-steps (push growth: secondary)",
                                 "statistic": "mean over seeds of Spearman's rho across stretches",
                                 "p": "two-sided permutation (pairings within seed), Holm over the 4 features",
                                 "alpha": ALPHA, **power},
               "seeds": seeds, "features": features}  # fmt: skip
    return summary, _findings(summary)


def _fmt_stretch(s) -> str:
    return "none" if s is None else f"{s[0]:,}-{s[1]:,}"


def _findings(summary: dict) -> list[str]:
    floor, seeds, test = summary["random_policy_rate"], summary["seeds"], summary["declared_test"]
    names = summary["series"]
    out = []
    rates = "; ".join(f"{n}: " + ", ".join(f"{r:.1f}" for r in s["reward_rate_per_1k"]) for n, s in seeds.items())
    first = next(iter(seeds.values()))
    randoms = ", ".join(f"{r:.1f}" for r in first["random_rate_per_1k"])
    out.append(
        f"Reward events per 1,000 env-steps in each stretch ({rates}); a uniformly random policy over the same "
        f"stretches, its rooms started together as in training: {randoms} (steady state "
        f"{1000 * floor['rate']:.2f} [{1000 * floor['ci_low']:.2f}, {1000 * floor['ci_high']:.2f}]). Stretches whose "
        "rate is above the random policy's (Wilson intervals apart): "
        + ", ".join(f"{s['stretches_above_random']}" for s in seeds.values()) + f" of {test['n_stretches']}, the "
        "first " + ", ".join(_fmt_stretch(s["first_above_random"]) for s in seeds.values()) + "; below: "
        + ", ".join(f"{s['stretches_below_random']}" for s in seeds.values()) + f" ({', '.join(names)}). The rate "
        "rises with training time (Spearman rho with the stretch's log midpoint "
        + ", ".join(f"{s['rho_reward_rate_vs_time']:+.2f}" for s in seeds.values()) + ")."
    )  # fmt: skip
    for label, entry in summary["features"].items():
        per = entry["per_seed"]
        sel, push = entry["selectivity"], entry["push"]
        onsets = ", ".join(
            f"{_fmt_stretch(v['onset'])}"
            + ("" if v["onset_reward_rate"] is None else f" (at {1000 * v['onset_reward_rate']:.1f}/1k)")
            for v in per.values()
        )
        last = ", ".join(f"{v['selectivity_last']:+.2f}" for v in per.values())
        kl = ", ".join(f"{v['push_kl_last']:.3f} vs {v['push_kl_random_last']:.3f}" for v in per.values())
        peak = ", ".join(f"{v['push_over_random_max']:.1f}x at {v['push_over_random_max_at']:,}" for v in per.values())
        dead = max(v["near_dead_share_max"] for v in per.values())
        rhos = ", ".join(f"{r:+.2f}" for r in sel["rho_per_seed"].values())
        prhos = ", ".join(f"{r:+.2f}" for r in push["rho_per_seed"].values())
        out.append(
            f"{label} ({entry['label_set']}): selective for good from the stretch {onsets} (per seed); final "
            f"selectivity {last}. A {summary['push_sd']:g}-sd push along it moves the action distribution most beyond "
            f"random directions {peak}; at the end {kl} nats for random directions. Near-dead units hold at most "
            f"{dead:.0%} of the direction. Declared test, selectivity growth per step vs reward rate: rho {rhos}, "
            f"mean {sel['mean_rho']:+.2f}, permutation p = {sel['p']:.2g} (Holm {sel['p_holm']:.2g}); push growth: "
            f"rho {prhos}, mean {push['mean_rho']:+.2f}, p = {push['p']:.2g}."
        )
    out.append(
        f"Power: with {test['n_stretches']} stretches x {test['n_seeds']} seeds the declared test detects a "
        f"Spearman rho of {test['mde_rho_mean_over_seeds']:.2f} (mean over seeds) with 80% power at alpha 0.05 "
        f"({test['mde_rho_mean_over_seeds_holm_first']:.2f} at Holm's first step); one seed alone needs "
        f"{test['mde_rho_one_seed']:.2f}. Reward rate and training time rise together, so even a significant rho "
        "would not separate reward from training progress."
    )
    return out


def _x(steps, first: float) -> np.ndarray:
    return np.where(np.asarray(steps) > 0, steps, first / 2)


def _band(values: pd.Series) -> tuple[float, float, float]:
    mean, low, high = mean_interval(values.to_numpy())
    return mean, low, high


def _figure(table: pd.DataFrame, stretches: pd.DataFrame) -> go.Figure:
    """Three panels on one log env-step axis (step 0 drawn at half the first checkpoint's step): the reward rate in
    each stretch per seed (Wilson interval) against a random policy's over the same stretches; selectivity and push
    per feature, the mean over seeds with a 95% t-interval over seeds (one seed: its episode-bootstrap interval)."""
    n_seeds = stretches.series.nunique()
    over = f"mean of {n_seeds} seeds, 95% t-interval over seeds" if n_seeds > 1 else "95% episode-bootstrap interval"
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("reward events per 1,000 env-steps in each stretch (logged in training)",
                                        f"selectivity: held-out r of the direction minus the best control ({over})",
                                        f"push: KL of the action distribution, {tracer.ALPHA:g} sd along the direction "
                                        f"({over})"))  # fmt: skip
    first = float(stretches.end.min())
    rewards = stretches.drop_duplicates(["series", "start"]).sort_values(["seed", "start"])
    for i, (name, r) in enumerate(rewards.groupby("series", sort=False)):
        xs, ys = [], []
        for row in r.itertuples():
            xs += [_x([row.start], first)[0], row.end, None]
            ys += [1000 * row.reward_rate] * 2 + [None]
        dash = SEED_DASH[i % len(SEED_DASH)]
        fig.add_scatter(x=xs, y=ys, mode="lines", line={"color": "#555555", "dash": dash}, name=f"{name} reward rate",
                        legendgroup="reward", row=1, col=1)  # fmt: skip
        mid = np.sqrt(_x(r.start, first) * r.end)
        fig.add_scatter(x=mid, y=1000 * r.reward_rate, mode="markers", marker={"color": "#555555", "size": 4},
                        error_y={"type": "data", "symmetric": False, "array": 1000 * (r.rate_ci_high - r.reward_rate),
                                 "arrayminus": 1000 * (r.reward_rate - r.rate_ci_low), "thickness": 1},
                        showlegend=False, legendgroup="reward",
                        hovertext=[f"{name} {a:,}-{b:,}: {e:,.0f} events / {n:,} steps"
                                   for a, b, e, n in zip(r.start, r.end, r.reward_events, r.env_steps, strict=True)],
                        hoverinfo="text", row=1, col=1)  # fmt: skip
    r = rewards[rewards.series == rewards.series.iloc[0]]
    xs, ys = [], []
    for row in r.itertuples():
        xs += [_x([row.start], first)[0], row.end, None]
        ys += [1000 * row.random_rate] * 2 + [None]
    fig.add_scatter(x=xs, y=ys, mode="lines", name="random policy", line={"color": "black", "dash": "dot"},
                    legendgroup="random", row=1, col=1)  # fmt: skip
    fig.add_scatter(x=np.sqrt(_x(r.start, first) * r.end) * 1.1, y=1000 * r.random_rate, mode="markers",
                    marker={"color": "black", "size": 3}, showlegend=False, legendgroup="random",
                    error_y={"type": "data", "symmetric": False, "array": 1000 * (r.random_ci_high - r.random_rate),
                             "arrayminus": 1000 * (r.random_rate - r.random_ci_low), "thickness": 1},
                    row=1, col=1)  # fmt: skip
    for label, kind in FEATURES.items():
        rows = table[table.label == label]
        if rows.empty:
            continue
        line = {"color": COLOURS[label], "dash": "dash" if kind == "reward" else "solid"}
        for r, column, low_col, high_col in ((2, "selectivity", "sel_ci_low", "sel_ci_high"),
                                             (3, "push_kl", "push_kl_ci_low", "push_kl_ci_high")):  # fmt: skip
            xs, mean, low, high = [], [], [], []
            for step, at in rows.groupby("step"):
                xs.append(_x([step], first)[0])
                if n_seeds > 1:
                    m, lo, hi = _band(at[column])
                else:
                    m, lo, hi = float(at[column].iloc[0]), float(at[low_col].iloc[0]), float(at[high_col].iloc[0])
                mean.append(m)
                low.append(lo)
                high.append(hi)
            mean, low, high = map(np.asarray, (mean, low, high))
            fig.add_scatter(x=xs, y=mean, mode="lines+markers", name=f"{label} ({kind})", legendgroup=label,
                            showlegend=r == 2, line=line,
                            error_y={"type": "data", "symmetric": False, "array": high - mean,
                                     "arrayminus": mean - low, "thickness": 1}, row=r, col=1)  # fmt: skip
    once = table[table.label == table.label.iloc[0]]  # the random pushes are the same for every label
    rand = [(_x([step], first)[0], *(_band(at.push_kl_random) if n_seeds > 1 else (at.push_kl_random.iloc[0],) * 3))
            for step, at in once.groupby("step")]  # fmt: skip
    xs, mean, low, high = map(np.asarray, zip(*rand, strict=True))
    fig.add_scatter(x=xs, y=mean, mode="lines+markers", name="random directions",
                    line={"color": "#999999", "dash": "dot"},
                    error_y={"type": "data", "symmetric": False, "array": high - mean, "arrayminus": mean - low,
                             "thickness": 1, "color": "#999999"}, row=3, col=1)  # fmt: skip
    for row in (1, 2, 3):
        fig.update_xaxes(type="log", row=row, col=1)
    fig.update_yaxes(type="log", title_text="per 1k steps", row=1, col=1)
    fig.update_yaxes(title_text="r - control", row=2, col=1)
    fig.update_yaxes(title_text="KL (nats)", row=3, col=1)
    fig.update_xaxes(title_text="env-steps (log; step 0 at the left edge)", row=3, col=1)
    fig.update_layout(title=f"E5 chiseling tracer: TrashGrid CNN, {n_seeds} seeds, features at {HOOK}", height=1000)
    return fig


def _association_figure(summary: dict) -> go.Figure:
    """Per feature, each seed's Spearman rho across stretches (reward rate vs growth per step) and their mean with
    its permutation p, beside the rho the test detects with 80% power."""
    test = summary["declared_test"]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("selectivity growth per step vs reward rate (declared test)",
                                        "push growth per step vs reward rate (secondary)"))  # fmt: skip
    labels = list(summary["features"])
    for col, key in ((1, "selectivity"), (2, "push")):
        for i, name in enumerate(summary["series"]):
            rhos = [summary["features"][label][key]["rho_per_seed"].get(name, math.nan) for label in labels]
            fig.add_scatter(x=labels, y=rhos, mode="markers", name=name, legendgroup=name, showlegend=col == 1,
                            marker={"symbol": ("circle", "square", "diamond", "cross", "x")[i % 5], "size": 8,
                                    "color": "#777777"}, row=1, col=col)  # fmt: skip
        means = [summary["features"][label][key]["mean_rho"] for label in labels]
        ps = [summary["features"][label][key].get("p_holm", summary["features"][label][key]["p"]) for label in labels]
        fig.add_bar(x=labels, y=means, name="mean over seeds", legendgroup="mean", showlegend=col == 1, opacity=0.4,
                    marker={"color": [COLOURS[label] for label in labels]},
                    text=[f"p={p:.2g}" for p in ps], textposition="outside", row=1, col=col)  # fmt: skip
        mde = test["mde_rho_mean_over_seeds"]
        for sign in (1, -1):
            fig.add_hline(y=sign * mde, line={"color": "black", "dash": "dot", "width": 1}, row=1, col=col)
    fig.update_yaxes(range=[-1.1, 1.1], title_text="Spearman rho", row=1, col=1)
    fig.update_layout(title=f"E5: does growth follow the reward rate? ({test['n_stretches']} stretches x "
                            f"{test['n_seeds']} seeds; dotted: rho detectable with 80% power, "
                            f"{test['mde_rho_mean_over_seeds']:.2f}; p Holm-adjusted for the declared test)",
                      height=500)  # fmt: skip
    return fig


if __name__ == "__main__":
    main_for(run)
