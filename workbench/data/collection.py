"""Filling activation datasets: `collect` rolls a policy out and records its activations with the env's labels and
the episode's outcome; `replay` puts the same observations through other weights; `dataset_row_bytes` says what a
row takes in memory beforehand. Also how collection resolves its policy (a checkpoint path, an SB3 model) and its
env (a variant name, a MiniGrid id, the policy's training env). The rows and labels are described in
`workbench.data`; how they are stored in `workbench.data.storage`.
"""

from __future__ import annotations

import datetime
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench.common.compute import sample_actions
from workbench.common.errors import ConfigError, DatasetError, unknown_name
from workbench.common.guards import check_float, check_int, check_memory
from workbench.data.dataset import ActivationDataset, open_dataset
from workbench.data.storage import (
    DERIVED_HOOK,
    STORAGE_DTYPES,
    ShardWriter,
    activation_field,
    check_storage_dtype,
    claim,
    shard_rows,
    shard_sizes,
    uint8_field,
    write_spec,
)
from workbench.envs import BatchEnv, EnvConfig, make_config
from workbench.envs.minigrid import MiniGridBatch, MiniGridConfig, minigrid_config
from workbench.policies import HookedPolicy, hook_shapes
from workbench.policies.base import checkpoint_of
from workbench.policies.views import SB3PolicyView, hook
from workbench.training.checkpoints import load_policy

# Label columns that come from the collecting rollout rather than from env.labels() (probes of env ground truth
# usually leave them out).
POLICY_COLUMNS = ("action", "value_pred", "reward_next", "return_to_go", "value_target", "reward_within_k")


# ---------------------------------------------------------------------------------------------- collect
def collect(
    policy,
    env,
    n_steps: int,
    hooks: list[str] | None = None,
    seed: int = 0,
    n_envs: int = 64,
    out: str | Path | None = None,
    shard_size: int = 65536,
    gamma: float = 0.99,
    reward_k: int = 5,
    storage_dtype: str = "float16",
    deterministic: bool = False,
    progress=None,
) -> ActivationDataset:
    """Roll `policy` out on `BatchEnv(env, n_envs, seed)` and record `n_steps` observations with their activations.

    policy         a HookedPolicy, or a run directory / step file for `load_policy`
    env            a variant name, an EnvConfig, a dict of make_config options, or None for the policy's training env
    hooks          hook names to store (None: all); activations are stored as `storage_dtype` (float16 | bfloat16 |
                   float32) and read back as float32
    out            a new or empty folder to write shards of `shard_size` rows to (fewer where a shard's tensors
                   would pass 512 MiB); None keeps the dataset in memory
    gamma          discount of `value_target`; reward_k: the horizon of `reward_within_k`
    deterministic  argmax actions instead of sampling (from a torch.Generator seeded with `seed`)
    progress       called as progress(rows_done, n_steps) as rows are recorded

    Each row holds every scalar of `env.labels()` (reward and event_* are those of the transition that led to
    this observation), the *_map labels, and: action (taken here), value_pred (the policy's value), reward_next
    (the reward that action earned), return_to_go (undiscounted rewards from this action to the episode's end),
    value_target (the same discounted by gamma; no bootstrap at truncation: what this episode actually paid) and
    reward_within_k (any nonzero reward among the next reward_k transitions). The same arguments give the same
    dataset.
    """
    policy = _as_policy(policy)
    cfg = _env_config(env, policy)
    where = f"room_size {cfg.room_size}" if isinstance(cfg, EnvConfig) else f"{cfg.env_id}, obs {cfg.obs!r}"
    _check_obs_shape(policy, cfg.obs_shape, f"the env ({where})")
    n_steps = check_int(n_steps, "n_steps", 1)
    n_envs = check_int(n_envs, "n_envs", 1)
    shard_size = check_int(shard_size, "shard_size", 1)
    reward_k = check_int(reward_k, "reward_k", 1)
    gamma = check_float(gamma, "gamma (the discount; 0.99 is usual)", 0.0, 1.0)
    check_storage_dtype(storage_dtype)
    shapes = _checked_hooks(policy, hooks)
    with _writing(out, policy) as folder:
        return _collect(policy, cfg, n_steps, shapes, seed, n_envs, folder, shard_size, gamma, reward_k,
                        storage_dtype, deterministic, progress)  # fmt: skip


def _row_bytes(shapes: dict[str, tuple], storage_dtype: str, obs_shape, labels: dict) -> int:
    """Bytes one row takes: its stored activations, pixels (uint8), map labels (uint8) and scalar labels (the
    label columns, plus the POLICY_COLUMNS, at 8 bytes or less each)."""
    itemsize = STORAGE_DTYPES[storage_dtype][0].itemsize
    maps = sum(math.prod(v.shape[1:]) for name, v in labels.items() if name.endswith("_map"))
    scalars = 8 * (sum(1 for name in labels if not name.endswith("_map")) + len(POLICY_COLUMNS) + 2)
    return itemsize * sum(math.prod(s) for s in shapes.values()) + math.prod(obs_shape) + maps + scalars


def dataset_row_bytes(policy, hooks: list[str] | None = None, env=None, storage_dtype: str = "float16") -> int:
    """Bytes one row of a `collect(policy, env, hooks=hooks)` dataset takes in memory: n_steps times this is what an
    in-memory collection holds (what `collect` checks before it starts, and commands estimate beforehand)."""
    policy = _as_policy(policy)
    cfg = _env_config(env, policy)
    check_storage_dtype(storage_dtype)
    return _row_bytes(_checked_hooks(policy, hooks), storage_dtype, cfg.obs_shape, _batch_env(cfg, 1, 0).labels())


def _collect(policy, cfg: EnvConfig, n_steps, shapes, seed, n_envs, dest, shard_size, gamma, reward_k,
             storage_dtype, deterministic, progress) -> ActivationDataset:  # fmt: skip
    env = _batch_env(cfg, n_envs, seed)
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    first = env.labels()
    # Before any buffer: the ring (max_steps + 32 steps of every env) and the rows kept (all of them in memory, or
    # two shards on disk) must fit.
    row = _row_bytes(shapes, storage_dtype, cfg.obs_shape, {k: v[:1] for k, v in first.items()})
    kept = n_steps if dest is None else 2 * min(n_steps, shard_size)
    need = row * ((cfg.max_steps + 32) * n_envs + kept)
    if dest is None:
        check_memory(need, f"collecting {n_steps:,} observations in memory", "n_steps (--steps)", per_unit=row)
    else:
        check_memory(need, f"collecting with {n_envs:,} envs", "n_envs")
    # Map labels keep the shape the env gives them (our rooms: the room's grid; MiniGrid: its grid's rows x cols).
    map_shapes = {name: tuple(first[name].shape[1:]) for name in first if name.endswith("_map")}
    map_names = list(map_shapes)
    scalars = [name for name in first if not name.endswith("_map")]
    env_columns = ["episode_id", "step"] + [name for name in scalars if name not in ("episode_id", "step")]
    derived = _derived_hooks(policy, shapes, env.state.obs, device)
    stored = [name for name in shapes if name not in derived]
    folder = None if dest is None else dest.temp

    # A ring of the last C batched steps, time-major ([C, n_envs, ...] per field), so each step is one copy per
    # field and never a Python loop over rows. When the ring is full (C > max_steps, so every env slot has
    # finished an episode by then) the finished episodes' rows are scored and copied out to the shards in bulk;
    # the running episodes' rows (fewer than max_steps per slot) stay, leaving 32 or more steps free. Memory is
    # bounded by C x n_envs rows plus two shards (the one filling, the one being written).
    C = cfg.max_steps + 32
    N = n_envs
    fields = {name: activation_field(storage_dtype, shapes[name]) for name in stored}
    fields["observations"] = uint8_field(cfg.obs_shape)
    fields.update({name: uint8_field(shape) for name, shape in map_shapes.items()})
    ring = {name: np.zeros((C, N, *f.shape), dtype=f.dtype) for name, f in fields.items()}
    label_dtypes = {name: first[name].dtype for name in env_columns}
    label_dtypes |= dict(zip(POLICY_COLUMNS, (np.int64, np.float32, np.float32, np.float32, np.float32, np.bool_),
                             strict=True))  # fmt: skip
    columns = {name: np.zeros((C, N), dtype=dtype) for name, dtype in label_dtypes.items()}
    done = np.zeros((C, N), dtype=bool)
    valid = np.zeros((C, N), dtype=bool)  # recorded and not yet copied out

    # Hooks copy (and cast) straight into the ring row being filled: registered once, not per forward as
    # run_with_cache would, and with no intermediate cache dict.
    current = [0]

    def writer_hook(name):
        dest = torch.from_numpy(ring[name]).view(fields[name].torch_dtype)

        def hook_fn(x, hook) -> None:  # returns None: TL would take a returned tensor as the new activation
            dest[current[0]].copy_(x)

        return hook_fn

    with ShardWriter(folder, fields, label_dtypes, shard_sizes(n_steps, shard_rows(shard_size, fields))) as writer:
        flat = {name: a.reshape(C * N, *a.shape[2:]) for name, a in ring.items()}
        flat_columns = {name: a.reshape(C * N) for name, a in columns.items()}
        start, count, written = 0, 0, 0  # ring position of the oldest kept step, steps kept, rows copied out

        def flush() -> None:
            nonlocal start, count, written
            order = (start + np.arange(count)) % C  # ring positions in time order
            ended, reward = done[order], columns["reward_next"][order]
            has_end = ended.any(0)
            last_end = np.where(has_end, count - 1 - ended[::-1].argmax(0), -1)  # per slot: its last finished step
            finished = valid[order] & (np.arange(count)[:, None] <= last_end)
            # Returns by one backward pass over time, vectorised over slots; a done step cuts the sum.
            to_go, discounted = np.zeros(N), np.zeros(N)
            for t in range(count - 1, -1, -1):
                go_on = ~ended[t]
                to_go = reward[t] + go_on * to_go
                discounted = reward[t] + gamma * go_on * discounted
                columns["return_to_go"][order[t]] = to_go
                columns["value_target"][order[t]] = discounted
            nonzero, soon = reward != 0, np.zeros((count, N), dtype=bool)
            alive = np.ones((count, N), dtype=bool)  # still the same episode j steps ahead
            for j in range(min(reward_k, count)):
                soon[: count - j] |= alive[: count - j] & nonzero[j:]
                alive[: count - j] &= ~ended[j:]
            columns["reward_within_k"][order] = soon
            # Slot-major order keeps each episode's rows together and in time order.
            slot, t = np.nonzero(finished.T)
            index = (order[t] * N + slot)[: n_steps - written]
            writer.append({**flat, **flat_columns}, index)
            written += len(index)
            valid.reshape(-1)[index] = False
            drop = int(last_end.min()) + 1  # steps no slot needs any more
            if drop == 0 and count == C:
                raise RuntimeError("an episode outlasted the ring; max_steps is not being enforced")  # unreachable
            start, count = (start + drop) % C, count - drop
            if progress is not None:
                progress(written, n_steps)

        obs = env.state.obs.copy()
        with policy.hooks(fwd_hooks=[(name, writer_hook(name)) for name in stored]):
            while written < n_steps:
                i = current[0] = (start + count) % C
                labels = env.labels()
                for name in env_columns:
                    columns[name][i] = labels[name]
                for name in map_names:
                    ring[name][i] = labels[name]
                ring["observations"][i] = obs
                logits, value = policy(torch.from_numpy(obs).to(device))
                actions = sample_actions(logits, deterministic, generator).cpu().numpy()
                columns["action"][i] = actions
                columns["value_pred"][i] = value.float().cpu().numpy()
                obs, reward, terminated, truncated, _ = env.step(actions)
                columns["reward_next"][i] = reward
                done[i] = terminated | truncated
                valid[i] = True
                count += 1
                # Flush when the ring is full, or (every 8 steps) once the rows recorded could finish the job.
                if count == C or (count % 8 == 0 and written + int(valid.sum()) >= n_steps):
                    flush()

        meta = {
            "policy": _policy_meta(policy),
            "env": cfg.to_dict(),
            "seed": int(seed),
            "n_envs": n_envs,
            "gamma": float(gamma),
            "reward_k": reward_k,
            "deterministic": bool(deterministic),
            "dtype": storage_dtype,
            "created": _now(),
        }
        return _finish(dest, writer, shapes, map_shapes, derived, meta, cfg.obs_shape, base=None)


# ---------------------------------------------------------------------------------------------- replay
def replay(dataset: ActivationDataset, policy, hooks: list[str] | None = None, out=None, batch_size: int = 4096):
    """The same observations and labels through other weights (another checkpoint, or random weights of the same
    architecture as a probe control). Returns a dataset with the new policy's activations and the source's rows,
    labels, observations and map labels (shared in memory, or copied into the shards of `out`). action, value_pred
    and the other outcome columns stay those of the rollout that collected the rows."""
    if not isinstance(dataset, ActivationDataset):
        raise ConfigError(f"replay needs an ActivationDataset (from collect or open_dataset), not {type(dataset)}.")
    if dataset.n < 1:
        raise DatasetError("the dataset is empty: there is nothing to replay.")
    policy = _as_policy(policy)
    _check_obs_shape(policy, dataset.obs_shape, "the dataset's observations")
    batch_size = check_int(batch_size, "batch_size", 1)
    shapes = _checked_hooks(policy, hooks)
    with _writing(out, policy) as dest:
        return _replay(dataset, policy, shapes, dest, batch_size)


def _replay(dataset: ActivationDataset, policy, shapes, dest, batch_size) -> ActivationDataset:
    storage_dtype = dataset.meta.get("dtype", "float16")
    device = next(policy.parameters()).device
    derived = _derived_hooks(policy, shapes, dataset._shards[0].get("observations")[:batch_size], device)
    stored = [name for name in shapes if name not in derived]
    fields = {name: activation_field(storage_dtype, shapes[name]) for name in stored}
    folder = None if dest is None else dest.temp
    if folder is None:
        # In memory the new shards hold only activations and borrow the rest from the source's, row for row.
        label_columns, sizes = {}, [shard.rows for shard in dataset._shards]
    else:  # on disk a replay is a complete dataset of its own
        fields["observations"] = uint8_field(dataset.obs_shape)
        fields |= {name: uint8_field(shape) for name, shape in dataset.map_shapes.items()}
        label_columns = {name: dataset.labels[name].to_numpy() for name in dataset.labels}
        sizes = shard_sizes(dataset.n, shard_rows(max(shard.rows for shard in dataset._shards), fields))
    label_dtypes = {name: column.dtype for name, column in label_columns.items()}

    batch = {name: np.zeros((batch_size, *fields[name].shape), fields[name].dtype) for name in stored}
    hook_list = [(name, _copy_hook(torch.from_numpy(a).view(fields[name].torch_dtype))) for name, a in batch.items()]
    pos = 0  # rows replayed so far
    with ShardWriter(folder, fields, label_dtypes, sizes) as writer, policy.hooks(fwd_hooks=hook_list):
        for shard in dataset._shards:
            obs = shard.get("observations")
            copied = {name: shard.get(name).numpy() for name in fields if name not in stored}
            for lo in range(0, shard.rows, batch_size):
                hi = min(lo + batch_size, shard.rows)
                policy(obs[lo:hi].to(device))  # the hooks fill `batch`
                sources = {name: a[: hi - lo] for name, a in batch.items()}
                sources |= {name: a[lo:hi] for name, a in copied.items()}
                sources |= {name: column[pos + lo : pos + hi] for name, column in label_columns.items()}
                writer.append(sources, np.arange(hi - lo))
            pos += shard.rows
        meta = {
            **dataset.meta,
            "policy": _policy_meta(policy),
            "replay_of": {
                "path": None if dataset.path is None else str(dataset.path),
                "policy": dataset.meta["policy"],
            },
            "created": _now(),
        }
        return _finish(dest, writer, shapes, dataset.map_shapes, derived, meta, dataset.obs_shape, base=dataset)


def _copy_hook(dest: torch.Tensor):
    """A hook that copies (and casts) the batch's activation into the head of `dest`."""

    def hook_fn(x, hook) -> None:  # returns None: TL would take a returned tensor as the new activation
        dest[: len(x)].copy_(x)

    return hook_fn


def _finish(dest, writer: ShardWriter, shapes, map_shapes, derived, meta, obs_shape, base) -> ActivationDataset:
    """Commit: on disk, dataset.json into the partial folder, which is opened (every shard checked against it) and
    only then renamed to `out`; in memory, the dataset over the writer's shards."""
    if dest is not None:
        writer.finish()
        write_spec(dest.temp, sum(writer.sizes), obs_shape, shapes, map_shapes, derived, writer.sizes, meta)
        open_dataset(dest.temp)  # a dataset that would not open is never committed
        dest.commit()
        return open_dataset(dest.target)
    if base is not None:
        for shard, source in zip(writer.shards, base._shards, strict=True):
            shard.base = source
        labels = base.labels
    else:
        labels = pd.concat(writer.labels, ignore_index=True)
    return ActivationDataset(None, labels, shapes, map_shapes, meta, obs_shape, writer.shards, derived)


def _derived_hooks(policy, shapes: dict[str, tuple], obs, device) -> dict[str, float]:
    """{DERIVED_HOOK: divisor} if hook_obs is asked for and is exactly observations.float() / divisor for this
    policy (checked on `obs`, a batch of real observations); {} otherwise (it is then stored like any hook)."""
    if DERIVED_HOOK not in shapes:
        return {}
    divisor = float(getattr(policy, "hook_obs_divisor", 255.0))
    obs = torch.as_tensor(obs)
    _, cache = policy.run_with_cache(obs.to(device), names_filter=[DERIVED_HOOK])
    live = cache[DERIVED_HOOK].cpu()
    derived = obs.float() / divisor
    return {DERIVED_HOOK: divisor} if live.dtype == derived.dtype and torch.equal(live, derived) else {}


@contextmanager
def _writing(out, policy):
    """Claim the output (None: in memory) and run the policy in eval and inference mode inside. On disk the dataset
    is written into a hidden partial folder beside `out` and renamed to it when complete (`_finish`); on any failure
    the partial folder is removed, so `out` is never left half-written."""
    dest = claim(out)
    was_training = policy.training
    policy.eval()
    try:
        with torch.inference_mode():
            yield dest
    except BaseException:
        if dest is not None:
            shutil.rmtree(dest.temp, ignore_errors=True)
        raise
    finally:
        policy.train(was_training)


# ---------------------------------------------------------------------------------------------- arguments
def _as_policy(policy):
    """A policy under the workbench contract: ours, a hooked SB3 policy, or a checkpoint path for load_policy; an
    SB3 algorithm or policy is hooked on the way (workbench.hook)."""
    if isinstance(policy, str | Path):
        return load_policy(policy)
    if isinstance(policy, HookedPolicy | SB3PolicyView):
        return policy
    if hasattr(policy, "policy") or hasattr(policy, "action_net"):
        view = hook(policy)
        if isinstance(view, SB3PolicyView):
            return view
    raise ConfigError(
        f"policy must be a workbench policy, an SB3 actor-critic (algorithm or policy; see workbench.hook) or a "
        f"checkpoint path for load_policy, not {type(policy).__name__}."
    )


def _batch_env(cfg, n_envs: int, seed: int):
    if isinstance(cfg, EnvConfig):
        return BatchEnv(cfg, n_envs=n_envs, seed=seed)
    return MiniGridBatch(cfg, n_envs=n_envs, seed=seed)


def _env_config(env, policy):
    """Our env (variant name, EnvConfig, dict of options) or a MiniGrid one (an id 'MiniGrid-…', a MiniGridConfig,
    or a dict with world='minigrid'); None: the policy's training env from its run.json."""
    if isinstance(env, MiniGridConfig):
        return env
    if isinstance(env, str) and env.startswith(("MiniGrid-", "BabyAI-")):
        return minigrid_config(env)
    if isinstance(env, dict) and env.get("world") == "minigrid":
        return minigrid_config(**env)
    if isinstance(env, dict) and "world" in env:
        raise ConfigError(
            f"the env {env} is not one the workbench can build (an imported policy whose env was not given?): "
            "pass env, e.g. 'MiniGrid-Empty-5x5-v0' or 'trash'."
        )
    if env is None:
        loaded = checkpoint_of(policy)
        run = loaded.run if loaded is not None else None
        if not isinstance(run, dict) or not isinstance(run.get("env"), dict):
            raise ConfigError(
                "env=None means the policy's training env, but this policy has no run attached (it was not "
                "loaded with load_policy): pass env, e.g. 'trash' or {'variant': 'trash', 'room_size': 7}."
            )
        return _env_config(run["env"], None)
    if isinstance(env, dict):
        return make_config(**env)
    if isinstance(env, EnvConfig | str):
        return make_config(env)
    raise ConfigError(f"env must be a variant name, an EnvConfig or a dict of options, not {type(env).__name__}.")


def _check_obs_shape(policy, obs_shape, what: str) -> None:
    if tuple(policy.obs_shape) != tuple(obs_shape):
        if not isinstance(policy, HookedPolicy):
            raise ConfigError(f"the policy reads observations {list(policy.obs_shape)}, but {what} gives "
                              f"{list(obs_shape)}: pass the env (and observation kind) it was trained on.")  # fmt: skip
        room = policy.obs_shape[1] // 2 - 2
        raise ConfigError(
            f"the policy was built for observations {list(policy.obs_shape)} (room_size {room}), but {what} gives "
            f"{list(obs_shape)}: use room_size={room}, or a policy trained on this room size."
        )


def _checked_hooks(policy, hooks) -> dict[str, tuple]:
    """{hook name: per-row shape} for the hooks asked for (None: all), in the order asked."""
    shapes = hook_shapes(policy)
    if hooks is None:
        return shapes
    if isinstance(hooks, str):
        hooks = [hooks]
    aliases = getattr(policy, "hook_aliases", {})
    for name in hooks:
        if name in aliases:
            raise ConfigError(
                f"hook {name!r} is the same activation as {aliases[name]!r}, which this policy lists once under that "
                f"name (see `workbench hooks`): pass {aliases[name]!r}."
            )
        if name not in shapes:
            raise unknown_name("hook", name, shapes)
    return {name: shapes[name] for name in dict.fromkeys(hooks)}


def _policy_meta(policy) -> dict:
    loaded = checkpoint_of(policy)
    return {"run_dir": None if loaded is None else str(loaded.run_dir), "step": None if loaded is None else loaded.step,
            "config": policy.config()}  # fmt: skip


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
