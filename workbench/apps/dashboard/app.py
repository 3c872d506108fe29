"""The Dash app: `workbench dashboard RUN_DIR` serves one run directory's checkpoints and results.

    from workbench.apps.dashboard import create_app
    app = create_app("runs/trash-cnn")
    app.run(host="127.0.0.1", port=8050)

The app reads only files under the run directory (see `paths`): the checkpoints, and whatever tables
`workbench probe`, `workbench patch` and `workbench eval --out` wrote there. It answers only requests whose Host
header names this machine as the browser reached it (localhost, a loopback or other IP address, the address it
listens on, this machine's name, or a name passed as allowed_hosts): a page elsewhere that points its own domain
at 127.0.0.1 (DNS rebinding) gets a 403, not the run's data. A background thread warms the caches
at start (the last checkpoint's policy, an episode, its activations, the tables) and the header shows its progress;
afterwards every callback is a cache lookup plus drawing a figure.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from dash import Dash, Input, Output, dcc, html

from workbench.apps import data
from workbench.apps.dashboard import views
from workbench.apps.paths import run_root
from workbench.apps.report import render
from workbench.common import guards
from workbench.common.errors import CheckpointError

VIEWS = (
    ("episode", "Episode player", views.episode_layout, views.episode_callbacks),
    ("activations", "Activations", views.activation_layout, views.activation_callbacks),
    ("probes", "Probes", views.probe_layout, views.probe_callbacks),
    ("patching", "Patching & steering", views.patching_layout, views.patching_callbacks),
    ("behaviour", "Behaviour", views.behaviour_layout, views.behaviour_callbacks),
)


class Warmup:
    """Fills the caches in a background thread and reports how far it got."""

    def __init__(self, run: data.Run):
        self.run = run
        self.done, self.total, self.what, self.error = 0, 1, "starting", None

    def _tasks(self):
        run, last = self.run, self.run.steps[-1]
        yield "checkpoints", lambda: [data.hook_names(run, step) for step in run.steps]
        yield "episode", lambda: data.episode(run, last, 0, "train")
        yield "activations", lambda: data.activation(run, last, data.episode(run, last, 0, "train").obs[0],
                                                     next(iter(data.hook_names(run, last))))  # fmt: skip
        for table in run.tables("probes"):
            yield f"probe table {table}", lambda t=table: (data.probe_tables(run, t), data.probe_directions(run, t))
        for kind in ("patching", "behaviour"):
            yield f"{kind} tables", lambda k=kind: data.read_table(run.root, run.tables(k))
        yield "figures", self._figures
        yield "steering", lambda: self._steering(last)

    def _figures(self) -> None:
        """Draw the report's figures, every kind the views draw: plotly builds its validators on first use (~0.2 s
        per kind of figure), and the report's episodes, activations and steering fill the caches too."""
        render(self.run.root)

    def _steering(self, step: int) -> None:
        """The first vector the steering view offers, unsteered and at coefficient 0, then the slider's others."""
        options = data.steering_options(self.run, step)
        if options:
            spec = options[0]["value"]
            data.steered_path(self.run, step, spec, 0.0)
            data.steering_effects(self.run, step, spec, 0.0)

    def _work(self) -> None:
        tasks = list(self._tasks())
        self.total = len(tasks)
        for i, (what, task) in enumerate(tasks):
            if data.STOP.is_set():
                break
            self.what = what
            try:
                task()
            except Exception as err:  # a damaged file shows in its view; the warm-up goes on
                self.error = f"{what}: {err}"
            self.done = i + 1
        self.what = "ready"

    def status(self) -> tuple[str, int, int]:
        return self.what, self.done, self.total


def create_app(run_dir: str | Path, warm: bool = True, host: str = "127.0.0.1", allowed_hosts=()) -> Dash:
    """The dashboard of one run directory (see the module docstring); `host`: the address it will listen on,
    `allowed_hosts`: more names the Host header may carry."""
    root = run_root(run_dir)
    run = data.load_run(root)
    if not run.steps:
        why = f" ({'; '.join(run.refused)})" if run.refused else ""
        raise CheckpointError(f"{root} holds no committed checkpoint it can read (no step-*.json){why}: train first.")
    app = Dash(
        __name__,
        title=f"workbench — {root.name}",
        serve_locally=True,  # no CDN: the app works offline, like the report
        assets_folder=str(Path(__file__).with_name("assets")),  # none: nothing but the components is served
        suppress_callback_exceptions=True,  # views mount when their tab opens
        update_title=None,
    )
    warmup = Warmup(run)
    app.layout = functools.partial(page, root)  # built per page load: new checkpoints and tables show on reload
    for _, _, _, callbacks in VIEWS:
        callbacks(app, run)

    @app.callback(Output("warm-bar", "value"), Output("warm-bar", "max"), Output("warm-text", "children"),
                  Output("warm-tick", "disabled"), Input("warm-tick", "n_intervals"))  # fmt: skip
    def warm_progress(_):
        what, done, total = warmup.status()
        text = "caches ready" if done >= total and what == "ready" else f"warming caches: {what} ({done}/{total})"
        if warmup.error:
            text += f" — {warmup.error}"
        return done, total, text, what == "ready"

    if warm:
        data.background(warmup._work, "dashboard-warmup")
    app.warmup = warmup
    app.callback_times = _time_callbacks(app)
    _check_host_header(app, host, allowed_hosts)
    return app


def allowed_host_names(host: str, allowed_hosts=()) -> set[str]:
    """Host names (besides IP addresses, always accepted) a request may name: localhost's, the address listened
    on, and where that is not loopback this machine's names; plus `allowed_hosts`."""
    import socket

    names = set(guards.LOOPBACK_NAMES) | {guards.host_of(h) for h in allowed_hosts}
    host = guards.host_of(host)
    if host not in ("", "0.0.0.0", "::"):
        names.add(host)
    if not guards.is_loopback(host):
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name.lower())
    return names


def _check_host_header(app: Dash, host: str, allowed_hosts) -> None:
    """Refuse (403) requests whose Host header names something else: DNS rebinding (module docstring)."""
    import flask

    names = allowed_host_names(host, allowed_hosts)

    @app.server.before_request
    def host_header():
        asked = guards.host_of(flask.request.headers.get("Host", ""))
        if asked in names or guards.is_ip_literal(asked):
            return None
        return flask.Response(
            f"Host {asked!r} is not one this dashboard answers to (DNS rebinding guard): open it at "
            f"http://127.0.0.1:<port>/, or start it with --allow-host {asked or 'NAME'} if that name is yours.\n",
            status=403,
            mimetype="text/plain",
        )


def _time_callbacks(app: Dash) -> list[tuple[str, float]]:
    """Record (outputs, milliseconds) of every callback request the server answers (for the latency figures)."""
    import flask

    times: list[tuple[str, float]] = []

    @app.server.before_request
    def start():
        flask.g.started = time.perf_counter()

    @app.server.after_request
    def stop(response):
        if flask.request.path.endswith("/_dash-update-component") and hasattr(flask.g, "started"):
            body = flask.request.get_json(silent=True) or {}
            times.append((str(body.get("output")), 1000 * (time.perf_counter() - flask.g.started)))
            del times[:-10_000]  # bounded for an app kept open all day
        return response

    return times


def page(root: Path) -> html.Div:
    """The whole page, from what the run directory holds now."""
    run = data.load_run(root)
    header = html.Div(
        [
            html.H2(f"reward-workbench — {root.name}", style={"margin": "0"}),
            html.Div(
                f"{run.arch} policy on {run.variant} · {len(run.steps)} checkpoints "
                f"({run.steps[0]:,} … {run.steps[-1]:,} env-steps) · {root}"
                if run.steps
                else f"{run.arch} policy on {run.variant} · no checkpoint can be read · {root}",
                style=views.NOTE,
            ),
            *[html.Div(f"not read: {why}", style={**views.NOTE, "color": "#a00"}) for why in run.refused],
            html.Div(
                [
                    html.Progress(id="warm-bar", max=1, value=0, style={"width": "200px"}),
                    html.Span(id="warm-text", style={**views.NOTE, "marginLeft": "8px"}),
                ]
            ),
            dcc.Interval(id="warm-tick", interval=400, max_intervals=600),
        ],
        style={"padding": "8px 12px", "borderBottom": "1px solid #ddd"},
    )
    tabs = dcc.Tabs(
        [dcc.Tab(layout(run), label=label, value=name, id=f"tab-{name}") for name, label, layout, _ in VIEWS],
        id="tabs",
        value="episode",
    )
    return html.Div([header, tabs], style={"fontFamily": "sans-serif", "padding": "0 8px"})


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8050, debug: bool = False,
          allowed_hosts=()) -> None:  # fmt: skip
    guards.check_port(host, port)  # one clear line, before the caches warm up
    app = create_app(run_dir, host=host, allowed_hosts=allowed_hosts)
    with data.one_torch_thread():
        app.run(host=host, port=port, debug=debug)


def wait_warm(app: Dash, timeout: float = 60.0) -> None:
    """Block until the warm-up thread is done (tests and benchmarks)."""
    deadline = time.monotonic() + timeout
    while app.warmup.status()[0] != "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
