"""Steering vectors: add `coef x vector` to a hook's activation during rollouts and measure what the agent does.

    from workbench.steering import contrast_vector, steering_effects, trash_at_vector

    trash = contrast_vector(policy, "trash", "conv.1.hook_out")     # mean act(trash there) - act(trash removed)
    effects = steering_effects(policy, trash, coef=-1.0, episodes=500)    # deposit rate, steps to trash, ...
    go = trash_at_vector(policy, (2, 5), "conv.1.hook_out")         # "trash at cell (row 2, col 5)"
    effects = steering_effects(policy, go, coef=1.0, target_cell=(2, 5))  # retargeting: does it go there?
    with steering(policy, go, 2.0):                                 # any forward pass inside is steered
        logits, value = policy(obs)

A vector is a mean activation difference between two contrast sets (`workbench.contrast`), a probe direction from
`probes` (`from_direction`), or any tensor broadcastable to the hook's activation shape. On disk: `<name>.safetensors`
(the tensor) beside `<name>.json` (hook, name, provenance); never pickled.

Effects compare steered rollouts with unsteered ones on the same episodes (same seeds, so the same rooms) and report
each metric's mean with a bootstrap interval over episodes, and the paired difference with its interval.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from workbench.contrast import ContrastPairs, check_cell, contrast_pairs, trash_at_pairs
from workbench.envs import make_config
from workbench.envs.config import EnvConfig
from workbench.envs.core import EVENTS, IN_ROOM
from workbench.evaluate import rollout_episodes
from workbench.io import atomic_write_bytes, atomic_write_json
from workbench.patching import PatchError, activation_shapes, bootstrap_weights, check_hook, mean_ci


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
    if getattr(policy, "arch", None) == "cnn":
        return f"conv.{len(policy.conv) - 1}.hook_out"
    if getattr(policy, "arch", None) == "transformer":
        return f"blocks.{len(policy.blocks) - 1}.hook_resid_pre"
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
    run_env = dict(getattr(policy, "run", {}).get("env", {}) or {})
    if "world" in run_env:  # an imported run: MiniGrid, or no env at all
        from workbench.errors import ConfigError

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
    from workbench.errors import ConfigError

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
) -> dict:
    """Steered vs unsteered rollouts on the same episodes. For each metric: baseline and steered means with
    bootstrap intervals over episodes, and the paired difference (steered - baseline) with its interval."""
    if target_cell is None and "cell" in vector.meta:
        target_cell = tuple(vector.meta["cell"])
    delta = check_steering(policy, vector, coef)  # fail before any rollout
    kwargs = dict(
        env_config=env_config, episodes=episodes, seed=seed, target_cell=target_cell, deterministic=deterministic
    )
    base = episode_metrics(steered_rollouts(policy, vector=None, **kwargs))
    steered = episode_metrics(steered_rollouts(policy, vector=vector, coef=coef, **kwargs))
    weights = bootstrap_weights(episodes, n_boot, seed)
    metrics = {}
    for name in base:
        ok = ~(np.isnan(base[name]) | np.isnan(steered[name]))
        if not ok.any():
            continue
        w = weights[:, torch.as_tensor(ok)]
        w = w / w.sum(1, keepdim=True)
        row = {}
        for label, values in (
            ("baseline", base[name]),
            ("steered", steered[name]),
            ("difference", steered[name] - base[name]),
        ):
            mean, low, high = mean_ci(torch.as_tensor(values[ok]), w)
            row[label], row[f"{label}_ci"] = float(mean), [float(low), float(high)]
        metrics[name] = row
    return {
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


def resolve_vector(policy, spec: str, hook: str | None = None, n: int = 256, seed: int = 0) -> SteeringVector:
    """A vector from a command-line spec: a factor name (its contrast mean at `hook`), `trash-at:ROW,COL`, a saved
    vector (`.safetensors` or `.json`), or probe directions `PROBES.parquet#LABEL` (`#LABEL@I` or `@ROW,COL` picks
    an output of a multiclass or per-cell probe; the latest step's direction at `hook`, if given)."""
    from workbench.contrast import FACTOR_ALIASES, FACTORS

    spec = str(spec)
    if spec.lower() in FACTORS or spec.lower() in FACTOR_ALIASES:
        return contrast_vector(policy, spec, hook, n=n, seed=seed)
    if spec.startswith("trash-at:"):
        try:
            cell = tuple(int(v) for v in spec.removeprefix("trash-at:").split(","))
        except ValueError as err:
            raise PatchError(f"{spec!r}: write trash-at:ROW,COL, e.g. trash-at:2,5.") from err
        return trash_at_vector(policy, cell, hook, n=n, seed=seed)
    if "#" in spec:
        return _probe_vector(policy, spec, hook)
    if Path(spec).suffix in (".safetensors", ".json") or _paths(spec)[0].exists():
        vector = SteeringVector.load(spec)
        if hook is not None and hook != vector.hook:
            raise PatchError(f"{spec} was made at {vector.hook}, not {hook}: drop --hook or make it at {hook}.")
        return vector
    from workbench.contrast import FACTORS as names

    raise PatchError(
        f"vector {spec!r} is neither a factor ({', '.join(names)}), trash-at:ROW,COL, a saved vector "
        "(.safetensors) nor probe directions (PROBES.parquet#LABEL)."
    )


def _probe_vector(policy, spec: str, hook: str | None) -> SteeringVector:
    from probes import load_directions

    path, _, label = spec.partition("#")
    label, _, index = label.partition("@")
    index = tuple(int(v) for v in index.split(",")) if index else None
    found = [d for d in load_directions(path) if d.label == label and (hook is None or d.hook == hook)]
    if not found:
        raise PatchError(f"{path} holds no direction for label {label!r}" + (f" at {hook}" if hook else "") + ".")
    hooks = sorted({d.hook for d in found})
    if len(hooks) > 1:
        raise PatchError(f"{path} has {label!r} directions at {', '.join(hooks)}: pick one with --hook.")
    latest = max(found, key=lambda d: -1 if d.step is None else d.step)
    return from_direction(latest, policy, index=index[0] if index and len(index) == 1 else index)
