"""The `workbench` command line: the typer `app`, its entry point `main()`, and the error handling every command
shares. Every command has --help with an example.

The commands live in modules by theme; each parses its options, calls the library and prints the result:

    inspection.py      envs, render, hooks
    train.py           train (its options made from TrainConfig's fields), import-sb3
    behaviour.py       eval, choice-test
    probe.py           probe
    interventions.py   patch, steer
    apps.py            bench, demo, dashboard, report

`output.py` holds what they print and write (the console, `show` for tables, table files) and `parsers.py` the
option parsers. Commands are registered here, in the order `workbench --help` lists them.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from typer.core import TyperGroup

from workbench.cli import apps, behaviour, inspection, interventions, parsers, probe, train
from workbench.cli.output import console
from workbench.common import guards
from workbench.common.errors import ConfigError, WorkbenchError


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
        if isinstance(err, parsers.BadValue):  # a value out of range: the workbench's ConfigError, in process too
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

# Every command by its name, in the order `workbench --help` lists them.
COMMANDS = {
    "envs": inspection.envs,
    "render": inspection.render,
    "train": train.train,
    "hooks": inspection.hooks,
    "import-sb3": train.import_sb3,
    "eval": behaviour.eval_,
    "choice-test": behaviour.choice_test,
    "demo": apps.demo,
    "probe": probe.probe,
    "patch": interventions.patch,
    "steer": interventions.steer,
    "dashboard": apps.dashboard,
    "report": apps.report,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
app.add_typer(apps.bench_app, name="bench")  # a group: `workbench bench` runs them all, `workbench bench NAME` one


def main() -> None:
    """Console entry point: every known failure becomes one clear line and exit status 2 (see OneLineErrors)."""
    app()


if __name__ == "__main__":
    main()
