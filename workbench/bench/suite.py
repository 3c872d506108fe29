"""`workbench bench`: our tools against the reference a user would otherwise pick, side by side, same
machine, same run. Ratios are what matter; absolute numbers depend on the machine (run it quietly)."""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from workbench.bench import BENCHMARKS
from workbench.bench.collect import bench_collect
from workbench.bench.policies import bench_transformer_forward
from workbench.bench.probes import bench_probes
from workbench.common.compute import resolve_precision
from workbench.common.errors import WorkbenchError, unknown_name
from workbench.envs import BatchEnv, make_config
from workbench.envs.rollouts import evaluate
from workbench.training.checkpoints import list_steps, read_json, step_stem
from workbench.training.config import FAST_PPO, POLICIES, named_config


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
    from workbench.envs.sb3_vec import WorkbenchVecEnv  # lazy: stable_baselines3

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


def run_benches(only: list[str] | None = None, quick: bool = False, options: dict | None = None) -> dict:
    """Run the named benchmarks (all by default). quick: short timings and one seed, for smoke tests only.
    options: {name: keyword arguments} for a benchmark's own function."""
    options = options or {}
    benches = {
        "env": lambda: bench_env(seconds=0.5 if quick else 3.0),
        "train": lambda: bench_throughput(seconds=0.5) if quick else bench_train(),
        "transformer": lambda: _transformer_forward(quick),
        "collect": lambda: _collect(quick),
        "probes": lambda: _probes(quick),
        "patching": lambda: _bench_module("workbench.bench.patching", "bench_patching", quick),
        "hook": lambda: _bench_module("workbench.bench.hooked", "bench_hooked", quick),
        "probe-sweep": lambda: _bench_module(
            "workbench.bench.probe_sweep", "bench_probe_sweep", quick, **options.get("probe-sweep", {})
        ),  # fmt: skip
        "patch-sweep": lambda: _bench_module(
            "workbench.bench.patching", "bench_patch_sweep", quick, **options.get("patch-sweep", {})
        ),  # fmt: skip
        "train-seeds": lambda: _bench_module(
            "workbench.bench.training", "bench_train_seeds", quick, **options.get("train-seeds", {})
        ),  # fmt: skip
    }
    assert set(benches) == set(BENCHMARKS)
    names = only or list(benches)
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise unknown_name("benchmark", unknown[0], benches)
    out = {"machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": _cpus()}}
    for name in names:
        out[name] = benches[name]()
    return out


def _transformer_forward(quick: bool) -> dict:
    return bench_transformer_forward(repeats=3 if quick else 20)


def _collect(quick: bool) -> dict:
    """Activation collection with every hook stored: the CNN over 1M observations, the transformer 200k."""
    return {"cnn": bench_collect(20_000 if quick else 1_000_000, "cnn"),
            "transformer": bench_collect(5_000 if quick else 200_000, "transformer")}  # fmt: skip


def _probes(quick: bool) -> dict:
    """Our batched probe sweep against the loop of scikit-learn fits (workbench.bench.probes)."""
    return bench_probes(n=3_000, dims=(64,), n_hooks=1) if quick else bench_probes()


def _bench_module(module: str, function: str, quick: bool, **options) -> dict:
    import importlib

    return getattr(importlib.import_module(module), function)(quick=quick, **options)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- training
SOLVED = 0.95  # sampled success rate on 200 evaluation episodes


def _ours_time_to_solve(seed: int, arch: str, cap_s: float) -> dict:
    """Our defaults (named config trash-<arch>) until solved; train wall time, evaluation excluded."""
    import tempfile

    from workbench.training.ppo import train  # lazy: stable_baselines3

    cfg = named_config(f"trash-{arch}")
    cfg.seed, cfg.n_checkpoints, cfg.eval_episodes = seed, 60, 200
    cfg.total_steps = max(cfg.total_steps, 2_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(cfg, f"{tmp}/run", device="cpu", stop_when_solved=SOLVED, max_train_seconds=cap_s)
        last = read_json(run / f"{step_stem(list_steps(run)[-1])}.json")
    return {"seed": seed, "solved": last["success_rate"] >= SOLVED, "seconds": last["train_seconds"],
            "env_steps": last["step"]}  # fmt: skip


def _reference_time_to_solve(seed: int, cap_s: float) -> dict:
    """SB3 PPO with its default hyper-parameters on gymnasium.make envs in DummyVecEnv(8), same CNN; evaluated
    the same way after every update; evaluation time excluded."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from workbench.training.sb3_policy import HookedActorCriticPolicy  # lazy: stable_baselines3

    env_cfg = make_config("trash")

    class EvalEachUpdate(BaseCallback):
        def __init__(self):
            super().__init__()
            self.start, self.eval_s, self.solved_at, self.seconds = time.perf_counter(), 0.0, None, 0.0

        def _on_step(self) -> bool:
            return self.solved_at is None and self.seconds < cap_s

        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps == 0:
                return
            t0 = time.perf_counter()
            success = evaluate(self.model.policy.hooked, env_cfg, episodes=200, seed=10_000 + seed)["success_rate"]
            self.eval_s += time.perf_counter() - t0
            self.seconds = time.perf_counter() - self.start - self.eval_s
            if success >= SOLVED:
                self.solved_at = self.model.num_timesteps

    venv = DummyVecEnv([lambda: gym.make("Workbench/TrashGrid-v0") for _ in range(8)])
    venv.seed(seed)
    policy_kwargs = {"policy_config": dict(POLICIES["cnn"])}  # the same CNN, in SB3's default fp32
    model = PPO(HookedActorCriticPolicy, venv, policy_kwargs=policy_kwargs, device="cpu", seed=seed)
    callback = EvalEachUpdate()
    model.learn(total_timesteps=10_000_000, callback=callback)
    return {"seed": seed, "solved": callback.solved_at is not None, "seconds": round(callback.seconds, 2),
            "env_steps": int(callback.solved_at or model.num_timesteps)}  # fmt: skip


def _median(runs: list[dict]) -> float:
    return float(np.median([r["seconds"] for r in runs]))


def bench_train(seeds: int = 3, cap_s: float = 900.0, seconds: float = 3.0) -> dict:
    """Time to solve TrashGrid (ours vs SB3 defaults), env-steps/s at identical PPO settings, trainer
    overhead, and the transformer's time to solve."""
    torch.set_num_threads(_cpus())
    ours = [_ours_time_to_solve(s, "cnn", cap_s) for s in range(seeds)]
    reference = [_reference_time_to_solve(s, cap_s) for s in range(seeds)]
    transformer = [_ours_time_to_solve(s, "transformer", 300.0) for s in range(1)]
    out = {
        "ours_cnn_time_to_solve_s": ours,
        "reference_sb3_defaults_time_to_solve_s": reference,
        "median_ours_s": _median(ours),
        "median_reference_s": _median(reference),
        "reference_is_lower_bound": not all(r["solved"] for r in reference),
        "speedup_time_to_solve": round(_median(reference) / _median(ours), 1),
        "goal_speedup": 10,
        "transformer_time_to_solve_s": transformer,
    }
    out.update(bench_throughput(seconds=seconds))
    return out


def bench_throughput(seconds: float = 3.0) -> dict:
    """Env-steps/s of PPO with identical settings (samples per update, epochs, minibatch): our batched VecEnv
    vs DummyVecEnv(8) of gymnasium envs; and the share of our wall time spent outside the policy's forward,
    backward and optimizer step (trainer overhead)."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from workbench.envs.sb3_vec import WorkbenchVecEnv  # lazy: stable_baselines3
    from workbench.training.ppo import unvalidated_distributions  # lazy: stable_baselines3
    from workbench.training.sb3_policy import HookedActorCriticPolicy  # lazy: stable_baselines3

    ppo = dict(FAST_PPO)
    policy_kwargs = {"policy_config": dict(POLICIES["cnn"]), "precision": resolve_precision("auto", "cpu")}
    samples = ppo.pop("n_envs") * ppo["n_steps"]
    rates, overhead = {}, None
    for name, venv in (
        ("ours", WorkbenchVecEnv("trash", n_envs=samples // ppo["n_steps"], seed=0)),
        ("dummyvecenv8", DummyVecEnv([lambda: gym.make("Workbench/TrashGrid-v0") for _ in range(8)])),
    ):
        settings = {**ppo, "n_steps": samples // venv.num_envs}
        model = PPO(HookedActorCriticPolicy, venv, policy_kwargs=policy_kwargs, device="cpu", seed=0, **settings)
        model.learn(samples)  # warm-up
        updates = max(2, int(seconds * 6000 / samples))
        with _compute_timer(model.policy) as compute, unvalidated_distributions():
            start = time.perf_counter()
            model.learn(updates * samples, reset_num_timesteps=False)
            elapsed = time.perf_counter() - start
        rates[name] = updates * samples / elapsed
        if name == "ours":
            overhead = 1.0 - compute.seconds / elapsed
    torch.set_num_threads(_cpus())
    return {
        "ppo_env_steps_per_s_ours": round(rates["ours"]),
        "ppo_env_steps_per_s_dummyvecenv8": round(rates["dummyvecenv8"]),
        "ppo_throughput_ratio": round(rates["ours"] / rates["dummyvecenv8"], 2),
        "trainer_overhead_share": round(overhead, 3),
        "goal_trainer_overhead_share": 0.15,
    }


class _compute_timer:
    """Accumulates wall time inside the hooked policy's forward, loss.backward() and optimizer.step()."""

    def __init__(self, sb3_policy):
        self.policy, self.seconds = sb3_policy, 0.0

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return wrapper

    def __enter__(self):
        self._forward, self._step = self.policy.hooked.forward, self.policy.optimizer.step
        self._backward = torch.Tensor.backward
        self.policy.hooked.forward = self._timed(self._forward)
        self.policy.optimizer.step = self._timed(self._step)
        torch.Tensor.backward = self._timed(self._backward)
        return self

    def __exit__(self, *exc):
        del self.policy.hooked.forward  # back to the class's method
        self.policy.optimizer.step = self._step
        torch.Tensor.backward = self._backward
