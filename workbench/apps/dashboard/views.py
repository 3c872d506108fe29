"""The dashboard's views: each a layout function and the callbacks that fill it.

Every control value that names a file or a checkpoint comes back from the browser and is checked again here
(`data` and `paths` refuse anything outside the run directory); a refusal or any other WorkbenchError becomes a
message in the view, not a server error.
"""

from __future__ import annotations

import functools

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from workbench.apps import data, figures
from workbench.apps.data import MISSING
from workbench.common import guards
from workbench.common.errors import ConfigError, WorkbenchError
from workbench.policies.names import with_roles

GRAPH_CONFIG = {"displaylogo": False}
ROW = {"display": "flex", "flexWrap": "wrap", "gap": "12px", "alignItems": "flex-start"}
CONTROL = {"minWidth": "180px"}
NOTE = {"color": "#555", "fontSize": "13px", "margin": "6px 0"}
COEFS = [float(c) for c in np.arange(-8, 8.5, 0.5)]  # the steering slider's positions


def graph(id_: str, **style) -> dcc.Loading:
    return dcc.Loading(dcc.Graph(id=id_, config=GRAPH_CONFIG, style=style or None), type="dot", delay_show=300)


def graph_row(*cells: tuple[str, str]) -> html.Div:
    """Graphs side by side, wrapping: (graph id, CSS flex) per cell."""
    return html.Div([html.Div(graph(id_), style={"flex": flex}) for id_, flex in cells], style=ROW)


def labelled(text: str, control) -> html.Div:
    return html.Div([html.Label(text, style={"fontSize": "12px", "color": "#444"}), control], style=CONTROL)


def step_options(run: data.Run) -> list[dict]:
    return [{"label": f"step {s:,}", "value": s} for s in run.steps]


def position(value, name: str) -> int:
    """A slider or index control's value (None: 0) as an int, or a WorkbenchError (shown in the view)."""
    return guards.check_int(0 if value is None else value, name, 0, 10**7)


def text(value, name: str) -> str | None:
    """A dropdown's value: a string or None; anything else (a forged request) is refused."""
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name} {value!r} is not one of the choices offered.")
    return value


def guarded(n_outputs: int, *messages: int):
    """Turn a WorkbenchError raised by a callback into message figures (at the output positions in `messages`)
    and `no_update` elsewhere, so a refused path or a stale step never shows as a server error."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args):
            try:
                return fn(*args)
            except (WorkbenchError, OSError) as err:  # OSError: a file removed or unreadable meanwhile
                out = [no_update] * n_outputs
                for i in messages:
                    out[i] = figures.message(str(err), "refused")
                return out[0] if n_outputs == 1 else out

        return inner

    return wrap


# ---------------------------------------------------------------------------------------------- episode player
def episode_layout(run: data.Run) -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    labelled(
                        "checkpoint", dcc.Dropdown(step_options(run), run.steps[-1], id="ep-step", clearable=False)
                    ),  # fmt: skip
                    labelled(
                        "episode seed", dcc.Input(id="ep-seed", type="number", value=0, min=0, step=1, debounce=True)
                    ),  # fmt: skip
                    labelled(
                        "distribution", dcc.Dropdown(list(run.distributions()), "train", id="ep-dist", clearable=False)
                    ),  # fmt: skip
                    html.Button("◀ prev", id="ep-prev", n_clicks=0),
                    html.Button("next ▶", id="ep-next", n_clicks=0),
                ],
                style=ROW,
            ),
            html.Div(
                dcc.Slider(0, 1, 1, value=0, id="ep-t", marks=None, tooltip={"placement": "bottom"}),
                style={"margin": "12px 0"},
            ),  # fmt: skip
            graph_row(("ep-frame", "0 0 340px"), ("ep-probs", "1 1 300px"), ("ep-trace", "2 1 420px")),
            html.Div(id="ep-info", style=NOTE),
        ]
    )


def episode_callbacks(app, run: data.Run) -> None:
    @app.callback(
        Output("ep-t", "max"),
        Output("ep-t", "value"),
        Input("ep-step", "value"),
        Input("ep-seed", "value"),
        Input("ep-dist", "value"),
        Input("ep-prev", "n_clicks"),
        Input("ep-next", "n_clicks"),
        State("ep-t", "value"),
    )
    @guarded(2)
    def episode_length(step, seed, distribution, _prev, _next, t):
        last = len(data.episode(run, step, seed, distribution)) - 1
        t = position(t, "frame")
        if ctx.triggered_id == "ep-prev":
            t -= 1
        elif ctx.triggered_id == "ep-next":
            t += 1
        elif ctx.triggered_id in ("ep-seed", "ep-dist"):
            t = 0  # another episode: start at its beginning
        return last, int(np.clip(t, 0, last))

    @app.callback(
        Output("ep-frame", "figure"),
        Output("ep-probs", "figure"),
        Output("ep-trace", "figure"),
        Output("ep-info", "children"),
        Input("ep-step", "value"),
        Input("ep-seed", "value"),
        Input("ep-dist", "value"),
        Input("ep-t", "value"),
    )
    @guarded(4, 0, 1, 2)
    def episode_frame(step, seed, distribution, t):
        ep = data.episode(run, step, seed, distribution)
        step = data.step_value(step)
        t = min(position(t, "frame"), len(ep) - 1)
        names = data.action_names(ep.probs.shape[1])
        chosen = int(ep.actions[t]) if t < len(ep.actions) else None
        info = [
            html.B(f"step {t} of {len(ep) - 1}"),
            f" · reward into this frame {ep.reward[t]:g} · events: {', '.join(ep.events[t]) or '-'}"
            f" · value {ep.value[t]:.3f} · return {ep.reward.sum():g}",
        ]
        labels = ep.labels[t]
        if labels is not None:
            info.append(html.Div("labels: " + "  ".join(f"{k}={v}" for k, v in labels.items())))
        else:
            info.append(html.Div("the episode is over (terminal observation)"))
        return (
            figures.frame(ep.obs[t], f"frame {t} — checkpoint {step:,}"),
            figures.action_probs(ep.probs[t], names, chosen),
            figures.episode_trace(ep.value, ep.reward, ep.events, t),
            info,
        )


# ---------------------------------------------------------------------------------------------- activations
def activation_layout(run: data.Run) -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    labelled(
                        "checkpoint", dcc.Dropdown(step_options(run), run.steps[-1], id="act-step", clearable=False)
                    ),  # fmt: skip
                    html.Div(labelled("hook", dcc.Dropdown(id="act-hook", clearable=False)), style={"width": "300px"}),
                    html.Div(
                        labelled(
                            "channel / head",
                            dcc.Slider(0, 1, 1, value=0, id="act-index", marks=None, tooltip={"placement": "bottom"}),
                        ),
                        style={"width": "320px"},
                    ),  # fmt: skip
                ],
                style=ROW,
            ),
            html.P(
                "The activation on the episode player's current frame (its checkpoint may differ from this one).",
                style=NOTE,
            ),  # fmt: skip
            graph_row(("act-frame", "0 0 340px"), ("act-fig", "1 1 480px")),
        ]
    )


def activation_callbacks(app, run: data.Run) -> None:
    @app.callback(Output("act-hook", "options"), Output("act-hook", "value"), Input("act-step", "value"),
                  State("act-hook", "value"))  # fmt: skip
    @guarded(2)
    def hooks(step, current):
        names = [name for name in data.hook_names(run, step) if name != "hook_obs"]
        preferred = with_roles(names, "conv", "pattern")
        return names, current if current in names else (preferred or names)[0]

    @app.callback(Output("act-index", "max"), Output("act-index", "value"), Input("act-step", "value"),
                  Input("act-hook", "value"), State("act-index", "value"))  # fmt: skip
    @guarded(2)
    def index_range(step, hook, index):
        if text(hook, "hook") is None:
            return no_update, no_update
        _, n = figures.n_indices(data.hook_names(run, step).get(hook, ()), hook)
        return max(n - 1, 0), min(position(index, "channel / head"), max(n - 1, 0))

    @app.callback(
        Output("act-fig", "figure"),
        Output("act-frame", "figure"),
        Input("act-step", "value"),
        Input("act-hook", "value"),
        Input("act-index", "value"),
        Input("ep-step", "value"),
        Input("ep-seed", "value"),
        Input("ep-dist", "value"),
        Input("ep-t", "value"),
    )
    @guarded(2, 0, 1)
    def activation(step, hook, index, ep_step, seed, distribution, t):
        ep = data.episode(run, ep_step, seed, distribution)
        t = min(position(t, "frame"), len(ep) - 1)
        frame = figures.frame(ep.obs[t], f"frame {t} (episode of checkpoint {data.step_value(ep_step):,})")
        if text(hook, "hook") is None:
            return figures.message("choose a hook"), frame
        act = data.activation(run, step, ep.obs[t], hook)
        return figures.activation(act, hook, position(index, "channel / head")), frame


# ---------------------------------------------------------------------------------------------- probes
def probe_layout(run: data.Run) -> html.Div:
    tables = run.tables("probes")
    return html.Div(
        [
            html.P(MISSING["probes"], id="probe-missing", style={**NOTE, "display": "none" if tables else "block"}),
            html.Div(
                [
                    html.Div(
                        labelled(
                            "probe table",
                            dcc.Dropdown(tables, tables[0] if tables else None, id="probe-table", clearable=False),
                        ),
                        style={"width": "320px"},
                    ),  # fmt: skip
                    labelled("checkpoint", dcc.Dropdown(id="probe-step", clearable=False)),
                ],
                style=ROW,
            ),
            graph("probe-heat"),
            graph_row(("probe-curves", "1 1 480px"), ("probe-direction", "1 1 360px"), ("probe-frame", "1 1 360px")),
        ]
    )


def probe_callbacks(app, run: data.Run) -> None:
    @app.callback(Output("probe-step", "options"), Output("probe-step", "value"), Input("probe-table", "value"),
                  State("probe-step", "value"))  # fmt: skip
    @guarded(2)
    def steps(table, current):
        if not table:
            return [], None
        available = sorted(int(s) for s in data.read_table(run.root, [table])["step"].unique())
        options = [{"label": f"step {s:,}", "value": s} for s in available]
        return options, current if current in available else (available[-1] if available else None)

    @app.callback(Output("probe-heat", "figure"), Input("probe-table", "value"), Input("probe-step", "value"))
    @guarded(1, 0)
    def heatmap(table, step):
        if not table:
            return figures.message(MISSING["probes"], "probe selectivity")
        if step is None:
            return figures.message("choose a checkpoint", "probe selectivity")
        return figures.selectivity_heatmap(data.probe_tables(run, table)[1], data.step_value(step))

    @app.callback(
        Output("probe-curves", "figure"),
        Output("probe-direction", "figure"),
        Output("probe-frame", "figure"),
        Input("probe-heat", "clickData"),
        Input("probe-table", "value"),
        Input("probe-step", "value"),
        Input("ep-step", "value"),
        Input("ep-seed", "value"),
        Input("ep-dist", "value"),
        Input("ep-t", "value"),
    )
    @guarded(3, 0, 1, 2)
    def probe_detail(click, table, step, ep_step, seed, distribution, t):
        if not table or step is None:
            return figures.message(MISSING["probes"]), figures.message("click a cell of the heatmap"), no_update
        step = data.step_value(step)
        scores, best = data.probe_tables(run, table)
        at = best[best["step"] == step]
        if at.empty:
            return figures.message("no probes at this step"), figures.message(""), no_update
        points = click.get("points") if isinstance(click, dict) else None
        point = points[0] if isinstance(points, list) and points and isinstance(points[0], dict) else {}
        chosen = at[(at["hook"] == point.get("y")) & (at["label"] == point.get("x"))]
        # before any click (or a click on another table's cell): the most selective probe at this step
        top = (chosen if len(chosen) else at.sort_values("selectivity", ascending=False)).iloc[0]
        hook, label, probe = top["hook"], top["label"], top["probe"]
        curves = figures.probe_curves(scores, hook, label, probe)
        direction = data.find_direction(data.probe_directions(run, table), int(step), hook, label, probe)
        if direction is None:
            return curves, figures.message(f"no saved direction for {label} on {hook} at step {step}"), no_update
        ep = data.episode(run, ep_step, seed, distribution)
        t = min(position(t, "frame"), len(ep) - 1)
        act = data.activation(run, step, ep.obs[t], hook)  # the probe's own checkpoint, the player's frame
        return curves, figures.direction_grid(direction), figures.probe_on_frame(direction, act, t)


# ---------------------------------------------------------------------------------------------- patching
def patching_layout(run: data.Run) -> html.Div:
    tables = run.tables("patching")
    return html.Div(
        [
            html.P(MISSING["patching"], id="patch-missing", style={**NOTE, "display": "none" if tables else "block"}),
            html.Div(
                [
                    html.Div(
                        labelled(
                            "patching table",
                            dcc.Dropdown(tables, tables[0] if tables else None, id="patch-table", clearable=False),
                        ),
                        style={"width": "320px"},
                    ),  # fmt: skip
                    html.Div(
                        labelled("hook", dcc.Dropdown(id="patch-hook", clearable=False)), style={"width": "260px"}
                    ),
                    html.Div(
                        labelled("metric", dcc.Dropdown(id="patch-metric", clearable=False)), style={"width": "220px"}
                    ),  # fmt: skip
                ],
                style=ROW,
            ),
            graph("patch-fig"),
            html.H4("Steering", style={"marginBottom": "4px"}),
            html.Div(
                [
                    labelled(
                        "checkpoint", dcc.Dropdown(step_options(run), run.steps[-1], id="steer-step", clearable=False)
                    ),  # fmt: skip
                    html.Div(
                        labelled("vector", dcc.Dropdown(id="steer-vector", clearable=False)), style={"width": "420px"}
                    ),  # fmt: skip
                    html.Div(
                        labelled(
                            "coefficient",
                            dcc.Slider(
                                -8,
                                8,
                                0.5,
                                value=0,
                                id="steer-coef",
                                marks={i: str(i) for i in range(-8, 9, 4)},
                                tooltip={"placement": "bottom"},
                            ),
                        ),
                        style={"width": "360px"},
                    ),  # fmt: skip
                ],
                style=ROW,
            ),
            html.P(
                "Live: one episode (the player's seed) steered vs unsteered, and 64 episodes' rates with 95% "
                "intervals. Contrast vectors are mean activation differences (with minus without the factor); "
                "probe directions are unit-norm.",
                style=NOTE,
            ),  # fmt: skip
            graph_row(("steer-path", "0 0 360px"), ("steer-effects", "1 1 480px")),
        ]
    )


def patching_callbacks(app, run: data.Run) -> None:
    steering_callbacks(app, run)

    @app.callback(
        Output("patch-hook", "options"),
        Output("patch-hook", "value"),
        Output("patch-metric", "options"),
        Output("patch-metric", "value"),
        Input("patch-table", "value"),
        State("patch-hook", "value"),
        State("patch-metric", "value"),
    )
    @guarded(4)
    def choices(table, hook, metric):
        if not table:
            return [], None, [], None
        frame = data.read_table(run.root, [table])
        hooks, metrics = list(frame["hook"].unique()), list(frame["metric"].unique())
        default_metric = "normalised_effect" if "normalised_effect" in metrics else metrics[0]
        return hooks, hook if hook in hooks else hooks[0], metrics, metric if metric in metrics else default_metric

    @app.callback(Output("patch-fig", "figure"), Input("patch-table", "value"), Input("patch-hook", "value"),
                  Input("patch-metric", "value"))  # fmt: skip
    @guarded(1, 0)
    def patching(table, hook, metric):
        if not table:
            return figures.message(MISSING["patching"], "patching")
        hook, metric = text(hook, "hook"), text(metric, "metric")
        return figures.patching(data.read_table(run.root, [table]), hook, metric)


def steering_callbacks(app, run: data.Run) -> None:
    prefetched: set[tuple] = set()

    @app.callback(Output("steer-vector", "options"), Output("steer-vector", "value"), Input("steer-step", "value"),
                  State("steer-vector", "value"))  # fmt: skip
    @guarded(2)
    def vectors(step, current):
        options = data.steering_options(run, step)
        values = [o["value"] for o in options]
        return options, current if current in values else (values[0] if values else None)

    @app.callback(
        Output("steer-path", "figure"),
        Output("steer-effects", "figure"),
        Input("steer-step", "value"),
        Input("steer-vector", "value"),
        Input("steer-coef", "value"),
        Input("ep-seed", "value"),
    )
    @guarded(2, 0, 1)
    def steer(step, spec, coef, seed):
        if not text(spec, "vector"):
            return figures.message("choose a vector"), figures.message("")
        step, seed, coef = data.step_value(step), data.seed_value(seed), data.coef_value(coef)
        if (step, spec) not in prefetched:  # the other slider positions, nearest first, in the background
            prefetched.add((step, spec))
            data.prefetch_steering(run, step, spec, sorted(COEFS, key=lambda c: abs(c - coef)))
        base = data.steered_path(run, step, spec, 0.0, seed)
        steered = data.steered_path(run, step, spec, coef, seed)
        first = data.episode(run, step, seed, "train").obs[0]
        paths = figures.steering_paths(first, base, steered, f"episode seed {seed}, coef {coef:g}")
        return paths, figures.steering_effects(data.steering_effects(run, step, spec, coef))


# ---------------------------------------------------------------------------------------------- behaviour
def behaviour_layout(run: data.Run) -> html.Div:
    tables = run.tables("behaviour")
    return html.Div(
        [
            graph("beh-training"),
            html.P(MISSING["behaviour"], id="beh-missing", style={**NOTE, "display": "none" if tables else "block"}),
            html.Div(
                [
                    html.Div(
                        labelled("behaviour tables", dcc.Dropdown(tables, tables, id="beh-table", multi=True)),
                        style={"width": "420px"},
                    ),  # fmt: skip
                    html.Div(
                        labelled("metric", dcc.Dropdown(id="beh-metric", clearable=False)), style={"width": "240px"}
                    ),  # fmt: skip
                ],
                style=ROW,
            ),
            graph("beh-fig"),
        ]
    )


def behaviour_callbacks(app, run: data.Run) -> None:
    @app.callback(Output("beh-training", "figure"), Input("beh-table", "id"))
    @guarded(1, 0)
    def training(_):
        return figures.training_metrics(data.load_run(run.root).metrics)

    @app.callback(Output("beh-metric", "options"), Output("beh-metric", "value"), Input("beh-table", "value"),
                  State("beh-metric", "value"))  # fmt: skip
    @guarded(2)
    def metrics(tables, current):
        if not tables:
            return [], None
        names = list(data.read_table(run.root, tables)["metric"].unique())
        preferred = [n for n in ("reward_choice", "deposit_rate", "goal_rate", "success_rate") if n in names]
        return names, current if current in names else (preferred or names)[0]

    @app.callback(Output("beh-fig", "figure"), Input("beh-table", "value"), Input("beh-metric", "value"))
    @guarded(1, 0)
    def behaviour(tables, metric):
        if not tables:
            return figures.message(MISSING["behaviour"], "behaviour")
        if text(metric, "metric") is None:
            return figures.message("choose a metric", "behaviour")
        return figures.behaviour(data.read_table(run.root, tables), metric)
