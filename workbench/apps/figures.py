"""Plotly figures shared by the dashboard and the static report. Each takes plain data (arrays, tidy tables) and
returns a `go.Figure`; none reads files, so the report and the app draw exactly the same pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.policies.names import role_of

HEIGHT = 320
CONTROL_DASH = {"shuffled": "dash", "random_init": "dot", "baseline": "dashdot", "best_unit": "longdash"}


def _layout(fig: go.Figure, title: str, height: int = HEIGHT, **kwargs) -> go.Figure:
    kwargs.setdefault("margin", {"l": 50, "r": 20, "t": 40, "b": 40})
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height, template="plotly_white", **kwargs)
    return fig


def _square(fig: go.Figure) -> None:
    """Square cells, the first row at the top (grids and attention patterns)."""
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(constrain="domain")


def message(text: str, title: str = "") -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 13})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=200)


# ---------------------------------------------------------------------------------------------- episodes
def frame(obs: np.ndarray, title: str = "frame") -> go.Figure:
    """An observation [3, H, W] as an image, one grid cell per 2x2 pixels."""
    fig = go.Figure(go.Image(z=np.ascontiguousarray(obs.transpose(1, 2, 0)), hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return _layout(fig, title, height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10})


def action_probs(probs: np.ndarray, names: list[str], chosen: int | None = None) -> go.Figure:
    colors = ["#d62728" if i == chosen else "#1f77b4" for i in range(len(probs))]
    fig = go.Figure(go.Bar(x=names, y=probs, marker_color=colors, text=[f"{p:.2f}" for p in probs],
                           textposition="outside"))  # fmt: skip
    fig.update_yaxes(range=[0, 1.1], title="probability")
    title = "action probabilities" + (f" (taken: {names[chosen]})" if chosen is not None else " (episode over)")
    return _layout(fig, title)


def episode_trace(value: np.ndarray, reward: np.ndarray, events: list[list[str]], t: int) -> go.Figure:
    """Value and reward over the episode, events marked, the current step as a vertical line."""
    steps = np.arange(len(value))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=value, mode="lines", name="value"))
    fig.add_trace(go.Bar(x=steps, y=reward, name="reward", opacity=0.6))
    marked = [(i, ", ".join(e)) for i, e in enumerate(events) if e and e != ["bumped_wall"]]
    if marked:
        xs, texts = zip(*marked, strict=True)
        fig.add_trace(go.Scatter(x=list(xs), y=[value[i] for i in xs], mode="markers+text", text=list(texts),
                                 textposition="top center", name="events", marker={"size": 9,
                                                                                   "symbol": "star"}))  # fmt: skip
    fig.add_vline(x=t, line_color="#d62728", line_width=2)
    fig.update_xaxes(title="step")
    return _layout(fig, "value, reward and events", legend={"orientation": "h", "y": -0.25})


def episode_strip(frames: list[np.ndarray], captions: list[str], title: str) -> go.Figure:
    """Several frames side by side (the report's stand-in for the player)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(frames), subplot_titles=captions, horizontal_spacing=0.01)
    for i, obs in enumerate(frames, start=1):
        fig.add_trace(go.Image(z=np.ascontiguousarray(obs.transpose(1, 2, 0)), hoverinfo="skip"), row=1, col=i)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=220, margin={"l": 10, "r": 10, "t": 60, "b": 10})


# ---------------------------------------------------------------------------------------------- activations
ATTENTION_ROLES = ("pattern", "scores")  # [head, query, key]
HEAD_ROLES = ("q", "k", "v", "z")  # [pos, head, d_head]


def _role(hook: str) -> str | None:
    found = role_of(hook, "transformer")
    return found[0] if found else None


def activation(act: np.ndarray, hook: str, index: int = 0) -> go.Figure:
    """One hook's activation on one frame: a conv channel as a grid heatmap, an attention head's pattern, a
    token x unit map, or a vector as bars. `index` picks the channel (conv) or head (attention)."""
    role = _role(hook)
    if act.ndim == 3 and role in ATTENTION_ROLES:
        return attention(act, hook, index)
    if act.ndim == 3 and role in HEAD_ROLES:
        index = int(np.clip(index, 0, act.shape[1] - 1))
        z = act[:, index, :]
        fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0, hovertemplate="token %{y}, dim %{x}: %{z:.3f}"))
        fig.update_yaxes(title="token", autorange="reversed")
        return _layout(fig, f"{hook} — head {index}", height=380)
    if act.ndim == 3:  # conv map [C, Y, X]: one channel over the grid
        index = int(np.clip(index, 0, act.shape[0] - 1))
        fig = go.Figure(go.Heatmap(z=act[index], colorscale="Viridis", hovertemplate="row %{y}, col %{x}: %{z:.3f}"))
        _square(fig)
        return _layout(fig, f"{hook} — channel {index} of {act.shape[0]}", height=380)
    if act.ndim == 2:  # tokens [pos, d]
        fig = go.Figure(go.Heatmap(z=act, colorscale="RdBu", zmid=0, hovertemplate="token %{y}, unit %{x}: %{z:.3f}"))
        fig.update_yaxes(title="token", autorange="reversed")
        fig.update_xaxes(title="unit")
        return _layout(fig, f"{hook} — {act.shape[0]} tokens x {act.shape[1]} units", height=380)
    values = np.atleast_1d(act)
    fig = go.Figure(go.Bar(y=values, x=np.arange(len(values))))
    fig.update_xaxes(title="unit")
    return _layout(fig, f"{hook} — {len(values)} units", height=380)


def attention(act: np.ndarray, hook: str, index: int) -> go.Figure:
    """One head's attention pattern [query, key], and beside it the readout token's attention to each patch laid
    on the patch grid (when the patches form a square), which is what the policy's heads read from."""
    from plotly.subplots import make_subplots

    index = int(np.clip(index, 0, act.shape[0] - 1))
    pattern = act[index]
    side = int(round(np.sqrt(pattern.shape[1] - 1)))
    grid = side * side == pattern.shape[1] - 1
    fig = make_subplots(1, 2 if grid else 1, column_widths=[0.55, 0.45] if grid else None, horizontal_spacing=0.12,
                        subplot_titles=["pattern (query 0: the readout token)"]
                        + (["readout's attention on the patch grid"] if grid else []))  # fmt: skip
    fig.add_trace(go.Heatmap(z=pattern, colorscale="Viridis", coloraxis="coloraxis",
                             hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra></extra>"), 1, 1)  # fmt: skip
    if grid:
        fig.add_trace(go.Heatmap(z=pattern[0, 1:].reshape(side, side), coloraxis="coloraxis",
                                 hovertemplate="patch row %{y}, col %{x}: %{z:.3f}<extra></extra>"), 1, 2)  # fmt: skip
        fig.update_yaxes(autorange="reversed", scaleanchor="x2", constrain="domain", row=1, col=2)
        fig.update_xaxes(constrain="domain", row=1, col=2)
    fig.update_yaxes(autorange="reversed", title="query token", row=1, col=1)
    fig.update_xaxes(title="key token", row=1, col=1)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1)
    return _layout(fig, f"{hook} — head {index}", height=400, coloraxis={"colorscale": "Viridis"},
                   margin={"l": 50, "r": 20, "t": 80, "b": 40})  # fmt: skip


def n_indices(shape: tuple[int, ...], hook: str) -> tuple[str, int]:
    """What the channel / head selector ranges over for a hook, and how many there are."""
    role = _role(hook)
    if len(shape) == 3 and role in ATTENTION_ROLES:
        return "head", shape[0]
    if len(shape) == 3 and role in HEAD_ROLES:
        return "head", shape[1]
    if len(shape) == 3:
        return "channel", shape[0]
    return "", 1


# ---------------------------------------------------------------------------------------------- probes
def selectivity_heatmap(best: pd.DataFrame, step: int) -> go.Figure:
    """Hooks x labels: the best probe's selectivity (score minus the highest control) at one checkpoint; the
    cells carry (hook, label) for click-through."""
    rows = best[best["step"] == step]
    if rows.empty:
        return message(f"no probes at step {step}", "probe selectivity")
    grid = rows.pivot_table(index="hook", columns="label", values="selectivity", aggfunc="max")
    text = rows.pivot_table(index="hook", columns="label", values="value", aggfunc="max").reindex_like(grid)
    metric = rows.pivot_table(index="hook", columns="label", values="metric", aggfunc="first").reindex_like(grid)
    probe = rows.pivot_table(index="hook", columns="label", values="probe", aggfunc="first").reindex_like(grid)
    custom = np.dstack([np.broadcast_to(np.array(grid.index)[:, None], grid.shape),
                        np.broadcast_to(np.array(grid.columns)[None, :], grid.shape), metric.values,
                        text.values.round(3), probe.values])  # fmt: skip
    fig = go.Figure(
        go.Heatmap(
            z=grid.values, x=list(grid.columns), y=list(grid.index), customdata=custom, colorscale="RdBu",
            zmid=0, colorbar={"title": "selectivity"},
            hovertemplate="%{customdata[0]} / %{customdata[1]}<br>%{customdata[4]}: %{customdata[2]} %{customdata[3]}"
                          "<br>selectivity %{z:.3f}<extra></extra>",
        )
    )  # fmt: skip
    fig.update_xaxes(tickangle=-40)
    return _layout(fig, f"probe selectivity at step {step} (click a cell)", height=max(260, 90 + 40 * len(grid)))


def probe_curves(scores: pd.DataFrame, hook: str, label: str, probe: str | None = None) -> go.Figure:
    """One probe over training (`probe`, or the most selective one): its score with the 95% interval and each
    control's score."""
    rows = scores[(scores["hook"] == hook) & (scores["label"] == label)]
    if rows.empty:
        return message(f"no probe of {label} on {hook}", "probe over training")
    if probe not in set(rows["probe"]):
        probe = rows.sort_values("selectivity", ascending=False)["probe"].iloc[0]
    best_probe = probe
    rows = rows[rows["probe"] == best_probe].sort_values("step")
    score = rows.drop_duplicates("step")
    fig = go.Figure()
    band_x = list(score["step"]) + list(score["step"])[::-1]
    band_y = list(score["ci_high"]) + list(score["ci_low"])[::-1]
    fig.add_trace(go.Scatter(x=band_x, y=band_y, mode="lines", fill="toself", fillcolor="rgba(31,119,180,0.2)",
                             line={"width": 0}, name="95% CI", hoverinfo="skip"))  # fmt: skip
    fig.add_trace(go.Scatter(x=score["step"], y=score["value"], mode="lines+markers", name=best_probe,
                             line={"color": "#1f77b4"}))  # fmt: skip
    for control, group in rows.groupby("control", sort=False):
        fig.add_trace(go.Scatter(x=group["step"], y=group["control_value"], mode="lines+markers", name=control,
                                 line={"dash": CONTROL_DASH.get(control, "dot"), "width": 1.5}))  # fmt: skip
    metric = score["metric"].iloc[0]
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title=metric)
    return _layout(fig, f"{label} on {hook} ({best_probe}, {metric}) over training", legend={"orientation": "h",
                                                                                             "y": -0.3})  # fmt: skip


def direction_grid(direction) -> go.Figure:
    """A probe direction over the grid: per cell, the norm of the weight over channels (conv hooks); for a
    per-cell map probe, the norm of each cell's read-out; for vectors, the weight per unit."""
    weight = direction.weight.float().numpy()
    title = f"direction: {direction.label} on {direction.hook} (step {direction.step}, {direction.probe})"
    if direction.probe == "conv1x1":
        fig = go.Figure(go.Bar(y=weight, x=np.arange(len(weight))))
        fig.update_xaxes(title="channel (the same read-out at every cell)")
        return _layout(fig, title)
    spatial = direction.hook.startswith(("conv.", "stem.")) or direction.hook == "hook_obs"  # [C, Y, X] maps
    if direction.kind == "map":  # [G, G, *act]: how strongly each output cell reads its input
        per_cell = np.sqrt((weight.reshape(*weight.shape[:2], -1) ** 2).sum(-1))
        return _grid(per_cell, title + " — read-out norm per output cell")
    if spatial:  # [(K,) C, Y, X]: norm over classes and channels per cell
        cells = np.sqrt((weight.reshape(-1, *weight.shape[-2:]) ** 2).sum(0))
        return _grid(cells, title + " — weight norm per cell")
    multi = direction.kind == "multiclass"
    if weight.ndim - multi == 2:  # tokens [(K,) pos, d]: norm per token
        norm, axis = np.sqrt((weight.reshape(-1, *weight.shape[-2:]) ** 2).sum((0, 2))), "token"
    else:  # [(K,) D]
        norm, axis = np.sqrt((weight.reshape(-1, weight.shape[-1]) ** 2).sum(0)), "unit"
    fig = go.Figure(go.Bar(y=norm, x=np.arange(len(norm))))
    fig.update_xaxes(title=axis)
    fig.update_yaxes(title="|weight|")
    return _layout(fig, title)


def _grid(z: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", hovertemplate="row %{y}, col %{x}: %{z:.3f}"))
    _square(fig)
    return _layout(fig, title, height=380)


# ---------------------------------------------------------------------------------------------- training and behaviour
def training_metrics(metrics: pd.DataFrame) -> go.Figure:
    """The evaluation metrics written with each checkpoint, over training."""
    if metrics.empty or "step" not in metrics:
        return message("no checkpoint metrics", "evaluation over training")
    fig = go.Figure()
    for name in ("success_rate", "argmax_success_rate", "button_rate", "goal_rate", "decoy_rate"):
        if name in metrics and metrics[name].astype(float).abs().sum() > 0 or name == "success_rate":
            if name in metrics:
                fig.add_trace(go.Scatter(x=metrics["step"], y=metrics[name], mode="lines+markers", name=name))
    if "mean_return" in metrics:
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["mean_return"], mode="lines+markers",
                                 name="mean_return", yaxis="y2", line={"dash": "dot"}))  # fmt: skip
    fig.update_xaxes(title="training step")
    return _layout(fig, "evaluation at each checkpoint", yaxis={"title": "rate", "range": [-0.02, 1.02]},
                   yaxis2={"title": "return", "overlaying": "y", "side": "right"},
                   legend={"orientation": "h", "y": -0.3})  # fmt: skip


def behaviour(table: pd.DataFrame, metric: str) -> go.Figure:
    """One behavioural metric with its 95% intervals for every condition and run (seed): over training steps when
    the table holds several checkpoints, side by side by condition otherwise."""
    rows = table[table["metric"] == metric]
    if rows.empty:
        return message(f"no rows for {metric}", "behaviour")
    rows = rows.assign(
        where=rows["distribution"].astype(str) + " · " + rows["condition"].astype(str),
        who=["mean of seeds" if interval == "t-across-seeds" else str(run).rstrip("/").rsplit("/", 1)[-1]
             for run, interval in zip(rows["run"], rows["interval"], strict=True)],
    )  # fmt: skip
    over_steps = rows["step"].nunique() > 1
    fig = go.Figure()
    keys = ["where", "who"] if over_steps else ["who", "step"]
    for key, group in rows.groupby(keys, sort=False):
        group = group.sort_values("step")
        name = f"{key[0]} — {key[1]}" if over_steps else f"{key[0]} @ {key[1]:,}"
        fig.add_trace(
            go.Scatter(
                x=group["step"] if over_steps else group["where"], y=group["value"], name=name,
                mode="lines+markers" if over_steps else "markers", marker={"size": 9},
                error_y={"type": "data", "symmetric": False, "array": group["ci_high"] - group["value"],
                         "arrayminus": group["value"] - group["ci_low"]},
                customdata=np.stack([group["n"], group["interval"]], -1),
                hovertemplate="%{x}: %{y:.3f}<br>n=%{customdata[0]} (%{customdata[1]})",
            )
        )  # fmt: skip
    fig.update_layout(scattermode="group", showlegend=True)
    fig.update_yaxes(title=metric)
    fig.update_xaxes(title="training step" if over_steps else "distribution · condition")
    how = "over training, by condition and seed" if over_steps else "by condition, seed and checkpoint"
    return _layout(fig, f"{metric} with 95% intervals, {how}", legend={"orientation": "h", "y": -0.3})


# ---------------------------------------------------------------------------------------------- patching
def patching(table: pd.DataFrame, hook: str, metric: str = "normalised_effect") -> go.Figure:
    """Effect of patching each site of one hook: a grid heatmap for cells, bars with intervals otherwise, the
    noise baseline beside the clean source."""
    rows = table[(table["hook"] == hook) & (table["metric"] == metric)]
    if rows.empty:
        return message(f"no patching rows for {hook} / {metric}", "patching")
    clean = rows[rows["source"] == "clean"]
    factor = f" — factor {rows['factor'].iloc[0]}" if "factor" in rows else ""
    title = f"patching {hook} per {clean['per'].iloc[0] if len(clean) else '?'}: {metric}{factor}"
    if {"row", "col"} <= set(clean.columns) and clean["row"].notna().all() and len(clean):
        grid = clean.pivot_table(index="row", columns="col", values="value", aggfunc="mean")
        fig = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="RdBu",
                                   zmid=0, hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))  # fmt: skip
        _square(fig)
        return _layout(fig, title, height=380)
    fig = go.Figure()
    for source, group in rows.groupby("source", sort=False):
        fig.add_trace(
            go.Bar(x=group["site"], y=group["value"], name=source,
                   error_y={"type": "data", "symmetric": False, "array": group["ci_high"] - group["value"],
                            "arrayminus": group["value"] - group["ci_low"]})
        )  # fmt: skip
    fig.update_xaxes(title="site", type="category")
    fig.update_yaxes(title=metric)
    return _layout(fig, title, legend={"orientation": "h", "y": -0.3})


# ---------------------------------------------------------------------------------------------- steering
def steering_paths(obs: np.ndarray, base: np.ndarray, steered: np.ndarray, title: str) -> go.Figure:
    """The agent's path through one episode, unsteered and steered, drawn over its first frame."""
    fig = frame(obs, title)
    for cells, name, color in ((base, "unsteered", "#ffffff"), (steered, "steered", "#ff3b3b")):
        offset = 0.25 if name == "steered" else -0.25  # both visible where they overlap
        fig.add_trace(go.Scatter(x=2 * cells[:, 1] + 0.5 + offset, y=2 * cells[:, 0] + 0.5 + offset,
                                 mode="lines+markers", name=f"{name} ({len(cells) - 1} steps)",
                                 line={"color": color, "width": 3}, marker={"size": 5}))  # fmt: skip
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.02})
    return fig


def steering_effects(result: dict) -> go.Figure:
    """Baseline and steered means of each rate with 95% intervals, on the same episodes."""
    rates = [name for name in ("success_rate", "pick_rate", "button_rate", "goal_rate", "retarget_success_rate",
                               "bump_rate") if name in result["metrics"]]  # fmt: skip
    fig = go.Figure()
    for which, color in (("baseline", "#7f7f7f"), ("steered", "#d62728")):
        values = [result["metrics"][m][which] for m in rates]
        lows = [result["metrics"][m][f"{which}_ci"][0] for m in rates]
        highs = [result["metrics"][m][f"{which}_ci"][1] for m in rates]
        fig.add_trace(go.Bar(x=rates, y=values, name=which, marker_color=color,
                             error_y={"type": "data", "symmetric": False, "array": np.subtract(highs, values),
                                      "arrayminus": np.subtract(values, lows)}))  # fmt: skip
    fig.update_yaxes(range=[0, 1.05], title="rate")
    title = f"{result['vector']} at {result['hook']}, coef {result['coef']:g}: {result['episodes']} episodes"
    return _layout(fig, title, legend={"orientation": "h", "y": -0.3})


def probe_on_frame(direction, act: np.ndarray, t: int) -> go.Figure:
    """What a probe reads on one frame, over the grid: a map probe's prediction per cell (probability for a
    logistic read-out), or for a probe of a whole conv map, each cell's contribution w[:, y, x] · act[:, y, x]."""
    weight, bias = direction.weight.float().numpy(), direction.bias.float().numpy()
    title = f"{direction.label} read on frame {t} ({direction.probe}, step {direction.step})"
    if direction.probe == "conv1x1" and act.ndim == 3:
        logits = np.einsum("c,cyx->yx", weight, act) + bias
        return _grid(1 / (1 + np.exp(-logits)), title + ": P(per cell)")
    if direction.kind == "map" and weight.shape[2:] == act.shape:
        logits = weight.reshape(*weight.shape[:2], -1) @ act.reshape(-1) + bias
        return _grid(1 / (1 + np.exp(-logits)), title + ": P(per cell)")
    if weight.shape == act.shape and act.ndim == 3:
        return _grid((weight * act).sum(0), title + ": contribution per cell")
    if weight.shape == act.shape:
        score = float((weight * act).sum() + bias.sum())
        return message(f"{direction.label}: probe output {score:.3f} on frame {t} (no grid at {direction.hook})")
    return message(f"{direction.label} ({direction.kind}): {weight.shape[0]} classes; see the direction beside")
