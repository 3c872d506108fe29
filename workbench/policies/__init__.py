"""Policies: a CNN and a small transformer under one hook API (see `base.HookedPolicy` for the contract).

    policy = build_policy({"arch": "cnn", "obs_shape": [3, 18, 18], "n_actions": 5})
    logits, value = policy(obs)                       # obs uint8 [B, 3, 18, 18]
    (logits, value), cache = policy.run_with_cache(obs)
    cache["conv.1.hook_out"]                          # any activation by its hook name
    hook_shapes(policy)                               # {hook name: shape without the batch dim}

Modules: `base` (the contract, `Checkpoint`), `cnn`, `transformer`, `names` (hook names by role:
`act_name(policy, "conv", -1)`), `views` (`workbench.hook`: the same hook API over any torch module and SB3
policies). SB3's PPO trains these same modules through `workbench.training.sb3_policy.HookedActorCriticPolicy`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from workbench.common.compute import device_of
from workbench.common.errors import ConfigError, unknown_name
from workbench.policies.base import HookedPolicy
from workbench.policies.cnn import CNNPolicy
from workbench.policies.transformer import TransformerPolicy
from workbench.policies.views import build_sb3_policy

ARCHS: dict[str, type[HookedPolicy]] = {cls.arch: cls for cls in (CNNPolicy, TransformerPolicy)}


def build_policy(config: dict[str, Any]) -> HookedPolicy:
    """A fresh policy from a `config()` dict (as stored in run.json); load a state_dict into it for weights."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch == "sb3":  # a stable-baselines3 policy under the same contract (workbench.policies.views.SB3PolicyView)
        return build_sb3_policy({"arch": arch, **config})
    if arch not in ARCHS:
        raise unknown_name("policy arch", arch, [*ARCHS, "sb3"])
    cls = ARCHS[arch]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unexpected = sorted(set(config) - accepted)
    missing = sorted({"obs_shape", "n_actions"} - set(config))
    if unexpected or missing:
        problems = [f"unexpected {unexpected}"] * bool(unexpected) + [f"missing {missing}"] * bool(missing)
        raise ConfigError(
            f"bad {arch!r} policy config: {'; '.join(problems)}. It takes: {', '.join(sorted(accepted))}."
        )
    if isinstance(config["obs_shape"], list):
        config["obs_shape"] = tuple(config["obs_shape"])  # JSON gives lists back
    return cls(**config)


@torch.no_grad()
def hook_shapes(policy: HookedPolicy, obs_shape: tuple[int, int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Every hook name and its activation shape without the batch dim, from one dummy forward."""
    obs = torch.zeros((1, *(obs_shape or policy.obs_shape)), dtype=torch.uint8, device=device_of(policy))
    _, cache = policy.run_with_cache(obs)
    return {name: tuple(cache[name].shape[1:]) for name in policy.hook_dict if name in cache}


__all__ = ["ARCHS", "CNNPolicy", "HookedPolicy", "TransformerPolicy", "build_policy", "hook_shapes"]
