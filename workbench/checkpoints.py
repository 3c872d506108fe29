"""Checkpoint series on disk: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds::

    run.json                        full config: env, reward schedule, policy arch, PPO hyper-params, seed,
                                    versions, schema version, and the name/shape/dtype of every weight
    step-000012288.safetensors      policy weights at that env-step
    step-000012288.json             step, wall time, evaluation metrics  (written last: the commit marker)
    step-000012288.train.safetensors  optimizer and RNG state for --resume (latest steps only)

Every file is written atomically (temp file, fsync, rename), and a step exists only once its .json exists,
so a run killed at any moment leaves complete checkpoints and, at worst, an orphan file that is ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from workbench.errors import CheckpointError
from workbench.io import atomic_write_bytes, atomic_write_json

SCHEMA_VERSION = 1
STEP_RE = re.compile(r"^step-(\d{9})\.json$")


def step_stem(step: int) -> str:
    return f"step-{int(step):09d}"


def tensor_spec(state_dict: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state_dict.items()}


def versions() -> dict[str, str]:
    import platform

    import numpy
    import stable_baselines3
    import transformer_lens

    import workbench

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


def save_step(run_dir: Path, step: int, policy: torch.nn.Module, metrics: dict, train_state: dict | None = None):
    """Write one checkpoint: weights, then (optionally) training state, then the JSON that commits it."""
    run_dir = Path(run_dir)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    atomic_write_bytes(run_dir / f"{step_stem(step)}.safetensors", st_save(weights))
    if train_state is not None:
        tensors, meta = train_state["tensors"], train_state["meta"]
        data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, {"meta": json.dumps(meta)})
        atomic_write_bytes(run_dir / f"{step_stem(step)}.train.safetensors", data)
    atomic_write_json(run_dir / f"{step_stem(step)}.json", {"step": int(step), **metrics})


# ---------------------------------------------------------------------------------------------- reading
def read_json(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is missing: is this a run directory written by `workbench train`?") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as text ({err}); the file is damaged: re-create it.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): the file is damaged.") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


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
    if "variant" in run["env"] and "button_color" not in run["env"]:
        # Written before the button had looks: it trained (and is tested) with the yellow one.
        run["env"]["button_color"] = LEGACY_BUTTON_COLOR
    return run


def list_steps(run_dir: Path) -> list[int]:
    """Committed checkpoint steps (those whose .json exists), ascending."""
    run_dir = Path(run_dir)
    return sorted(int(m.group(1)) for p in run_dir.glob("step-*.json") if (m := STEP_RE.match(p.name)))


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
    match = re.match(r"^step-(\d{9})(\.train)?\.(safetensors|json)$", path.name)
    if not match:
        raise CheckpointError(
            f"{path} is neither a run directory nor a step-NNNNNNNNN.safetensors checkpoint: pass one of those."
        )
    return path.parent, int(match.group(1))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file without executing anything; any damage becomes a CheckpointError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete.") from err
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        if data[:1] == b"\x80" or data[:2] == b"PK":
            raise CheckpointError(
                f"{path} is a pickle or zip archive, not safetensors; it was not opened. Checkpoints are never "
                "unpickled: convert an SB3 model with `workbench import-sb3`, or re-train."
            ) from err
        raise CheckpointError(f"{path} is not a valid safetensors file ({err}); it is truncated or damaged.") from err
    return tensors, meta


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

    Returns the policy in eval mode with `.run_dir`, `.step`, `.run` (run.json) and `.metrics` attached."""
    from workbench.policies import build_policy

    run_dir, step = resolve(path)
    run = read_run(run_dir)
    metrics = read_json(run_dir / f"{step_stem(step)}.json")
    tensors, _ = read_tensors(run_dir / f"{step_stem(step)}.safetensors")
    validate(tensors, run["tensors"], run_dir / f"{step_stem(step)}.safetensors")
    try:
        policy = build_policy(run["policy"])
    except Exception as err:  # a damaged policy section must not surface as a raw traceback
        raise CheckpointError(f"{run_dir}/run.json: the policy section cannot be built ({err}).") from err
    policy.load_state_dict(tensors)
    policy.to(device).eval()
    policy.run_dir, policy.step, policy.run, policy.metrics = run_dir, step, run, metrics
    return policy


def load_train_state(run_dir: Path, step: int) -> dict[str, Any]:
    tensors, meta = read_tensors(Path(run_dir) / f"{step_stem(step)}.train.safetensors")
    try:
        return {"tensors": tensors, "meta": json.loads(meta.get("meta", "{}"))}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"training state of step {step} in {run_dir} is damaged ({err}).") from err


def compact_run(run_dir: str | Path, dtype: str = "float16") -> int:
    """Shrink a finished run for shipping: every step's weights stored as `dtype` (floating tensors only; they are
    cast back to the policy's float32 when loaded), run.json's tensor spec updated to match, and the resume state
    (`*.train.safetensors`) removed. Returns the bytes the run now takes. Each file is rewritten atomically, run.json
    last; a run killed half-way is repaired by running this again."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype) or not target.is_floating_point:
        raise CheckpointError(f"dtype={dtype!r}: use a floating dtype such as float16 or bfloat16.")
    spec = None
    for step in list_steps(run_dir):
        path = run_dir / f"{step_stem(step)}.safetensors"
        tensors, _ = read_tensors(path)
        small = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
        atomic_write_bytes(path, st_save(small))
        spec = tensor_spec(small)
    for path in run_dir.glob("*.train.safetensors"):
        path.unlink()
    if spec is not None:
        write_run(run_dir, {k: v for k, v in run.items() if k != "schema_version"} | {"tensors": spec})
    return sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
