"""The study out of the box: the bundled checkpoint series, the experiment scripts and `workbench demo`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis import e4_redgoal
from analysis.common import CHECKPOINTS
from workbench.checkpoints import list_steps, load_policy
from workbench.cli import app
from workbench.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKPOINTS))
from make import FINALS_ONLY, FULL_SERIES, SERIES  # noqa: E402  (the recipe of every bundled series)


def test_bundled_series_are_complete_small_and_load():
    total = sum(p.stat().st_size for p in CHECKPOINTS.rglob("*") if p.is_file())
    assert total <= 60e6, f"bundled checkpoints take {total / 1e6:.1f} MB (budget 60 MB)"
    for name in SERIES:
        steps = list_steps(CHECKPOINTS / name)
        full = name in FULL_SERIES or not (name.startswith("button-") or name in FINALS_ONLY)
        assert (len(steps) >= 10 if full else len(steps) >= 2) and steps[0] == 0, name
        policy = load_policy(CHECKPOINTS / name)
        assert policy.step == steps[-1] and not list((CHECKPOINTS / name).glob("*.train.safetensors"))
    for name in ("trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2"):
        final = list_steps(CHECKPOINTS / name)[-1]
        trained = json.loads((CHECKPOINTS / name / f"step-{final:09d}.json").read_text())
        assert trained["success_rate"] >= 0.9, name  # the bundled TrashGrid CNNs solve their task


@pytest.mark.slow  # the whole study end to end: ~5 minutes on 2 cores
def test_demo_runs_the_study_and_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.html").read_text()
    for title in ("E1 trash", "E2 blue room", "E3 reward button", "E4 red goal", "E5 chiseling"):
        assert title in report
    assert report.count('class="figure"') >= 6 and "<script src=" not in report  # plotly inlined: works offline
    for name in (
        "e1_probes",
        "e1_patching",
        "e1_steering",
        "e2_behaviour",
        "e2_seeds",
        "e3_seeds",
        "e3_regimes",
        "e3_conditions",
        "e4_behaviour",
        "e5_stretches",
    ):
        assert len(pd.read_parquet(tmp_path / f"{name}.parquet")) > 0, name
    summary = pd.read_parquet(tmp_path / "demo_table.parquet")
    filled = json.loads((tmp_path / "demo_summary.json").read_text())
    assert len(filled["summary"]["table"]) == len(summary) and {"e1", "e2", "e3", "e4", "e5"} <= set(filled["summary"])
    assert filled["findings"] and all(
        line.split(":")[0] in {"e1", "e2", "e3", "e4", "e5"} for line in filled["findings"]
    )
    for policy in ("trash-cnn-s0", "trash-transformer-s0"):
        assert policy in set(summary.policy)
    for regime in ("blueroom-cnn (", "trash-cnn (", "redgoal-cnn ("):  # E2 and E4 over seeds (--quick: at most 2)
        assert any(p.startswith(regime) and p.endswith(" seeds)") for p in summary.policy), regime
    assert "report.html" in result.output
    e3 = json.loads((tmp_path / "e3_summary.json").read_text())["summary"]
    regimes = pd.read_parquet(tmp_path / "e3_regimes.parquet")
    assert set(regimes.regime) == set(e3["regimes"]) and (regimes.n_seeds == 3).all()  # --quick: three seeds each
    for regime, entry in e3["regimes"].items():  # every verdict stands beside its interval, seeds and baseline
        assert f"({entry['n_seeds']} seeds)" in entry["verdict"] and "seeds" in entry["verdict"]
        pref = entry["preference"]
        assert pref["ci_low"] <= pref["value"] <= pref["ci_high"]
        assert (regime == "button-never") == (entry["vs_baseline"]["value"] != entry["vs_baseline"]["value"])
        assert any(f"{regime} (3 seeds)" == p for p in summary.policy)
    seeds = pd.read_parquet(tmp_path / "e3_seeds.parquet")
    assert {"trained", "step 0", "trash-only", "random walk"} <= set(seeds.kind)
    assert (seeds[seeds.kind == "random walk"].preference == 0).all()  # it ignores pixels: no look has a pull
    assert set(e3["salience"]) >= {"never seen", "step 0", "trash-only", "random walk"}
    steering = pd.read_parquet(tmp_path / "e1_steering.parquet")
    assert set(steering.kind) == {"factor", "random"} and steering.steered.between(0, 100).all()
    e5 = pd.read_parquet(tmp_path / "e5_stretches.parquet")
    assert len(e5.drop_duplicates(["start", "end"])) == len(list_steps(CHECKPOINTS / "trash-cnn-s0")) - 1
    assert set(e5.series) == {"trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2"}  # E5 combines three seeds
    assert (e5.reward_events >= 0).all() and e5.d_push_kl.notna().all() and e5.d_selectivity.notna().all()
    assert ((e5.reward_rate - e5.reward_events / e5.env_steps).abs() < 1e-12).all()  # a rate, never a raw count
    assert set(e5.reward_events_source) == {"logged"}  # the bundled series carry what training received


def test_scripts_run_as_files_and_name_missing_series(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "e4_redgoal.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(out / "e4_behaviour.parquet")
    assert {"goal_rate", "decoy_rate"} <= set(table.metric)
    assert {"train", "test", "cyan-only", "red-pair"} == set(table.distribution)
    seeds = pd.read_parquet(out / "e4_seeds.parquet")
    assert {"trained", "step 0", "random walk"} == set(seeds.kind) and seeds.decoy_share.between(0, 1).all()
    with pytest.raises(CheckpointError, match="checkpoints/make.py --only redgoal-cnn-s0"):
        e4_redgoal.run(tmp_path / "empty")
