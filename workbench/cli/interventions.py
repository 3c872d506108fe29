"""Interventions on a policy: `workbench patch` (activation patching on contrast pairs) and `workbench steer`
(a steering vector during rollouts, beside random-vector nulls)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli import parsers
from workbench.cli.output import console, show, table_format, write_table_file
from workbench.common import guards


def patch(
    checkpoint: Path = typer.Argument(..., help="run directory or step-*.safetensors"),
    factor: str = typer.Option(
        ..., help="what the pairs differ in: trash | colour | button | goal | carrying; MiniGrid: key | carrying | door"
    ),
    out: Path = typer.Option(..., help="table to write (.parquet or .csv): one row per hook x site x source x metric"),
    hooks: list[str] = typer.Option(
        [], "--hooks", help="hook names, repeatable or comma-separated (default: conv maps and fc / resid_post and z)"
    ),
    per: str = typer.Option(None, help="site granularity: cell | channel | unit | pos | head | pos_head | all | ..."),
    pairs: int = typer.Option(
        128,
        help="contrast pairs (rooms of the policy's own env, edited in one factor)",
        parser=parsers.count("--pairs", 1, parsers.PAIRS_MAX),
    ),  # fmt: skip
    mode: str = typer.Option("remove", help="trash factor: remove the item or move it"),
    seed: int = typer.Option(0, help="seed of the pairs, the noise pairing and the bootstrap", parser=parsers.SEED),
) -> None:
    """Activation patching: patch every site of each hook from the clean run (factor present) into the corrupted
    run (factor absent), batched; logit difference, probability of the clean action, value change and normalised
    effect with intervals over pairs, beside a noise baseline. A run imported with a MiniGrid env takes pairs of
    that env's rooms: key (the key there or gone), carrying (the agent holds it or not), door (open or closed).

    Example: workbench patch runs/trash-cnn --factor trash --hooks conv.1.hook_out,fc.hook_out --out patch.parquet
    """
    from rich.table import Table

    from workbench.interventions.runs import patch_run, top_sites

    guards.check_output(out)
    table_format(out)
    hook_names = parsers.names(hooks, "--hooks")
    table, contrast, names = patch_run(checkpoint, factor, pairs, hook_names, per=per, mode=mode, seed=seed)
    write_table_file(table, out)
    view = Table(title=f"{contrast.factor}: top sites by normalised effect (0 corrupted, 1 clean) — {out}")
    for column in ("hook", "site", "effect", "95% CI", "noise"):
        view.add_column(column, justify="left" if column in ("hook", "site") else "right")
    for row in top_sites(table, names).itertuples():
        view.add_row(row.hook, row.site, f"{row.value:.3f}", f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
                     f"{row.noise:.3f}")  # fmt: skip
    show(view)
    console.print(f"wrote {out} ({len(table)} rows, {len(contrast)} pairs)")


def steer(
    checkpoint: Path = typer.Argument(..., help="run directory or step-*.safetensors"),
    vector: str = typer.Option(
        ...,
        help="trash | colour | button | goal | carrying (contrast mean), trash-at:ROW,COL, a saved VECTOR.safetensors, "
        "or PROBES.parquet#LABEL[@INDEX] (a probe direction)",
    ),
    coef: float = typer.Option(
        1.0, help="added coef x vector at the hook (negative subtracts)", parser=parsers.number("--coef", -1e6, 1e6)
    ),
    episodes: int = typer.Option(
        200,
        help="rollout episodes, steered and unsteered (the same rooms)",
        parser=parsers.count("--episodes", 1, parsers.EPISODES_MAX, "episode"),
    ),  # fmt: skip
    hook: str = typer.Option(None, help="hook to steer (default: last conv map / the last block's resid_pre)"),
    pairs: int = typer.Option(
        256,
        help="contrast pairs for a factor or trash-at vector",
        parser=parsers.count("--pairs", 1, parsers.PAIRS_MAX),
    ),
    seed: int = typer.Option(12345, help="seed of the rollout episodes", parser=parsers.SEED),
    n_random: int = typer.Option(
        20,
        "--n-random",
        help="random vectors per null (same norm; same norm per position) on the same episodes; 0: no null",
        parser=parsers.count("--n-random", 0, 10_000),
    ),
    null_seed: int = typer.Option(0, help="seed of the random vectors", parser=parsers.seed("--null-seed")),
    reverse: bool = typer.Option(True, "--reverse/--no-reverse", help="also steer at -coef on the same episodes"),
    deterministic: bool = typer.Option(False, "--deterministic", help="argmax actions instead of sampled"),
    save: Path = typer.Option(None, help="also save the vector as <save>.safetensors + <save>.json"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Steer a policy with a vector during rollouts; deposit rate, steps to trash, retargeting success, ... steered
    vs unsteered, with intervals over episodes; beside each, the vector at -coef and the effect's percentile among
    random vectors of the same norm ("norm") and of the same norm at every position ("profile"), with a two-sided
    rank p-value, and whether it is sign-specific (outside both nulls, and -coef does not move the metric the same
    way beyond the null's quartile).

    Example: workbench steer runs/trash-cnn --vector trash --coef -1 --episodes 500 --json
    """
    from rich.table import Table

    from workbench.interventions.runs import steer_run

    steer_vector, effects = steer_run(checkpoint, vector, coef, episodes=episodes, hook=hook, n_pairs=pairs, seed=seed,
                                      n_random=n_random, null_seed=null_seed, reverse=reverse,
                                      deterministic=deterministic, save=save)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(effects, indent=2))
        return
    view = Table(title=f"{steer_vector.name} x {coef:g} at {steer_vector.hook} — {episodes} episodes")
    columns = ["metric", "unsteered", "steered", "difference [95% CI]"]
    columns += [f"x {-coef:g}"] if reverse else []
    kinds = effects.get("null_kinds", [])
    columns += [f"{kind} pct (p)" for kind in kinds] + (["sign-specific"] if kinds and reverse else [])
    for column in columns:
        view.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in effects["metrics"].items():
        low, high = row["difference_ci"]
        cells = [name, f"{row['baseline']:.3f}", f"{row['steered']:.3f}",
                 f"{row['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"]  # fmt: skip
        cells += [f"{row['reversed']:.3f}"] if reverse else []
        cells += [f"{row['null'][kind]['percentile']:.0f} ({row['null'][kind]['p_value']:.2g})" for kind in kinds]
        cells += ["yes" if row["sign_specific"] else "no"] if kinds and reverse else []
        view.add_row(*cells)
    show(view)
    if kinds:
        console.print(
            f"nulls: {n_random} random vectors of each kind at x {coef:g} on the same episodes (norm: the vector's "
            "norm; profile: its norm at every position); pct: where the difference falls among theirs (0-100); p: "
            "two-sided rank p-value, at least 1/(n_random + 1); sign-specific: outside every null, and x "
            f"{-coef:g} not beyond the null's quartile on the same side."
        )
