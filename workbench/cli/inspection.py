"""Looking at envs and policies: `workbench envs`, `workbench render`, `workbench hooks`."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.cli import parsers
from workbench.cli.output import console, show
from workbench.common import guards


def envs() -> None:
    """List the environment variants, their gymnasium ids and the reward schedules.

    Example: workbench envs
    """
    from workbench.envs import GYM_IDS, SCHEDULES, VARIANTS

    ids = {v: k for k, v in GYM_IDS.items()}
    for name, defaults in VARIANTS.items():
        typer.echo(f"{name:9s} {ids[name]:24s} default schedule: {defaults['schedule']}")
    typer.echo("schedules: " + ", ".join(SCHEDULES))


def render(
    variant: str = typer.Argument("trash", help="trash | blueroom | button | redgoal"),
    steps: int = typer.Option(
        12, help="steps of the random rollout (0-1000)", parser=parsers.count("--steps", 0, 1000)
    ),
    seed: int = typer.Option(0, parser=parsers.SEED),
    out: Path = typer.Option(None, help="also write the frames side by side as a PNG"),
    option: list[str] = typer.Option([], "--option", "-o", help="env option as key=value, repeatable"),
) -> None:
    """Play a random rollout and show it as text (and optionally a PNG strip).

    Example: workbench render blueroom --steps 8 -o distribution=test --out rollout.png
    """
    from workbench.common.io import atomic_write_bytes, png_bytes
    from workbench.envs.render import frame_strip
    from workbench.envs.rollouts import random_rollout

    guards.check_output(out)
    frames = []
    for shown in random_rollout(variant, steps, seed, scale=8, **parsers.parse_options(option)):
        if "action" in shown:
            typer.echo(f"\naction {shown['action']}  reward {shown['reward']:g}  events {shown['events'] or '-'}")
        typer.echo(shown["text"])
        frames.append(shown["frame"])
        if shown.get("over"):
            typer.echo("(episode over; a new one starts)")
    if out is not None:
        atomic_write_bytes(out, png_bytes(frame_strip(frames)))
        console.print(f"wrote {out}")


def hooks(checkpoint: Path = typer.Argument(..., help="run directory or step-*.safetensors")) -> None:
    """List every hook point of a checkpoint's policy with its activation shape (batch dim omitted).

    Example: workbench hooks runs/trash-cnn
    """
    from rich.table import Table

    from workbench.policies import hook_shapes
    from workbench.training.checkpoints import load_policy

    policy = load_policy(checkpoint)
    table = Table(title=f"{policy.config()['arch']} hooks — {policy.run_dir} step {policy.step}")
    table.add_column("hook")
    table.add_column("shape")
    for name, shape in hook_shapes(policy).items():
        table.add_row(name, str(list(shape)))
    show(table)
    aliases = getattr(policy, "hook_aliases", {})
    if aliases:  # SB3 names some activations twice: listed once, the other names still reach the same hook
        typer.echo("Each activation is listed once; these names are the same activation (run_with_hooks accepts "
                   "them, collect and patch take the listed name):")  # fmt: skip
        for alias, name in aliases.items():
            typer.echo(f"  {alias} = {name}")
