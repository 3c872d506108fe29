"""Labelled activation datasets: a policy's activations on its own rollouts, one row per observation, with the
env's ground truth and the episode's outcome beside them. Probes are fitted on these.

    ds = collect(load_policy("runs/trash-cnn"), "trash", n_steps=100_000, out="data/trash-cnn")
    ds.activations("conv.1.hook_out")     # float32 [n, 16, 9, 9]
    ds.labels                             # pandas, one row per observation: carrying, return_to_go, ...
    ds.map_label("trash_map")             # bool [n, G, G]
    ds = open_dataset("data/trash-cnn")   # lazy: tensors are read when first asked for
    control = replay(ds, build_policy(ds.meta["policy"]["config"]))   # the same rows through random weights

The modules: `workbench.data.collection` (collect, replay, row-size estimates, which policy and env to roll out),
`workbench.data.dataset` (ActivationDataset, open_dataset and its checks) and `workbench.data.storage` (fields,
shards, the shard writer, the output folder and dataset.json: the layout on disk, written all or nothing).

Rows come in whole episodes (an episode's rows are contiguous, step 0 first), so every row's return-to-go is that of
a finished episode. Episodes still running when collection stops are dropped (short episodes are therefore slightly
over-represented in small datasets), and the last episode may be cut at n_steps rows; its labels were computed
from the whole episode. `hook_obs` is not stored: it is derived on read as observations (float32) / divisor, with
the divisor of the collecting policy recorded in dataset.json: 255 for the workbench's policies (the policy
contract, policies/base.py) and for SB3 policies that normalise images, 1 for SB3 policies with
`normalize_images=False`, which read raw values. Collection checks the derivation against the live hook on the
first batch and stores hook_obs like any other hook where it does not hold, so `activations("hook_obs")` is
always what the policy's hook saw.
"""

from workbench.data.collection import POLICY_COLUMNS, collect, dataset_row_bytes, replay
from workbench.data.dataset import ActivationDataset, open_dataset
from workbench.data.storage import DERIVED_HOOK, FORMAT, SHARD_RE, STORAGE_DTYPES, VERSION

__all__ = ["DERIVED_HOOK", "FORMAT", "POLICY_COLUMNS", "SHARD_RE", "STORAGE_DTYPES", "VERSION", "ActivationDataset",
           "collect", "dataset_row_bytes", "open_dataset", "replay"]  # fmt: skip
