"""What the experiment scripts share: where the bundled checkpoints are, what a result is, and writing it.

Every script (`e1_trash.py` ... `e5_chiseling.py`) has `run(checkpoints=CHECKPOINTS, out=None, quick=False,
progress=None) -> Result` and a `main()` for `python analysis/<script>.py [--out DIR] [--quick]`. They use only the
workbench's public API (load_policy, collect, probes, contrast pairs, patching, steering, behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import probes
from workbench.common.errors import CheckpointError
from workbench.common.io import atomic_write_bytes, write_parquet

CHECKPOINTS_SETTING = "WORKBENCH_CHECKPOINTS"


def bundled_checkpoints() -> Path:
    """Where the bundled checkpoint series are: the folder named by the WORKBENCH_CHECKPOINTS environment variable,
    else `checkpoints/` of the repository checkout this package runs from. An installed wheel does not carry the
    series (58 MB): point the variable (or `--checkpoints`) at a checkout's `checkpoints/` folder."""
    named = os.environ.get(CHECKPOINTS_SETTING)
    return Path(named).expanduser() if named else Path(__file__).resolve().parent.parent / "checkpoints"


def check_checkpoints(folder: str | Path, name: str | None = None) -> Path:
    """The folder of checkpoint series, or a clear error naming the setting (and the command that makes series
    `name`) when there is none there."""
    folder = Path(folder)
    if not folder.is_dir():
        make = f"python checkpoints/make.py --only {name}" if name else "python checkpoints/make.py"
        raise CheckpointError(
            f"no checkpoint series folder at {folder}: the bundled series ship with the repository checkout "
            f"(its checkpoints/ folder), not with an installed package. Set {CHECKPOINTS_SETTING}=/path/to/"
            f"reward-workbench/checkpoints, or pass --checkpoints DIR (or make the series: `{make}`)."
        )
    return folder


CHECKPOINTS = bundled_checkpoints()
OUT = Path("analysis-out")


@dataclass
class Result:
    """One experiment's outcome: tidy tables, plotly figures, headline numbers and what they mean in words."""

    name: str
    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def write(self, out: str | Path) -> Path:
        """tables as <out>/<name>_<table>.parquet, figures as plotly JSON, summary and findings as JSON."""
        out = Path(out)
        for key, table in self.tables.items():
            write_parquet(out / f"{self.name}_{key}.parquet", table)
        for key, fig in self.figures.items():
            atomic_write_bytes(out / f"{self.name}_{key}.plotly.json", fig.to_json().encode())
        text = json.dumps({"title": self.title, "summary": self.summary, "findings": self.findings}, indent=2,
                          default=float)  # fmt: skip
        atomic_write_bytes(out / f"{self.name}_summary.json", text.encode())
        return out


def series(checkpoints: str | Path, name: str) -> Path:
    """A bundled series' run directory; a clear error naming the command that makes it when it is absent."""
    path = check_checkpoints(checkpoints, name) / name
    if not (path / "run.json").exists():
        raise CheckpointError(
            f"the checkpoint series {name!r} is not in {checkpoints}: make it with "
            f"`python checkpoints/make.py --only {name}` (or point --checkpoints at a folder that has it)."
        )
    return path


def report(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def best_selectivity(table: pd.DataFrame, label_set: str) -> pd.Series | None:
    """The most selective probe of a label set (`probes.summary`'s main metrics: R² for regression, balanced
    accuracy otherwise)."""
    best = probes.summary(table)
    best = best[best.label_set == label_set]
    return None if best.empty else best.loc[best.selectivity.idxmax()]


def main_for(run: Callable[..., Result], argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=(run.__module__ or "").split(".")[-1])
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help="folder of the checkpoint series")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for parquet tables and figures")
    parser.add_argument("--quick", action="store_true", help="fewer rollouts and observations (a smoke run)")
    args = parser.parse_args(argv)
    result = run(args.checkpoints, quick=args.quick, progress=lambda m: print(m, flush=True))
    result.write(args.out)
    print(json.dumps(result.summary, indent=2, default=float))
    for line in result.findings:
        print("-", line)
    print(f"wrote {args.out}/{result.name}_*")
    return result
