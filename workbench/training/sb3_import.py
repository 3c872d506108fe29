"""stable-baselines3 policies in the workbench: a JSON spec that rebuilds one, and `import_sb3`, which reads an SB3
`.zip` without unpickling anything and writes a workbench run directory.

An SB3 zip holds `data` (JSON; objects it could not write as JSON are cloudpickled, base64, under ":serialized:"),
`policy.pth` (the state dict, torch's zip-pickle format), `policy.optimizer.pth`, `pytorch_variables.pth` and two
text files. `import_sb3` reads only:

- `data` as JSON, never decoding a ":serialized:" field: the spaces and the policy class are taken from the
  readable attributes SB3 writes beside them (shape, dtype, bounds, n; the class's name in its `__init__`'s repr);
- `policy.pth` with `torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers only and
  refuses anything else (a payload that would run code is an error, and is not run);

and infers the architecture from the state dict's names and shapes (NatureCNN or flatten features, shared or
separate extractors, the MLP's layer sizes), so the policy is rebuilt from SB3's own classes, loaded strictly and
saved as safetensors. Discrete actions and Box observations, ActorCriticPolicy / ActorCriticCnnPolicy (PPO, A2C).

A zip is untrusted input: every member's declared size is checked against its cap before it is decompressed, and
read with a bounded read (a forged size does not get past it); `data` must be a JSON object nesting at most
MAX_DATA_DEPTH deep; `num_timesteps`, the action count and the observation shape are integers in range; and the
sizes of the policy to build (the action head, the observation, NatureCNN's flattened features) are checked against
the weights' own shapes before anything is allocated. NaN or infinite weights are refused. Nothing is written until
all of that has passed, and the run is written into a temporary sibling folder renamed to `out` at the end, so a
failure leaves no half-written run.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.common.errors import CheckpointError, ConfigError
from workbench.common.io import loads_json
from workbench.envs.minigrid import matching_config
from workbench.policies.views import ACTIVATIONS, EXTRACTORS, POLICY_CLASSES, build_sb3_policy, policy_spec  # noqa: F401
from workbench.training import checkpoints as ckpt

MAX_ZIP_BYTES = 4 << 30  # the zip itself
MAX_MEMBER_BYTES = 1 << 30  # policy.pth: a larger member is not a small policy, refused before decompressing
MAX_DATA_BYTES = 16 << 20  # `data` (JSON; a few KB to a few hundred KB in real saves)
MAX_VERSION_BYTES = 1 << 10  # _stable_baselines3_version
MAX_DATA_DEPTH = 32  # SB3 writes `data` 3 to 5 levels deep
MAX_TIMESTEPS = 10**11  # num_timesteps: far beyond any SB3 run
MAX_ACTIONS = 1 << 16
MAX_OBS_DIMS = 4
MAX_OBS_VALUES = 1 << 24  # values in one observation (an 84x84x4 Atari frame stack is 28,224)


# ---------------------------------------------------------------------------------------------- reading a zip
def read_sb3_zip(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(workbench policy config, SB3 state dict, info) from an SB3 zip, without unpickling (module docstring).
    Everything is validated here; nothing is written."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path} does not exist or is not a file: pass the .zip that SB3's model.save wrote.")
    if info.st_size > MAX_ZIP_BYTES:
        raise CheckpointError(f"{path} is {info.st_size:,} bytes, more than the {MAX_ZIP_BYTES:,} allowed for a "
                              "policy's save; refused.")  # fmt: skip
    try:
        with zipfile.ZipFile(path) as archive:
            data_bytes = _member(archive, path, "data", MAX_DATA_BYTES)
            weights_bytes = _member(archive, path, "policy.pth", MAX_MEMBER_BYTES)
            version = _member(archive, path, "_stable_baselines3_version", MAX_VERSION_BYTES, required=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise CheckpointError(
            f"{path} is not a zip archive or is damaged ({err}): pass the .zip that SB3's model.save wrote."
        ) from err
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err}).") from err
    data = loads_json(data_bytes, f"{path}: its 'data' member", CheckpointError, max_depth=MAX_DATA_DEPTH)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: its 'data' member is a JSON {type(data).__name__}, not an object; not an SB3 "
                              "save.")  # fmt: skip
    num_timesteps = _num_timesteps(data, path)
    try:
        version = version.decode().strip()[:64]
    except UnicodeDecodeError:
        version = "unknown"
    try:
        state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refused something: nothing of it was executed
        raise CheckpointError(
            f"{path}: policy.pth holds more than tensors ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Loading it would need full unpickling, which can run arbitrary code, so it was refused. Re-save the "
            "policy's weights from a trusted session: torch.save(model.policy.state_dict(), ...)."
        ) from err
    del weights_bytes
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):  # fmt: skip
        raise CheckpointError(f"{path}: policy.pth is not a state dict of tensors.")
    ckpt.check_finite(state, f"{path}: policy.pth")
    obs_shape, obs_spec = _observation_space(data, path)
    n_actions = _n_actions(data, path)
    spec = {
        "policy_class": _policy_class(data, path),
        **_architecture(state, data, path),
        "normalize_images": bool(_kwargs(data).get("normalize_images", True)),
        **obs_spec,
    }
    _check_sizes(state, spec, obs_shape, n_actions, path)
    config = {"arch": "sb3", "obs_shape": list(obs_shape), "n_actions": n_actions, "sb3": spec}
    info = {"sb3_version": version, "num_timesteps": num_timesteps, "source": str(path)}
    return config, state, info


def _member(archive: zipfile.ZipFile, path: Path, name: str, cap: int, required: bool = True) -> bytes:
    """A member's bytes: refused before decompressing if its declared size is over `cap`, and read with a bounded
    read, so a member whose header lies about its size is refused too, after at most `cap` bytes."""
    try:
        member = archive.getinfo(name)
    except KeyError:
        if not required:
            return b""
        raise CheckpointError(f"{path} has no '{name}' member: it is not a stable-baselines3 save.") from None
    if member.file_size > cap:
        raise CheckpointError(f"{path}: '{name}' is {member.file_size:,} bytes, more than the {cap:,} allowed; "
                              "refused before decompressing it.")  # fmt: skip
    with archive.open(member) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise CheckpointError(f"{path}: '{name}' decompresses to more than the {cap:,} bytes allowed (its header says "
                              f"{member.file_size:,}); refused.")  # fmt: skip
    return data


def _int_field(value, what: str, path: Path, low: int, high: int) -> int:
    """An integer SB3 writes as a JSON number or as text ("7"): bools, floats and other text are refused."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d{1,20}", value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CheckpointError(f"{path}: {what} is {value!r}; it should be an integer from {low:,} to {high:,}.")
    return value


def _num_timesteps(data: dict, path: Path) -> int:
    value = data.get("num_timesteps")
    return 0 if value is None else _int_field(value, "num_timesteps", path, 0, MAX_TIMESTEPS)


def _check_sizes(state: dict[str, torch.Tensor], spec: dict, obs_shape: tuple[int, ...], n_actions: int,
                 path: Path) -> None:  # fmt: skip
    """The policy built from the spec holds as many values as the weights (checked before building it): its action
    head has `n_actions` outputs, and its first layer takes what the observation gives."""
    head = state.get("action_net.weight")
    if head is None or head.dim() != 2:
        raise CheckpointError(f"{path}: policy.pth has no 2-d action_net.weight; not an actor-critic policy.")
    if head.shape[0] != n_actions:
        raise CheckpointError(f"{path}: the action space says {n_actions} actions, but the action head has "
                              f"{head.shape[0]} outputs; the save is inconsistent.")  # fmt: skip
    prefix = "features_extractor."
    if spec["features_extractor"] == "NatureCNN":
        conv, linear = state.get(f"{prefix}cnn.0.weight"), state.get(f"{prefix}linear.0.weight")
        if conv is None or conv.dim() != 4 or linear is None or linear.dim() != 2 or len(obs_shape) != 3:
            raise CheckpointError(f"{path}: NatureCNN weights need a [C, H, W] observation and 4-d conv, 2-d linear "
                                  "weights; the save is inconsistent.")  # fmt: skip
        if conv.shape[1] != obs_shape[0]:
            raise CheckpointError(f"{path}: the observation has {obs_shape[0]} channels, the first conv takes "
                                  f"{conv.shape[1]}; the save is inconsistent.")  # fmt: skip
        side = [((d - 8) // 4 + 1 - 4) // 2 + 1 - 2 for d in obs_shape[1:]]  # NatureCNN: 8/4, 4/2, 3/1 convs
        flat = 64 * side[0] * side[1] if min(side) > 0 else 0
        if flat != linear.shape[1]:
            raise CheckpointError(f"{path}: a {list(obs_shape)} observation gives NatureCNN {flat} features, but its "
                                  f"linear layer takes {linear.shape[1]}; the save is inconsistent.")  # fmt: skip
    else:
        first = [state[k] for k in _layer_weights(state, "mlp_extractor.policy_net.")][:1] or [head]
        if first[0].dim() != 2 or first[0].shape[1] != math.prod(obs_shape):
            raise CheckpointError(f"{path}: a {list(obs_shape)} observation flattens to {math.prod(obs_shape)} "
                                  f"values, but the first layer takes {list(first[0].shape)[1:]}; the save is "
                                  "inconsistent.")  # fmt: skip


def _observation_space(data: dict, path: Path) -> tuple[tuple[int, ...], dict]:
    space = data.get("observation_space")
    if not isinstance(space, dict) or "Box" not in str(space.get(":type:")):
        raise CheckpointError(f"{path}: the observation space is {_type(space)}; only Box observations import.")
    raw = space.get("_shape")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_OBS_DIMS:
        raise CheckpointError(f"{path}: the observation space's shape is {raw!r}; it should be a list of 1 to "
                              f"{MAX_OBS_DIMS} sizes.")  # fmt: skip
    shape = tuple(_int_field(d, "an observation size", path, 1, MAX_OBS_VALUES) for d in raw)
    if math.prod(shape) > MAX_OBS_VALUES:
        raise CheckpointError(f"{path}: the observation shape {list(shape)} holds {math.prod(shape):,} values, more "
                              f"than the {MAX_OBS_VALUES:,} allowed; refused.")  # fmt: skip
    dtype_name = space.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in ("uint8", "int8", "int16", "int32", "int64", "float16",
                                                             "float32", "float64", "bool"):  # fmt: skip
        raise CheckpointError(f"{path}: the observation space's dtype is {dtype_name!r}; not a numeric dtype.")
    dtype = str(np.dtype(dtype_name))
    return shape, {
        "obs_dtype": dtype,
        "obs_low": _bound(space, "low", shape, path),
        "obs_high": _bound(space, "high", shape, path),
    }


def _bound(space: dict, key: str, shape: tuple[int, ...], path: Path) -> float | list:
    """A Box bound from the repr SB3 writes (numpy's): one value throughout (truncated reprs of big image spaces),
    or every value (small spaces, whose repr is whole)."""
    text = space.get(f"{key}_repr") or space.get(key)
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        raise CheckpointError(f"{path}: the observation space's {key} bound is {text!r:.80}, not numpy's repr.")
    text = str(text)
    numbers = [float(x) for x in re.findall(r"-?(?:inf|\d+\.?\d*(?:e[-+]?\d+)?)", text)]
    if numbers and len(set(numbers)) == 1:
        return numbers[0]
    if "..." not in text and len(numbers) == int(np.prod(shape)):
        return np.asarray(numbers).reshape(shape).tolist()
    raise CheckpointError(
        f"{path}: the observation space's {key} bound cannot be read back from its repr ({text[:80]!r}); "
        "such spaces cannot be rebuilt from the readable part of the save."
    )


def _n_actions(data: dict, path: Path) -> int:
    space = data.get("action_space")
    if not isinstance(space, dict) or "Discrete" not in str(space.get(":type:")):
        raise CheckpointError(f"{path}: the action space is {_type(space)}; only Discrete actions import.")
    start = space.get("start")
    if start is not None and _int_field(start, "the action space's start", path, -(2**31), 2**31 - 1) != 0:
        raise CheckpointError(f"{path}: Discrete actions starting at {start} are not supported.")
    return _int_field(space.get("n"), "the action space's n", path, 1, MAX_ACTIONS)


def _policy_class(data: dict, path: Path) -> str:
    policy_class = data.get("policy_class")
    init = str(policy_class.get("__init__", "")) if isinstance(policy_class, dict) else ""
    match = re.search(r"<function (\w+)\.__init__", init)
    name = match.group(1) if match else None
    if name not in POLICY_CLASSES:
        raise CheckpointError(
            f"{path}: the policy class is {name or 'unknown'}; import supports {', '.join(POLICY_CLASSES)} "
            "(PPO and A2C with MlpPolicy or CnnPolicy)."
        )
    return name


def _kwargs(data: dict) -> dict:
    kwargs = data.get("policy_kwargs") or {}
    return kwargs if isinstance(kwargs, dict) else {}


def _architecture(state: dict[str, torch.Tensor], data: dict, path: Path) -> dict:
    """net_arch, activation, features extractor and sharing, from the state dict's names and shapes."""
    # SB3 names the shared extractor three times (features_extractor, pi_ and vf_features_extractor); separate
    # extractors have their own weights under vf_.
    ours = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("features_extractor.")}
    share = all(torch.equal(v, state.get(f"vf_features_extractor.{k}", v)) for k, v in ours.items())
    prefix = "features_extractor."
    if f"{prefix}cnn.0.weight" in state:
        extractor, extractor_kwargs = "NatureCNN", {"features_dim": int(state[f"{prefix}linear.0.weight"].shape[0])}
    elif not any(k.startswith(prefix) for k in state):
        extractor, extractor_kwargs = "FlattenExtractor", {}
    else:
        names = sorted({k.split(".")[1] for k in state if k.startswith(prefix)})
        raise CheckpointError(f"{path}: a custom features extractor ({names}) cannot be rebuilt; import needs "
                              "NatureCNN or FlattenExtractor.")  # fmt: skip
    net_arch = {side: [int(state[k].shape[0]) for k in _layer_weights(state, f"mlp_extractor.{net}.")]
                for side, net in (("pi", "policy_net"), ("vf", "value_net"))}  # fmt: skip
    activation = "Tanh"  # ActorCriticPolicy's default
    written = str(_kwargs(data).get("activation_fn", ""))
    if written:
        match = re.search(r"\.(\w+)'>", written)
        activation = match.group(1) if match else ""
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"{path}: activation {written!r} is not one of {', '.join(ACTIVATIONS)}.")
    return {"net_arch": net_arch, "activation_fn": activation, "features_extractor": extractor,
            "features_extractor_kwargs": extractor_kwargs, "share_features_extractor": share,
            "ortho_init": True}  # fmt: skip


def _layer_weights(state: dict, prefix: str) -> list[str]:
    keys = [k for k in state if k.startswith(prefix) and k.endswith(".weight")]
    return sorted(keys, key=lambda k: int(k[len(prefix) :].split(".")[0]))


def _type(space) -> str:
    return str(space.get(":type:"))[:80] if isinstance(space, dict) else repr(space)[:80]


# ---------------------------------------------------------------------------------------------- writing a run
def import_sb3(path: str | Path, out: str | Path, env: str | None = None, obs_kind: str | None = None,
               env_kwargs: dict | None = None) -> Path:  # fmt: skip
    """Read an SB3 zip (never unpickling) and write a workbench run directory with one checkpoint; returns it.

    env         the env it was trained on, if the workbench can build it (a MiniGrid id such as
                'MiniGrid-Empty-5x5-v0'), so that collect, probe, eval, patch and report can rebuild it; without
                it, the run has no env (pass one to `collect` explicitly)
    obs_kind    the observation kind of that env, 'image' or 'rgb' (workbench.envs.minigrid); None: whichever
                kind gives the policy's observation space
    env_kwargs  keyword arguments the env was made with (e.g. {"agent_view_size": 9}); stored in the run, so
                every place that rebuilds the env builds the same one

    The env is checked against the policy: its observation space (shape, dtype and bounds) and its number of
    actions must be the policy's, or the import is refused naming both. An SB3 zip does not record which env it was
    trained on, so envs with the same spaces (MiniGrid-Empty-5x5-v0 and MiniGrid-DoorKey-5x5-v0 both give [3, 7, 7]
    uint8 views and 7 actions) cannot be told apart: the env id is taken as given."""
    if env is None and (obs_kind is not None or env_kwargs):
        raise ConfigError("an observation kind or env kwargs were given without an env: pass --env too, e.g. "
                          "--env MiniGrid-Empty-5x5-v0 --obs-kind image -o agent_view_size=9.")  # fmt: skip
    out = Path(out)
    _check_out(out)
    config, state, info = read_sb3_zip(path)  # every check of the zip; nothing written yet
    view = build_sb3_policy(config)
    try:
        view.model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the inferred architecture ({err}).") from err
    env_spec = {"world": "unknown"}
    if env is not None:
        spec = config["sb3"]
        cfg = matching_config(env, obs_kind, env_kwargs, config["obs_shape"], spec["obs_dtype"],
                              config["n_actions"], spec["obs_low"], spec["obs_high"])  # fmt: skip
        env_spec = cfg.to_dict()
    weights = view.state_dict()
    # Written whole into a temporary sibling, renamed to `out` at the end: a failure leaves nothing half-written.
    _check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"{out.parent} cannot be created ({err.strerror or err}): pass a writable --out."
        ) from None
    run_id = ckpt.new_run_id()
    staging = out.with_name(f".{out.name}.import-{run_id[:12]}.tmp")
    try:
        ckpt.write_run(staging, {"env": env_spec, "policy": view.config(), "tensors": ckpt.tensor_spec(weights),
                                 "imported": info, "versions": ckpt.versions(), "run_id": run_id})  # fmt: skip
        # ckpt.save_step, looked up when called: a test makes it fail to check that nothing is left half-written
        ckpt.save_step(staging, info["num_timesteps"], view, {"imported_from": info["source"]}, run_id=run_id)
        if out.is_dir():
            out.rmdir()  # empty (checked above); rename needs the name free or an empty folder
        os.rename(staging, out)
    except OSError as err:
        raise CheckpointError(f"{out} cannot be written ({err.strerror or err}): pass a writable, new --out.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder: pass a new folder for the imported run.")
    if out.is_dir() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty: pass a new folder for the imported run.")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"{out}: the folder {folder} is not writable; pass a new folder you can write.")


def no_env_message(command: str, infos: list[dict]) -> str:
    """One line for a command that needs an env the workbench can build, on an imported run that has none. `infos`:
    one {"run", "env"} per run given (runs in MiniGrid or the workbench's rooms are left out of the line)."""
    runs = ", ".join(str(info["run"]) for info in infos if (info["env"] or {}).get("world") not in (None, "minigrid"))
    return (f"{command} needs the env the policy acts in, and {runs} was imported without one: import it again "
            "with --env (a MiniGrid id, with -o for its kwargs) to use eval, patch and the report's episode. Without "
            "an env, these work: workbench hooks RUN, workbench report RUN (hooks, and any probe or patching table "
            "under the run), and in Python collect(RUN, env, ...) with an env you pass.")  # fmt: skip
