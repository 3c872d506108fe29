"""The command line: each command runs, prints what it promises, and turns bad input into one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli.main import app

runner = CliRunner()
ROOT = Path(__file__).parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess (exit codes and stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "workbench.cli.main", *args], capture_output=True, text=True, cwd=ROOT)


def test_the_package_runs_as_a_module_with_one_clean_stderr():
    """`python -m workbench.cli` is the `workbench` command, without runpy's warning about the package."""
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "envs"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "Workbench/TrashGrid-v0" in done.stdout and done.stderr == ""


def test_envs_lists_variants_and_schedules():
    result = runner.invoke(app, ["envs"])
    assert result.exit_code == 0
    for word in ("Workbench/TrashGrid-v0", "Workbench/RedGoal-v0", "blue-room", "on-deposit", "none"):
        assert word in result.output


def test_render_writes_a_png(tmp_path):
    out = tmp_path / "strip.png"
    result = runner.invoke(app, ["render", "blueroom", "--steps", "3", "-o", "distribution=test", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.output.count("walls:") == 4


def test_bench_env_quick_json():
    result = runner.invoke(app, ["bench", "--only", "env", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["env"]
    assert figures["batched_env_steps_per_s"] > 0 and figures["minigrid_empty_8x8_single_env_steps_per_s"] > 0
    assert figures["ratio_batched_vs_minigrid"] == pytest.approx(
        figures["batched_env_steps_per_s"] / figures["minigrid_empty_8x8_single_env_steps_per_s"], rel=0.01
    )


def test_hooks_and_eval_on_a_run(tiny_run):
    result = runner.invoke(app, ["hooks", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "conv.0.hook_out" in result.output and "hook_logits" in result.output
    result = runner.invoke(app, ["eval", str(tiny_run), "--episodes", "6", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["episodes"] == 6 and 0.0 <= metrics["success_rate"] <= 1.0 and metrics["step"] == 512


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "trahs"], "Did you mean 'trash'"),
        (["render", "trash", "-o", "room_size"], "not key=value"),
        (["render", "trash", "-o", "room_size=40"], "room_size=40"),
        (["train", "--out", "/tmp/never-written", "--config", "nope"], "unknown training config"),
        (["hooks", "/nonexistent/run"], "does not exist"),
        (["bench", "--only", "envv"], "Did you mean 'env'"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_eval_refuses_a_room_size_the_policy_cannot_read(tiny_run):
    result = run_cli("eval", str(tiny_run), "-o", "room_size=7", "--episodes", "2")
    assert result.returncode == 2 and "room_size" in result.stderr and "Traceback" not in result.stderr


def test_bench_collect_and_probes_quick_json():
    result = runner.invoke(app, ["bench", "--only", "collect", "--only", "probes", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    cnn = figures["collect"]["cnn"]
    assert cnn["n_obs"] == 20_000 and cnn["obs_per_s"] > 0 and cnn["disk_bytes"] > 0 and cnn["hooks"] >= 4
    probes = figures["probes"]["D=64"]
    assert probes["ours_s"] > 0 and probes["speedup"] == pytest.approx(probes["sklearn_grid_s"] / probes["ours_s"], 0.1)
    assert probes["max_metric_diff_points"] < 5  # same probes, same held-out metric


def test_piped_tables_keep_whole_names_and_tables_write_as_parquet_or_csv(tiny_run, tmp_path):
    import pandas as pd

    # stdout is a pipe here: no name may be cut to an 80-column guess ("blocks.1.attn.hook_patt…")
    hooks = run_cli("hooks", str(ROOT / "checkpoints" / "trash-transformer-s0"))
    assert hooks.returncode == 0, hooks.stderr
    assert "blocks.1.attn.hook_pattern" in hooks.stdout and "…" not in hooks.stdout
    csv = tmp_path / "behaviour.csv"
    result = runner.invoke(app, ["eval", str(tiny_run), "--episodes", "4", "--out", str(csv)])
    assert result.exit_code == 0, result.output
    assert {"metric", "value"} <= set(pd.read_csv(csv).columns)
    result = runner.invoke(app, ["probe", str(tiny_run), "--steps", "300", "--hooks", "fc.hook_out", "--labels",
                                 "carrying,reward", "--out", str(tmp_path / "p.parquet"), "--csv",
                                 str(tmp_path / "p.csv"), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_parquet(tmp_path / "p.parquet"))
    for args in (["eval", str(tiny_run), "--out", str(tmp_path / "b.xlsx")],
                 ["probe", str(tiny_run), "--out", str(tmp_path / "p.csv")]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and (".parquet or .csv" in result.output or "a probe table is parquet" in
                                          result.output), result.output  # fmt: skip
