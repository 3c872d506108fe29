"""What the dashboard and the report compute from a run directory, each result cached.

Caches are keyed by the resolved path and the mtime and size of the files read, so a table rewritten by a new
`workbench probe` run is picked up on the next request while repeated requests cost a dictionary lookup.
Episodes and activations are keyed by the checkpoint file's key as well.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probes import load_directions
from probes.directions import paths as directions_paths
from probes.metrics import HEADLINE
from probes.probe import best_by_validation
from workbench.apps.paths import (
    MAX_FILES,
    MAX_JSON_BYTES,
    MAX_TABLE_BYTES,
    MAX_TENSOR_BYTES,
    PathError,
    file_key,
    find_tables,
    inside,
    safe_file,
    safe_path,
)
from workbench.common import guards
from workbench.common.compute import (
    one_torch_thread,  # noqa: F401  (re-exported: the app and tests take it from here)
    sample_actions,
)
from workbench.common.errors import WorkbenchError
from workbench.common.stats import wilson_interval
from workbench.envs import ACTION_NAMES, EVENTS, BatchEnv, make_config, minigrid
from workbench.envs.config import DISTRIBUTIONS
from workbench.envs.contrast import FACTORS
from workbench.envs.core import MOVES
from workbench.interventions.steering import (
    SteeringVector,
    contrast_vector,
    episode_metrics,
    from_direction,
    steered_rollouts,
    steering,
)
from workbench.interventions.steering import _paths as vector_paths
from workbench.policies import hook_shapes
from workbench.training.checkpoints import list_steps, load_policy, read_json, read_run, step_stem

SCALAR_LABELS_HIDDEN = ("episode_id", "reward") + tuple(f"event_{e}" for e in EVENTS)
COEF_MAX = 1000.0  # steering coefficients the views accept (the slider spans -8..8)

# What the report and the dashboard say where a view's table has not been written yet
MISSING = {
    "probes": "no probe table yet: run `workbench probe RUN_DIR --out RUN_DIR/probes.parquet`",
    "patching": "no patching results yet: run `workbench patch CKPT ... --out RUN_DIR/patch.parquet`",
    "behaviour": "no behaviour table yet: run `workbench eval RUN_DIR --out RUN_DIR/behaviour.parquet`",
}


def seed_value(seed, name: str = "episode seed") -> int:
    """A seed from a control (None: 0), or a WorkbenchError naming the range."""
    return guards.check_int(0 if seed is None else seed, name, 0, guards.SEED_MAX)


def step_value(step) -> int:
    return guards.check_int(step, "checkpoint step", 0, 10**15)


def coef_value(coef) -> float:
    return guards.check_float(0.0 if coef is None else coef, "steering coefficient", -COEF_MAX, COEF_MAX)


def read_table(root: Path, relative_paths: list[str]) -> pd.DataFrame:
    """The named tables under root, concatenated (each checked by `safe_path`); an empty frame for none."""
    if isinstance(relative_paths, str):
        relative_paths = [relative_paths]
    if not isinstance(relative_paths, list | tuple) or not all(isinstance(rel, str) for rel in relative_paths):
        raise PathError(f"{relative_paths!r} is not a list of table paths.")
    frames = [_parquet(*file_key(safe_file(root, rel, MAX_TABLE_BYTES))) for rel in relative_paths]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0] if frames else pd.DataFrame()


@functools.lru_cache(maxsize=64)
def _parquet(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    return pd.read_parquet(path)


# ---------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Run:
    """A run directory as the dashboard sees it: run.json, committed steps and their evaluation metrics."""

    root: Path
    config: dict
    steps: tuple[int, ...]
    metrics: pd.DataFrame = field(compare=False, hash=False)
    refused: tuple[str, ...] = field(default=(), compare=False, hash=False)  # step files not read, and why

    @property
    def arch(self) -> str:
        return self.config["policy"]["arch"]

    @property
    def world(self) -> str | None:
        """None for the workbench's rooms; "minigrid" for an imported run with a MiniGrid env; "unknown" for an
        imported run without an env the workbench can build."""
        return self.config["env"].get("world")

    @property
    def variant(self) -> str:
        """The room variant, or for an imported run its MiniGrid env id (or "no env")."""
        if self.world is not None:
            return self.config["env"].get("env_id", "no env")
        return self.config["env"].get("variant", "trash")

    def distributions(self) -> tuple[str, ...]:
        return DISTRIBUTIONS.get(self.variant, ("train",))

    def tables(self, kind: str) -> list[str]:
        return _tables(self.root, _tree_key(self.root))[kind]

    def table(self, kind: str) -> pd.DataFrame:
        return read_table(self.root, self.tables(kind))


def load_run(root: Path) -> Run:
    """The run as it is now: run.json and every committed step whose step-*.json is a regular file inside the run
    directory (one that leads outside it, through a symlink, or that is a FIFO or device, is left out and named in
    `refused`)."""
    keys, refused = [], []
    for s in list_steps(root):
        try:
            keys.append(file_key(safe_file(root, f"{step_stem(s)}.json", MAX_JSON_BYTES)))
        except PathError as err:
            refused.append(str(err))
    return _load_run(root, file_key(safe_file(root, "run.json", MAX_JSON_BYTES)), tuple(keys), tuple(refused))


@functools.lru_cache(maxsize=8)
def _load_run(root: Path, run_key: tuple, step_keys: tuple, refused: tuple = ()) -> Run:
    config = read_run(root)
    rows = []
    for key in step_keys:
        try:
            row = read_json(Path(key[0]))
            rows.append({**row, "step": guards.check_int(row.get("step"), f"{Path(key[0]).name}: step", 0, 10**15)})
        except (WorkbenchError, RecursionError) as err:  # a damaged step file: its checkpoint is left out, said so
            refused = (*refused, str(err) if isinstance(err, WorkbenchError) else f"{Path(key[0]).name} is too deep")
    metrics = pd.DataFrame(rows) if rows else pd.DataFrame({"step": []})
    for name in metrics.columns:  # figures plot these: a damaged value (text, a list) becomes a gap, not an error
        if name.endswith(("_rate", "_return", "_length", "_per_episode")):
            metrics[name] = pd.to_numeric(metrics[name], errors="coerce")
    return Run(root, config, tuple(r["step"] for r in rows), metrics, refused)


def _tree_key(root: Path) -> tuple:
    """Changes when a parquet file under root is added, removed or rewritten (a stat of each; symlinked folders
    are not followed, as in `find_tables`)."""
    keys = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".parquet"):
                try:
                    keys.append(file_key(Path(folder) / name))
                except (OSError, PathError):
                    continue
    return tuple(keys)


@functools.lru_cache(maxsize=8)
def _tables(root: Path, tree_key: tuple) -> dict[str, list[str]]:
    return find_tables(root)


# ---------------------------------------------------------------------------------------------- policies
def checkpoint_path(run: Run, step: int) -> Path:
    step = step_value(step)
    steps = run.steps if step in run.steps else load_run(run.root).steps  # a run still training adds steps
    if step not in steps:
        raise PathError(f"step {step} is not a checkpoint of this run: choose one of {list(steps)}.")
    safe_file(run.root, "run.json", MAX_JSON_BYTES)  # load_policy reads both beside the weights
    safe_file(run.root, f"{step_stem(step)}.json", MAX_JSON_BYTES)
    return safe_file(run.root, f"{step_stem(step)}.safetensors", MAX_TENSOR_BYTES)


def policy_at(run: Run, step: int):
    return _policy(*file_key(checkpoint_path(run, step)))


@functools.lru_cache(maxsize=16)
def _policy(path: str, mtime_ns: int, size: int):
    return load_policy(path)


# ---------------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One rollout, frame by frame: obs[t] is what the policy saw before action t (the last frame: the terminal
    observation); probs[t], value[t] its outputs there; reward[t] and events[t] the transition into frame t
    (zero and none at t = 0); labels[t] the env's ground truth at frame t (None for the terminal frame)."""

    obs: np.ndarray  # [T+1, 3, H, W] uint8
    probs: np.ndarray  # [T+1, n_actions]
    value: np.ndarray  # [T+1]
    actions: np.ndarray  # [T]
    reward: np.ndarray  # [T+1]
    events: list[list[str]]
    labels: list[dict | None]
    frames: np.ndarray | None = None  # [T+1, 3, H, W] what to show, where it is not obs (MiniGrid: the whole grid)

    def __len__(self) -> int:
        return len(self.obs)


def episode(run: Run, step: int, seed: int = 0, distribution: str = "train") -> Episode:
    seed = seed_value(seed)
    if not isinstance(distribution, str) or distribution not in run.distributions():
        raise PathError(f"distribution {distribution!r} is not one of {list(run.distributions())} for this run.")
    if run.world == "minigrid":
        return _minigrid_episode(file_key(checkpoint_path(run, step)), json.dumps(run.config["env"], sort_keys=True),
                                 int(seed))  # fmt: skip
    if run.world is not None:
        raise PathError("this imported run has no env the workbench can build, so it has no episodes to show.")
    return _episode(file_key(checkpoint_path(run, step)), _env_key(run.config["env"], distribution), int(seed))


def _env_key(env: dict, distribution: str) -> tuple:
    return tuple(sorted({**env, "distribution": distribution}.items()))


@functools.lru_cache(maxsize=32)
@torch.no_grad()
def _episode(ckpt_key: tuple, env_key: tuple, seed: int) -> Episode:
    policy = _policy(*ckpt_key)
    env = BatchEnv(make_config(**dict(env_key)), n_envs=1, seed=seed)
    rng = np.random.default_rng(seed)
    obs, probs, values, actions, rewards, events, labels = [], [], [], [], [0.0], [[]], []
    current = env.state.obs.copy()
    while True:
        logits, value = policy(torch.as_tensor(current))
        obs.append(current[0])
        probs.append(torch.softmax(logits.float(), -1)[0].numpy().astype(np.float64))
        values.append(float(value[0]))
        labels.append(_scalar_labels(env.labels()))
        action = int(sample_actions(logits, generator=rng)[0])
        actions.append(action)
        current, reward, terminated, truncated, info = env.step(np.array([action]))
        rewards.append(float(reward[0]))
        events.append([name for name in EVENTS if info[name][0]])
        if terminated[0] or truncated[0]:
            last = info["terminal_obs"]
            logits, value = policy(torch.as_tensor(last))
            obs.append(last[0])
            probs.append(torch.softmax(logits.float(), -1)[0].numpy().astype(np.float64))
            values.append(float(value[0]))
            labels.append(None)
            break
    return Episode(np.stack(obs), np.stack(probs), np.array(values), np.array(actions), np.array(rewards), events,
                   labels)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _minigrid_episode(ckpt_key: tuple, env_json: str, seed: int) -> Episode:
    ep = minigrid.episode(_policy(*ckpt_key), minigrid.minigrid_config(**json.loads(env_json)), seed)
    return Episode(ep["obs"], ep["probs"], ep["value"], ep["actions"], ep["reward"], ep["events"], ep["labels"],
                   ep["frames"])  # fmt: skip


def _scalar_labels(labels: dict[str, np.ndarray]) -> dict:
    """The per-step scalar labels of env 0 (maps and bookkeeping left out), as plain Python values."""
    out = {}
    for name, value in labels.items():
        if name in SCALAR_LABELS_HIDDEN or value.ndim != 1:
            continue
        item = value[0].item()
        out[name] = round(item, 4) if isinstance(item, float) else item
    return out


def action_names(n: int, world: str | None = None) -> list[str]:
    """Names of a policy's n actions: the workbench rooms' moves, or MiniGrid's actions (world "minigrid")."""
    if world == "minigrid":
        names = minigrid.ACTION_NAMES
    else:
        names = ACTION_NAMES
    return list(names[:n]) + [str(i) for i in range(len(names), n)]


# ---------------------------------------------------------------------------------------------- activations
def hook_names(run: Run, step: int) -> dict[str, tuple[int, ...]]:
    return _hook_shapes(file_key(checkpoint_path(run, step)))


@functools.lru_cache(maxsize=16)
def _hook_shapes(ckpt_key: tuple) -> dict[str, tuple[int, ...]]:
    return hook_shapes(_policy(*ckpt_key))


def activation(run: Run, step: int, obs: np.ndarray, hook: str) -> np.ndarray:
    """The activation of `hook` (batch dim dropped) of checkpoint `step` on one observation [3, H, W]."""
    shapes = hook_names(run, step)
    if not isinstance(hook, str) or hook not in shapes:
        raise PathError(f"{hook!r} is not a hook of this policy: choose one of {', '.join(shapes)}.")
    return _activations(file_key(checkpoint_path(run, step)), np.ascontiguousarray(obs).tobytes(), obs.shape)[hook]


@functools.lru_cache(maxsize=64)
@torch.no_grad()
def _activations(ckpt_key: tuple, obs_bytes: bytes, shape: tuple) -> dict[str, np.ndarray]:
    policy = _policy(*ckpt_key)
    obs = torch.frombuffer(bytearray(obs_bytes), dtype=torch.uint8).reshape(1, *shape)
    _, cache = policy.run_with_cache(obs)
    return {name: cache[name][0].float().numpy() for name in cache.keys()}


# ---------------------------------------------------------------------------------------------- probes
def probe_directions(run: Run, table: str):
    """The directions saved beside a probe table (empty when none are)."""
    table_path = safe_file(run.root, table, MAX_TABLE_BYTES)
    tensors, index = directions_paths(table_path)  # what load_directions reads
    if not (os.path.lexists(tensors) and os.path.lexists(index)):
        return []
    # The companions must lie inside too (symlinks resolved), be regular files and not be huge.
    tensors, index = inside(run.root, tensors, MAX_TENSOR_BYTES), inside(run.root, index, MAX_JSON_BYTES)
    return _directions(str(table_path), file_key(tensors), file_key(index))


@functools.lru_cache(maxsize=8)
def _directions(table_path: str, tensors_key: tuple, index_key: tuple):
    return load_directions(table_path)


def find_direction(directions, step: int, hook: str, label: str, probe: str | None = None):
    """The direction of (step, hook, label), of `probe` where there is one (per_cell and conv1x1 both read maps)."""
    matches = [d for d in directions if d.step == step and d.hook == hook and d.label == label]
    matches.sort(key=lambda d: d.probe != probe)
    return matches[0] if matches else None


# Tables written before info_gain existed: each probe kind's own metric (not comparable across kinds).
LEGACY_METRIC = {"regression": "r2", "binary": "auroc", "multiclass": "balanced_accuracy", "map": "auroc"}


def probe_scores(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, step, hook, label, probe, metric, control) of the headline metric, info_gain (one scale for
    every label kind, the metric `probes.summary` ranks by); a table without it, each kind's legacy metric."""
    if table.empty:
        return table
    fitted = table[table["metric"] != "skipped"]
    if HEADLINE in set(fitted["metric"]):
        return fitted[fitted["metric"] == HEADLINE]
    primary = fitted["kind"].map(LEGACY_METRIC)
    chosen = fitted[(fitted["metric"] == primary) | primary.isna()]
    return chosen if not chosen.empty else fitted


def best_probes(table: pd.DataFrame) -> pd.DataFrame:
    """Per (step, hook, label): the probe `probes.summary` would choose there, the one with the highest validation
    selectivity (`probes.probe.best_by_validation`). A cell with no validation selectivity (a table fitted without
    controls) shows its first probe, so that it is still drawn; a table written before validation scores existed,
    which `probes.summary` refuses, is ranked by test selectivity."""
    scores = probe_scores(table)
    if scores.empty:
        return scores
    one_per_probe = scores.drop_duplicates(["step", "hook", "label", "probe", "metric"])
    cell = ["step", "hook", "label"]
    if "val_selectivity" not in one_per_probe.columns:
        order = one_per_probe.sort_values("selectivity", ascending=False, na_position="last")
        return order.drop_duplicates(cell).reset_index(drop=True)
    chosen = best_by_validation(one_per_probe, by=cell)
    has_choice = pd.MultiIndex.from_frame(one_per_probe[cell]).isin(pd.MultiIndex.from_frame(chosen[cell]))
    parts = [part for part in (chosen, one_per_probe[~has_choice].drop_duplicates(cell)) if not part.empty]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def probe_tables(run: Run, table: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(primary-metric scores, best probe per step x hook x label) of one probe table, cached."""
    return _probe_tables(*file_key(safe_path(run.root, table)))


@functools.lru_cache(maxsize=16)
def _probe_tables(path: str, mtime_ns: int, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = _parquet(path, mtime_ns, size)
    return probe_scores(frame), best_probes(frame)


# ---------------------------------------------------------------------------------------------- steering
def steering_options(run: Run, step: int) -> list[dict]:
    """Vectors the steering view offers for checkpoint `step`: contrast vectors of each factor (computed), the
    binary and regression probe directions of every probe table at that step, and saved vectors in the run
    directory. Values are strings that `steering_vector` parses and checks again."""
    options = [{"label": f"contrast: {factor}", "value": f"contrast:{factor}"} for factor in FACTORS]
    for table in run.tables("probes"):
        try:
            directions = probe_directions(run, table)
        except WorkbenchError:  # refused or damaged: the probe view says why; no vectors offered from it
            continue
        for i, d in enumerate(directions):
            if d.step == int(step) and (d.kind in ("binary", "regression") or d.probe == "conv1x1"):
                options.append({"label": f"probe: {d.label} @ {d.hook} ({d.probe}, {table})",
                                "value": f"probe:{i}:{table}"})  # fmt: skip
    import itertools

    for path in sorted(itertools.islice(run.root.rglob("*.json"), 4 * MAX_FILES)):
        rel = path.relative_to(run.root).as_posix()
        if rel.startswith(".") or path.name.startswith("step-") or path.name.endswith(".directions.json"):
            continue
        try:
            index, _ = _vector_files(run, rel)
            meta = json.loads(index.read_text())
        except (WorkbenchError, OSError, ValueError, RecursionError):
            continue
        if isinstance(meta, dict) and {"hook", "tensors", "shape"} <= set(meta):
            options.append({"label": f"saved: {rel}", "value": f"file:{rel}"})
    return options


def steering_key(run: Run, step: int, spec: str) -> tuple:
    """A hashable key of the vector named by an option value of `steering_options`, validated: factors by name,
    tables and files by `safe_path`."""
    kind, _, rest = str(spec).partition(":")
    ckpt = file_key(checkpoint_path(run, step))
    if kind == "contrast" and rest in FACTORS:
        return ("contrast", ckpt, rest)
    if kind == "probe":
        index, _, table = rest.partition(":")
        directions = probe_directions(run, table)
        if not index.isdigit() or int(index) >= len(directions):
            raise PathError(f"{spec!r} names no probe direction of {table}.")
        return ("probe", ckpt, str(safe_path(run.root, table)), int(index))
    if kind == "file":
        index, tensors = _vector_files(run, rest)
        return ("file", *file_key(index), file_key(tensors))
    raise PathError(f"{spec!r} is not a steering vector offered here.")


def _vector_files(run: Run, rel: str) -> tuple[Path, Path]:
    """(index .json, tensors .safetensors) of a saved steering vector named by either, both checked by `safe_file`:
    inside the run directory (symlinks resolved), regular files, under the size caps."""
    safe_path(run.root, rel)  # the name as given: no absolute paths, no '..'
    index = safe_file(run.root, vector_paths(rel)[1].as_posix(), 1 << 20)
    # the tensors SteeringVector.load(index) reads: beside the index's resolved path, wherever its own link leads
    return index, inside(run.root, vector_paths(index)[0], MAX_TENSOR_BYTES)


@functools.lru_cache(maxsize=64)
def steering_vector(key: tuple):
    """The SteeringVector of a `steering_key`."""
    if key[0] == "contrast":
        return contrast_vector(_policy(*key[1]), key[2], n=128)
    if key[0] == "probe":
        return from_direction(load_directions(key[2])[key[3]], _policy(*key[1]))
    return SteeringVector.load(key[1])


def steered_path(run: Run, step: int, spec: str, coef: float, seed: int = 0) -> np.ndarray:
    """The agent's cells [T+1, 2] over one episode (seed `seed`, the run's env) with the policy steered."""
    key = steering_key(run, step, spec)
    return _steered_path(file_key(checkpoint_path(run, step)), key, coef_value(coef),
                         _env_key(run.config["env"], "train"), seed_value(seed))  # fmt: skip


@functools.lru_cache(maxsize=128)
@torch.no_grad()
def _steered_path(ckpt_key: tuple, key: tuple, coef: float, env_key: tuple, seed: int) -> np.ndarray:
    policy = _policy(*ckpt_key)
    env = BatchEnv(make_config(**dict(env_key)), n_envs=1, seed=seed)
    rng = np.random.default_rng(seed)
    cells = [env.state.agent[0].copy()]
    with steering(policy, steering_vector(key), coef):
        while True:
            logits, _ = policy(torch.as_tensor(env.state.obs))
            action = int(sample_actions(logits, generator=rng)[0])
            landed = np.clip(env.state.agent[0] + MOVES[action], 1, env.config.room_size)
            _, _, terminated, truncated, _ = env.step(np.array([action]))
            cells.append(landed)
            if terminated[0] or truncated[0]:
                break
    return np.stack(cells)


STEERING_EPISODES = 64


def steering_effects(run: Run, step: int, spec: str, coef: float, episodes: int = STEERING_EPISODES) -> dict:
    """Rates over `episodes` episodes steered by coef x vector beside the same episodes unsteered, each with a
    Wilson interval (the shape of `workbench.interventions.steering.steering_effects`; the unsteered rollouts are cached
    once per checkpoint, so moving the coefficient costs one batch of rollouts)."""
    key = steering_key(run, step, spec)
    ckpt = file_key(checkpoint_path(run, step))
    coef = coef_value(coef)
    vector = steering_vector(key)
    metrics = {}
    base, steered = _rollout_rates(ckpt, None, 0.0, episodes), _rollout_rates(ckpt, key, float(coef), episodes)
    for name in base:
        row = {}
        for which, (hits, n) in (("baseline", base[name]), ("steered", steered[name])):
            row[which], row[f"{which}_ci"] = hits / n, list(wilson_interval(hits, n))
        metrics[name] = row
    return {"hook": vector.hook, "vector": vector.name, "coef": float(coef), "episodes": episodes, "metrics": metrics}


@functools.lru_cache(maxsize=256)
def _rollout_rates(ckpt_key: tuple, key: tuple | None, coef: float, episodes: int) -> dict[str, tuple[int, int]]:
    """(hits, episodes) of each rate of `steering.episode_metrics` over a batch of (steered) rollouts."""
    vector = steering_vector(key) if key is not None and coef != 0 else None
    rollouts = steered_rollouts(_policy(*ckpt_key), vector=vector, coef=coef, episodes=episodes)
    out = {}
    for name, values in episode_metrics(rollouts).items():
        if name.endswith("_rate") and name != "deposit_rate":
            out[name] = (int(np.nansum(values > 0)), len(values))
    return out


def prefetch_steering(run: Run, step: int, spec: str, coefs) -> threading.Thread:
    """Compute the steered path and rates for every coefficient of the slider in the background, so that moving
    it is a cache lookup; returns the (started) thread."""

    def work():
        for coef in coefs:
            if STOP.is_set():
                return
            try:
                steered_path(run, step, spec, coef)
                steering_effects(run, step, spec, coef)
            except Exception:  # the view reports errors when it asks for the same thing
                return

    return background(work, "steering-prefetch")


# ---------------------------------------------------------------------------------------------- threads
# ---------------------------------------------------------------------------------------------- background work
STOP = threading.Event()
_THREADS: list[threading.Thread] = []


def background(work, name: str) -> threading.Thread:
    """Run `work` in a daemon thread that `stop_background` (and interpreter exit) waits for: torch must not be
    mid-computation in a thread while the interpreter tears down. Work loops check `STOP` between items."""
    thread = threading.Thread(target=work, name=name, daemon=True)
    _THREADS[:] = [t for t in _THREADS if t.is_alive()] + [thread]
    thread.start()
    return thread


@atexit.register
def stop_background(timeout: float = 30.0) -> None:
    STOP.set()
    for thread in list(_THREADS):
        thread.join(timeout)
    STOP.clear()
