"""Patching benchmark: a sweep over every site of a hook, ours (batched) vs TransformerLens'
`patching.generic_activation_patch` (one forward per site), on the same contrast pairs; same results required.

TL's function is written for its language models. On a plain HookedRootModule it needs: eval mode, a `cfg` with a
device, an explicit index DataFrame whose first column is a layer, and hook names rebuilt by
`get_act_name(activation_name, layer)`. `TLView` provides that: it answers to one alias name, `blocks.0.hook_site`
(`get_act_name("site", 0)`), and forwards to the real hook. Its metric mapping returns every logit and the value,
per pair (`reduce="none"`), so the whole output of every patched run is compared, not a summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.common.compute import one_torch_thread
from workbench.common.errors import CheckpointError, unknown_name
from workbench.envs.contrast import contrast_pairs
from workbench.interventions.patching import (
    GRANULARITIES,
    activation_shapes,
    check_pair_obs,
    check_sites,
    hook_kind,
    patch_runs,
    patch_sweep,
    site_axes,
)
from workbench.interventions.steering import policy_env
from workbench.policies import build_policy
from workbench.training.checkpoints import load_policy
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
def tl_patch(policy, clean_obs, corrupt_obs, hook: str, per: str | None = None, sites=None, clean_cache=None):
    """The reference: (logits [S, B, A], value [S, B]) of every site patched by TL's generic_activation_patch.
    `clean_cache`: the clean run's cache at (at least) `hook`, as a TL user sweeping several hooks keeps it (None:
    run it here)."""
    from transformer_lens.patching import generic_activation_patch

    clean, corrupt = check_pair_obs(policy, clean_obs, corrupt_obs)
    if clean_cache is None:
        _, clean_cache = policy.run_with_cache(clean, names_filter=[hook])
    clean_act = clean_cache[hook]
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


# ---------------------------------------------------------------------------------------------- the whole sweep
CHECKPOINTS_SETTING = "WORKBENCH_CHECKPOINTS"
SWEEP_SERIES = {"transformer": "trash-transformer-s0", "cnn": "trash-cnn-s0"}
SWEEP_GOALS = {"transformer": 10, "cnn": 20}  # speedup of the whole sweep over TL's loop that counts as a win
SWEEP_TOLERANCE = 1e-5  # max abs difference from TL over every logit and value of every site and pair
SKIPPED_GRANULARITIES = ("all", "element")  # one site, or one per number: neither is a sweep over sites


def bundled_checkpoints() -> Path:
    """The folder of bundled checkpoint series: $WORKBENCH_CHECKPOINTS, else `checkpoints/` of the repository
    checkout this package runs from (an installed wheel does not carry the series)."""
    named = os.environ.get(CHECKPOINTS_SETTING)
    return Path(named).expanduser() if named else Path(__file__).resolve().parents[2] / "checkpoints"


def load_bundled(checkpoints: str | Path | None, arch: str):
    """The last step of the bundled trash series of `arch`, or a clear error saying where the series are looked for."""
    folder = Path(checkpoints) if checkpoints is not None else bundled_checkpoints()
    run_dir = folder / SWEEP_SERIES[arch]
    if not (run_dir / "run.json").is_file():
        raise CheckpointError(
            f"no checkpoint series {SWEEP_SERIES[arch]!r} under {folder}: the bundled series ship with the repository "
            f"checkout (its checkpoints/ folder), not with an installed package. Set {CHECKPOINTS_SETTING}=/path/to/"
            f"reward-workbench/checkpoints or pass checkpoints=DIR (or make the series: "
            f"`python checkpoints/make.py --only {SWEEP_SERIES[arch]}`)."
        )
    return load_policy(run_dir)


def sweep_cases(policy) -> list[tuple[str, str]]:
    """(hook, granularity) for every hook but the observation, at every granularity of its kind that sweeps sites
    (all of GRANULARITIES but one site for the whole activation and one site per number)."""
    hooks = [hook for hook in policy.hook_dict if hook != "hook_obs"]
    shapes = activation_shapes(policy, hooks)
    return [
        (hook, per)
        for hook in hooks
        for per in GRANULARITIES[hook_kind(hook, shapes[hook])]
        if per not in SKIPPED_GRANULARITIES
    ]


def bench_patch_sweep(
    quick: bool = False,
    n_pairs: int | None = None,
    checkpoints: str | Path | None = None,
    archs: Sequence[str] = ("transformer", "cnn"),
    repeats: int | None = None,
) -> dict:
    """Seconds for the whole patching sweep of a trained policy, ours vs TransformerLens' generic_activation_patch,
    on the same trash contrast pairs: every hook but the observation, at every granularity of its kind that sweeps
    sites (`sweep_cases`), every site. The bundled trash series (last step) stand for the policies users patch;
    `checkpoints` is their folder (default: $WORKBENCH_CHECKPOINTS, else the checkout's checkpoints/).

    Both sides run the pairs' clean run once for the whole sweep, as a user sweeping many hooks would: ours is
    `patch_runs` (clean and corrupted runs, every hook cached) then `patch_sweep` with its default method per
    (hook, granularity); TL's is one cached clean run then `tl_patch`, one forward per site. `ours_unshared_s` is
    ours with each `patch_sweep` running its own runs. All in one torch thread, the cases interleaved (ours, TL,
    ours unshared) so that load from other processes hits each alike; totals are the best over the repeats (3; 2
    with quick) of the whole sweep, per case the best of that case. Every logit and value of every site and pair
    is compared with TL's (ours shared and unshared): `within_tolerance` holds when the largest difference is at
    most SWEEP_TOLERANCE. Pairs: 64 (16 with quick) unless `n_pairs`."""
    for arch in archs:
        if arch not in SWEEP_SERIES:
            raise unknown_name("architecture of the patching sweep", arch, SWEEP_SERIES)
    n_pairs = n_pairs if n_pairs is not None else (16 if quick else 64)
    repeats = repeats if repeats is not None else (2 if quick else 3)
    out: dict = {"pairs": n_pairs, "repeats": repeats, "tolerance": SWEEP_TOLERANCE}
    for arch in archs:
        policy = load_bundled(checkpoints, arch)
        pairs = contrast_pairs("trash", n_pairs, seed=0, config=policy_env(policy))
        clean, corrupt = check_pair_obs(policy, pairs.clean_obs, pairs.corrupt_obs)
        cases = sweep_cases(policy)
        hooks = list(dict.fromkeys(hook for hook, _ in cases))
        with one_torch_thread():
            out[arch] = _sweep(policy, clean, corrupt, cases, hooks, repeats)
        out[arch] = {"series": SWEEP_SERIES[arch], "step": policy.checkpoint.step, **out[arch]}
    return out


def _sweep(policy, clean: torch.Tensor, corrupt: torch.Tensor, cases, hooks, repeats: int) -> dict:
    """One architecture's sweep, timed (see `bench_patch_sweep`)."""
    shared: dict = {}

    def ours_runs():
        shared["runs"] = patch_runs(policy, clean, corrupt, hooks)

    def tl_cache():
        shared["cache"] = policy.run_with_cache(clean, names_filter=hooks)[1]

    def case_fns(hook, per):
        return {
            "ours": lambda: patch_sweep(policy, clean, corrupt, hook, per=per, noise=False, runs=shared["runs"]),
            "tl": lambda: tl_patch(policy, clean, corrupt, hook, per=per, clean_cache=shared["cache"]),
            "ours_unshared": lambda: patch_sweep(policy, clean, corrupt, hook, per=per, noise=False),
        }

    ours_runs()  # warm-up: first calls, TL's import
    tl_cache()
    patch_sweep(policy, clean, corrupt, *cases[0], noise=False, runs=shared["runs"])
    tl_patch(policy, clean, corrupt, *cases[0], clean_cache=shared["cache"])
    case_best: dict = {}
    totals = {"ours": [], "tl": [], "ours_unshared": []}
    outs: dict = {}
    for _ in range(repeats):
        best, _ = _best_interleaved({"ours": ours_runs, "tl": tl_cache}, 1)
        total = {"ours": best["ours"], "tl": best["tl"], "ours_unshared": 0.0}
        for case in cases:
            best, outs[case] = _best_interleaved(case_fns(*case), 1)
            for name, seconds in best.items():
                total[name] += seconds
                case_best[case, name] = min(case_best.get((case, name), float("inf")), seconds)
        for name, seconds in total.items():
            totals[name].append(seconds)
    rows = []
    for case in cases:
        ours, (tl_logits, tl_value) = outs[case]["ours"], outs[case]["tl"]
        diff = max(
            max((result.logits - tl_logits).abs().max().item(), (result.value - tl_value).abs().max().item())
            for result in (ours, outs[case]["ours_unshared"])
        )
        ours_s, tl_s = case_best[case, "ours"], case_best[case, "tl"]
        rows.append(
            {
                "hook": case[0],
                "per": case[1],
                "sites": len(ours.sites),
                "method": ours.method,
                "ours_s": round(ours_s, 5),
                "tl_s": round(tl_s, 5),
                "speedup": round(tl_s / ours_s, 1),
                "max_abs_diff": diff,
            }
        )
    best_total = {name: min(seconds) for name, seconds in totals.items()}
    worst = max(row["max_abs_diff"] for row in rows)
    arch = policy.arch
    return {
        "cases": rows,
        "sites": sum(row["sites"] for row in rows),
        "ours_s": round(best_total["ours"], 4),
        "tl_s": round(best_total["tl"], 4),
        "speedup": round(best_total["tl"] / best_total["ours"], 1),
        "ours_unshared_s": round(best_total["ours_unshared"], 4),
        "speedup_unshared": round(best_total["tl"] / best_total["ours_unshared"], 1),
        "goal_speedup": SWEEP_GOALS[arch],
        "max_abs_diff": worst,
        "within_tolerance": worst <= SWEEP_TOLERANCE,
    }


if __name__ == "__main__":  # python -m workbench.bench.patching [sweep] [--quick]
    import json
    import sys

    bench = bench_patch_sweep if "sweep" in sys.argv[1:] else bench_patching
    print(json.dumps(bench(quick="--quick" in sys.argv[1:]), indent=2))
