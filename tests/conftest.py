"""What the whole suite shares: the tiny PPO settings, a factory of tiny training configs, and one tiny trained run.

- `TINY_PPO`, `tiny_config(...)`: the smallest training that still runs every part of PPO (16 envs x 8 steps, one
  epoch) on 5x5 trash rooms. Modules import them (`from tests.conftest import TINY_PPO, tiny_config`: tests/ is a
  package, so the test folders' same-named modules do not clash) and change only what they test.
- `tiny_run`: `tiny_config()` trained once per session (512 env-steps, checkpoints at 0, 128 and 512). It is shared,
  so it is read-only: a test that writes into a run copies it first (`shutil.copytree(tiny_run, tmp_path / "run")`).
  At the end of the session the run is checked unchanged, and a test that wrote into it fails its teardown.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

TINY_PPO = {"n_envs": 16, "n_steps": 8, "batch_size": 64, "n_epochs": 1}
TINY_ENV = {"variant": "trash", "room_size": 5}


def tiny_config(total_steps: int = 512, *, env: dict | None = None, ppo: dict | None = None, n_checkpoints: int = 3,
                eval_episodes: int = 4, **fields):  # fmt: skip
    """The suite's tiny TrainConfig; `env` and `ppo` update TINY_ENV and TINY_PPO, other TrainConfig fields (policy,
    seed, ...) pass through."""
    from workbench.training.ppo import TrainConfig

    cfg = TrainConfig(env={**TINY_ENV, **(env or {})}, total_steps=total_steps, **fields)
    cfg.ppo.update({**TINY_PPO, **(ppo or {})})
    cfg.n_checkpoints, cfg.eval_episodes = n_checkpoints, eval_episodes
    return cfg


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """`tiny_config()` trained once for the session, on one torch thread (tiny batches gain nothing from a second)."""
    from workbench.common.compute import one_torch_thread
    from workbench.training.ppo import train

    with one_torch_thread():
        run = train(tiny_config(), tmp_path_factory.mktemp("tiny-run") / "run", device="cpu")
    before = fingerprint(run)
    yield run
    changed = sorted(set(before.items()) ^ set(fingerprint(run).items()))
    assert not changed, f"a test wrote into the shared tiny_run (copy it first): {sorted({n for n, _ in changed})}"
