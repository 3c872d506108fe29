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
from workbench.apps.report import Report
from workbench.common.compute import one_torch_thread
from workbench.common.io import atomic_write_bytes

EXPERIMENTS = (e1_trash, e2_blueroom, e3_button, e4_redgoal, e5_chiseling)


def run_all(checkpoints=CHECKPOINTS, out: str | Path = "demo-out", quick: bool = False,
            progress: Callable[[str], None] | None = None) -> tuple[list[Result], pd.DataFrame, Path]:  # fmt: skip
    """Run E1-E5, write their files and the report; returns (results, summary table, report path)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for module in EXPERIMENTS:
        start = time.perf_counter()
        with one_torch_thread():  # rollouts of small batches: a second thread only waits on a busy machine
            result = module.run(checkpoints, out=out, quick=quick, progress=progress)
        result.write(out)
        result.summary["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
    table = summary_table(results)
    # demo_table.parquet, and demo_summary.json: the table's rows and every experiment's summary and findings
    Result("demo", "summary", tables={"table": table},
           summary={"table": table.to_dict("records"), **{r.name: r.summary for r in results}},
           findings=[f"{r.name}: {line}" for r in results for line in r.findings]).write(out)  # fmt: skip
    return results, table, write_report(results, table, out / "report.html")


def _interval(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['value']:.0%} [{entry['ci_low']:.0%}, {entry['ci_high']:.0%}]"


def _finding_verdict(
    caveat: str, entry: dict, positive: str = "task-side > reward-side", negative: str = "reward-side > task-side"
) -> str:
    """The verdict a seed-level interval allows: shown when the interval excludes 0, else none; with fewer seeds
    than a claim about the recipe needs, says so."""
    if entry["ci_low"] == entry["ci_low"] and entry["ci_low"] > 0:
        verdict = f"{positive} (interval over seeds above 0)"
    elif entry["ci_high"] == entry["ci_high"] and entry["ci_high"] < 0:
        verdict = f"{negative} (interval over seeds below 0)"
    else:
        verdict = "not shown (the interval over seeds holds 0)"
    return verdict + (f"; {caveat.strip()}" if caveat else "")


def summary_table(results: list[Result]) -> pd.DataFrame:
    """One row per (policy, measure): what E1-E4 say about each bundled policy, with 95% intervals."""
    by = {r.name: r.summary for r in results}
    rows = []

    def add(policy, experiment, measure, value, verdict=""):
        rows.append({"policy": policy, "experiment": experiment, "measure": measure, "value": value,
                     "verdict": verdict})  # fmt: skip

    e1 = by.get("e1", {})
    for arch, pooled in e1.get("pooled", {}).items():
        n, sel = len(pooled["seeds"]), pooled["selectivity_gap"]
        who = f"{arch} ({n} seeds)"
        add(who, "E1 probes", "best task-side minus best reward-side selectivity, info_gain (mean over seeds, t)",
            e1_trash.seed_text(sel) + f"; per-seed intervals above 0: {sel['n_above_zero']}/{n}",
            _finding_verdict(e1_trash.seeds_caveat(n), sel))  # fmt: skip
        for label, gain in pooled["beyond_task"].items():
            add(who, "E1 conditional probes", f"{label}: what activations add beyond the task labels (info_gain)",
                e1_trash.seed_text(gain) + f"; from the task labels alone {gain['given_value']:.3f}",
                _finding_verdict(e1_trash.seeds_caveat(n), gain, "information beyond the task labels",
                                 "below the task labels alone: the joint probe overfits"))  # fmt: skip
    for key, entry in e1.get("steering_pooled", {}).items():
        n = len(entry["seeds"])
        scale, unit = (1.0, " steps") if entry["unit"] == "steps" else (100.0, " points")
        value = (f"{e1_trash.seed_text(entry['difference'], scale, unit, 1)}; at x{entry['reversed_coef']:+g} "
                 f"{e1_trash.seed_text(entry['reversed_difference'], scale, unit, 1)}")  # fmt: skip
        verdict = (f"outside the nulls in {entry['n_outside_nulls']}/{n} seeds, sign-specific in "
                   f"{entry['n_sign_specific']}/{n}")  # fmt: skip
        add(f"trash-cnn ({n} seeds)", "E1 steering", f"{key} (x{entry['coef']:+g}), change (mean over seeds, t)",
            value, verdict)  # fmt: skip
    e2 = by.get("e2", {})
    for regime, entry in e2.get("regimes", {}).items():
        gap = entry.get("deposit_gap")
        if not gap:
            continue
        value = f"{gap['value']:+.0%} [{gap['ci_low']:+.0%}, {gap['ci_high']:+.0%}]"
        if gap["vs_grey"] == gap["vs_grey"]:
            value += f"; vs grey walls {gap['vs_grey']:+.0%} [{gap['vs_low']:+.0%}, {gap['vs_high']:+.0%}]"
        add(f"{regime} ({entry['n_seeds']} seeds)", "E2 blue room",
            "deposit rate, blue minus green rooms with trash (mean over seeds, bootstrap)", value)  # fmt: skip
    effect = e2.get("trained_colour_effect")
    if effect:
        add(f"blue- vs green-trained ({effect['n_blue']} + {effect['n_green']} seeds)", "E2 blue room",
            "the trained colour's effect on deposits (counterbalanced: wall colour's own pull cancels)",
            f"{effect['value']:+.0%} [{effect['ci_low']:+.0%}, {effect['ci_high']:+.0%}], "
            f"p={effect['p_value']:.2g}")  # fmt: skip
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
    if e4.get("decoy_share"):
        share = e4["decoy_share"]
        add(f"redgoal-cnn ({e4['n_seeds']} seeds)", "E4 red goal",
            "test: the red decoy's share of decided episodes (mean over seeds, bootstrap)",
            f"{_interval(share)}; random walk {share['random_walk']:.0%}, step 0 {share['step0_mean']:.0%}",
            f"training goal rate {_interval(e4.get('train_goal'))}")  # fmt: skip
    return pd.DataFrame(rows, columns=["policy", "experiment", "measure", "value", "verdict"])


def write_report(results: list[Result], table: pd.DataFrame, path: Path) -> Path:
    report = Report("reward-workbench: what did reward chisel into the bundled policies?")
    report.note("E1 to E5 (the README's study section) on the bundled checkpoint series; every figure comes from "
                "rollouts, probes and patching of those checkpoints. Intervals are 95%.")  # fmt: skip
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
