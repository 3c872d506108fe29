"""The tutorial notebooks (notebooks/*.ipynb): each executes top to bottom without an error, and every notebook in the
repository is committed with its outputs stripped.

The slow test runs each notebook with nbclient in a kernel of this interpreter (a kernelspec written to a temporary
JUPYTER_PATH, so a `python3` kernel installed elsewhere is never picked up), with the repository root as the working
directory."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell; each notebook takes about a minute on 2 cores
SKIP_DIRS = {"node_modules", "__pycache__", "build", "demo-out"}


def _repo_notebooks() -> list[Path]:
    """Every .ipynb in the repository, skipping hidden folders (.git, .venv), virtual environments and build output."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIP_DIRS and not (Path(folder, d) / "pyvenv.cfg").exists()
        ]
        found += [Path(folder, f) for f in files if f.endswith(".ipynb")]
    return sorted(found)


def test_the_tutorial_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    assert len(names) >= 5, names
    assert names[0].startswith("01_") and all(name[:2].isdigit() for name in names), names


def test_every_notebook_is_committed_with_outputs_stripped():
    notebooks = _repo_notebooks()
    assert set(NOTEBOOKS) <= set(notebooks)
    dirty = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            if cell.get("outputs") or cell.get("execution_count") is not None:
                dirty.append(f"{path.relative_to(ROOT)} cell {i}")
    assert not dirty, (
        "notebooks with outputs or execution counts (strip them, e.g. `jupyter nbconvert --clear-output --inplace "
        f"NOTEBOOK`): {', '.join(dirty)}"
    )


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> Iterator[str]:
    """A kernelspec named python3 that runs this interpreter, found first through JUPYTER_PATH."""
    name = "python3"
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python 3 ({sys.executable})",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(spec_dir.parents[1]), before]))
    yield name
    if before is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = before


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_name):
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    assert KernelSpecManager().get_kernel_spec(kernel_name).argv[0] == sys.executable
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name, allow_errors=False, resources={"metadata": {"path": ROOT}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
