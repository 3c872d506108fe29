"""Labelled activation datasets: a policy's activations on its own rollouts, one row per observation, with the
env's ground truth and the episode's outcome beside them. Probes are fitted on these.

    ds = collect(load_policy("runs/trash-cnn"), "trash", n_steps=100_000, out="data/trash-cnn")
    ds.activations("conv.1.hook_out")     # float32 [n, 16, 9, 9]
    ds.labels                             # pandas, one row per observation: carrying, return_to_go, ...
    ds.map_label("trash_map")             # bool [n, G, G]
    ds = open_dataset("data/trash-cnn")   # lazy: tensors are read when first asked for
    control = replay(ds, build_policy(ds.meta["policy"]["config"]))   # the same rows through random weights

On disk a dataset is a folder:

    shard-00000.safetensors   one tensor per hook (the storage dtype, float16 by default), `observations` uint8 and
                              the per-cell map labels as uint8; the first dim of each is the shard's rows
    shard-00000.parquet       the labels of the same rows
    dataset.json              n, hooks and shapes, the map labels and their shapes, how hook_obs is derived,
                              shards, meta

A dataset is written all or nothing: into a hidden folder beside `out` (`.NAME.partial-…`), checked by opening it,
then renamed to `out`. A failed collection removes its partial folder, so `out` either holds a whole dataset or
is as it was; a collection killed outright can leave the hidden partial folder behind (delete it), never a
half-written `out`.

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

from __future__ import annotations

import datetime
import io
import json
import math
import mmap
import os
import re
import secrets
import shutil
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from workbench.envs import BatchEnv, EnvConfig, make_config
from workbench.errors import ConfigError, DatasetError, unknown_name
from workbench.io import _fsync_dir, atomic_write_bytes, atomic_write_json

FORMAT, VERSION = "workbench-activation-dataset", 1
DERIVED_HOOK = "hook_obs"  # observations / divisor exactly: derived on read where that holds (module docstring)
SHARD_RE = re.compile(r"^shard-\d{5}$")
SHARD_BYTES = 512 * 2**20  # at most, per shard's tensors; see _shard_rows
# Label columns that come from the collecting rollout rather than from env.labels() (probes of env ground truth
# usually leave them out).
POLICY_COLUMNS = ("action", "value_pred", "reward_next", "return_to_go", "value_target", "reward_within_k")


@dataclass(frozen=True)
class _Field:
    """A tensor stored per row: the dtype of its numpy buffers, its torch and safetensors dtypes, its row shape."""

    dtype: np.dtype
    torch_dtype: torch.dtype
    code: str
    shape: tuple[int, ...]


# storage_dtype -> (numpy buffer dtype, torch dtype, safetensors code); numpy has no bfloat16, so buffers hold its bits
STORAGE_DTYPES = {
    "float16": (np.dtype(np.float16), torch.float16, "F16"),
    "bfloat16": (np.dtype(np.int16), torch.bfloat16, "BF16"),
    "float32": (np.dtype(np.float32), torch.float32, "F32"),
}


def _activation_field(storage_dtype: str, shape) -> _Field:
    return _Field(*STORAGE_DTYPES[storage_dtype], tuple(shape))


def _uint8_field(shape) -> _Field:
    return _Field(np.dtype(np.uint8), torch.uint8, "U8", tuple(shape))


# ---------------------------------------------------------------------------------------------- the dataset
class _Shard:
    """One shard's tensors: read from its safetensors file on demand, or held in memory ({name: (numpy array, torch
    dtype)}). `base` lends the tensors it lacks (an in-memory replay shares its source's observations and map
    labels instead of copying them)."""

    def __init__(self, rows: int, path: Path | None = None, tensors: dict | None = None, base: _Shard | None = None):
        self.rows, self.path, self.tensors, self.base = rows, path, tensors or {}, base

    def get(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            array, dtype = self.tensors[name]
            return torch.from_numpy(array).view(dtype)  # made here, not under the writer's inference_mode
        if self.path is None:
            return self.base.get(name)
        try:
            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise DatasetError(
                f"{self.path} cannot be read ({err}); the dataset is damaged: collect it again."
            ) from err


class ActivationDataset:
    """Activations of chosen hooks, observations and labels, one row per observation (see the module docstring).

    Tensors are read on first use and cached per name; `labels` is a DataFrame with index 0..n-1."""

    def __init__(self, path, labels, hook_shapes, map_shapes, meta, obs_shape, shards, derived=None):
        self.path: Path | None = path
        self.labels: pd.DataFrame = labels
        self.n: int = len(labels)
        self.hook_names: list[str] = list(hook_shapes)
        self.hook_shapes: dict[str, tuple] = {name: tuple(shape) for name, shape in hook_shapes.items()}
        self.map_shapes: dict[str, tuple] = {name: tuple(shape) for name, shape in map_shapes.items()}
        self.map_label_names: list[str] = list(map_shapes)
        # {hook: divisor} of hooks derived from the observations rather than stored (hook_obs, module docstring)
        self.derived: dict[str, float] = dict(derived or {})
        self.meta: dict = meta
        self.obs_shape: tuple[int, int, int] = tuple(obs_shape)
        self._shards: list[_Shard] = shards
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "in memory"
        return f"ActivationDataset(n={self.n}, hooks={self.hook_names}, {where})"

    def activations(self, hook: str) -> torch.Tensor:
        """float32 [n, *hook_shapes[hook]], every shard concatenated (read once, then cached)."""
        if hook not in self.hook_shapes:
            raise unknown_name("hook in this dataset", hook, self.hook_shapes)
        if hook not in self._cache:
            if hook in self.derived:  # the very op of the policy's preprocessing (module docstring)
                self._cache[hook] = self.observations().float() / self.derived[hook]
            else:
                self._cache[hook] = self._gather(hook, torch.float32, self.hook_shapes[hook])
        return self._cache[hook]

    def map_label(self, name: str) -> np.ndarray:
        """bool [n, rows, cols] (`map_shapes[name]`): where the named object lies in each observation's grid
        (trash_map, bin_map, ...; rows and columns of the env's grid, (row, col) = (y, x))."""
        if name not in self.map_label_names:
            raise unknown_name("map label", name, self.map_label_names)
        if name not in self._cache:
            self._cache[name] = self._gather(name, torch.bool, None)
        return self._cache[name].numpy()

    def observations(self) -> torch.Tensor:
        """uint8 [n, C, H, W], the observations the policy saw."""
        if "observations" not in self._cache:
            self._cache["observations"] = self._gather("observations", torch.uint8, self.obs_shape)
        return self._cache["observations"]

    def episode_ids(self) -> np.ndarray:
        """int64 [n]: the episode of each row (rows of one episode are contiguous)."""
        return self.labels["episode_id"].to_numpy()

    def _gather(self, name: str, dtype: torch.dtype, shape) -> torch.Tensor:
        """One tensor over all shards, filled shard by shard (no second full-size copy, as torch.cat would make)."""
        out = None
        pos = 0
        with torch.inference_mode(False):  # a cached result must stay usable by autograd (probe fitting)
            for shard in self._shards:
                part = shard.get(name)
                if out is None:
                    out = torch.empty((self.n, *(shape if shape is not None else part.shape[1:])), dtype=dtype)
                out[pos : pos + shard.rows].copy_(part)
                pos += shard.rows
        return out


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
    n_steps = _positive_int("n_steps", n_steps)
    n_envs = _positive_int("n_envs", n_envs)
    shard_size = _positive_int("shard_size", shard_size)
    reward_k = _positive_int("reward_k", reward_k)
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma={gamma!r}: use a discount from 0 to 1 (0.99 is usual).")
    if storage_dtype not in STORAGE_DTYPES:
        raise unknown_name("storage dtype", storage_dtype, STORAGE_DTYPES)
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
    if storage_dtype not in STORAGE_DTYPES:
        raise unknown_name("storage dtype", storage_dtype, STORAGE_DTYPES)
    return _row_bytes(_checked_hooks(policy, hooks), storage_dtype, cfg.obs_shape, _batch_env(cfg, 1, 0).labels())


def _collect(policy, cfg: EnvConfig, n_steps, shapes, seed, n_envs, dest, shard_size, gamma, reward_k,
             storage_dtype, deterministic, progress) -> ActivationDataset:  # fmt: skip
    from workbench.guards import check_memory

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
    fields = {name: _activation_field(storage_dtype, shapes[name]) for name in stored}
    fields["observations"] = _uint8_field(cfg.obs_shape)
    fields.update({name: _uint8_field(shape) for name, shape in map_shapes.items()})
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

    with _ShardWriter(folder, fields, label_dtypes, _shard_sizes(n_steps, _shard_rows(shard_size, fields))) as writer:
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
                if deterministic:
                    actions = logits.argmax(-1)
                else:
                    actions = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator)[:, 0]
                actions = actions.cpu().numpy()
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
    batch_size = _positive_int("batch_size", batch_size)
    shapes = _checked_hooks(policy, hooks)
    with _writing(out, policy) as dest:
        return _replay(dataset, policy, shapes, dest, batch_size)


def _replay(dataset: ActivationDataset, policy, shapes, dest, batch_size) -> ActivationDataset:
    storage_dtype = dataset.meta.get("dtype", "float16")
    device = next(policy.parameters()).device
    derived = _derived_hooks(policy, shapes, dataset._shards[0].get("observations")[:batch_size], device)
    stored = [name for name in shapes if name not in derived]
    fields = {name: _activation_field(storage_dtype, shapes[name]) for name in stored}
    folder = None if dest is None else dest.temp
    if folder is None:
        # In memory the new shards hold only activations and borrow the rest from the source's, row for row.
        label_columns, sizes = {}, [shard.rows for shard in dataset._shards]
    else:  # on disk a replay is a complete dataset of its own
        fields["observations"] = _uint8_field(dataset.obs_shape)
        fields |= {name: _uint8_field(shape) for name, shape in dataset.map_shapes.items()}
        label_columns = {name: dataset.labels[name].to_numpy() for name in dataset.labels}
        sizes = _shard_sizes(dataset.n, _shard_rows(max(shard.rows for shard in dataset._shards), fields))
    label_dtypes = {name: column.dtype for name, column in label_columns.items()}

    batch = {name: np.zeros((batch_size, *fields[name].shape), fields[name].dtype) for name in stored}
    hook_list = [(name, _copy_hook(torch.from_numpy(a).view(fields[name].torch_dtype))) for name, a in batch.items()]
    pos = 0  # rows replayed so far
    with _ShardWriter(folder, fields, label_dtypes, sizes) as writer, policy.hooks(fwd_hooks=hook_list):
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


# ---------------------------------------------------------------------------------------------- writing
def _shard_rows(shard_size: int, fields: dict[str, _Field]) -> int:
    """Rows per shard: shard_size, or fewer where a shard would pass SHARD_BYTES (the writer holds two shards in
    memory, so this bounds memory whatever the hooks: a transformer row with every hook is ~62 kB)."""
    row_bytes = sum(math.prod(f.shape) * f.dtype.itemsize for f in fields.values())
    return max(1, min(shard_size, SHARD_BYTES // row_bytes))


def _shard_sizes(n: int, shard_rows: int) -> list[int]:
    return [min(shard_rows, n - lo) for lo in range(0, n, shard_rows)]


def _layout(fields: dict[str, _Field], rows: int) -> tuple[mmap.mmap, dict[str, np.ndarray]]:
    """A shard as the bytes of its safetensors file, with a writable numpy view per tensor: rows are copied
    straight into the file image, which is written as is (safetensors' own save would build a second copy)."""
    # Widest dtype first and an 8-aligned data start keep every tensor naturally aligned; the format wants the
    # data packed without gaps, in offset order.
    order = sorted(fields, key=lambda name: -fields[name].dtype.itemsize)
    header, offset = {"__metadata__": {"format": FORMAT}}, 0
    for name in order:
        size = rows * math.prod(fields[name].shape) * fields[name].dtype.itemsize
        header[name] = {"dtype": fields[name].code, "shape": [rows, *fields[name].shape],
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header with spaces too
    start = 8 + len(text)
    image = mmap.mmap(-1, start + offset)  # page-aligned, as direct writes need (atomic_write_bytes)
    image[:start] = len(text).to_bytes(8, "little") + text
    views = {
        name: np.frombuffer(image, dtype=fields[name].dtype, count=rows * math.prod(fields[name].shape),
                            offset=start + header[name]["data_offsets"][0]).reshape(rows, *fields[name].shape)
        for name in order
    }  # fmt: skip
    return image, views


class _ShardWriter:
    """Fills shards of known sizes from blocks of rows; a full shard is written to `folder` (or kept in memory).

    On disk a background thread writes each full shard while the next one fills: writing (to the page cache, then
    fsync) runs at disk speed and would otherwise stall collection, and file writes release the GIL. Two shard
    images alternate, so memory holds at most two shards. Use it as a context manager: leaving waits for the
    write in flight, so that a failed collection can clean up after it."""

    def __init__(self, folder: Path | None, fields: dict[str, _Field], label_dtypes: dict, sizes: list[int]):
        self.folder, self.fields, self.label_dtypes, self.sizes = folder, fields, label_dtypes, sizes
        self.shards: list[_Shard] = []
        self.labels: list[pd.DataFrame] = []  # in memory only; on disk the parquet files hold them
        self._pool = ThreadPoolExecutor(max_workers=1) if folder is not None else None
        self._writing: Future | None = None
        self._spare = None  # (rows, image, views) of a written shard, to reuse: fresh ones cost page faults
        self._in_flight = None  # (rows, image, views) of the shard being written
        self._open()

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            wait([self._writing] if self._writing else [])
            self._pool.shutdown()

    def _open(self) -> None:
        rows = self.sizes[len(self.shards)]
        if self._spare is not None and self._spare[0] == rows:
            _, self.image, self.views = self._spare
        else:
            self.image, self.views = _layout(self.fields, rows)
        self._spare = None
        self.columns = {name: np.empty(rows, dtype=dtype) for name, dtype in self.label_dtypes.items()}
        self.filled = 0

    def append(self, sources: dict[str, np.ndarray], index: np.ndarray) -> None:
        """Copy rows `index` of every source ([rows, ...] arrays, one per field and label) in order."""
        done = 0
        while done < len(index):
            rows = self.sizes[len(self.shards)]
            take = min(len(index) - done, rows - self.filled)
            part, dest = index[done : done + take], slice(self.filled, self.filled + take)
            for name, view in (*self.views.items(), *self.columns.items()):
                # mode="clip" (the indices are valid) lets numpy write into `out` without buffering
                np.take(sources[name], part, axis=0, out=view[dest], mode="clip")
            self.filled += take
            done += take
            if self.filled == rows:
                self._emit(rows)

    def _emit(self, rows: int) -> None:
        labels = pd.DataFrame(self.columns)
        if self.folder is not None:
            path = self.folder / f"shard-{len(self.shards):05d}.safetensors"
            previous, self._writing = self._writing, self._pool.submit(_write_shard, path, self.image, labels)
            if previous is not None:
                previous.result()  # raises a failed write here; its image is free again
            self._spare, self._in_flight = self._in_flight, (rows, self.image, self.views)
            self.shards.append(_Shard(rows, path=path))
        else:
            tensors = {name: (view, self.fields[name].torch_dtype) for name, view in self.views.items()}
            self.shards.append(_Shard(rows, tensors=tensors))
            self.labels.append(labels)
        self.image = self.views = self.columns = None
        if len(self.shards) < len(self.sizes):
            self._open()

    def finish(self) -> None:
        """Wait until every shard is on disk; a failed write raises here."""
        if self._writing is not None:
            self._writing.result()


def _write_shard(path: Path, image: mmap.mmap, labels: pd.DataFrame) -> None:
    atomic_write_bytes(path, image, direct=True)
    atomic_write_bytes(path.with_suffix(".parquet"), _parquet_bytes(labels))


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _finish(dest, writer: _ShardWriter, shapes, map_shapes, derived, meta, obs_shape, base) -> ActivationDataset:
    """Commit: on disk, dataset.json into the partial folder, which is opened (every shard checked against it) and
    only then renamed to `out`; in memory, the dataset over the writer's shards."""
    if dest is not None:
        writer.finish()
        atomic_write_json(
            dest.temp / "dataset.json",
            {
                "format": FORMAT,
                "version": VERSION,
                "n": sum(writer.sizes),
                "obs_shape": list(obs_shape),
                "hooks": [{"name": name, "shape": list(shape)} for name, shape in shapes.items()],  # in order
                "map_labels": list(map_shapes),
                "map_shapes": {name: list(shape) for name, shape in map_shapes.items()},
                "derived": {name: {"from": "observations", "divisor": d} for name, d in derived.items()},
                "shards": [{"name": f"shard-{i:05d}", "rows": rows} for i, rows in enumerate(writer.sizes)],
                "meta": meta,
            },
        )
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


@dataclass(frozen=True)
class _Destination:
    """Where a dataset is written (`temp`, a hidden folder beside `target`) and where it is committed to."""

    target: Path
    temp: Path

    def commit(self) -> None:
        """Rename the finished dataset to its target (new, or still empty: an empty folder is replaced)."""
        if self.target.exists():
            if not self.target.is_dir() or any(self.target.iterdir()):
                raise DatasetError(_not_empty(self.target) + " (it was filled while this dataset was written)")
            self.target.rmdir()
        self.temp.rename(self.target)
        _fsync_dir(self.target.parent)


@contextmanager
def _writing(out, policy):
    """Claim the output (None: in memory) and run the policy in eval and inference mode inside. On disk the dataset
    is written into a hidden partial folder beside `out` and renamed to it when complete (`_finish`); on any failure
    the partial folder is removed, so `out` is never left half-written."""
    dest = _claim(out)
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


def _claim(out) -> _Destination | None:
    """The destination of a dataset written to `out`, which must be a new or an empty folder."""
    if out is None:
        return None
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise DatasetError(f"{target} is a file: pass a new or empty folder as out.")
        if any(target.iterdir()):
            raise DatasetError(_not_empty(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    temp.mkdir()  # the permissions a new folder gets (mkdtemp's would be private)
    return _Destination(target, temp)


def _not_empty(folder: Path) -> str:
    """Why `folder` cannot take a new dataset, saying what it holds and what to do."""
    entries = sorted(p.name for p in folder.iterdir())
    again = f"pass a new folder as out, or delete {folder} to collect into it again"
    if "dataset.json" in entries:
        try:
            spec = _read_spec(folder / "dataset.json")
        except DatasetError as err:
            return f"{folder} is not empty: it holds a dataset.json that does not open ({err}); {again}."
        missing = [r.get("name") for r in spec["shards"] if not (folder / f"{r.get('name')}.safetensors").exists()]
        if missing:
            return (f"{folder} is not empty: it holds a dataset.json whose shards are missing ({', '.join(missing)}), "
                    f"a damaged dataset; {again}.")  # fmt: skip
        shards = f"{len(spec['shards'])} shard" + ("s" if len(spec["shards"]) != 1 else "")
        return (f"{folder} is not empty: it holds a dataset ({spec['n']} rows in {shards}; "
                f"open_dataset({str(folder)!r}) reads it); {again}.")  # fmt: skip
    if any(SHARD_RE.match(name.split(".")[0]) for name in entries):
        return (f"{folder} is not empty: it holds dataset shards without a dataset.json, an unfinished collection "
                f"(an older workbench wrote into out directly); {again}.")  # fmt: skip
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    return f"{folder} is not empty: it holds {shown}, which is not a dataset; pass a new or empty folder as out."


# ---------------------------------------------------------------------------------------------- reading
def open_dataset(path) -> ActivationDataset:
    """A dataset folder written by `collect` or `replay`. Reads dataset.json and the labels now, checks every
    shard's header against it, and reads tensors only when asked for."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a dataset folder: pass the `out` folder of collect() or replay().")
    spec = _read_spec(folder / "dataset.json")
    hooks = {hook["name"]: tuple(hook["shape"]) for hook in spec["hooks"]}
    derived = _read_derived(spec, hooks, folder)
    map_shapes = _read_map_shapes(spec, folder)
    expected = {name: shape for name, shape in hooks.items() if name not in derived}
    expected["observations"] = tuple(spec["obs_shape"])
    expected |= map_shapes
    shards, labels = [], []
    for record in spec["shards"]:
        name, rows = record.get("name"), record.get("rows")
        if not isinstance(name, str) or not SHARD_RE.match(name) or not isinstance(rows, int) or rows < 1:
            raise DatasetError(f"{folder}/dataset.json lists a malformed shard {record!r}: the file is damaged.")
        tensors = folder / f"{name}.safetensors"
        _check_shard(tensors, expected, rows)
        labels.append(_read_labels(folder / f"{name}.parquet", rows))
        shards.append(_Shard(rows, path=tensors))
    labels = pd.concat(labels, ignore_index=True)
    if len(labels) != spec["n"]:
        raise DatasetError(f"{folder}: the shards hold {len(labels)} rows but dataset.json says {spec['n']}.")
    return ActivationDataset(folder, labels, hooks, map_shapes, spec["meta"], spec["obs_shape"], shards, derived)


def _read_map_shapes(spec: dict, folder: Path) -> dict[str, tuple]:
    """{map label: shape}, as recorded; datasets written before shapes were recorded hold our rooms' maps, whose
    grid is half the observation's side."""
    shapes = spec.get("map_shapes")
    if shapes is None:
        grid = spec["obs_shape"][1] // 2
        return {name: (grid, grid) for name in spec["map_labels"]}
    if (
        not isinstance(shapes, dict)
        or set(shapes) != set(spec["map_labels"])
        or not all(isinstance(v, list) and all(isinstance(d, int) and d > 0 for d in v) for v in shapes.values())
    ):
        raise DatasetError(f"{folder}/dataset.json has a malformed 'map_shapes' entry: the file is damaged.")
    return {name: tuple(shapes[name]) for name in spec["map_labels"]}


def _read_derived(spec: dict, hooks: dict[str, tuple], folder: Path) -> dict[str, float]:
    """{hook: divisor} of the hooks derived from the observations; datasets written before this was recorded
    derive hook_obs as observations / 255 (the workbench policies' contract)."""
    derived = spec.get("derived")
    if derived is None:
        return {DERIVED_HOOK: 255.0} if DERIVED_HOOK in hooks else {}
    try:
        out = {name: float(d["divisor"]) for name, d in derived.items() if d["from"] == "observations"}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"{folder}/dataset.json has a malformed 'derived' entry ({err}): the file is damaged."
        ) from err
    if set(out) != set(derived) or not set(out) <= {DERIVED_HOOK} & set(hooks) or not all(d > 0 for d in out.values()):
        raise DatasetError(f"{folder}/dataset.json has a malformed 'derived' entry {derived}: the file is damaged.")
    return out


def _read_spec(path: Path) -> dict:
    if not path.exists():
        raise DatasetError(
            f"{path} is missing: {path.parent} is not a dataset, or its collection did not finish (dataset.json "
            "is written last). Collect it again into an empty folder."
        )
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} cannot be read as JSON ({err}): the file is damaged; collect again.") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an activation dataset's dataset.json (no format {FORMAT!r}).")
    if spec.get("version") != VERSION:
        raise DatasetError(
            f"{path} has version {spec.get('version')!r}; this workbench reads version {VERSION}: collect again."
        )
    kinds = {"n": int, "obs_shape": list, "hooks": list, "map_labels": list, "shards": list, "meta": dict}
    for key, kind in kinds.items():
        if not isinstance(spec.get(key), kind):
            raise DatasetError(f"{path} lacks a valid {key!r} entry: the file is damaged; collect again.")
    if not all(isinstance(hook, dict) and {"name", "shape"} <= set(hook) for hook in spec["hooks"]):
        raise DatasetError(f"{path} has a malformed 'hooks' entry: the file is damaged; collect again.")
    if spec["n"] < 1 or not spec["shards"]:
        raise DatasetError(f"{path} describes an empty dataset (n={spec['n']}): collect at least one row.")
    return spec


def _check_shard(path: Path, expected: dict[str, tuple], rows: int) -> None:
    try:
        with safe_open(path, framework="pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except FileNotFoundError as err:
        raise DatasetError(f"{path} is missing: the dataset is incomplete; collect it again.") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a valid safetensors file ({err}): it is damaged; collect again.") from err
    for name, shape in expected.items():
        if found.get(name) != (rows, *shape):
            raise DatasetError(
                f"{path}: tensor {name!r} has shape {found.get(name)}, but dataset.json implies {(rows, *shape)}. "
                "The shard belongs to another dataset or is damaged."
            )


def _read_labels(path: Path, rows: int) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError(f"{path} is missing: the dataset is incomplete; collect it again.")
    try:
        labels = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file; all mean the same here
        raise DatasetError(f"{path} is not a readable parquet file ({err}): it is damaged; collect again.") from err
    if len(labels) != rows or "episode_id" not in labels:
        raise DatasetError(f"{path} holds {len(labels)} label rows, expected {rows} with an episode_id column.")
    return labels


# ---------------------------------------------------------------------------------------------- arguments
def _as_policy(policy):
    """A policy under the workbench contract: ours, a hooked SB3 policy, or a checkpoint path for load_policy; an
    SB3 algorithm or policy is hooked on the way (workbench.hook)."""
    from workbench.hooked import SB3PolicyView, hook
    from workbench.policies import HookedPolicy

    if isinstance(policy, str | Path):
        from workbench.checkpoints import load_policy

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
    from workbench.minigrid_world import MiniGridBatch

    return MiniGridBatch(cfg, n_envs=n_envs, seed=seed)


def _env_config(env, policy):
    """Our env (variant name, EnvConfig, dict of options) or a MiniGrid one (an id 'MiniGrid-…', a MiniGridConfig,
    or a dict with world='minigrid'); None: the policy's training env from its run.json."""
    from workbench.minigrid_world import MiniGridConfig, minigrid_config

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
        run = getattr(policy, "run", None)
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
        from workbench.policies import HookedPolicy

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
    from workbench.policies import hook_shapes

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


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name}={value!r}: use a positive integer.")
    return int(value)


def _policy_meta(policy) -> dict:
    run_dir = getattr(policy, "run_dir", None)
    step = getattr(policy, "step", None)
    return {"run_dir": None if run_dir is None else str(run_dir), "step": step, "config": policy.config()}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
