"""Reproduce every bundled checkpoint series: `python checkpoints/make.py` (or `--only NAME ...`, `--out DIR`).

Each series is a named training config (`workbench train --config NAME`, see workbench/training/config.py) at one seed,
with the bundled policy size (CNN fc 64 instead of 128, so that every series fits the size budget), 10 log-spaced
checkpoints from step 0 (the choice study's extra seeds: step 0 and the final step only), then compacted for shipping
(`workbench.training.checkpoints.compact_run`: weights stored as float16, resume state dropped). The choice study's
seeds alternate the button's look (`workbench.behaviour.choice.STUDY_LOOKS`, by seed parity). Training is deterministic
given the seed on one machine type; across machines and library versions PPO drifts, so a rebuilt series matches the
bundled one in behaviour, not bit for bit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_CHECKPOINTS = 10
BUNDLED_CNN = {"arch": "cnn", "channels": [16, 16], "hidden": 64}
# The choice study (E3): ten seeds per button regime, the button's look counterbalanced over seeds.
STUDY_REGIMES = ("button-never", "button-rewarded", "button-matched", "button-choice", "button-choice-marked")
STUDY_SEEDS = range(10)
# series name → (named config, seed); series of the study's extra seeds keep step 0 and their final step
SERIES = {
    "trash-cnn-s0": ("trash-cnn", 0),
    "trash-cnn-s1": ("trash-cnn", 1),
    "trash-cnn-s2": ("trash-cnn", 2),
    "blueroom-cnn-s0": ("blueroom-cnn", 0),
    "redgoal-cnn-s0": ("redgoal-cnn", 0),
    "trash-transformer-s0": ("trash-transformer", 0),
    **{f"{regime}-s{seed}": (regime, seed) for regime in STUDY_REGIMES for seed in STUDY_SEEDS},
    # More seeds for E1, E2 and E4: final checkpoints (and step 0), the counterbalanced E2 regime (green walls iff
    # trash) over five seeds, and two more transformer seeds for E1.
    **{f"trash-cnn-s{seed}": ("trash-cnn", seed) for seed in (3, 4)},
    **{f"blueroom-cnn-s{seed}": ("blueroom-cnn", seed) for seed in (1, 2, 3, 4)},
    **{f"redgoal-cnn-s{seed}": ("redgoal-cnn", seed) for seed in (1, 2, 3, 4)},
    **{f"blueroom-green-cnn-s{seed}": ("blueroom-green-cnn", seed) for seed in range(5)},
    **{f"trash-transformer-s{seed}": ("trash-transformer", seed) for seed in (1, 2)},
}
# Series that keep only step 0, the first update and the final step (the size budget): the extra seeds.
FINALS_ONLY = {
    name for name, (config, seed) in SERIES.items()
    if (seed > 0 or config == "blueroom-green-cnn") and not config.startswith("button-")
} - {"trash-cnn-s1", "trash-cnn-s2"}  # fmt: skip
# The series E5 traces (the chiseling tracer): denser checkpoints, so that each stretch between two is shorter. 18
# asks for 16 distinct steps at 500k, a superset of the 10-checkpoint schedule's steps (so earlier figures stand).
TRACED = {"trash-cnn-s0", "trash-cnn-s1", "trash-cnn-s2"}
N_TRACED = 18
# Full series (10 checkpoints) for seed 0 of each regime and the first three never-seen seeds (made before the study
# grew); the other seeds keep step 0 (the step-0 control) and the final step.
FULL_SERIES = {"button-never-s1", "button-never-s2", *(f"{regime}-s0" for regime in STUDY_REGIMES)}


def series_config(name: str):
    from workbench.training.config import named_config

    config_name, seed = SERIES[name]
    config = named_config(config_name)
    study = config_name in STUDY_REGIMES
    config.seed = seed
    config.n_checkpoints = 2 if (study and name not in FULL_SERIES) or name in FINALS_ONLY else N_CHECKPOINTS
    if name in TRACED:
        config.n_checkpoints = N_TRACED
    from workbench.behaviour.choice import STUDY_LOOKS  # seed % 2 picks the look

    if study:
        config.env["button_color"] = STUDY_LOOKS[seed % 2]
    if config.policy["arch"] == "cnn":
        config.policy = dict(BUNDLED_CNN)
    return config


def make(names: list[str], out: Path = HERE, device: str = "cpu") -> dict[str, int]:
    """Train and compact each series into out/<name>; returns bytes per series.

    One torch thread: the series are reproducible only at a fixed thread count (float sums change order), and on a
    busy 2-core machine two threads per process spin against each other (measured: a training that took 28 s
    alone took 700 s beside two others; at one thread each, ~40 s)."""
    import torch

    from workbench.training.checkpoints import compact_run
    from workbench.training.ppo import train

    torch.set_num_threads(1)
    sizes = {}
    for name in names:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        start = time.perf_counter()
        train(series_config(name), target, device=device, progress=None)
        sizes[name] = compact_run(target)
        print(f"{name}: {time.perf_counter() - start:.0f} s, {sizes[name] / 1e6:.2f} MB", flush=True)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SERIES), help="series to make (default: all)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the series (default: checkpoints/)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    sizes = make(args.only or list(SERIES), args.out, args.device)
    print(f"total {sum(sizes.values()) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
