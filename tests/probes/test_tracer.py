"""The chiseling tracer (`probes.tracer`): a feature planted at a known stretch is found there, near-dead units do
not dominate the standardised direction or the push, reward is a rate per env-step, and the association test's
p-values are scipy's and the exact permutation distribution's."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.common import CHECKPOINTS
from probes import tracer
from workbench.common.errors import CheckpointError, ConfigError

STEPS = [0, 1000, 2000, 4000, 8000, 16000, 32000, 64000]
PLANTED = 5  # the feature appears between STEPS[4] and STEPS[5]
N, D, EPISODE = 3000, 12, 30


def planted_series(planted_at: int | None = PLANTED, seed: int = 0):
    """Activations at every checkpoint: D noise units (fresh noise per checkpoint), unit 2 carrying the label
    (+2 where it is 1) from checkpoint `planted_at` on, unit 7 near-dead (sd 0.002); a linear actor head that
    reads unit 2 from then on, and reads only noise units before."""
    rng = np.random.default_rng(seed)
    episodes = np.arange(N) // EPISODE
    y = (rng.random(N) < 0.5).astype(np.float64)
    acts, heads = [], []
    for i in range(len(STEPS)):
        a = rng.normal(size=(N, D))
        a[:, 7] = 0.3 + 0.002 * rng.normal(size=N)
        head = np.zeros((D, 3))
        head[0, 0] = 0.5
        if planted_at is not None and i >= planted_at:
            a[:, 2] += 2.0 * y
            head[2, 1] = 1.0
        acts.append(a)
        heads.append(head)
    return acts, heads, y, episodes


def linear_forwards(acts, heads, rows):
    def make(a, head):
        def forward(delta):
            x = a[rows] if delta is None else a[rows] + delta
            return x @ head, x[:, 0]

        return forward

    return [make(a, h) for a, h in zip(acts, heads, strict=True)]


def test_planted_feature_is_found_in_its_stretch():
    acts, heads, y, episodes = planted_series()
    rows = np.arange(0, N, 3)
    control = np.random.default_rng(9).normal(size=(N, D))
    table = tracer.trace_checkpoints(STEPS, acts, {"feature": y}, episodes, linear_forwards(acts, heads, rows), rows,
                                     control, n_boot=100)  # fmt: skip
    assert len(table) == len(STEPS) and set(table.label) == {"feature"}
    assert tracer.onset(table) == (STEPS[PLANTED - 1], STEPS[PLANTED])
    before, after = table[table.step < STEPS[PLANTED]], table[table.step >= STEPS[PLANTED]]
    assert (before.sel_ci_low < 0).all() and before.score.abs().max() < 0.1
    # corr(e + 2y, y) with y ~ Bernoulli(0.5) is 0.5 / (sqrt(2) * 0.5) = 0.707; the other units add a little noise
    assert np.allclose(after.score, 0.707, atol=0.04) and (after.sel_ci_low > 0.5).all()
    assert (after.ci_low <= after.score).all() and (after.score <= after.ci_high).all()
    assert (after.push_kl > 20 * before.push_kl.max()).all()  # the head reads the feature only from then on
    # unit 7 (sd 0.002) is near-dead and unrelated to the label: beside a real feature it gets next to nothing (before,
    # the direction is noise and it is one unit among twelve)
    assert (after.near_dead_share < 0.01).all() and (before.near_dead_share < 0.3).all()
    rewards = pd.DataFrame({"start": STEPS[:-1], "end": STEPS[1:], "env_steps": np.diff(STEPS),
                            "reward_events": 1, "reward_rate": 1 / np.diff(STEPS)})  # fmt: skip
    stretches = tracer.stretch_table(table, rewards)
    grew = stretches.loc[stretches.d_selectivity.idxmax()]
    assert (grew.start, grew.end) == (STEPS[PLANTED - 1], STEPS[PLANTED])
    assert stretches.loc[stretches.d_push_kl.idxmax()].end == STEPS[PLANTED]
    assert np.isclose(grew.d_selectivity_per_kstep, grew.d_selectivity / ((grew.end - grew.start) / 1000))


def test_without_a_planted_feature_there_is_no_onset():
    acts, heads, y, episodes = planted_series(planted_at=None)
    table = tracer.trace_checkpoints(STEPS, acts, {"feature": y}, episodes, n_boot=100)
    assert tracer.onset(table) is None and table.score.abs().max() < 0.1
    assert "push_kl" not in table.columns


def test_near_dead_unit_does_not_dominate_the_direction_or_the_push():
    rng = np.random.default_rng(1)
    n = 4000
    y = (rng.random(n) < 0.5).astype(np.float64)
    a = rng.normal(size=(n, 8))
    a[:, 0] += 1.5 * y  # the informative unit: r = 0.6
    a[:, 1] = 0.002 * (rng.normal(size=n) + 0.2 * y)  # near-dead (sd 0.002), weakly related: r = 0.1
    a[:, 2] = 0.5  # dead
    episodes = np.arange(n) // 20
    test = tracer.episode_split(episodes)
    r = tracer.readout(a, y, test, episodes, n_boot=0)
    share = r.direction**2
    assert not r.live[2] and r.direction[2] == 0 and r.live[1]
    assert share[0] > 0.8 and share[1] < 0.05
    delta = tracer.push_delta(r.direction, r.sd)
    assert abs(delta[1]) / np.linalg.norm(delta) < 1e-3  # the near-dead unit barely moves
    assert np.isclose(np.linalg.norm(delta / r.sd), tracer.ALPHA)  # alpha sds along the unit direction
    # The artefact this replaces: standardised weights taken to the raw basis (divided by sd) put the norm on the
    # near-dead unit.
    raw = np.where(r.live, r.direction / r.sd, 0)
    assert raw[1] ** 2 / (raw**2).sum() > 0.9
    # Rescaling a unit changes nothing in standardised space.
    scaled = a.copy()
    scaled[:, 0] *= 1000
    again = tracer.readout(scaled, y, test, episodes, n_boot=0)
    assert np.allclose(again.direction, r.direction) and math.isclose(again.score, r.score)


def exact_null(x, y):
    """Spearman's rho of x with every permutation of y (Pearson's r of the ranks, in numpy)."""
    rx = sps.rankdata(x) - (len(x) + 1) / 2
    ry = np.array(list(itertools.permutations(sps.rankdata(y)))) - (len(y) + 1) / 2
    return ry @ rx / np.sqrt((rx @ rx) * (ry * ry).sum(1))


def test_association_p_values_are_scipys_and_the_exact_permutation_ones():
    x = np.array([0.1, 0.4, 0.2, 0.9, 0.5, 0.7])
    y = np.array([1.0, 3.0, 2.0, 6.0, 4.0, 2.5])
    out = tracer.association_test([x], [y])  # 6! = 720 <= N_RESAMPLES: scipy enumerates every pairing
    assert math.isclose(out["rho"][0], sps.spearmanr(x, y).statistic)
    null = exact_null(x, y)
    t = out["rho"][0]
    exact = min(1.0, 2 * min(np.mean(null >= t - 1e-12), np.mean(null <= t + 1e-12)))
    reference = sps.permutation_test((y,), lambda yy: sps.spearmanr(x, yy).statistic, permutation_type="pairings",
                                     n_resamples=np.inf).pvalue  # fmt: skip
    assert math.isclose(out["p"][0], exact) and math.isclose(out["p"][0], reference)
    assert math.isclose(out["p_mean"], exact)  # one seed: the mean rho is that seed's
    assert 0.02 < exact < 0.06  # rho = 0.89 on 6 stretches: near the edge of significance

    # Two seeds of 5 stretches: scipy's pairings permute each seed on its own (exact at 120^2 pairings), as does the
    # numpy version used for seeds of unequal length.
    xs = [np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0.3, 0.1, 0.5, 0.4, 0.2])]
    ys = [np.array([2.0, 1.0, 4.0, 3.0, 5.0]), np.array([0.2, 0.0, 0.9, 0.1, 0.3])]
    out = tracer.association_test(xs, ys, n_resamples=20000)
    rhos = [sps.spearmanr(x, y).statistic for x, y in zip(xs, ys, strict=True)]
    assert math.isclose(out["mean_rho"], np.mean(rhos))
    null = (exact_null(xs[0], ys[0])[:, None] + exact_null(xs[1], ys[1])[None, :]).ravel() / 2  # every pair
    t = out["mean_rho"]
    exact = min(1.0, 2 * min(np.mean(null >= t - 1e-12), np.mean(null <= t + 1e-12)))
    assert math.isclose(out["p_mean"], exact)
    _, p_numpy = tracer._stratified(list(zip(xs, ys, strict=True)), 20000, np.random.default_rng(0))
    assert abs(p_numpy - exact) < 0.01
    uneven = tracer.association_test([xs[0], xs[1][:4]], [ys[0], ys[1][:4]], n_resamples=20000)
    assert 0 < uneven["p_mean"] <= 1 and len(uneven["p"]) == 2 and uneven["n_stretches"] == [5, 4]


def test_association_finds_a_planted_link_and_not_noise():
    rng = np.random.default_rng(3)
    xs = [rng.random(9) for _ in range(3)]
    linked = tracer.association_test(xs, [x * 2 + 0.05 * rng.normal(size=9) for x in xs])
    assert linked["mean_rho"] > 0.9 and linked["p_mean"] < 0.001
    noise = tracer.association_test(xs, [rng.random(9) for _ in range(3)])
    assert abs(noise["mean_rho"]) < 0.4 and noise["p_mean"] > 0.1
    assert tracer.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_min_detectable_rho_matches_the_fisher_approximation():
    # Fisher z with Spearman's variance 1.06 / (n - 3): (1.96 + 0.84) * sqrt(1.06 / 6) = 1.18 -> rho = 0.83
    one = tracer.min_detectable_rho(9, 1, n_sim=1500, n_null=5000)
    three = tracer.min_detectable_rho(9, 3, n_sim=1500, n_null=5000)
    assert abs(one - 0.83) < 0.04 and 0.5 < three < 0.62


def test_reward_is_a_rate_per_env_step_and_a_random_policy_rate_is_near_step_zeros(tmp_path):
    run = CHECKPOINTS / "trash-cnn-s0"
    table = tracer.reward_stretches(run)
    row = table[(table.start == 61440) & (table.end == 81920)].iloc[0]
    assert (row.reward_events, row.env_steps, row.reward_events_source) == (91, 20480, "logged")
    assert math.isclose(row.reward_rate, 91 / 20480) and row.rate_ci_low < row.reward_rate < row.rate_ci_high
    assert (table.env_steps == table.end - table.start).all()
    env = json.loads((run / "run.json").read_text())["env"]
    random = tracer.random_policy_rate(env, [0, 4096, 8192, 40960], repeats=2)
    assert random.env_steps.tolist() == [8192, 8192, 65536]  # two lockstep batches of 256 rooms, pooled
    assert (random.ci_low < random.rate).all() and (random.rate < random.ci_high).all()
    # The first 16 steps of every episode hold fewer deposits than the steady state, which is near a fresh
    # network's (it acts near-uniformly) in its step-0 evaluation.
    assert random.rate[0] < 0.5 * random.rate[2]
    step0 = json.loads((run / "step-000000000.json").read_text())
    assert abs(random.rate[2] - step0["deposits_per_episode"] / step0["mean_length"]) < 0.0012
    with pytest.raises(ConfigError, match="increasing"):
        tracer.random_policy_rate(env, [0])

    for step, extra in ((0, {}), (100, {"deposits_per_episode": 0.5, "mean_length": 50.0})):
        (tmp_path / f"step-{step:09d}.json").write_text(json.dumps({"step": step, "deposits_per_episode": 0.1,
                                                                    "mean_length": 50.0, **extra}))  # fmt: skip
    old = tracer.reward_stretches(tmp_path)  # a series trained before the trainer logged its rewards
    assert old.reward_events_source.tolist() == ["estimated"] and math.isclose(old.reward_rate[0], 0.006)
    (tmp_path / "step-000000100.json").unlink()
    with pytest.raises(CheckpointError, match="at least 2"):
        tracer.reward_stretches(tmp_path)


def test_bad_input_names_the_problem():
    acts, _, y, episodes = planted_series()
    with pytest.raises(ConfigError, match="increasing"):
        tracer.trace_checkpoints([0, 0], acts[:2], {"f": y}, episodes)
    with pytest.raises(ConfigError, match="one per checkpoint"):
        tracer.trace_checkpoints(STEPS, acts[:3], {"f": y}, episodes)
    with pytest.raises(ConfigError, match="label 'f' has 10 values"):
        tracer.trace_checkpoints(STEPS, acts, {"f": y[:10]}, episodes)
    with pytest.raises(ConfigError, match="constant"):
        tracer.trace_checkpoints(STEPS, acts, {"f": np.zeros(N)}, episodes)
    with pytest.raises(ConfigError, match="NaN"):
        tracer.trace_checkpoints(STEPS, [a * np.nan for a in acts], {"f": y}, episodes)
    with pytest.raises(ConfigError, match="at least 3 stretches"):
        tracer.association_test([[1, 2]], [[1, 2]])


def test_trace_run_on_a_bundled_series():
    table = tracer.trace_run(CHECKPOINTS / "trash-cnn-s0", "fc.hook_out", ["carrying"], n_obs=1500, n_push=256,
                             n_random=1, n_boot=20)  # fmt: skip
    assert table.step.tolist() == [
        0,
        4096,
        8192,
        12288,
        16384,
        24576,
        32768,
        45056,
        61440,
        81920,
        110592,
        151552,
        204800,
        274432,
        372736,
        503808,
    ]  # E5's traced series: 16 checkpoints
    assert set(table.run) == {"trash-cnn-s0"} and table.control_random_init.notna().all()
    assert (table.push_kl >= 0).all() and table.push_kl.iloc[-1] > 0.01  # the trained policy's output moves
    assert table.n_live.iloc[1] < 32 < table.n_live.iloc[0]  # most fc units die in the first update
    assert table.score.iloc[-1] > 0.6  # the trained policy reads carrying
    with pytest.raises(ConfigError, match="unknown label 'carryng'"):
        tracer.trace_run(CHECKPOINTS / "trash-cnn-s0", "fc.hook_out", ["carryng"], n_obs=200)
