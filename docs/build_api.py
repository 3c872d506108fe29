"""Build the API reference (HTML, with pdoc) from the docstrings, and fail on a broken reference.

    python docs/build_api.py [--out build/api]        # or: make docs

The reference covers every module of `workbench` and `probes` (found by walking the packages) and what the two
packages export (their `__all__`). The build fails (exit 1, each problem on a line) when pdoc warns (an
`__all__` name that does not resolve, a docstring it cannot parse) or when a docstring names a dotted
`workbench.*` / `probes.*` / `analysis.*` object in backticks that does not exist, so a renamed function cannot
leave a stale reference behind.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every module of the two packages, found by walking them: a module added, moved or renamed is documented (and its
# docstrings checked) without editing a list here.
PACKAGES = ("workbench", "probes")


def public_modules() -> list[str]:
    import pkgutil

    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


REFERENCE = re.compile(r"`((?:workbench|probes|analysis)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(\))?`")
FILE_SUFFIXES = {"parquet", "safetensors", "json", "csv", "html", "png", "zip"}  # `probes.parquet` names a file


def resolve_lazy_exports() -> None:
    """`workbench.load_policy` and `workbench.hook` are imported on first use (so that `import workbench` stays
    light); the docs resolve them, so that pdoc documents them where `__all__` lists them."""
    import workbench

    for name in workbench.__all__:
        setattr(workbench, name, getattr(workbench, name))


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def broken_references(modules) -> list[str]:
    """Every backticked dotted reference in the modules' docstrings (module, classes, functions, methods) that
    does not resolve, as 'module: `reference`'."""
    problems = []
    for module in modules:
        docs = [(module.__name__, module.__doc__ or "")]
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or not (inspect.isclass(obj) or callable(obj)):
                continue
            docs.append((f"{module.__name__}.{name}", inspect.getdoc(obj) or ""))
            if inspect.isclass(obj):
                docs += [(f"{module.__name__}.{name}.{m}", inspect.getdoc(f) or "") for m, f in vars(obj).items()
                         if callable(f) and not m.startswith("__")]  # fmt: skip
        for where, text in docs:
            refs = [r for r in REFERENCE.findall(text) if r.rsplit(".", 1)[-1] not in FILE_SUFFIXES]
            problems += [f"{where}: `{ref}` does not resolve" for ref in refs if not resolves(ref)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "api")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    import pdoc
    import pdoc.doc
    import pdoc.render

    resolve_lazy_exports()
    names = public_modules()
    modules = [importlib.import_module(name) for name in names]
    problems = broken_references(modules)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="markdown", footer_text="reward-workbench API reference")
        pdoc.pdoc(*PACKAGES, output_directory=args.out)  # each package with all its submodules
    problems += [f"pdoc: {w.message}" for w in caught if "pdoc" in (w.filename or "") or "pdoc" in str(w.category)]
    for line in problems:
        print(line)
    seconds = time.perf_counter() - start
    if problems:
        print(f"API reference: {len(problems)} problem(s); fix the docstrings above ({seconds:.1f} s)")
        return 1
    print(f"API reference: {len(names)} modules written to {args.out}/index.html in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
