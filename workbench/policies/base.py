"""What every workbench policy is: a HookedRootModule from image observations to (logits, value).

Both architectures share this contract so that caching, probing, patching and the SB3 adapter never need to
know which one they hold:

- input: `[B, C, H, W]` observations, uint8 or float32 holding 0..255 values (SB3 2.9 passes uint8 both in
  rollouts and from its rollout buffer; older SB3 buffers stored float32). The module divides by 255 itself, so
  `hook_obs` sees the same floats whichever came in and nothing upstream must normalise.
- output: `(logits [B, n_actions], value [B])`, also at `hook_logits` and `hook_value`.
- `config()` is a JSON-able dict of the constructor arguments (with `arch`), enough to rebuild the module
  from run.json via `workbench.policies.build_policy`.
- `run_with_cache` returns a TransformerLens `ActivationCache` (TL's base class returns a plain dict).
- `checkpoint`: where a loaded policy came from (`Checkpoint`: run directory, step, run.json, the step's metrics),
  set by `workbench.training.checkpoints.load_policy`; None for a policy built in memory. `.run`, `.step`,
  `.run_dir` and `.metrics` read it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from workbench.common.errors import ConfigError


@dataclass(frozen=True)
class Checkpoint:
    """Where a loaded policy came from: its run directory, the step, the run's run.json and the step's metrics."""

    run_dir: Path
    step: int
    run: dict = field(repr=False)
    metrics: dict = field(default_factory=dict, repr=False)


class FromCheckpoint:
    """The `checkpoint` a policy was loaded from (None when built in memory) and its parts as properties."""

    checkpoint: Checkpoint | None = None

    @property
    def run(self) -> dict | None:
        """The run's run.json (its env, policy and training config), or None."""
        return None if self.checkpoint is None else self.checkpoint.run

    @property
    def step(self) -> int | None:
        return None if self.checkpoint is None else self.checkpoint.step

    @property
    def run_dir(self) -> Path | None:
        return None if self.checkpoint is None else self.checkpoint.run_dir

    @property
    def metrics(self) -> dict | None:
        """The evaluation the run logged at this step, or None."""
        return None if self.checkpoint is None else self.checkpoint.metrics


def checkpoint_of(policy) -> Checkpoint | None:
    """The checkpoint any policy-like object was loaded from: None for scripted policies, SB3 models in memory and
    policies built in memory."""
    return getattr(policy, "checkpoint", None)


class HookedPolicy(FromCheckpoint, HookedRootModule):
    """Base of the policies. Subclasses build their body, call `_add_heads`, then `self.setup()` last."""

    arch: ClassVar[str]

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, arch_kwargs: dict[str, Any]):
        super().__init__()
        self.obs_shape = _checked_obs_shape(obs_shape)
        self.n_actions = positive_int("n_actions", n_actions)
        # Kept exactly as given (lists, not tuples) so config() is JSON-able and round-trips.
        self.arch_kwargs = arch_kwargs
        self.hook_obs = HookPoint()  # first in hook_dict: the normalised input every other hook derives from

    def config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-able dict; `build_policy(config())` rebuilds this module."""
        return {"arch": self.arch, "obs_shape": list(self.obs_shape), "n_actions": self.n_actions} | dict(
            self.arch_kwargs
        )

    def normalise(self, obs: Tensor) -> Tensor:
        """uint8 or float 0..255 `[B, C, H, W]` -> float32 0..1, at `hook_obs`."""
        if obs.ndim != 4 or tuple(obs.shape[1:]) != self.obs_shape:
            raise ConfigError(
                f"observations of shape {tuple(obs.shape)} do not fit this policy, built for "
                f"[batch, {', '.join(map(str, self.obs_shape))}]. Add a batch dimension, or build the policy "
                "with the env's observation shape (obs_shape in its config)."
            )
        return self.hook_obs((obs / 255.0).to(torch.float32))  # one pass for uint8 and float32 input

    def _add_heads(self, d_in: int) -> None:
        """Actor and critic heads on a `d_in` feature vector, with CleanRL's init (small actor logits at start)."""
        self.actor = nn.Linear(d_in, self.n_actions)
        self.critic = nn.Linear(d_in, 1)
        for head, gain in ((self.actor, 0.01), (self.critic, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)
        self.hook_logits = HookPoint()
        self.hook_value = HookPoint()

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.hook_logits(self.actor(features))
        value = self.hook_value(self.critic(features).squeeze(-1))
        return logits, value

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:
        """As TransformerLens' run_with_cache, but the cache is an `ActivationCache`, as on TL's own models."""
        output, cache_dict = super().run_with_cache(*model_args, **kwargs)
        return output, ActivationCache(cache_dict, self)


def positive_int(name: str, value: Any) -> int:
    """`value` as an int if it is a positive integer (numpy ints from gym spaces included), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _checked_obs_shape(obs_shape: Any) -> tuple[int, int, int]:
    """(C, H, W) with each grid cell a 2x2 pixel block, so H and W are even."""
    if not isinstance(obs_shape, list | tuple) or len(obs_shape) != 3:
        raise ConfigError(f"obs_shape must be three positive ints (C, H, W), got {obs_shape!r}.")
    shape = tuple(positive_int("each obs_shape entry", n) for n in obs_shape)
    _, height, width = shape
    if height % 2 or width % 2:
        raise ConfigError(
            f"obs_shape {shape} has an odd height or width; the envs draw each grid cell as a 2x2 pixel "
            "block, so H and W must be even. Pass the env's observation_space.shape."
        )
    return shape
