"""E5 chiseling: across a checkpoint series, which feature directions did each stretch of training strengthen, and
did that happen where reward events happened?

Reward is the cognition-updater: it chisels computations into the policy where it is received. This tracer puts,
for each stretch of training between consecutive checkpoints of the TrashGrid CNN:

- reward events: the rewards training received in that stretch, as the trainer logged them with each checkpoint
  (`train_reward_events`); for a series trained before that was logged, an estimate from the evaluation rollouts
  at the stretch's two ends (deposits per env-step under each checkpoint's policy, trapezoid over the stretch);
  the `reward_events_source` column says which;
- per feature (task-side: carrying, distance to the nearest target; reward-side: reward within k steps,
  return-to-go), at one hook, on one fixed set of observations replayed through every checkpoint:
  - probe selectivity (score minus the best control) with its interval (`probes.probe_sweep`);
  - strength: the standard deviation of the activations' projection on the unit probe direction;
  - logit effect: the mean change in the action distribution (L2 norm of the change in log-probabilities) and in
    the value when the activations are pushed one standard deviation along the direction (a steering vector);
  - the change in those between the stretch's ends: what the stretch did to the feature's role in the output.

The figure stacks them on one env-step axis; the summary names, per feature, the stretch that strengthened it
most, and the rank correlation across stretches between reward events and the growth of its logit effect.

    python analysis/e5_chiseling.py [--quick] [--out DIR]
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import probes
from analysis.common import CHECKPOINTS, OUT, Result, main_for, report, series
from workbench.checkpoints import list_steps, load_policy, read_json, step_stem
from workbench.datasets import collect, replay
from workbench.steering import SteeringVector, steering

SERIES = "trash-cnn-s0"
HOOK = "fc.hook_out"
FEATURES = {"carrying": "task", "target_dist": "task", "reward_within_k": "reward", "return_to_go": "reward"}


def run(checkpoints=CHECKPOINTS, out=None, quick: bool = False, progress=None) -> Result:
    result = Result("e5", "E5 chiseling: what did each stretch of training strengthen?")
    run_dir = series(checkpoints, SERIES)
    steps = list_steps(run_dir)
    n_steps, n_effect = (4000, 512) if quick else (12000, 2048)
    out = OUT if out is None else out
    report(progress, f"E5 {SERIES}: probe sweep over {len(steps)} checkpoints ({n_steps} observations)")
    sweep_path = out / "e5_sweep.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = probes.probe_sweep(run_dir, [HOOK], list(FEATURES), n_steps=n_steps, seed=0, out=sweep_path,
                                   n_boot=100 if quick else 200)  # fmt: skip
    directions = {(d.step, d.label): d for d in probes.load_directions(sweep_path) if d.hook == HOOK}

    report(progress, f"E5 {SERIES}: feature strength and logit effect at every checkpoint")
    base = collect(load_policy(run_dir), None, n_effect, hooks=[HOOK], seed=1)
    obs = base.observations()
    rows = []
    for step in steps:
        policy = load_policy(run_dir / f"{step_stem(step)}.safetensors")
        acts = replay(base, policy, hooks=[HOOK]).activations(HOOK).float()
        with torch.no_grad():
            logits, value = policy(obs)
        logp = torch.log_softmax(logits, -1)
        for label in FEATURES:
            d = directions.get((step, label))
            if d is None:
                continue
            unit = d.weight.float() / d.weight.float().norm().clamp_min(1e-12)
            strength = float((acts @ unit).std())
            with steering(policy, SteeringVector(HOOK, strength * unit, name=label), 1.0), torch.no_grad():
                pushed_logits, pushed_value = policy(obs)
            shift = (torch.log_softmax(pushed_logits, -1) - logp).norm(dim=-1)
            value_shift = (pushed_value - value).abs()
            rows.append({"step": step, "label": label, "label_set": FEATURES[label], "strength": strength,
                         "logit_effect": float(shift.mean()), "value_effect": float(value_shift.mean()),
                         "weight_norm": float(d.weight.float().norm())})  # fmt: skip
    effects = pd.DataFrame(rows)
    stretches = _stretches(run_dir, steps, table, effects)
    result.tables = {"probes": table, "effects": effects, "stretches": stretches}
    result.summary, result.findings = _summarise(stretches)
    result.figures = {"chiseling": _figure(table, effects, stretches)}
    return result


def _reward_rate(metrics: dict) -> float:
    """Reward events per env-step under a checkpoint's policy, from its evaluation metrics."""
    return metrics["deposits_per_episode"] / max(metrics["mean_length"], 1.0)


def _stretches(run_dir, steps, table: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    main = table[table.metric.isin(["r2", "balanced_accuracy"]) & (table.control == "shuffled")]
    selectivity = main.groupby(["step", "label"]).selectivity.max()
    metrics = {step: read_json(run_dir / f"{step_stem(step)}.json") for step in steps}
    rows = []
    for a, b in zip(steps, steps[1:], strict=False):
        logged = metrics[b].get("train_reward_events")
        estimate = (b - a) * (_reward_rate(metrics[a]) + _reward_rate(metrics[b])) / 2
        events = float(logged) if logged is not None else estimate
        for label in FEATURES:
            ea = effects[(effects.step == a) & (effects.label == label)]
            eb = effects[(effects.step == b) & (effects.label == label)]
            if ea.empty or eb.empty:
                continue
            rows.append({"start": a, "end": b, "label": label, "label_set": FEATURES[label], "reward_events": events,
                         "reward_events_source": "logged" if logged is not None else "estimated",
                         "success_at_end": metrics[b]["success_rate"],
                         "d_selectivity": selectivity.get((b, label), np.nan) - selectivity.get((a, label), np.nan),
                         "d_strength": float(eb.strength.iloc[0] - ea.strength.iloc[0]),
                         "d_logit_effect": float(eb.logit_effect.iloc[0] - ea.logit_effect.iloc[0]),
                         "d_value_effect": float(eb.value_effect.iloc[0] - ea.value_effect.iloc[0])})  # fmt: skip
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def _summarise(stretches: pd.DataFrame) -> tuple[dict, list[str]]:
    summary, findings = {}, []
    for label, rows in stretches.groupby("label", sort=False):
        top = rows.loc[rows.d_logit_effect.idxmax()]
        rho = _spearman(rows.reward_events.to_numpy(), rows.d_logit_effect.to_numpy())
        sharp = rows.loc[rows.d_selectivity.fillna(-np.inf).idxmax()]
        summary[label] = {"label_set": top.label_set, "most_strengthened": [int(top.start), int(top.end)],
                          "d_logit_effect": float(top.d_logit_effect), "reward_events_then": float(top.reward_events),
                          "share_of_all_reward_events": float(top.reward_events / rows.reward_events.sum()),
                          "spearman_reward_events_vs_d_logit_effect": rho,
                          "selectivity_grew_most": [int(sharp.start), int(sharp.end)],
                          "d_selectivity": float(sharp.d_selectivity),
                          "reward_events_then_selectivity": float(sharp.reward_events)}  # fmt: skip
        findings.append(
            f"{label} ({top.label_set}): its logit effect grew most in env-steps {int(top.start):,}-{int(top.end):,} "
            f"(+{top.d_logit_effect:.3f}), a stretch with {top.reward_events / rows.reward_events.sum():.0%} of the "
            f"series' reward events; rank correlation of growth with reward events across stretches {rho:+.2f} "
            f"over {len(rows)} stretches. Its probe selectivity grew most in {int(sharp.start):,}-{int(sharp.end):,} "
            f"({sharp.d_selectivity:+.2f}), with {sharp.reward_events:.0f} reward events."
        )
    return summary, findings


def _figure(table: pd.DataFrame, effects: pd.DataFrame, stretches: pd.DataFrame) -> go.Figure:
    """Four panels on one log env-step axis (step 0 drawn at half the first checkpoint's step): the reward rate
    training received in each stretch (a step line over the stretch; the count in the hover) with the success rate,
    probe selectivity, the logit effect of the probe directions, and its growth per stretch (at the stretch's end)."""
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=("rewards per 1,000 env-steps in each stretch (logged in training), success",
                                        "probe selectivity (balanced accuracy or R², minus the best control)",
                                        "logit effect of a one-sd push along the probe direction",
                                        "growth of the logit effect over the stretch ending here"),
                        specs=[[{"secondary_y": True}], [{}], [{}], [{}]])  # fmt: skip
    events = stretches.drop_duplicates(["start", "end"]).sort_values("start")
    first = float(events.end.iloc[0]) if len(events) else 1.0

    def x(steps):
        return np.where(np.asarray(steps) > 0, steps, first / 2)

    xs, ys, hover = [], [], []
    for row in events.itertuples():
        rate = 1000 * row.reward_events / max(row.end - row.start, 1)
        xs += [x([row.start])[0], row.end, None]
        ys += [rate, rate, None]
        hover += [f"{row.start:,}-{row.end:,}: {row.reward_events:,.0f} rewards"] * 2 + [""]
    fig.add_scatter(x=xs, y=ys, mode="lines", line={"color": "#888888", "width": 4}, name="rewards / 1k steps",
                    hovertext=hover, hoverinfo="text", row=1, col=1)  # fmt: skip
    fig.add_scatter(x=events.end, y=events.success_at_end, mode="lines+markers", name="success rate",
                    line={"color": "black", "dash": "dot"}, row=1, col=1, secondary_y=True)  # fmt: skip
    colours = dict(zip(FEATURES, ("#1f77b4", "#2ca02c", "#d62728", "#ff7f0e"), strict=True))
    main = table[table.metric.isin(["r2", "balanced_accuracy"]) & (table.control == "shuffled")]
    for label in FEATURES:
        rows = main[main.label == label].sort_values("step")
        if rows.empty:
            continue
        kind = FEATURES[label]
        line = {"color": colours[label], "dash": "dash" if kind == "reward" else "solid"}
        fig.add_scatter(x=x(rows.step), y=rows.selectivity, mode="lines+markers", name=f"{label} ({kind})",
                        legendgroup=label, line=line,
                        error_y={"type": "data", "symmetric": False, "array": rows.ci_high - rows.value,
                                 "arrayminus": rows.value - rows.ci_low, "thickness": 1},
                        row=2, col=1)  # fmt: skip
        eff = effects[effects.label == label].sort_values("step")
        fig.add_scatter(x=x(eff.step), y=eff.logit_effect, mode="lines+markers", legendgroup=label,
                        showlegend=False, line=line, row=3, col=1)  # fmt: skip
        st = stretches[stretches.label == label].sort_values("end")
        fig.add_scatter(x=st.end, y=st.d_logit_effect, mode="lines+markers", legendgroup=label, showlegend=False,
                        line=line, row=4, col=1)  # fmt: skip
    for row in (1, 2, 3, 4):
        fig.update_xaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="env-steps (log; step 0 at the left edge)", row=4, col=1)
    fig.update_yaxes(title_text="success", range=[0, 1.05], row=1, col=1, secondary_y=True)
    fig.update_layout(title="E5 chiseling tracer: TrashGrid CNN, features at " + HOOK, height=1000)
    return fig


if __name__ == "__main__":
    main_for(run)
