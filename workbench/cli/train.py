"""Making runs: `workbench train` (PPO, one run or one per seed) and `workbench import-sb3`.

`train`'s options that set the config are not declared here: they are made from the TrainConfig fields'
metadata (`workbench.training.config.field_options`: flag, help, range), and `--config` lists NAMED_CONFIGS, so a
field documented there is an option here. The others (--out, --resume, --seeds, --jobs, ...) say where and how to
train.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from workbench.cli import parsers
from workbench.cli.output import console
from workbench.common import guards
from workbench.common.errors import WorkbenchError
from workbench.common.progress import Progress
from workbench.training.config import NAMED_CONFIGS, FieldOption, field_options

# The key types of the repeatable key=value options, by the dict field they fill (-o: env, --ppo: ppo).
PAIR_TYPES = {"env": parsers.env_types, "ppo": lambda: parsers.PPO_TYPES}


def config_help() -> str:
    """--config's help: the named configs (NAMED_CONFIGS), the button regimes of the choice study apart."""
    regimes = [name for name in NAMED_CONFIGS if name.startswith("button-")]
    others = [name for name in NAMED_CONFIGS if name not in regimes]
    return (f"named config: {', '.join(others)}; the button regimes of the choice study: {', '.join(regimes)} "
            "(add -o button_color=dark_teal to counterbalance the look over seeds)")  # fmt: skip


def field_parameter(option: FieldOption) -> inspect.Parameter:
    """The command parameter of one TrainConfig option: not given (None, or [] for key=value pairs) keeps the
    config's value; an integer option is checked against its range where typer parses it."""
    if option.pairs:
        default, annotation = typer.Option([], *option.flags, help=option.help), list[str]
    elif option.range is not None:
        parser = parsers.count(option.flags[0], *option.range)
        default, annotation = typer.Option(None, *option.flags, help=option.help, parser=parser), int
    else:
        default, annotation = typer.Option(None, *option.flags, help=option.help), option.type
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def train(
    *,
    out: Path = typer.Option(..., help="run directory to write (run.json + checkpoint series)"),
    config: str = typer.Option(None, "--config", help=config_help()),
    resume: bool = typer.Option(False, "--resume", help="continue `out` from its latest checkpoint"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar or progress lines (for scripts)"),
    seeds: str = typer.Option(None, "--seeds", help="several seeds, e.g. 0,1,2: one run per seed, in <out>-s<seed>"),
    backend: str = typer.Option("local", help="local | ray: the seeds as Ray tasks (needs the ray extra)"),
    jobs: str = typer.Option(
        "1",
        "--jobs",
        metavar="N",
        help="with --seeds: this many seeds at once, each in its own process with CPUs/N torch threads (1 to the CPU "
        "count; --backend local)",
    ),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster HEAD:6379 (default: RAY_ADDRESS)"),
    **fields,
) -> None:
    """Train a policy with PPO and write a checkpoint series (with --seeds, one per seed).

    Example: workbench train --env trash --policy cnn --steps 200000 --seed 0 --out runs/trash-cnn

    Example: workbench train --config trash-cnn --seeds 0,1,2 --backend ray --out runs/trash-cnn

    Example: workbench train --config trash-cnn --seeds 0,1,2,3 --jobs 2 --out runs/trash-cnn
    """
    from workbench.training.checkpoints import list_steps, read_json, step_stem
    from workbench.training.config import check_config, train_config
    from workbench.training.seeds import check_jobs, parse_seeds, seed_run_dir

    seed_list = (
        None if seeds is None else [guards.check_int(s, "--seeds", 0, guards.SEED_MAX) for s in parse_seeds(seeds)]
    )
    n_jobs = check_jobs(jobs, backend)
    if n_jobs > 1 and seed_list is None:
        raise WorkbenchError(f"--jobs {n_jobs} without --seeds: --jobs trains several seeds at once; pass --seeds too.")
    guards.check_outputs([out] if seed_list is None else [seed_run_dir(out, s) for s in seed_list], kind="dir")
    for option in field_options():
        if option.pairs:
            fields[option.name] = parsers.parse_pairs(fields[option.name], option.flag, PAIR_TYPES[option.field]())
    # Resuming one run without --config starts from its own config: only the options given are compared with it.
    cfg = train_config(config, resume=out if resume and seed_list is None else None, **fields)
    if seed_list is not None or backend != "local":
        from workbench.training.seeds import train_seeds

        if seed_list is not None and fields["seed"] is not None:
            raise WorkbenchError("--seed and --seeds: pass one of them.")
        run_dirs = train_seeds(cfg, seed_list, out, backend=backend, device=device,
                               resume=resume, address=ray_address, jobs=n_jobs,
                               progress=lambda done, total: console.print(f"trained {done}/{total} runs"))  # fmt: skip
    else:
        from workbench.training.ppo import train as train_run

        if not resume:
            check_config(cfg)  # a bad setting is one line, before the progress display starts
        stats = "{rate:>7.0f} env-steps/s  return {ret:.2f}  deposit-all {success:.0%}"
        with Progress("train", console, quiet=quiet, stats=stats) as update:

            def progress(step: int, total: int, s: dict) -> None:
                update(done=step, total=total, rate=s["env_steps_per_s"], ret=s["return"], success=s["success"])

            run_dirs = [train_run(cfg, out, resume=resume, device=device, progress=progress)]
    for run_dir in run_dirs:
        last = list_steps(run_dir)[-1]
        metrics = read_json(run_dir / f"{step_stem(last)}.json")
        console.print(
            f"wrote {run_dir} ({len(list_steps(run_dir))} checkpoints). Step {last}: success "
            f"{metrics['success_rate']:.1%} sampled, {metrics['argmax_success_rate']:.1%} argmax; "
            f"return {metrics['mean_return']:.2f}."
        )


def _train_signature() -> inspect.Signature:
    """train's own options (--out, --config, then the rest) with the TrainConfig options between them."""
    own = list(inspect.signature(train, eval_str=True).parameters.values())[:-1]  # without **fields
    fields = [field_parameter(option) for option in field_options()]
    return inspect.Signature([*own[:2], *fields, *own[2:]], return_annotation=None)


train.__signature__ = _train_signature()


def import_sb3(
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
    from workbench.training.checkpoints import load_policy
    from workbench.training.sb3_import import import_sb3 as import_model

    guards.check_output(out, kind="dir")
    run = import_model(model, out, env=env, obs_kind=obs_kind, env_kwargs=parsers.parse_options(option))
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
