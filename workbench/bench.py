"""`workbench bench`: our tools against the reference a user would otherwise pick, side by side, same
machine, same run. Ratios are what matter; absolute numbers depend on the machine (run it quietly)."""

from __future__ import annotations

import platform
import time

import numpy as np

from workbench.errors import WorkbenchError


def _rate(step, actions: np.ndarray, per_call: int, seconds: float) -> float:
    """Calls of step(actions[i]) per second x per_call, over at least `seconds` after a warm-up."""
    for a in actions[:50]:
        step(a)
    done, start, i = 0, time.perf_counter(), 0
    while True:
        step(actions[i % len(actions)])
        i += 1
        done += per_call
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def bench_env(n_envs: int = 256, seconds: float = 3.0) -> dict:
    """Env-steps/s of the batched core (random actions), the SB3 VecEnv adapter, and MiniGrid-Empty-8x8
    stepped as a single gymnasium env (the reference)."""
    from workbench.envs import BatchEnv
    from workbench.envs.sb3_vec import WorkbenchVecEnv

    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, size=(4096, n_envs))
    batch = BatchEnv("trash", n_envs=n_envs, seed=0)
    batched = _rate(batch.step, actions, n_envs, seconds)
    vec = WorkbenchVecEnv("trash", n_envs=n_envs, seed=0)
    vec.reset()
    vec_rate = _rate(vec.step, actions, n_envs, seconds)

    try:
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the MiniGrid envs)
    except ImportError as err:
        raise WorkbenchError(
            "the env benchmark compares against MiniGrid, which is not installed: pip install -e '.[bench]'"
        ) from err
    mg = gym.make("MiniGrid-Empty-8x8-v0")
    mg.reset(seed=0)
    mg_actions = rng.integers(0, 3, size=4096)  # left, right, forward: the moves that matter in Empty

    def mg_step(a):
        _, _, terminated, truncated, _ = mg.step(int(a))
        if terminated or truncated:
            mg.reset()

    minigrid_rate = _rate(mg_step, mg_actions, 1, seconds)
    return {
        "n_envs": n_envs,
        "batched_env_steps_per_s": round(batched),
        "sb3_vecenv_env_steps_per_s": round(vec_rate),
        "minigrid_empty_8x8_single_env_steps_per_s": round(minigrid_rate),
        "ratio_batched_vs_minigrid": round(batched / minigrid_rate, 1),
        "ratio_vecenv_vs_minigrid": round(vec_rate / minigrid_rate, 1),
        "goal_ratio": 100,
    }


BENCHES = {"env": bench_env}


def run_benches(only: list[str] | None = None, quick: bool = False) -> dict:
    names = only or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        from workbench.errors import unknown_name

        raise unknown_name("benchmark", unknown[0], BENCHES)
    out = {
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": _cpus()},
    }
    for name in names:
        out[name] = BENCHES[name](**({"seconds": 0.5} if quick else {}))
    return out


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
