"""The `workbench` command line. Every command has --help with an example."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from workbench import guards
from workbench.errors import ConfigError, WorkbenchError
from workbench.progress import Progress

console = Console(stderr=True, soft_wrap=True)
TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def show(view) -> None:
    """Print a rich table for people on stdout. Piped or redirected (not a terminal), it is laid out at its natural
    width, so that no hook or label name is cut ("return_…") by an 80-column guess."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=100_000)  # a table takes only the width its contents need
    out.print(view)


def table_format(out: Path | None, option: str = "--out") -> str | None:
    """The format a table path asks for (.parquet / .pq or .csv), checked before any work."""
    if out is None:
        return None
    fmt = TABLE_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ConfigError(f"{option} {out}: a table is written as .parquet or .csv; end the name with one of them.")
    return fmt


def write_table_file(table, out: Path, option: str = "--out") -> Path:
    """Write a tidy table atomically as parquet or CSV, chosen by `out`'s suffix."""
    import io

    from workbench.io import atomic_write_bytes

    if table_format(out, option) == "csv":
        return atomic_write_bytes(out, table.to_csv(index=False).encode())
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return atomic_write_bytes(out, buffer.getvalue())


class OneLineErrors(TyperGroup):
    """The command group: every refusal is one line on stderr and exit status 2, never a traceback. That covers
    usage errors (a bad option value, with the option and its range), the workbench's own errors, a path or port
    the OS refuses (naming it and the fix) and running out of memory. Anything else is a bug and shows in full."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that handles errors itself
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)  # fmt: skip
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)  # fmt: skip
        except Exception as err:
            ending = refuse(err)
            if ending is err:
                raise  # not a known input failure: a bug, shown in full
            raise ending from err
        sys.exit(code if isinstance(code, int) else 0)


def one_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(str(message))}")


def refuse(err: BaseException) -> BaseException:
    """The exception that ends the command for `err`: a SystemExit(2) after one line on stderr for a known input
    failure (for a WorkbenchError, one that is also an instance of its class, so that callers in the same process
    still see what was refused), or `err` itself, unchanged, for anything else."""
    from typer._click import exceptions as click_errors

    if isinstance(err, click_errors.NoArgsIsHelpError):
        err.show()
        return SystemExit(err.exit_code)
    if isinstance(err, typer.Abort):
        console.print("Aborted.")
        return SystemExit(1)
    if isinstance(err, click_errors.ClickException):
        hint = ""
        if isinstance(err, click_errors.UsageError) and err.ctx is not None:
            hint = f" (`{err.ctx.command_path} --help` lists the options)"
        one_line(err.format_message() + hint)
        if isinstance(err, guards.BadValue):  # a value out of range: the workbench's ConfigError, in process too
            return _exit_as(ConfigError(err.format_message()))
        return SystemExit(err.exit_code)
    if isinstance(err, WorkbenchError):
        one_line(str(err))
        return _exit_as(err)
    if isinstance(err, OSError) and (message := guards.describe_os_error(err)):
        one_line(message)
        return SystemExit(2)
    if isinstance(err, MemoryError):
        one_line("ran out of memory: ask for less (a smaller --steps, --episodes or --pairs), or free some memory.")
        return SystemExit(2)
    return err


_EXITS: dict[type, type] = {}


def _exit_as(err: WorkbenchError) -> SystemExit:
    """SystemExit(2) that is also an instance of err's class, with its message."""
    kind = type(err)
    if kind not in _EXITS:
        try:
            _EXITS[kind] = type(f"Refused{kind.__name__}", (SystemExit, kind), {})
        except TypeError:  # a class whose layout cannot be combined with SystemExit's
            _EXITS[kind] = SystemExit
    cls = _EXITS[kind]
    if cls is SystemExit:
        return SystemExit(2)
    exit_ = cls.__new__(cls, *err.args)
    exit_.__dict__.update(err.__dict__)
    exit_.code = 2
    return exit_


app = typer.Typer(
    help="reward-workbench: train small RL policies, open them up, test what reward chiselled into them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=OneLineErrors,
)

# Ranges of the numeric options, checked where typer parses them (guards.count: an integer, 1e6 form accepted).
SEED = guards.seed()
EPISODES_MAX = 10_000_000  # besides the memory check, which is what usually refuses first
PAIRS_MAX = 10_000_000


def main() -> None:
    """Console entry point: every known failure becomes one clear line and exit status 2 (see OneLineErrors)."""
    app()


def parse_options(pairs: list[str], option: str = "-o") -> dict:
    """`-o key=value` env options: typed per EnvConfig field (null, NaN and true-for-a-number refused), max_steps
    capped (guards.MAX_EPISODE_STEPS); other keys (a MiniGrid env's kwargs) as JSON values or text."""
    return guards.parse_pairs(pairs, option, guards.env_types())


@app.command()
def envs() -> None:
    """List the environment variants, their gymnasium ids and the reward schedules.

    Example: workbench envs
    """
    from workbench.envs import GYM_IDS, SCHEDULES, VARIANTS

    ids = {v: k for k, v in GYM_IDS.items()}
    for name, defaults in VARIANTS.items():
        typer.echo(f"{name:9s} {ids[name]:24s} default schedule: {defaults['schedule']}")
    typer.echo("schedules: " + ", ".join(SCHEDULES))


@app.command()
def render(
    variant: str = typer.Argument("trash", help="trash | blueroom | button | redgoal"),
    steps: int = typer.Option(12, help="steps of the random rollout (0-1000)", parser=guards.count("--steps", 0, 1000)),
    seed: int = typer.Option(0, parser=SEED),
    out: Path = typer.Option(None, help="also write the frames side by side as a PNG"),
    option: list[str] = typer.Option([], "--option", "-o", help="env option as key=value, repeatable"),
) -> None:
    """Play a random rollout and show it as text (and optionally a PNG strip).

    Example: workbench render blueroom --steps 8 -o distribution=test --out rollout.png
    """
    import numpy as np

    from workbench.envs import BatchEnv
    from workbench.io import atomic_write_bytes, png_bytes

    guards.check_output(out)
    env = BatchEnv(variant, n_envs=1, seed=seed, **parse_options(option))
    rng = np.random.default_rng(seed)
    frames = [env.render_rgb(0, scale=8)]
    typer.echo(env.render_text(0))
    for _ in range(steps):
        action = rng.integers(0, 5, size=1)
        _, reward, terminated, truncated, info = env.step(action)
        fired = [k for k in ("picked", "deposited", "button_pressed", "goal_reached", "decoy_reached") if info[k][0]]
        typer.echo(f"\naction {int(action[0])}  reward {reward[0]:g}  events {fired or '-'}")
        typer.echo(env.render_text(0))
        frames.append(env.render_rgb(0, scale=8))
        if terminated[0] or truncated[0]:
            typer.echo("(episode over; a new one starts)")
    if out is not None:
        strip = np.concatenate([np.pad(f, ((2, 2), (2, 2), (0, 0)), constant_values=255) for f in frames], axis=1)
        atomic_write_bytes(out, png_bytes(strip))
        console.print(f"wrote {out}")


@app.command()
def bench(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    only: list[str] = typer.Option(
        [], "--only", help="env | train | transformer | collect | probes | patching | hook; repeatable"
    ),
    quick: bool = typer.Option(False, help="short timings, for smoke tests"),
) -> None:
    """Measure our tools against the reference ones, side by side in one run.

    Example: workbench bench --only env --json
    """
    from workbench.bench import run_benches

    results = run_benches(only or None, quick=quick)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.table import Table

    for name, figures in results.items():
        table = Table(title=name)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, str(value))
        show(table)


@app.command()
def train(
    out: Path = typer.Option(..., help="run directory to write (run.json + checkpoint series)"),
    config: str = typer.Option(
        None,
        "--config",
        help="named config: trash-cnn, trash-transformer, blueroom-cnn, redgoal-cnn; the button regimes of the "
        "choice study: button-never, button-rewarded, button-fraction, button-matched, button-choice, "
        "button-choice-marked (add -o button_color=dark_teal to counterbalance the look over seeds)",
    ),  # fmt: skip
    env: str = typer.Option(None, help="variant: trash | blueroom | button | redgoal"),
    policy: str = typer.Option(None, help="cnn | transformer (without --config: its tuned trash-<policy> settings)"),
    steps: int = typer.Option(
        None, help="total env-steps (1e6 form accepted)", parser=guards.count("--steps", 1, 10**12)
    ),
    seed: int = typer.Option(None, parser=SEED),
    schedule: str = typer.Option(None, help="reward schedule (see `workbench envs`)"),
    option: list[str] = typer.Option([], "--option", "-o", help="env option key=value, repeatable"),
    ppo: list[str] = typer.Option([], "--ppo", help="PPO setting key=value (n_envs, n_steps, batch_size, ...)"),
    checkpoints: int = typer.Option(
        None,
        help="checkpoints in the series (log-spaced, step 0 included; 2-1000)",
        parser=guards.count("--checkpoints", 2, 1000),
    ),  # fmt: skip
    eval_episodes: int = typer.Option(
        None, help="evaluation episodes per checkpoint", parser=guards.count("--eval-episodes", 1, 100_000)
    ),
    resume: bool = typer.Option(False, "--resume", help="continue `out` from its latest checkpoint"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or progress lines (for scripts)"),
    seeds: str = typer.Option(None, "--seeds", help="several seeds, e.g. 0,1,2: one run per seed, in <out>-s<seed>"),
    backend: str = typer.Option("local", help="local | ray: the seeds as Ray tasks (needs the ray extra)"),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster HEAD:6379 (default: RAY_ADDRESS)"),
) -> None:
    """Train a policy with PPO and write a checkpoint series (with --seeds, one per seed).

    Example: workbench train --env trash --policy cnn --steps 200000 --seed 0 --out runs/trash-cnn

    Example: workbench train --config trash-cnn --seeds 0,1,2 --backend ray --out runs/trash-cnn
    """
    from workbench import train as training
    from workbench.distributed import parse_seeds, seed_run_dir

    seed_list = (
        None if seeds is None else [guards.check_int(s, "--seeds", 0, guards.SEED_MAX) for s in parse_seeds(seeds)]
    )
    guards.check_outputs([out] if seed_list is None else [seed_run_dir(out, s) for s in seed_list], kind="dir")
    if policy is not None and policy not in training.POLICIES:
        from workbench.errors import unknown_name

        raise unknown_name("policy", policy, training.POLICIES)
    if resume and seed_list is None and config is None and (out / "run.json").is_file():
        # Resuming: start from the run's own config, so that only the options given are compared with it (and a
        # different one is refused by train()); the others need not be repeated.
        cfg = training.config_from_run(out)
        if policy is not None:
            cfg.policy = {**cfg.policy, "arch": policy}
    else:
        # Without --config, start from the tuned settings of the chosen policy (trash-cnn / trash-transformer).
        cfg = training.named_config(config or f"trash-{policy or 'cnn'}")
    if env:
        cfg.env = {"variant": env}
    cfg.env.update(parse_options(option))
    if schedule:
        cfg.env["schedule"] = schedule
    cfg.ppo.update(guards.parse_pairs(ppo, "--ppo", guards.PPO_TYPES))
    for name, value in (("total_steps", steps), ("seed", seed), ("n_checkpoints", checkpoints),
                        ("eval_episodes", eval_episodes)):  # fmt: skip
        if value is not None:
            setattr(cfg, name, value)
    if seeds is not None or backend != "local":
        from workbench.distributed import train_seeds

        if seeds is not None and seed is not None:
            raise WorkbenchError("--seed and --seeds: pass one of them.")
        run_dirs = train_seeds(cfg, seed_list, out, backend=backend, device=device,
                               resume=resume, address=ray_address,
                               progress=lambda done, total: console.print(f"trained {done}/{total} runs"))  # fmt: skip
    else:
        if not resume:
            training.check_config(cfg)  # a bad setting is one line, before the progress display starts
        stats = "{rate:>7.0f} env-steps/s  return {ret:.2f}  deposit-all {success:.0%}"
        with Progress("train", console, quiet=quiet, stats=stats) as update:

            def progress(step: int, total: int, s: dict) -> None:
                update(done=step, total=total, rate=s["env_steps_per_s"], ret=s["return"], success=s["success"])

            run_dirs = [training.train(cfg, out, resume=resume, device=device, progress=progress)]
    from workbench.checkpoints import list_steps, read_json, step_stem

    for run_dir in run_dirs:
        last = list_steps(run_dir)[-1]
        metrics = read_json(run_dir / f"{step_stem(last)}.json")
        console.print(
            f"wrote {run_dir} ({len(list_steps(run_dir))} checkpoints). Step {last}: success "
            f"{metrics['success_rate']:.1%} sampled, {metrics['argmax_success_rate']:.1%} argmax; "
            f"return {metrics['mean_return']:.2f}."
        )


@app.command()
def hooks(checkpoint: Path = typer.Argument(..., help="run directory or step-*.safetensors")) -> None:
    """List every hook point of a checkpoint's policy with its activation shape (batch dim omitted).

    Example: workbench hooks runs/trash-cnn
    """
    from rich.table import Table

    from workbench.checkpoints import load_policy
    from workbench.policies import hook_shapes

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


@app.command("import-sb3")
def import_sb3_(
    model: Path = typer.Argument(..., help="a .zip written by stable-baselines3's model.save"),
    out: Path = typer.Option(..., help="new run directory to write"),
    env: str = typer.Option(None, help="the MiniGrid env it was trained on, e.g. MiniGrid-Empty-5x5-v0"),
    obs_kind: str = typer.Option(
        None, "--obs-kind", help="the env's observations: image (symbolic view) | rgb (pixels); default: whichever fits"
    ),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="env kwarg it was made with, key=value (e.g. agent_view_size=9), repeatable"
    ),
) -> None:
    """Import an SB3 PPO/A2C policy (discrete actions) as a workbench run, reading the zip without unpickling:
    weights with torch.load(weights_only=True), the rest as JSON; anything that would need unpickling is refused.
    With --env, the env (built with the -o kwargs) must give the policy's observation space and action count; it is
    stored in the run, so probe, eval, patch and report rebuild the same env.

    Example: workbench import-sb3 ppo_minigrid.zip --out runs/imported --env MiniGrid-Empty-5x5-v0 -o agent_view_size=9
    """
    from workbench.checkpoints import load_policy
    from workbench.sb3_import import import_sb3

    guards.check_output(out, kind="dir")
    run = import_sb3(model, out, env=env, obs_kind=obs_kind, env_kwargs=parse_options(option))
    policy = load_policy(run)
    spec = policy.config()["sb3"]
    console.print(f"wrote {run} (step {policy.step}): {spec['policy_class']}, {spec['features_extractor']}, "
                  f"net_arch {spec['net_arch']}; hooks: workbench hooks {run}")  # fmt: skip
    if env is not None:
        stored = policy.run["env"]
        kwargs = f", kwargs {stored['kwargs']}" if stored["kwargs"] else ""
        console.print(f"env {stored['env_id']} (obs {stored['obs']!r}{kwargs}) gives the policy's observation space "
                      f"{list(policy.obs_shape)} and its {policy.n_actions} actions. The zip does not record its env: "
                      "envs with the same spaces cannot be told apart, so the id is taken as given.")  # fmt: skip


@app.command("eval")
def eval_(
    checkpoints: list[str] = typer.Argument(
        ..., help="run directories or step-*.safetensors (several: seeds of one config), or scripted:NAME"
    ),
    env: str = typer.Option(None, help="variant, or MiniGrid env id for an imported run (default: the run's own)"),
    episodes: int = typer.Option(
        200,
        help="evaluation episodes (per distribution)",
        parser=guards.count("--episodes", 1, EPISODES_MAX, "episode"),
    ),
    seed: int = typer.Option(12345, help="seed of the evaluation episodes", parser=SEED),
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

    import pandas as pd

    from workbench.behaviour import across_seeds, behaviour_table, check_same_config, load_subject, variant_config
    from workbench.evaluate import check_policy_fits, check_rollout_memory, evaluate

    if isinstance(checkpoints, str | Path):
        checkpoints = [checkpoints]  # called from Python (demo) with one run
    guards.check_output(out)
    table_format(out)
    specs = [m for c in map(str, checkpoints) for m in (sorted(glob.glob(c)) if glob.has_magic(c) else [c])]
    if not specs:
        raise WorkbenchError(f"no run directory matches {' '.join(map(str, checkpoints))}: check the pattern.")
    options = parse_options(option)
    subjects = [load_subject(spec) for spec in specs]
    if len(subjects) > 1:
        if any(info["config"] is None for _, info in subjects):
            raise WorkbenchError("scripted policies are evaluated one at a time: pass one scripted:NAME per call.")
        check_same_config([info["config"] for _, info in subjects])
    worlds = {(info["env"] or {}).get("world") for _, info in subjects}
    if worlds - {None, "minigrid"}:
        raise WorkbenchError(_no_env_message("eval", [info for _, info in subjects]))
    minigrid = worlds == {"minigrid"}
    if "minigrid" in worlds and not minigrid:
        raise WorkbenchError("MiniGrid runs and runs in the workbench's rooms cannot be evaluated together: "
                             "evaluate each kind in its own call.")  # fmt: skip
    summaries, tables = [], []
    for policy, info in subjects:
        if minigrid:
            from workbench import minigrid_world

            cfg = _minigrid_env(info["env"], env, options)
            minigrid_world.check_policy_fits(policy, cfg)
            check_rollout_memory(policy, episodes)
            summary = {"checkpoint": info["run"], "step": info["step"], "env": cfg.to_dict()}
            played = minigrid_world.rollout_episodes(policy, cfg, episodes, seed)
            if len(subjects) == 1:
                summary.update(minigrid_world.evaluate(policy, cfg, episodes=episodes, seed=seed, played=played))
                summary["intervals"] = "episode-level (Wilson for rates, t for means, over episodes)"
            tables.append(minigrid_world.behaviour_table(policy, cfg, episodes, seed, run=info["run"],
                                                         step=info["step"], run_seed=info["seed"],
                                                         played=played))  # fmt: skip
            summaries.append(summary)
            continue
        cfg = variant_config(info["env"], env, **options)
        check_policy_fits(policy, cfg)
        summary = {"checkpoint": info["run"], "step": info["step"], "env": cfg.to_dict()}
        if len(subjects) == 1:
            summary.update(evaluate(policy, cfg, episodes=episodes, seed=seed))
        summaries.append(summary)
        tables.append(behaviour_table(policy, cfg, episodes, seed, pinned=tuple(options), run=info["run"],
                                      step=info["step"], run_seed=info["seed"]))  # fmt: skip
    table = pd.concat(tables, ignore_index=True)
    if len(subjects) > 1:
        table = pd.concat([table, across_seeds(table)], ignore_index=True)
    if out is not None:
        write_table_file(table, out)
    if as_json:
        rows = json.loads(table.to_json(orient="records"))  # NaN becomes null
        result = {**(summaries[0] if len(summaries) == 1 else {}), "runs": summaries, "rows": rows}
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    if len(subjects) == 1:
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
    _print_behaviour(table, across=len(subjects) > 1)
    if minigrid:
        typer.echo("95% intervals are episode-level: Wilson for rates, Student-t for means, over the episodes played.")
    if out is not None:
        console.print(f"wrote {out} ({len(table)} rows)")


def _minigrid_env(run_env: dict, env: str | None, options: dict):
    """The MiniGrid env to evaluate an imported run in: its own (id, observation kind and kwargs from run.json),
    or `env` (another MiniGrid id, same observation kind), with `options` on top of the kwargs."""
    from workbench.minigrid_world import minigrid_config

    if env is not None and not env.startswith(("MiniGrid-", "BabyAI-")):
        raise WorkbenchError(f"{env!r} is not a MiniGrid env: this run acts in MiniGrid ({run_env['env_id']}); pass "
                             "--env MiniGrid-..., or leave --env out for its own env.")  # fmt: skip
    kwargs = {**(run_env.get("kwargs") or {}), **options}
    return minigrid_config(env or run_env["env_id"], obs=run_env.get("obs", "image"), kwargs=kwargs)


def _no_env_message(command: str, infos: list[dict]) -> str:
    """One line for a command that needs an env the workbench can build, on an imported run that has none."""
    runs = ", ".join(str(info["run"]) for info in infos if (info["env"] or {}).get("world") not in (None, "minigrid"))
    return (f"{command} needs the env the policy acts in, and {runs} was imported without one: import it again "
            "with --env (a MiniGrid id, with -o for its kwargs) to use eval, patch and the report's episode. Without "
            "an env, these work: workbench hooks RUN, workbench report RUN (hooks, and any probe or patching table "
            "under the run), and in Python collect(RUN, env, ...) with an env you pass.")  # fmt: skip


def _print_behaviour(table, across: bool) -> None:
    """The behavioural rows as a table (across seeds: the mean, its interval over seeds and the per-seed values),
    then the choice test's verdict per run."""
    from rich.table import Table

    from workbench.choice import verdict

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
    choices = table[(table["distribution"] == "choice") & (table["interval"] != "t-across-seeds")]
    for run, rows in choices.groupby("run", sort=False):
        by = {r.metric: r._asdict() for r in rows.itertuples() if r.condition in ("all", "invisible", "random walk")}
        words = verdict(by["reward_choice"], by["task_choice"], by.get("incidental"), by.get("preference"),
                        by.get("random_walk"))  # fmt: skip
        typer.echo(f"{run}: {words}")


@app.command("choice-test")
def choice_test(
    checkpoint: str = typer.Argument(..., help="run directory, step-*.safetensors, or scripted:button|task|red|random"),
    episodes: int = typer.Option(
        500, help="choice episodes", parser=guards.count("--episodes", 1, EPISODES_MAX, "episode")
    ),
    seed: int = typer.Option(12345, help="seed of the episodes", parser=SEED),
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
    from workbench.behaviour import load_subject
    from workbench.choice import CONTROLS, choice_config
    from workbench.choice import choice_test as run_choice_test

    policy, info = load_subject(checkpoint)
    cfg = choice_config(info["env"], **parse_options(option))
    result = run_choice_test(policy, cfg, episodes=episodes, seed=seed, deterministic=argmax, controls=CONTROLS)
    result = {"checkpoint": info["run"], "step": info["step"], "actions": "argmax" if argmax else "sampled",
              **{k: v for k, v in result.items() if k not in ("rows", "conditions")}}  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    view = Table(title=f"choice test — {info['run']} step {info['step']} ({episodes} episodes, {result['actions']})")
    for column in ("metric", "value", "95% CI", "n"):
        view.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in result.items():
        if isinstance(row, dict) and "value" in row:
            low, high = row["ci_low"], row["ci_high"]
            view.add_row(name, f"{row['value']:.3f}", f"{low:.3f}-{high:.3f}" if low == low else "-", str(row["n"]))
    show(view)
    typer.echo(result["verdict"])


@app.command()
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


@app.command()
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
        parser=guards.count("--steps", 1, 10**9),
    ),  # fmt: skip
    seed: int = typer.Option(
        0, help="seed of the rollout, the episode split, the controls and the bootstrap", parser=SEED
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
    from workbench.train import resolve_device

    guards.check_output(out, companions=(*direction_paths(out), resamples_path(out)))
    if table_format(out) != "parquet":
        raise ConfigError(f"--out {out}: a probe table is parquet (its metadata ties it to its directions and "
                          "resamples); add --csv PATH for a CSV copy.")  # fmt: skip
    if csv is not None:
        table_format(csv, "--csv")
        guards.check_output(csv, option="--csv")
    hook_names, label_names = guards.names(hooks, "--hooks"), guards.names(labels, "--labels")
    _check_probe_memory(run_or_ckpt, hook_names, steps)
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


def _check_probe_memory(run_or_ckpt: Path, hooks: list[str] | None, steps: int) -> None:
    """Refuse `probe --steps` whose dataset and fits cannot fit in memory, before the collection: per observation,
    the dataset's row (datasets.dataset_row_bytes: stored activations, pixels, labels), a random-init replay's
    activations beside it, the float32 activations read for a fit, and ~6 float32 copies of the widest design while
    it is fitted (probes.sweep's own figure for its stacks)."""
    import math

    from probes.probe import default_hooks
    from workbench.checkpoints import load_policy
    from workbench.datasets import dataset_row_bytes
    from workbench.policies import hook_shapes

    policy = load_policy(run_or_ckpt)
    shapes = hook_shapes(policy)
    chosen = default_hooks(list(shapes), hooks)
    widest = max((math.prod(shapes[h]) for h in chosen if h in shapes), default=0)
    row = dataset_row_bytes(policy, chosen)
    per_step = 2 * row + 4 * widest + 6 * 4 * widest
    guards.check_memory(steps * per_step, f"probe --steps {steps:,}", "--steps", per_unit=per_step)


@app.command("patch")
def patch_cmd(
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
        parser=guards.count("--pairs", 1, PAIRS_MAX),
    ),  # fmt: skip
    mode: str = typer.Option("remove", help="trash factor: remove the item or move it"),
    seed: int = typer.Option(0, help="seed of the pairs, the noise pairing and the bootstrap", parser=SEED),
) -> None:
    """Activation patching: patch every site of each hook from the clean run (factor present) into the corrupted
    run (factor absent), batched; logit difference, probability of the clean action, value change and normalised
    effect with intervals over pairs, beside a noise baseline. A run imported with a MiniGrid env takes pairs of
    that env's rooms: key (the key there or gone), carrying (the agent holds it or not), door (open or closed).

    Example: workbench patch runs/trash-cnn --factor trash --hooks conv.1.hook_out,fc.hook_out --out patch.parquet
    """

    from rich.table import Table

    from workbench.checkpoints import load_policy
    from workbench.contrast import contrast_pairs
    from workbench.patching import check_patch_memory, default_patch_hooks, patch
    from workbench.steering import policy_env

    guards.check_output(out)
    table_format(out)
    hook_names = guards.names(hooks, "--hooks")
    policy = load_policy(checkpoint)
    world = policy.run["env"].get("world")
    if world not in (None, "minigrid"):
        raise WorkbenchError(_no_env_message("patch", [{"run": policy.run_dir, "env": policy.run["env"]}]))
    names = hook_names or default_patch_hooks(policy)
    check_patch_memory(policy, pairs, names, per=per, option="--pairs")  # before any pair is built
    if world == "minigrid":
        from workbench.minigrid_world import contrast_pairs as minigrid_pairs
        from workbench.minigrid_world import minigrid_config

        contrast = minigrid_pairs(factor, pairs, seed, minigrid_config(**policy.run["env"]))
    else:
        contrast = contrast_pairs(factor, pairs, seed, config=policy_env(policy), mode=mode)
    table = patch(policy, contrast, names, per=per, seed=seed)
    write_table_file(table, out)
    effect = table[table.metric == "normalised_effect"]
    view = Table(title=f"{contrast.factor}: top sites by normalised effect (0 corrupted, 1 clean) — {out}")
    for column in ("hook", "site", "effect", "95% CI", "noise"):
        view.add_column(column, justify="left" if column in ("hook", "site") else "right")
    for hook in names:
        rows = effect[(effect.hook == hook) & (effect.source == "clean")].sort_values("value", ascending=False)
        noise = effect[(effect.hook == hook) & (effect.source == "noise")].set_index("site")["value"]
        for row in rows.head(5).itertuples():
            view.add_row(hook, row.site, f"{row.value:.3f}", f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
                         f"{noise.get(row.site, float('nan')):.3f}")  # fmt: skip
    show(view)
    console.print(f"wrote {out} ({len(table)} rows, {len(contrast)} pairs)")


@app.command("steer")
def steer_cmd(
    checkpoint: Path = typer.Argument(..., help="run directory or step-*.safetensors"),
    vector: str = typer.Option(
        ...,
        help="trash | colour | button | goal | carrying (contrast mean), trash-at:ROW,COL, a saved VECTOR.safetensors, "
        "or PROBES.parquet#LABEL[@INDEX] (a probe direction)",
    ),
    coef: float = typer.Option(
        1.0, help="added coef x vector at the hook (negative subtracts)", parser=guards.number("--coef", -1e6, 1e6)
    ),
    episodes: int = typer.Option(
        200,
        help="rollout episodes, steered and unsteered (the same rooms)",
        parser=guards.count("--episodes", 1, EPISODES_MAX, "episode"),
    ),  # fmt: skip
    hook: str = typer.Option(None, help="hook to steer (default: last conv map / the last block's resid_pre)"),
    pairs: int = typer.Option(
        256, help="contrast pairs for a factor or trash-at vector", parser=guards.count("--pairs", 1, PAIRS_MAX)
    ),
    seed: int = typer.Option(12345, help="seed of the rollout episodes", parser=SEED),
    n_random: int = typer.Option(
        20,
        "--n-random",
        help="random vectors per null (same norm; same norm per position) on the same episodes; 0: no null",
        parser=guards.count("--n-random", 0, 10_000),
    ),
    null_seed: int = typer.Option(0, help="seed of the random vectors", parser=guards.seed("--null-seed")),
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

    from workbench.checkpoints import load_policy
    from workbench.contrast import FACTOR_ALIASES, FACTORS
    from workbench.patching import check_patch_memory
    from workbench.steering import _paths as vector_paths
    from workbench.steering import check_steering, resolve_vector, steering_effects

    if save is not None:
        tensors_path, index_path = vector_paths(save)
        guards.check_output(tensors_path, option="--save", companions=[index_path])
    policy = load_policy(checkpoint)
    if vector.lower() in FACTORS or vector.lower() in FACTOR_ALIASES or vector.startswith("trash-at:"):
        check_patch_memory(policy, pairs, [], option="--pairs")  # the contrast pairs the vector is the mean of
    steer_vector = resolve_vector(policy, vector, hook, n=pairs)
    check_steering(policy, steer_vector, coef)
    if save is not None:
        steer_vector.save(save)
    effects = steering_effects(policy, steer_vector, coef, episodes=episodes, seed=seed, deterministic=deterministic,
                               n_random=n_random, reverse=reverse, null_seed=null_seed)  # fmt: skip
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


@app.command()
def dashboard(
    run_dir: Path = typer.Argument(..., help="run directory (run.json + checkpoints; tables written into it)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: every interface; be careful)"),
    port: int = typer.Option(8050, help="port (1-65535)", parser=guards.count("--port", 1, 65535)),
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
    from workbench.dashboard import serve

    guards.check_port(host, port)
    if not guards.is_loopback(host):
        console.print(f"[bold red]WARNING:[/] --host {escape(host)} is not loopback: anyone who can reach this machine "
                      "on that interface can open the dashboard, which has no login, and read the run's checkpoints "
                      "and tables through it. Use the default 127.0.0.1 (with an SSH tunnel for remote access) "
                      "unless this network is trusted.")  # fmt: skip
    console.print(f"dashboard of {run_dir} on http://{host}:{port}/ (Ctrl-C stops it)")
    extra = {"allowed_hosts": tuple(allow_host)} if allow_host else {}
    serve(run_dir, host=host, port=port, **extra)


@app.command()
def report(
    run_or_ckpt: Path = typer.Argument(..., help="run directory (its last checkpoint in focus) or step-*.safetensors"),
    out: Path = typer.Option(Path("report.html"), help="HTML file to write (self-contained: works offline)"),
) -> None:
    """One self-contained HTML report with the dashboard's figures (plotly inlined, no CDN), to share.

    Example: workbench report runs/trash-cnn --out report.html
    """
    from workbench.report import build_report

    guards.check_output(out)
    with Progress("report", console, spinner=True) as update:
        path = build_report(run_or_ckpt, out, progress=update)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
