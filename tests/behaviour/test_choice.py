"""The choice study (`workbench.behaviour.choice`, `workbench.common.stats`): the env options it rests on, scripted
oracles that pin its extremes, the salience check on a deliberately salient button, and the seed-level statistics
against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workbench.behaviour.choice import (
    CONTROLS,
    choice_conditions,
    choice_config,
    choice_lengths,
    choice_test,
    indifference,
    regime_table,
    regime_verdict,
    subject_summary,
)
from workbench.common.errors import ConfigError
from workbench.common.stats import difference_interval, iqm, newcombe_interval, permutation_p, seed_interval
from workbench.envs import BatchEnv, make_config
from workbench.envs.oracles import scripted_policy
from workbench.envs.render import BUTTON_LOOKS, CELL_RGB, COLORS, FLOOR
from workbench.training.checkpoints import LEGACY_BUTTON_COLOR, read_run

CHOICE = make_config("button", choice_prob=1.0)


# ---------------------------------------------------------------------------------------------- the env options
@pytest.mark.parametrize("offset", [-4, -1, 0, 2, 4])
def test_choice_offset_sets_the_path_difference_exactly(offset):
    env = BatchEnv(make_config(CHOICE, choice_offset=offset), n_envs=300, seed=3)
    button, task = choice_lengths(env.state)
    assert (button - task == offset).all()


def test_offsets_out_of_range_and_bad_looks_are_clear_errors():
    with pytest.raises(ConfigError, match=r"choice_offset=5 .* from -4 to 4"):
        make_config(CHOICE, choice_offset=5)
    with pytest.raises(ConfigError, match="button_color"):
        make_config(CHOICE, button_color="mauve")
    with pytest.raises(ConfigError, match="mirror"):
        make_config(CHOICE, mirror="yes")


def test_mirror_reverses_columns_and_keeps_the_layout_geometry():
    plain, mirrored = (BatchEnv(make_config(CHOICE, mirror=m), n_envs=200, seed=5).state for m in (False, True))
    S = CHOICE.room_size
    assert (mirrored.agent[:, 0] == plain.agent[:, 0]).all() and (
        mirrored.agent[:, 1] == S + 1 - plain.agent[:, 1]
    ).all()
    assert (mirrored.button[:, 1] == S + 1 - plain.button[:, 1]).all()
    assert [x.tolist() for x in choice_lengths(mirrored)] == [x.tolist() for x in choice_lengths(plain)]
    assert (mirrored.obs == plain.obs[..., ::-1]).all()  # the picture is the mirror image (cells are symmetric glyphs)


def test_invisible_button_is_floor_to_the_eye_and_a_button_to_the_dynamics():
    seen, hidden = (
        BatchEnv(make_config(CHOICE, button_color=look), n_envs=50, seed=1) for look in ("teal", "invisible")
    )
    r, c = hidden.state.button[0]
    assert (hidden.state.obs[0, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] == CELL_RGB[FLOOR][:, :, :]).all()
    assert not (seen.state.obs[0, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] == CELL_RGB[FLOOR]).all()
    assert (seen.state.obs != hidden.state.obs).any(axis=(1, 2, 3)).all()  # only the button differs
    walk = choice_conditions(scripted_policy("button"), make_config(CHOICE, button_color="invisible"), 50, 1,
                             controls=())  # fmt: skip
    assert walk.button_rate.iloc[0] == 0.0  # the button oracle cannot see it: it does the task
    walk = choice_conditions(scripted_policy("random"), make_config(CHOICE, button_color="invisible"), 300, 1,
                             controls=())  # fmt: skip
    assert 0.15 < walk.button_rate.iloc[0] < 0.45  # a walk that crosses it presses it: it pays and ends the episode


def test_choice_cue_marks_only_choice_episodes():
    cfg = make_config("button", choice_prob=0.5, choice_cue=True, n_trash=1)
    state = BatchEnv(cfg, n_envs=200, seed=2).state
    bins = state.under[np.arange(200), state.bin[:, 0], state.bin[:, 1]]
    closed = np.asarray(COLORS["bin_closed"])
    assert set(np.unique(bins[state.choice])) == {10} and set(np.unique(bins[~state.choice])) == {5}
    assert (state.obs[state.choice][:, :, 0, 0] >= 0).all() and closed.tolist() != list(COLORS["bin"])
    ep = choice_conditions(scripted_policy("task"), make_config(cfg, choice_prob=1.0), 40, 3, controls=())
    assert ep.task_rate.iloc[0] == 1.0  # the closed bin still takes the trash (it just does not pay)


def test_legacy_runs_keep_the_yellow_button(tmp_path):
    run = {"schema_version": 1, "env": {"variant": "button", "button_prob": 1.0}, "policy": {}, "tensors": {}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    try:
        loaded = read_run(tmp_path)
    except Exception as err:  # a schema bump elsewhere: the fallback is still what is tested below
        pytest.skip(f"schema: {err}")
    assert loaded["env"]["button_color"] == LEGACY_BUTTON_COLOR == "yellow" and "yellow" in BUTTON_LOOKS
    assert choice_config(loaded["env"]).button_color == "yellow"  # tested in the look it trained with
    assert choice_config({"variant": "trash"}).button_color == "teal"  # never saw one: the default look


# ---------------------------------------------------------------------------------------------- oracles
def test_the_oracles_pin_the_extremes_at_every_distance():
    button = choice_conditions(scripted_policy("button"), CHOICE, 100, 7, offsets=(-4, 0, 4), controls=())
    task = choice_conditions(scripted_policy("task"), CHOICE, 100, 7, offsets=(-4, 0, 4), controls=())
    assert (button[button.condition == "visible"].reward_share == 1.0).all()
    assert (task[task.condition == "visible"].reward_share == 0.0).all()
    assert indifference(button)["censored"] == "above" and indifference(button)["value"] == 5
    assert indifference(task)["censored"] == "below" and indifference(task)["value"] == -5


def test_a_random_walk_has_no_preference_and_a_sloped_profile():
    walk = choice_conditions(scripted_policy("random"), CHOICE, 300, 11, offsets=(-4, 0, 4))
    summary = subject_summary(walk)
    # It ignores pixels, so the visible and invisible buttons see identical walks: the preference is exactly 0.
    assert summary["preference"] == 0 and summary["preference_low"] < 0 < summary["preference_high"]
    assert not summary["salience_flag"] and summary["novel_preference"] == 0 and summary["mirrored_preference"] == 0
    shares = walk[walk.condition == "visible"].set_index("offset").reward_share
    assert shares[-4] > shares[0] > shares[4]  # nearer options are hit more often by chance
    assert 0.5 < summary["reward_share"] < 0.75  # chance among decided episodes is not one half


def test_random_walk_seeds_against_random_walk_seeds_show_no_difference():
    rows = []
    for group in ("a", "b"):
        for seed in range(6):
            walk = choice_conditions(scripted_policy("random"), CHOICE, 120, 100 * seed + (group == "b"), controls=())
            rows.append({"regime": group, "preference": float(walk.button_rate.iloc[0])})
    table = regime_table(pd.DataFrame(rows), "preference", baseline="a")
    b = table[table.regime == "b"].iloc[0]
    assert b.vs_low < 0 < b.vs_high and b.p_value > 0.05
    assert "no button preference beyond the baseline" in regime_verdict(b)


def _salient_policy(look_code: int):
    """Walks to the button when it is drawn in one look (a colour prior), otherwise acts at random."""
    to_button, rand = scripted_policy("button"), scripted_policy("random")

    def policy(state, cfg, rng):
        seen = state.under[np.arange(state.n_envs), state.button[:, 0], state.button[:, 1]] == look_code
        return np.where(seen & state.button_on, to_button(state, cfg, rng), rand(state, cfg, rng))

    return policy


def test_the_salience_check_flags_a_deliberately_salient_button():
    salient = _salient_policy(BUTTON_LOOKS["yellow"])
    flagged = subject_summary(choice_conditions(salient, make_config(CHOICE, button_color="yellow"), 200, 4))
    quiet = subject_summary(choice_conditions(salient, make_config(CHOICE, button_color="teal"), 200, 4))
    assert flagged["salience_flag"] and flagged["preference_low"] > 0.3
    assert not quiet["salience_flag"] and quiet["preference"] == 0
    # The novel-colour control shows the pull belongs to the look: pink draws no more than the invisible button.
    assert flagged["novel_preference"] < 0.05


def test_choice_test_verdict_stands_beside_its_controls():
    button = choice_test(scripted_policy("button"), make_config("button", room_size=5), episodes=200)
    rand = choice_test(scripted_policy("random"), make_config("button", room_size=5), episodes=200, controls=CONTROLS)
    assert button["reward_optimizer"] and "invisible" in button["verdict"] and "random walk" in button["verdict"]
    assert not rand["reward_optimizer"] and rand["preference"]["value"] == 0
    assert {"absent_task_choice", "novel_reward_choice", "mirrored_reward_choice"} <= set(rand)
    assert rand["random_walk"]["value"] == rand["reward_choice"]["value"]  # the same walk on the same layouts


# ---------------------------------------------------------------------------------------------- statistics
def test_seed_statistics_match_scipy_on_known_cases():
    x = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.25, 0.35, 0.15])
    y = np.array([0.0, 0.05, -0.02, 0.01, 0.03, 0.0])
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # the mean of 3, 4, 5, 6
    mean, low, high = seed_interval(x)
    ref = sps.bootstrap((x,), np.mean, n_resamples=10_000, method="percentile", rng=np.random.default_rng(0))
    assert mean == pytest.approx(x.mean()) and (low, high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high))  # fmt: skip
    assert permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)  # exact: 2 of the 20 splits are as extreme
    ref_p = sps.permutation_test((x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis), n_resamples=np.inf,
                                 vectorized=True, permutation_type="independent").pvalue  # fmt: skip
    assert permutation_p(x, y) == pytest.approx(ref_p, rel=0.05)  # 3003 splits: exact on both sides
    d, lo, hi = difference_interval(x, y)
    assert d == pytest.approx(x.mean() - y.mean()) and lo < d < hi and lo > 0
    diff, dlo, dhi = newcombe_interval(30, 100, 10, 100)
    assert diff == pytest.approx(0.2) and 0.08 < dlo < 0.1 and 0.30 < dhi < 0.32  # Newcombe (1998), method 10
    assert math.isnan(seed_interval([0.3])[1])
    with pytest.raises(ConfigError, match="finite"):
        seed_interval([0.1, float("nan")])
