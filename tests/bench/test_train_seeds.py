"""`bench_train_seeds(quick=True)`: both modes' figures come back, JSON-able, and the runs it trained are complete.
No timing is asserted: the figures depend on the machine and on what else runs on it."""

import json

from workbench.bench.training import bench_train_seeds
from workbench.training.checkpoints import list_steps, step_stem


def test_quick_bench_reports_both_modes_and_complete_runs(tmp_path):
    # One rollout per seed, and one torch thread for the sequential runs: two threads on a busy 2-core machine
    # wait for each other and make the test slow, and this test checks the figures' presence, not their values.
    result = bench_train_seeds(quick=True, steps=4096, out=tmp_path, sequential_threads=1)
    assert json.loads(json.dumps(result)) == result
    assert result["seeds"] == 2 and result["env_steps_per_seed"] == 4096 and result["runs_complete"]
    for mode in ("sequential", "parallel"):
        assert result[f"{mode}_s"] > 0 and result[f"{mode}_env_steps_per_s"] > 0
        assert result[f"{mode}_threads_per_run"] >= 1
        for seed in range(result["seeds"]):
            run = tmp_path / mode / f"trash-cnn-s{seed}"
            assert list_steps(run)[-1] == 4096 and (run / f"{step_stem(4096)}.safetensors").exists()
    assert result["parallel_jobs"] == min(result["cpus"], 2) and result["speedup"] > 0
    assert result["sequential_threads_per_run"] == 1
    projected = result["projected_population"]
    assert projected["series"] > 0 and projected["env_steps"] > 0 and projected["parallel_hours"] > 0
