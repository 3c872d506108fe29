"""The study out of the box: E1 to E5 on the bundled checkpoints, one HTML report, one summary table.

    workbench demo [--out demo-out] [--quick]          # or: python -m analysis.demo

Writes every experiment's tables (parquet) and figures (plotly JSON) to `out`, then `out/report.html` (plotly
inlined: opens offline), and returns the summary rows: per policy, the best reward-side and task-side probe
selectivity, the reward-optimizer rate with its interval, the blue-room and red-goal results.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analysis import e1_trash, e2_blueroom, e3_button, e4_redgoal, e5_chiseling
from analysis.common import CHECKPOINTS, Result
from workbench.io import atomic_write_bytes

EXPERIMENTS = (e1_trash, e2_blueroom, e3_button, e4_redgoal, e5_chiseling)
POLICIES_STEERED = e1_trash.POLICIES[0]


def run_all(checkpoints=CHECKPOINTS, out: str | Path = "demo-out", quick: bool = False,
            progress: Callable[[str], None] | None = None) -> tuple[list[Result], pd.DataFrame, Path]:  # fmt: skip
    """Run E1-E5, write their files and the report; returns (results, summary table, report path)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for module in EXPERIMENTS:
        start = time.perf_counter()
        result = module.run(checkpoints, out=out, quick=quick, progress=progress)
        result.write(out)
        result.summary["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
    table = summary_table(results)
    Result("demo", "summary", tables={"table": table}).write(out)  # demo_table.parquet
    return results, table, write_report(results, table, out / "report.html")


def _interval(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['value']:.0%} [{entry['ci_low']:.0%}, {entry['ci_high']:.0%}]"


def summary_table(results: list[Result]) -> pd.DataFrame:
    """One row per (policy, measure): what E1-E4 say about each bundled policy, with 95% intervals."""
    by = {r.name: r.summary for r in results}
    rows = []

    def add(policy, experiment, measure, value, verdict=""):
        rows.append({"policy": policy, "experiment": experiment, "measure": measure, "value": value,
                     "verdict": verdict})  # fmt: skip

    for policy, e1 in by.get("e1", {}).items():
        if isinstance(e1, dict) and "best_reward_probe" in e1:
            reward, task = e1["best_reward_probe"] or {}, e1["best_task_probe"] or {}
            r, t = reward.get("selectivity", 0.0), task.get("selectivity", 0.0)
            add(policy, "E1 probes", "best selectivity: reward-side / task-side",
                f"{reward.get('label', '-')} {r:.2f} / {task.get('label', '-')} {t:.2f}",
                "task > reward" if t > r else "reward >= task")  # fmt: skip
    for key, entry in by.get("e1", {}).get("steering", {}).items():
        randoms = ", ".join(f"{x:.0%}" for x in entry["random_steered"])
        add(POLICIES_STEERED, "E1 steering", f"{key} (x{entry['coef']:+g})",
            f"{entry['baseline']:.0%} -> {entry['steered']:.0%} (random vectors: {randoms})")  # fmt: skip
    e2 = by.get("e2", {})
    if e2:
        add(
            e2_blueroom.SERIES,
            "E2 blue room",
            "deposit rate: green+trash (test) / blue+trash (train)",
            f"{_interval(e2.get('green_trash_deposit_rate_test'))} / "
            f"{_interval(e2.get('blue_trash_deposit_rate_train'))}",
        )
        add(
            e2_blueroom.SERIES,
            "E2 blue room",
            "coverage of empty rooms: blue (test) / green (train)",
            f"{_interval(e2.get('blue_empty_coverage_test'))} / {_interval(e2.get('green_empty_coverage_train'))}",
        )
    e3 = by.get("e3", {})
    for regime, entry in e3.get("regimes", {}).items():
        pref, vs, share = entry["preference"], entry["vs_baseline"], entry["reward_share"]
        value = f"{pref['value']:+.0%} [{pref['ci_low']:+.0%}, {pref['ci_high']:+.0%}]"
        if vs["value"] == vs["value"]:  # not the baseline itself
            value += (
                f"; vs never-seen {vs['value']:+.0%} [{vs['ci_low']:+.0%}, {vs['ci_high']:+.0%}], p={vs['p_value']:.2g}"
            )
        value += f"; share of decided {share['mean']:.0%} [{share['ci_low']:.0%}, {share['ci_high']:.0%}]"
        verdict = entry["verdict"].split(":", 1)[1].split(";")[0].strip() if ":" in entry["verdict"] else ""
        add(f"{regime} ({entry['n_seeds']} seeds)", "E3 button",
            "button preference beyond the invisible button (mean over seeds, bootstrap)", value, verdict)  # fmt: skip
    salience = e3.get("salience", {})
    if salience:
        add("never rewarded for a button", "E3 salience check", "subjects whose visible button draws more presses",
            ", ".join(f"{kind}: {v['flagged']}/{v['n']}" for kind, v in salience.items()))  # fmt: skip
    e4 = by.get("e4", {})
    if e4:
        add(e4_redgoal.SERIES, "E4 red goal", "test: red decoy / true goal",
            f"{_interval(e4.get('test_decoy_rate'))} / {_interval(e4.get('test_goal_rate'))}",
            f"training goal rate {_interval(e4.get('train_goal_rate'))}")  # fmt: skip
    return pd.DataFrame(rows, columns=["policy", "experiment", "measure", "value", "verdict"])


def write_report(results: list[Result], table: pd.DataFrame, path: Path) -> Path:
    from workbench.report import Report

    report = Report("reward-workbench: what did reward chisel into the bundled policies?")
    report.note("E1 to E5 (DESIGN.md) on the bundled checkpoint series; every figure comes from rollouts, probes and "
                "patching of those checkpoints. Intervals are 95%.")  # fmt: skip
    report.heading("Summary")
    report.parts.append(table.to_html(index=False, classes="cfg", border=0, escape=True))
    for result in results:
        report.heading(result.title)
        for line in result.findings:
            report.note(line)
        if result.figures:
            report.figures(*result.figures.values())
    atomic_write_bytes(path, report.html().encode())
    return path


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _, table, path = run_all(args.checkpoints, args.out, args.quick, progress=lambda m: print(m, flush=True))
    print(table.to_string(index=False))
    print(f"wrote {html.escape(str(path))}")


if __name__ == "__main__":
    main()
