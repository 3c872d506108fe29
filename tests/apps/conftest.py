"""What the dashboard and the report tests share: a copy of the session's tiny run with every kind of results table
written into it (`run_dir`), the same checkpoints without any (`bare_run`), and the headless-browser helpers that
the modules import from here. Screenshots and callback latencies go to tests/artifacts/ (git-ignored).

Browser tests need Debian's chromium and chromium-driver: they skip without them, except under CI=true, where a
missing browser is a failure."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PROBE_LABELS = ["carrying", "trash_map", "reward", "target_dist"]


# ---------------------------------------------------------------------------------------------- runs
def build_run(source: Path, run_dir: Path) -> Path:
    """Copy a run and write every kind of results table into the copy (once per pytest session)."""
    from workbench.apps.data import one_torch_thread

    shutil.copytree(source, run_dir)
    with one_torch_thread():  # tiny batches on a shared machine: ~10x faster on one thread
        return _write_results(run_dir)


def _write_results(run_dir: Path) -> Path:
    import probes
    from workbench.behaviour import behaviour_table, variant_config
    from workbench.common.io import atomic_write_bytes
    from workbench.envs.contrast import contrast_pairs
    from workbench.interventions.patching import patch
    from workbench.interventions.steering import policy_env
    from workbench.training.checkpoints import list_steps, load_policy, step_stem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        probes.probe_sweep(run_dir, hooks=["conv.1.hook_out", "fc.hook_out"], labels=PROBE_LABELS, n_steps=1200,
                           n_boot=30, out=run_dir / "probes.parquet")  # fmt: skip

    def write(table: pd.DataFrame, name: str) -> None:
        import io

        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        atomic_write_bytes(run_dir / name, buffer.getvalue())

    steps = list_steps(run_dir)
    last = load_policy(run_dir)
    pairs = contrast_pairs("trash", 24, 0, config=policy_env(last))
    write(patch(last, pairs, ["conv.1.hook_out", "fc.hook_out"], n_boot=50), "patch.parquet")
    tables = []
    for step in steps[1:]:
        policy = load_policy(run_dir / f"{step_stem(step)}.safetensors")
        tables.append(behaviour_table(policy, variant_config(policy.run["env"]), 16, run=str(run_dir), step=step))
    choice = variant_config(last.run["env"], "button", choice_prob=1.0)
    tables.append(behaviour_table(last, choice, 16, pinned=("choice_prob",), run=str(run_dir), step=steps[-1]))
    write(pd.concat(tables, ignore_index=True), "results/behaviour.parquet")
    return run_dir


@pytest.fixture(scope="session")
def run_dir(request, tmp_path_factory) -> Path:
    """The session's tiny run (a copy: results are written into it) with a probe table, a patching table and
    behaviour tables; WORKBENCH_DASHBOARD_RUN=checkpoints/trash-cnn-s0 takes that run instead (latency on real
    checkpoints)."""
    source = os.environ.get("WORKBENCH_DASHBOARD_RUN") or request.getfixturevalue("tiny_run")
    return build_run(Path(source), tmp_path_factory.mktemp("dashboard") / "run")


@pytest.fixture(scope="session")
def bare_run(run_dir, tmp_path_factory) -> Path:
    """The same checkpoints without any results tables."""
    bare = tmp_path_factory.mktemp("dashboard-bare") / "run"
    bare.mkdir()
    for path in run_dir.glob("step-*"):
        if not path.name.endswith(".train.safetensors"):
            shutil.copy(path, bare / path.name)
    shutil.copy(run_dir / "run.json", bare / "run.json")
    return bare


# ---------------------------------------------------------------------------------------------- the browser
def need_browser():
    """(chromium, chromedriver) paths; skip without them, fail under CI=true."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if chromium and driver:
        return chromium, driver
    message = "headless Chromium tests need `apt-get install chromium chromium-driver` and selenium (extra dashboard)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: not skipped)")
    pytest.skip(message)


def make_browser(width: int = 1400, height: int = 1100):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = need_browser()
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def console_errors(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(browser, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))
