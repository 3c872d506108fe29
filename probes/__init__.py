"""Linear probes with their controls, fitted in batches: what is linearly readable from a policy's activations,
and is it more than the controls can read?

A probe on any hook of a collected dataset, in a short analysis script::

    from workbench.training.checkpoints import load_policy
    from workbench.data import collect
    import probes

    policy = load_policy("runs/trash-cnn")
    ds = collect(policy, None, n_steps=20_000, seed=0)          # the run's own env
    result = probes.fit_probe(ds, "conv.1.hook_out", "carrying")
    table = result.table                                        # tidy pandas DataFrame, one row per control
    print(table[["metric", "value", "ci_low", "ci_high", "control", "control_value", "selectivity"]])

    # many at once: every default hook x the reward and task label sets, side by side (constant ones skipped)
    result = probes.fit_probes(ds)
    print(probes.summary(result.table))                         # best probe per label, chosen on validation
    print(probes.gap(result))                                   # best task-side - best reward-side, with a CI

    # what activations add about reward beyond the task labels (paired bootstrap interval of the gain)
    extra = probes.conditional_probes(ds, ["fc.hook_out"], ["reward_within_k"])

    # the direction, in the activation basis, for steering or patching
    carrying = next(d for d in result.directions if d.label == "carrying" and d.hook == "fc.hook_out")
    logit = ds.activations("fc.hook_out") @ carrying.weight + carrying.bias

    # the whole checkpoint series, one table; files written atomically
    table = probes.probe_sweep("runs/trash-cnn", out="probes.parquet")
    directions = probes.load_directions("probes.parquet")

The modules, in the order a reader would follow them:

    labels      the label catalogue (REWARD_LABELS, TASK_LABELS, kinds) and label → target
    episodes    split by episode, shuffle across episodes, bootstrap over episodes
    fit         batched ridge and logistic / softmax fitting in torch (one Cholesky per hook and grid value)
    metrics     info_gain (the headline), R², accuracy, balanced accuracy, AUROC, per-cell maps, for all
                bootstrap resamples at once
    controls    random-init draws and Hewitt & Liang control tasks
    probe       the methodology on one dataset: fit_probes, fit_probe, the tidy table, summary
    resamples   every probe's bootstrap resamples, and gap: paired intervals of differences
    conditional conditional_probes: what activations add beyond ground-truth labels
    sweep       probe_sweep over a run's checkpoints, writing the table, the directions and the resamples
    directions  probe directions on disk (safetensors + JSON index)
    arrays      ArrayDataset: probe plain arrays with the same API
    bench       bench_probes: the batched fit vs a loop of scikit-learn fits
"""

from probes.arrays import ArrayDataset
from probes.conditional import conditional_probes
from probes.directions import Direction, load_directions, save_directions
from probes.errors import ProbeError
from probes.gap import gap
from probes.labels import LABEL_KINDS, REWARD_LABELS, TASK_LABELS
from probes.probe import CONTROLS, ProbeResult, fit_probe, fit_probes, summary
from probes.resamples import Resamples, load_resamples
from probes.sweep import probe_sweep

__all__ = [
    "CONTROLS",
    "LABEL_KINDS",
    "REWARD_LABELS",
    "TASK_LABELS",
    "ArrayDataset",
    "Direction",
    "ProbeError",
    "ProbeResult",
    "Resamples",
    "conditional_probes",
    "fit_probe",
    "fit_probes",
    "gap",
    "load_directions",
    "load_resamples",
    "probe_sweep",
    "save_directions",
    "summary",
]
