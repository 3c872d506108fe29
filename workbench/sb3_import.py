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
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import CheckpointError, ConfigError

POLICY_CLASSES = ("ActorCriticPolicy", "ActorCriticCnnPolicy")
EXTRACTORS = ("NatureCNN", "FlattenExtractor")
ACTIVATIONS = ("Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid")
MAX_MEMBER_BYTES = 2**30  # a larger member of an SB3 zip is not a small policy: refused before reading


# ---------------------------------------------------------------------------------------------- spec ⇄ policy
def policy_spec(policy) -> dict[str, Any]:
    """The JSON spec of a live SB3 ActorCriticPolicy (`build_sb3_policy` rebuilds it with fresh weights)."""
    params = policy._get_constructor_parameters()
    extractor = params["features_extractor_class"].__name__
    activation = params["activation_fn"].__name__
    space = params["observation_space"]
    if extractor not in EXTRACTORS or activation not in ACTIVATIONS:
        raise ConfigError(
            f"this SB3 policy uses {extractor} / {activation}; a config can rebuild {', '.join(EXTRACTORS)} with "
            f"{', '.join(ACTIVATIONS)}. Hooking it in memory works (workbench.hook); saving it as a run does not."
        )
    return {
        "policy_class": type(policy).__name__ if type(policy).__name__ in POLICY_CLASSES else "ActorCriticPolicy",
        "net_arch": params["net_arch"],
        "activation_fn": activation,
        "features_extractor": extractor,
        "features_extractor_kwargs": dict(params["features_extractor_kwargs"] or {}),
        "share_features_extractor": bool(policy.share_features_extractor),
        "normalize_images": bool(params["normalize_images"]),
        "ortho_init": bool(params.get("ortho_init", True)),
        "obs_dtype": str(space.dtype),
        "obs_low": _compact(space.low),
        "obs_high": _compact(space.high),
    }


def _compact(values: np.ndarray) -> float | list:
    values = np.asarray(values)
    return float(values.flat[0]) if (values == values.flat[0]).all() else values.tolist()


def build_sb3_policy(config: dict[str, Any]):
    """A fresh `SB3PolicyView` from a workbench policy config {"arch": "sb3", obs_shape, n_actions, sb3: spec}."""
    from gymnasium import spaces
    from stable_baselines3.common import policies, torch_layers

    from workbench.hooked import SB3PolicyView

    spec = dict(config.get("sb3") or {})
    try:
        shape = tuple(int(d) for d in config["obs_shape"])
        low = np.asarray(spec["obs_low"], dtype=np.float64)
        high = np.asarray(spec["obs_high"], dtype=np.float64)
        dtype = np.dtype(spec["obs_dtype"])
        observation_space = spaces.Box(np.broadcast_to(low, shape).astype(dtype),
                                       np.broadcast_to(high, shape).astype(dtype), shape, dtype)  # fmt: skip
        action_space = spaces.Discrete(int(config["n_actions"]))
        cls = getattr(policies, spec["policy_class"]) if spec["policy_class"] in POLICY_CLASSES else None
        extractor = (
            getattr(torch_layers, spec["features_extractor"]) if spec["features_extractor"] in EXTRACTORS else None
        )
        activation = getattr(torch.nn, spec["activation_fn"]) if spec["activation_fn"] in ACTIVATIONS else None
        if cls is None or extractor is None or activation is None:
            raise ConfigError(f"unsupported SB3 spec {spec}: classes {POLICY_CLASSES}, extractors {EXTRACTORS}.")
        policy = getattr(policies, spec["policy_class"])(
            observation_space,
            action_space,
            lambda _: 0.0,
            net_arch=spec["net_arch"],
            activation_fn=getattr(torch.nn, spec["activation_fn"]),
            features_extractor_class=getattr(torch_layers, spec["features_extractor"]),
            features_extractor_kwargs=spec.get("features_extractor_kwargs") or {},
            share_features_extractor=spec.get("share_features_extractor", True),
            normalize_images=spec.get("normalize_images", True),
            ortho_init=spec.get("ortho_init", True),
        )
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"the SB3 policy spec {spec} cannot be built ({type(err).__name__}: {err}).") from err
    return SB3PolicyView(policy, spec)


# ---------------------------------------------------------------------------------------------- reading a zip
def read_sb3_zip(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(workbench policy config, SB3 state dict, info) from an SB3 zip, without unpickling (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file: pass the .zip that SB3's model.save wrote.")
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(_member(archive, path, "data").decode())
            weights_bytes = _member(archive, path, "policy.pth")
            version = _member(archive, path, "_stable_baselines3_version", required=False).decode().strip()
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"{path} is not a zip archive ({err}): pass the .zip that SB3's model.save wrote."
        ) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: its 'data' member is not JSON ({err}); not an SB3 save.") from err
    try:
        state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refused something: nothing of it was executed
        raise CheckpointError(
            f"{path}: policy.pth holds more than tensors ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Loading it would need full unpickling, which can run arbitrary code, so it was refused. Re-save the "
            "policy's weights from a trusted session: torch.save(model.policy.state_dict(), ...)."
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: policy.pth is not a state dict of tensors.")
    obs_shape, obs_spec = _observation_space(data, path)
    n_actions = _n_actions(data, path)
    spec = {
        "policy_class": _policy_class(data, path),
        **_architecture(state, data, path),
        "normalize_images": bool(_kwargs(data).get("normalize_images", True)),
        **obs_spec,
    }
    config = {"arch": "sb3", "obs_shape": list(obs_shape), "n_actions": n_actions, "sb3": spec}
    info = {"sb3_version": version, "num_timesteps": int(data.get("num_timesteps") or 0), "source": str(path)}
    return config, state, info


def _member(archive: zipfile.ZipFile, path: Path, name: str, required: bool = True) -> bytes:
    try:
        member = archive.getinfo(name)
    except KeyError:
        if not required:
            return b""
        raise CheckpointError(f"{path} has no '{name}' member: it is not a stable-baselines3 save.") from None
    if member.file_size > MAX_MEMBER_BYTES:
        raise CheckpointError(f"{path}: '{name}' is {member.file_size} bytes, too large for a policy; refused.")
    return archive.read(member)


def _observation_space(data: dict, path: Path) -> tuple[tuple[int, ...], dict]:
    space = data.get("observation_space")
    if not isinstance(space, dict) or "Box" not in str(space.get(":type:")):
        raise CheckpointError(f"{path}: the observation space is {_type(space)}; only Box observations import.")
    try:
        shape = tuple(int(d) for d in space["_shape"])
        dtype = str(np.dtype(space["dtype"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the observation space's shape or dtype is unreadable ({err}).") from err
    return shape, {
        "obs_dtype": dtype,
        "obs_low": _bound(space, "low", shape, path),
        "obs_high": _bound(space, "high", shape, path),
    }


def _bound(space: dict, key: str, shape: tuple[int, ...], path: Path) -> float | list:
    """A Box bound from the repr SB3 writes (numpy's): one value throughout (truncated reprs of big image spaces),
    or every value (small spaces, whose repr is whole)."""
    text = str(space.get(f"{key}_repr") or space.get(key))
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
    if int(space.get("start", 0) or 0) != 0:
        raise CheckpointError(f"{path}: Discrete actions starting at {space['start']} are not supported.")
    return int(space["n"])


def _policy_class(data: dict, path: Path) -> str:
    init = str((data.get("policy_class") or {}).get("__init__", ""))
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
    return str(space.get(":type:")) if isinstance(space, dict) else repr(space)


# ---------------------------------------------------------------------------------------------- writing a run
def import_sb3(path: str | Path, out: str | Path, env: str | None = None, obs_kind: str | None = None,
               env_kwargs: dict | None = None) -> Path:  # fmt: skip
    """Read an SB3 zip (never unpickling) and write a workbench run directory with one checkpoint; returns it.

    env         the env it was trained on, if the workbench can build it (a MiniGrid id such as
                'MiniGrid-Empty-5x5-v0'), so that collect, probe, eval, patch and report can rebuild it; without
                it, the run has no env (pass one to `collect` explicitly)
    obs_kind    the observation kind of that env, 'image' or 'rgb' (workbench.minigrid_world); None: whichever
                kind gives the policy's observation space
    env_kwargs  keyword arguments the env was made with (e.g. {"agent_view_size": 9}); stored in the run, so
                every place that rebuilds the env builds the same one

    The env is checked against the policy: its observation space (shape, dtype and bounds) and its number of
    actions must be the policy's, or the import is refused naming both. An SB3 zip does not record which env it was
    trained on, so envs with the same spaces (MiniGrid-Empty-5x5-v0 and MiniGrid-DoorKey-5x5-v0 both give [3, 7, 7]
    uint8 views and 7 actions) cannot be told apart: the env id is taken as given."""
    from workbench.checkpoints import save_step, tensor_spec, versions, write_run

    if env is None and (obs_kind is not None or env_kwargs):
        raise ConfigError("an observation kind or env kwargs were given without an env: pass --env too, e.g. "
                          "--env MiniGrid-Empty-5x5-v0 --obs-kind image -o agent_view_size=9.")  # fmt: skip
    config, state, info = read_sb3_zip(path)
    view = build_sb3_policy(config)
    try:
        view.model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the inferred architecture ({err}).") from err
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty: pass a new folder for the imported run.")
    env_spec = {"world": "unknown"}
    if env is not None:
        from workbench.minigrid_world import matching_config

        spec = config["sb3"]
        cfg = matching_config(env, obs_kind, env_kwargs, config["obs_shape"], spec["obs_dtype"],
                              config["n_actions"], spec["obs_low"], spec["obs_high"])  # fmt: skip
        env_spec = cfg.to_dict()
    weights = view.state_dict()
    write_run(out, {"env": env_spec, "policy": view.config(), "tensors": tensor_spec(weights), "imported": info,
                    "versions": versions()})  # fmt: skip
    save_step(out, info["num_timesteps"], view, {"imported_from": info["source"]})
    return out
