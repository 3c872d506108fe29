"""`workbench.hook`'s cost: forward through the hooked view (nothing attached) vs the same computation on the plain
module, side by side in one run. Goal: <= 1.1x.

- SB3 CnnPolicy (NatureCNN, 3x56x56 pixels as MiniGrid's RGB view gives): the view's forward vs SB3's own ops
  (features extractor, MLP extractor, action and value nets) on the same module, at batch 1, 64 and 256;
- a plain nn.Module, a 4-layer MLP (small ops, so the per-submodule hook call weighs most): view(x) vs module(x).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from workbench.policies.views import hook


def _timed_pair(ours, plain, x, repeats: int) -> tuple[float, float]:
    """Seconds per call of each, the best of `repeats` interleaved blocks of 10 calls (after a warm-up): the two
    sides alternate, so a burst of load elsewhere hits both, and the minimum discards the bursts."""
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        for fn in (ours, plain, ours, plain):
            fn(x)
        for _ in range(repeats):
            for i, fn in enumerate((ours, plain)):
                start = time.perf_counter()
                for _ in range(10):
                    fn(x)
                best[i] = min(best[i], (time.perf_counter() - start) / 10)
    return best[0], best[1]


def bench_hooked(quick: bool = False) -> dict:
    import numpy as np
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    repeats = 3 if quick else 30
    torch.manual_seed(0)
    obs_space = spaces.Box(0, 255, (3, 56, 56), np.uint8)
    policy = ActorCriticCnnPolicy(obs_space, spaces.Discrete(7), lambda _: 0.0).eval()
    view = hook(policy)

    def plain(obs):
        features = policy.extract_features(obs)
        latent_pi, latent_vf = policy.mlp_extractor(features)
        return policy.action_net(latent_pi), policy.value_net(latent_vf)

    out = {"sb3_cnn_policy": {}, "mlp": {}}
    for batch in (1, 64, 256):
        obs = torch.randint(0, 256, (batch, 3, 56, 56), dtype=torch.uint8)
        assert torch.equal(view(obs)[0], plain(obs)[0])
        ours, ref = _timed_pair(view, plain, obs, repeats)
        out["sb3_cnn_policy"][f"batch={batch}"] = {"hooked_ms": round(ours * 1e3, 3), "plain_ms": round(ref * 1e3, 3),
                                                   "ratio": round(ours / ref, 3)}  # fmt: skip
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 8))  # fmt: skip
    mlp_view = hook(mlp)
    for batch in (1, 256):
        x = torch.randn(batch, 64)
        ours, ref = _timed_pair(mlp_view, mlp, x, repeats)
        out["mlp"][f"batch={batch}"] = {"hooked_ms": round(ours * 1e3, 4), "plain_ms": round(ref * 1e3, 4),
                                        "ratio": round(ours / ref, 3)}  # fmt: skip
    out["goal_ratio"] = 1.1
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_hooked(), indent=2))
