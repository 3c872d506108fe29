"""SB3's PPO training our hooked policies in place: an `ActorCriticPolicy` whose whole network is `self.hooked`.

    model = PPO(HookedActorCriticPolicy, env, policy_kwargs={"policy_config": {"arch": "cnn"}})
    model.learn(100_000)
    model.policy.hooked.run_with_cache(obs)   # the very module PPO trained: no weight copying

`policy_config` is a `build_policy` config; `obs_shape` and `n_actions` may be left out (they are taken from the
env's spaces) and must match the spaces if given. Hook names are relative to `hooked`.

SB3 would normally run a features extractor (dividing uint8 images by 255), an MLP extractor and its own actor
and value heads. Here `_build` creates none of them (the parameter-free FlattenExtractor that SB3's __init__
makes is never called), and every route SB3 takes through the policy (`forward` in rollouts,
`evaluate_actions` in updates, `get_distribution` and with it `_predict` for `predict`, `predict_values` for
bootstrapping) calls `hooked` on the raw observations, which normalises them itself. `normalize_images` is forced
to False so that nothing else in SB3 divides by 255 again.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from workbench.common.errors import ConfigError
from workbench.policies import HookedPolicy, build_policy


class HookedActorCriticPolicy(ActorCriticPolicy):
    """An SB3 actor-critic policy that is a thin shell around a `HookedPolicy` at `self.hooked`."""

    hooked: HookedPolicy
    action_dist: CategoricalDistribution

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        policy_config: dict[str, Any],
        precision: str = "fp32",
        **kwargs: Any,
    ):
        if not isinstance(action_space, spaces.Discrete):
            raise ConfigError(f"hooked policies choose among discrete actions; got action space {action_space}.")
        if kwargs.pop("normalize_images", False):
            raise ConfigError(
                "normalize_images=True would divide observations by 255 twice: the hooked policy normalises "
                "them itself. Leave normalize_images out of policy_kwargs."
            )
        if kwargs.get("use_sde"):
            raise ConfigError(
                "use_sde is for continuous actions; hooked policies have discrete ones. Use use_sde=False."
            )
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision={precision!r}: use fp32, or bf16 (autocast matmuls and convolutions).")
        self.precision = precision
        # Read by _build, which ActorCriticPolicy.__init__ calls.
        self.policy_config = _config_for_spaces(policy_config, observation_space, action_space)
        super().__init__(observation_space, action_space, lr_schedule, normalize_images=False, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        """The hooked module and an optimizer over exactly its parameters (SB3's extractors and heads are unused)."""
        self.hooked = build_policy(self.policy_config)
        self.optimizer = self.optimizer_class(self.hooked.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _run(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hooked module, under bf16 autocast if asked (faster PPO updates where the CPU or GPU has bf16
        instructions); logits and values always come back as float32 for the losses."""
        if self.precision == "fp32":
            return self.hooked(obs)
        with torch.autocast(obs.device.type, dtype=torch.bfloat16):
            logits, value = self.hooked(obs)
        return logits.float(), value.float()

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, ...]:
        """Rollout step: actions, values `[B, 1]` and log-probabilities, as SB3 expects."""
        logits, value = self._run(obs)
        distribution = self.action_dist.proba_distribution(action_logits=logits)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, value.unsqueeze(-1), distribution.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Update step: values `[B, 1]`, log-probabilities of `actions`, and entropy."""
        logits, value = self._run(obs)
        distribution = self.action_dist.proba_distribution(action_logits=logits)
        return value.unsqueeze(-1), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs) -> CategoricalDistribution:
        """The action distribution; SB3's `_predict` (and so `predict`) samples from this."""
        logits, _ = self._run(obs)
        return self.action_dist.proba_distribution(action_logits=logits)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        """Values `[B, 1]`, used to bootstrap the last step and truncated episodes."""
        _, value = self._run(obs)
        return value.unsqueeze(-1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        # So SB3's own save/load can rebuild the policy (checkpoints are safetensors, but keep SB3 whole).
        return super()._get_constructor_parameters() | {
            "policy_config": self.policy_config,
            "precision": self.precision,
        }


def _config_for_spaces(
    policy_config: dict[str, Any], observation_space: spaces.Space, action_space: spaces.Discrete
) -> dict[str, Any]:
    """`policy_config` completed with the env's obs_shape and n_actions, or a ConfigError if they disagree."""
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
        raise ConfigError(f"hooked policies read [C, H, W] image observations; got {observation_space}.")
    from_spaces = {"obs_shape": list(observation_space.shape), "n_actions": int(action_space.n)}
    config = dict(policy_config)
    for key, value in from_spaces.items():
        given = config.setdefault(key, value)
        if (list(given) if isinstance(given, list | tuple) else given) != value:
            raise ConfigError(
                f"policy_config has {key}={given!r} but the env has {value!r}; drop {key} from policy_config "
                "to take it from the env."
            )
    return config
