"""Conditional probes: what a hook's activations say about a label beyond what ground-truth labels already say.

A plain probe cannot tell "the policy represents reward" from "the policy represents the task, and reward is a
function of the task": on the bundled TrashGrid CNNs, ground-truth task labels alone predict reward_within_k at a
balanced accuracy of 0.84-0.90, above the best probe's 0.71. `conditional_probes` asks the question directly. On
the same episode split, for every label and hook it fits

- given: the label from the `given` labels alone (one-hot classes, 0/1 binaries and map cells, numeric labels
  standardised and, with at most MAX_LEVELS values, one-hot too; with `interactions`, every product of two
  scalar given labels' columns, i.e. their joint one-hot, so that "carrying and 2 steps from the bin" is one
  feature), and
- joint: the label from the given features and the hook's activations together,

each with the probe methodology of `probes.probe` (train-only standardisation, regularisation chosen on
validation, the label kind's probe), and reports both test scores and the gain = joint - given, with a paired
episode-bootstrap interval (the same resamples of test episodes for both; `probes.resamples`).

One penalty for both blocks of the joint design would tie the given labels' regularisation to the activations':
a wide hook (a conv layer: 1,296 features beside 619 given ones, on 2,500 train rows) then needs a strong
penalty, which shrinks the given features too, and the joint probe scored below the given labels alone (gain
-0.13 on the bundled CNN's first conv layer, measured). So the activations are scaled by each factor of
ACTIVATION_SCALES after standardisation (their penalty μ / factor², the given features' μ), and the joint probe is
the one, over factors and μ, with the best validation info_gain (`activation_scale` in the table); at the
smallest factor the activations are all but switched off, so the joint probe can stay close to the given one.

A gain whose interval lies above 0 is information about the label in the activations that the given labels (as
encoded here) do not carry; a gain at 0 says the probe's score is explained by the given labels. The headline
metric is info_gain (`probes.metrics`), comparable across label kinds. The interval resamples test episodes; it
does not hold the fits' own variation, so a label that the activations add nothing to can show a small negative
gain with an interval below 0 (the joint probe's extra features overfit a little).

The gain is relative to a linear read-out of the given features: what the activations add may be a function
of the given labels that this encoding cannot express (a three-way interaction, a map cell times a position).
`interactions` covers the pairs of scalar labels; name fewer, better-chosen given labels for a sharper test.

    table = probes.conditional_probes(ds, ["fc.hook_out"], ["reward_within_k"])   # given: the task labels
    table[table.metric == "info_gain"][["hook", "label", "given_value", "value", "gain", "gain_ci_low"]]
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import torch

from probes.episodes import split_by_episode
from probes.errors import ProbeError, known_names
from probes.labels import REWARD_LABELS, TASK_LABELS, Target, available_labels, constant_reason, label_set, make_target
from probes.metrics import HEADLINE
from probes.probe import default_hooks, score_hook
from probes.resamples import paired_interval
from workbench.common.errors import unknown_name

MAX_LEVELS = 32  # a numeric given label with at most this many values is one-hot encoded too
ACTIVATION_SCALES = (1.0, 1 / 4, 1 / 16, 1 / 64)  # the activations' penalty: μ x 1, 16, 256, 4096
COLUMNS = ["run", "step", "hook", "label", "label_set", "kind", "probe", "metric", "given", "n_given_features",
           "given_value", "given_ci_low", "given_ci_high", "val_given", "value", "ci_low", "ci_high", "val_value",
           "activation_scale", "gain", "gain_ci_low", "gain_ci_high", "n_train", "n_test", "n_boot_degenerate",
           "note"]  # fmt: skip


def conditional_probes(
    dataset,
    hooks: list[str] | None = None,
    labels: list[str] | None = None,
    given: list[str] | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    n_boot: int = 200,
    precision: str = "auto",
    interactions: bool = True,
) -> pd.DataFrame:
    """What each hook adds about each label beyond the `given` labels (module docstring); one row per (hook, label,
    probe, metric).

    hooks: default as `probes.probe.default_hooks`; labels: default the reward set (those the dataset has and
    that vary); given: default the task set (those the dataset has). A label is never given for itself.

    Columns: given (the given labels, comma-separated) and n_given_features; given_value, given_ci_low,
    given_ci_high, val_given: the given-only probe's test score, interval and validation score; value, ci_low,
    ci_high, val_value: the joint probe's, at the activation_scale chosen on validation (module docstring);
    gain, gain_ci_low, gain_ci_high: value - given_value with its paired interval (NaN, with a note, when fewer
    than half the resamples are non-degenerate for both); n_boot_degenerate: resamples left out of the gain's
    interval."""
    if dataset.n == 0:
        raise ProbeError("the dataset is empty: collect some steps first (workbench.data.collect).")
    hooks = default_hooks(list(dataset.hook_names), hooks)
    valid = available_labels(dataset)
    targets = _targets(dataset, labels, valid)
    given_names = _given(given, valid)
    split = split_by_episode(np.asarray(dataset.episode_ids()), seed)
    options = {"seed": seed, "device": device, "precision": precision, "n_boot": n_boot, "with_controls": False,
               "intervals": True}  # fmt: skip
    step = (dataset.meta.get("policy") or {}).get("step")
    run = (dataset.meta.get("policy") or {}).get("run_dir")
    groups: dict[tuple[str, ...], list[Target]] = {}
    for t in targets:
        names = tuple(g for g in given_names if g != t.name)
        if not names:
            raise ProbeError(f"label {t.name!r}: no given label is left once the label itself is taken out of "
                             f"given={list(given_names)}; name other labels to condition on.")  # fmt: skip
        groups.setdefault(names, []).append(t)
    rows = []
    for names, group in groups.items():
        G = given_features(dataset, list(names), interactions=interactions)
        if not bool((G[split.train].std(0) > 0).any()):
            raise ProbeError(f"the given labels {list(names)} are constant on the train rows: they cannot predict "
                             "anything; name labels that vary in this dataset.")  # fmt: skip
        base = {(s.label, s.probe): s for s in score_hook(G, "given", group, split, **options)}
        for hook in hooks:
            acts = dataset.activations(hook).reshape(dataset.n, -1).float()
            design, best = torch.cat([G, acts], 1), {}
            for factor in ACTIVATION_SCALES:  # one fit per factor: a stack would hold them all in memory at once
                scale = torch.cat([torch.ones(G.shape[1]), torch.full((acts.shape[1],), factor)])
                for s in score_hook(design, hook, group, split, feature_scale=scale, **options):
                    key, val = (s.label, s.probe), s.val.get(HEADLINE, math.nan)
                    if key not in best or val > best[key][1].val.get(HEADLINE, -math.inf):
                        best[key] = (factor, s)
            for (label, probe), (factor, s) in best.items():
                b = base[label, probe]
                for metric, (value, lo, hi) in s.metrics.items():
                    diff = s.resamples[metric].astype(np.float64) - b.resamples[metric].astype(np.float64)
                    gain_lo, gain_hi, used, note = paired_interval(diff, 0.95)
                    notes = "; ".join(n for n in (s.notes.get(metric, ""), b.notes.get(metric, ""), note) if n)
                    rows.append([run, step, hook, s.label, label_set(s.label), s.kind, s.probe, metric,
                                 ",".join(names), G.shape[1], *b.metrics[metric], b.val.get(metric, np.nan), value,
                                 lo, hi, s.val.get(metric, np.nan), factor, float(diff[0]), gain_lo, gain_hi,
                                 len(split.train), len(split.test), len(diff) - 1 - used, notes])  # fmt: skip
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"n_given_features": "int64", "n_boot_degenerate": "int64"})


def _targets(dataset, labels, valid: list[str]) -> list[Target]:
    """The labels asked for (explicit ones must vary), or the reward labels the dataset has that vary."""
    explicit = labels is not None
    names = list(labels) if explicit else [n for n in REWARD_LABELS if n in valid]
    if isinstance(labels, str):
        names = [labels]
    if not names:
        raise ProbeError("no label to probe: pass label names (the dataset has no reward-side label).")
    targets = []
    for name in dict.fromkeys(names):
        if name not in valid:
            raise unknown_name("label", name, valid)
        target = make_target(dataset, name)
        why = constant_reason(target)
        if why and explicit:
            raise ProbeError(f"label {name!r} {why} in this dataset, so no probe can be fitted: drop it.")
        if not why:
            targets.append(target)
    if not targets:
        raise ProbeError("every reward-side label is constant in this dataset: name the labels to probe.")
    return targets


def _given(given, valid: list[str]) -> list[str]:
    if given is None:
        names = [n for n in TASK_LABELS if n in valid]
        if not names:
            raise ProbeError("the dataset has no task-side label to condition on: pass given=[label names].")
        return names
    empty = "given=[] conditions on nothing: name the labels to condition on (None: the task set)."
    return known_names(given, valid, "given label", empty)


def given_features(dataset, names: list[str], interactions: bool = True) -> torch.Tensor:
    """float32 [n, features]: the given labels as a design (module docstring). Constant columns are kept (the
    probe leaves out what is constant on its train rows)."""
    scalar, maps = [], []
    for name in names:
        t = make_target(dataset, name)
        if t.kind == "map":
            maps.append(t.values.astype(np.float32))
        elif t.kind == "binary":
            scalar.append(t.values[:, None].astype(np.float32))
        elif t.kind == "multiclass":
            scalar.append(np.eye(len(t.classes), dtype=np.float32)[t.values])
        else:
            levels, codes = np.unique(t.values, return_inverse=True)
            columns = [t.values[:, None].astype(np.float32)]
            if len(levels) <= MAX_LEVELS:
                columns.append(np.eye(len(levels), dtype=np.float32)[codes.reshape(-1)])
            scalar.append(np.concatenate(columns, 1))
    blocks = scalar + maps
    if interactions:
        blocks += [(a[:, :, None] * b[:, None, :]).reshape(len(a), -1) for a, b in itertools.combinations(scalar, 2)]
    return torch.as_tensor(np.concatenate(blocks, 1))
