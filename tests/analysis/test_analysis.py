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
from workbench.cli.main import app
from workbench.common.errors import CheckpointError
from workbench.training.checkpoints import list_steps, load_policy

ROOT = Path(__file__).resolve().parents[2]
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
    e1_rows = summary[summary.experiment.str.startswith("E1")]  # pooled over seeds (--quick: 2 CNN, 1 transformer)
    assert {"trash-cnn (2 seeds)", "trash-transformer (1 seeds)"} <= set(e1_rows.policy)
    assert {"E1 probes", "E1 conditional probes", "E1 steering"} <= set(e1_rows.experiment)
    gap = pd.read_parquet(tmp_path / "e1_gap.parquet")
    assert set(gap.policy) == {"trash-cnn-s0", "trash-cnn-s1", "trash-transformer-s0"}
    assert gap.ci_low.notna().all() and (gap.ci_low < gap.ci_high).all()  # every per-seed gap has its interval
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


def test_e1_pools_seeds_with_a_t_interval_and_chooses_conditional_hooks_on_validation():
    from analysis import e1_trash

    pooled = e1_trash.pool([0.1, 0.2, 0.3, 0.2, 0.2], [0.05, -0.1, 0.2, 0.1, 0.01], [0.2, 0.3, 0.4, 0.3, 0.3])
    assert pooled["n_seeds"] == 5 and pooled["mean"] == pytest.approx(0.2)
    half = 2.776445 * 0.0707107 / 5**0.5  # t(4) quantile x sd / sqrt(n)
    assert [pooled["ci_low"], pooled["ci_high"]] == pytest.approx([0.2 - half, 0.2 + half], rel=1e-3)
    assert (pooled["n_above_zero"], pooled["n_below_zero"]) == (4, 0)
    one = e1_trash.pool([0.3], [0.1], [0.5])
    assert one["ci_low"] != one["ci_low"] and "one seed" in e1_trash.seed_text(one)
    # hook b has the best test gain but the worst validation gain: the choice is a, never chosen on test
    table = pd.DataFrame({"policy": ["p"] * 3, "label": ["reward_within_k"] * 3, "hook": ["a", "b", "c"],
                          "probe": ["logistic"] * 3, "metric": ["info_gain"] * 3, "val_given": [0.5] * 3,
                          "val_value": [0.6, 0.4, 0.55], "given_value": [0.5] * 3, "value": [0.52, 0.9, 0.5],
                          "gain": [0.02, 0.4, 0.0], "gain_ci_low": [0.0, 0.3, -0.1],
                          "gain_ci_high": [0.04, 0.5, 0.1]})  # fmt: skip
    chosen = e1_trash.chosen_conditional(table)
    assert list(chosen.hook) == ["a"] and chosen.gain.iloc[0] == pytest.approx(0.02)


def test_e1_steering_pools_per_seed_effects_and_counts_the_seeds_beyond_every_null():
    from analysis import e1_trash

    def seed(steered, p_norm, sign_specific):
        return {"trash deposit_rate": {"metric": "deposit_rate", "unit": "rate", "coef": -3.0, "baseline": 0.9,
                                       "steered": steered, "ci": [steered - 0.95, steered - 0.85],
                                       "reversed_coef": 3.0, "reversed_steered": 0.88, "reversed_ci": [-0.05, 0.01],
                                       "sign_specific": sign_specific,
                                       "null": {"norm": {"n": 20, "p_value": p_norm},
                                                "profile": {"n": 20, "p_value": 0.048}}}}  # fmt: skip

    pooled = e1_trash._pool_steering({"s0": seed(0.5, 0.048, True), "s1": seed(0.7, 0.3, False),
                                      "s2": seed(0.6, 0.048, False)})  # fmt: skip
    entry = pooled["trash deposit_rate"]
    assert entry["difference"]["mean"] == pytest.approx(-0.3) and entry["difference"]["n_below_zero"] == 3
    assert (entry["n_outside_nulls"], entry["n_sign_specific"]) == (2, 1)
    (line,) = e1_trash._steering_findings(pooled)
    assert "-30.0" in line and "in 2 of 3 seeds" in line and "inside a null in 1 of 3 seeds" in line
    assert "Only 3 seed(s)" in line  # fewer seeds than a claim about the recipe needs, said in the finding
