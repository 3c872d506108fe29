"""Probes: planted features are found, noise is not, controls and splits behave, scores agree with
scikit-learn, bad input fails clearly, and a sweep over a tiny trained run writes its table and directions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probes
from probes.episodes import bootstrap_weights, shuffle_across_episodes, split_by_episode
from probes.fit import CURVATURE, Features, fit_classifiers, fit_ridge
from probes.metrics import auroc, score
from probes.probe import COLUMNS, CONTROLS
from workbench.common.errors import ConfigError

N, D, EPISODE = 3000, 24, 40


def synthetic(seed=0, n=N, d=D, noise=False):
    """Features with a planted direction w; labels: y_reg = Xw + noise, y_bin from a logistic of Xw, y_multi from
    thresholds of Xw, y_noise independent of X; episodes of EPISODE rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 3, size=d).astype(np.float32) + 1.0
    w = rng.normal(size=d)
    z = (X - 1.0) @ w
    z = z / z.std()
    labels = pd.DataFrame(
        {
            "y_reg": z + 0.3 * rng.normal(size=n),
            "y_bin": z + 0.3 * rng.logistic(size=n) > 0.2,
            "y_multi": np.digitize(z, [-0.8, 0.0, 0.8]).astype(np.int64),
            "y_noise": rng.random(n) > 0.5,
            "y_const": np.full(n, 3, dtype=np.int64),
        }
    )
    episodes = np.arange(n) // EPISODE
    dead = np.full((n, 1), 0.5, dtype=np.float32)  # a constant feature (a dead unit): left out, weight 0
    return probes.ArrayDataset({"h": np.concatenate([X, dead], 1)}, labels, episodes), w


def rows(table, label, metric, control="shuffled"):
    return table[(table.label == label) & (table.metric == metric) & (table.control == control)].iloc[0]


@pytest.fixture(scope="module")
def planted():
    ds, w = synthetic()
    return ds, w, probes.fit_probes(ds, ["h"], ["y_reg", "y_bin", "y_multi", "y_noise"], random_init=None)


def test_planted_feature_is_recovered_with_its_direction(planted):
    ds, w, result = planted
    table = result.table
    assert rows(table, "y_reg", "r2").value > 0.85
    assert rows(table, "y_bin", "auroc").value > 0.9 and rows(table, "y_bin", "accuracy").value > 0.8
    assert rows(table, "y_multi", "accuracy").value > 0.75
    for label in ("y_reg", "y_bin"):
        direction = next(d for d in result.directions if d.label == label)
        # in the original basis the planted direction is w / 1 (features were scaled then shifted)
        cosine = torch.nn.functional.cosine_similarity(direction.weight[:-1].double(), torch.tensor(w), 0)
        assert cosine > 0.9, (label, float(cosine))
        assert direction.weight[-1] == 0 and direction.std[-1] == 1 and direction.mean[-1] == 0.5
        # the direction reproduces the probe's output on raw activations
        logits = ds.activations("h") @ direction.weight + direction.bias
        assert torch.isfinite(logits).all()
    selectivity = rows(table, "y_bin", "auroc")
    assert selectivity.selectivity > 0.2 and selectivity.ci_low < selectivity.value < selectivity.ci_high


def test_controls_stay_at_chance(planted):
    _, _, result = planted
    table = result.table
    assert abs(rows(table, "y_bin", "auroc").control_value - 0.5) < 0.1
    assert rows(table, "y_reg", "r2").control_value < 0.05
    assert abs(rows(table, "y_multi", "balanced_accuracy").control_value - 0.25) < 0.1
    baseline = rows(table, "y_bin", "balanced_accuracy", "baseline")
    assert baseline.control_value == pytest.approx(0.5)
    assert np.isnan(rows(table, "y_bin", "auroc", "random_init").control_value)  # random_init=None
    best_unit = rows(table, "y_reg", "r2", "best_unit").control_value
    assert 0 < best_unit < rows(table, "y_reg", "r2").value


def test_noise_scores_at_chance_with_a_ci_covering_it(planted):
    _, _, result = planted
    for metric in ("auroc", "balanced_accuracy"):
        row = rows(result.table, "y_noise", metric)
        assert row.ci_low < 0.5 < row.ci_high, (metric, row.ci_low, row.ci_high)
        assert abs(row.value - 0.5) < 0.06


def test_table_layout(planted):
    _, _, result = planted
    table = result.table
    assert list(table.columns) == COLUMNS
    assert set(table.control) == set(CONTROLS)
    # one row per (hook, label, probe, metric, control)
    assert not table.duplicated(["step", "hook", "label", "probe", "metric", "control"]).any()
    per_probe = table.groupby(["label", "metric"])
    assert (per_probe["selectivity"].nunique() == 1).all()
    gap = table.control_gap.dropna()
    assert (gap >= table.selectivity[gap.index] - 1e-9).all()
    assert set(table.kind) == {"regression", "binary", "multiclass"}
    assert set(table.probe) == {"ridge", "logistic", "multinomial"}


def test_a_stack_of_designs_fits_as_each_alone():
    """score_stack (one batch for several checkpoints of a hook) gives each design the scores it gets alone."""
    from probes.labels import resolve_labels
    from probes.probe import score_hook, score_stack

    ds, _ = synthetic(n=1200)
    other, _ = synthetic(seed=1, n=1200)
    targets, _ = resolve_labels(ds, ["y_reg", "y_bin", "y_multi"])
    split = split_by_episode(ds.episode_ids(), seed=0)
    designs = [ds.activations("h"), other.activations("h")]
    stacked = score_stack(designs, "h", targets, split, n_boot=20)
    for design, scores in zip(designs, stacked, strict=True):
        alone = score_hook(design, "h", targets, split, n_boot=20)
        for a, b in zip(scores, alone, strict=True):
            assert a.label == b.label and a.reg == b.reg
            for metric, (value, _, _) in a.metrics.items():
                assert value == pytest.approx(b.metrics[metric][0], abs=0.01), (a.label, metric)


def test_split_never_puts_an_episode_on_two_sides():
    episodes = np.repeat(np.random.default_rng(0).permutation(50), np.random.default_rng(1).integers(1, 30, 50))
    split = split_by_episode(episodes, seed=3)
    sides = [set(episodes[split.train]), set(episodes[split.val]), set(episodes[split.test])]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sorted(np.concatenate([split.train, split.val, split.test])) == list(range(len(episodes)))
    again = split_by_episode(episodes, seed=3)
    assert (again.test == split.test).all()
    assert not np.array_equal(split_by_episode(episodes, seed=4).test, split.test)


def test_shuffle_moves_whole_episode_sequences():
    episodes = np.repeat(np.arange(6), [3, 5, 2, 4, 6, 1])
    values = np.arange(len(episodes))  # value = row: where each label came from
    shuffled = shuffle_across_episodes(values, episodes, seed=0)
    assert sorted(shuffled) == list(values) and not (shuffled == values).all()
    # read in row order, the shuffled labels are whole episodes laid end to end
    starts = {int(values[episodes == e][0]) for e in range(6)}
    breaks = [i for i in range(len(shuffled)) if i == 0 or shuffled[i] != shuffled[i - 1] + 1]
    assert {int(shuffled[i]) for i in breaks} <= starts


def test_bootstrap_resamples_whole_episodes():
    episodes = np.repeat(np.arange(10), 7)
    weights = bootstrap_weights(episodes, n_boot=50, seed=0)
    assert weights.shape == (51, 70) and (weights[0] == 1).all()
    per_episode = weights[1:].reshape(50, 10, 7)
    assert (per_episode == per_episode[..., :1]).all()  # all rows of an episode share its draw count
    assert (per_episode[..., 0].sum(1) == 10).all()


# ---------------------------------------------------------------------------------------------- vs scikit-learn
def _standardised(seed=0, n=600, d=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    X = (X - X.mean(0)) / X.std(0)
    w = rng.normal(size=d)
    return torch.tensor(X, dtype=torch.float32), X, X @ w, rng


def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge

    Xt, X, z, rng = _standardised()
    y = z + rng.normal(size=len(z))
    mu = 1e-2
    W, b = fit_ridge(Features(Xt[None], grid=(mu,)), torch.tensor(y[:, None], dtype=torch.float32))
    ref = Ridge(alpha=mu * len(y)).fit(X, y)
    np.testing.assert_allclose(W[0, 0, :, 0].numpy(), ref.coef_, rtol=1e-3, atol=1e-4)
    assert float(b[0]) == pytest.approx(ref.intercept_, abs=1e-4)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_logistic_and_multinomial_match_sklearn(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    Xt, X, z, rng = _standardised(seed=n_classes)
    y = np.digitize(z + rng.logistic(size=len(z)), np.quantile(z, np.linspace(0, 1, n_classes + 1)[1:-1]))
    mu = 1e-2
    if n_classes == 2:
        Y, problem, softmax, c = y[:, None].astype("f4"), [0], [False], CURVATURE["sigmoid"]
    else:
        Y, problem, softmax, c = np.eye(n_classes, dtype="f4")[y], [0] * n_classes, [True] * n_classes, 0.5
    W, b, _, _ = fit_classifiers(Features(Xt[None], grid=(mu,)), torch.tensor(Y), torch.tensor(problem),
                                 torch.tensor(softmax), lambda W: Xt @ W, torch.tensor(Y), rtol=1e-6)  # fmt: skip
    W, b = W[0], b[0]  # the stack of one design
    ref = LogisticRegression(C=1 / (c * mu * len(y)), tol=1e-8, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(W.numpy().T, ref.coef_, rtol=1e-2, atol=2e-3)
    logits = Xt @ W + b
    if n_classes == 2:
        pred, prob = (logits[:, 0] > 0).long().numpy(), torch.sigmoid(logits[:, 0]).numpy()
        assert roc_auc_score(y, prob) == pytest.approx(roc_auc_score(y, ref.predict_proba(X)[:, 1]), abs=1e-3)
    else:
        pred = logits.argmax(1).numpy()
    assert accuracy_score(y, pred) == pytest.approx(accuracy_score(y, ref.predict(X)), abs=0.005)


def test_metrics_match_sklearn_and_weights_repeat_rows():
    from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    scores = rng.normal(size=(200, 3)).round(1)  # rounded: many ties
    onehot = np.eye(3)[y]
    ones = torch.ones(1, 200)
    got = score("multiclass", torch.tensor(y), torch.tensor(scores, dtype=torch.float32), ones)
    assert float(got["auroc"][0]) == pytest.approx(roc_auc_score(onehot, scores, average="macro"), abs=1e-5)
    assert float(got["balanced_accuracy"][0]) == pytest.approx(balanced_accuracy_score(y, scores.argmax(1)))
    target = rng.normal(size=200)
    pred = target + rng.normal(size=200)
    r2 = score("regression", torch.tensor(target), torch.tensor(pred), ones)["r2"]
    assert float(r2[0]) == pytest.approx(r2_score(target, pred), abs=1e-5)
    # integer weights are the same as repeated rows
    counts = torch.tensor(rng.integers(0, 3, 200), dtype=torch.float32)
    repeated = np.repeat(np.arange(200), counts.int().numpy())
    weighted = auroc(torch.tensor(scores[:, :1]), torch.tensor(onehot[:, :1]), counts[None])
    assert float(weighted[0, 0]) == pytest.approx(roc_auc_score(onehot[repeated, 0], scores[repeated, 0]), abs=1e-5)


# ---------------------------------------------------------------------------------------------- rare labels
def rare_dataset(n=3000, episode=20, seed=0):
    """Synthetic features and episodes of `episode` rows, with the split the probes will use (seed 0)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    episodes = np.arange(n) // episode
    return X, episodes, split_by_episode(episodes, seed=0)


def test_a_rare_regression_label_gets_a_finite_interval_without_its_degenerate_resamples():
    """3 non-zero rows in the test set, in 2 test episodes: every resample that draws neither episode has a constant
    test label. Its R² is undefined (float32 rounding alone once made it about -3e7, so ci_low was -3e7): those
    resamples are left out of the interval and counted."""
    X, episodes, split = rare_dataset()
    y = np.zeros(len(X), dtype=np.float32)
    train_rows = split.train[:: len(split.train) // 12][:12]
    y[train_rows] = 1.0 + X[train_rows, 0]  # some signal to fit on train
    test_episodes = np.unique(episodes[split.test])
    first, second = (split.test[episodes[split.test] == e] for e in test_episodes[:2])
    y[[first[0], first[5], second[3]]] = [1.0, 1.5, 0.5]
    ds = probes.ArrayDataset({"h": X}, pd.DataFrame({"y": y}), episodes)
    row = rows(probes.fit_probe(ds, "h", "y", random_init=None, n_boot=200).table, "y", "r2")
    # the resamples that draw neither test episode with a non-zero row, counted independently
    weights = bootstrap_weights(episodes[split.test], 200, seed=0)[1:]
    nonzero = torch.as_tensor(y[split.test] != 0)
    expected = int((weights[:, nonzero].sum(1) == 0).sum())
    assert 0 < expected < 100 and row.n_boot_degenerate == expected
    assert np.isfinite([row.value, row.ci_low, row.ci_high]).all() and row.note == ""
    # An uninformative probe of a rare label scores R² near 0 or a little below (its test predictions vary a little
    # where the label is 0); each kept resample holds at least one of the non-zero rows, so its label variance is
    # at least ~a third of the test set's, and R² far below -10 could only come from a (near-)constant resample.
    assert -10 < row.ci_low <= row.value <= row.ci_high <= 1


def test_too_many_degenerate_resamples_give_no_interval_and_a_note():
    """A multiclass label with three rare classes, each in one test episode: most resamples lack one of them, and
    a balanced accuracy over fewer classes is another metric, so there is no interval; accuracy keeps its own."""
    X, episodes, split = rare_dataset(n=2400, episode=40)
    y = np.zeros(len(X), dtype=np.int64)
    for cls, start in zip((1, 2, 3), (0, 200, 400), strict=True):
        y[split.train[start : start + 30]] = cls
        y[split.val[cls * 10 : cls * 10 + 5]] = cls
    test_episodes = np.unique(episodes[split.test])
    for cls, episode in zip((1, 2, 3), test_episodes[:3], strict=True):
        y[split.test[episodes[split.test] == episode][:4]] = cls
    ds = probes.ArrayDataset({"h": X}, pd.DataFrame({"y": y}), episodes)
    table = probes.fit_probe(ds, "h", "y", random_init=None, n_boot=200).table
    weights = bootstrap_weights(episodes[split.test], 200, seed=0)[1:]
    drawn = [weights[:, torch.as_tensor(episodes[split.test] == e)].sum(1) > 0 for e in test_episodes[:3]]
    expected = int((~(drawn[0] & drawn[1] & drawn[2])).sum())
    assert expected > 100  # more than half
    for metric in ("balanced_accuracy", "auroc"):
        row = rows(table, "y", metric)
        assert row.n_boot_degenerate == expected and np.isnan(row.ci_low) and np.isnan(row.ci_high)
        assert np.isfinite(row.value) and f"{expected} of 200 bootstrap resamples" in row.note
    accuracy = rows(table, "y", "accuracy")
    assert accuracy.n_boot_degenerate == 0 and accuracy.ci_low <= accuracy.value <= accuracy.ci_high


def test_degenerate_resamples_of_binary_and_map_metrics():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from probes.metrics import score_resamples

    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random((n, 2)) < 0.3).astype(np.float32)  # two map cells
    logits = rng.normal(size=(n, 2)).astype(np.float32) + 1.5 * (y - 0.5)
    cell1_positive = np.flatnonzero(y[:, 1])
    w = torch.ones(2, n)
    w[1, cell1_positive] = 0  # resample 1 holds no positive of cell 1
    # binary (cell 1 alone): resample 1 is degenerate, balanced accuracy and AUROC NaN there (not the negatives'
    # recall alone), accuracy kept
    values, degenerate = score_resamples("binary", torch.tensor(y[:, 1]), torch.tensor(logits[:, 1]), w)
    assert [bool(d) for d in degenerate["balanced_accuracy"]] == [False, True] and not degenerate["accuracy"].any()
    assert np.isnan(float(values["balanced_accuracy"][1])) and np.isnan(float(values["auroc"][1]))
    assert np.isfinite(float(values["accuracy"][1]))
    # map: cell 1 keeps its test-set value in resample 1, so the mean runs over the same cells as the estimate
    values, degenerate = score_resamples("map", torch.tensor(y), torch.tensor(logits), w)
    keep = w[1].numpy() > 0
    pred = logits > 0
    balanced = [balanced_accuracy_score(y[keep, 0], pred[keep, 0]), balanced_accuracy_score(y[:, 1], pred[:, 1])]
    aurocs = [roc_auc_score(y[keep, 0], logits[keep, 0]), roc_auc_score(y[:, 1], logits[:, 1])]
    assert float(values["balanced_accuracy"][1]) == pytest.approx(np.mean(balanced), abs=1e-6)
    assert float(values["auroc"][1]) == pytest.approx(np.mean(aurocs), abs=1e-6)
    assert [bool(d) for d in degenerate["auroc"]] == [False, True]


# ---------------------------------------------------------------------------------------------- maps
def test_map_probes_per_cell_and_conv1x1():
    rng = np.random.default_rng(0)
    n, G, C = 1500, 5, 6
    maps = rng.random((n, G, G)) < 0.2
    maps[:, 0, :] = False  # a wall row: constant cells
    acts = rng.normal(size=(n, C, G, G)).astype(np.float32)
    acts[:, 2] += 2.0 * maps  # channel 2 marks the object at its cell
    labels = pd.DataFrame({"step": np.arange(n) % 30})
    ds = probes.ArrayDataset({"conv": acts}, labels, np.arange(n) // 30, maps={"trash_map": maps})
    result = probes.fit_probes(ds, ["conv"], ["trash_map"], random_init=None)
    table = result.table
    for probe in ("per_cell", "conv1x1"):
        row = table[(table.probe == probe) & (table.metric == "auroc")].iloc[0]
        assert row.value > 0.85, probe
    auroc = table[(table.metric == "auroc") & (table.control == "shuffled")].set_index("probe")
    assert abs(auroc.control_value["per_cell"] - 0.5) < 0.05
    # pooled over cells, a shuffled-label probe can still learn which cells hold objects from how the channels'
    # distribution differs between cells (here: skew); the control then sits above chance but far below the probe
    assert auroc.control_value["conv1x1"] < auroc.value["conv1x1"] - 0.2
    conv = next(d for d in result.directions if d.probe == "conv1x1")
    assert conv.weight.shape == (C,) and int(conv.weight.abs().argmax()) == 2 and conv.bias.shape == (G, G)
    cell = next(d for d in result.directions if d.probe == "per_cell")
    assert cell.weight.shape == (G, G, C, G, G) and cell.bias.shape == (G, G)
    # applied to raw activations, the directions reproduce the test accuracy in the table
    test = split_by_episode(ds.episode_ids(), seed=0).test
    acts, truth = ds.activations("conv")[test], torch.as_tensor(maps[test])
    conv_logits = torch.einsum("c,ncyx->nyx", conv.weight, acts) + conv.bias
    cell_logits = torch.einsum("yxcij,ncij->nyx", cell.weight, acts) + cell.bias
    for probe, logits in (("conv1x1", conv_logits), ("per_cell", cell_logits)):
        reported = table[(table.probe == probe) & (table.metric == "accuracy")].value.iloc[0]
        assert float(((logits > 0) == truth).float().mean()) == pytest.approx(reported, abs=1e-4)
    assert (cell.weight[0] == 0).all() and (cell.bias[0] < 0).all()  # the wall row: never an object


# ---------------------------------------------------------------------------------------------- info_gain
def test_info_gain_is_the_log_loss_reduction_over_the_train_prior():
    """info_gain = 1 - log-loss(probe) / log-loss(prior) for classes (sklearn's log_loss, weighted resamples as
    sample weights), summed over a map's cells, and 1 - SSE / SSE(train mean) for regression."""
    from sklearn.metrics import log_loss

    from probes.metrics import info_gain

    rng = np.random.default_rng(0)
    n = 400
    counts = torch.tensor(rng.integers(0, 3, n), dtype=torch.float32)
    w = torch.stack([torch.ones(n), counts])  # the estimate and one resample
    # binary: logits, prior log-odds 0.3
    y = (rng.random(n) < 0.3).astype(np.float32)
    logits = (rng.normal(size=n) + 2.5 * (y - 0.3)).astype(np.float32)
    prior = np.log(0.3 / 0.7)
    got = info_gain("binary", torch.tensor(y), torch.tensor(logits), torch.tensor([prior]), w)
    p = 1 / (1 + np.exp(-logits))
    for row, weight in ((0, None), (1, counts.numpy())):
        expected = 1 - log_loss(y, p, sample_weight=weight) / log_loss(y, np.full(n, 0.3), sample_weight=weight)
        assert float(got[row]) == pytest.approx(expected, abs=1e-5)
    # multiclass: probabilities, prior class frequencies
    k = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4), n).astype(np.float32)
    probs[np.arange(n), k] += 1.0
    probs /= probs.sum(1, keepdims=True)
    freq = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    got = info_gain("multiclass", torch.tensor(k), torch.tensor(probs), torch.tensor(freq)[None], w)
    expected = 1 - log_loss(k, probs, labels=range(4)) / log_loss(k, np.tile(freq, (n, 1)), labels=range(4))
    assert float(got[0]) == pytest.approx(expected, abs=1e-5) and 0 < expected < 1
    # map: cross-entropy summed over cells, by hand
    cells = (rng.random((n, 3)) < [0.1, 0.5, 0.0]).astype(np.float32)  # the last cell never positive
    map_logits = (rng.normal(size=(n, 3)) + 3 * (cells - 0.5)).astype(np.float32)
    prior_logits = np.log([0.1 / 0.9, 1.0, 0.01 / 0.99]).astype(np.float32)

    def bce(z):
        return np.sum(np.logaddexp(0, z) - cells * z)

    got = info_gain("map", torch.tensor(cells), torch.tensor(map_logits), torch.tensor(prior_logits)[None], w[:1])
    assert float(got[0]) == pytest.approx(1 - bce(map_logits) / bce(np.tile(prior_logits, (n, 1))), abs=1e-5)
    # regression: R² against the train mean, which is not the test mean
    target = rng.normal(size=n).astype(np.float32)
    pred = (target + rng.normal(size=n)).astype(np.float32)
    got = info_gain("regression", torch.tensor(target), torch.tensor(pred), torch.tensor([0.5]), w[:1])
    assert float(got[0]) == pytest.approx(1 - np.sum((target - pred) ** 2) / np.sum((target - 0.5) ** 2), abs=1e-5)


def test_info_gain_rows_in_the_table(planted):
    """Every probe gets an info_gain row; the baseline (the prior) scores 0; a classifier's value is sklearn's
    log-loss reduction of its direction's logits at the temperature with the lowest validation log-loss."""
    from scipy.special import expit
    from sklearn.metrics import log_loss

    from probes.metrics import TEMPERATURES

    ds, _, result = planted
    table = result.table
    assert set(table[table.metric == "info_gain"].label) == {"y_reg", "y_bin", "y_multi", "y_noise"}
    assert (table[(table.metric == "info_gain") & (table.control == "baseline")].control_value == 0).all()
    assert rows(table, "y_bin", "info_gain").value > 0.5 and abs(rows(table, "y_noise", "info_gain").value) < 0.02
    split = split_by_episode(ds.episode_ids(), seed=0)
    y = ds.labels.y_bin.to_numpy().astype(int)
    direction = next(d for d in result.directions if d.label == "y_bin")
    logits = (ds.activations("h") @ direction.weight + direction.bias).numpy().astype(np.float64)

    def loss(rows_, t):  # probabilities clipped to [1e-6, 1 - 1e-6], as info_gain documents
        return log_loss(y[rows_], np.clip(expit(t * logits[rows_]), 1e-6, 1 - 1e-6), labels=[0, 1])

    t = min(TEMPERATURES, key=lambda t: loss(split.val, t))
    p_train = (y[split.train].sum() + 0.5) / (len(split.train) + 1)
    expected = 1 - loss(split.test, t) / log_loss(y[split.test], np.full(len(split.test), p_train), labels=[0, 1])
    assert rows(table, "y_bin", "info_gain").value == pytest.approx(expected, abs=1e-4)
    # r2 and info_gain of a regression label differ only by the reference mean (test vs train)
    assert rows(table, "y_reg", "info_gain").value == pytest.approx(rows(table, "y_reg", "r2").value, abs=0.01)


def test_a_label_exactly_predicted_by_two_designs_has_no_information_gain_between_them():
    """Without the validation temperature the larger design's sharper logits gained 2e-5 with an interval above 0."""
    from probes.labels import resolve_labels
    from probes.probe import score_hook

    rng = np.random.default_rng(0)
    n = 2000
    task = rng.integers(0, 4, n)
    small = np.eye(4, dtype=np.float32)[task]
    large = np.concatenate([small, small + rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 8))], 1)
    ds = probes.ArrayDataset({"small": small}, pd.DataFrame({"y": task >= 2}), np.arange(n) // 40)
    targets, _ = resolve_labels(ds, ["y"])
    split = split_by_episode(ds.episode_ids(), seed=0)
    a, b = (score_hook(torch.as_tensor(x), "h", targets, split, with_controls=False, intervals=True)[0]
            for x in (small, large))  # fmt: skip
    diff = b.resamples["info_gain"] - a.resamples["info_gain"]
    assert np.abs(diff).max() < 1e-6 and a.metrics["info_gain"][0] > 0.999


# ---------------------------------------------------------------------------------------------- validation
def test_summary_chooses_on_validation_and_reports_test():
    """Hook val_good carries the label on train and validation episodes but not on test ones, test_good on train
    and test but not validation: on test, test_good is the better probe; summary picks val_good, as a choice made
    on validation must, and reports val_good's (poor) test score."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    n = 3000
    episodes = np.arange(n) // 30
    split = split_by_episode(episodes, seed=0)
    z = rng.normal(size=n)

    def hook(noise_rows):  # 6 noisy copies of z (together better than any one), pure noise on noise_rows
        X = (z[:, None] + rng.normal(size=(n, 6))).astype(np.float32)
        X[noise_rows] = rng.normal(size=(len(noise_rows), 6))
        return X

    labels = pd.DataFrame({"y": z + 0.5 * rng.normal(size=n)})
    ds = probes.ArrayDataset({"val_good": hook(split.test), "test_good": hook(split.val)}, labels, episodes)
    result = probes.fit_probes(ds, ["val_good", "test_good"], ["y"], random_init=None, n_boot=20)
    table = result.table
    r2 = table[(table.metric == "r2") & (table.control == "baseline")].set_index("hook")
    assert r2.value["test_good"] > 0.3 > r2.value["val_good"]  # test-best: test_good
    assert r2.val_value["val_good"] > 0.3 > r2.val_value["test_good"]  # validation-best: val_good
    for metric in ("info_gain", "r2"):
        best = probes.summary(table, metric).set_index("label").loc["y"]
        assert best.hook == "val_good" and best.value == pytest.approx(r2.value["val_good"], abs=0.02)
        assert best.val_selectivity > 0.1 and best.selectivity < 0
    # val_value is the probe's score on the validation rows
    d = next(d for d in result.directions if d.hook == "val_good")
    pred = (ds.activations("val_good")[split.val] @ d.weight + d.bias).numpy()
    assert r2.val_value["val_good"] == pytest.approx(r2_score(labels.y[split.val], pred), abs=1e-4)
    with pytest.raises(probes.ProbeError, match="auroc"):
        probes.summary(table, "auroc")  # classification metrics only: not in a regression-only table
    with pytest.raises(probes.ProbeError, match="older version"):
        probes.summary(table.drop(columns=["val_value", "val_selectivity"]))


# ---------------------------------------------------------------------------------------------- control tasks
def test_control_task_catches_a_probe_that_memorises_inputs():
    """Hewitt & Liang's control task: each input type gets a random label (the label's distribution). A hook that
    embeds every input type in more dimensions than there are types lets a linear probe fit any function of the
    type, the control task as well as the label: selectivity 0. A compact hook that carries only the label's
    feature cannot fit the control task: it stays near chance."""
    from probes.controls import control_task
    from probes.labels import make_target

    rng = np.random.default_rng(0)
    n, n_types = 3000, 60
    types = rng.integers(0, n_types, n)
    y = rng.permutation(np.arange(n_types) % 3)[types]  # a class per input type
    memorise = rng.normal(size=(n_types, 120))[types] + 0.1 * rng.normal(size=(n, 120))
    compact = np.eye(3)[y] * 2 + rng.normal(size=(n, 3))
    labels = pd.DataFrame({"y": y, "b": y == 1})
    ds = probes.ArrayDataset({"memorise": memorise, "compact": compact}, labels, np.arange(n) // 30,
                             input_types=types)  # fmt: skip
    control = control_task(make_target(ds, "y"), types, seed=0)
    per_type = pd.Series(control.values).groupby(types).nunique()
    assert (per_type == 1).all()  # one control label per input type
    assert 0.2 < np.mean(control.values == 0) < 0.5 and (control.values != y).mean() > 0.4  # random, not the label
    table = probes.fit_probes(ds, ["memorise", "compact"], ["y", "b"], random_init=None, n_boot=20).table
    ba = table[(table.metric == "balanced_accuracy") & (table.control == "control_task")].set_index(["hook", "label"])
    for label in ("y", "b"):
        assert ba.value["memorise", label] > 0.95 and ba.control_value["memorise", label] > 0.9
        assert ba.selectivity["memorise", label] < 0.1
        assert ba.value["compact", label] > 0.8 and ba.control_value["compact", label] < 0.45 + 0.1 * (label == "b")
    # without input types (and for regression labels) there is no control task
    plain = probes.ArrayDataset({"compact": compact}, labels, np.arange(n) // 30)
    table = probes.fit_probes(plain, ["compact"], ["y"], random_init=None, n_boot=0).table
    assert table[table.control == "control_task"].control_value.isna().all()


# ---------------------------------------------------------------------------------------------- conditional
def conditional_dataset(seed=0, n=4000):
    """A task label (4 classes) and labels that are functions of it, some plus a component `extra` that only one
    activation dimension carries; the activations carry the task too, so every label is well read by a probe."""
    rng = np.random.default_rng(seed)
    task = rng.integers(0, 4, n)
    extra = rng.normal(size=n)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    X[:, :4] += 2.0 * np.eye(4)[task]
    X[:, 4] += 1.5 * extra
    g = np.array([-1.0, 0.0, 0.5, 2.0])[task]
    b_extra = g + 0.8 * extra + 0.3 * rng.logistic(size=n) > 0.3
    labels = pd.DataFrame({"trash_remaining": task, "y_extra": g + 0.5 * extra, "y_exact": g, "b_extra": b_extra,
                           "b_exact": task >= 2})  # fmt: skip
    return probes.ArrayDataset({"h": X}, labels, np.arange(n) // 40)


def test_conditional_probes_separate_beyond_the_task_from_a_function_of_it():
    ds = conditional_dataset()
    names = ["y_extra", "y_exact", "b_extra", "b_exact"]
    plain = probes.fit_probes(ds, ["h"], names, random_init=None, n_boot=50).table
    best = probes.summary(plain).set_index("label")
    # the plain probe reads all four about as well: it cannot tell "beyond the task" from "a function of it"
    assert abs(best.value["y_extra"] - best.value["y_exact"]) < 0.1 and best.selectivity.min() > 0.15
    table = probes.conditional_probes(ds, ["h"], names, given=["trash_remaining"], n_boot=200)
    assert set(table.given) == {"trash_remaining"} and (table.n_given_features == 4).all()
    gain = table[table.metric == "info_gain"].set_index("label")
    for label in ("y_extra", "b_extra"):
        assert gain.gain[label] > 0.05 and gain.gain_ci_low[label] > 0, label
        assert gain.value[label] == pytest.approx(gain.given_value[label] + gain.gain[label], abs=1e-6)
        assert gain.gain_ci_low[label] < gain.gain[label] < gain.gain_ci_high[label]
    for label in ("y_exact", "b_exact"):
        assert gain.given_value[label] > 0.99
        assert gain.gain_ci_low[label] <= 0 <= gain.gain_ci_high[label], label
    # the default: reward-side labels given the task-side labels the dataset has
    renamed = ds.labels.rename(columns={"b_extra": "reward_within_k"})
    ds2 = probes.ArrayDataset({"h": ds.activations("h")}, renamed, ds.episode_ids())
    default = probes.conditional_probes(ds2, ["h"], n_boot=50)
    assert set(default.label) == {"reward_within_k"} and set(default.given) == {"trash_remaining"}
    with pytest.raises(probes.ProbeError, match="no given label is left"):
        probes.conditional_probes(ds, ["h"], ["trash_remaining"], given=["trash_remaining"])
    with pytest.raises(ConfigError, match="Did you mean 'trash_remaining'"):
        probes.conditional_probes(ds, ["h"], ["y_extra"], given=["trash_remainig"])


def test_reward_untied_from_the_task_by_a_lottery_schedule_leaves_no_gain_beyond_the_task():
    """The negative control on a real policy: under deposit-lottery a deposit pays by a coin the CNN cannot see, so
    the task labels say less about reward_within_k than under on-deposit, and the activations add nothing."""
    from workbench.data import collect
    from workbench.envs import make_config
    from workbench.training.checkpoints import load_policy

    policy = load_policy(Path(__file__).resolve().parents[2] / "checkpoints" / "trash-cnn-s0")
    given = {}
    for schedule in ("on-deposit", "deposit-lottery"):
        ds = collect(policy, make_config("trash", schedule=schedule), 3000, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = probes.conditional_probes(ds, ["fc.hook_out"], ["reward_within_k"], n_boot=100)
        row = table[table.metric == "info_gain"].iloc[0]
        given[schedule] = row.given_value
        if schedule == "deposit-lottery":
            assert row.gain_ci_low <= 0.005 and abs(row.gain) < 0.01  # nothing beyond the task: the coin is unseen
    assert given["deposit-lottery"] < given["on-deposit"] - 0.15  # the label is untied from the task state


def test_given_features_one_hot_and_interactions():
    from probes.conditional import given_features

    labels = pd.DataFrame(
        {"carrying": [0, 1, 1, 0], "target_dist": [0.0, 2.0, 2.0, 5.0], "trash_remaining": [2, 1, 0, 0]}
    )
    ds = probes.ArrayDataset({"h": np.zeros((4, 1))}, labels, np.arange(4))
    G = given_features(ds, ["carrying", "target_dist", "trash_remaining"], interactions=False).numpy()
    # carrying (1), target_dist (value + 3 levels), trash_remaining (3 classes)
    assert G.shape == (4, 8) and (G[:, 2:5].sum(1) == 1).all() and (G[:, 5:].sum(1) == 1).all()
    full = given_features(ds, ["carrying", "target_dist", "trash_remaining"]).numpy()
    assert full.shape == (4, 8 + 1 * 4 + 1 * 3 + 4 * 3)
    assert (full[:, 8:12] == G[:, :1] * G[:, 1:5]).all()  # carrying x target_dist columns


# ---------------------------------------------------------------------------------------------- the gap
def test_gap_is_a_paired_bootstrap_of_the_best_task_minus_the_best_reward_probe(planted):
    ds, _, _ = planted
    labels = ds.labels.rename(columns={"y_bin": "carrying", "y_noise": "reward_within_k", "y_reg": "value_target"})
    renamed = probes.ArrayDataset({"h": ds.activations("h")}, labels, ds.episode_ids())
    result = probes.fit_probes(renamed, ["h"], ["carrying", "reward_within_k", "value_target"], random_init=None)
    gap = probes.gap(result)
    assert len(gap) == 1
    row = gap.iloc[0]
    best = probes.summary(result.table).set_index("label")
    reward = best.loc[best[best.label_set == "reward"].val_selectivity.idxmax()]
    assert row.task_label == "carrying" and row.reward_label == reward.name
    assert row.gap == pytest.approx(best.value["carrying"] - reward.value, abs=1e-6)
    # the interval: percentiles of the differences resample by resample
    a = result.resamples.get(None, "h", "carrying", "logistic", "info_gain")
    b = result.resamples.get(None, "h", row.reward_label, reward.probe, "info_gain")
    assert len(a) == 201 and a[0] == pytest.approx(best.value["carrying"], abs=1e-6)
    diff = (a - b)[1:].astype(np.float64)
    np.testing.assert_allclose([row.ci_low, row.ci_high], np.quantile(diff, [0.025, 0.975]), atol=1e-6)
    assert row.reward_label == "value_target" and row.ci_high < 0 and row.n_resamples == 200  # reads better
    named = probes.gap(result, "carrying", "reward_within_k").iloc[0]  # the noise label: far below carrying
    assert named.reward_label == "reward_within_k" and named.ci_low > 0.3
    # paired: narrower than the two probes' own intervals put together
    width = rows(result.table, "carrying", "info_gain").ci_high - rows(result.table, "carrying", "info_gain").ci_low
    assert row.ci_high - row.ci_low < width + (reward.ci_high - reward.ci_low)
    assert row.selectivity_gap == pytest.approx(best.selectivity["carrying"] - reward.selectivity, abs=1e-6)
    # a label against itself: no gap, and an interval of exactly 0
    same = probes.gap(result, "carrying", "carrying").iloc[0]
    assert same.gap == 0 and same.ci_low == 0 and same.ci_high == 0
    with pytest.raises(ConfigError, match="Did you mean 'carrying'"):
        probes.gap(result, "carryng")
    with pytest.raises(probes.ProbeError, match="no bootstrap resamples"):
        probes.gap(probes.ProbeResult(result.table, result.directions))


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_names_list_the_valid_ones():
    ds, _ = synthetic(n=400)
    with pytest.raises(ConfigError, match="Did you mean 'h'"):
        probes.fit_probe(ds, "hh", "y_bin")
    with pytest.raises(ConfigError, match="Did you mean 'y_bin'"):
        probes.fit_probe(ds, "h", "y_bni")


def test_constant_labels():
    ds, _ = synthetic(n=400)
    with pytest.raises(probes.ProbeError, match="constant"):
        probes.fit_probe(ds, "h", "y_const")
    catalogue = ds.labels.rename(columns={"y_const": "wall_color", "y_bin": "carrying"})
    ds = probes.ArrayDataset({"h": ds.activations("h")}, catalogue, ds.episode_ids())
    with pytest.warns(UserWarning, match="wall_color is constant"):
        table = probes.fit_probes(ds, random_init=None).table  # default label sets: skipped with a row
    skipped = table[table.metric == "skipped"]
    assert list(skipped.label) == ["wall_color"] and "constant" in skipped.note.iloc[0]
    assert "carrying" in set(table.label)


def test_bad_data_is_refused():
    ds, _ = synthetic(n=400)
    X, labels, episodes = ds.activations("h"), ds.labels, ds.episode_ids()
    with pytest.raises(probes.ProbeError, match="rows"):
        probes.ArrayDataset({"h": X[:-1]}, labels, episodes)
    bad = X.clone()
    bad[5, 3] = float("nan")
    with pytest.raises(probes.ProbeError, match="NaN or inf"):
        probes.fit_probe(probes.ArrayDataset({"h": bad}, labels, episodes), "h", "y_bin")
    with pytest.raises(probes.ProbeError, match="empty"):
        probes.fit_probe(probes.ArrayDataset({"h": X[:0]}, labels[:0], episodes[:0]), "h", "y_bin")
    with pytest.raises(probes.ProbeError, match="episode"):
        probes.fit_probe(probes.ArrayDataset({"h": X}, labels, episodes // 200), "h", "y_bin")


def test_directions_round_trip_and_missing_files(planted, tmp_path):
    _, _, result = planted
    out = tmp_path / "probes.parquet"
    probes.save_directions(result.directions, out)
    loaded = probes.load_directions(out)
    assert [(d.hook, d.label, d.probe) for d in loaded] == [(d.hook, d.label, d.probe) for d in result.directions]
    for a, b in zip(loaded, result.directions, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and torch.equal(a.std, b.std)
    assert loaded[2].classes == [0, 1, 2, 3]
    with pytest.raises(probes.ProbeError, match="missing"):
        probes.load_directions(tmp_path / "other.parquet")
    assert not list(tmp_path.glob(".*tmp"))


# ---------------------------------------------------------------------------------------------- end to end
# tiny_run: the session's tiny trained run (tests/conftest.py), read-only
def test_sweep_over_a_tiny_run(tiny_run, tmp_path):
    from workbench.training.checkpoints import list_steps

    out = tmp_path / "sweep.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # wall_color is constant in the trash env: skipped
        table = probes.probe_sweep(tiny_run, hooks=["conv.1.hook_out", "fc.hook_out"], n_steps=1500, out=out,
                                   n_boot=50)  # fmt: skip
    assert list(table.columns) == COLUMNS
    assert sorted(table.step.unique()) == list_steps(tiny_run)
    fitted = table[table.metric != "skipped"]
    assert set(fitted.label_set) == {"reward", "task"}
    assert {"per_cell", "conv1x1", "logistic", "ridge", "multinomial"} <= set(fitted.probe)
    assert fitted.control_value[fitted.control == "random_init"].notna().all()
    assert fitted.value.notna().all() and fitted.selectivity.notna().all()
    assert set(table[table.metric == "skipped"].label) <= {"wall_color", "reward_available"}  # constant here
    assert pd.read_parquet(out).equals(table)
    directions = probes.load_directions(out)
    assert {d.step for d in directions} == set(list_steps(tiny_run))
    conv = next(d for d in directions if d.probe == "conv1x1" and d.label == "trash_map")
    assert conv.weight.shape == (16,) and conv.hook == "conv.1.hook_out"
    # the bootstrap resamples beside the table: the task-minus-reward gap at every step, with its interval
    gap = probes.gap(out)
    assert list(gap.step) == list_steps(tiny_run) and gap[["gap", "ci_low", "ci_high"]].notna().all(axis=None)
    assert (gap.ci_low <= gap.gap).all() and (gap.gap <= gap.ci_high).all()
    assert set(gap.task_label) <= set(probes.TASK_LABELS) and set(gap.reward_label) <= set(probes.REWARD_LABELS)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-4) -> None:
    """The same rows and non-float cells, and float cells within atol (NaN where the other is NaN)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    floats = [c for c in a.columns if a[c].dtype.kind == "f"]
    assert a.drop(columns=floats).equals(b.drop(columns=floats))
    for column in floats:
        np.testing.assert_allclose(a[column], b[column], rtol=0, atol=atol, equal_nan=True, err_msg=column)


def test_sweep_gives_the_same_table_at_one_and_two_torch_threads(tiny_run):
    """The sweep's forward passes and fits run in one torch thread whatever the process's count (a Ray worker has
    one): with the replays' float32 sums in another order at another thread count, some float16 activations of
    the dataset came out one step apart, and the fits carried that into the scores (34 of 204 rows of a sweep
    differed, by up to 6e-3 in a score). Bit-equal on one machine now; compared within 1e-4 because torch does not
    promise bit-equal kernels from process to process, while the regression this guards against is 10x larger."""
    before = torch.get_num_threads()
    tables = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tables.append(probes.probe_sweep(tiny_run, hooks=["conv.1.hook_out", "fc.hook_out"], n_boot=50,
                                                 labels=["carrying", "trash_map", "reward"], n_steps=600))  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert len(tables[0]) > 100 and tables[0].step.nunique() == 3
    assert_same_table(*tables)


def test_fit_probe_on_a_collected_dataset_builds_its_random_init_control(tiny_run):
    from workbench.data import collect
    from workbench.training.checkpoints import load_policy

    ds = collect(load_policy(tiny_run), None, 1200, hooks=["fc.hook_out"], seed=1)
    result = probes.fit_probe(ds, "fc.hook_out", "carrying", n_boot=50)
    table = result.table
    assert table.control_value[table.control == "random_init"].notna().all()
    assert set(table.step) == {512} and result.directions[0].weight.shape == (128,)


def test_random_init_control_is_a_distribution_over_init_seeds(tiny_run):
    """random_init over 5 init seeds: control_value is the median of the 5 single-seed controls (robust to one draw
    that blows up), with their spread (sd, min, max), and selectivity is taken against that median."""
    from probes.probe import random_init_dataset
    from workbench.data import collect
    from workbench.training.checkpoints import load_policy

    ds = collect(load_policy(tiny_run), None, 1200, hooks=["fc.hook_out"], seed=1)
    labels = ["carrying", "target_dist"]
    table = probes.fit_probes(ds, "fc.hook_out", labels, n_boot=20).table  # random_init_seeds=5
    replays = [random_init_dataset(ds, ["fc.hook_out"], seed) for seed in range(5)]
    singles = [probes.fit_probes(ds, "fc.hook_out", labels, n_boot=0, random_init=r).table for r in replays]
    key = ["label", "probe", "metric"]
    draws = np.stack([t[t.control == "random_init"].set_index(key).control_value for t in singles])
    random_init = table[table.control == "random_init"].set_index(key)
    np.testing.assert_allclose(random_init.control_value, np.median(draws, 0), atol=1e-6)
    np.testing.assert_allclose(random_init.control_sd, draws.std(0, ddof=1), atol=1e-6)
    np.testing.assert_allclose(random_init.control_min, draws.min(0), atol=1e-6)
    np.testing.assert_allclose(random_init.control_max, draws.max(0), atol=1e-6)
    assert (random_init.control_sd > 0).all() and (random_init.control_max > random_init.control_min).all()
    assert table[table.control != "random_init"].control_sd.isna().all()
    ig = random_init.loc[("carrying", "logistic", "info_gain")]
    assert ig.selectivity <= ig.value - ig.control_value + 1e-9
    with pytest.raises(probes.ProbeError, match="random_init_seeds=0"):
        probes.fit_probes(ds, "fc.hook_out", labels, random_init_seeds=0)


def test_one_blown_up_random_init_draw_does_not_inflate_selectivity():
    """A random network whose features barely vary on the train rows can score R² -206 on test (measured on a
    bundled CNN); the control is the draws' median, so that draw does not make every probe look selective."""
    from types import SimpleNamespace

    from probes.controls import RandomInitDraws

    draws = RandomInitDraws()
    for value in (0.40, 0.41, -206.0, 0.39, 0.42):
        draws.add([SimpleNamespace(hook="h", label="return_to_go", probe="ridge", metrics={"r2": (value, 0, 0)},
                                   val={"r2": value})])  # fmt: skip
    score = SimpleNamespace(hook="h", label="return_to_go", probe="ridge", controls={}, control_val={}, spread={})
    draws.apply(score)
    assert score.controls["random_init"]["r2"] == pytest.approx(0.40)
    assert score.control_val["random_init"]["r2"] == pytest.approx(0.40)
    assert score.spread["random_init"]["r2"][1:] == (-206.0, 0.42)  # the spread still shows the bad draw


def test_cli_writes_table_and_directions(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    out = tmp_path / "cli.parquet"
    args = ["probe", str(tiny_run / "step-000000512.safetensors"), "--hooks", "fc.hook_out", "--labels",
            "carrying,trash_map,reward,target_dir", "--steps", "1200", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best probe per label" in result.output and "carrying" in result.output
    table = pd.read_parquet(out)
    assert set(table.label) == {"carrying", "trash_map", "reward", "target_dir"} and set(table.step) == {512}
    assert out.with_name("cli.directions.safetensors").exists() and out.with_name("cli.directions.json").exists()
    bad = CliRunner().invoke(app, ["probe", str(tiny_run), "--labels", "carying", "--out", str(tmp_path / "x.pq")])
    assert bad.exit_code != 0 and "carrying" in str(bad.exception)
    assert not (tmp_path / "x.pq").exists()


def test_cli_probe_prints_progress_lines_off_a_terminal(tiny_run, tmp_path, monkeypatch):
    """CliRunner's stderr is no terminal, as a log file is not: plain progress lines there, none with --quiet."""
    from typer.testing import CliRunner

    from workbench.cli.main import app
    from workbench.training.checkpoints import list_steps

    monkeypatch.setenv("WORKBENCH_PROGRESS_SECONDS", "0")  # a line for every update (default: one per 5 s at most)
    args = ["probe", str(tiny_run), "--hooks", "fc.hook_out", "--labels", "carrying", "--steps", "1200", "--out",
            str(tmp_path / "p.parquet")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.exception
    lines = [line for line in result.stderr.splitlines() if line.startswith("probe: ")]
    steps = list_steps(tiny_run)
    total = len(steps) + 2  # collect, random-init control, one per checkpoint
    assert lines[0] == f"probe: collect · 0/{total} (0%) · " + lines[0].rsplit(" · ", 1)[1]
    third = f"probe: step {steps[1]} · 3/{total} ({3 / total:.0%}) · 0:"
    assert any(line.startswith(third) and " left" in line for line in lines), lines
    assert lines[-1].startswith("probe: done in 0:")
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0 and "probe: " not in quiet.stderr and "wrote" in quiet.stderr


def test_transformer_hooks_end_to_end():
    from workbench.data import collect
    from workbench.policies import build_policy, hook_shapes
    from workbench.training.ppo import POLICIES

    policy = build_policy(dict(POLICIES["transformer"], obs_shape=[3, 14, 14], n_actions=5))
    shapes = hook_shapes(policy)
    hooks = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"]
    assert probes.probe.default_hooks(list(shapes)) == [h for h in shapes if h.endswith(("hook_out", "resid_post"))]
    ds = collect(policy, {"variant": "trash", "room_size": 5}, 1500, hooks=hooks, seed=2)
    result = probes.fit_probes(ds, hooks, ["carrying", "trash_map", "target_dir", "return_to_go"], n_boot=20)
    table = result.table
    assert set(table.hook) == set(hooks) and (table.metric != "skipped").all()
    assert {"logistic", "per_cell", "multinomial", "ridge"} == set(table.probe)  # no conv1x1: not a [C, G, G] hook
    assert table.control_value[table.control == "random_init"].notna().all()
    for d in result.directions:
        assert d.weight.shape[-1] == int(np.prod(shapes[d.hook])) or d.weight.shape[-1] == shapes[d.hook][-1]


# ---------------------------------------------------------------------------------------------- scalar hooks
def test_a_scalar_hook_is_a_one_feature_design():
    """A hook with one value per row (hook_value: shape []) is probed as one feature; its direction is a scalar."""
    rng = np.random.default_rng(0)
    n = 1200
    v = rng.normal(size=n).astype(np.float32) * 3 + 1
    labels = pd.DataFrame({"y_reg": 2 * v + rng.normal(size=n), "y_bin": v + rng.logistic(size=n) > 1})
    ds = probes.ArrayDataset({"value": v}, labels, np.arange(n) // 30)
    assert ds.hook_shapes == {"value": ()}
    result = probes.fit_probes(ds, ["value"], ["y_reg", "y_bin"], random_init=None, n_boot=50)
    table = result.table
    assert rows(table, "y_reg", "r2").value > 0.9 and rows(table, "y_bin", "auroc").value > 0.8
    # one feature: the probe is its own best single unit, so it cannot beat that control
    assert rows(table, "y_reg", "r2", "best_unit").control_value == pytest.approx(rows(table, "y_reg", "r2").value)
    reg = next(d for d in result.directions if d.label == "y_reg")
    assert reg.weight.shape == () and reg.bias.shape == () and reg.mean.shape == () and reg.std.shape == ()
    # the direction reproduces the test R² in the table
    from sklearn.metrics import r2_score

    test = split_by_episode(ds.episode_ids(), seed=0).test
    pred = (torch.as_tensor(v[test]) * reg.weight + reg.bias).numpy()
    assert r2_score(labels.y_reg[test], pred) == pytest.approx(rows(table, "y_reg", "r2").value, abs=1e-4)


def test_cli_probes_the_value_hook(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    out = tmp_path / "value.parquet"
    args = ["probe", str(tiny_run / "step-000000512.safetensors"), "--hooks", "hook_value", "--labels", "carrying",
            "--steps", "1200", "--quiet", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.exception
    table = pd.read_parquet(out)
    assert set(table.hook) == {"hook_value"} and table.value.notna().all()
    assert [d.weight.shape for d in probes.load_directions(out)] == [()]


@pytest.mark.slow
def test_cli_probes_an_imported_sb3_run_with_its_default_hooks(tmp_path):
    """`workbench probe RUN` on an imported SB3 CnnPolicy: the default hooks are every hook but hook_obs, among them
    hook_value (one value a row) and the first conv layer (5,408 features on a few hundred train rows)."""
    pytest.importorskip("minigrid")
    gym = pytest.importorskip("gymnasium")
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper
    from stable_baselines3 import PPO
    from typer.testing import CliRunner

    from workbench.cli.main import app
    from workbench.policies import hook_shapes
    from workbench.training.checkpoints import load_policy
    from workbench.training.sb3_import import import_sb3

    env = ImgObsWrapper(RGBImgPartialObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0")))
    torch.manual_seed(0)
    algo = PPO("CnnPolicy", env, n_steps=64, batch_size=64, seed=0, device="cpu",
               policy_kwargs={"features_extractor_kwargs": {"features_dim": 64}, "net_arch": [32]})  # fmt: skip
    algo.save(tmp_path / "ppo.zip")  # untrained: what the import and the probes do does not depend on training
    run = import_sb3(tmp_path / "ppo.zip", tmp_path / "run", env="MiniGrid-DoorKey-5x5-v0")
    shapes = hook_shapes(load_policy(run))
    assert shapes["hook_value"] == () and "hook_value" in probes.probe.default_hooks(list(shapes))
    out = tmp_path / "sb3.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # labels constant in these few episodes are skipped
        result = CliRunner().invoke(app, ["probe", str(run), "--steps", "600", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.exception
    table = pd.read_parquet(out)
    fitted = table[table.metric != "skipped"]
    assert set(fitted.hook) == set(probes.probe.default_hooks(list(shapes)))
    # only R² (and info_gain, R² against the train mean) of a label constant on the test episodes (return_to_go)
    undefined = fitted[fitted.value.isna()]
    assert set(undefined.metric) == {"r2", "info_gain"} and (undefined.kind == "regression").all()
    assert undefined.note.str.contains("near-constant test label").all()
    assert fitted.value.notna().mean() >= 0.85 and np.isfinite(fitted[["ci_low", "ci_high"]].dropna()).all(axis=None)
    value = [d for d in probes.load_directions(out) if d.hook == "hook_value"]
    assert value and all(d.weight.shape == d.bias.shape for d in value)  # one weight per output: a scalar feature
