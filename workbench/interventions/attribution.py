"""Attribution: which inputs or activations an action logit or the value depends on, for either policy.

    from workbench.interventions.attribution import integrated_gradients, saliency

    result = saliency(policy, obs)                                 # d logit[argmax action] / d obs pixel
    result = integrated_gradients(policy, obs, target="value", wrt="conv.1.hook_out")
    result.attributions                                            # [B, *shape of obs or of the hook]
    result.completeness_error                                      # IG: sum(attr) - (f(x) - f(baseline)), [B]

`wrt` is "obs" (the raw 0..255 observation, as the env gives it) or any hook name. For a hook the forward runs
to that hook as usual and the activation there becomes the variable: gradients flow from the target back to it,
and integrated gradients interpolate it between a baseline activation (zeros by default, or the activation on a
baseline observation) and its actual value, all `steps` points in one batched forward. The target is the logit of
`action` (default: each observation's argmax action) or the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.common.errors import unknown_name
from workbench.interventions.patching import PatchError, as_obs, check_hook

TARGETS = ("logit", "value")


@dataclass
class Attribution:
    """`attributions [B, *shape]` w.r.t. `wrt`; `target_values [B]` of the target at the input; for integrated
    gradients also the target at the baseline and the completeness error (attributions sum minus the difference)."""

    method: str
    target: str
    wrt: str
    action: Tensor
    attributions: Tensor
    target_values: Tensor
    baseline_values: Tensor | None = None

    @property
    def completeness_error(self) -> Tensor:
        if self.baseline_values is None:
            raise PatchError("completeness is defined for integrated gradients only.")
        total = self.attributions.flatten(1).sum(1)
        return total - (self.target_values - self.baseline_values)


def _target(out: tuple[Tensor, Tensor], target: str, action: Tensor) -> Tensor:
    logits, value = out
    return value if target == "value" else logits.gather(1, action[:, None])[:, 0]


def _check(policy, obs, target: str, wrt: str, action):
    if target not in TARGETS:
        raise unknown_name("attribution target", target, TARGETS)
    if wrt != "obs":
        check_hook(policy, wrt)
    obs = as_obs(policy, obs, "attribution").float()
    if action is None:
        with torch.no_grad():
            action = policy(obs)[0].argmax(-1)
    action = torch.as_tensor(action, device=obs.device).long().reshape(-1)
    if len(action) == 1 and len(obs) > 1:
        action = action.expand(len(obs))
    if len(action) != len(obs) or ((action < 0) | (action >= policy.n_actions)).any():
        raise PatchError(f"action must be one index (or one per observation) from 0 to {policy.n_actions - 1}.")
    return obs, action


def _forward_with_variable(policy, obs: Tensor, wrt: str, make_variable):
    """Run the policy; at `wrt` (or the input) swap in make_variable(actual activation) and return it with the
    output."""
    holder = {}
    if wrt == "obs":
        holder["var"] = make_variable(obs)
        return policy(holder["var"]), holder["var"]

    def hook(act, hook):
        holder["var"] = make_variable(act.detach())
        return holder["var"]

    out = policy.run_with_hooks(obs, fwd_hooks=[(wrt, hook)])
    return out, holder["var"]


def saliency(policy, obs, target: str = "logit", action=None, wrt: str = "obs") -> Attribution:
    """The gradient of the target with respect to the observation or a hook's activation."""
    obs, action = _check(policy, obs, target, wrt, action)
    out, var = _forward_with_variable(policy, obs, wrt, lambda x: x.clone().requires_grad_(True))
    values = _target(out, target, action)
    (grad,) = torch.autograd.grad(values.sum(), var)
    return Attribution("saliency", target, wrt, action, grad.detach(), values.detach())


def integrated_gradients(
    policy, obs, target: str = "logit", action=None, wrt: str = "obs", baseline=None, steps: int = 32
) -> Attribution:
    """(x - baseline) times the mean gradient along the straight path from baseline to x (midpoint rule over
    `steps` points, batched). baseline: None (zeros: a black image, or a silent activation), an observation batch
    whose activation at `wrt` is the baseline, or a tensor of the activation's shape."""
    obs, action = _check(policy, obs, target, wrt, action)
    if not isinstance(steps, int) or steps < 1:
        raise PatchError(f"steps={steps!r}: integrated gradients need at least 1 step.")
    n = len(obs)
    with torch.no_grad():
        if wrt == "obs":
            actual = obs
        else:
            _, cache = policy.run_with_cache(obs, names_filter=[wrt])
            actual = cache[wrt]
        base = _baseline(policy, baseline, actual, wrt)
    alphas = (torch.arange(steps, dtype=torch.float32, device=obs.device) + 0.5) / steps
    view = (steps, 1, *[1] * (actual.ndim - 1))
    path = (base + alphas.view(view) * (actual - base)).reshape(steps * n, *actual.shape[1:])
    leaf = path.detach().requires_grad_(True)
    repeated = obs.repeat(steps, 1, 1, 1)
    out, var = _forward_with_variable(policy, repeated, wrt, lambda _: leaf)
    values = _target(out, target, action.repeat(steps))
    (grad,) = torch.autograd.grad(values.sum(), var)
    attributions = (actual - base) * grad.view(steps, *actual.shape).mean(0)
    with torch.no_grad():
        at_x = _target(_forward_with_variable(policy, obs, wrt, lambda _: actual)[0], target, action)
        at_base = _target(_forward_with_variable(policy, obs, wrt, lambda _: base.expand_as(actual))[0], target, action)
    return Attribution("integrated_gradients", target, wrt, action, attributions.detach(), at_x, at_base)


def _baseline(policy, baseline, actual: Tensor, wrt: str) -> Tensor:
    if baseline is None:
        return torch.zeros_like(actual)
    base = torch.as_tensor(baseline, device=actual.device).float()
    if wrt != "obs" and base.ndim == 4 and tuple(base.shape[1:]) == tuple(policy.obs_shape):
        _, cache = policy.run_with_cache(base, names_filter=[wrt])
        base = cache[wrt]
    try:
        return torch.broadcast_to(base, actual.shape)
    except RuntimeError as err:
        raise PatchError(
            f"baseline of shape {list(base.shape)} does not fit {wrt} (shape {list(actual.shape)}): pass "
            "observations, or a tensor of the activation's shape."
        ) from err
