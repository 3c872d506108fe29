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
`generic_activation_patch` loop), in one of these exact ways:

- *cut*: the batch is gathered, one row per (site, pair), at the last hook before the target through which
  everything flows (`hook_obs`, `conv.i.hook_out`, `fc.hook_out`, `blocks.l.hook_resid_*`), so the prefix before it
  runs once, and at the target each row takes its site from the clean run (`torch.where(mask, clean, corrupt)`).
- *linear*: when the hook feeds straight into a linear layer (the CNN's last conv into `fc`; `fc.hook_out` into the
  heads), the patched pre-activation is the corrupted one plus the weight times the site's clean-minus-corrupt
  difference. Sites partition the activation, so all of them cost one matmul over the pairs; only the small rest
  of the network runs per site. Equal to the cut path up to float rounding (~1e-7).
- *readout*: the transformer reads its action and value at token 0, so a patch of one token (per pos or element)
  at the last block's input needs, per site, only that token's new q, k, v (the corrupted run's are cached for the
  rest) and token 0's attention, MLP, final norm and heads (~1e-6 from the full forward).
- *incremental*: from the hook on, only what the patch changes is recomputed, from the corrupted run's activations
  at every hook. In the transformer, a patch that changes one token is carried as that token alone until
  attention mixes it in (a changed key or value changes every query, a changed query or pattern row only its own);
  from the last block's attention on only token 0 is computed; a unit of a hook that feeds a linear layer (ln1,
  ln2, the MLP's hook_pre and hook_post) is a rank-one update of that layer's cached output. In a CNN, a patch of
  one cell of the map before the last conv changes that conv only at the 3x3 cells around it, and fc by its
  weight times their change. ~1e-6 from the full forward.

Cut and incremental run only the (site, pair) rows whose patch changes something the outputs can depend on: where
the site's clean and corrupted values are equal (or differ only where the outputs cannot see, as tokens other than
the readout after the last block's attention), the patched run *is* the corrupted run. The clean and corrupted runs
themselves do not depend on the hook: `patch_runs` makes them once for sweeps over several hooks or granularities.

Metrics per site and pair: `logit_diff` (the clean run's action logit minus the corrupted run's best other action),
`p_clean` (probability of the clean action), `value_change` (patched minus corrupted value), and per site
`normalised_effect` = mean(patched - corrupted logit diff) / mean(clean - corrupted): 0 is the corrupted run, 1 the
clean one. Intervals are percentile bootstraps over pairs. The noise baseline patches each pair's site from the
corrupted run of a *different* pair (another room, the factor equally absent): how far any in-distribution content
at that site moves the metrics. A site carries the factor where the clean patch's effect stands clear of it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
METHODS = ("auto", "linear", "readout", "incremental", "cut")
METRICS = ("logit_diff", "p_clean", "value_change", "normalised_effect")
# Roles of the hooks through which all later computation flows: expanding the batch there is exact for anything
# after them.
CUT_ROLES = ("obs", "stem", "conv", "fc", "resid_pre", "resid_mid", "resid_post", "ln_final")
MAX_ROWS = 4096  # rows per batched forward (sites x pairs); bounds memory, big enough to amortise launches
INCREMENTAL_ROWS = 512  # rows per chunk of the incremental path: its tensors stay in cache


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


# ---------------------------------------------------------------------------------------------- shared runs
@dataclass
class PatchRuns:
    """The clean and the corrupted run of one set of pairs: their outputs, the clean run's activations at the hooks
    to patch (the sources) and the corrupted run's at every hook (what the incremental method reads downstream of a
    patch, and the noise baseline's sources). It does not depend on the hook or the granularity, so sweeps over
    several of them on the same pairs run it once (`patch_runs`, then `patch_sweep(..., runs=runs)`)."""

    policy: object
    clean_obs: Tensor
    corrupt_obs: Tensor
    clean_logits: Tensor
    clean_value: Tensor
    corrupt_logits: Tensor
    corrupt_value: Tensor
    clean: dict[str, Tensor]
    corrupt: dict[str, Tensor]

    def check(self, policy, clean_obs, corrupt_obs) -> None:
        """Refuse runs made for another policy or other pairs: their activations would be patched in silently."""
        clean, corrupt = check_pair_obs(policy, clean_obs, corrupt_obs)
        if self.policy is not policy:
            raise PatchError("these patch runs were made for another policy: make them with patch_runs(policy, ...).")
        same = clean.shape == self.clean_obs.shape and corrupt.shape == self.corrupt_obs.shape
        if not (same and torch.equal(clean, self.clean_obs) and torch.equal(corrupt, self.corrupt_obs)):
            raise PatchError("these patch runs were made for other observations: make them from the pairs patched.")


@torch.no_grad()
def patch_runs(policy, clean_obs, corrupt_obs, hooks: Sequence[str] | None = None) -> PatchRuns:
    """Run the clean and the corrupted observations once, caching the clean run at `hooks` (None: every hook) and
    the corrupted run at every hook; one batch for both."""
    clean, corrupt = check_pair_obs(policy, clean_obs, corrupt_obs)
    hooks = list(policy.hook_dict) if hooks is None else list(hooks)
    for hook in hooks:
        check_hook(policy, hook)
    n_pairs = len(clean)
    (logits, value), cache = policy.run_with_cache(torch.cat([clean, corrupt]))
    # Copies of the halves, so that the activations not kept free their memory.
    return PatchRuns(
        policy,
        clean,
        corrupt,
        logits[:n_pairs].clone(),
        value[:n_pairs].clone(),
        logits[n_pairs:].clone(),
        value[n_pairs:].clone(),
        {hook: cache[hook][:n_pairs].clone() for hook in dict.fromkeys(hooks)},
        {hook: cache[hook][n_pairs:].clone() for hook in policy.hook_dict},
    )


# ---------------------------------------------------------------------------------------------- engines
_ORDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _execution_order(policy) -> list[str]:
    """Hook names in the order a forward reaches them; one dummy forward per policy (the order is the
    architecture's, not the weights')."""
    order = _ORDERS.get(policy)
    if order is None:
        order = []
        obs = torch.zeros((1, *policy.obs_shape), dtype=torch.uint8, device=device_of(policy))
        hooks = [(name, lambda act, hook: order.append(hook.name)) for name in policy.hook_dict]
        with torch.no_grad():
            policy.run_with_hooks(obs, fwd_hooks=hooks)
        _ORDERS[policy] = order
    return order


def cut_hook(policy, hook: str) -> str:
    """The last hook at or before `hook` in execution order through which all later computation flows."""
    order = _execution_order(policy)
    before = order[: order.index(hook) + 1] if hook in order else order[:1]
    return next((name for name in reversed(before) if with_roles([name], *CUT_ROLES)), "hook_obs")


def active_rows(shape: Sequence[int], axes: tuple[int, ...], sites: Tensor, diff: Tensor) -> Tensor:
    """[S, B] bool: whether site s of pair b holds any of `diff [B, *shape]`, where the source differs from the
    corrupted run. Where it does not, the patched run *is* the corrupted run, so the row engines leave it out and
    take the corrupted run's outputs."""
    rest = [a for a in range(len(shape)) if a not in axes]
    dims = [shape[a] for a in axes]
    diff = diff.permute(0, *[1 + a for a in axes], *[1 + a for a in rest]).reshape(len(diff), math.prod(dims), -1)
    return diff.any(-1)[:, _flat_sites(sites, dims)].T


def _flat_sites(sites: Tensor, dims: Sequence[int]) -> Tensor:
    flat = torch.zeros(len(sites), dtype=torch.long, device=sites.device)
    for i, dim in enumerate(dims):
        flat = flat * dim + sites[:, i]
    return flat


def _patched_cut(policy, corrupt: Tensor, hook: str, axes, sites: Tensor, source: Tensor, rows_s: Tensor,
                 rows_b: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Patched outputs of rows (site rows_s, pair rows_b): one forward per chunk of rows, the batch gathered at the
    cut hook (its prefix runs once, on the corrupted pairs) and each row's site put in from the source at `hook`."""
    shape = tuple(source.shape[1:])
    cut = cut_hook(policy, hook)
    logits, values = [], []
    for start in range(0, len(rows_s), MAX_ROWS):
        pick = rows_b[start : start + MAX_ROWS]
        mask = site_masks(shape, axes, sites[rows_s[start : start + MAX_ROWS]])  # [r, *shape]
        src = source.index_select(0, pick)

        def take(act, hook, pick=pick):
            return act.index_select(0, pick)

        def put(act, hook, mask=mask, src=src):
            return torch.where(mask, src, act)

        hooks = (
            [(hook, lambda act, hook, t=take, p=put: p(t(act, hook), hook))]
            if cut == hook
            else [(cut, take), (hook, put)]
        )
        out_logits, out_value = policy.run_with_hooks(corrupt, fwd_hooks=hooks)
        logits.append(out_logits)
        values.append(out_value)
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
    flat = _flat_sites(sites, site_dims)
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


# ---------------------------------------------------------------------------------------------- incremental
# A transformer block's stages in execution order, and the hook (leaf name) at each; q, k and v are one stage.
STAGES = ("resid_pre", "ln1", "qkv", "scores", "pattern", "z", "attn_out", "resid_mid", "ln2", "mlp_pre", "mlp_post",
          "mlp_out", "resid_post")  # fmt: skip
STAGE_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "ln1": "ln1.hook_normalized",
    "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "ln2": "ln2.hook_normalized",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
LEAF_STAGES = {leaf: stage for stage, leaf in STAGE_HOOKS.items()} | {f"attn.hook_{c}": "qkv" for c in "qkv"}
# Unit sites of these hooks feed a linear layer: the patch is a rank-one update of its cached output.
RANK_ONE = {"ln1": "qkv", "ln2": "mlp_pre", "mlp_pre": "resid_post", "mlp_post": "resid_post"}
OUTPUT_HOOKS = ("hook_logits", "hook_value")


class _Tok(NamedTuple):
    """Token values of patched rows: `val [R, pos, ...]` of every token (tok None), or `val [R, ...]` of one token
    per row, `tok [R]`; the other tokens are the corrupted run's."""

    tok: Tensor | None
    val: Tensor


def _at(act: Tensor, rows: Tensor, tok: Tensor) -> Tensor:
    """act[rows, tok] for act [B, pos, ...], as one gather."""
    return act.flatten(0, 1).index_select(0, rows * act.shape[1] + tok)


class _Rows:
    """The corrupted run's activations for a chunk of patched rows (pairs `b [R]`), and the values of a patched
    state at a set of tokens."""

    def __init__(self, corrupt: dict[str, Tensor], b: Tensor):
        self.corrupt, self.b = corrupt, b
        self.index = torch.arange(len(b), device=b.device)
        self.zeros = torch.zeros_like(b)

    def values(self, state: _Tok | None, hook: str, tok: Tensor | None) -> Tensor:
        """`state` (None: unchanged) at every token (tok None) or at one token per row."""
        if state is None:
            return self.all(hook) if tok is None else self.at(hook, tok)
        if tok is None:
            if state.tok is None:
                return state.val
            out = self.all(hook)
            out[self.index, state.tok] = state.val
            return out
        if state.tok is None:
            return state.val[self.index, tok]
        same = (state.tok == tok).view(-1, *[1] * (state.val.ndim - 1))
        return torch.where(same, state.val, self.at(hook, tok))

    def all(self, hook: str) -> Tensor:
        """The corrupted run at `hook`, per row."""
        return self.corrupt[hook].index_select(0, self.b)

    def at(self, hook: str, tok: Tensor) -> Tensor:
        """The corrupted run at `hook`, at one token per row (the token axis first)."""
        return _at(self.corrupt[hook], self.b, tok)

    def first(self, state: _Tok, hook: str) -> _Tok:
        """The state at the readout token only."""
        return _Tok(self.zeros, self.values(state, hook, self.zeros))


def incremental_applies(policy, hook: str) -> bool:
    """The transformer at any hook after the observation; a CNN at the conv map before its last conv; either policy
    at its outputs."""
    if hook in OUTPUT_HOOKS:
        return isinstance(policy, TransformerPolicy | CNNPolicy)
    if isinstance(policy, CNNPolicy):
        return n_layers(policy) > 1 and hook == act_name(policy, "conv", -2)
    return isinstance(policy, TransformerPolicy) and hook != "hook_obs"


def _place(hook: str) -> tuple[str, int | None, str | None]:
    """(where, block, stage) of a transformer hook: where is stem | embed | pos_embed | block | ln_final | output."""
    if hook.startswith("blocks."):
        _, layer, leaf = hook.split(".", 2)
        return "block", int(layer), LEAF_STAGES[leaf]
    where = {"stem.hook_out": "stem", "hook_embed": "embed", "hook_pos_embed": "pos_embed"}.get(hook)
    if where is None:
        where = "ln_final" if hook == "ln_final.hook_normalized" else "output"
    return where, None, None


def relevant_part(policy, hook: str, shape: Sequence[int]) -> Tensor | None:
    """[1, *shape] bool: the part of the activation the outputs can depend on, where that is not all of it. The
    transformer reads out at token 0, so from the last block's attention on only token 0 counts (query 0 for q,
    the scores and the pattern)."""
    if not isinstance(policy, TransformerPolicy):
        return None
    where, layer, stage = _place(hook)
    if where == "ln_final":
        axis = 0
    elif where == "block" and layer == len(policy.blocks) - 1 and STAGES.index(stage) >= STAGES.index("qkv"):
        if stage == "qkv" and not hook.endswith("hook_q"):
            return None
        axis = 1 if stage in ("scores", "pattern") else 0
    else:
        return None
    mask = torch.zeros((1, *shape), dtype=torch.bool, device=device_of(policy))
    mask.select(1 + axis, 0).fill_(True)
    return mask


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of queries q [R, pos, head, d] (or one per row, [R, head, d]) over k, v [R, pos, head, d]: the fused
    kernel the policy's own forward takes when no pattern is hooked."""
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if q.ndim == 3:
        return F.scaled_dot_product_attention(q[:, :, None], k, v)[:, :, 0]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v).transpose(1, 2)


def _run_block(policy, layer: int, stage: str, state, rows: _Rows) -> _Tok:
    """Carry a patched state at `stage` of block `layer` (a _Tok; at 'qkv' a dict q/k/v -> _Tok) through the rest of
    the block: the state of its resid_post. Before attention only the tokens the patch changed are computed; after
    it, only the queries whose output changed (every one once a key or value changed, none but token 0 in the last
    block)."""
    block = policy.blocks[layer]
    attn = block.attn
    last = layer == len(policy.blocks) - 1
    prefix = f"blocks.{layer}."
    at = STAGES.index(stage)
    if last and at >= STAGES.index("z"):
        state = rows.first(state, prefix + STAGE_HOOKS[stage])
    z = attn_out = resid_mid = None
    if at <= STAGES.index("qkv"):
        if stage == "qkv":
            qkv = state
        else:
            x = state if stage == "ln1" else _Tok(state.tok, block.ln1(state.val))
            qkv = _qkv(attn, x, last, rows)
        changed_kv = "k" in qkv or "v" in qkv
        tok = rows.zeros if last else (None if changed_kv else qkv["q"].tok)
        q = rows.values(qkv.get("q"), prefix + "attn.hook_q", tok)
        k = rows.values(qkv.get("k"), prefix + "attn.hook_k", None)
        v = rows.values(qkv.get("v"), prefix + "attn.hook_v", None)
        z = _Tok(tok, _attention(q, k, v))
    elif stage in ("scores", "pattern"):
        if last:
            state = _Tok(rows.zeros, _pattern_row(state, rows, prefix + STAGE_HOOKS[stage], rows.zeros))
        pattern = state.val.softmax(-1) if stage == "scores" else state.val
        v = rows.values(None, prefix + "attn.hook_v", None).transpose(1, 2)  # [R, head, pos, d_head]
        z = (pattern @ v).transpose(1, 2) if state.tok is None else (pattern[:, :, None] @ v)[:, :, 0]
        z = _Tok(state.tok, z)
    elif stage == "z":
        z = state
    if z is not None:
        attn_out = _Tok(z.tok, attn.out(z.val.flatten(-2)))
    elif stage == "attn_out":
        attn_out = state
    if attn_out is not None:
        base = rows.values(state if stage == "resid_pre" else None, prefix + "hook_resid_pre", attn_out.tok)
        resid_mid = _Tok(attn_out.tok, base + attn_out.val)
    elif stage == "resid_mid":
        resid_mid = state
    if resid_mid is not None:
        state, stage = _Tok(resid_mid.tok, block.ln2(resid_mid.val)), "ln2"
    if stage == "ln2":  # W_in's output is new here, so the ReLU may overwrite it
        state, stage = _Tok(state.tok, F.relu(block.mlp.W_in(state.val), inplace=True)), "mlp_post"
    if stage == "mlp_pre":
        state, stage = _Tok(state.tok, F.relu(state.val)), "mlp_post"
    if stage == "mlp_post":
        state, stage = _Tok(state.tok, block.mlp.W_out(state.val)), "mlp_out"
    if stage == "mlp_out":
        base = rows.values(resid_mid, prefix + "hook_resid_mid", state.tok)
        state = _Tok(state.tok, base + state.val)
    return state


def _qkv(attn, x: _Tok, last: bool, rows: _Rows) -> dict[str, _Tok]:
    """q, k, v of the tokens in `x` (the normalised residual); in the last block with every token changed, the
    query of token 0 only."""
    heads, d_head = attn.n_heads, attn.d_head
    if last and x.tok is None:
        d_model = x.val.shape[-1]
        weight, bias = attn.qkv.weight, attn.qkv.bias
        kv = F.linear(x.val, weight[d_model:], bias[d_model:]).view(*x.val.shape[:-1], 2, heads, d_head)
        q = F.linear(x.val[:, 0], weight[:d_model], bias[:d_model]).view(-1, heads, d_head)
        return {"q": _Tok(rows.zeros, q), "k": _Tok(None, kv[..., 0, :, :]), "v": _Tok(None, kv[..., 1, :, :])}
    out = attn.qkv(x.val).view(*x.val.shape[:-1], 3, heads, d_head)
    return {c: _Tok(x.tok, out[..., i, :, :]) for i, c in enumerate("qkv")}


def _pattern_row(state: _Tok, rows: _Rows, hook: str, tok: Tensor) -> Tensor:
    """Rows `tok` (one query per row) of a patched scores or pattern state [R, head, dest, src]."""
    if state.tok is None:
        return state.val[rows.index, :, tok]
    same = (state.tok == tok).view(-1, 1, 1)
    return torch.where(same, state.val, rows.corrupt[hook][rows.b, :, tok])


def _transformer_from(policy, where: str, layer: int | None, stage: str | None, state, rows: _Rows):
    """Outputs (logits, value) of the patched rows, from a state at a place of the transformer (see `_place`)."""
    if where == "output":
        return state
    if where == "ln_final":
        x = state
    else:
        if where != "block":
            layer, stage = 0, "resid_pre"
        for i in range(layer, len(policy.blocks)):
            state = _run_block(policy, i, stage, state, rows)
            stage = "resid_pre"
        x = _Tok(state.tok, policy.ln_final(state.val))
    x = rows.first(x, "ln_final.hook_normalized").val
    return policy._heads(x)


def _token_groups(source: Tensor, corrupt: Tensor, axes, sites: Tensor, axis: int, b: Tensor,
                  changed: Tensor | None) -> list[tuple[Tensor | None, _Tok]]:  # fmt: skip
    """The patched rows as token states along `axis` of the activation: (rows of the chunk or None for all, state).
    A row whose site changes one token (`changed [R, pos]`, or the site is at one token) carries that token's
    patched slice; one that changes several carries the whole patched activation."""
    shape = tuple(source.shape[1:])
    keep = [i for i, a in enumerate(axes) if a != axis]
    inner_axes = tuple(a - (a > axis) for a in axes if a != axis)
    inner_shape = shape[:axis] + shape[axis + 1 :]
    if axis in axes:
        tok, one = sites[:, axes.index(axis)], None
    else:
        tok, one = changed.int().argmax(1), changed.sum(1) <= 1

    def take(t: Tensor, rows: Tensor, toks: Tensor) -> Tensor:
        return _at(t, rows, toks) if axis == 0 else t[rows, :, toks]

    def one_state(i):
        rows, toks, where = (b, tok, sites) if i is None else (b[i], tok[i], sites[i])
        if not inner_axes:  # the site is the token's whole slice
            return _Tok(toks, take(source, rows, toks))
        mask = site_masks(inner_shape, inner_axes, where[:, keep])
        return _Tok(toks, torch.where(mask, take(source, rows, toks), take(corrupt, rows, toks)))

    def all_state(i):
        rows, where = b[i], sites[i]
        patched = torch.where(
            site_masks(shape, axes, where), source.index_select(0, rows), corrupt.index_select(0, rows)
        )
        return _Tok(None, patched)

    if one is None or bool(one.all()):
        return [(None, one_state(None))]
    groups = [(one.nonzero()[:, 0], one_state), ((~one).nonzero()[:, 0], all_state)]
    return [(i, make(i)) for i, make in groups if len(i)]


def _token_diff(diff: Tensor, axes, axis: int) -> Tensor:
    """[B, sites, pos]: the tokens at which each site's slice differs, per pair."""
    shape = diff.shape[1:]
    rest = [a for a in range(len(shape)) if a not in axes and a != axis]
    n_sites = math.prod(shape[a] for a in axes)
    diff = diff.permute(0, *[1 + a for a in axes], 1 + axis, *[1 + a for a in rest])
    return diff.reshape(len(diff), n_sites, shape[axis], -1).any(-1)


def _rank_one(policy, hook: str, layer: int, stage: str, unit: Tensor, source: Tensor, rows: _Rows):
    """Unit sites of a hook that feeds a linear layer: the layer's corrupted output plus the unit's change times its
    column of the weight (the MLP's ReLU acts unit by unit, so a unit of hook_pre changes one unit of hook_post)."""
    block = policy.blocks[layer]
    prefix = f"blocks.{layer}."
    b = rows.b
    last = layer == len(policy.blocks) - 1
    tokens = slice(0, 1) if last and stage != "ln1" else slice(None)  # after attention, the last block reads token 0
    new = source[b, tokens, unit] if stage != "mlp_pre" else F.relu(source[b, tokens, unit])
    old = rows.corrupt[prefix + "mlp.hook_post" if stage == "mlp_pre" else hook][b, tokens, unit]
    delta = (new - old)[..., None]  # [R, pos, 1]
    if stage == "ln1":
        d_model = block.attn.qkv.in_features
        columns = block.attn.qkv.weight[:, unit].T  # [R, 3 d_model]
        heads, d_head = block.attn.n_heads, block.attn.d_head
        state = {}
        for i, c in enumerate("qkv"):
            col = columns[:, i * d_model : (i + 1) * d_model].view(-1, heads, d_head)
            if c == "q" and last:  # the last block's query is token 0's only
                q = rows.at(prefix + "attn.hook_q", rows.zeros)
                state[c] = _Tok(rows.zeros, torch.addcmul(q, delta[:, 0, None], col))
            else:
                state[c] = _Tok(
                    None, torch.addcmul(rows.all(prefix + f"attn.hook_{c}"), delta[..., None], col[:, None])
                )
        return state
    # ln2 feeds W_in (-> hook_pre); a unit of hook_pre or hook_post feeds W_out, whose output the residual stream
    # adds (-> hook_resid_post: the corrupted resid_post plus the change of mlp_out).
    weight = block.mlp.W_in.weight if stage == "ln2" else block.mlp.W_out.weight
    target = prefix + ("mlp.hook_pre" if stage == "ln2" else "hook_resid_post")
    base = rows.at(target, rows.zeros)[:, None] if last else rows.all(target)
    return _Tok(None, torch.addcmul(base, delta, weight[:, unit].T[:, None]))


def _patch_layout(policy, act: Tensor) -> Tensor:
    """A stem map [B, C, Y, X] as the patch embedding reads it: [B, patch, C, size, size], patches row-major."""
    size = policy.patch_embed.kernel_size[0]
    n, c, y, x = act.shape
    return act.view(n, c, y // size, size, x // size, size).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c, size, size)


def _patch_sites(policy, shape: Sequence[int], axes, sites: Tensor) -> tuple[tuple[int, ...], Tensor]:
    """Sites of a stem map [C, Y, X] in `_patch_layout` [patch, C, size, size]: a cell is (patch, row, col)."""
    size = policy.patch_embed.kernel_size[0]
    if 1 not in axes:  # all, or per channel
        return tuple(a + 1 for a in axes), sites
    y, x = sites[:, axes.index(1)], sites[:, axes.index(2)]
    patch = (y // size) * (shape[2] // size) + x // size
    cols = [patch] + ([sites[:, 0]] if 0 in axes else []) + [y % size, x % size]
    return (0, *((1,) if 0 in axes else ()), 2, 3), torch.stack(cols, dim=1)


def _embedded(policy, where: str, state: _Tok, rows: _Rows) -> _Tok:
    """The residual stream entering the first block from a patched stem (in patch layout), embedding or position
    embedding state: token 0 is the readout token, then one per patch; the stream is embedding + position."""
    if where == "stem":
        conv = policy.patch_embed
        val = F.linear(state.val.flatten(-3), conv.weight.view(len(conv.weight), -1), conv.bias)
        if state.tok is None:
            val = torch.cat([rows.values(None, "hook_embed", None)[:, :1], val], dim=1)
        state, where = _Tok(None if state.tok is None else state.tok + 1, val), "embed"
    other = rows.values(None, "hook_pos_embed" if where == "embed" else "hook_embed", state.tok)
    return _Tok(state.tok, state.val + other if where == "embed" else other + state.val)


def _patched_incremental(policy, hook: str, axes, sites: Tensor, source: Tensor, corrupt: dict[str, Tensor],
                         diff: Tensor, rows_s: Tensor, rows_b: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Patched outputs of rows (site rows_s, pair rows_b), recomputing from the hook on only what the patch changes
    (see the module docstring), from the corrupted run's cached activations. `diff [B, *shape]`: where the source
    differs from the corrupted run in a way the outputs can see."""
    shape = tuple(source.shape[1:])
    kind = hook_kind(hook, shape)
    where, layer, stage = _place(hook)
    corrupt_act = corrupt[hook]
    axis = {"tokens": 0, "heads": 0, "pattern": 1}.get(kind)
    if where == "stem":  # the patch embedding's tokens are the stem's patches
        source, corrupt_act, diff = (_patch_layout(policy, t) for t in (source, corrupt_act, diff))
        axes, sites = _patch_sites(policy, shape, axes, sites)
        axis = 0
    rank_one = kind == "tokens" and axes == (1,) and stage in RANK_ONE
    token_diff = flat = None
    if axis is not None and axis not in axes and not rank_one:
        token_diff = _token_diff(diff, axes, axis)
        flat = _flat_sites(sites, [source.shape[1 + a] for a in axes])
    run_stage = RANK_ONE[stage] if rank_one else stage
    logits, values = [], []
    for start in range(0, len(rows_s), INCREMENTAL_ROWS):
        chunk = rows_s[start : start + INCREMENTAL_ROWS]
        rows = _Rows(corrupt, rows_b[start : start + INCREMENTAL_ROWS])
        if rank_one:
            groups = [(None, _rank_one(policy, hook, layer, stage, sites[chunk, 0], source, rows))]
        elif where == "output":
            new = torch.where(site_masks(shape, axes, sites[chunk]), source[rows.b], corrupt_act[rows.b])
            logits.append(new if hook == "hook_logits" else corrupt["hook_logits"][rows.b])
            values.append(new if hook == "hook_value" else corrupt["hook_value"][rows.b])
            continue
        else:
            changed = None if token_diff is None else token_diff[rows.b, flat[chunk]]
            groups = _token_groups(source, corrupt_act, axes, sites[chunk], axis, rows.b, changed)
        out_logits = torch.empty((len(rows.b), policy.n_actions), device=source.device)
        out_value = torch.empty(len(rows.b), device=source.device)
        for i, state in groups:
            sub = rows if i is None else _Rows(corrupt, rows.b[i])
            if where in ("stem", "embed", "pos_embed"):
                state = _embedded(policy, where, state, sub)
            elif stage == "qkv":
                state = {hook[-1]: state}
            part = _transformer_from(policy, where, layer, run_stage, state, sub)
            out_logits[slice(None) if i is None else i], out_value[slice(None) if i is None else i] = part
        logits.append(out_logits)
        values.append(out_value)
    return torch.cat(logits), torch.cat(values)


def _patched_conv_incremental(policy, hook: str, axes, sites: Tensor, source: Tensor, corrupt: dict[str, Tensor],
                              diff: Tensor, rows_s: Tensor, rows_b: Tensor, corrupt_obs: Tensor):  # fmt: skip
    """Patched outputs of rows of a CNN's conv map before its last conv (3x3, padding 1). A row whose site changes
    one cell (y, x) changes the last conv's pre-activation only at the 3x3 cells around it, by the kernel times the
    cell's change: those nine cells go through the ReLU, and their change of the map through fc (the corrupted fc
    pre-activation plus fc's weight times it). Rows that change several cells take the plain batched forward."""
    conv, fc = policy.conv[-1], policy.fc
    act = corrupt[hook]  # [B, C, H, W]
    n_pairs, channels, height, width = act.shape
    # The site axes over [C, cell] (cells flattened row-major), the cell as the token axis.
    flat_axes = tuple(dict.fromkeys(min(a, 1) for a in axes))
    cols = [sites[:, axes.index(0)]] if 0 in axes else []
    if 1 in axes:
        cols.append(sites[:, axes.index(1)] * width + sites[:, axes.index(2)])
    flat_sites = torch.stack(cols, dim=1) if cols else sites
    src, old = source.flatten(2), act.flatten(2)
    token_diff = None if 1 in flat_axes else _token_diff(diff.flatten(2), flat_axes, 1)
    flat = _flat_sites(flat_sites, [src.shape[1 + a] for a in flat_axes])
    # The corrupted run's last-conv and fc pre-activations (not hooked).
    pre = F.conv2d(act, conv.weight, conv.bias, padding=1)
    post = corrupt[act_name(policy, "conv", -1)]
    fc_pre = F.linear(post.flatten(1), fc.weight, fc.bias)
    fc_columns = fc.weight.T.contiguous()  # [C * H * W, hidden]: fc's weight per unit of the last map
    kernel = conv.weight.flip(2, 3).permute(2, 3, 0, 1)  # [dy, dx, out, in]: offset (dy, dx) from the changed cell
    offsets = torch.arange(-1, 2, device=act.device)
    out_units = torch.arange(len(conv.weight), device=act.device) * height * width
    logits = torch.empty((len(rows_s), policy.n_actions), device=act.device)
    value = torch.empty(len(rows_s), device=act.device)
    for start in range(0, len(rows_s), MAX_ROWS):
        chunk = slice(start, start + MAX_ROWS)
        b, row_sites = rows_b[chunk], flat_sites[rows_s[chunk]]
        if 1 in flat_axes:
            cell, one = row_sites[:, flat_axes.index(1)], torch.ones_like(b, dtype=torch.bool)
        else:
            changed = token_diff[b, flat[rows_s[chunk]]]  # [r, cells]
            cell, one = changed.int().argmax(1), changed.sum(1) <= 1
        many = (~one).nonzero()[:, 0]
        if len(many):
            index = start + many
            logits[index], value[index] = _patched_cut(
                policy, corrupt_obs, hook, axes, sites, source, rows_s[index], rows_b[index]
            )
        keep = one.nonzero()[:, 0]
        if not len(keep):
            continue
        b, cell, row_sites = b[keep], cell[keep], row_sites[keep]
        new = _at(src.transpose(1, 2), b, cell)  # [r, C]: the cell's channels, from the source
        before = _at(old.transpose(1, 2), b, cell)
        if 0 in flat_axes:  # one channel of the cell
            channel = torch.arange(channels, device=act.device) == row_sites[:, flat_axes.index(0), None]
            new = torch.where(channel, new, before)
        change = torch.einsum("abod,rd->rabo", kernel, new - before)  # [r, 3, 3, out]
        ys, xs = cell[:, None] // width + offsets, cell[:, None] % width + offsets  # the 3x3 window's rows, cols
        inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
        ys, xs = ys.clamp(0, height - 1)[:, :, None], xs.clamp(0, width - 1)[:, None, :]  # off the map: no change
        pair = b[:, None, None]
        delta = torch.where(inside[..., None], F.relu(pre[pair, :, ys, xs] + change) - post[pair, :, ys, xs], 0.0)
        # fc's pre-activation moves by its weight times the window's change: a weighted sum of its columns.
        units = (ys * width + xs)[..., None] + out_units  # [r, 3, 3, out]
        moved = F.embedding_bag(units.flatten(1), fc_columns, per_sample_weights=delta.flatten(1), mode="sum")
        out = fc_pre.index_select(0, b) + moved
        index = start + keep
        logits[index], value[index] = policy._heads(fc.hook_out(F.relu(out)))
    return logits, value


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
    runs: PatchRuns | None = None,
) -> PatchResult:
    """Patch each site of `hook` from the clean run into the corrupted run, every pair at once.

    per: site granularity (see GRANULARITIES; None: cell for maps, pos for tokens, head for attention, unit for
    vectors). sites: a subset as index tuples (None: all). method: auto | linear | readout | incremental | cut (see
    the module docstring). noise: also patch from a different pair's corrupted run (the baseline). seed: that
    pairing. runs: the pairs' clean and corrupted runs from `patch_runs`, to share them between sweeps over
    several hooks or granularities (None: run them here)."""
    check_hook(policy, hook)
    if method not in METHODS:
        raise unknown_name("patching method", method, METHODS)
    if runs is None:
        runs = patch_runs(policy, clean_obs, corrupt_obs, [hook])
    else:
        runs.check(policy, clean_obs, corrupt_obs)
        if hook not in runs.clean:
            raise PatchError(f"these patch runs hold no clean activations at {hook}: pass it in patch_runs' hooks.")
    n_pairs = len(runs.clean_obs)
    source, corrupt_act = runs.clean[hook], runs.corrupt[hook]
    shape = tuple(source.shape[1:])
    per, axes = site_axes(hook, shape, per)
    site_arr = check_sites(sites, shape, axes, hook)
    site_t = torch.as_tensor(site_arr, device=source.device)
    if method == "auto":
        method = "linear" if linear_successor(policy, hook) is not None else "cut"
        method = "incremental" if method == "cut" and incremental_applies(policy, hook) else method
        method = "readout" if readout_applies(policy, hook, per) else method
    elif method == "linear" and linear_successor(policy, hook) is None:
        raise PatchError(f"{hook} does not feed one linear layer directly; use method='cut' (or 'auto').")
    elif method == "readout" and not readout_applies(policy, hook, per):
        raise PatchError(f"the readout path takes the last block's input per pos or element, not {hook} per {per}.")
    elif method == "incremental" and not incremental_applies(policy, hook):
        raise PatchError(
            f"the incremental path takes a transformer's hooks after the observation (and any policy's outputs), "
            f"not {hook}; use method='cut' (or 'auto')."
        )
    relevant = relevant_part(policy, hook, shape) if method == "incremental" else None
    # hook_pre feeds only the MLP's ReLU: a site whose ReLU output does not change changes nothing.
    seen = F.relu if method == "incremental" and hook.endswith("mlp.hook_pre") else (lambda act: act)

    def run(src: Tensor) -> tuple[Tensor, Tensor]:
        if method == "linear":
            return _patched_linear(policy, hook, axes, site_t, src, corrupt_act)
        if method == "readout":
            return _patched_readout(policy, axes, site_t, src, corrupt_act)
        # Row engines: only the (site, pair) rows whose patch changes something run; the rest are the corrupted run.
        diff = seen(src) != seen(corrupt_act)
        if relevant is not None:  # the part of the activation the outputs can depend on
            diff &= relevant
        rows_s, rows_b = active_rows(shape, axes, site_t, diff).nonzero(as_tuple=True)
        logits = runs.corrupt_logits.expand(len(site_t), *runs.corrupt_logits.shape).clone()
        value = runs.corrupt_value.expand(len(site_t), n_pairs).clone()
        if len(rows_s):
            if method == "incremental" and isinstance(policy, CNNPolicy) and hook not in OUTPUT_HOOKS:
                out = _patched_conv_incremental(
                    policy, hook, axes, site_t, src, runs.corrupt, diff, rows_s, rows_b, runs.corrupt_obs
                )
            elif method == "incremental":
                out = _patched_incremental(policy, hook, axes, site_t, src, runs.corrupt, diff, rows_s, rows_b)
            else:
                out = _patched_cut(policy, runs.corrupt_obs, hook, axes, site_t, src, rows_s, rows_b)
            logits[rows_s, rows_b], value[rows_s, rows_b] = out
        return logits, value

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
        runs.clean_logits,
        runs.clean_value,
        runs.corrupt_logits,
        runs.corrupt_value,
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
    runs = patch_runs(policy, pairs.clean_obs, pairs.corrupt_obs, hooks)
    tables = []
    for hook in hooks:
        result = patch_sweep(
            policy, pairs.clean_obs, pairs.corrupt_obs, hook, per=per, noise=noise, seed=seed, runs=runs
        )
        tables.append(result.table(n_boot=n_boot, seed=seed))
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "factor", pairs.factor)
    return table


def patch_bytes(policy, n_pairs: int, hooks: Sequence[str], per: str | None = None, n_boot: int = 1000) -> int:
    """Bytes `patch(policy, contrast_pairs(..., n_pairs), hooks)` holds at its peak, roughly and on the high side:
    per pair, the pair's rooms and pixels (uint8) and their float32 copies, the forward passes of both runs and of
    one patched batch (taken as 8 float32 values per pixel value, as `evaluate.rollout_bytes`), the patched
    outputs of every site of the widest hook (clean and noise sources), the bootstrap's weights, and `patch_runs`'
    activations: every hook of both runs while they are copied out, then the corrupted run's at every hook and the
    clean run's at `hooks`."""
    for hook in hooks:
        check_hook(policy, hook)
    obs = math.prod(policy.obs_shape)
    sites = 1
    shapes = activation_shapes(policy, list(policy.hook_dict))
    for hook in hooks:
        _, axes = site_axes(hook, shapes[hook], per)
        sites = max(sites, math.prod(shapes[hook][a] for a in axes))
    every = sum(math.prod(shape) for shape in shapes.values())
    cached = 4 * (3 * every + sum(math.prod(shapes[hook]) for hook in dict.fromkeys(hooks)))
    n_out = getattr(policy, "n_actions", 8) + 1
    per_pair = 2 * obs + 2 * 4 * obs + 3 * 4 * 8 * obs + 2 * 4 * sites * n_out + 4 * n_boot + cached + 512
    return int(n_pairs) * per_pair


def check_patch_memory(policy, n_pairs: int, hooks: Sequence[str], per: str | None = None,
                       option: str = "--pairs") -> None:  # fmt: skip
    """Refuse, before any pair is built, `n_pairs` contrast pairs (and patching `hooks`) that cannot fit in memory."""
    need = patch_bytes(policy, n_pairs, hooks, per)
    check_memory(need, f"{int(n_pairs):,} contrast pairs", option, per_unit=need / max(int(n_pairs), 1))
