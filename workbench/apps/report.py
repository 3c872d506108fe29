"""`workbench report RUN_OR_CKPT --out report.html`: the dashboard's figures in one self-contained HTML file.

    from workbench.apps.report import build_report
    build_report("runs/trash-cnn", "report.html")                      # the last checkpoint in focus
    build_report("runs/trash-cnn/step-000400000.safetensors", "r.html")  # one checkpoint in focus

plotly.js is inlined once (no CDN, nothing fetched when it opens: it works offline and can be mailed); each
figure is the same `workbench.apps.figures` function the app draws with, over the files under the run
directory: checkpoint metrics, an episode of the focus checkpoint, its activations on the first frame, every
probe table (selectivity, the most selective probes over training, their directions), patching and behaviour
tables. Views whose files are absent say which command writes them.

An imported run (`workbench import-sb3`) gets what applies to it: its hooks (each activation once, with the
aliases SB3 gives it), and with a MiniGrid env an episode of that env (the whole grid drawn, MiniGrid's actions),
activations, probes, patching and behaviour (`workbench eval`); it has no training curve (one imported checkpoint)
and no steering section (steering uses the workbench's own rooms). Without an env, only the hooks and any probe or
patching table apply, and the report says so.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from workbench.apps import data, figures
from workbench.apps.data import MISSING
from workbench.apps.paths import run_root
from workbench.common.io import atomic_write_bytes
from workbench.policies.names import with_roles
from workbench.training.checkpoints import resolve

STYLE = """
body { font-family: sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.note { color: #555; font-size: 14px; } .missing { color: #8a5a00; font-size: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 8px; } .row > div { flex: 1 1 420px; min-width: 0; }
table.cfg { border-collapse: collapse; font-size: 13px; } table.cfg td { border: 1px solid #ddd; padding: 2px 8px; }
"""


class Report:
    """Sections of HTML and figures, rendered to one page."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def figures(self, *figs: go.Figure) -> None:
        divs = []
        for fig in figs:
            self.n_figures += 1
            div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"figure-{self.n_figures}",
                              default_width="100%", config={"displaylogo": False, "responsive": True})  # fmt: skip
            divs.append(f'<div class="figure">{div}</div>')
        self.parts.append(f'<div class="row">{"".join(divs)}</div>')

    def html(self) -> str:
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>\n"
        )


def build_report(run_or_ckpt: str | Path, out: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """Write the report of a run directory (or of one checkpoint in its run) to `out`; returns the path."""
    with data.one_torch_thread():
        report = render(run_or_ckpt, progress)
    (progress or (lambda what: None))("write")
    return atomic_write_bytes(out, report.html().encode())


def render(run_or_ckpt: str | Path, progress: Callable[[str], None] | None = None) -> Report:
    """Every section and figure of the report, not yet written (the dashboard's warm-up draws it too)."""
    run_dir, focus = resolve(run_or_ckpt)
    run = data.load_run(run_root(run_dir))
    say = progress or (lambda what: None)
    imported = run.world is not None
    report = Report(f"reward-workbench report — {run.root.name}, step {focus:,}")
    where = _env_text(run.config["env"]) if imported else run.variant
    report.note(f"{run.arch} policy on {where} · checkpoints {', '.join(f'{s:,}' for s in run.steps)} · "
                f"{run.root} · written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")  # fmt: skip
    report.parts.append(_config_table(run.config))

    say("training")
    report.heading("Training")
    if imported:
        source = (run.config.get("imported") or {}).get("source", "an SB3 zip")
        report.note(f"Imported from {source} (workbench import-sb3) at step {focus:,}: no training curve, the run "
                    "holds the one imported checkpoint.")  # fmt: skip
    else:
        report.figures(figures.training_metrics(run.metrics))

    shapes = data.hook_names(run, focus)
    if imported:
        say("hooks")
        report.heading("Hooks")
        report.note("Every hook of the imported policy with its activation shape (batch dim omitted), each activation "
                    "once; the other names SB3 gives the same activation are listed beside it and are accepted by "
                    "run_with_hooks.")  # fmt: skip
        report.parts.append(_hooks_table(shapes, getattr(data.policy_at(run, focus), "hook_aliases", {})))

    ep = None
    if run.world in (None, "minigrid"):
        say("episode")
        report.heading(f"An episode of step {focus:,} (seed 0)")
        ep = data.episode(run, focus, 0, "train")
        shown = np.unique(np.linspace(0, len(ep) - 1, min(8, len(ep))).round().astype(int))
        captions = [f"t={t}" + (f" {', '.join(ep.events[t])}" if ep.events[t] else "") for t in shown]
        pictures = ep.frames if ep.frames is not None else ep.obs
        title = "frames (the whole grid; the agent's view highlighted)" if ep.frames is not None else "frames"
        report.figures(figures.episode_strip([pictures[t] for t in shown], captions, title))
        names = data.action_names(ep.probs.shape[1], run.world)
        report.figures(figures.action_probs(ep.probs[0], names, int(ep.actions[0]) if len(ep.actions) else None),
                       figures.episode_trace(ep.value, ep.reward, ep.events, 0))  # fmt: skip

        say("activations")
        report.heading(f"Activations of step {focus:,} on the episode's first frame")
        picked = with_roles(shapes, "conv", "pattern")
        if run.arch == "sb3":  # conv maps where there are some (NatureCNN), else the first module outputs
            picked = [h for h, shape in shapes.items() if len(shape) == 3 and h != "hook_obs"][:4]
        picked = picked or [h for h in shapes if h not in ("hook_obs", "hook_logits", "hook_value")][:4]
        acts = [(hook, data.activation(run, focus, ep.obs[0], hook)) for hook in picked]
        report.figures(*[figures.activation(act, hook, _busiest(act, hook)) for hook, act in acts])
    else:
        report.heading("Episode and activations")
        report.note("This run was imported without an env, so there is no episode to play or frame to read: import "
                    "it again with --env (a MiniGrid id, -o for its kwargs) for the episode, activations and "
                    "behaviour.", "missing")  # fmt: skip

    say("probes")
    report.heading("Probes")
    tables = run.tables("probes")
    if not tables:
        report.note(MISSING["probes"], "missing")
    for table in tables:
        scores, best = data.probe_tables(run, table)
        step = focus if focus in set(best["step"]) else int(best["step"].max())
        report.note(f"{table}: step {step:,}")
        report.figures(figures.selectivity_heatmap(best, step))
        top = best[best["step"] == step].sort_values("selectivity", ascending=False).head(3)
        directions = data.probe_directions(run, table)
        for row in top.itertuples():
            direction = data.find_direction(directions, step, row.hook, row.label, row.probe)
            extra = []
            if direction is not None and ep is not None:
                act = data.activation(run, step, ep.obs[0], row.hook)
                extra = [figures.direction_grid(direction), figures.probe_on_frame(direction, act, 0)]
            report.figures(figures.probe_curves(scores, row.hook, row.label, row.probe), *extra)

    say("patching")
    report.heading("Patching")
    tables = run.tables("patching")
    if not tables:
        report.note(MISSING["patching"], "missing")
    for table in tables:
        frame = data.read_table(run.root, [table])
        report.note(table)
        report.figures(*[figures.patching(frame, hook) for hook in frame["hook"].unique()])

    say("steering")
    report.heading(f"Steering at step {focus:,}")
    options = [] if imported else data.steering_options(run, focus)
    if imported:
        report.note("Steering rolls the policy out in the workbench's own rooms with their contrast vectors; it does "
                    "not apply to an imported run.")  # fmt: skip
    if options:
        spec, coef = options[0]["value"], 2.0
        report.note(f"{options[0]['label']}: one episode steered at coefficients -{coef:g} and +{coef:g} beside the "
                    f"unsteered one, and {data.STEERING_EPISODES} episodes' rates with Wilson intervals.")  # fmt: skip
        base = data.steered_path(run, focus, spec, 0.0)
        report.figures(*[figures.steering_paths(ep.obs[0], base, data.steered_path(run, focus, spec, c), f"coef {c:g}")
                         for c in (-coef, coef)])  # fmt: skip
        report.figures(*[figures.steering_effects(data.steering_effects(run, focus, spec, c)) for c in (-coef, coef)])

    say("behaviour")
    report.heading("Behaviour")
    tables = run.tables("behaviour")
    if not tables:
        report.note(MISSING["behaviour"], "missing")
    else:
        frame = data.read_table(run.root, tables)
        metrics = [m for m in frame["metric"].unique() if m in BEHAVIOUR_METRICS] or list(frame["metric"].unique())
        report.figures(*[figures.behaviour(frame, metric) for metric in metrics[:6]])

    return report


BEHAVIOUR_METRICS = ("reward_choice", "task_choice", "reward_share", "deposit_rate", "coverage", "goal_rate",
                     "decoy_rate", "success_rate")  # fmt: skip


def _busiest(act: np.ndarray, hook: str) -> int:
    """The channel (or head) that varies most over the frame: a more telling first picture than channel 0."""
    kind, n = figures.n_indices(act.shape, hook)
    if n <= 1:
        return 0
    per = act if kind == "channel" or with_roles([hook], *figures.ATTENTION_ROLES) else act.swapaxes(0, 1)
    return int(np.argmax(per.reshape(n, -1).std(1)))


def _env_text(env: dict) -> str:
    if env.get("world") != "minigrid":
        return "no env (imported without one)"
    kwargs = f", kwargs {env['kwargs']}" if env.get("kwargs") else ""
    return f"{env['env_id']} (obs {env.get('obs', 'image')!r}{kwargs})"


def _hooks_table(shapes: dict[str, tuple], aliases: dict[str, str]) -> str:
    by_name: dict[str, list[str]] = {}
    for alias, name in aliases.items():
        by_name.setdefault(name, []).append(alias)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{list(shape)}</td>"
        f"<td>{html.escape(', '.join(sorted(by_name.get(name, []))))}</td></tr>"
        for name, shape in shapes.items()
    )
    head = "<tr><td><b>hook</b></td><td><b>shape</b></td><td><b>also named</b></td></tr>"
    return f'<table class="cfg">{head}{rows}</table>'


def _config_table(config: dict) -> str:
    rows = []
    for section in ("env", "policy", "ppo", "imported"):
        if section not in config:
            continue
        values = config.get(section) or {}
        text = ", ".join(f"{k}={v}" for k, v in values.items())
        rows.append(f"<tr><td>{section}</td><td>{html.escape(text)}</td></tr>")
    if "seed" in config:
        rows.append(f"<tr><td>seed</td><td>{html.escape(str(config.get('seed')))}</td></tr>")
    return f'<table class="cfg">{"".join(rows)}</table>'
