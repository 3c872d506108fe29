"""Patching and steering a saved run, as `workbench patch` and `workbench steer` do: load the checkpoint, check
what it can take (its env, the memory), build the inputs (contrast pairs of its own env, the steering vector), run.

    table, contrast, hooks = patch_run("runs/trash-cnn", "trash", n_pairs=128)
    vector, effects = steer_run("runs/trash-cnn", "trash", coef=-1.0, episodes=500)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.common.errors import WorkbenchError
from workbench.common.guards import check_output
from workbench.envs.contrast import FACTOR_ALIASES, FACTORS, contrast_pairs
from workbench.envs.minigrid import contrast_pairs as minigrid_pairs
from workbench.envs.minigrid import minigrid_config
from workbench.interventions.patching import check_patch_memory, default_patch_hooks, patch
from workbench.interventions.steering import _paths as vector_paths
from workbench.interventions.steering import check_steering, policy_env, resolve_vector, steering_effects
from workbench.training.checkpoints import load_policy
from workbench.training.sb3_import import no_env_message


def patch_run(checkpoint: str | Path, factor: str, n_pairs: int = 128, hooks: list[str] | None = None,
              per: str | None = None, mode: str = "remove", seed: int = 0):  # fmt: skip
    """Activation patching (`patching.patch`) of a checkpoint on `n_pairs` contrast pairs of its own env that differ
    in `factor` (a run imported with a MiniGrid env: pairs of that env's rooms, factors key, carrying, door); hooks
    default to `patching.default_patch_hooks`. The memory is checked before any pair is built.

    Returns (table, contrast, hooks): the tidy patching table, the contrast pairs and the hooks patched."""
    policy = load_policy(checkpoint)
    world = policy.run["env"].get("world")
    if world not in (None, "minigrid"):
        raise WorkbenchError(no_env_message("patch", [{"run": policy.run_dir, "env": policy.run["env"]}]))
    names = hooks or default_patch_hooks(policy)
    check_patch_memory(policy, n_pairs, names, per=per, option="--pairs")  # before any pair is built
    if world == "minigrid":
        contrast = minigrid_pairs(factor, n_pairs, seed, minigrid_config(**policy.run["env"]))
    else:
        contrast = contrast_pairs(factor, n_pairs, seed, config=policy_env(policy), mode=mode)
    return patch(policy, contrast, names, per=per, seed=seed), contrast, names


def top_sites(table: pd.DataFrame, hooks: list[str], n: int = 5) -> pd.DataFrame:
    """The `n` sites of each hook with the largest normalised effect of the clean source in a patching table, in
    the order of `hooks`: hook, site, value, ci_low, ci_high, and noise (the noise baseline's effect at that site,
    NaN where there is none)."""
    effect = table[table.metric == "normalised_effect"]
    rows = []
    for hook in hooks:
        clean = effect[(effect.hook == hook) & (effect.source == "clean")].sort_values("value", ascending=False)
        noise = effect[(effect.hook == hook) & (effect.source == "noise")].set_index("site")["value"]
        for row in clean.head(n).itertuples():
            rows.append({"hook": hook, "site": row.site, "value": row.value, "ci_low": row.ci_low,
                         "ci_high": row.ci_high, "noise": noise.get(row.site, float("nan"))})  # fmt: skip
    return pd.DataFrame(rows, columns=["hook", "site", "value", "ci_low", "ci_high", "noise"])


def steer_run(checkpoint: str | Path, vector: str, coef: float = 1.0, episodes: int = 200, hook: str | None = None,
              n_pairs: int = 256, seed: int = 12345, n_random: int = 20, null_seed: int = 0, reverse: bool = True,
              deterministic: bool = False, save: str | Path | None = None):  # fmt: skip
    """Steer a checkpoint with `vector` (`steering.resolve_vector`: a factor, trash-at:ROW,COL, a saved vector or a
    probe direction; a contrast vector is the mean over `n_pairs` pairs, whose memory is checked first) at `coef`
    during `episodes` rollouts, beside the unsteered ones, -coef (`reverse`) and `n_random` random vectors per null
    (`steering.steering_effects`). `save`: also save the vector there (its files checked before any work).

    Returns (vector, effects): the SteeringVector and steering_effects' result."""
    if save is not None:
        tensors_path, index_path = vector_paths(save)
        check_output(tensors_path, option="--save", companions=[index_path])
    policy = load_policy(checkpoint)
    if vector.lower() in FACTORS or vector.lower() in FACTOR_ALIASES or vector.startswith("trash-at:"):
        check_patch_memory(policy, n_pairs, [], option="--pairs")  # the contrast pairs the vector is the mean of
    steer_vector = resolve_vector(policy, vector, hook, n=n_pairs)
    check_steering(policy, steer_vector, coef)
    if save is not None:
        steer_vector.save(save)
    effects = steering_effects(policy, steer_vector, coef, episodes=episodes, seed=seed, deterministic=deterministic,
                               n_random=n_random, reverse=reverse, null_seed=null_seed)  # fmt: skip
    return steer_vector, effects
