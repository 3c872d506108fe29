"""Patching benchmark: a sweep over every site of a hook, ours (batched) vs TransformerLens'
`patching.generic_activation_patch` (one forward per site), on the same contrast pairs; same results required.

TL's function is written for its language models. On a plain HookedRootModule it needs: eval mode, a `cfg` with a
device, an explicit index DataFrame whose first column is a layer, and hook names rebuilt by
`get_act_name(activation_name, layer)`. `TLView` provides that: it answers to one alias name, `blocks.0.hook_site`
(`get_act_name("site", 0)`), and forwards to the real hook. Its metric mapping returns every logit and the value,
per pair (`reduce="none"`), so the whole output of every patched run is compared, not a summary.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.envs.contrast import contrast_pairs
from workbench.interventions.patching import check_pair_obs, check_sites, patch_sweep, site_axes
from workbench.policies import build_policy
from workbench.training.config import POLICIES

ALIAS, ALIAS_NAME = "site", "blocks.0.hook_site"  # transformer_lens.utils.get_act_name("site", 0)


class TLView(nn.Module):
    """Our policy as TL's patching sees a model: `run_with_hooks` maps the alias to `hook`; output is
    `[batch, n_actions + 1]` (logits then value)."""

    def __init__(self, policy, hook: str):
        super().__init__()
        self.policy, self.hook = policy, hook
        device = next(policy.parameters()).device
        self.cfg = SimpleNamespace(
            device=device, n_layers=1, n_heads=getattr(policy, "n_heads", 1), n_key_value_heads=None
        )
        self.eval()

    def run_with_hooks(self, obs, fwd_hooks=()):
        hooks = [(self.hook if name == ALIAS_NAME else name, fn) for name, fn in fwd_hooks]
        logits, value = self.policy.run_with_hooks(obs, fwd_hooks=hooks)
        return torch.cat([logits, value[:, None]], dim=-1)

    def run_with_cache(self, *args, **kwargs):
        raise NotImplementedError

    def to_tokens(self, *args, **kwargs):
        raise NotImplementedError


@contextmanager
def _quiet_tqdm():
    """TL's loop draws a tqdm bar per sweep; it is output, not the method, so it is switched off for both timing
    and tests."""
    import transformer_lens.patching as tl_patching

    with mock.patch.object(tl_patching, "tqdm", lambda iterable, *a, **k: iterable):
        yield


@torch.no_grad()
def tl_patch(policy, clean_obs, corrupt_obs, hook: str, per: str | None = None, sites=None):
    """The reference: (logits [S, B, A], value [S, B]) of every site patched by TL's generic_activation_patch."""
    from transformer_lens.patching import generic_activation_patch

    clean, corrupt = check_pair_obs(policy, clean_obs, corrupt_obs)
    _, cache = policy.run_with_cache(clean, names_filter=[hook])
    clean_act = cache[hook]
    shape = tuple(clean_act.shape[1:])
    _, axes = site_axes(hook, shape, per)
    site_arr = check_sites(sites, shape, axes, hook)
    index_df = pd.DataFrame(
        np.concatenate([np.zeros((len(site_arr), 1), np.int64), site_arr], axis=1),
        columns=["layer", *[f"axis{a}" for a in axes]],
    )

    def setter(corrupted, index, clean_activation):
        where = [slice(None)] * corrupted.ndim
        for axis, value in zip(axes, index[1:], strict=True):
            where[1 + axis] = int(value)
        corrupted[tuple(where)] = clean_activation[tuple(where)]
        return corrupted

    view = TLView(policy, hook)
    n_out = policy.n_actions + 1
    metrics = {f"out{j}": (lambda out, j=j: out[:, j]) for j in range(n_out)}
    with _quiet_tqdm():
        result = generic_activation_patch(
            view, corrupt, {ALIAS_NAME: clean_act}, metrics, setter, ALIAS, index_df=index_df, reduce="none"
        )
    values = result.values  # [metric, S, B]
    return values[: policy.n_actions].permute(1, 2, 0).contiguous(), values[policy.n_actions]


def _best_interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best time of each function over `repeats` rounds, run in turn so that load from other processes on a shared
    machine hits all of them alike; also each one's last output."""
    best, outs = {name: float("inf") for name in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outs


def bench_patching(quick: bool = False) -> dict:
    """Seconds for a sweep over all sites of a hook, ours vs TL's generic_activation_patch, on identical inputs:
    the CNN's last conv map per cell (81 sites; the trained architecture: conv 16/16, fc 128) and the transformer's
    residual stream per position (the last block's input). `ours_s` is the default (auto) method: linear for the
    CNN, readout for the transformer; `ours_cut_s` the plain batched forward without either shortcut. Best of
    interleaved repeats; max abs difference over every logit and value of every site."""
    torch.manual_seed(0)
    n_pairs = 16 if quick else 64
    repeats = 2 if quick else 7
    pairs = contrast_pairs("trash", n_pairs, seed=0)
    obs_shape = list(pairs.config.obs_shape)
    cases = [
        ("cnn", dict(POLICIES["cnn"]), "conv.1.hook_out", "cell"),
        ("transformer", dict(POLICIES["transformer"]), "blocks.0.hook_resid_post", "pos"),
    ]
    out: dict = {"pairs": n_pairs, "torch_threads": torch.get_num_threads()}
    for name, config, hook, per in cases:
        policy = build_policy({**config, "obs_shape": obs_shape, "n_actions": 5}).eval()
        args = (policy, pairs.clean_obs, pairs.corrupt_obs, hook)
        fns = {
            "ours": lambda args=args, per=per: patch_sweep(*args, per=per, noise=False),
            "ours_cut": lambda args=args, per=per: patch_sweep(*args, per=per, noise=False, method="cut"),
            "tl": lambda args=args, per=per: tl_patch(*args, per=per),
        }
        fns["ours"]()  # warm-up
        best, outs = _best_interleaved(fns, repeats)
        tl_logits, tl_value = outs["tl"]
        diff = max(
            max((outs[k].logits - tl_logits).abs().max().item(), (outs[k].value - tl_value).abs().max().item())
            for k in ("ours", "ours_cut")
        )
        out[name] = {
            "hook": hook,
            "per": per,
            "sites": len(outs["ours"].sites),
            "method": outs["ours"].method,
            "ours_s": round(best["ours"], 5),
            "ours_cut_s": round(best["ours_cut"], 5),
            "tl_generic_activation_patch_s": round(best["tl"], 5),
            "speedup": round(best["tl"] / best["ours"], 1),
            "speedup_cut": round(best["tl"] / best["ours_cut"], 1),
            "max_abs_diff": diff,
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_patching(), indent=2))
