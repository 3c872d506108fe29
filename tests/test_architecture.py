"""The layout: imports run one way (the import-linter contracts hold), `workbench report` needs no dash, and every
module that moved still imports under its old name as the same module."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import workbench

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "checkpoints" / "trash-cnn-s0"


def test_the_import_contracts_hold():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_the_layers_contract_names_every_package():
    """A package missing from the layers list would escape the contract."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    listed = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"workbench.{p.name}" for p in (ROOT / "workbench").iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"probes", "analysis"} == listed


def test_report_and_the_cli_work_without_dash(tmp_path):
    """`dash` made unimportable: the report is still written (the dashboard extra is for the dashboard only)."""
    code = (
        "import sys; sys.modules['dash'] = None\n"
        "from workbench.cli.main import main\n"
        f"sys.argv = ['workbench', 'report', {str(RUN)!r}, '--out', {str(tmp_path / 'report.html')!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "plotly" in html.lower() and "Activations of step" in html


def test_the_dashboard_says_it_needs_dash():
    code = "import sys; sys.modules['dash'] = None\nimport workbench.apps.dashboard\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "dash" in done.stderr


@pytest.mark.parametrize(("old", "new"), sorted(workbench.MOVED.items()))
def test_moved_modules_import_under_their_old_names(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_import_lines_still_work():
    from workbench.checkpoints import load_policy  # noqa: F401
    from workbench.patching import patch_sweep  # noqa: F401
    from workbench.steering import steering_effects  # noqa: F401
    from workbench.train import TrainConfig, named_config  # noqa: F401

    from workbench.behaviour import behaviour_table, load_subject, scripted_policy  # noqa: F401
