"""Checkpoint series on disk: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds::

    run.json                        full config: env, reward schedule, policy arch, PPO hyper-params, seed,
                                    versions, schema version, and the name/shape/dtype of every weight
    step-000012288.safetensors      policy weights at that env-step
    step-000012288.json             step, wall time, evaluation metrics  (written last: the commit marker)
    step-000012288.train.safetensors  optimizer and RNG state for --resume (latest steps only)

Every file is written atomically (temp file, fsync, rename), and a step exists only once its .json exists,
so a run killed at any moment leaves complete checkpoints and, at worst, an orphan file that is ignored.

A run directory is written by one process at a time: `RunLock` (an exclusive flock on `.workbench.lock`, held
for the whole training or compaction; a second writer is refused at once, naming the holder). Every run has a
`run_id` (a uuid) in run.json, in every step's JSON and in the metadata of every file of tensors, and a step
whose id is not its run.json's is refused when read: files of two runs cannot be mixed into one series silently.
Step names have at least nine digits (step 1e9 and later have more). Every file is read only if it is a regular
file under a size cap (`workbench.common.io.read_regular_bytes`), and weights that are NaN or infinite are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import workbench
from workbench.common.errors import CheckpointError, ConfigError
from workbench.common.io import atomic_write_bytes, atomic_write_json, loads_json, read_regular_bytes
from workbench.policies import build_policy
from workbench.policies.base import Checkpoint

SCHEMA_VERSION = 1
# Nine digits at least: step 1e9 and later are written with more (and still found); a name with a padding zero
# too many (step-0000000001) is not one the workbench writes, and is ignored.
STEP_RE = re.compile(r"^step-(\d{9,})\.json$")
FILE_RE = re.compile(r"^step-(\d{9,})(\.train)?\.(safetensors|json)$")
MAX_STEP = 10**15  # env-steps; far beyond any run, and small enough for every float64 and name to hold exactly
MAX_TENSOR_FILE_BYTES = 4 << 30  # a policy's weights (or its optimizer state) are MBs; refuse more before reading
MAX_JSON_FILE_BYTES = 16 << 20  # run.json and step JSON are a few KB
LOCK_NAME = ".workbench.lock"


def step_stem(step: int) -> str:
    return f"step-{int(step):09d}"


def _step_of(match: re.Match | None) -> int | None:
    """The step of a matched step file name, if the name is the one `step_stem` writes."""
    if match is None:
        return None
    number = match.group(1)
    return int(number) if len(number) == 9 or not number.startswith("0") else None


def new_run_id() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive lock on a run directory, held while a process writes it (training, resume, compaction).

    `with RunLock(run_dir):` creates the folder if needed and takes an flock on `run_dir/.workbench.lock`
    without waiting: if another process holds it, a ConfigError names that process (pid, host, since when) and
    what to do. The kernel releases the lock when the holder exits, however it ends (a SIGKILLed training leaves
    no stale lock). The lock file is removed on release; a lock taken on a file that was removed meanwhile is
    retaken on the new one, so two processes never both hold it."""

    def __init__(self, run_dir: str | Path, what: str = "write"):
        self.run_dir, self.what, self.fd, self.created = Path(run_dir), what, None, False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_NAME

    def __enter__(self) -> RunLock:
        import fcntl

        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} exists and is not a folder: pass a run directory for --out.")
        try:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"{self.run_dir} cannot be created ({err.strerror or err}): pass a writable --out."
            ) from None
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as err:
                raise ConfigError(
                    f"{self.run_dir} is not writable ({err.strerror or err}): pass another --out."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"{self.run_dir} is being written by another process ({holder}); two writers would mix their "
                    "checkpoints. Wait for it to finish (or stop it), or pass another --out."
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        else:
            raise ConfigError(f"{self.run_dir}: the run lock could not be taken; try again.")
        self.fd = fd
        record = f"pid {os.getpid()} on {socket.gethostname()}, {self.what} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        return text or "pid unknown"

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: whoever opens it next makes a new one
        except OSError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None
        if self.created:
            try:
                self.run_dir.rmdir()  # made for a writer that failed before writing anything: not left behind
            except OSError:
                pass


def tensor_spec(state_dict: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state_dict.items()}


def versions() -> dict[str, str]:
    import platform

    import numpy
    import stable_baselines3
    import transformer_lens

    return {
        "workbench": workbench.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def write_run(run_dir: Path, run: dict) -> None:
    atomic_write_json(Path(run_dir) / "run.json", {"schema_version": SCHEMA_VERSION, **run})


def save_step(run_dir: Path, step: int, policy: torch.nn.Module, metrics: dict, train_state: dict | None = None,
              run_id: str | None = None):  # fmt: skip
    """Write one checkpoint: weights, then (optionally) training state, then the JSON that commits it. `run_id`
    (run.json's) is stamped into all three."""
    run_dir = Path(run_dir)
    step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise CheckpointError(
            f"step {step} is out of range: a checkpoint's step is an env-step count in 0..{MAX_STEP}."
        )
    stamp = {} if run_id is None else {"run_id": str(run_id)}
    weights = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    atomic_write_bytes(run_dir / f"{step_stem(step)}.safetensors", st_save(weights, stamp or None))
    if train_state is not None:
        tensors, meta = train_state["tensors"], train_state["meta"]
        data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                       {"meta": json.dumps(meta), **stamp})  # fmt: skip
        atomic_write_bytes(run_dir / f"{step_stem(step)}.train.safetensors", data)
    atomic_write_json(run_dir / f"{step_stem(step)}.json", {**metrics, "step": step, **stamp})


# ---------------------------------------------------------------------------------------------- reading
def read_json(path: Path) -> dict:
    """A JSON object from a regular file under MAX_JSON_FILE_BYTES; anything else is one CheckpointError."""
    try:
        data = read_regular_bytes(path, MAX_JSON_FILE_BYTES, "checkpoint file", CheckpointError)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is missing: is this a run directory written by `workbench train`?") from err
    data = loads_json(data, str(path), CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


TEXT_METRICS = ("imported_from", "run_id")  # the step JSON's values that are text; every other one is a number


def read_step(run_dir: Path, step: int, run: dict | None = None) -> dict:
    """A step's JSON (its metrics), checked: `step` is the file's, every metric a finite number, and its run_id
    the run's (run.json's, read unless `run` is given)."""
    run_dir = Path(run_dir)
    path = run_dir / f"{step_stem(step)}.json"
    metrics = read_json(path)
    got = metrics.get("step")
    if type(got) is not int or got != step:
        raise CheckpointError(f"{path}: 'step' is {got!r}, not {step}; the file is damaged or was renamed.")
    for key, value in metrics.items():
        if key in TEXT_METRICS:
            if not isinstance(value, str):
                raise CheckpointError(f"{path}: {key!r} is {value!r}, not text; the file is damaged.")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CheckpointError(f"{path}: {key!r} is {value!r}, not a finite number; the file is damaged.")
    run = read_run(run_dir) if run is None else run
    check_run_id(run, metrics.get("run_id"), path)
    return metrics


def check_run_id(run: dict, got, where: Path) -> None:
    """Refuse a file stamped with another run's id than run.json's (files of two runs mixed in one folder)."""
    want = run.get("run_id")
    if got != want:
        raise CheckpointError(
            f"{where} belongs to run {got or '(no run id)'}, but {where.parent}/run.json is run "
            f"{want or '(no run id)'}: files of two runs are mixed in this folder (two trainings wrote it). Re-train "
            "it under a new --out."
        )


LEGACY_BUTTON_COLOR = "yellow"


def read_run(run_dir: Path) -> dict:
    run = read_json(Path(run_dir) / "run.json")
    version = run.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{run_dir}/run.json has schema_version {version!r}; this workbench reads version {SCHEMA_VERSION}. "
            "Re-train, or use the workbench version that wrote it."
        )
    for key in ("env", "policy", "tensors"):
        if not isinstance(run.get(key), dict):
            raise CheckpointError(f"{run_dir}/run.json lacks the {key!r} section; the file is damaged or not ours.")
    for name, spec in run["tensors"].items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(spec.get("dtype"), str)):  # fmt: skip
            raise CheckpointError(f"{run_dir}/run.json: the spec of tensor {name!r} is {spec!r}, not "
                                  "{'shape': [ints], 'dtype': str}; the file is damaged.")  # fmt: skip
    if not isinstance(run.get("run_id", ""), str):
        raise CheckpointError(f"{run_dir}/run.json: run_id is {run['run_id']!r}, not text; the file is damaged.")
    if "variant" in run["env"] and "button_color" not in run["env"]:
        # Written before the button had looks: it trained (and is tested) with the yellow one.
        run["env"]["button_color"] = LEGACY_BUTTON_COLOR
    return run


def list_steps(run_dir: Path) -> list[int]:
    """Committed checkpoint steps (those whose .json exists), ascending."""
    run_dir = Path(run_dir)
    steps = (_step_of(STEP_RE.match(p.name)) for p in run_dir.glob("step-*.json"))
    return sorted(step for step in steps if step is not None)


def resolve(path: str | Path) -> tuple[Path, int]:
    """A run directory (its latest step) or one step's file (.safetensors or .json) → (run_dir, step)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory or a step-NNNNNNNNN.safetensors file.")
    if path.is_dir():
        steps = list_steps(path)
        if not (path / "run.json").exists():
            raise CheckpointError(f"{path} has no run.json: pass a run directory written by `workbench train`.")
        if not steps:
            raise CheckpointError(f"{path} holds no committed checkpoint (no step-*.json): train first.")
        return path, steps[-1]
    step = _step_of(FILE_RE.match(path.name))
    if step is None:
        raise CheckpointError(
            f"{path} is neither a run directory nor a step-NNNNNNNNN.safetensors checkpoint: pass one of those."
        )
    return path.parent, step


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (a regular file under MAX_TENSOR_FILE_BYTES) without executing anything; any damage
    becomes a CheckpointError."""
    try:
        data = read_regular_bytes(path, MAX_TENSOR_FILE_BYTES, "checkpoint", CheckpointError)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete.") from err
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("its __metadata__ is not an object")
    except (SafetensorError, ValueError, RuntimeError, OSError, AttributeError, RecursionError) as err:
        if data[:1] == b"\x80" or data[:2] == b"PK":
            raise CheckpointError(
                f"{path} is a pickle or zip archive, not safetensors; it was not opened. Checkpoints are never "
                "unpickled: convert an SB3 model with `workbench import-sb3`, or re-train."
            ) from err
        raise CheckpointError(f"{path} is not a valid safetensors file ({err}); it is truncated or damaged.") from err
    return tensors, meta


def check_finite(tensors: dict[str, torch.Tensor], where) -> None:
    """Refuse weights holding NaN or infinity (a diverged or damaged checkpoint): every activation computed from
    them would be NaN, silently."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise CheckpointError(
                    f"{where}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the weights "
                    "are damaged (or training diverged). Use another checkpoint, or re-train."
                )


def validate(tensors: dict[str, torch.Tensor], spec: dict[str, dict], where: Path) -> None:
    missing = sorted(set(spec) - set(tensors))
    extra = sorted(set(tensors) - set(spec))
    if missing or extra:
        raise CheckpointError(
            f"{where} does not match run.json: missing tensors {missing[:5]}, unexpected {extra[:5]}. "
            "It belongs to another architecture or run."
        )
    for name, want in spec.items():
        got = tensors[name]
        if list(got.shape) != list(want["shape"]) or str(got.dtype).removeprefix("torch.") != want["dtype"]:
            raise CheckpointError(
                f"{where}: tensor {name!r} is {str(got.dtype).removeprefix('torch.')}{list(got.shape)}, "
                f"but run.json says {want['dtype']}{want['shape']}. The file belongs to another run or is damaged."
            )


def load_policy(path: str | Path, device: str = "cpu"):
    """Rebuild the policy of a run directory (latest step) or of one step file, validated against run.json.

    Returns the policy in eval mode; its `checkpoint` (a `workbench.policies.base.Checkpoint`) says where it came
    from, and `.run_dir`, `.step`, `.run` (run.json) and `.metrics` read it."""
    run_dir, step = resolve(path)
    run = read_run(run_dir)
    metrics, tensors = read_checkpoint(run_dir, step, run)
    try:
        policy = build_policy(run["policy"])
    except Exception as err:  # a damaged policy section must not surface as a raw traceback
        raise CheckpointError(f"{run_dir}/run.json: the policy section cannot be built ({err}).") from err
    try:
        policy.load_state_dict(tensors)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{run_dir}/run.json: its policy section does not fit the weights of step {step} "
            f"({first[-1][:300] if first else type(err).__name__}); the file is damaged or belongs to another run."
        ) from err
    policy.to(device).eval()
    policy.checkpoint = Checkpoint(run_dir=Path(run_dir), step=int(step), run=run, metrics=metrics)
    return policy


def read_checkpoint(run_dir: Path, step: int, run: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """One step's metrics and weights, every check made: the step JSON (`read_step`: numbers, run id), the
    weights' names, shapes and dtypes against run.json, their run id, and that every value is finite."""
    metrics = read_step(run_dir, step, run)
    path = Path(run_dir) / f"{step_stem(step)}.safetensors"
    tensors, meta = read_tensors(path)
    validate(tensors, run["tensors"], path)
    if "run_id" in meta:
        check_run_id(run, meta["run_id"], path)
    check_finite(tensors, path)
    return metrics, tensors


def check_series(run_dir: str | Path, steps: list[int] | None = None) -> list[int]:
    """Open every checkpoint of a run (or the `steps` given) and check it as `load_policy` would, without
    building a policy: before a long sweep, a damaged older checkpoint then fails in seconds instead of after
    minutes of work. Returns the steps checked."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    steps = list_steps(run_dir) if steps is None else list(steps)
    for step in steps:
        read_checkpoint(run_dir, step, run)
    return steps


def load_train_state(run_dir: Path, step: int, run: dict | None = None) -> dict[str, Any]:
    path = Path(run_dir) / f"{step_stem(step)}.train.safetensors"
    tensors, meta = read_tensors(path)
    if run is not None and "run_id" in meta:
        check_run_id(run, meta["run_id"], path)
    try:
        state = loads_json(meta.get("meta", "{}"), f"the training state of step {step} in {run_dir}", CheckpointError)
    except CheckpointError as err:
        raise CheckpointError(f"{err} Resume from an earlier run, or start a new one.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"training state of step {step} in {run_dir} is damaged (its meta is not an object).")
    return {"tensors": tensors, "meta": state}


def compact_run(run_dir: str | Path, dtype: str = "float16") -> int:
    """Shrink a finished run for shipping: every step's weights stored as `dtype` (floating tensors only; they are
    cast back to the policy's float32 when loaded), run.json's tensor spec updated to match, and the resume state
    (`*.train.safetensors`) removed. Returns the bytes the run now takes. Each file is rewritten atomically, run.json
    last; a run killed half-way is repaired by running this again."""
    run_dir = Path(run_dir)
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype) or not target.is_floating_point:
        raise CheckpointError(f"dtype={dtype!r}: use a floating dtype such as float16 or bfloat16.")
    with RunLock(run_dir, "compacting"):
        run = read_run(run_dir)
        spec = None
        for step in list_steps(run_dir):
            path = run_dir / f"{step_stem(step)}.safetensors"
            tensors, meta = read_tensors(path)
            small = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
            atomic_write_bytes(path, st_save(small, {k: v for k, v in meta.items() if k == "run_id"} or None))
            spec = tensor_spec(small)
        for path in run_dir.glob("*.train.safetensors"):
            path.unlink()
        if spec is not None:
            write_run(run_dir, {k: v for k, v in run.items() if k != "schema_version"} | {"tensors": spec})
    return sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
