"""Apps on top of the library: `workbench bench` (our tools against the reference ones), `workbench demo` (the
study E1-E5), `workbench dashboard` and `workbench report`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from workbench.cli import parsers
from workbench.cli.output import console, show
from workbench.common import guards
from workbench.common.progress import Progress

bench_app = typer.Typer(
    help="Measure our tools against the reference ones, side by side in one run: `workbench bench` runs them all "
    "(or --only NAME), `workbench bench NAME` one, with its own options.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    only: list[str] = typer.Option([], "--only", help="a benchmark's name (the subcommands below); repeatable"),
    quick: bool = typer.Option(False, help="short timings, for smoke tests"),
) -> None:
    """Measure our tools against the reference ones, side by side in one run (all of them, or --only NAME).

    Example: workbench bench --only env --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from workbench.bench.suite import run_benches

    _show_bench(run_benches(only or None, quick=quick), as_json)


def _show_bench(results: dict, as_json: bool) -> None:
    if as_json:  # numpy scalars (int64, float32) as plain numbers: a long benchmark's figures are never lost to them
        typer.echo(json.dumps(results, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)))
        return
    from rich.table import Table

    for name, figures in results.items():
        table = Table(title=name)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, str(value))
        show(table)


def _bench_command(name: str, summary: str):
    """`workbench bench NAME`: one benchmark, with --json and --quick."""

    def command(
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
        quick: bool = typer.Option(False, help="short timings, for smoke tests"),
    ) -> None:
        from workbench.bench.suite import run_benches

        _show_bench(run_benches([name], quick=quick), as_json)

    command.__doc__ = f"{summary}\n\nExample: workbench bench {name} --json"
    return command


def _register_bench_commands() -> None:
    from workbench.bench import BENCHMARKS  # the package's __init__ imports no torch

    for name, summary in BENCHMARKS.items():
        if name != "probe-sweep":
            bench_app.command(name)(_bench_command(name, summary))


_register_bench_commands()


@bench_app.command("probe-sweep")
def bench_probe_sweep(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    quick: bool = typer.Option(False, help="2 checkpoints, 1,200 observations, 20 replicates: a smoke run"),
    reference_steps: str = typer.Option(
        "1",
        help="how many of the checkpoints the scikit-learn reference measures (its time is projected to all), or 'all'",
    ),
    reference_init_seeds: int = typer.Option(1, min=1, help="how many random-init draws the reference measures"),
) -> None:
    """The E1 probe sweep (10 checkpoints of trash-cnn-s0 x its hooks x every label, every control, bootstrap
    intervals): ours vs a scikit-learn loop over the same grid; speed, held-out agreement and convergence.

    Example: workbench bench probe-sweep --json
    """
    from workbench.bench.suite import run_benches

    steps = reference_steps if reference_steps == "all" else guards.check_int(reference_steps, "--reference-steps", 1)
    options = {"reference_steps": steps, "reference_init_seeds": reference_init_seeds}
    _show_bench(run_benches(["probe-sweep"], quick=quick, options={"probe-sweep": options}), as_json)


def demo(
    out: Path = typer.Option(Path("demo-out"), help="folder for the tables, figures and report.html"),
    checkpoints: Path = typer.Option(
        None, help="folder of the checkpoint series (default: $WORKBENCH_CHECKPOINTS, else the checkout's checkpoints/)"
    ),
    quick: bool = typer.Option(False, help="fewer rollouts and observations: a smoke run"),
) -> None:
    """The main job: the study E1-E5 on the bundled checkpoints (probes, patching, the reward-optimizer choice
    test, blue room, red goal, the chiseling tracer); writes OUT/report.html and prints the summary table.

    Example: workbench demo --out demo-out
    """
    from rich.table import Table

    from analysis.common import CHECKPOINTS, check_checkpoints
    from analysis.demo import run_all

    guards.check_output(out, kind="dir")
    checkpoints = check_checkpoints(checkpoints or CHECKPOINTS)  # before any work: one line naming the setting

    with Progress("demo", console, spinner=True) as update:
        update("E1-E5 on the bundled checkpoints")
        _, table, path = run_all(checkpoints, out, quick, progress=update)
    view = Table(title="What reward chiselled into the bundled policies (95% intervals)")
    for column in table.columns:
        view.add_column(column, overflow="fold")
    for row in table.itertuples(index=False):
        view.add_row(*(str(v) for v in row))
    show(view)
    console.print(f"wrote {path} (open it in a browser; it works offline) and the tables beside it")


def dashboard(
    run_dir: Path = typer.Argument(..., help="run directory (run.json + checkpoints; tables written into it)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: every interface; be careful)"),
    port: int = typer.Option(8050, help="port (1-65535)", parser=parsers.count("--port", 1, 65535)),
    allow_host: list[str] = typer.Option(
        [],
        "--allow-host",
        help="a name the dashboard may be reached by besides localhost and the --host itself "
        "(requests with any other Host header are refused: DNS rebinding); repeatable",
    ),  # fmt: skip
) -> None:
    """Interactive dashboard of one run: episode player, activations, probes, patching and steering, behaviour.
    It reads only files under RUN_DIR: the checkpoints and the tables `workbench probe/patch/eval --out` wrote there.

    Example: workbench dashboard runs/trash-cnn --port 8050
    """
    from workbench.apps.dashboard import serve

    guards.check_port(host, port)
    if not guards.is_loopback(host):
        console.print(f"[bold red]WARNING:[/] --host {escape(host)} is not loopback: anyone who can reach this machine "
                      "on that interface can open the dashboard, which has no login, and read the run's checkpoints "
                      "and tables through it. Use the default 127.0.0.1 (with an SSH tunnel for remote access) "
                      "unless this network is trusted.")  # fmt: skip
    console.print(f"dashboard of {run_dir} on http://{host}:{port}/ (Ctrl-C stops it)")
    extra = {"allowed_hosts": tuple(allow_host)} if allow_host else {}
    serve(run_dir, host=host, port=port, **extra)


def report(
    run_or_ckpt: Path = typer.Argument(..., help="run directory (its last checkpoint in focus) or step-*.safetensors"),
    out: Path = typer.Option(Path("report.html"), help="HTML file to write (self-contained: works offline)"),
) -> None:
    """One self-contained HTML report with the dashboard's figures (plotly inlined, no CDN), to share.

    Example: workbench report runs/trash-cnn --out report.html
    """
    from workbench.apps.report import build_report

    guards.check_output(out)
    with Progress("report", console, spinner=True) as update:
        path = build_report(run_or_ckpt, out, progress=update)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
