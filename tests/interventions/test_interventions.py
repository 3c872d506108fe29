"""Contrast pairs, activation patching (vs TransformerLens), steering and attribution, on both policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_config
from workbench.bench.patching import bench_patching, tl_patch
from workbench.common.compute import one_torch_thread
from workbench.common.errors import ConfigError, WorkbenchError
from workbench.envs import labels
from workbench.envs.contrast import FACTORS, contrast_pairs, trash_at_pairs
from workbench.interventions.attribution import integrated_gradients, saliency
from workbench.interventions.patching import PatchError, patch, patch_sweep
from workbench.interventions.steering import (
    METRICS,
    SteeringVector,
    contrast_vector,
    episode_metrics,
    from_direction,
    mean_difference,
    null_percentile,
    random_vectors,
    rank_p_value,
    sign_specific,
    steered_rollouts,
    steering,
    steering_effects,
    steering_null,
)
from workbench.policies import CNNPolicy, build_policy

OBS_SHAPE = [3, 18, 18]  # 7x7 rooms
PLANTED_CELL = (0, 4)  # a wall cell in the middle of the top wall


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches on a shared 2-core machine: one thread avoids OpenMP oversubscription stalls."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build_policy({"arch": "cnn", "channels": [16, 16], "hidden": 128, "obs_shape": OBS_SHAPE, "n_actions": 5})


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(1)
    return build_policy({"arch": "transformer", "stem": 8, "d_model": 32, "obs_shape": OBS_SHAPE, "n_actions": 5})


@pytest.fixture(scope="module")
def pairs():
    return contrast_pairs("trash", 12, seed=3)


def planted_cnn() -> CNNPolicy:
    """conv.0 channel 0 detects blue (walls), channel 1 green; fc unit 0 reads channel 0 at PLANTED_CELL only and
    pushes the RIGHT logit. So blue vs green walls differ at all 32 wall cells and in two channels, but one cell of
    one channel alone carries the decision."""
    policy = CNNPolicy(tuple(OBS_SHAPE), 5, channels=[4], hidden=8).eval()
    with torch.no_grad():
        for param in policy.parameters():
            param.zero_()
        conv = policy.conv[0].weight  # [4, 3, 2, 2] on 0..1 pixels
        conv[0, 1], conv[0, 2] = -1.0, 1.0  # blue - green components: blue walls > 0, green walls < 0
        conv[1, 1], conv[1, 2] = 1.0, -1.0  # a distractor: green walls; fc ignores it
        y, x = PLANTED_CELL
        policy.fc.weight[0, 0 * 81 + y * 9 + x] = 1.0  # flattened [C, 9, 9]
        policy.actor.weight[4, 0] = 5.0  # RIGHT
        policy.critic.weight[0, 0] = 2.0
    return policy


# ---------------------------------------------------------------------------------------------- contrast pairs
@pytest.mark.parametrize(
    "factor, changed, main",
    [
        (
            "trash",
            {"trash_map", "trash_remaining", "target_dist", "target_dir", "target_drow", "target_dcol"},
            "trash_map",
        ),
        ("colour", {"wall_color", "wall_blue", "wall_green"}, "wall_blue"),
        ("button", {"button_map", "button_present"}, "button_map"),
        ("goal", {"goal_red"}, "goal_red"),
        (
            "carrying",
            {"carrying", "trash_remaining", "target_dist", "target_dir", "target_drow", "target_dcol"},
            "carrying",
        ),
    ],
)
def test_pairs_differ_in_exactly_one_factor(factor, changed, main):
    p = contrast_pairs(factor, 40, seed=1)
    assert p.config.variant == FACTORS[factor] and len(p) == 40
    clean, corrupt = labels(p.config, p.clean), labels(p.config, p.corrupt)
    differ = {k for k in clean if not np.array_equal(clean[k], corrupt[k])}
    assert main in differ and differ <= changed | {"reward_available"}
    assert (clean[main] != corrupt[main]).reshape(40, -1).any(1).all()  # in every pair
    pixels = (p.clean_obs != p.corrupt_obs).any(1).reshape(40, -1).sum(1)
    expected = {"trash": 4, "colour": 4 * 32, "button": 4, "goal": 2, "carrying": 1}[factor]
    assert (pixels == expected).all()  # one cell (2x2 pixels), the walls, the goal glyph, the agent's carry pixel
    np.testing.assert_array_equal(p.clean.agent, p.corrupt.agent)
    if factor == "trash":
        r = np.arange(40)
        assert clean["trash_map"][r, p.cell[:, 0], p.cell[:, 1]].all()
        assert not corrupt["trash_map"][r, p.cell[:, 0], p.cell[:, 1]].any()


def test_trash_moved_and_trash_at_cell():
    moved = contrast_pairs("trash", 20, seed=2, mode="move")
    assert (
        labels(moved.config, moved.clean)["trash_remaining"] == labels(moved.config, moved.corrupt)["trash_remaining"]
    ).all()
    assert ((moved.clean_obs != moved.corrupt_obs).any(1).reshape(20, -1).sum(1) == 8).all()  # left one, entered one
    at = trash_at_pairs((2, 5), 16, seed=0)
    assert labels(at.config, at.clean)["trash_map"][:, 2, 5].all()
    assert not labels(at.config, at.corrupt)["trash_map"][:, 2, 5].any()


# ---------------------------------------------------------------------------------------------- patching
# (arch, hook, per, method, sites): a spread-out subset where a hook has many sites, to keep TL's loop short.
CASES = [
    ("cnn", "conv.1.hook_out", "cell", "linear", None),
    ("cnn", "conv.1.hook_out", "channel", "cut", None),
    ("cnn", "conv.0.hook_out", "cell", "cut", "trash cells"),
    ("cnn", "fc.hook_out", "unit", "linear", list(range(0, 128, 9))),
    ("transformer", "blocks.0.hook_resid_post", "pos", "cut", None),
    ("transformer", "blocks.0.hook_resid_post", "pos", "readout", None),
    ("transformer", "blocks.1.hook_resid_pre", "element", "readout", [(0, 3), (4, 7), (9, 0), (2, 31)]),
    ("transformer", "blocks.1.attn.hook_z", "pos_head", "cut", [(p, h) for p in (0, 3, 9) for h in range(4)]),
    ("transformer", "blocks.0.attn.hook_pattern", "head", "cut", None),
    ("transformer", "blocks.1.mlp.hook_post", "pos", "cut", None),
    ("transformer", "hook_embed", "pos", "cut", None),
]


@pytest.mark.parametrize("arch, hook, per, method, sites", CASES)
def test_batched_patch_equals_transformer_lens(arch, hook, per, method, sites, cnn, transformer, pairs):
    policy = cnn if arch == "cnn" else transformer
    if sites == "trash cells":  # where the pairs differ, and a few cells where they do not
        sites = sorted({tuple(c) for c in pairs.cell.tolist()} | {(0, 0), (4, 4)})
    ours = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, hook, per, sites, noise=False, method=method)
    tl_logits, tl_value = tl_patch(policy, pairs.clean_obs, pairs.corrupt_obs, hook, per=per, sites=sites)
    assert ours.method == method and ours.logits.shape == tl_logits.shape and ours.logits.shape[1:] == (12, 5)
    assert (ours.logits - tl_logits).abs().max() <= 1e-5
    assert (ours.value - tl_value).abs().max() <= 1e-5
    # Not vacuous: the sites do move the outputs.
    assert (ours.logits - ours.corrupt_logits).abs().max() > 1e-4


@pytest.mark.parametrize("arch, hook, per, method, sites", CASES)
def test_patching_a_run_with_itself_changes_nothing(arch, hook, per, method, sites, cnn, transformer, pairs):
    policy = cnn if arch == "cnn" else transformer
    result = patch_sweep(policy, pairs.clean_obs, pairs.clean_obs, hook, per=per, method=method, noise=False)
    assert len(result.sites) > 1
    assert (result.logits - result.clean_logits).abs().max() <= 1e-5
    assert (result.value - result.clean_value).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "arch, hook",
    [
        ("cnn", "conv.0.hook_out"),
        ("cnn", "conv.1.hook_out"),
        ("transformer", "blocks.0.hook_resid_mid"),
        ("transformer", "blocks.1.hook_resid_post"),
    ],
)
def test_patching_every_site_gives_the_clean_run(arch, hook, cnn, transformer, pairs):
    policy = cnn if arch == "cnn" else transformer
    result = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, hook, per="all", noise=False)
    assert result.logits.shape == (1, 12, 5)
    assert (result.logits[0] - result.clean_logits).abs().max() <= 1e-5
    assert (result.value[0] - result.clean_value).abs().max() <= 1e-5
    table = result.table(n_boot=200)
    effect = table[(table.metric == "normalised_effect")]["value"].item()
    assert effect == pytest.approx(1.0, abs=1e-4)


def test_patching_finds_the_planted_site():
    policy = planted_cnn()
    pairs = contrast_pairs("colour", 32, seed=0)
    y, x = PLANTED_CELL
    cells = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "conv.0.hook_out", per="cell")
    assert (cells.clean_logits.argmax(-1) == 4).all() and (cells.corrupt_logits.argmax(-1) != 4).all()
    table = cells.table(n_boot=300)
    effect = table[(table.metric == "normalised_effect") & (table.source == "clean")].set_index(["row", "col"])["value"]
    assert effect.idxmax() == PLANTED_CELL and effect[PLANTED_CELL] == pytest.approx(1.0, abs=1e-5)
    assert effect.drop(PLANTED_CELL).abs().max() < 1e-6  # 31 other wall cells differ too, and do nothing
    noise = table[(table.metric == "normalised_effect") & (table.source == "noise")].set_index(["row", "col"])
    assert abs(noise.loc[PLANTED_CELL, "value"]) < 1e-6  # another green room: nothing to recover
    row = table[(table.metric == "p_clean") & (table.source == "clean") & (table.row == y) & (table.col == x)]
    assert row["value"].item() > 0.9 and row["ci_low"].item() <= row["value"].item() <= row["ci_high"].item()

    channels = patch_sweep(policy, pairs.clean_obs, pairs.corrupt_obs, "conv.0.hook_out", per="channel")
    ld = channels.metrics()["logit_diff"].mean(1) - channels.logit_diff(channels.corrupt_logits).mean()
    gap = (channels.logit_diff(channels.clean_logits) - channels.logit_diff(channels.corrupt_logits)).mean()
    np.testing.assert_allclose((ld / gap).numpy(), [1, 0, 0, 0], atol=1e-6)  # channel 1 differs, but is ignored
    units = patch(policy, pairs, ["fc.hook_out"], n_boot=200)
    best = units[(units.metric == "normalised_effect") & (units.source == "clean")].sort_values("value").iloc[-1]
    assert best["unit"] == 0 and best["value"] == pytest.approx(1.0, abs=1e-5) and best["factor"] == "colour"
    assert set(units.metric) == {"logit_diff", "p_clean", "value_change", "normalised_effect"}


def test_patch_table_intervals(cnn, pairs):
    table = patch(cnn, pairs, ["conv.1.hook_out", "fc.hook_out"], n_boot=200)
    assert set(table.hook) == {"conv.1.hook_out", "fc.hook_out"}
    assert len(table[(table.hook == "conv.1.hook_out")]) == 81 * 2 * 4  # cells x sources x metrics
    finite = table.dropna(subset=["value", "ci_low", "ci_high"])
    assert (finite.ci_low <= finite.value + 1e-9).all() and (finite.value <= finite.ci_high + 1e-9).all()
    assert (table.n_pairs == 12).all()


def test_patching_bad_input(cnn, transformer, pairs):
    with pytest.raises(PatchError, match="pair up one to one"):
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs[:-1], "conv.1.hook_out")
    with pytest.raises(PatchError, match="this policy reads"):
        patch_sweep(cnn, pairs.clean_obs[:, :, :16], pairs.corrupt_obs[:, :, :16], "conv.1.hook_out")
    with pytest.raises(ConfigError, match="Did you mean 'conv.1.hook_out'"):
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_outt")
    with pytest.raises(ConfigError, match="blocks.0.hook_resid_post"):  # a transformer hook on the CNN: listed valid
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "blocks.0.hook_resid_post")
    with pytest.raises(ConfigError, match="granularity"):
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_out", per="head")
    with pytest.raises(PatchError, match="out of range"):
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_out", per="cell", sites=[(0, 9)])
    with pytest.raises(PatchError, match="out of range"):
        patch_sweep(transformer, pairs.clean_obs, pairs.corrupt_obs, "blocks.0.attn.hook_z", per="head", sites=[4])
    with pytest.raises(PatchError, match="linear"):
        patch_sweep(transformer, pairs.clean_obs, pairs.corrupt_obs, "blocks.0.hook_resid_post", method="linear")
    with pytest.raises(PatchError, match="readout path"):
        patch_sweep(transformer, pairs.clean_obs, pairs.corrupt_obs, "blocks.0.hook_resid_pre", method="readout")
    with pytest.raises(ConfigError, match="patching method"):
        patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "fc.hook_out", method="fast")
    with pytest.raises(ConfigError, match="contrast factor"):
        contrast_pairs("trahs", 4)
    with pytest.raises(ConfigError, match="outside the room"):
        trash_at_pairs((0, 3), 4)
    subset = patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_out", per="cell", sites=[(2, 3), (4, 4)])
    full = patch_sweep(cnn, pairs.clean_obs, pairs.corrupt_obs, "conv.1.hook_out", per="cell")
    torch.testing.assert_close(subset.logits, full.logits[[2 * 9 + 3, 4 * 9 + 4]])


# ---------------------------------------------------------------------------------------------- steering
def test_zero_steering_vector_changes_nothing(cnn, transformer):
    for policy in (cnn, transformer):
        vec = contrast_vector(policy, "trash", n=16)
        zero = SteeringVector(vec.hook, torch.zeros_like(vec.vector), "zero")
        plain = steered_rollouts(policy, vector=None, episodes=24, seed=5)
        steered = steered_rollouts(policy, vector=zero, coef=7.0, episodes=24, seed=5)
        for key in plain:
            np.testing.assert_array_equal(plain[key], steered[key])
        obs = torch.as_tensor(contrast_pairs("trash", 4).clean_obs)
        with steering(policy, zero, 3.0):
            steered_out = policy(obs)
        assert torch.equal(steered_out[0], policy(obs)[0])


def test_steering_one_pair_difference_gives_the_clean_run(transformer):
    p = contrast_pairs("button", 1, seed=4)
    for hook in ("blocks.1.hook_resid_pre", "blocks.0.hook_resid_mid"):  # everything downstream flows through
        vec = mean_difference(transformer, p.clean_obs, p.corrupt_obs, hook)
        with steering(transformer, vec, 1.0):
            logits, value = transformer(torch.as_tensor(p.corrupt_obs))
        clean_logits, clean_value = transformer(torch.as_tensor(p.clean_obs))
        torch.testing.assert_close(logits, clean_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(value, clean_value, atol=1e-5, rtol=0)


def test_steering_moves_a_planted_policy_in_rollouts(tmp_path):
    policy = planted_cnn()
    vec = contrast_vector(policy, "colour", "conv.0.hook_out", n=64)  # blue minus green walls
    assert vec.vector[0].abs().sum() > 0 and vec.meta["factor"] == "colour"
    effects = steering_effects(policy, vec, coef=1.0, episodes=48, deterministic=True, n_boot=300)
    bump = effects["metrics"]["bump_rate"]
    # Grey walls: the planted unit is silent and the agent stays put (argmax of equal logits: no-op) unless ...
    assert bump["baseline"] == 0.0 and bump["steered"] == 1.0  # ... steered, it runs right into the wall.
    assert effects["metrics"]["mean_length"]["difference"] == 0.0  # both are truncated: no trash deposited
    away = steering_effects(policy, vec, coef=-1.0, episodes=16, deterministic=True, n_boot=100)
    assert away["metrics"]["bump_rate"]["steered"] == 0.0
    # Saved and loaded, it is the same vector.
    vec.save(tmp_path / "blue")
    again = SteeringVector.load(tmp_path / "blue.safetensors")
    assert again.hook == vec.hook and torch.equal(again.vector, vec.vector) and again.meta["factor"] == "colour"


def test_trash_at_cell_vector_reports_retargeting(cnn):
    from workbench.interventions.steering import trash_at_vector

    vec = trash_at_vector(cnn, (2, 5), n=32)
    assert vec.name == "trash-at:2,5" and vec.meta["cell"] == [2, 5]
    effects = steering_effects(cnn, vec, coef=2.0, episodes=16, n_boot=100)
    assert effects["target_cell"] == [2, 5]
    rate = effects["metrics"]["retarget_success_rate"]
    assert 0 <= rate["baseline"] <= 1 and rate["baseline_ci"][0] <= rate["baseline"] <= rate["baseline_ci"][1]
    steps = effects["metrics"]["steps_to_target"]
    assert 1 <= steps["baseline"] <= 71  # censored at the episode length + 1


def test_probe_directions_steer(cnn):
    from probes import Direction

    binary = Direction(
        "fc.hook_out",
        "carrying",
        "binary",
        "logistic",
        torch.randn(128),
        torch.tensor(0.1),
        torch.zeros(128),
        torch.ones(128),
    )
    vec = from_direction(binary, cnn)
    assert vec.hook == "fc.hook_out" and vec.vector.norm().item() == pytest.approx(1.0)
    cell_map = Direction(
        "conv.1.hook_out",
        "trash_map",
        "map",
        "conv1x1",
        torch.randn(16),
        torch.zeros(9, 9),
        torch.zeros(16, 9, 9),
        torch.ones(16),
    )
    everywhere, one_cell = from_direction(cell_map, cnn), from_direction(cell_map, cnn, index=(3, 4))
    assert everywhere.vector.shape == (16, 1, 1) and one_cell.vector.shape == (16, 9, 9)
    assert one_cell.vector[:, 3, 4].norm().item() == pytest.approx(1.0) and one_cell.vector[:, 0, 0].abs().sum() == 0
    obs = torch.as_tensor(contrast_pairs("trash", 8).clean_obs)
    with steering(cnn, [vec, one_cell], [0.0, 0.0]):
        unchanged = cnn(obs)[0]
    with steering(cnn, [vec, one_cell], [5.0, 5.0]):
        moved = cnn(obs)[0]
    assert torch.equal(unchanged, cnn(obs)[0]) and not torch.allclose(moved, unchanged)
    multiclass = Direction(
        "fc.hook_out",
        "target_dir",
        "multiclass",
        "softmax",
        torch.randn(5, 128),
        torch.zeros(5),
        torch.zeros(128),
        torch.ones(128),
    )
    with pytest.raises(PatchError, match="index="):
        from_direction(multiclass, cnn)
    assert torch.allclose(from_direction(multiclass, cnn, index=2, normalise=False).vector, multiclass.weight[2])


def test_vector_specs_resolve(cnn, tmp_path):
    from probes import Direction, save_directions
    from workbench.interventions.steering import resolve_vector

    weight = torch.randn(128)
    directions = [
        Direction("fc.hook_out", "carrying", "binary", "logistic", weight * 0.5, torch.tensor(0.0), torch.zeros(128),
                  torch.ones(128), step=0),
        Direction("fc.hook_out", "carrying", "binary", "logistic", weight, torch.tensor(0.0), torch.zeros(128),
                  torch.ones(128), step=100),
        Direction("conv.1.hook_out", "carrying", "binary", "logistic", torch.randn(16, 9, 9), torch.tensor(0.0),
                  torch.zeros(16, 9, 9), torch.ones(16, 9, 9), step=100),
    ]  # fmt: skip
    save_directions(directions, tmp_path / "probes.parquet")
    vec = resolve_vector(cnn, f"{tmp_path / 'probes.parquet'}#carrying", hook="fc.hook_out")
    torch.testing.assert_close(vec.vector, weight / weight.norm())  # the latest step's, unit norm
    assert vec.meta["step"] == 100 and vec.name == "probe:carrying"
    with pytest.raises(PatchError, match="pick one with --hook"):
        resolve_vector(cnn, f"{tmp_path / 'probes.parquet'}#carrying")
    with pytest.raises(PatchError, match="no direction"):
        resolve_vector(cnn, f"{tmp_path / 'probes.parquet'}#wall_blue")
    colour = resolve_vector(cnn, "colour", n=8)
    assert colour.hook == "conv.1.hook_out" and colour.meta["factor"] == "colour"
    assert resolve_vector(cnn, "trash-at:3,3", n=8).meta["cell"] == [3, 3]
    with pytest.raises(PatchError, match="neither a factor"):
        resolve_vector(cnn, "smell")


def test_steering_bad_input(cnn):
    vec = contrast_vector(cnn, "trash", n=8)
    with pytest.raises(PatchError, match="not finite"):
        steered_rollouts(cnn, vector=vec, coef=float("nan"), episodes=2)
    with pytest.raises(PatchError, match="not finite"):
        steering_effects(cnn, vec, coef=math.inf, episodes=2)
    wrong = SteeringVector("fc.hook_out", vec.vector, "misplaced")
    with pytest.raises(PatchError, match="does not fit fc.hook_out"):
        steering_effects(cnn, wrong, coef=1.0, episodes=2)
    with pytest.raises(ConfigError, match="Did you mean"):
        with steering(cnn, SteeringVector("conv.1.hook_ot", vec.vector), 1.0):
            pass
    with pytest.raises(PatchError, match="NaN"):
        with steering(cnn, SteeringVector(vec.hook, vec.vector * float("nan")), 1.0):
            pass
    with pytest.raises(PatchError, match="room"):
        steered_rollouts(cnn, {"variant": "trash", "room_size": 5}, vector=vec, episodes=2)
    with pytest.raises(PatchError, match="missing"):
        SteeringVector.load("/nonexistent/vector")


def planted_steering_cnn(symmetric: bool = False) -> tuple[CNNPolicy, SteeringVector]:
    """All weights zero but: fc unit 0 reads one channel direction `d` (summed over the 81 cells) of conv.0's map and
    pushes the RIGHT logit; a no-op bias keeps the unsteered agent mostly still. The planted vector is `d` at every
    cell (norm 9): it drives fc unit 0 to 1, so the agent runs right; a random vector of that norm projects ~1/36 of
    that on the readout, a nudge. `symmetric`: fc unit 1 reads -d and pushes RIGHT too, so -vector acts as +vector."""
    policy = CNNPolicy(tuple(OBS_SHAPE), 5, channels=[16], hidden=8).eval()
    direction = torch.linspace(-1, 1, 16)
    direction = direction / direction.norm()
    per_cell = direction.view(16, 1, 1).expand(16, 9, 9)
    with torch.no_grad():
        for param in policy.parameters():
            param.zero_()
        policy.fc.weight[0] = per_cell.reshape(-1) / 81
        policy.actor.weight[4, 0] = 6.0  # RIGHT
        if symmetric:
            policy.fc.weight[1] = -per_cell.reshape(-1) / 81
            policy.actor.weight[4, 1] = 6.0
        policy.actor.bias[0] = 2.0  # no-op
    return policy, SteeringVector("conv.0.hook_out", per_cell.clone(), "planted")


SHORT_ROOMS = {"variant": "trash", "room_size": 7, "max_steps": 4}  # 4 steps: bumping the wall needs running right


def test_rank_p_value_and_percentile_on_known_nulls():
    null = np.arange(20.0)  # median 9.5
    assert rank_p_value(100.0, null) == pytest.approx(1 / 21)  # beyond every draw: the smallest p there is
    assert rank_p_value(-100.0, null) == pytest.approx(1 / 21)  # two-sided
    assert rank_p_value(0.0, null) == pytest.approx(3 / 21)  # 0 and 19 are as far from 9.5 as 0 is: (2 + 1) / 21
    assert rank_p_value(9.5, null) == pytest.approx(1.0)  # at the median: every draw is as extreme
    assert rank_p_value(17.2, null) == pytest.approx(5 / 21)  # |17.2 - 9.5| = 7.7: draws 0, 1, 18, 19 and itself
    assert null_percentile(100.0, null) == 100.0 and null_percentile(-1.0, null) == 0.0
    assert null_percentile(5.0, null) == pytest.approx(27.5)  # 5 below, one tie counted half: 5.5 / 20
    assert null_percentile(0.3, [0.3] * 10) == 50.0  # all tied: the middle
    # Sign-specific: outside the null, and -coef not beyond the quartile on the same side.
    assert sign_specific(100.0, 9.0, null) and sign_specific(100.0, -50.0, null)
    assert not sign_specific(100.0, 19.0, null)  # -coef moves it up too (percentile 97.5)
    assert not sign_specific(15.0, -50.0, null)  # p = 11/21: inside the null
    assert null_percentile(4.0, null) == 22.5 and null_percentile(5.0, null) == 27.5
    assert sign_specific(-100.0, 5.0, null) and not sign_specific(-100.0, 4.0, null)  # the 25th percentile's sides


def test_random_vectors_match_norm_and_profile(cnn):
    vec = contrast_vector(cnn, "trash", n=16)  # [16, 9, 9] at conv.1.hook_out
    norms = [random_vectors(cnn, vec, kind, 20, seed=3) for kind in ("norm", "profile")]
    for draws in norms:
        assert len(draws) == 20 and all(d.hook == vec.hook and d.vector.shape == vec.vector.shape for d in draws)
        for d in draws:
            assert float(d.vector.norm()) == pytest.approx(float(vec.vector.norm()), rel=1e-5)
    for d in norms[1]:  # the same norm at every cell, another direction there
        torch.testing.assert_close(d.vector.norm(dim=0), vec.vector.norm(dim=0), atol=1e-6, rtol=1e-5)
        cosine = (d.vector * vec.vector).sum(0) / (d.vector.norm(dim=0) * vec.vector.norm(dim=0)).clamp_min(1e-12)
        assert cosine.abs().mean() < 0.5
    norm_cells = torch.stack([d.vector.norm(dim=0) for d in norms[0]])
    assert not torch.allclose(norm_cells[0], vec.vector.norm(dim=0), rtol=0.1)  # a norm null spreads weight anew
    again = random_vectors(cnn, vec, "profile", 20, seed=3)
    assert all(torch.equal(a.vector, b.vector) for a, b in zip(again, norms[1], strict=True))  # seeded
    assert not torch.equal(random_vectors(cnn, vec, "profile", 1, seed=4)[0].vector, norms[1][0].vector)
    # A transformer's residual stream: positions are tokens, features the last axis.
    tvec = SteeringVector("blocks.1.hook_resid_pre", torch.randn(10, 32))
    for d in random_vectors(build_policy({"arch": "transformer", "stem": 8, "d_model": 32, "obs_shape": OBS_SHAPE,
                                          "n_actions": 5}), tvec, "profile", 3):  # fmt: skip
        torch.testing.assert_close(d.vector.norm(dim=-1), tvec.vector.norm(dim=-1), atol=1e-6, rtol=1e-5)


def test_steering_null_finds_the_planted_direction():
    policy, vec = planted_steering_cnn()
    result = steering_null(policy, vec, 1.0, "bump_rate", n_random=20, episodes=200, env_config=SHORT_ROOMS)
    assert result["metric"] == "bump_rate" and result["coef"] == 1.0 and result["reversed_coef"] == -1.0
    assert result["baseline"] < 0.3 and result["steered"] > 0.5  # it runs into the right wall
    assert result["null_kinds"] == ["norm", "profile"] and result["n_random"] == 20
    for kind in ("norm", "profile"):
        null = result["null"][kind]
        assert len(null["steered"]) == len(null["difference"]) == 20
        assert max(null["steered"]) < result["baseline"] + 0.05  # random vectors of its size barely move it
        assert null["percentile"] == 100.0 and null["p_value"] == pytest.approx(1 / 21) and null["outside"]
    # -vector: fc unit 0 stays at 0 (ReLU), so the agent acts as unsteered: not on the planted side of the null.
    assert result["reversed"] == pytest.approx(result["baseline"]) and result["reversed_difference"] == 0.0
    assert not result["opposite_signs"]  # 0 has no sign ...
    assert result["sign_specific"]  # ... but -vector sits inside the nulls' middle half: the effect is the sign's
    assert all(25 <= result["null"][k]["reversed_percentile"] <= 75 for k in ("norm", "profile"))

    # A random vector of the same norm, steered the same way, is no outlier in its own nulls.
    stranger = random_vectors(policy, vec, "norm", 1, seed=99)[0]
    plain = steering_null(policy, stranger, 1.0, "bump_rate", n_random=20, episodes=200, env_config=SHORT_ROOMS)
    for kind in ("norm", "profile"):
        assert 5 < plain["null"][kind]["percentile"] < 95 and plain["null"][kind]["p_value"] > 0.05
    assert not plain["sign_specific"]

    # A readout of |d|: -vector runs right as well. Outside the nulls either way, so not sign-specific.
    both, vec = planted_steering_cnn(symmetric=True)
    result = steering_null(both, vec, 1.0, "bump_rate", n_random=20, episodes=200, env_config=SHORT_ROOMS)
    assert result["steered"] > 0.5 and result["reversed"] == pytest.approx(result["steered"])
    assert all(result["null"][k]["reversed_percentile"] == 100.0 for k in ("norm", "profile"))
    assert not result["sign_specific"] and not result["opposite_signs"]


def test_steering_effects_null_is_the_same_episodes():
    """The null's rollouts are the episodes the vector's are: steering a null vector by itself reproduces its row."""
    policy, vec = planted_steering_cnn()
    effects = steering_effects(policy, vec, 1.0, episodes=64, env_config=SHORT_ROOMS, n_random=19, n_boot=100)
    assert effects["reversed_coef"] == -1.0 and effects["alpha"] == 0.05  # reverse follows n_random
    assert "bump_rate" in effects["metrics"] and set(effects["metrics"]) <= set(METRICS)
    third = random_vectors(policy, vec, "profile", 19, seed=0)[2]
    alone = episode_metrics(steered_rollouts(policy, SHORT_ROOMS, third, 1.0, episodes=64))
    base = episode_metrics(steered_rollouts(policy, SHORT_ROOMS, None, episodes=64))
    row = effects["metrics"]["bump_rate"]["null"]["profile"]
    assert row["steered"][2] == pytest.approx(alone["bump_rate"].mean())
    assert row["difference"][2] == pytest.approx((alone["bump_rate"] - base["bump_rate"]).mean())
    plain = steering_effects(policy, vec, 1.0, episodes=16, env_config=SHORT_ROOMS, n_boot=50)
    assert "null" not in plain["metrics"]["bump_rate"] and "reversed" not in plain["metrics"]["bump_rate"]
    with pytest.warns(UserWarning, match="cannot go below 1/4"):
        steering_effects(policy, vec, 1.0, episodes=8, env_config=SHORT_ROOMS, n_random=3, n_boot=50)


def test_steering_null_bad_input():
    policy, vec = planted_steering_cnn()
    for n_random in (0, -2, 2.5, True):
        with pytest.raises(PatchError, match="n_random=.*at least 1 random vector"):
            steering_null(policy, vec, 1.0, "bump_rate", n_random=n_random, episodes=4)
    with pytest.raises(PatchError, match="n_random=-1.*0 turns the null off"):
        steering_effects(policy, vec, 1.0, episodes=4, n_random=-1)
    with pytest.raises(PatchError, match="unknown null kind 'gaussian'.*'norm'.*'profile'"):
        steering_null(policy, vec, 1.0, "bump_rate", kinds=("norm", "gaussian"), episodes=4)
    with pytest.raises(PatchError, match="unknown null kind"):
        random_vectors(policy, vec, "uniform", 3)
    with pytest.raises(PatchError, match="no null kinds"):
        steering_null(policy, vec, 1.0, "bump_rate", kinds=(), episodes=4)
    with pytest.raises(ConfigError, match="unknown steering metric 'bump'.*Did you mean 'bump_rate'"):
        steering_null(policy, vec, 1.0, "bump", episodes=4)
    with pytest.raises(PatchError, match="needs a target cell"):
        steering_null(policy, vec, 1.0, "retarget_success_rate", episodes=4)
    with pytest.raises(PatchError, match="alpha=1.5"):
        steering_null(policy, vec, 1.0, "bump_rate", alpha=1.5, episodes=4)
    with pytest.raises(PatchError, match="at least one finite draw"):
        rank_p_value(1.0, [])


# ---------------------------------------------------------------------------------------------- attribution
def test_saliency_matches_autograd_and_the_planted_site(cnn):
    obs = torch.as_tensor(contrast_pairs("colour", 6).clean_obs)
    result = saliency(cnn, obs, target="value")
    x = obs.float().requires_grad_(True)
    (grad,) = torch.autograd.grad(cnn(x)[1].sum(), x)
    torch.testing.assert_close(result.attributions, grad)
    planted = planted_cnn()
    at_hook = saliency(planted, obs, target="logit", action=4, wrt="conv.0.hook_out")
    nonzero = at_hook.attributions.abs().sum(0).nonzero().tolist()
    assert nonzero == [[0, *PLANTED_CELL]]  # only channel 0 at the planted cell reaches the RIGHT logit
    assert at_hook.attributions[:, 0, PLANTED_CELL[0], PLANTED_CELL[1]].tolist() == [5.0] * 6


@pytest.mark.parametrize(
    "arch, wrt",
    [
        ("cnn", "obs"),
        ("cnn", "conv.1.hook_out"),
        ("transformer", "obs"),
        ("transformer", "blocks.0.hook_resid_post"),
        ("transformer", "blocks.1.attn.hook_z"),
    ],
)
def test_integrated_gradients_are_complete(arch, wrt, cnn, transformer, pairs):
    policy = cnn if arch == "cnn" else transformer
    for target in ("logit", "value"):
        ig = integrated_gradients(
            policy, pairs.clean_obs[:6], target=target, wrt=wrt, baseline=pairs.corrupt_obs[:6], steps=128
        )
        gap = (ig.target_values - ig.baseline_values).abs()
        assert gap.max() > 1e-4  # the baseline differs
        assert (ig.completeness_error.abs() <= 0.02 * gap + 5e-6).all()
        shape = tuple(policy.obs_shape) if wrt == "obs" else ig.attributions.shape[1:]
        assert ig.attributions.shape == (6, *shape)


def test_attribution_bad_input(cnn):
    obs = contrast_pairs("trash", 2).clean_obs
    with pytest.raises(ConfigError, match="attribution target"):
        saliency(cnn, obs, target="logits")
    with pytest.raises(ConfigError, match="hook"):
        saliency(cnn, obs, wrt="conv.9.hook_out")
    with pytest.raises(PatchError, match="action"):
        saliency(cnn, obs, action=7)
    with pytest.raises(PatchError, match="baseline"):
        integrated_gradients(cnn, obs, wrt="fc.hook_out", baseline=torch.zeros(3))


# ---------------------------------------------------------------------------------------------- benchmark and CLI
def test_bench_patching_quick_agrees_with_transformer_lens():
    result = bench_patching(quick=True)
    for name in ("cnn", "transformer"):
        assert result[name]["max_abs_diff"] <= 1e-5
        assert result[name]["ours_s"] > 0 and result[name]["tl_generic_activation_patch_s"] > 0
    assert result["cnn"]["sites"] == 81 and result["cnn"]["method"] == "linear"
    assert result["transformer"]["sites"] == 10 and result["transformer"]["method"] == "readout"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Not the session's tiny_run: a smaller CNN, 256 env-steps and two checkpoints."""
    from workbench.training.ppo import train

    cfg = tiny_config(256, policy={"arch": "cnn", "channels": [8], "hidden": 32}, n_checkpoints=2)
    return train(cfg, tmp_path_factory.mktemp("runs") / "tiny", device="cpu")


def test_cli_patch_and_steer(run_dir, tmp_path):
    from workbench.cli.main import app

    runner = CliRunner()
    out = tmp_path / "patch.parquet"
    res = runner.invoke(
        app,
        [
            "patch",
            str(run_dir),
            "--factor",
            "trash",
            "--hooks",
            "conv.0.hook_out,fc.hook_out",
            "--pairs",
            "16",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(out)
    assert set(table.hook) == {"conv.0.hook_out", "fc.hook_out"} and (table.factor == "trash").all()
    assert len(table[table.hook == "conv.0.hook_out"]) == 49 * 2 * 4

    save = tmp_path / "vec"
    res = runner.invoke(
        app,
        ["steer", str(run_dir), "--vector", "trash", "--coef", "-1", "--episodes", "8", "--json", "--save", str(save)],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["coef"] == -1.0 and data["episodes"] == 8 and "deposit_rate" in data["metrics"]
    # By default, beside every effect: the vector at -coef and 20 random vectors of each null kind.
    assert data["reversed_coef"] == 1.0 and data["n_random"] == 20 and data["null_kinds"] == ["norm", "profile"]
    row = data["metrics"]["mean_length"]
    assert len(row["null"]["norm"]["steered"]) == len(row["null"]["profile"]["steered"]) == 20
    assert 0 <= row["null"]["profile"]["percentile"] <= 100 and 1 / 21 <= row["null"]["profile"]["p_value"] <= 1
    assert {"reversed", "reversed_difference", "opposite_signs", "sign_specific"} <= set(row)
    res = runner.invoke(app, ["steer", str(run_dir), "--vector", "trash", "--coef", "-1", "--episodes", "4",
                              "--n-random", "19"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "19 random vectors of each kind at x -1" in res.output and "sign-specific: outside every null" in res.output
    res = runner.invoke(app, ["steer", str(run_dir), "--vector", "trash", "--episodes", "4", "--n-random", "0",
                              "--no-reverse", "--json"])  # fmt: skip
    assert res.exit_code == 0 and "null" not in json.loads(res.stdout)["metrics"]["mean_length"]
    res = runner.invoke(
        app, ["steer", str(run_dir), "--vector", str(save) + ".safetensors", "--coef", "0", "--episodes", "4", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"]["mean_return"]["difference"] == 0.0
    res = runner.invoke(
        app, ["steer", str(run_dir), "--vector", "trash-at:2,3", "--coef", "1", "--episodes", "4", "--json"]
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["target_cell"] == [2, 3]

    for bad, message in (
        (["patch", str(run_dir), "--factor", "trash", "--hooks", "nope", "--out", str(out)], "nope"),
        (["steer", str(run_dir), "--vector", "trash", "--coef", "nan"], "not finite"),
        (["steer", str(run_dir), "--vector", "trash", "--n-random", "-3"], "n_random=-3"),
        (["patch", str(run_dir), "--factor", "smell", "--out", str(out)], "contrast factor"),
    ):
        res = runner.invoke(app, bad)
        assert res.exit_code != 0 and isinstance(res.exception, WorkbenchError) and message in str(res.exception)
