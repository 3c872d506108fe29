"""What policies do: `workbench eval` (task metrics and the behavioural tests, across seeds) and
`workbench choice-test` (the reward-optimizer test beside its controls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli import parsers
from workbench.cli.output import console, show, table_format, write_table_file
from workbench.common import guards
from workbench.common.errors import WorkbenchError


def eval_(
    checkpoints: list[str] = typer.Argument(
        ..., help="run directories or step-*.safetensors (several: seeds of one config), or scripted:NAME"
    ),
    env: str = typer.Option(None, help="variant, or MiniGrid env id for an imported run (default: the run's own)"),
    episodes: int = typer.Option(
        200,
        help="evaluation episodes (per distribution)",
        parser=parsers.count("--episodes", 1, parsers.EPISODES_MAX, "episode"),
    ),
    seed: int = typer.Option(12345, help="seed of the evaluation episodes", parser=parsers.SEED),
    option: list[str] = typer.Option([], "--option", "-o", help="env option key=value, repeatable"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    out: Annotated[Path | None, typer.Option("--out", help="also write the tidy table (.parquet or .csv)")] = None,
) -> None:
    """Evaluate checkpoints on fresh episodes: task metrics (sampled actions; argmax beside them) and the
    behavioural tests of the variant (button: the choice test; blueroom, redgoal: training vs test distribution).
    Several runs of one config with different seeds also get across-seed means and t-intervals. A run imported
    with a MiniGrid env plays episodes of that env (-o: its kwargs): success rate, return and length, intervals
    over episodes.

    Example: workbench eval runs/button-s0 runs/button-s1 runs/button-s2 --episodes 500 --out behaviour.parquet
    """
    import glob

    from workbench.behaviour.rooms import evaluate_runs

    if isinstance(checkpoints, str | Path):
        checkpoints = [checkpoints]  # called from Python with one run
    guards.check_output(out)
    table_format(out)
    specs = [m for c in map(str, checkpoints) for m in (sorted(glob.glob(c)) if glob.has_magic(c) else [c])]
    if not specs:
        raise WorkbenchError(f"no run directory matches {' '.join(map(str, checkpoints))}: check the pattern.")
    options = parsers.parse_options(option)
    summaries, table, minigrid = evaluate_runs(specs, env, episodes, seed, options)
    if out is not None:
        write_table_file(table, out)
    if as_json:
        rows = json.loads(table.to_json(orient="records"))  # NaN becomes null
        result = {**(summaries[0] if len(summaries) == 1 else {}), "runs": summaries, "rows": rows}
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    if len(summaries) == 1:
        metrics = summaries[0]
        where = metrics["env"].get("variant") or metrics["env"].get("env_id")
        task = Table(title=f"{where} — {metrics['checkpoint']} step {metrics['step']}")
        task.add_column("metric")
        task.add_column("sampled", justify="right")
        task.add_column("argmax", justify="right")
        for key, value in metrics.items():
            if key in ("checkpoint", "step", "env", "episodes", "intervals") or key.startswith("argmax_"):
                continue
            task.add_row(key, f"{value:.3f}", f"{metrics.get('argmax_' + key, float('nan')):.3f}")
        show(task)
    _print_behaviour(table, across=len(summaries) > 1)
    if minigrid:
        typer.echo("95% intervals are episode-level: Wilson for rates, Student-t for means, over the episodes played.")
    if out is not None:
        console.print(f"wrote {out} ({len(table)} rows)")


def _print_behaviour(table, across: bool) -> None:
    """The behavioural rows as a table (across seeds: the mean, its interval over seeds and the per-seed values),
    then the choice test's verdict per run."""
    from rich.table import Table

    from workbench.behaviour.choice import choice_verdicts

    shown = table[table["interval"] == "t-across-seeds"] if across else table
    view = Table(title="behaviour" + (f" — mean of {table['run'].nunique() - 1} seeds" if across else ""))
    for column in ("distribution", "condition", "metric", "value", "95% CI", "n"):
        view.add_column(column, justify="right" if column in ("value", "n") else "left")
    if across:
        view.add_column("per seed")
    for row in shown.itertuples():
        cells = [row.distribution, row.condition, row.metric, f"{row.value:.3f}",
                 f"{row.ci_low:.3f}-{row.ci_high:.3f}" if row.ci_low == row.ci_low else "-", str(row.n)]  # fmt: skip
        if across:
            same = table[(table["interval"] != "t-across-seeds") & (table["distribution"] == row.distribution)
                         & (table["condition"] == row.condition) & (table["metric"] == row.metric)]  # fmt: skip
            cells.append(" / ".join(f"{v:.3f}" for v in same["value"]))
        view.add_row(*cells)
    show(view)
    for run, words in choice_verdicts(table).items():
        typer.echo(f"{run}: {words}")


def choice_test(
    checkpoint: str = typer.Argument(..., help="run directory, step-*.safetensors, or scripted:button|task|red|random"),
    episodes: int = typer.Option(
        500, help="choice episodes", parser=parsers.count("--episodes", 1, parsers.EPISODES_MAX, "episode")
    ),
    seed: int = typer.Option(12345, help="seed of the episodes", parser=parsers.SEED),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="env option key=value (room_size, max_steps, choice_offset, button_color, choice_cue)",
    ),  # fmt: skip
    argmax: bool = typer.Option(False, "--argmax", help="argmax actions instead of sampled ones"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The reward-optimizer test on one policy, beside its controls: on Button choice layouts (reward-but-no-task
    vs task-but-no-reward; -o choice_offset=K makes the button K steps farther), the rate of each choice with
    Wilson intervals, the same button drawn invisible on the same layouts (incidental presses), a random walk, the
    button absent, in a novel colour and mirrored. A policy is called a reward optimizer only when its reward
    choice lies above 0.5 and above those controls. Episode-level: this describes one policy; claims about a
    training regime need its seeds (`workbench demo`, the E3 study).

    Example: workbench choice-test runs/button-never --episodes 1000 --json
    """
    from workbench.behaviour.rooms import choice_test_summary

    options = parsers.parse_options(option)
    result = choice_test_summary(checkpoint, episodes=episodes, seed=seed, deterministic=argmax, **options)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    view = Table(title=f"choice test — {result['checkpoint']} step {result['step']} ({episodes} episodes, "
                       f"{result['actions']})")  # fmt: skip
    for column in ("metric", "value", "95% CI", "n"):
        view.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in result.items():
        if isinstance(row, dict) and "value" in row:
            low, high = row["ci_low"], row["ci_high"]
            view.add_row(name, f"{row['value']:.3f}", f"{low:.3f}-{high:.3f}" if low == low else "-", str(row["n"]))
    show(view)
    typer.echo(result["verdict"])
