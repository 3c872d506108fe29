"""`workbench.hook(model)`: open any policy with the workbench's hook API, without copying or changing it.

    view = workbench.hook(sb3_algorithm)          # or an SB3 policy, or any torch nn.Module
    list(view.hook_dict)                          # module paths: 'features_extractor.cnn.0', 'action_net', ...
    (logits, value), cache = view.run_with_cache(obs)
    cache["mlp_extractor.policy_net.1"]

The view is a TransformerLens `HookedRootModule` with a `HookPoint` on the output of every submodule, named by the
submodule's path (`model.get_submodule(name)` finds it). A submodule returning a tuple, list or dict of tensors
gets one hook per tensor: `<path>.0`, `<path>.1`, `<path>.<key>`. The model is the view's only child, so the view
shares its parameters (same tensors: training one trains the other) and `.to()`, `.eval()` act on the model.

How: while the view runs the model, and only then, each submodule whose HookPoint has something attached (a hook
function, a cache) carries a forward hook that passes its output through that HookPoint; the hooks are removed when
the run ends. So the model is never changed (called directly it computes exactly what it did, with no hook of ours
on it), and a run through the view with nothing attached costs what the model's own forward costs.

For a stable-baselines3 ActorCriticPolicy with discrete actions (or an algorithm holding one) the view follows the
workbench policy contract (`workbench.policies.base`): `view(obs) -> (logits [B, n_actions], value [B])`, with
`hook_obs` (the preprocessed observation), `hook_logits` and `hook_value` beside the module paths, `obs_shape`,
`n_actions` and `config()`, so collection, probes, patching and steering take it as they take our own policies.
Observations are given as the policy's observation space holds them (uint8 images channel-first, as SB3's
VecTransposeImage hands them over); SB3's own preprocessing runs inside, so `hook_obs` is what the network reads:
observations / 255 where SB3 normalises images (`normalize_images=True` and an image space), the raw values as
float32 otherwise (`hook_obs_divisor` says which).

An SB3 policy computes some activations under several names: a Sequential's output is its last layer's
(`features_extractor` is `features_extractor.linear` is `features_extractor.linear.1`), the MLP extractor's tuple
holds the policy and value nets' outputs (`mlp_extractor.0` is `mlp_extractor.policy_net`), `action_net` is
`hook_logits`. The view finds these by identity on its first run and lists each activation once, under one
canonical name (the policy contract's hook, else the shortest module path): `hook_dict`, `workbench hooks`,
caches and datasets use that name. `hook_aliases` maps every other name to it; hook functions attached by an
alias (`run_with_hooks`, `hooks`) still work, at the canonical point.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from workbench.common.compute import device_of
from workbench.common.errors import ConfigError
from workbench.policies.base import FromCheckpoint


def hook(model: Any, example_input: Any = None) -> ModuleView:
    """A hooked view of an SB3 algorithm or policy, or of any nn.Module (see the module docstring).

    example_input: for a plain module, one input to run once so that hooks on tuple- or dict-valued submodule
    outputs (`<path>.0`, ...) exist before the first real run; SB3 policies make their own from the spaces."""
    policy = getattr(model, "policy", None)
    if isinstance(policy, nn.Module) and _is_sb3_policy(policy):  # an SB3 algorithm (PPO, A2C, ...)
        model = policy
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"workbench.hook takes a torch nn.Module, an SB3 policy or an SB3 algorithm, not {type(model).__name__}."
        )
    if isinstance(model, ModuleView):
        return model
    if _is_sb3_policy(model):
        return SB3PolicyView(model)
    return ModuleView(model, example_input)


def _is_sb3_policy(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("observation_space", "action_space", "extract_features", "action_net"))


class ModuleView(FromCheckpoint, HookedRootModule):
    """A HookPoint on every submodule's output of `module` (names = module paths); forward = the module's."""

    def __init__(self, module: nn.Module, example_input: Any = None):
        super().__init__()
        self.model = module
        self._submodules = {name: sub for name, sub in module.named_modules() if name}
        if not self._submodules:
            raise ConfigError(f"{type(module).__name__} has no submodules, so there is nothing to hook.")
        # HookPoints by name; not children, so the model's own names stay as they are. Most outputs are one
        # tensor; a run that meets a tuple or dict replaces the point by one per element (`_through`).
        self._points: dict[str, HookPoint] = {}
        self._owner: dict[str, str] = {}  # point name → the module path whose output it sees
        for name in self._submodules:
            self._add_point(name, name)
        self._setup_points()
        self._discovering = False
        self._seen: dict[str, Tensor] | None = None  # outputs by point name, while discovering
        self.hook_aliases: dict[str, str] = {}  # alias -> canonical name (SB3PolicyView fills it)
        if example_input is not None:
            self._discover(example_input)

    def setup(self) -> None:  # HookedRootModule.setup would set `.name` on every module of the model
        self._setup_points()

    def _setup_points(self) -> None:
        own = {name: m for name, m in self.named_children() if isinstance(m, HookPoint)}
        for name, point in own.items():
            point.name = name
        self.hook_dict = {**own, **self._points}
        aliases = getattr(self, "hook_aliases", {})
        self.mod_dict = {**self.hook_dict, **{a: self.hook_dict[c] for a, c in aliases.items() if c in self.hook_dict}}

    def _add_point(self, name: str, owner: str) -> HookPoint:
        point = self._points[name] = HookPoint()
        point.name, self._owner[name] = name, owner
        return point

    def _discover(self, example_input: Any) -> None:
        """One run with every submodule watched, so that tuple and dict outputs get their per-element hooks."""
        self._discovering = True
        try:
            with torch.no_grad():
                self(*example_input) if isinstance(example_input, tuple) else self(example_input)
        finally:
            self._discovering = False

    def _through(self, name: str, output: Any, owner: str) -> Any:
        if name in self.hook_aliases:  # the same activation as another point, which carries the hooks
            return None
        if isinstance(output, Tensor):
            if self._seen is not None:
                self._seen[name] = output
            point = self._points.get(name)
            if point is None:  # first time this element of a tuple or dict output is seen
                point = self._add_point(name, owner)
                self._setup_points()
            return point(output) if point.has_hooks() else None
        if name in self._points:  # not one tensor after all: hook its parts instead
            del self._points[name], self._owner[name]
            self._setup_points()
        if isinstance(output, tuple | list):
            items = [self._through(f"{name}.{i}", x, owner) for i, x in enumerate(output)]
            if all(new is None for new in items):
                return None
            return type(output)(x if new is None else new for x, new in zip(output, items, strict=True))
        if isinstance(output, dict):
            items = {k: self._through(f"{name}.{k}", x, owner) for k, x in output.items()}
            if all(new is None for new in items.values()):
                return None
            return type(output)({k: x if items[k] is None else items[k] for k, x in output.items()})
        return None  # distributions and other objects carry no hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._discovering and not any(p.has_hooks() for p in self._points.values()):
            return self.model(*args, **kwargs)  # nothing attached: the model's own forward, nothing else
        with self._watching():
            return self.model(*args, **kwargs)

    @contextmanager
    def _watching(self):
        """Forward hooks on the submodules whose HookPoints have something attached (all of them while
        discovering), for the duration of one run: the model carries no hook of ours otherwise, and a run with
        nothing attached costs what the model's own forward costs."""
        if self._discovering:
            watched = set(self._submodules)
        else:
            watched = {self._owner[name] for name, p in self._points.items() if p.has_hooks()}
        handles = [self._submodules[path].register_forward_hook(_forward_hook(self, path)) for path in watched]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_cache(self, *model_args: Any, **kwargs: Any) -> tuple[Any, ActivationCache]:
        """As TransformerLens' run_with_cache, but the cache is an `ActivationCache`, as on TL's own models."""
        output, cache_dict = super().run_with_cache(*model_args, **kwargs)
        return output, ActivationCache(cache_dict, self)


def _forward_hook(view: ModuleView, path: str):
    def fn(module, args, output):
        return view._through(path, output, path)

    return fn


class SB3PolicyView(ModuleView):
    """An SB3 ActorCriticPolicy with discrete actions, under the workbench policy contract (module docstring)."""

    arch = "sb3"

    def __init__(self, policy: nn.Module, spec: dict | None = None):
        from gymnasium import spaces

        if not isinstance(policy.action_space, spaces.Discrete):
            raise ConfigError(
                f"workbench.hook opens SB3 policies with discrete actions; this one has {policy.action_space}. "
                "Hook it as a plain module instead: workbench.hook(policy.mlp_extractor) or similar."
            )
        super().__init__(policy)
        self.hook_obs = HookPoint()
        self.hook_logits = HookPoint()
        self.hook_value = HookPoint()
        self._setup_points()
        self.obs_shape = tuple(int(d) for d in policy.observation_space.shape)
        self.n_actions = int(policy.action_space.n)
        self.spec = spec or {}
        self._seen = {}
        try:
            self._discover(torch.as_tensor(policy.observation_space.sample()[None]).to(device_of(policy)))
            self.hook_aliases = _aliases_by_identity(self._seen, self._owner)
        finally:
            self._seen = None
        for alias in self.hook_aliases:
            self._points.pop(alias, None)
            self._owner.pop(alias, None)
        self._setup_points()

    @property
    def hook_obs_divisor(self) -> float:
        """`hook_obs` is the observations (as float32) divided by this: 255 where SB3 normalises images, else 1."""
        from stable_baselines3.common.preprocessing import is_image_space

        policy = self.model
        return 255.0 if policy.normalize_images and is_image_space(policy.observation_space) else 1.0

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        from stable_baselines3.common.preprocessing import preprocess_obs

        policy = self.model
        if tuple(obs.shape[1:]) != self.obs_shape:
            raise ConfigError(
                f"observations of shape {tuple(obs.shape)} do not fit this policy, built for "
                f"[batch, {', '.join(map(str, self.obs_shape))}] (its observation space)."
            )
        with self._watching():
            x = self.hook_obs(preprocess_obs(obs, policy.observation_space, policy.normalize_images).float())
            if policy.share_features_extractor:
                latent_pi, latent_vf = policy.mlp_extractor(policy.features_extractor(x))
            else:
                latent_pi = policy.mlp_extractor.forward_actor(policy.pi_features_extractor(x))
                latent_vf = policy.mlp_extractor.forward_critic(policy.vf_features_extractor(x))
            logits = self.hook_logits(policy.action_net(latent_pi))
            value = self.hook_value(policy.value_net(latent_vf).squeeze(-1))
        if self._seen is not None:
            self._seen |= {"hook_obs": x, "hook_logits": logits, "hook_value": value}
        return logits, value

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Each tensor once: SB3 registers a shared features extractor under three names, which safetensors (rightly)
        refuses to store three times. `load_state_dict` restores the other names."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for alias in self._aliases():
            state.pop(prefix + alias, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = dict(state_dict)
        for alias, name in self._aliases().items():
            if alias not in state and name in state:
                state[alias] = state[name]
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _aliases(self) -> dict[str, str]:
        """{second name: first name} for every parameter or buffer registered under more than one name."""
        first, aliases = {}, {}
        for name, tensor in [
            *self.named_parameters(remove_duplicate=False),
            *self.named_buffers(remove_duplicate=False),
        ]:
            aliases.update({name: first[id(tensor)]} if id(tensor) in first else {})
            first.setdefault(id(tensor), name)
        return aliases

    def config(self) -> dict[str, Any]:
        """What `workbench.policies.build_policy` needs to rebuild this policy (the import spec, `sb3_import`)."""

        spec = self.spec or policy_spec(self.model)
        return {"arch": self.arch, "obs_shape": list(self.obs_shape), "n_actions": self.n_actions, "sb3": spec}


CONTRACT_HOOKS = ("hook_obs", "hook_logits", "hook_value")


def _aliases_by_identity(seen: dict[str, Tensor], owner: dict[str, str]) -> dict[str, str]:
    """{alias: canonical name} over the outputs of one run: names whose output was the very same tensor object
    are one activation. The canonical name is a policy-contract hook, else a module's own output (not an element
    of a tuple output), else the fewest path components, else the first in execution order."""
    groups: dict[int, list[str]] = {}
    for name, tensor in seen.items():  # execution order
        groups.setdefault(id(tensor), []).append(name)
    aliases = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        rank = {name: (name not in CONTRACT_HOOKS, owner.get(name, name) != name, name.count("."), i)
                for i, name in enumerate(names)}  # fmt: skip
        canonical = min(names, key=rank.__getitem__)
        aliases |= {name: canonical for name in names if name != canonical}
    return aliases


POLICY_CLASSES = ("ActorCriticPolicy", "ActorCriticCnnPolicy")
EXTRACTORS = ("NatureCNN", "FlattenExtractor")
ACTIVATIONS = ("Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid")


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
