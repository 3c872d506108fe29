"""The `workbench` command: each command parses its options, calls the library and prints the result.

`app` (the typer app) and `main` (the console entry point) live in `workbench.cli.main`; the commands in modules
by theme beside it (its docstring lists them).
"""

import importlib

__all__ = ["app", "main"]


def __getattr__(name: str):
    """`app` and `main`, imported from workbench.cli.main on first use, so that `python -m workbench.cli.main`
    runs that module without this package having imported it first (runpy warns on stderr when it has)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module("workbench.cli.main")
    globals().update(app=module.app, main=module.main)  # `main` the function, not the submodule of that name
    return globals()[name]
