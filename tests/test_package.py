"""The package outside the repository: `import workbench` registers the gymnasium ids, and a built wheel (not the
editable checkout) installs into a fresh venv and runs the quick demo from a temporary directory, finding the
bundled series through WORKBENCH_CHECKPOINTS, and naming that setting when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_workbench_registers_the_gymnasium_ids(tmp_path):
    code = ("import gymnasium as gym, workbench\n"
            "for gym_id in ('Workbench/TrashGrid-v0', 'Workbench/BlueRoom-v0', 'Workbench/Button-v0', "
            "'Workbench/RedGoal-v0'):\n"
            "    env = gym.make(gym_id)\n"
            "    assert env.reset(seed=0)[0].shape == env.observation_space.shape, gym_id\n"
            "print('ok')\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)  # a fresh one
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow  # builds a wheel and runs the quick demo from it: ~5 minutes on 2 cores
def test_a_built_wheel_runs_the_quick_demo_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("reward_workbench-*.whl")
    # A fresh venv holding the wheel (not the editable checkout); its dependencies are read from this venv's
    # site-packages through a .pth line, which adds the folder but not its .pth files (so not the editable finder).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WORKBENCH_CHECKPOINTS")}
    code = "import workbench, analysis; print(workbench.__file__, analysis.__file__)"
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=workdir, env=env)
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout and str(env_dir) in where.stdout  # the installed copy, not the checkout
    cli = env_dir / "bin" / "workbench"
    absent = subprocess.run([str(cli), "demo", "--quick", "--out", "demo-out"], capture_output=True, text=True,
                            cwd=workdir, env=env)  # fmt: skip
    assert absent.returncode == 2 and "WORKBENCH_CHECKPOINTS" in absent.stderr, absent.stderr
    done = subprocess.run([str(cli), "demo", "--quick", "--out", "demo-out"], capture_output=True, text=True,
                          cwd=workdir, env={**env, "WORKBENCH_CHECKPOINTS": str(ROOT / "checkpoints")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "demo-out" / "report.html").is_file() and (workdir / "demo-out" / "demo_table.parquet").is_file()


def test_the_docs_check_finds_a_stale_reference():
    import types

    sys.path.insert(0, str(ROOT / "docs"))
    from build_api import broken_references, resolves

    assert resolves("workbench.training.checkpoints.load_policy") and resolves("probes.gap")
    assert not resolves("workbench.training.checkpoints.load_polcy") and not resolves("probes.nothing_here")
    module = types.ModuleType("stale")
    module.__doc__ = (
        "See `workbench.interventions.steering.steering_effects` and `probes.fit_prob`; files like `probes.parquet`."
    )

    def documented():
        """Calls `workbench.nowhere.thing()`."""

    documented.__module__ = "stale"
    module.documented = documented
    assert broken_references([module]) == ["stale: `probes.fit_prob` does not resolve",
                                           "stale.documented: `workbench.nowhere.thing` does not resolve"]  # fmt: skip
