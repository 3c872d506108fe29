"""Progress off a terminal: plain lines with what, how far, the time elapsed and left, at most one every few
seconds besides the first and the last; none with quiet."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from workbench.common import progress as progress_module
from workbench.common.errors import ConfigError
from workbench.common.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module, "monotonic", clock)
    monkeypatch.delenv(progress_module.ENV_SECONDS, raising=False)
    return clock


def log_console() -> Console:
    return Console(file=io.StringIO(), width=200)  # a file, not a terminal: as a log or a pipe


def test_lines_say_what_how_far_elapsed_and_left_and_do_not_flood(clock):
    console = log_console()
    with Progress("probe", console) as update:
        update("collect", 0, 10)  # the first line comes at once
        clock.now += 1
        update("random-init control", 1, 10)  # within 5 s of the last line: not printed
        clock.now += 5
        update("step 4096", 3, 10)  # 3 done in 6 s since the first update: 7 more take ~14 s
        clock.now += 2
        update("step 8192", 4, 10)
        clock.now += 1
    assert console.file.getvalue().splitlines() == [
        "probe: collect · 0/10 (0%) · 0:00:00 elapsed",
        "probe: step 4096 · 3/10 (30%) · 0:00:06 elapsed, ~0:00:14 left",
        "probe: done in 0:00:09",
    ]


def test_stats_spinner_and_a_failure(clock, monkeypatch):
    console = log_console()
    monkeypatch.setenv(progress_module.ENV_SECONDS, "0")  # every update prints
    stats = "{rate:.0f} env-steps/s  return {ret:.2f}"
    with Progress("train", console, stats=stats) as update:
        update(done=1000, total=5000, rate=950.4, ret=0.25)
        clock.now += 4
        update(done=3000, total=5000, rate=1010, ret=0.5)
    with pytest.raises(ValueError), Progress("report", console, spinner=True) as update:
        clock.now += 3
        update("figures")
        raise ValueError("boom")
    assert console.file.getvalue().splitlines() == [
        "train: 1,000/5,000 (20%) · 950 env-steps/s  return 0.25 · 0:00:00 elapsed",
        "train: 3,000/5,000 (60%) · 1010 env-steps/s  return 0.50 · 0:00:04 elapsed, ~0:00:04 left",
        "train: done in 0:00:04",
        "report: figures · 0:00:03 elapsed",
        "report: stopped (ValueError) after 0:00:03",
    ]


def test_quiet_prints_nothing_and_a_bad_interval_is_a_clear_error(clock, monkeypatch):
    console = log_console()
    with Progress("probe", console, quiet=True) as update:
        update("collect", 0, 3)
        clock.now += 60
        update("step 0", 2, 3)
    assert console.file.getvalue() == ""
    monkeypatch.setenv(progress_module.ENV_SECONDS, "soon")
    with pytest.raises(ConfigError, match="WORKBENCH_PROGRESS_SECONDS='soon'.*number of seconds"):
        Progress("probe", console)
