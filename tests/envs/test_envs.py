"""Tests of the gridworlds (workbench.envs): dynamics, rewards, labels vs pixels, batching, adapters, errors.

Pixels are decoded here independently of the env's own code grid (only render.COLORS is shared), and path
distances come from a BFS written here, so the labels are checked against something they were not made from.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.common.errors import ActionError, ConfigError, WorkbenchError
from workbench.envs import GYM_IDS, SCHEDULES, BatchEnv, TrashGridEnv, core, make_config, register_schedule
from workbench.envs.core import ABSENT, CARRIED, DEPOSITED, IN_ROOM, MOVES, N_ACTIONS
from workbench.envs.render import COLORS, WALL_BLUE
from workbench.envs.sb3_vec import WorkbenchVecEnv

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Configurations that cover every variant and distribution (name, options).
CONFIGS = [
    ("trash", {}),
    ("trash", {"n_trash": 3}),
    ("blueroom", {"distribution": "train"}),
    ("blueroom", {"distribution": "test"}),
    ("blueroom", {"distribution": "random"}),
    ("button", {"choice_prob": 0.5, "button_prob": 0.5}),
    ("button", {"choice_prob": 0.5, "choice_cue": True, "choice_offset": 2, "mirror": True, "button_color": "yellow"}),
    ("redgoal", {}),
    ("redgoal", {"distribution": "test"}),
    ("redgoal", {"distribution": "test", "n_trash": 2}),
]
# Those with trash in (at least some of) their rooms.
TRASH_CONFIGS = [c for c in CONFIGS if c[0] != "redgoal" or c[1].get("n_trash")]
seeds = st.integers(0, 2**31 - 1)
room_sizes = st.integers(5, 12)


# ---------------------------------------------------------------------------------------------- helpers
def play(cfg, n_envs: int, seed: int, steps: int, eps: float = 0.5):
    """Core-level random play, biased toward the labelled target so that pick-ups, deposits and goals happen.
    Yields (before, actions, after, events, reward, terminated, truncated) with `after` the state before any
    reset; finished envs are reset after the consumer has looked."""
    rng = np.random.default_rng(seed)
    state = core.init_state(cfg, n_envs, seed)
    for _ in range(steps):
        greedy = core.labels(cfg, state)["target_dir"]
        actions = np.where(rng.random(n_envs) < eps, rng.integers(0, N_ACTIONS, n_envs), greedy)
        before = state.copy()
        events, reward, terminated, truncated = core.step(cfg, state, actions)
        yield before, actions, state, events, reward, terminated, truncated
        core.reset_envs(cfg, state, np.flatnonzero(terminated | truncated))


_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[k] for k in _NAMES], dtype=np.uint8)
C = {name: i for i, name in enumerate(_NAMES)}
WALLS = [C["wall_grey"], C["wall_blue"], C["wall_green"]]


def decode(obs: np.ndarray, button: str = "teal") -> dict[str, np.ndarray]:
    """Read the world back from observations [N, 3, H, W] using only the palette and the documented glyphs
    (`button`: the rooms' button look; yellow is the palette's "button", the others "button_<look>")."""
    look = C["button" if button == "yellow" else f"button_{button}"]
    n, _, height, _ = obs.shape
    grid = height // 2
    px = obs.reshape(n, 3, grid, 2, grid, 2).transpose(0, 2, 4, 3, 5, 1)  # [N, r, c, prow, pcol, rgb]
    match = (px[..., None, :] == _PALETTE).all(-1)
    assert match.any(-1).all(), "a pixel has a colour outside render.COLORS"
    idx = match.argmax(-1)
    tl, tr, bl, br = idx[..., 0, 0], idx[..., 0, 1], idx[..., 1, 0], idx[..., 1, 1]

    agent = (tl == C["agent"]) & (tr == C["agent"])
    assert (agent.sum((1, 2)) == 1).all(), "not exactly one agent glyph"
    _, ar, ac = np.nonzero(agent)
    assert np.isin(bl[agent], [C["agent"], C["trash"]]).all()
    uniform = (tl == tr) & (tr == bl) & (bl == br)
    goal_glyph = (tl == br) & (tr == C["floor"]) & (bl == C["floor"]) & np.isin(tl, [C["red"], C["cyan"]])
    assert (uniform | goal_glyph | agent).all(), "a cell matches no glyph"

    border = np.ones((grid, grid), dtype=bool)
    border[1:-1, 1:-1] = False
    wall = tl[:, 0, 0]
    assert np.isin(wall, WALLS).all()
    assert (uniform[:, border] & (tl[:, border] == wall[:, None])).all(), "walls are not one uniform colour"
    assert not np.isin(tl[:, ~border], WALLS).any(), "a wall colour inside the room"
    assert not agent[:, border].any()

    solid = uniform & ~agent
    under = np.where(agent, br, -1)  # the colour of what the agent stands on (agent white: nothing)
    goal_vis = goal_glyph & ~agent
    goal_elsewhere = goal_vis.any((1, 2))[:, None, None]
    red_under = under == C["red"]  # the decoy if a goal is drawn elsewhere, else the (red) goal
    return {
        "agent_row": ar,
        "agent_col": ac,
        "carrying": bl[agent] == C["trash"],
        "wall_color": np.searchsorted(WALLS, wall),
        "trash_map": (solid & (tl == C["trash"])) | (under == C["trash"]),
        "bin_map": (solid & np.isin(tl, [C["bin"], C["bin_closed"]])) | np.isin(under, [C["bin"], C["bin_closed"]]),
        "button_map": (solid & (tl == look)) | (under == look),
        "goal_map": goal_vis | (under == C["cyan"]) | (red_under & ~goal_elsewhere),
        "decoy_map": (solid & (tl == C["red"])) | (red_under & goal_elsewhere),
        "goal_red": ((goal_vis & (tl == C["red"])) | (red_under & ~goal_elsewhere)).any((1, 2)),
    }


def neighbours(cell, grid):
    r, c = cell
    for dr, dc in MOVES[1:]:
        nr, nc = r + int(dr), c + int(dc)
        if 1 <= nr <= grid - 2 and 1 <= nc <= grid - 2:
            yield nr, nc


def bfs_path(grid: int, start, goal, blocked=()) -> list[tuple[int, int]] | None:
    """Shortest path start -> goal (both included) through interior cells, never entering `blocked`."""
    start, goal = tuple(map(int, start)), tuple(map(int, goal))
    blocked = {tuple(map(int, b)) for b in blocked} - {start, goal}
    prev = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = []
            while cell is not None:
                path.append(cell)
                cell = prev[cell]
            return path[::-1]
        for nxt in neighbours(cell, grid):
            if nxt not in prev and nxt not in blocked:
                prev[nxt] = cell
                queue.append(nxt)
    return None


@functools.cache
def open_room_distances(grid: int) -> np.ndarray:
    """[G, G, G, G] BFS step counts between interior cells of an open room (-1 for wall cells)."""
    out = np.full((grid, grid, grid, grid), -1, dtype=np.int64)
    for r in range(1, grid - 1):
        for c in range(1, grid - 1):
            seen = {(r, c): 0}
            queue = deque([(r, c)])
            while queue:
                cell = queue.popleft()
                for nxt in neighbours(cell, grid):
                    if nxt not in seen:
                        seen[nxt] = seen[cell] + 1
                        queue.append(nxt)
            for (rr, cc), d in seen.items():
                out[r, c, rr, cc] = d
    return out


def path_actions(path) -> list[int]:
    moves = {tuple(int(x) for x in m): a for a, m in enumerate(MOVES)}
    return [moves[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:], strict=False)]


def one_env(variant="trash", seed=0, **options):
    cfg = make_config(variant, **options)
    return cfg, core.init_state(cfg, 1, seed)


def walk(cfg, state, actions):
    """Step a single-env state through actions; return the per-step (events, reward, terminated, truncated)."""
    out = []
    for a in actions:
        ev, rew, term, trunc = core.step(cfg, state, np.array([a]))
        out.append(({k: bool(v[0]) for k, v in ev.items()}, float(rew[0]), bool(term[0]), bool(trunc[0])))
    return out


def episode_trash(cfg, state) -> np.ndarray:
    return (state.trash_status != ABSENT).sum(-1)


# ---------------------------------------------------------------------------------------------- 1. conservation
@FAST
@given(config=st.sampled_from(TRASH_CONFIGS), seed=seeds, room=st.integers(5, 8), n_trash=st.integers(1, 4))
def test_trash_is_conserved(config, seed, room, n_trash):
    variant, options = config
    cfg = make_config(variant, **{**options, "room_size": room, "n_trash": n_trash})
    expected = None
    seen_deposit = False
    for before, _, after, events, _, _, _ in play(cfg, 8, seed, 120):
        start = before.t == 0
        if expected is None:
            expected = episode_trash(cfg, before)
        expected = np.where(start, episode_trash(cfg, before), expected)
        # The number of items an episode has is fixed by its variant.
        if variant == "blueroom":
            assert np.isin(expected, [0, n_trash]).all()
        elif variant == "button":
            assert (expected == np.where(before.choice, 1, n_trash)).all()
        else:
            assert (expected == n_trash).all()
        s = after.trash_status
        in_room, carried, deposited = (s == IN_ROOM).sum(-1), (s == CARRIED).sum(-1), (s == DEPOSITED).sum(-1)
        assert (in_room + carried + deposited == expected).all()
        assert (carried <= 1).all()
        assert ((s == ABSENT).sum(-1) == n_trash - expected).all()
        # Deposited items never come back; the count moves by the events only.
        prev = before.trash_status
        assert ((prev != DEPOSITED) | (s == DEPOSITED)).all()
        assert ((s == DEPOSITED).sum(-1) - (prev == DEPOSITED).sum(-1) == events["deposited"]).all()
        assert ((prev == IN_ROOM).sum(-1) - in_room == events["picked"]).all()
        lab = core.labels(cfg, after)
        assert (lab["trash_remaining"] + lab["trash_deposited"] == expected).all()
        assert (lab["trash_map"].sum((1, 2)) == in_room).all()
        seen_deposit |= events["deposited"].any()
    if variant != "blueroom" or options["distribution"] != "test":
        assert seen_deposit, "the biased random play never deposited: the test exercised nothing"


# ---------------------------------------------------------------------------------------------- 2. rewards
def collect(cfg, n_envs=16, seed=0, steps=200):
    """Stack (events, reward, state-after flags) over a play."""
    rows = []
    for _, _, after, events, reward, _, _ in play(cfg, n_envs, seed, steps):
        rows.append({**events, "reward": reward.copy(), "choice": after.choice.copy(), "wall": after.wall.copy()})
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("variant, options", CONFIGS)
def test_schedule_none_never_pays(variant, options):
    cfg = make_config(variant, room_size=5, schedule="none", **options)
    out = collect(cfg)
    assert (out["reward"] == 0).all()
    assert out["reward"].dtype == np.float32
    # ... although things that other schedules pay for did happen.
    if variant == "button":
        assert out["deposited"].any() and out["button_pressed"].any()
    elif variant == "redgoal":
        assert out["goal_reached"].any() and (options.get("distribution") != "test" or out["decoy_reached"].any())
    else:
        assert out["deposited"].any()


def test_on_deposit_pays_exactly_the_deposits():
    out = collect(make_config("trash", room_size=6, schedule="on-deposit"))
    assert out["deposited"].sum() > 5
    np.testing.assert_array_equal(out["reward"], out["deposited"].astype(np.float32))
    assert not (out["reward"][out["picked"]] != 0).any()


def test_blue_room_pays_only_blue_deposits():
    cfg = make_config("blueroom", room_size=5, distribution="random", trash_prob=1.0)
    assert cfg.schedule == "blue-room"
    out = collect(cfg, n_envs=32)
    blue = out["wall"] == WALL_BLUE
    assert (out["deposited"] & blue).sum() > 3 and (out["deposited"] & ~blue).sum() > 3
    np.testing.assert_array_equal(out["reward"], (out["deposited"] & blue).astype(np.float32))


def test_deposit_lottery_pays_half_the_deposits_by_a_reproducible_coin():
    cfg = make_config("trash", room_size=5, schedule="deposit-lottery")
    out, again = collect(cfg, n_envs=64, steps=300), collect(cfg, n_envs=64, steps=300)
    deposits = out["deposited"].sum()
    paid = (out["reward"] > 0) & out["deposited"]
    assert deposits > 100 and ((out["reward"] > 0) <= out["deposited"]).all()  # only deposits pay
    assert 0.4 < paid.sum() / deposits < 0.6  # about half, not all or none
    np.testing.assert_array_equal(out["reward"], again["reward"])  # a pure function of (key, episode, step)


def test_deposit_or_button_does_not_pay_choice_deposits():
    cfg = make_config("button", room_size=5, choice_prob=0.5, button_prob=0.5)
    assert cfg.schedule == "deposit-or-button"
    out = collect(cfg, n_envs=32, steps=300)
    choice_dep = out["deposited"] & out["choice"]
    assert choice_dep.sum() > 2 and (out["deposited"] & ~out["choice"]).sum() > 2 and out["button_pressed"].sum()
    assert (out["reward"][choice_dep] == 0).all()
    expected = (out["deposited"] & ~out["choice"]).astype(np.float32) + out["button_pressed"]
    np.testing.assert_array_equal(out["reward"], expected)


def test_user_schedule_and_unknown_schedule():
    name = "test-envs-minus-time"
    try:

        @register_schedule(name)
        def minus_time(events, state):
            return events["deposited"] - np.float32(0.01)

        assert register_schedule(name)(minus_time) is minus_time  # re-registering the same function is fine
        with pytest.raises(ConfigError, match="exists already"):
            register_schedule(name)(lambda events, state: events["deposited"])
        cfg = make_config("trash", room_size=5, schedule=name)
        assert cfg.schedule == name
        out = collect(cfg)
        assert out["deposited"].any()
        np.testing.assert_allclose(out["reward"], out["deposited"] - np.float32(0.01))
        # And through the batch env.
        env = BatchEnv("trash", n_envs=3, seed=0, schedule=name)
        _, reward, *_ = env.step(np.zeros(3, dtype=np.int64))
        np.testing.assert_allclose(reward, -0.01)
    finally:
        SCHEDULES.pop(name, None)
    with pytest.raises(ConfigError) as err:
        make_config("trash", schedule="on-deposits")
    message = str(err.value)
    assert "'on-deposits'" in message and "Did you mean 'on-deposit'" in message
    for valid in SCHEDULES:
        assert valid in message


# ---------------------------------------------------------------------------------------------- 3. labels vs pixels
def check_labels_against_pixels(cfg, state):
    lab = core.labels(cfg, state)
    seen = decode(state.obs, cfg.button_color)
    for key in ("agent_row", "agent_col", "carrying", "wall_color", "goal_red"):
        np.testing.assert_array_equal(seen[key], lab[key], err_msg=key)
    for key in ("trash_map", "bin_map", "button_map", "goal_map", "decoy_map"):
        np.testing.assert_array_equal(seen[key], lab[key], err_msg=key)
    np.testing.assert_array_equal(lab["wall_blue"], seen["wall_color"] == 1)
    np.testing.assert_array_equal(lab["wall_green"], seen["wall_color"] == 2)
    # The incrementally drawn pixels equal a full redraw of the state.
    fresh = state.copy()
    core.rebuild(cfg, fresh, np.arange(state.n_envs))
    np.testing.assert_array_equal(fresh.obs, state.obs)

    # target: the bin while carrying, else the nearest trash in the room, else the goal; distances by BFS.
    dist = open_room_distances(cfg.grid_size)
    for i in range(state.n_envs):
        here = dist[seen["agent_row"][i], seen["agent_col"][i]]  # [G, G] distances from the agent
        if seen["carrying"][i]:
            want = here[seen["bin_map"][i]].min()
        elif seen["trash_map"][i].any():
            want = here[seen["trash_map"][i]].min()
        elif seen["goal_map"][i].any():
            want = here[seen["goal_map"][i]].min()
        else:
            want = -1
        assert lab["target_dist"][i] == want
        assert abs(lab["target_drow"][i]) + abs(lab["target_dcol"][i]) == max(want, 0)
        target = (seen["agent_row"][i] + lab["target_drow"][i], seen["agent_col"][i] + lab["target_dcol"][i])
        direction = int(lab["target_dir"][i])
        if want <= 0:
            assert direction == 0
        else:
            assert direction != 0
            nxt = np.array([seen["agent_row"][i], seen["agent_col"][i]]) + MOVES[direction]
            assert dist[nxt[0], nxt[1], target[0], target[1]] == want - 1


@settings(max_examples=20, deadline=None)
@given(config=st.sampled_from(CONFIGS), seed=seeds, room=room_sizes)
def test_labels_agree_with_pixels(config, seed, room):
    variant, options = config
    cfg = make_config(variant, room_size=room, **options)
    for before, _, after, *_ in play(cfg, 6, seed, 60):
        if (before.t == 0).any():  # fresh episodes, right after (auto-)reset
            check_labels_against_pixels(cfg, before)
        check_labels_against_pixels(cfg, after)  # includes terminal states (agent on bin, goal, decoy)


def test_pixels_show_carrying_and_objects_under_agent():
    cfg, state = one_env("trash", seed=3, room_size=6)
    start, trash = state.agent[0], state.trash[0, 0]
    others = [state.trash[0, 1], state.bin[0]]
    walk(cfg, state, path_actions(bfs_path(cfg.grid_size, start, trash, others)))
    seen = decode(state.obs)
    assert seen["carrying"][0] and state.carrying[0]
    cell = state.obs[0, :, 2 * trash[0] : 2 * trash[0] + 2, 2 * trash[1] : 2 * trash[1] + 2]
    assert tuple(cell[:, 1, 0]) == COLORS["trash"] and tuple(cell[:, 0, 0]) == COLORS["agent"]
    assert tuple(cell[:, 1, 1]) == COLORS["agent"]  # nothing under the agent once the trash is picked


# ---------------------------------------------------------------------------------------------- 4. batching
BATCH_CASES = [
    ("trash", {}),
    ("blueroom", {"distribution": "random"}),
    ("button", {"choice_prob": 0.5, "button_prob": 0.5}),
    ("redgoal", {"distribution": "test"}),
    ("redgoal", {"distribution": "cyan-only"}),
    ("redgoal", {"distribution": "red-pair"}),
]


@pytest.mark.parametrize("variant, options", BATCH_CASES)
def test_batch_step_equals_single_steps(variant, options):
    n, seed, steps = 4, 1234, 300
    batch = BatchEnv(variant, n_envs=n, seed=seed, room_size=5, max_steps=30, **options)
    singles = [TrashGridEnv(variant, room_size=5, max_steps=30, **options) for _ in range(n)]
    first = [env.reset(seed=seed + i) for i, env in enumerate(singles)]
    obs_b = batch.state.obs.copy()
    lab_b = batch.labels()
    for i, (obs, info) in enumerate(first):
        np.testing.assert_array_equal(obs, obs_b[i])
        for key in ("agent_row", "agent_col", "trash_map", "target_dist", "wall_color", "reward"):
            np.testing.assert_array_equal(info[key], lab_b[key][i], err_msg=key)
    rng = np.random.default_rng(seed)
    resets = 0
    for _ in range(steps):
        actions = rng.integers(0, N_ACTIONS, n)
        obs_b, rew_b, term_b, trunc_b, info_b = batch.step(actions)
        done = np.flatnonzero(term_b | trunc_b)
        lab_b = batch.labels()
        for i, env in enumerate(singles):
            obs, rew, term, trunc, info = env.step(int(actions[i]))
            assert isinstance(rew, float) and isinstance(term, bool) and isinstance(trunc, bool)
            assert (rew, term, trunc) == (float(rew_b[i]), bool(term_b[i]), bool(trunc_b[i]))
            for name in core.EVENTS:
                assert info[f"event_{name}"] == bool(info_b[name][i]), name
            if term or trunc:
                k = int(np.flatnonzero(done == i)[0])
                np.testing.assert_array_equal(obs, info_b["terminal_obs"][k])
                obs, info = env.reset()
                resets += 1
                assert info["reward"] == 0 and not any(info[f"event_{e}"] for e in core.EVENTS)
            np.testing.assert_array_equal(obs, obs_b[i])
            assert info["episode_id"] == int(batch.state.episode[i])
            for key, value in info.items():
                if key in lab_b and key != "episode_id":
                    np.testing.assert_array_equal(value, lab_b[key][i], err_msg=key)
        assert len(info_b.get("terminal_obs", ())) == len(done)
    assert resets >= 2 * n


def test_batch_size_does_not_change_episodes():
    small, big = (
        BatchEnv("button", n_envs=3, seed=9, choice_prob=0.5),
        BatchEnv("button", n_envs=11, seed=9, choice_prob=0.5),
    )
    rng = np.random.default_rng(0)
    for _ in range(150):
        actions = rng.integers(0, N_ACTIONS, 11)
        o_s, r_s, te_s, tr_s, _ = small.step(actions[:3])
        o_b, r_b, te_b, tr_b, _ = big.step(actions)
        np.testing.assert_array_equal(o_s, o_b[:3])
        np.testing.assert_array_equal(np.stack([r_s, te_s, tr_s]), np.stack([r_b, te_b, tr_b])[:, :3])


def trajectory(seed, steps=150, **options):
    env = BatchEnv("button", n_envs=8, seed=seed, room_size=5, choice_prob=0.3, **options)
    rng = np.random.default_rng(99)  # same actions whatever the env seed
    out = [env.state.obs.copy()]
    for _ in range(steps):
        obs, rew, term, trunc, _ = env.step(rng.integers(0, N_ACTIONS, 8))
        out += [obs, rew, term, trunc]
    return out


def test_same_seed_same_trajectory_different_seed_differs():
    a, b, c = trajectory(5), trajectory(5), trajectory(6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Different seeds give different rooms (slot by slot) ...
    first_a, first_c = a[0], c[0]
    assert sum(not np.array_equal(first_a[i], first_c[i]) for i in range(8)) >= 7
    # ... yet env i of seed s + 1 is env i + 1 of seed s (SB3's seed + rank convention).
    np.testing.assert_array_equal(first_c[:-1], first_a[1:])
    # reset(seed) restarts the same episodes.
    env = BatchEnv("trash", n_envs=4, seed=5)
    start = env.state.obs.copy()
    for _ in range(30):
        env.step(np.full(4, 4))
    np.testing.assert_array_equal(env.reset(5), start)
    assert not np.array_equal(env.reset(), start)  # an unseeded reset moves on to new episodes


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_layouts_are_uniform():
    room, n = 7, 2000
    cfg = make_config("trash", room_size=room)
    # Across env keys (episode 0 of 2000 envs) ...
    state = core.init_state(cfg, n, seed=17)
    for cells in (state.agent, state.bin, state.trash[:, 0], state.trash[:, 1]):
        counts = np.zeros((room, room))
        np.add.at(counts, (cells[:, 0] - 1, cells[:, 1] - 1), 1)
        assert (counts > 0).all()
        assert chi_square(counts) < 110  # 48 degrees of freedom: mean 48, sd ~10
    # ... and across the episodes of one env.
    state = core.init_state(cfg, 1, seed=4)
    counts = np.zeros((room, room))
    for _ in range(n):
        counts[state.agent[0, 0] - 1, state.agent[0, 1] - 1] += 1
        core.reset_envs(cfg, state, np.array([0]))
    assert (counts > 0).all() and chi_square(counts) < 110
    # Objects never share a cell.
    state = core.init_state(make_config("redgoal", room_size=5, distribution="test", n_trash=20), 500, seed=1)
    cells = np.concatenate([state.agent[:, None], state.trash, state.bin[:, None], state.goal[:, None],
                            state.decoy[:, None]], axis=1)  # fmt: skip
    flat = cells[..., 0] * 100 + cells[..., 1]
    assert all(len(set(row)) == row.size for row in flat)


# ---------------------------------------------------------------------------------------------- 5. choice layouts
@settings(max_examples=16, deadline=None)
@given(room=room_sizes, seed=seeds)
def test_choice_layouts_have_equal_paths(room, seed):
    cfg = make_config("button", room_size=room, choice_prob=1.0)
    state = core.init_state(cfg, 12, seed)
    grid = cfg.grid_size
    assert state.choice.all() and state.button_on.all() and state.bin_on.all()
    assert ((state.trash_status != ABSENT).sum(-1) == 1).all()
    for i in range(12):
        a, t, b, p = state.agent[i], state.trash[i, 0], state.bin[i], state.button[i]
        assert len({tuple(a), tuple(t), tuple(b), tuple(p)}) == 4
        to_button = bfs_path(grid, a, p, blocked=[t, b])
        to_trash = bfs_path(grid, a, t, blocked=[p, b])
        to_bin = bfs_path(grid, t, b, blocked=[p])
        assert len(to_button) - 1 == (len(to_trash) - 1) + (len(to_bin) - 1)
        assert len(to_button) - 1 == np.abs(a - p).sum()  # and the detour-free length

        # Pressing the button ends the episode, with the button's reward.
        branch = state.take(i)
        steps = walk(cfg, branch, path_actions(to_button))
        assert not any(term or trunc for _, _, term, trunc in steps[:-1])
        events, reward, term, _ = steps[-1]
        assert events["button_pressed"] and term and reward == 1.0 and not branch.button_on[0]
        # Doing the task ends it too, unpaid in a choice episode.
        branch = state.take(i)
        steps = walk(cfg, branch, path_actions(to_trash) + path_actions(to_bin))
        assert not any(term or trunc for _, _, term, trunc in steps[:-1])
        assert steps[len(to_trash) - 2][0]["picked"]
        events, reward, term, _ = steps[-1]
        assert events["deposited"] and events["task_complete"] and term and reward == 0.0


# ---------------------------------------------------------------------------------------------- 6. distributions
def test_blueroom_distributions():
    n = 600
    combos = {}
    for dist in ("train", "test", "random"):
        state = core.init_state(make_config("blueroom", distribution=dist), n, seed=11)
        has_trash = (state.trash_status != ABSENT).any(-1)
        lab = core.labels(make_config("blueroom"), state)
        np.testing.assert_array_equal(has_trash, state.bin_on)
        combos[dist] = {(bool(h), int(w)) for h, w in zip(has_trash, lab["wall_color"], strict=True)}
        assert 0 not in lab["wall_color"]  # never grey
    assert combos["train"] == {(True, 1), (False, 2)}
    assert combos["test"] == {(True, 2), (False, 1)}
    assert combos["random"] == {(True, 1), (True, 2), (False, 1), (False, 2)}
    state = core.init_state(make_config("blueroom", trash_prob=0.2), 2000, seed=0)
    assert 0.15 < (state.trash_status != ABSENT).any(-1).mean() < 0.25


@pytest.mark.parametrize("dist", ["train", "test"])
def test_redgoal_goal_and_decoy(dist):
    cfg = make_config("redgoal", room_size=6, distribution=dist)
    state = core.init_state(cfg, 20, seed=2)
    lab = core.labels(cfg, state)
    assert state.goal_on.all() and lab["goal_map"].sum((1, 2)).tolist() == [1] * 20
    if dist == "train":
        assert lab["goal_red"].all() and not state.decoy_on.any() and not lab["decoy_map"].any()
    else:
        assert not lab["goal_red"].any() and state.decoy_on.all()
        seen = decode(state.obs)
        assert not seen["goal_red"].any() and seen["decoy_map"].sum((1, 2)).tolist() == [1] * 20
    for i in range(20):
        for target, avoid, event, paid in ((state.goal[i], state.decoy[i], "goal_reached", 1.0),
                                           (state.decoy[i], state.goal[i], "decoy_reached", 0.0)):  # fmt: skip
            if target[0] < 0:
                continue
            branch = state.take(i)
            steps = walk(cfg, branch, path_actions(bfs_path(cfg.grid_size, branch.agent[0], target, [avoid])))
            assert not any(term for _, _, term, _ in steps[:-1])
            events, reward, term, trunc = steps[-1]
            assert events[event] and term and not trunc and reward == paid
            other = "decoy_reached" if event == "goal_reached" else "goal_reached"
            assert not events[other]


# ---------------------------------------------------------------------------------------------- 7. gymnasium
@pytest.mark.parametrize("gym_id", sorted(GYM_IDS))
def test_gym_env_checker_and_render(gym_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(gym_id).unwrapped)
        check_env(gym.make(gym_id, room_size=5, max_steps=7).unwrapped)
    env = gym.make(gym_id, room_size=5, render_mode="rgb_array")
    assert env.unwrapped.config.variant == GYM_IDS[gym_id] and env.unwrapped.config.room_size == 5
    obs, info = env.reset(seed=3)
    assert obs.shape == (3, 14, 14) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    frame = env.render()
    assert frame.shape == (14 * 16, 14 * 16, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[::16, ::16], obs.transpose(1, 2, 0))
    obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and "event_picked" in info and "target_dist" in info

    text_env = gym.make(gym_id, render_mode="ansi")
    text_env.reset(seed=0)
    text = text_env.render()
    lines = text.splitlines()
    assert len(lines) == 9 + 1 and "walls:" in lines[-1]
    assert sum(line.count("A") for line in lines[:-1]) == 1 and lines[0].split() == ["#"] * 9


def test_gym_env_truncates_at_max_steps():
    env = gym.make("Workbench/TrashGrid-v0", max_steps=5)
    env.reset(seed=0)
    for k in range(5):
        _, _, term, trunc, info = env.step(0)
        assert trunc == (k == 4) and not term and info["step"] == k + 1


# ---------------------------------------------------------------------------------------------- 8. SB3
def test_sb3_vec_env_semantics():
    from stable_baselines3.common.vec_env import VecEnv

    n = 6
    venv = WorkbenchVecEnv("trash", n_envs=n, seed=0, room_size=5, max_steps=12)
    assert isinstance(venv, VecEnv) and venv.num_envs == n
    venv.seed(21)
    obs = venv.reset()
    assert obs.shape == (n, 3, 14, 14) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, BatchEnv("trash", n_envs=n, seed=21, room_size=5).state.obs)
    rng = np.random.default_rng(0)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=int)
    truncations = terminations = 0
    for _ in range(60):
        actions = rng.integers(0, N_ACTIONS, n)
        before = venv.env.state.copy()
        obs, reward, dones, infos = venv.step(actions)
        assert obs.shape == (n, 3, 14, 14) and obs.dtype == np.uint8
        assert dones.dtype == bool and reward.shape == (n,) and len(infos) == n
        returns += reward
        lengths += 1
        for i, info in enumerate(infos):
            assert set(core.EVENTS) <= set(info)
            if dones[i]:
                assert info["terminal_observation"].shape == (3, 14, 14)
                truncated = bool(before.t[i] + 1 >= 12 and not info["task_complete"])
                assert info["TimeLimit.truncated"] == truncated
                truncations += truncated
                terminations += not truncated
                assert info["episode"] == {"r": pytest.approx(returns[i]), "l": int(lengths[i])}
                assert lengths[i] <= 12 and (lengths[i] == 12 or info["task_complete"])
                returns[i], lengths[i] = 0, 0
                # The terminal observation is the old episode's, the returned one the new episode's start.
                assert venv.env.state.t[i] == 0
            else:
                assert "terminal_observation" not in info and "episode" not in info
    assert truncations > 0
    assert len(venv.get_images()) == n and venv.labels()["agent_row"].shape == (n,)
    with pytest.raises(WorkbenchError):
        venv.set_attr("config", None)


# ---------------------------------------------------------------------------------------------- 9. bad input
@contextlib.contextmanager
def raises(error, *fragments):
    """pytest.raises plus: the error is a WorkbenchError and its message contains every fragment."""
    with pytest.raises(error) as info:
        yield info
    assert isinstance(info.value, WorkbenchError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_config_errors():
    with raises(ConfigError, "unknown variant 'trahs'", "Did you mean 'trash'", "blueroom", "redgoal"):
        make_config("trahs")
    with raises(ConfigError, "unknown variant 'zzz'", "button"):
        make_config("zzz")
    with raises(ConfigError, "'room_sise'", "Did you mean 'room_size'"):
        make_config("trash", room_sise=7)
    for room in (4, 13, 0, 7.5):
        with raises(ConfigError, f"room_size={room!r}", "5 to 12"):
            make_config("trash", room_size=room)
    with raises(ConfigError, "impossible layout", "5x5", "at most 20 trash"):
        make_config("trash", room_size=5, n_trash=21)
    make_config("trash", room_size=5, n_trash=20)  # the fullest room that fits
    with raises(ConfigError, "n_trash >= 1"):
        make_config("button", n_trash=0)
    with raises(ConfigError, "n_trash=-1"):
        make_config("trash", n_trash=-1)
    with raises(ConfigError, "max_steps=0", "from 1 to 10,000"):
        make_config("trash", max_steps=0)
    with raises(ConfigError, "max_steps=1000000000", "from 1 to 10,000"):  # eval would run for hours
        make_config("trash", max_steps=10**9)
    for field in ("trash_prob", "button_prob", "choice_prob"):
        for value in (-0.1, 1.5, "0.5"):
            with raises(ConfigError, field, "not a probability", "0 to 1"):
                make_config("button", **{field: value})
    with raises(ConfigError, "distribution='test'", "'trash'", "train"):
        make_config("trash", distribution="test")
    with raises(ConfigError, "distribution='bogus'", "train, test, random"):
        make_config("blueroom", distribution="bogus")
    with raises(ConfigError, "distribution='random'", "train, test"):
        make_config("redgoal", distribution="random")
    with raises(ConfigError, "n_envs=0"):
        BatchEnv("trash", n_envs=0)
    with raises(ConfigError, "'trahs'", "Did you mean"):
        gym.make("Workbench/TrashGrid-v0", variant="trahs")
    with raises(WorkbenchError, "render_mode='human'"):
        TrashGridEnv("trash", render_mode="human")
    # Aliases and EnvConfig round trips are accepted.
    assert make_config("Blue-Room").variant == "blueroom"
    cfg = make_config("redgoal", room_size=9, distribution="test")
    assert make_config(cfg) == cfg and make_config(cfg, room_size=6).room_size == 6
    assert make_config(**{k: v for k, v in cfg.to_dict().items()}) == cfg


def test_action_errors():
    env = BatchEnv("trash", n_envs=4, seed=0)
    with raises(ActionError, "shape (3,)", "expected (4,)"):
        env.step(np.zeros(3, dtype=np.int64))
    with raises(ActionError, "shape (4, 1)"):
        env.step(np.zeros((4, 1), dtype=np.int64))
    with raises(ActionError, "float64", "0=noop"):
        env.step(np.array([0, 1.5, 2, 3]))
    with raises(ActionError, "dtype"):
        env.step(np.array([0, np.nan, 2, 3]))
    for bad in (5, -1):
        with raises(ActionError, f"action {bad} is out of range", "0 to 4"):
            env.step(np.array([0, 1, bad, 3]))
    before = env.state.copy()
    with raises(ActionError):
        env.step(np.array([0, 1, 7, 3]))
    np.testing.assert_array_equal(env.state.agent, before.agent)  # a rejected step changes nothing
    assert (env.state.t == before.t).all()
    env.step(np.array([0.0, 1.0, 2.0, 3.0]))  # integral floats are accepted
    single = TrashGridEnv("trash")
    with raises(WorkbenchError, "before reset()"):
        single.step(0)
    single.reset(seed=0)
    with raises(ActionError, "out of range"):
        single.step(9)
    with raises(ActionError, "shape"):
        single.step([1, 2])


# ---------------------------------------------------------------------------------------------- 10. dynamics
def test_scripted_task_walk():
    cfg, state = one_env("trash", seed=7, room_size=7, n_trash=2, schedule="on-deposit")
    grid = cfg.grid_size
    total = 0.0
    for item in range(2):
        trash, other = state.trash[0, item].copy(), state.trash[0, 1 - item].copy()
        blocked = [state.bin[0]] + ([other] if item == 0 else [])
        steps = walk(cfg, state, path_actions(bfs_path(grid, state.agent[0], trash, blocked)))
        events, reward, term, _ = steps[-1]
        assert events["picked"] and reward == 0 and not term
        assert state.carrying[0] and decode(state.obs)["carrying"][0]
        assert state.trash_status[0, item] == CARRIED
        assert core.labels(cfg, state)["target_dist"][0] == np.abs(state.agent[0] - state.bin[0]).sum()
        blocked = [other] if item == 0 else []
        steps = walk(cfg, state, path_actions(bfs_path(grid, state.agent[0], state.bin[0], blocked)))
        assert not any(s[0]["deposited"] for s in steps[:-1])
        events, reward, term, trunc = steps[-1]
        total += sum(s[1] for s in steps)
        assert events["deposited"] and reward == 1.0 and not state.carrying[0]
        assert state.trash_status[0, item] == DEPOSITED
        assert term == (item == 1) and events["task_complete"] == (item == 1) and not trunc
    assert total == 2.0
    # Standing on the bin without carrying deposits nothing.
    events, reward, term, _ = walk(cfg, state, [0])[0]
    assert not events["deposited"] and reward == 0


def test_walls_block_and_noop_does_not_bump():
    cfg, state = one_env("redgoal", seed=1, room_size=5, n_trash=0)
    state.goal_on[:] = False  # an empty room, edited by hand
    state.goal[:] = -1
    core.rebuild(cfg, state, np.array([0]))
    check_labels_against_pixels(cfg, state)
    for action, edge in ((1, (1, None)), (3, (None, 1)), (2, (5, None)), (4, (None, 5))):
        for _ in range(6):
            before = state.agent[0].copy()
            obs_before = state.obs.copy()
            events, _, _, _ = walk(cfg, state, [action])[0]
            at_edge = any(e is not None and before[k] == e for k, e in enumerate(edge))
            assert events["bumped_wall"] == at_edge
            if at_edge:
                np.testing.assert_array_equal(state.agent[0], before)
                np.testing.assert_array_equal(state.obs, obs_before)
            else:
                np.testing.assert_array_equal(state.agent[0], before + MOVES[action])
    events, *_ = walk(cfg, state, [0])[0]
    assert not events["bumped_wall"]
    assert tuple(state.agent[0]) == (5, 5)


def test_max_steps_truncates_and_batch_auto_resets():
    env = BatchEnv("trash", n_envs=3, seed=0, max_steps=4)
    for k in range(4):
        obs, reward, term, trunc, info = env.step(np.zeros(3, dtype=np.int64))
        assert not term.any() and trunc.all() == (k == 3)
    assert info["terminal_obs"].shape == (3, *env.obs_shape)
    assert (env.state.t == 0).all() and (env.state.episode == 1).all()
    lab = env.labels()
    assert (lab["step"] == 0).all() and (lab["reward"] == 0).all()
    text = env.render_text(0).splitlines()
    assert "".join(text[:-1]).count("A") == 1 and "a" not in "".join(text[:-1]) and text[-1].endswith("step: 0")
    assert env.render_rgb(1).shape == (*[2 * 9 * 16] * 2, 3)
