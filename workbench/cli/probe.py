"""Linear probes with controls: `workbench probe` (a sweep over a run's checkpoints, `probes.probe_sweep`)."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.cli import parsers
from workbench.cli.output import console, show, table_format, write_table_file
from workbench.common import guards
from workbench.common.errors import ConfigError
from workbench.common.progress import Progress


def probe(
    run_or_ckpt: Path = typer.Argument(..., help="run directory (every checkpoint) or one step-*.safetensors"),
    out: Path = typer.Option(..., help="table to write (parquet); <stem>.directions.safetensors/.json beside it"),
    hooks: list[str] = typer.Option(
        [], "--hooks", help="hook names, repeatable or comma-separated (default: every *.hook_out / *hook_resid_post)"
    ),
    labels: list[str] = typer.Option(
        [], "--labels", help="label names, repeatable or comma-separated (default: the reward and task sets)"
    ),
    steps: int = typer.Option(
        20_000,
        "--steps",
        help="observations to collect with the last checkpoint (1e5 form accepted)",
        parser=parsers.count("--steps", 1, 10**9),
    ),  # fmt: skip
    seed: int = typer.Option(
        0, help="seed of the rollout, the episode split, the controls and the bootstrap", parser=parsers.SEED
    ),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or progress lines (for scripts)"),
    backend: str = typer.Option("local", help="local | ray: checkpoints as Ray tasks (needs the ray extra)"),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster HEAD:6379 (default: RAY_ADDRESS)"),
    csv: Path = typer.Option(
        None,
        "--csv",
        help="also write the table as CSV (the parquet --out carries the id that ties it to its directions)",
    ),  # fmt: skip
) -> None:
    """Fit linear probes (with shuffled, random-init, baseline and best-unit controls) on every checkpoint of
    a run, on one shared set of observations; write one tidy table and the probe directions.

    Example: workbench probe runs/trash-cnn --labels carrying,trash_map,reward --out probes.parquet
    """
    from rich.table import Table

    from probes import probe_sweep, summary
    from probes.directions import paths as direction_paths
    from probes.resamples import resamples_path
    from probes.sweep import check_probe_memory
    from workbench.common.compute import resolve_device

    guards.check_output(out, companions=(*direction_paths(out), resamples_path(out)))
    if table_format(out) != "parquet":
        raise ConfigError(f"--out {out}: a probe table is parquet (its metadata ties it to its directions and "
                          "resamples); add --csv PATH for a CSV copy.")  # fmt: skip
    if csv is not None:
        table_format(csv, "--csv")
        guards.check_output(csv, option="--csv")
    hook_names, label_names = parsers.names(hooks, "--hooks"), parsers.names(labels, "--labels")
    check_probe_memory(run_or_ckpt, hook_names, steps)
    kwargs = dict(hooks=hook_names, labels=label_names, n_steps=steps, seed=seed,
                  device=resolve_device(device), out=out, backend=backend, ray_address=ray_address)  # fmt: skip
    with Progress("probe", console, quiet=quiet) as update:
        table = probe_sweep(run_or_ckpt, progress=update, **kwargs)
    if csv is not None:
        write_table_file(table, csv, "--csv")
    best = summary(table)
    metric = best.metric.iloc[0] if len(best) else "info_gain"
    view = Table(title=f"best probe per label: chosen on validation selectivity; test {metric} and selectivity (score "
                       f"- highest control) — {out}")  # fmt: skip
    for column in ("label", "set", "step", "hook", "probe", "test score", "95% CI", "selectivity"):
        view.add_column(column, justify="right" if column in ("step", "test score", "selectivity") else "left")
    for row in best.itertuples():
        view.add_row(row.label, row.label_set, str(row.step), row.hook, row.probe, f"{row.value:.3f}",
                     f"[{row.ci_low:.3f}, {row.ci_high:.3f}]", f"{row.selectivity:+.3f}")  # fmt: skip
    show(view)
    skipped = table.loc[table["metric"] == "skipped", "note"].unique()
    for note in skipped:
        console.print(f"skipped: {note}")
    console.print(f"wrote {out} ({len(table)} rows) and its directions beside it")
