"""The whole-sweep patching benchmark against TransformerLens, and the shortcuts that make the sweep fast: every
(hook, granularity) case of the trained policies must be present and agree with TL's generic_activation_patch, and
the incremental path must agree with the plain batched forward (method="cut") at every hook and granularity."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.bench.patching import SWEEP_TOLERANCE, bench_patch_sweep, load_bundled
from workbench.common.compute import one_torch_thread
from workbench.common.errors import CheckpointError, ConfigError
from workbench.envs import make_config
from workbench.envs.contrast import contrast_pairs
from workbench.interventions.patching import (
    GRANULARITIES,
    PatchError,
    activation_shapes,
    hook_kind,
    patch_runs,
    patch_sweep,
)
from workbench.policies import build_policy

# Cases the sweep must hold whatever else changes: one of each kind of site, both architectures.
ANCHORS = {
    "transformer": [
        ("stem.hook_out", "cell"),
        ("hook_embed", "unit"),
        ("blocks.0.attn.hook_q", "pos_head"),
        ("blocks.1.attn.hook_pattern", "head_pos"),
        ("blocks.1.attn.hook_attn_scores", "head"),
        ("blocks.0.mlp.hook_post", "unit"),
        ("blocks.1.hook_resid_pre", "pos"),
        ("ln_final.hook_normalized", "pos"),
        ("hook_logits", "unit"),
    ],
    "cnn": [("conv.0.hook_out", "channel"), ("conv.1.hook_out", "cell"), ("fc.hook_out", "unit")],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches: one torch thread, as the benchmark times them, and no OpenMP oversubscription stalls."""
    with one_torch_thread():
        yield


def expected_cases(arch: str) -> dict[tuple[str, str], int]:
    """(hook, granularity) -> number of sites, from the policy's hooks and GRANULARITIES: what the sweep must cover."""
    policy = load_bundled(None, arch)
    hooks = [hook for hook in policy.hook_dict if hook != "hook_obs"]
    expected = {}
    for hook, shape in activation_shapes(policy, hooks).items():
        for per, axes in GRANULARITIES[hook_kind(hook, shape)].items():
            if per not in ("all", "element"):
                expected[hook, per] = math.prod(shape[a] for a in axes)
    return expected


def test_quick_sweep_has_every_case_and_agrees_with_transformer_lens():
    result = bench_patch_sweep(quick=True, repeats=1)
    assert result["pairs"] == 16
    for arch in ("transformer", "cnn"):
        found = {(case["hook"], case["per"]): case for case in result[arch]["cases"]}
        expected = expected_cases(arch)
        assert set(ANCHORS[arch]) <= set(expected)
        assert set(found) == set(expected), f"{arch}: cases missing {set(expected) - set(found)}"
        assert len(found) == len(result[arch]["cases"])  # none twice
        for key, case in found.items():
            assert case["sites"] == expected[key], key
            assert case["max_abs_diff"] <= SWEEP_TOLERANCE, (key, case["max_abs_diff"])
            assert case["ours_s"] > 0 and case["tl_s"] > 0
        assert result[arch]["within_tolerance"] and result[arch]["max_abs_diff"] <= SWEEP_TOLERANCE
        assert result[arch]["sites"] == sum(expected.values())
        assert result[arch]["goal_speedup"] == {"transformer": 10, "cnn": 20}[arch]


# ---------------------------------------------------------------------------------------------- shortcuts vs cut
POLICIES = {
    "transformer": ({"arch": "transformer", "stem": 8, "d_model": 32}, 6),  # 2 blocks, a conv stem
    "transformer-1-block": ({"arch": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2}, 6),  # no stem
    "transformer-3-blocks-padded": ({"arch": "transformer", "n_layers": 3, "d_model": 16, "stem": 4}, 5),
    "cnn": ({"arch": "cnn", "channels": [8, 8], "hidden": 32}, 7),
}


def every_case(policy):
    """(hook, granularity, sites) for every hook but the observation at every granularity, a spread of sites where
    there are many."""
    hooks = [hook for hook in policy.hook_dict if hook != "hook_obs"]
    for hook, shape in activation_shapes(policy, hooks).items():
        for per, axes in GRANULARITIES[hook_kind(hook, shape)].items():
            n_sites = math.prod(shape[a] for a in axes)
            if n_sites <= 100:
                yield hook, per, None
            else:
                flat = torch.arange(0, n_sites, max(1, n_sites // 60))
                dims = [shape[a] for a in axes]
                yield hook, per, torch.stack(torch.unravel_index(flat, dims), dim=1).tolist()


# Trash pairs differ in one cell, so most patches change one token or cell (the shortcuts' one-token paths); moved
# trash differs in two cells and wall colour in all the walls (their every-token paths and the CNN's fallback).
CONTRASTS = [(name, "trash", "remove") for name in POLICIES] + [
    (name, factor, mode)
    for name in ("transformer", "cnn")
    for factor, mode in [("trash", "move"), ("colour", "remove")]
]


@pytest.mark.parametrize("name, factor, mode", CONTRASTS)
def test_shortcuts_equal_the_plain_batched_forward(name, factor, mode):
    config, room = POLICIES[name]
    env = make_config("trash", room_size=room)
    torch.manual_seed(0)
    policy = build_policy({**config, "obs_shape": list(env.obs_shape), "n_actions": 5}).eval()
    pairs = contrast_pairs(factor, 5, seed=1, config=env, mode=mode)
    runs = patch_runs(policy, pairs.clean_obs, pairs.corrupt_obs)
    methods = set()
    for hook, per, sites in every_case(policy):
        args = (policy, pairs.clean_obs, pairs.corrupt_obs, hook, per, sites)
        ours = patch_sweep(*args, runs=runs)
        cut = patch_sweep(*args, method="cut")
        methods.add(ours.method)
        for a, b in [(ours.logits, cut.logits), (ours.value, cut.value), (ours.noise_logits, cut.noise_logits),
                     (ours.noise_value, cut.noise_value)]:  # fmt: skip
            assert a.shape == b.shape and (a - b).abs().max() <= SWEEP_TOLERANCE, (hook, per, ours.method)
    assert "incremental" in methods or name == "cnn"


def test_shared_runs_must_be_the_pairs_runs():
    policy = load_bundled(None, "cnn")
    pairs = contrast_pairs("trash", 6, seed=0, config=make_config("trash", room_size=7))
    runs = patch_runs(policy, pairs.clean_obs, pairs.corrupt_obs, ["conv.0.hook_out"])
    shared = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "conv.0.hook_out", runs=runs)
    alone = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "conv.0.hook_out")
    assert torch.equal(shared.logits, alone.logits) and torch.equal(shared.noise_value, alone.noise_value)
    with pytest.raises(PatchError, match="other observations"):
        patch_sweep(policy, pairs.corrupt_obs, pairs.clean_obs, "conv.0.hook_out", runs=runs)
    with pytest.raises(PatchError, match="no clean activations"):
        patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "fc.hook_out", runs=runs)
    other = build_policy({"arch": "cnn", "channels": [16, 16], "hidden": 64, "obs_shape": [3, 18, 18], "n_actions": 5})
    with pytest.raises(PatchError, match="another policy"):
        patch_sweep(other, pairs.clean_obs, pairs.corrupt_obs, "conv.0.hook_out", runs=runs)


def test_missing_series_and_unknown_architectures_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="WORKBENCH_CHECKPOINTS"):
        load_bundled(tmp_path, "cnn")
    with pytest.raises(CheckpointError, match="trash-transformer-s0"):
        bench_patch_sweep(quick=True, checkpoints=tmp_path, archs=("transformer",))
    with pytest.raises(ConfigError, match="architecture"):
        bench_patch_sweep(quick=True, archs=("rnn",))
