"""Activation patching: move one site of a hook from the clean run into the corrupted run and see what moves.

    from workbench.envs.contrast import contrast_pairs
    from workbench.interventions.patching import patch, patch_sweep

    pairs = contrast_pairs("trash", n=128, seed=0)
    result = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_out", per="cell")
    result.logits                       # [sites, pairs, actions] of every patched run
    table = result.table()              # tidy: one row per site, source (clean | noise) and metric, with intervals
    table = patch(policy, pairs, ["conv.1.hook_out", "fc.hook_out"])    # several hooks, default granularity each

A *site* is one index along the hook's site axes (`per`): for a conv map `[C, Y, X]` a channel, a cell or one
element; for transformer tokens `[pos, d]` a position; for `hook_z` `[pos, head, d_head]` a head or a (pos, head);
for a pattern `[head, dest, src]` a head or a (head, dest). `per="all"` is one site, the whole activation.

All sites of a hook are patched in batched forwards rather than one forward each (TransformerLens'
`generic_activation_patch` loop), in one of two exact ways:

- *cut*: the batch is expanded `sites x pairs` at the last hook before the target through which everything flows
  (`hook_obs`, `conv.i.hook_out`, `fc.hook_out`, `blocks.l.hook_resid_*`), so the prefix before it runs once, and at
  the target each row takes its site from the clean run (`torch.where(mask, clean, corrupt)`).
- *linear*: when the hook feeds straight into a linear layer (the CNN's last conv into `fc`; `fc.hook_out` into the
  heads), the patched pre-activation is the corrupted one plus the weight times the site's clean-minus-corrupt
  difference. Sites partition the activation, so all of them cost one matmul over the pairs; only the small rest
  of the network runs per site. Equal to the cut path up to float rounding (~1e-7).
- *readout*: the transformer reads its action and value at token 0, so a patch of one token (per pos or element)
  at the last block's input needs, per site, only that token's new q, k, v (the corrupted run's are cached for the
  rest) and token 0's attention, MLP, final norm and heads (~1e-6 from the full forward).

Metrics per site and pair: `logit_diff` (the clean run's action logit minus the corrupted run's best other action),
`p_clean` (probability of the clean action), `value_change` (patched minus corrupted value), and per site
`normalised_effect` = mean(patched - corrupted logit diff) / mean(clean - corrupted): 0 is the corrupted run, 1 the
clean one. Intervals are percentile bootstraps over pairs. The noise baseline patches each pair's site from the
corrupted run of a *different* pair (another room, the factor equally absent): how far any in-distribution content
at that site moves the metrics. A site carries the factor where the clean patch's effect stands clear of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.common.compute import device_of
from workbench.common.errors import WorkbenchError, unknown_name
from workbench.common.guards import check_memory
from workbench.common.stats import bootstrap_weights, derangement, mean_ci, ratio_ci
from workbench.policies import CNNPolicy, TransformerPolicy, hook_shapes
from workbench.policies.names import act_name, n_layers, with_roles


class PatchError(WorkbenchError, ValueError):
    """Patching, steering or attribution was asked something that does not fit the policy or its inputs."""


# Site axes per kind of activation; `element` is every axis (one site per number).
GRANULARITIES: dict[str, dict[str, tuple[int, ...]]] = {
    "map": {"all": (), "channel": (0,), "cell": (1, 2), "element": (0, 1, 2)},  # [C, Y, X]
    "vector": {"all": (), "unit": (0,)},  # [D]
    "tokens": {"all": (), "pos": (0,), "unit": (1,), "element": (0, 1)},  # [pos, D]
    "heads": {"all": (), "pos": (0,), "head": (1,), "pos_head": (0, 1), "element": (0, 1, 2)},  # [pos, head, d]
    "pattern": {"all": (), "head": (0,), "head_pos": (0, 1), "element": (0, 1, 2)},  # [head, dest, src]
    "scalar": {"all": ()},
}
AXIS_NAMES = {
    "map": ("channel", "row", "col"),
    "vector": ("unit",),
    "tokens": ("pos", "unit"),
    "heads": ("pos", "head", "d_head"),
    "pattern": ("head", "dest_pos", "src_pos"),
    "scalar": (),
}
DEFAULT_PER = {"map": "cell", "vector": "unit", "tokens": "pos", "heads": "head", "pattern": "head", "scalar": "all"}
METHODS = ("auto", "linear", "readout", "cut")
METRICS = ("logit_diff", "p_clean", "value_change", "normalised_effect")
# Roles of the hooks through which all later computation flows: expanding the batch there is exact for anything
# after them.
CUT_ROLES = ("obs", "stem", "conv", "fc", "resid_pre", "resid_mid", "resid_post", "ln_final")
MAX_ROWS = 4096  # rows per batched forward (sites x pairs); bounds memory, big enough to amortise launches


# ---------------------------------------------------------------------------------------------- hooks and sites
def hook_kind(hook: str, shape: Sequence[int]) -> str:
    leaf = hook.rsplit(".", 1)[-1]
    if leaf in ("hook_pattern", "hook_attn_scores"):
        return "pattern"
    if leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return "heads"
    return {0: "scalar", 1: "vector", 2: "tokens", 3: "map"}[len(shape)]


def check_hook(policy, hook: str) -> None:
    aliases = getattr(policy, "hook_aliases", {})
    if hook in aliases:
        raise PatchError(
            f"hook {hook!r} is the same activation as {aliases[hook]!r}, which this policy lists once under that name "
            f"(see `workbench hooks`): pass {aliases[hook]!r}."
        )
    if hook not in policy.hook_dict:
        arch = getattr(policy, "arch", type(policy).__name__)
        raise unknown_name(f"hook of this {arch} policy (see `workbench hooks`)", hook, policy.hook_dict)


def activation_shapes(policy, hooks: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shapes without the batch dim, from one dummy forward (the attention path that exposes patterns)."""
    for hook in hooks:
        check_hook(policy, hook)
    obs = torch.zeros((1, *policy.obs_shape), dtype=torch.uint8, device=device_of(policy))
    with torch.no_grad():
        _, cache = policy.run_with_cache(obs, names_filter=list(hooks))
    return {hook: tuple(cache[hook].shape[1:]) for hook in hooks}


def site_axes(hook: str, shape: Sequence[int], per: str | None) -> tuple[str, tuple[int, ...]]:
    """(granularity, axes of the activation that index a site); `per=None` takes the kind's default."""
    kind = hook_kind(hook, shape)
    per = DEFAULT_PER[kind] if per is None else per
    if per not in GRANULARITIES[kind]:
        raise unknown_name(f"patch granularity for {hook} (shape {list(shape)})", per, GRANULARITIES[kind])
    return per, GRANULARITIES[kind][per]


def all_sites(shape: Sequence[int], axes: tuple[int, ...]) -> np.ndarray:
    """[S, len(axes)] every site, the last axis fastest (TL's `make_df_from_ranges` order)."""
    dims = [shape[a] for a in axes]
    if not dims:
        return np.zeros((1, 0), dtype=np.int64)  # one site: everything
    return np.stack(np.unravel_index(np.arange(math.prod(dims)), dims), axis=-1).reshape(-1, len(axes))


def check_sites(sites, shape: Sequence[int], axes: tuple[int, ...], hook: str) -> np.ndarray:
    if sites is None:
        return all_sites(shape, axes)
    arr = np.asarray(sites)
    if arr.dtype.kind not in "iu" or arr.size == 0:
        raise PatchError(f"sites for {hook} must be a non-empty list of integer indices, got {sites!r}.")
    arr = arr.reshape(len(arr), -1) if len(axes) else arr.reshape(len(arr), 0)
    dims = np.array([shape[a] for a in axes])
    if arr.shape[1] != len(axes) or ((arr < 0) | (arr >= dims)).any():
        raise PatchError(
            f"site {arr[((arr < 0) | (arr >= dims)).any(1)][0].tolist() if arr.shape[1] == len(axes) else sites!r} "
            f"is out of range for {hook}: a site has {len(axes)} indices, each from 0 to "
            f"{[int(d) - 1 for d in dims]} (activation shape {list(shape)})."
        )
    return arr.astype(np.int64)


def site_masks(shape: Sequence[int], axes: tuple[int, ...], sites: Tensor) -> Tensor:
    """[S, *shape] bool: True on each site's slice."""
    mask = torch.ones((len(sites), *[1] * len(shape)), dtype=torch.bool, device=sites.device)
    for i, axis in enumerate(axes):
        view = [len(sites)] + [1] * len(shape)
        view[1 + axis] = shape[axis]
        mask = mask & (torch.arange(shape[axis], device=sites.device) == sites[:, i, None]).view(view)
    return mask.expand(len(sites), *shape)


# ---------------------------------------------------------------------------------------------- inputs
def as_obs(policy, obs, what: str) -> Tensor:
    t = torch.as_tensor(obs, device=device_of(policy))
    if t.ndim != 4 or tuple(t.shape[1:]) != tuple(policy.obs_shape):
        raise PatchError(
            f"{what} observations have shape {list(t.shape)}; this policy reads [batch, "
            f"{', '.join(map(str, policy.obs_shape))}]. Build the pairs with the env the policy was trained on "
            "(its room_size)."
        )
    return t


def check_pair_obs(policy, clean_obs, corrupt_obs) -> tuple[Tensor, Tensor]:
    clean, corrupt = as_obs(policy, clean_obs, "clean"), as_obs(policy, corrupt_obs, "corrupted")
    if clean.shape != corrupt.shape:
        raise PatchError(
            f"clean and corrupted observations must pair up one to one: shapes {list(clean.shape)} and "
            f"{list(corrupt.shape)} differ."
        )
    return clean, corrupt


# ---------------------------------------------------------------------------------------------- engines
def _execution_order(policy) -> list[str]:
    order: list[str] = []
    obs = torch.zeros((1, *policy.obs_shape), dtype=torch.uint8, device=device_of(policy))
    hooks = [(name, lambda act, hook: order.append(hook.name)) for name in policy.hook_dict]
    with torch.no_grad():
        policy.run_with_hooks(obs, fwd_hooks=hooks)
    return order


def cut_hook(policy, hook: str) -> str:
    """The last hook at or before `hook` in execution order through which all later computation flows."""
    order = _execution_order(policy)
    before = order[: order.index(hook) + 1] if hook in order else order[:1]
    return next((name for name in reversed(before) if with_roles([name], *CUT_ROLES)), "hook_obs")


def _patched_cut(policy, corrupt: Tensor, hook: str, axes, sites: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Patched outputs for every site: one forward per chunk of sites, the batch expanded at the cut hook."""
    n_pairs, shape = len(corrupt), tuple(source.shape[1:])
    cut = cut_hook(policy, hook)
    per_chunk = max(1, MAX_ROWS // n_pairs)
    logits, values = [], []
    for start in range(0, len(sites), per_chunk):
        chunk = sites[start : start + per_chunk]
        mask = site_masks(shape, axes, chunk)[:, None]  # [s, 1, *shape]
        n = len(chunk)

        def expand(act, hook, n=n):
            return act.unsqueeze(0).expand(n, *act.shape).reshape(n * act.shape[0], *act.shape[1:])

        def put(act, hook, n=n, mask=mask):
            act = act.view(n, n_pairs, *shape)
            return torch.where(mask, source.unsqueeze(0), act).reshape(n * n_pairs, *shape)

        hooks = (
            [(hook, lambda act, hook, e=expand, p=put: p(e(act, hook), hook))]
            if cut == hook
            else [(cut, expand), (hook, put)]
        )
        out_logits, out_value = policy.run_with_hooks(corrupt, fwd_hooks=hooks)
        logits.append(out_logits.view(n, n_pairs, -1))
        values.append(out_value.view(n, n_pairs))
    return torch.cat(logits), torch.cat(values)


def linear_successor(policy, hook: str):
    """(weight [out, K], bias [out], finish(pre [rows, out]) -> (logits, value)) when `hook`'s activation goes
    flattened into one linear map and nothing else; None otherwise."""
    if not isinstance(policy, CNNPolicy):
        return None
    if hook == act_name(policy, "conv", -1):
        fc = policy.fc
        return fc.weight, fc.bias, lambda pre: policy._heads(fc.hook_out(F.relu(pre)))
    if hook == act_name(policy, "fc"):
        n_actions = policy.n_actions
        weight = torch.cat([policy.actor.weight, policy.critic.weight])
        bias = torch.cat([policy.actor.bias, policy.critic.bias])
        return weight, bias, lambda pre: (policy.hook_logits(pre[:, :n_actions]), policy.hook_value(pre[:, n_actions]))
    return None


def _patched_linear(policy, hook: str, axes, sites: Tensor, source: Tensor, corrupt_act: Tensor):
    """Patched outputs through the linear successor: pre = W corrupt + b + W_site (clean - corrupt)_site."""
    weight, bias, finish = linear_successor(policy, hook)
    n_pairs, shape = len(corrupt_act), tuple(corrupt_act.shape[1:])
    rest = [a for a in range(len(shape)) if a not in axes]
    site_dims = [shape[a] for a in axes]
    pre_corrupt = F.linear(corrupt_act.flatten(1), weight, bias)  # [B, out]
    delta = (source - corrupt_act).permute(0, *[1 + a for a in axes], *[1 + a for a in rest])
    delta = delta.reshape(n_pairs, math.prod(site_dims), -1)  # [B, S_all, R]
    w = weight.view(len(weight), *shape).permute(0, *[1 + a for a in axes], *[1 + a for a in rest])
    w = w.reshape(len(weight), math.prod(site_dims), -1)  # [out, S_all, R]
    flat = torch.zeros(len(sites), dtype=torch.long, device=sites.device)
    for i, dim in enumerate(site_dims):
        flat = flat * dim + sites[:, i]
    per_chunk = max(1, (1 << 22) // (n_pairs * max(len(weight), delta.shape[-1])))
    logits, values = [], []
    for start in range(0, len(sites), per_chunk):
        idx = flat[start : start + per_chunk]
        # [s, B, R] @ [s, R, out] -> [s, B, out]: each site's contribution, for every pair at once.
        contrib = torch.bmm(delta[:, idx].transpose(0, 1), w[:, idx].permute(1, 2, 0))
        out_logits, out_value = finish((pre_corrupt.unsqueeze(0) + contrib).reshape(-1, len(weight)))
        logits.append(out_logits.view(len(idx), n_pairs, -1))
        values.append(out_value.view(len(idx), n_pairs))
    return torch.cat(logits), torch.cat(values)


def readout_applies(policy, hook: str, per: str) -> bool:
    """The transformer's last block reads out at token 0 only, so a patch at that block's input that changes one
    token (per pos or element) needs only that token's q, k, v and token 0's attention and MLP per site."""
    if not isinstance(policy, TransformerPolicy) or per not in ("pos", "element"):
        return False
    before_last = act_name(policy, "resid_post", -2) if n_layers(policy) > 1 else None
    return hook in (act_name(policy, "resid_pre", -1), before_last)


def _patched_readout(policy, axes, sites: Tensor, source: Tensor, corrupt_act: Tensor) -> tuple[Tensor, Tensor]:
    """Patched outputs through the last block, per site: token t's new q, k, v against the corrupted run's
    cached k, v elsewhere, then token 0's attention output, MLP, final norm and heads."""
    block = policy.blocks[-1]
    attn = block.attn
    n_pairs, n_pos, d_model = corrupt_act.shape
    heads, d_head = attn.n_heads, attn.d_head
    qkv = attn.qkv(block.ln1(corrupt_act)).view(n_pairs, n_pos, 3, heads, d_head)  # the corrupted run, once
    per_chunk = max(1, MAX_ROWS // n_pairs)
    logits, values = [], []
    for start in range(0, len(sites), per_chunk):
        chunk = sites[start : start + per_chunk]
        n, token = len(chunk), chunk[:, 0]
        new = source[:, token].transpose(0, 1)  # [s, B, d]: the patched token's residual
        if axes == (0, 1):  # element: one unit of that token
            unit = torch.arange(d_model, device=chunk.device) == chunk[:, 1, None]
            new = torch.where(unit[:, None], new, corrupt_act[:, token].transpose(0, 1))
        qkv_new = attn.qkv(block.ln1(new)).view(n, n_pairs, 3, heads, d_head)
        at_token = (torch.arange(n_pos, device=chunk.device) == token[:, None]).view(n, 1, n_pos, 1, 1)
        k = torch.where(at_token, qkv_new[:, :, None, 1], qkv[None, :, :, 1])  # [s, B, pos, head, d_head]
        v = torch.where(at_token, qkv_new[:, :, None, 2], qkv[None, :, :, 2])
        reads_new = (token == 0).view(n, 1, 1)
        q = torch.where(reads_new[..., None], qkv_new[:, :, 0], qkv[None, :, 0, 0])  # token 0's query [s, B, h, d]
        pattern = (torch.einsum("sbhd,sbphd->sbhp", q, k) / math.sqrt(d_head)).softmax(-1)
        z = torch.einsum("sbhp,sbphd->sbhd", pattern, v).reshape(n * n_pairs, d_model)
        resid = torch.where(reads_new, new, corrupt_act[None, :, 0]).reshape(n * n_pairs, d_model)
        mid = resid + attn.out(z)
        post = mid + block.mlp(block.ln2(mid))
        out_logits, out_value = policy._heads(policy.ln_final(post))
        logits.append(out_logits.view(n, n_pairs, -1))
        values.append(out_value.view(n, n_pairs))
    return torch.cat(logits), torch.cat(values)


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class PatchResult:
    """Outputs of every patched run: `logits [S, B, A]`, `value [S, B]` for sites `sites [S, len(axes)]`, beside the
    clean and corrupted runs' own outputs; `noise_*` the same sites patched from a different pair's corrupted run."""

    hook: str
    per: str
    axis_names: tuple[str, ...]
    sites: np.ndarray
    logits: Tensor
    value: Tensor
    clean_logits: Tensor
    clean_value: Tensor
    corrupt_logits: Tensor
    corrupt_value: Tensor
    method: str
    noise_logits: Tensor | None = None
    noise_value: Tensor | None = None

    def actions(self) -> tuple[Tensor, Tensor]:
        """(the clean run's action, the corrupted run's best action other than it), per pair."""
        clean_action = self.clean_logits.argmax(-1)
        other = self.corrupt_logits.scatter(-1, clean_action[:, None], float("-inf"))
        return clean_action, other.argmax(-1)

    def logit_diff(self, logits: Tensor) -> Tensor:
        clean_action, other = self.actions()
        shape = logits.shape[:-1]
        pick = logits.gather(-1, clean_action.expand(shape)[..., None])[..., 0]
        return pick - logits.gather(-1, other.expand(shape)[..., None])[..., 0]

    def metrics(self, source: str = "clean") -> dict[str, Tensor]:
        """Per-site, per-pair metrics [S, B] of the runs patched from `source` (clean | noise)."""
        logits, value = (self.logits, self.value) if source == "clean" else (self.noise_logits, self.noise_value)
        if logits is None:
            raise PatchError("this sweep ran without the noise baseline (noise=False).")
        clean_action, _ = self.actions()
        probs = logits.float().softmax(-1)
        return {
            "logit_diff": self.logit_diff(logits),
            "p_clean": probs.gather(-1, clean_action.expand(logits.shape[:-1])[..., None])[..., 0],
            "value_change": value - self.corrupt_value,
        }

    def table(self, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
        """Tidy: one row per site x source x metric: value (mean over pairs), ci_low, ci_high, n_pairs, and the
        clean and corrupted runs' own means of that metric."""
        n_pairs = len(self.clean_logits)
        weights = bootstrap_weights(n_pairs, n_boot, seed)
        clean_ld, corrupt_ld = self.logit_diff(self.clean_logits), self.logit_diff(self.corrupt_logits)
        gap = clean_ld - corrupt_ld
        refs = {
            "logit_diff": (clean_ld.mean(), corrupt_ld.mean()),
            "p_clean": (
                self.clean_logits.softmax(-1).max(-1).values.mean(),
                self.corrupt_logits.softmax(-1).gather(-1, self.actions()[0][:, None]).mean(),
            ),
            "value_change": (self.clean_value.mean() - self.corrupt_value.mean(), torch.tensor(0.0)),
            "normalised_effect": (torch.tensor(1.0), torch.tensor(0.0)),
        }
        frames = []
        for source in ("clean", "noise") if self.noise_logits is not None else ("clean",):
            metrics = self.metrics(source)
            stats = {name: mean_ci(values, weights, confidence) for name, values in metrics.items()}
            stats["normalised_effect"] = ratio_ci(metrics["logit_diff"] - corrupt_ld, gap, weights, confidence)
            for name in METRICS:
                value, low, high = (s.cpu().numpy() for s in stats[name])
                frame = pd.DataFrame(
                    {"hook": self.hook, "per": self.per, "site": [str(tuple(map(int, s))) for s in self.sites]}
                )
                for i, axis in enumerate(self.axis_names):
                    frame[axis] = self.sites[:, i]
                frame["source"], frame["metric"] = source, name
                frame["value"], frame["ci_low"], frame["ci_high"] = value, low, high
                frame["clean"], frame["corrupt"] = float(refs[name][0]), float(refs[name][1])
                frame["n_pairs"], frame["method"] = n_pairs, self.method
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def patch_sweep(
    policy,
    clean_obs,
    corrupt_obs,
    hook: str,
    per: str | None = None,
    sites=None,
    noise: bool = True,
    method: str = "auto",
    seed: int = 0,
) -> PatchResult:
    """Patch each site of `hook` from the clean run into the corrupted run, every pair at once.

    per: site granularity (see GRANULARITIES; None: cell for maps, pos for tokens, head for attention, unit for
    vectors). sites: a subset as index tuples (None: all). method: auto | linear | cut (see the module docstring).
    noise: also patch from a different pair's corrupted run (the baseline). seed: that pairing."""
    check_hook(policy, hook)
    if method not in METHODS:
        raise unknown_name("patching method", method, METHODS)
    clean, corrupt = check_pair_obs(policy, clean_obs, corrupt_obs)
    n_pairs = len(clean)
    (both_logits, both_value), cache = policy.run_with_cache(torch.cat([clean, corrupt]), names_filter=[hook])
    clean_logits, corrupt_logits = both_logits[:n_pairs], both_logits[n_pairs:]
    clean_value, corrupt_value = both_value[:n_pairs], both_value[n_pairs:]
    source, corrupt_act = cache[hook][:n_pairs], cache[hook][n_pairs:]
    shape = tuple(source.shape[1:])
    per, axes = site_axes(hook, shape, per)
    site_arr = check_sites(sites, shape, axes, hook)
    site_t = torch.as_tensor(site_arr, device=source.device)
    if method == "auto":
        method = "linear" if linear_successor(policy, hook) is not None else "cut"
        method = "readout" if readout_applies(policy, hook, per) else method
    elif method == "linear" and linear_successor(policy, hook) is None:
        raise PatchError(f"{hook} does not feed one linear layer directly; use method='cut' (or 'auto').")
    elif method == "readout" and not readout_applies(policy, hook, per):
        raise PatchError(f"the readout path takes the last block's input per pos or element, not {hook} per {per}.")

    def run(src: Tensor) -> tuple[Tensor, Tensor]:
        if method == "linear":
            return _patched_linear(policy, hook, axes, site_t, src, corrupt_act)
        if method == "readout":
            return _patched_readout(policy, axes, site_t, src, corrupt_act)
        return _patched_cut(policy, corrupt, hook, axes, site_t, src)

    logits, value = run(source)
    noise_logits = noise_value = None
    if noise and n_pairs > 1:
        noise_logits, noise_value = run(corrupt_act[derangement(n_pairs, seed)])
    kind = hook_kind(hook, shape)
    names = tuple(AXIS_NAMES[kind][a] for a in axes)
    return PatchResult(
        hook,
        per,
        names,
        site_arr,
        logits,
        value,
        clean_logits,
        clean_value,
        corrupt_logits,
        corrupt_value,
        method,
        noise_logits,
        noise_value,
    )


def default_patch_hooks(policy) -> list[str]:
    """Every conv map and the fc layer of a CNN; every block's residual output and heads of a transformer; for an
    SB3 policy the last conv map (NatureCNN), the features and the policy net's output."""
    arch = getattr(policy, "arch", None)
    if arch == "sb3":
        shapes = hook_shapes(policy)
        maps = [name for name, shape in shapes.items() if len(shape) == 3 and name != "hook_obs"]
        return maps[-1:] + [name for name in ("features_extractor", "mlp_extractor.policy_net") if name in shapes]
    if arch not in ("cnn", "transformer"):
        raise PatchError(f"no default hooks to patch for a {arch or type(policy).__name__} policy: name them.")
    roles = ("conv", "fc") if arch == "cnn" else ("resid_post", "z")
    return with_roles(policy.hook_dict, *roles, arch=arch)


def patch(
    policy, pairs, hooks: Sequence[str], per: str | None = None, noise: bool = True, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """`patch_sweep` over several hooks of one set of `ContrastPairs`: one tidy table (with the factor)."""
    if isinstance(hooks, str):
        hooks = [hooks]
    for hook in hooks:
        check_hook(policy, hook)
    tables = []
    for hook in hooks:
        result = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, hook, per=per, noise=noise, seed=seed)
        tables.append(result.table(n_boot=n_boot, seed=seed))
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "factor", pairs.factor)
    return table


def patch_bytes(policy, n_pairs: int, hooks: Sequence[str], per: str | None = None, n_boot: int = 1000) -> int:
    """Bytes `patch(policy, contrast_pairs(..., n_pairs), hooks)` holds at its peak, roughly and on the high side:
    per pair, the pair's rooms and pixels (uint8) and their float32 copies, the forward passes of both runs and of
    one patched batch (taken as 8 float32 values per pixel value, as `evaluate.rollout_bytes`), the patched
    outputs of every site of the widest hook (clean and noise sources) and the bootstrap's weights."""
    obs = math.prod(policy.obs_shape)
    sites = 1
    if hooks:
        for hook, shape in activation_shapes(policy, hooks).items():
            _, axes = site_axes(hook, shape, per)
            sites = max(sites, math.prod(shape[a] for a in axes))
    n_out = getattr(policy, "n_actions", 8) + 1
    per_pair = 2 * obs + 2 * 4 * obs + 3 * 4 * 8 * obs + 2 * 4 * sites * n_out + 4 * n_boot + 512
    return int(n_pairs) * per_pair


def check_patch_memory(policy, n_pairs: int, hooks: Sequence[str], per: str | None = None,
                       option: str = "--pairs") -> None:  # fmt: skip
    """Refuse, before any pair is built, `n_pairs` contrast pairs (and patching `hooks`) that cannot fit in memory."""
    need = patch_bytes(policy, n_pairs, hooks, per)
    check_memory(need, f"{int(n_pairs):,} contrast pairs", option, per_unit=need / max(int(n_pairs), 1))
