"""Steering vectors: add `coef x vector` to a hook's activation during rollouts and measure what the agent does.

    from workbench.interventions.steering import contrast_vector, steering_effects, trash_at_vector

    trash = contrast_vector(policy, "trash", "conv.1.hook_out")     # mean act(trash there) - act(trash removed)
    effects = steering_effects(policy, trash, coef=-1.0, episodes=500)    # deposit rate, steps to trash, ...
    go = trash_at_vector(policy, (2, 5), "conv.1.hook_out")         # "trash at cell (row 2, col 5)"
    effects = steering_effects(policy, go, coef=1.0, target_cell=(2, 5))  # retargeting: does it go there?
    with steering(policy, go, 2.0):                                 # any forward pass inside is steered
        logits, value = policy(obs)

A vector is a mean activation difference between two contrast sets (`workbench.envs.contrast`), a probe direction from
`probes` (`from_direction`), or any tensor broadcastable to the hook's activation shape. On disk: `<name>.safetensors`
(the tensor) beside `<name>.json` (hook, name, provenance); never pickled.

Effects compare steered rollouts with unsteered ones on the same episodes (same seeds, so the same rooms) and report
each metric's mean with a bootstrap interval over episodes, and the paired difference with its interval. A vector's
effect means little alone: any vector of its size moves a policy somewhat, and a "direction" that only breaks the
policy moves it the same way at -coef. So `steering_null` (and `steering_effects(..., n_random=20, reverse=True)`)
also steer, on the same episodes, with random vectors of the same norm and of the same spatial profile, and with the
vector at -coef, and report the effect's percentile and rank p-value in each null and whether it is sign-specific:

    null = steering_null(policy, trash, -3.0, "deposit_rate", n_random=20, episodes=300)
    null["null"]["profile"]["percentile"], null["null"]["profile"]["p_value"], null["reversed"], null["sign_specific"]
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from probes import load_directions
from workbench.common.errors import ConfigError, unknown_name
from workbench.common.io import atomic_write_bytes, atomic_write_json
from workbench.common.stats import bootstrap_weights, mean_ci
from workbench.envs import make_config
from workbench.envs.config import EnvConfig
from workbench.envs.contrast import FACTOR_ALIASES, FACTORS, ContrastPairs, check_cell, contrast_pairs, trash_at_pairs
from workbench.envs.core import EVENTS, IN_ROOM
from workbench.envs.rollouts import rollout_episodes
from workbench.interventions.patching import PatchError, activation_shapes, check_hook, hook_kind
from workbench.policies.base import checkpoint_of
from workbench.policies.names import act_name

METRICS = ("success_rate", "deposit_rate", "deposits_per_episode", "pick_rate", "steps_to_trash", "button_rate",
           "goal_rate", "bump_rate", "mean_return", "mean_length")  # fmt: skip
TARGET_METRICS = ("retarget_success_rate", "steps_to_target")  # with a target cell
NULL_KINDS = ("norm", "profile")


@dataclass
class SteeringVector:
    """`vector` is broadcastable to `hook`'s activation shape (batch dim excluded)."""

    hook: str
    vector: Tensor
    name: str = ""
    meta: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write `<path>.safetensors` and `<path>.json` (any suffix of `path` is replaced), atomically."""
        tensors_path, index_path = _paths(path)
        atomic_write_bytes(tensors_path, st_save({"vector": self.vector.detach().to("cpu", torch.float32).clone()}))
        atomic_write_json(
            index_path,
            {
                "hook": self.hook,
                "name": self.name,
                "meta": self.meta,
                "shape": list(self.vector.shape),
                "tensors": tensors_path.name,
            },
        )
        return tensors_path, index_path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        tensors_path, index_path = _paths(path)
        try:
            index = json.loads(index_path.read_text())
            vector = st_load(tensors_path.read_bytes())["vector"]
            return cls(index["hook"], vector, index.get("name", ""), index.get("meta", {}))
        except FileNotFoundError as err:
            raise PatchError(
                f"{err.filename} is missing: save a vector with SteeringVector.save or `workbench steer ... --save`."
            ) from err
        except (json.JSONDecodeError, KeyError, TypeError, SafetensorError, ValueError) as err:
            raise PatchError(f"{tensors_path} / {index_path} is not a saved steering vector ({err}).") from err


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def default_hook(policy) -> str:
    """Where steering acts unless told: the CNN's last conv map; the transformer's residual stream before its last
    block."""
    role = {"cnn": "conv", "transformer": "resid_pre"}.get(getattr(policy, "arch", None))
    if role is not None:
        return act_name(policy, role, -1)
    raise PatchError("this policy has no default steering hook: pass hook= (see `workbench hooks`).")


# ---------------------------------------------------------------------------------------------- making vectors
@torch.no_grad()
def mean_activation(policy, obs, hook: str, batch: int = 1024) -> Tensor:
    check_hook(policy, hook)
    device = next(policy.parameters()).device
    obs = torch.as_tensor(obs, device=device)
    total = None
    for start in range(0, len(obs), batch):
        _, cache = policy.run_with_cache(obs[start : start + batch], names_filter=[hook])
        part = cache[hook].double().sum(0)
        total = part if total is None else total + part
    return (total / len(obs)).float()


def mean_difference(policy, pos_obs, neg_obs, hook: str, name: str = "", meta: dict | None = None) -> SteeringVector:
    """mean activation on `pos_obs` minus mean on `neg_obs` at `hook`."""
    if len(pos_obs) == 0 or len(neg_obs) == 0:
        raise PatchError("both contrast sets need at least one observation.")
    vector = mean_activation(policy, pos_obs, hook) - mean_activation(policy, neg_obs, hook)
    return SteeringVector(hook, vector, name, dict(meta or {}, n_pos=len(pos_obs), n_neg=len(neg_obs)))


def pairs_vector(policy, pairs: ContrastPairs, hook: str | None = None, name: str | None = None) -> SteeringVector:
    hook = hook or default_hook(policy)
    return mean_difference(
        policy,
        pairs.clean_obs,
        pairs.corrupt_obs,
        hook,
        name or pairs.factor,
        {"factor": pairs.factor, "env": pairs.config.to_dict()},
    )


def policy_env(policy, variant: str | None = None) -> EnvConfig:
    """The env the policy was trained on (run.json), or a default room that fits its observation shape; with
    `variant`, that variant at the same room size."""
    loaded = checkpoint_of(policy)
    run_env = dict((loaded.run.get("env") if loaded else None) or {})
    if "world" in run_env:  # an imported run: MiniGrid, or no env at all
        where = run_env.get("env_id", "no env the workbench can build")
        raise ConfigError(
            f"this policy acts in {where}, not in the workbench's rooms, whose contrast pairs and rollouts steering "
            "uses: steer workbench-trained runs. On an imported MiniGrid run: eval, patch (factors key, carrying, "
            "door), probe and report."
        )
    room_size = run_env.get("room_size", policy.obs_shape[-1] // 2 - 2)
    if variant is None and run_env:
        return make_config(**run_env)
    return make_config(variant or "trash", room_size=room_size)


def contrast_vector(
    policy, factor: str, hook: str | None = None, n: int = 256, seed: int = 0, config=None
) -> SteeringVector:
    """The factor's vector: mean activation with it (clean) minus without (corrupt), over `n` contrast pairs from
    the policy's own env (its room size; the factor's edit adds what that env lacks)."""
    pairs = contrast_pairs(factor, n, seed, config=config or policy_env(policy))
    return pairs_vector(policy, pairs, hook)


def trash_at_vector(policy, cell, hook: str | None = None, n: int = 256, seed: int = 0, config=None) -> SteeringVector:
    """A "trash at grid cell (row, col)" vector: rooms with a trash item there minus the same rooms without it."""
    pairs = trash_at_pairs(cell, n, seed, config=config or policy_env(policy))
    row, col = int(pairs.cell[0, 0]), int(pairs.cell[0, 1])
    vec = pairs_vector(policy, pairs, hook, name=f"trash-at:{row},{col}")
    vec.meta["cell"] = [row, col]
    return vec


def from_direction(direction, policy=None, index=None, normalise: bool = True) -> SteeringVector:
    """A probe direction (`probes.Direction`) as a steering vector: its weight in the activation basis, unit norm
    unless `normalise=False` (then coef is in the probe's logit units per unit of activation). Multi-output probes
    (multiclass, per-cell maps) need `index`: the class, or the (row, col) cell. A conv1x1 probe's channel weight
    applies at every cell (or only at cell `index`)."""
    weight = direction.weight.detach().float()
    shape = activation_shapes(policy, [direction.hook])[direction.hook] if policy is not None else None
    if direction.probe == "conv1x1":
        vector = weight.view(-1, 1, 1)
        if index is not None:
            if shape is None:
                raise PatchError("a conv1x1 direction at one cell needs the policy (for the map's shape).")
            row, col = (int(v) for v in np.atleast_1d(index))
            vector = torch.zeros(shape, dtype=weight.dtype)
            vector[:, row, col] = weight
    else:
        act_ndim = len(shape) if shape is not None else direction.mean.ndim
        out_dims = weight.shape[: weight.ndim - act_ndim]
        if out_dims:
            if index is None:
                raise PatchError(
                    f"direction {direction.label!r} at {direction.hook} has {list(out_dims)} outputs (a class or cell "
                    "each): pass index= the class (or the (row, col) cell) to steer along."
                )
            try:
                vector = weight[tuple(int(i) for i in np.atleast_1d(index))]
            except IndexError as err:
                raise PatchError(f"index {index!r} is out of range for outputs {list(out_dims)}.") from err
        else:
            vector = weight
    norm = float(vector.norm())
    if normalise:
        if norm == 0:
            raise PatchError(f"direction {direction.label!r} at {direction.hook} is zero; nothing to steer along.")
        vector = vector / norm
    return SteeringVector(
        direction.hook,
        vector,
        f"probe:{direction.label}",
        {
            "label": direction.label,
            "probe": direction.probe,
            "step": direction.step,
            "index": None if index is None else np.atleast_1d(index).tolist(),
            "weight_norm": norm,
        },
    )


# ---------------------------------------------------------------------------------------------- applying them
def check_steering(policy, vector: SteeringVector, coef: float) -> Tensor:
    """The validated `coef * vector` on the policy's device."""
    check_hook(policy, vector.hook)
    try:
        coef = float(coef)
    except (TypeError, ValueError) as err:
        raise PatchError(f"coef={coef!r} is not a number.") from err
    if not math.isfinite(coef):
        raise PatchError(f"coef={coef!r} is not finite: use a finite number (0 turns steering off).")
    vec = torch.as_tensor(vector.vector, dtype=torch.float32)
    if not torch.isfinite(vec).all():
        raise PatchError(f"steering vector {vector.name!r} holds NaN or inf values.")
    shape = activation_shapes(policy, [vector.hook])[vector.hook]
    try:
        fits = torch.broadcast_shapes(tuple(vec.shape), shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise PatchError(
            f"steering vector {vector.name!r} has shape {list(vec.shape)}, which does not fit {vector.hook} "
            f"(activation shape {list(shape)}): make it at this hook of this policy."
        )
    return coef * vec.to(next(policy.parameters()).device)


@contextmanager
def steering(policy, vectors: SteeringVector | list[SteeringVector], coefs: float | list[float] = 1.0):
    """Inside, every forward of `policy` adds coef x vector at each vector's hook."""
    vectors = [vectors] if isinstance(vectors, SteeringVector) else list(vectors)
    coefs = [coefs] * len(vectors) if not isinstance(coefs, list | tuple) else list(coefs)
    if len(coefs) != len(vectors):
        raise PatchError(f"{len(vectors)} vectors but {len(coefs)} coefficients: give one coef per vector.")
    hooks = []
    for vector, coef in zip(vectors, coefs, strict=True):
        delta = check_steering(policy, vector, coef)
        hooks.append((vector.hook, lambda act, hook, delta=delta: act + delta))
    with policy.hooks(fwd_hooks=hooks):
        yield policy


@torch.no_grad()
def steered_rollouts(
    policy,
    env_config=None,
    vector: SteeringVector | None = None,
    coef: float = 1.0,
    episodes: int = 200,
    seed: int = 12345,
    target_cell=None,
    deterministic: bool = False,
) -> dict[str, np.ndarray]:
    """Play `episodes` episodes (the first of each env of a batch seeded `seed`) with the policy steered by
    `coef x vector` (None: unsteered). Per-episode arrays: return, length, every task event's count, trash at the
    start, steps_to_trash (steps until the first pick; the episode length + 1 if none: censored), and with a
    `target_cell`: reached_target and steps_to_target (censored alike)."""
    if not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes={episodes!r}: roll out at least 1 episode.")
    if env_config is None:
        cfg = policy_env(policy)
    else:
        cfg = make_config(**env_config) if isinstance(env_config, dict) else make_config(env_config)
    if tuple(cfg.obs_shape) != tuple(policy.obs_shape):
        raise PatchError(
            f"{cfg.variant} rooms of size {cfg.room_size} give observations {list(cfg.obs_shape)}, "
            f"but the policy reads {list(policy.obs_shape)}: use its training room size."
        )
    target = None if target_cell is None else check_cell(cfg, target_cell)
    with steering(policy, vector, coef) if vector is not None else nullcontext():
        ep = rollout_episodes(policy, cfg, episodes, seed, deterministic, target_cell=target)
    out = {name: ep[name] for name in ("return", "length", *EVENTS)}
    out["trash_at_start"] = (ep["start"].trash_status == IN_ROOM).sum(1)
    out["steps_to_trash"] = np.where(ep["first_picked"] > 0, ep["first_picked"], ep["length"] + 1)
    if target is not None:
        out["reached_target"] = ep["first_target"] > 0
        out["steps_to_target"] = np.where(ep["first_target"] > 0, ep["first_target"], ep["length"] + 1)
    return out


def episode_metrics(episodes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-episode values of the reported metrics."""
    trash = np.maximum(episodes["trash_at_start"], 1)
    out = {
        "success_rate": episodes["task_complete"] > 0,
        "deposit_rate": np.where(episodes["trash_at_start"] > 0, episodes["deposited"] / trash, np.nan),
        "deposits_per_episode": episodes["deposited"],
        "pick_rate": episodes["picked"] > 0,
        "steps_to_trash": episodes["steps_to_trash"],
        "button_rate": episodes["button_pressed"] > 0,
        "goal_rate": episodes["goal_reached"] > 0,
        "bump_rate": episodes["bumped_wall"] > 0,
        "mean_return": episodes["return"],
        "mean_length": episodes["length"],
    }
    if "reached_target" in episodes:
        out["retarget_success_rate"] = episodes["reached_target"]
        out["steps_to_target"] = episodes["steps_to_target"]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def steering_effects(
    policy,
    vector: SteeringVector,
    coef: float = 1.0,
    episodes: int = 200,
    env_config=None,
    seed: int = 12345,
    target_cell=None,
    deterministic: bool = False,
    n_boot: int = 1000,
    n_random: int = 0,
    null_kinds: Sequence[str] = NULL_KINDS,
    reverse: bool | None = None,
    null_seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Steered vs unsteered rollouts on the same episodes. For each metric: baseline and steered means with
    bootstrap intervals over episodes, and the paired difference (steered - baseline) with its interval.

    With `reverse` (default: when `n_random` > 0), also the vector at -coef on the same episodes: `reversed`,
    `reversed_difference` (with intervals) and `opposite_signs` (the two differences have strictly opposite signs).
    With `n_random` > 0, `null`: for each kind of `null_kinds`, `n_random` random vectors (`random_vectors`,
    seeded `null_seed`) at the same coef on the same episodes, and the difference's `percentile` and two-sided
    `p_value` among theirs (`null_percentile`, `rank_p_value`; the reversed difference's too, against the same null:
    both kinds of random vector are as likely as their negation), `outside` (p <= alpha) and `sign_specific`
    (`sign_specific`); the row's `sign_specific` holds when it holds in every null."""
    if target_cell is None and "cell" in vector.meta:
        target_cell = tuple(vector.meta["cell"])
    delta = check_steering(policy, vector, coef)  # fail before any rollout
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        raise ConfigError(f"episodes={episodes!r}: roll out at least 1 episode.")
    n_random = _check_n_random(n_random, minimum=0)
    null_kinds = _check_kinds(null_kinds) if n_random else ()
    alpha = _check_alpha(alpha)
    if n_random and 1 / (n_random + 1) > alpha:
        warnings.warn(
            f"n_random={n_random}: the rank p-value cannot go below 1/{n_random + 1} = {1 / (n_random + 1):.3f}, "
            f"above alpha={alpha:g}: draw at least {math.ceil(1 / alpha) - 1} random vectors to tell an effect from "
            "the null.",
            UserWarning,
            stacklevel=2,
        )
    reverse = bool(n_random) if reverse is None else bool(reverse)
    kwargs = dict(
        env_config=env_config, episodes=episodes, seed=seed, target_cell=target_cell, deterministic=deterministic
    )
    base = episode_metrics(steered_rollouts(policy, vector=None, **kwargs))
    steered = episode_metrics(steered_rollouts(policy, vector=vector, coef=coef, **kwargs))
    flipped = episode_metrics(steered_rollouts(policy, vector=vector, coef=-coef, **kwargs)) if reverse else None
    nulls = {
        kind: [
            episode_metrics(steered_rollouts(policy, vector=random, coef=coef, **kwargs))
            for random in random_vectors(policy, vector, kind, n_random, null_seed)
        ]
        for kind in null_kinds
    }
    weights = bootstrap_weights(episodes, n_boot, seed)
    metrics = {}
    for name in base:
        ok = ~(np.isnan(base[name]) | np.isnan(steered[name]))
        if not ok.any():
            continue
        w = weights[:, torch.as_tensor(ok)]
        w = w / w.sum(1, keepdim=True)
        row = {}
        parts = [("baseline", base[name]), ("steered", steered[name]), ("difference", steered[name] - base[name])]
        if flipped is not None:
            parts += [("reversed", flipped[name]), ("reversed_difference", flipped[name] - base[name])]
        for label, values in parts:
            mean, low, high = mean_ci(torch.as_tensor(values[ok]), w)
            row[label], row[f"{label}_ci"] = float(mean), [float(low), float(high)]
        if flipped is not None:
            row["opposite_signs"] = bool(row["difference"] * row["reversed_difference"] < 0)
        if nulls:
            row["null"] = {}
            for kind, runs in nulls.items():
                null_diff = np.array([float(np.mean(run[name][ok] - base[name][ok])) for run in runs])
                stats = {
                    "steered": [float(np.mean(run[name][ok])) for run in runs],
                    "difference": null_diff.tolist(),
                    "median": float(np.median(null_diff)),
                    "percentile": null_percentile(row["difference"], null_diff),
                    "p_value": rank_p_value(row["difference"], null_diff),
                }
                stats["outside"] = stats["p_value"] <= alpha
                if flipped is not None:
                    stats["reversed_percentile"] = null_percentile(row["reversed_difference"], null_diff)
                    stats["reversed_p_value"] = rank_p_value(row["reversed_difference"], null_diff)
                    stats["sign_specific"] = sign_specific(row["difference"], row["reversed_difference"], null_diff,
                                                           alpha)  # fmt: skip
                row["null"][kind] = stats
            if flipped is not None:
                row["sign_specific"] = all(stats["sign_specific"] for stats in row["null"].values())
        metrics[name] = row
    out = {
        "hook": vector.hook,
        "vector": vector.name,
        "vector_norm": float(delta.norm() / abs(coef)) if coef else float(torch.as_tensor(vector.vector).norm()),
        "coef": float(coef),
        "episodes": episodes,
        "seed": seed,
        "deterministic": deterministic,
        "target_cell": None if target_cell is None else [int(v) for v in target_cell],
        "metrics": metrics,
    }
    if reverse:
        out["reversed_coef"] = -float(coef)
    if n_random:
        out.update({"n_random": n_random, "null_kinds": list(null_kinds), "null_seed": null_seed, "alpha": alpha})
    return out


# ---------------------------------------------------------------------------------------------- null distributions
def random_vectors(policy, vector: SteeringVector, kind: str = "norm", n: int = 20, seed: int = 0) -> list:
    """`n` random `SteeringVector`s matched to `vector` (same hook, same shape), for a null distribution of
    steering effects. Seeded: the same (kind, n, seed) gives the same vectors.

    - "norm": Gaussian directions in the vector's shape, scaled to the vector's norm.
    - "profile": the vector's norm at every position: at each position of the activation (a cell of a conv map
      [C, H, W], a token of [pos, d_model], a (pos, head) of [pos, head, d_head]) a Gaussian direction across its
      features (the channels of a map; the last axis otherwise), scaled to the vector's norm at that position. The
      random vector weighs each position as the vector does, only in another direction there; the stronger null
      where a policy is sensitive to where a vector acts more than to which way it points. A vector without
      positions (an fc vector, or one broadcast from [C, 1, 1] over a map, which keeps one direction for all cells)
      has one position, and its profile null is a norm null.

    Both distributions are symmetric (a vector is as likely as its negation), so one null serves the vector at
    coef and at -coef."""
    kind = _check_kinds([kind])[0]
    n = _check_n_random(n, minimum=1, name="n")
    shape = activation_shapes(policy, [vector.hook])[vector.hook]
    vec = torch.as_tensor(vector.vector, dtype=torch.float32).detach().cpu()
    generator = torch.Generator().manual_seed(int(seed) * len(NULL_KINDS) + NULL_KINDS.index(kind))
    full = vec.reshape((1,) * (len(shape) - vec.ndim) + tuple(vec.shape))  # aligned with the activation's axes
    kind_of_hook = hook_kind(vector.hook, shape)
    axis = None if not shape else 0 if kind_of_hook in ("vector", "map") else len(shape) - 1
    out = []
    for i in range(n):
        noise = torch.randn(full.shape, generator=generator)
        if kind == "norm" or axis is None:
            random = noise * (vec.norm() / noise.norm().clamp_min(1e-12))
        else:
            scale = full.norm(dim=axis, keepdim=True) / noise.norm(dim=axis, keepdim=True).clamp_min(1e-12)
            random = noise * scale
        out.append(SteeringVector(vector.hook, random.reshape(vec.shape), f"random-{kind}-{i}",
                                  {"null": kind, "seed": int(seed), "index": i, "of": vector.name}))  # fmt: skip
    return out


def null_percentile(value: float, null) -> float:
    """Where `value` falls among the null draws, 0 to 100: the percentage of draws below it, ties counted half."""
    null = _null_array(null)
    tol = 1e-9 * max(1.0, abs(float(value)))
    below, tied = (null < value - tol).sum(), (np.abs(null - value) <= tol).sum()
    return float(100.0 * (below + 0.5 * tied) / len(null))


def rank_p_value(value: float, null) -> float:
    """Two-sided rank p-value of `value` against `n` null draws: (k + 1) / (n + 1), k the number of draws at least
    as far from the null's median as `value` is, on either side. The smallest it can be is 1 / (n + 1): 0.048 with
    20 draws, so at least 19 are needed to reach 0.05."""
    null = _null_array(null)
    centre = float(np.median(null))
    distance = abs(float(value) - centre)
    tol = 1e-9 * max(1.0, distance)
    as_extreme = (np.abs(null - centre) >= distance - tol).sum()
    return float((as_extreme + 1) / (len(null) + 1))


def sign_specific(difference: float, reversed_difference: float, null, alpha: float = 0.05) -> bool:
    """Whether a steering effect belongs to the vector's sign: its difference is outside the null (two-sided rank
    p-value <= alpha) and the difference at -coef does not fall on the same side of the null's median beyond the
    null's quartile (below its 25th percentile when the effect is below the median, above the 75th when above).
    That is, measured from what random vectors do, the reversed effect has the opposite sign or lies inside the
    null's middle half. A direction that merely disrupts the policy, moving the metric the same way at either
    sign, is not sign-specific."""
    null = _null_array(null)
    if rank_p_value(difference, null) > _check_alpha(alpha):
        return False
    flipped = null_percentile(reversed_difference, null)
    below = difference < float(np.median(null))
    return not (flipped < 25.0 if below else flipped > 75.0)


def steering_null(
    policy,
    vector: SteeringVector,
    coef: float,
    metric: str,
    n_random: int = 20,
    kinds: Sequence[str] = NULL_KINDS,
    episodes: int = 200,
    seed: int = 12345,
    target_cell=None,
    env_config=None,
    deterministic: bool = False,
    null_seed: int = 0,
    alpha: float = 0.05,
    n_boot: int = 1000,
) -> dict:
    """One metric's steering effect beside its controls, all on the same `episodes` (seed `seed`): the vector at
    `coef`, `n_random` random vectors of each kind in `kinds` (`random_vectors`) at `coef`, and the vector at -coef.
    Returns the run's settings (hook, vector, coef, reversed_coef, episodes, seed, ...) and the metric's row of
    `steering_effects`: baseline, steered, difference, reversed, reversed_difference (each with `_ci`),
    opposite_signs, null[kind] (steered and difference per random vector, median, percentile, p_value, outside,
    reversed_percentile, reversed_p_value, sign_specific) and sign_specific (in every null)."""
    names = METRICS + (TARGET_METRICS if target_cell is not None or "cell" in vector.meta else ())
    if metric not in names:
        if metric in TARGET_METRICS:
            raise PatchError(f"metric {metric!r} needs a target cell: pass target_cell=(row, col).")
        raise unknown_name("steering metric", metric, names)
    _check_n_random(n_random, minimum=1)
    effects = steering_effects(policy, vector, coef, episodes=episodes, env_config=env_config, seed=seed,
                               target_cell=target_cell, deterministic=deterministic, n_boot=n_boot, n_random=n_random,
                               null_kinds=kinds, reverse=True, null_seed=null_seed, alpha=alpha)  # fmt: skip
    row = effects.pop("metrics").get(metric)
    if row is None:
        raise PatchError(f"{metric} is undefined in all {episodes} episodes (e.g. no trash to deposit): pick another "
                         "metric or an env where it happens.")  # fmt: skip
    return {**effects, "metric": metric, **row}


def _check_n_random(n_random, minimum: int, name: str = "n_random") -> int:
    if not isinstance(n_random, int | np.integer) or isinstance(n_random, bool) or n_random < minimum:
        raise PatchError(
            f"{name}={n_random!r}: draw at least {max(minimum, 1)} random vector(s) for a null distribution "
            f"(20 or more reach p <= 0.05){'; 0 turns the null off' if minimum == 0 else ''}."
        )
    return int(n_random)


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        raise PatchError(f"no null kinds given: pick from {', '.join(NULL_KINDS)}.")
    for kind in kinds:
        if kind not in NULL_KINDS:
            raise PatchError(
                f"unknown null kind {kind!r}: use 'norm' (random vectors of the same norm) or 'profile' (the same "
                "norm at every position, random directions there)."
            )
    return kinds


def _check_alpha(alpha) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as err:
        raise PatchError(f"alpha={alpha!r} is not a number: use a level such as 0.05.") from err
    if not 0 < alpha < 1:
        raise PatchError(f"alpha={alpha!r}: use a level between 0 and 1, such as 0.05.")
    return alpha


def _null_array(null) -> np.ndarray:
    null = np.asarray(null, dtype=np.float64).ravel()
    if null.size == 0 or not np.isfinite(null).all():
        raise PatchError("the null distribution needs at least one finite draw.")
    return null


def resolve_vector(policy, spec: str, hook: str | None = None, n: int = 256, seed: int = 0) -> SteeringVector:
    """A vector from a command-line spec: a factor name (its contrast mean at `hook`), `trash-at:ROW,COL`, a saved
    vector (`.safetensors` or `.json`), or probe directions `PROBES.parquet#LABEL` (`#LABEL@I` or `@ROW,COL` picks
    an output of a multiclass or per-cell probe; the latest step's direction at `hook`, if given)."""
    spec = str(spec)
    if spec.lower() in FACTORS or spec.lower() in FACTOR_ALIASES:
        return contrast_vector(policy, spec, hook, n=n, seed=seed)
    if spec.startswith("trash-at:"):
        try:
            cell = tuple(int(v) for v in spec.removeprefix("trash-at:").split(","))
        except ValueError:
            cell = ()
        if len(cell) != 2:
            raise PatchError(f"{spec!r}: write trash-at:ROW,COL with two whole numbers, e.g. trash-at:2,5.")
        return trash_at_vector(policy, cell, hook, n=n, seed=seed)
    if "#" in spec:
        return _probe_vector(policy, spec, hook)
    if Path(spec).suffix in (".safetensors", ".json") or _paths(spec)[0].exists():
        vector = SteeringVector.load(spec)
        if hook is not None and hook != vector.hook:
            raise PatchError(f"{spec} was made at {vector.hook}, not {hook}: drop --hook or make it at {hook}.")
        return vector
    raise PatchError(
        f"vector {spec!r} is neither a factor ({', '.join(FACTORS)}), trash-at:ROW,COL, a saved vector "
        "(.safetensors) nor probe directions (PROBES.parquet#LABEL)."
    )


def _probe_vector(policy, spec: str, hook: str | None) -> SteeringVector:
    path, _, label = spec.partition("#")
    label, at, index_text = label.partition("@")
    if not path or not label:
        raise PatchError(f"--vector {spec!r}: write PROBES.parquet#LABEL (with @I for a class, @ROW,COL for a cell).")
    index = None
    if at:
        try:
            index = tuple(int(v) for v in index_text.split(","))
        except ValueError:
            index = ()
        if not 1 <= len(index) <= 2 or min(index) < 0:
            raise PatchError(f"--vector {spec!r}: after @ comes the output to steer along, a class index (@2) or a "
                             f"cell (@ROW,COL), as whole numbers >= 0; not {index_text!r}.")  # fmt: skip
    found = [d for d in load_directions(path) if d.label == label and (hook is None or d.hook == hook)]
    if not found:
        raise PatchError(f"{path} holds no direction for label {label!r}" + (f" at {hook}" if hook else "") + ".")
    hooks = sorted({d.hook for d in found})
    if len(hooks) > 1:
        raise PatchError(f"{path} has {label!r} directions at {', '.join(hooks)}: pick one with --hook.")
    latest = max(found, key=lambda d: -1 if d.step is None else d.step)
    return from_direction(latest, policy, index=index[0] if index and len(index) == 1 else index)
