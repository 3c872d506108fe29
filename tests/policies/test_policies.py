"""The policies' hook API, their config round trip, and SB3's PPO training them in place."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache

from workbench.common.errors import ConfigError
from workbench.policies import CNNPolicy, TransformerPolicy, build_policy, hook_shapes

OBS_SHAPE = (3, 18, 18)
N_ACTIONS = 5
ARCHS = ["cnn", "transformer"]


def make_policy(arch: str, **kwargs) -> CNNPolicy | TransformerPolicy:
    torch.manual_seed(0)
    return build_policy({"arch": arch, "obs_shape": list(OBS_SHAPE), "n_actions": N_ACTIONS, **kwargs})


def random_obs(batch: int = 4, shape: tuple[int, ...] = OBS_SHAPE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)


# The documented shapes (without the batch dim) at the default config and 18x18 observations.
CNN_SHAPES = {
    "hook_obs": (3, 18, 18),
    "conv.0.hook_out": (16, 9, 9),
    "conv.1.hook_out": (32, 9, 9),
    "fc.hook_out": (128,),
    "hook_logits": (5,),
    "hook_value": (),
}
POS, D_MODEL, HEADS, D_HEAD, D_MLP = 10, 64, 4, 16, 256
TRANSFORMER_BLOCK_SHAPES = {
    "hook_resid_pre": (POS, D_MODEL),
    "ln1.hook_normalized": (POS, D_MODEL),
    "attn.hook_q": (POS, HEADS, D_HEAD),
    "attn.hook_k": (POS, HEADS, D_HEAD),
    "attn.hook_v": (POS, HEADS, D_HEAD),
    "attn.hook_attn_scores": (HEADS, POS, POS),
    "attn.hook_pattern": (HEADS, POS, POS),
    "attn.hook_z": (POS, HEADS, D_HEAD),
    "hook_attn_out": (POS, D_MODEL),
    "hook_resid_mid": (POS, D_MODEL),
    "ln2.hook_normalized": (POS, D_MODEL),
    "mlp.hook_pre": (POS, D_MLP),
    "mlp.hook_post": (POS, D_MLP),
    "hook_mlp_out": (POS, D_MODEL),
    "hook_resid_post": (POS, D_MODEL),
}
TRANSFORMER_SHAPES = {
    "hook_obs": (3, 18, 18),
    "hook_embed": (POS, D_MODEL),
    "hook_pos_embed": (POS, D_MODEL),
    **{f"blocks.{layer}.{name}": shape for layer in range(2) for name, shape in TRANSFORMER_BLOCK_SHAPES.items()},
    "ln_final.hook_normalized": (POS, D_MODEL),
    "hook_logits": (5,),
    "hook_value": (),
}
DOCUMENTED_SHAPES = {"cnn": CNN_SHAPES, "transformer": TRANSFORMER_SHAPES}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_hook_fires_with_its_documented_shape(arch):
    policy = make_policy(arch)
    assert hook_shapes(policy) == DOCUMENTED_SHAPES[arch]
    assert list(policy.hook_dict) == list(DOCUMENTED_SHAPES[arch])  # nothing undocumented, in forward order


@pytest.mark.parametrize("arch", ARCHS)
def test_run_with_cache_returns_an_activation_cache_and_leaves_outputs_unchanged(arch):
    policy = make_policy(arch)
    obs = random_obs()
    logits, value = policy(obs)
    (cached_logits, cached_value), cache = policy.run_with_cache(obs)
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == set(policy.hook_dict)
    torch.testing.assert_close(cached_logits, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached_value, value, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["hook_logits"], logits.detach(), rtol=0, atol=1e-5)
    assert logits.shape == (4, N_ACTIONS) and value.shape == (4,)


ABLATED_HOOKS = {
    "cnn": ["hook_obs", "conv.0.hook_out", "conv.1.hook_out", "fc.hook_out"],
    "transformer": [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.1.mlp.hook_post",
        "blocks.1.hook_resid_post",
    ],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ablating_a_hook_changes_the_outputs(arch):
    policy = make_policy(arch)
    obs = random_obs()
    logits, value = policy(obs)
    for name in ABLATED_HOOKS[arch]:
        for ablate in (lambda act, hook: torch.zeros_like(act), lambda act, hook: act.zero_()):  # new or in place
            ablated_logits, ablated_value = policy.run_with_hooks(obs, fwd_hooks=[(name, ablate)])
            assert not torch.allclose(ablated_logits, logits, atol=1e-6), name
            assert not torch.allclose(ablated_value, value, atol=1e-6), name
    # run_with_hooks removes its hooks afterwards
    torch.testing.assert_close(policy(obs), (logits, value))


def test_fused_and_explicit_attention_agree():
    policy = make_policy("transformer", n_layers=3)
    obs = random_obs(batch=16)
    fused_logits, fused_value = policy(obs, fused=True)
    explicit_logits, explicit_value = policy(obs, fused=False)
    torch.testing.assert_close(fused_logits, explicit_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused_value, explicit_value, rtol=0, atol=1e-5)
    # and gradients agree too, since PPO trains through the fused path
    grads = []
    for fused in (True, False):
        policy.zero_grad()
        logits, value = policy(obs, fused=fused)
        (logits.sum() + value.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_a_pattern_hook_switches_that_layer_to_the_explicit_path():
    policy = make_policy("transformer")
    seen = []
    policy.run_with_hooks(random_obs(), fwd_hooks=[("blocks.1.attn.hook_pattern", lambda act, hook: seen.append(act))])
    assert len(seen) == 1
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(4, HEADS, POS))  # rows of a softmax
    assert not policy.blocks[1].attn.pattern_is_hooked()  # removed after the run


@pytest.mark.parametrize("arch", ARCHS)
def test_uint8_and_float_observations_give_the_same_output(arch):
    policy = make_policy(arch)
    obs = random_obs()
    as_uint8 = policy(obs)
    as_float = policy(obs.to(torch.float32))
    assert torch.equal(as_uint8[0], as_float[0]) and torch.equal(as_uint8[1], as_float[1])
    _, cache = policy.run_with_cache(obs)
    assert cache["hook_obs"].dtype == torch.float32 and cache["hook_obs"].max() <= 1.0


@pytest.mark.parametrize("arch", ARCHS)
def test_build_policy_round_trips_config_and_state_dict(arch):
    policy = make_policy(arch)
    config = json.loads(json.dumps(policy.config()))  # as it comes back from run.json
    assert config["arch"] == arch
    rebuilt = build_policy(config)
    assert rebuilt.config() == policy.config()
    rebuilt.load_state_dict(policy.state_dict())
    obs = random_obs()
    assert all(torch.equal(a, b) for a, b in zip(policy(obs), rebuilt(obs), strict=True))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"arch": "resnet"}, "unknown policy arch"),
        ({"arch": "cnn", "obs_shape": [3, 18, 18], "n_actions": 5, "width": 3}, "unexpected"),
        ({"arch": "cnn", "n_actions": 5}, "missing"),
        ({"arch": "cnn", "obs_shape": [3, 17, 18], "n_actions": 5}, "even"),
        ({"arch": "cnn", "obs_shape": [3, 18, 18], "n_actions": 5, "channels": [8, 8, 8, 8]}, "1 to 3"),
        ({"arch": "transformer", "obs_shape": [3, 18, 18], "n_actions": 5, "d_model": 30}, "divisible"),
        ({"arch": "transformer", "obs_shape": [3, 18, 18], "n_actions": 5, "n_layers": 8}, "1 to 4"),
        ({"arch": "transformer", "obs_shape": [3, 18, 18], "n_actions": 5, "patch": 10}, "larger than"),
        ({"arch": "transformer", "obs_shape": [3, 18, 18], "n_actions": 0}, "positive int"),
    ],
)
def test_bad_configs_raise_config_errors_that_say_what_is_wrong(config, message):
    with pytest.raises(ConfigError, match=message):
        build_policy(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_other_room_sizes(arch):
    # room_size 5..12 gives 7..14 cells a side; the transformer pads to whole patches
    for cells in (7, 14):
        shape = (3, 2 * cells, 2 * cells)
        policy = build_policy({"arch": arch, "obs_shape": list(shape), "n_actions": N_ACTIONS})
        logits, value = policy(random_obs(shape=shape))
        assert logits.shape == (4, N_ACTIONS) and value.shape == (4,)
    assert make_policy("transformer", patch=3).n_tokens == 10
    assert build_policy({"arch": "transformer", "obs_shape": [3, 28, 28], "n_actions": 5}).n_tokens == 1 + 5 * 5


def test_wrong_observation_shape_is_a_clear_error():
    with pytest.raises(ConfigError, match="obs_shape"):
        make_policy("cnn")(random_obs(shape=(3, 20, 20)))


def test_cnn_is_small():
    assert sum(p.numel() for p in make_policy("cnn").parameters()) < 500_000


class TinyImageEnv(gym.Env):
    """Random uint8 images with the workbench's observation space; reward for action 0."""

    observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
    action_space = gym.spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action == 0), False, self.t >= 10, {}


@pytest.mark.parametrize("arch", ARCHS)
def test_sb3_ppo_trains_the_hooked_module_in_place(arch):
    from stable_baselines3 import PPO

    from workbench.training.sb3_policy import HookedActorCriticPolicy

    env = TinyImageEnv()
    env.action_space.seed(0)
    env.observation_space.seed(0)
    model = PPO(
        HookedActorCriticPolicy,
        env,
        policy_kwargs={"policy_config": {"arch": arch}},
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        device="cpu",
    )
    hooked = model.policy.hooked
    assert hooked.config()["obs_shape"] == list(OBS_SHAPE)  # taken from the env's spaces
    # The optimizer holds exactly the hooked module's parameters, and nothing of SB3's own heads exists.
    optimised = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in hooked.parameters()} == {id(p) for p in model.policy.parameters()}
    before = {name: tensor.clone() for name, tensor in hooked.state_dict().items()}

    largest_input = []
    watch = ("hook_obs", lambda act, hook: largest_input.append(act.max().item()))
    with hooked.hooks(fwd_hooks=[watch]):
        model.learn(64)

    assert model.policy.hooked is hooked
    assert any(not torch.equal(before[name], tensor) for name, tensor in hooked.state_dict().items())
    # Rollouts (uint8) and updates (float32) both reached the module, normalised once: max pixel 255 -> 1.0.
    assert largest_input and max(largest_input) == 1.0
    action, _ = model.predict(env.observation_space.sample())
    assert env.action_space.contains(int(action))


def test_sb3_policy_rejects_mismatched_config():
    from stable_baselines3.common.utils import ConstantSchedule

    from workbench.training.sb3_policy import HookedActorCriticPolicy

    env = TinyImageEnv()
    with pytest.raises(ConfigError, match="n_actions"):
        HookedActorCriticPolicy(
            env.observation_space, env.action_space, ConstantSchedule(1e-3), {"arch": "cnn", "n_actions": 4}
        )
    with pytest.raises(ConfigError, match="twice"):
        HookedActorCriticPolicy(
            env.observation_space, env.action_space, ConstantSchedule(1e-3), {"arch": "cnn"}, normalize_images=True
        )


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_trained_configs_hook_shapes_and_ablation(name):
    """The architectures `workbench train` uses (the transformer with its per-cell conv stem)."""
    from workbench.training.ppo import POLICIES

    policy = make_policy(**POLICIES[name])
    obs = torch.randint(0, 256, (3, *OBS_SHAPE), dtype=torch.uint8)
    shapes = hook_shapes(policy)
    (logits, value), cache = policy.run_with_cache(obs)
    assert set(cache.keys()) == set(shapes)
    for hook, shape in shapes.items():
        assert tuple(cache[hook].shape) == (3, *shape), hook
    first = "stem.hook_out" if name == "transformer" else "conv.0.hook_out"
    assert first in shapes
    ablated, _ = policy.run_with_hooks(obs, fwd_hooks=[(first, lambda act, hook: act * 0)])
    assert not torch.allclose(ablated, logits)


# ---------------------------------------------------------------------------------------------- hook names by role
@pytest.mark.parametrize("arch", ARCHS)
def test_every_hook_has_a_role_and_act_name_gives_it_back(arch):
    from workbench.policies.names import act_name, n_layers, role_of

    policy = make_policy(arch)
    for hook in policy.hook_dict:
        found = role_of(hook, arch)
        assert found is not None, hook
        role, layer = found
        assert act_name(policy, role, layer) == hook
        if layer is not None:  # negative layers count from the end
            assert act_name(policy, role, layer - n_layers(policy)) == hook


def test_roles_name_the_hooks_the_tools_default_to():
    from workbench.policies.names import act_name, with_roles

    cnn, transformer = make_policy("cnn"), make_policy("transformer")
    assert act_name(cnn, "conv", -1) == "conv.1.hook_out" and act_name(cnn, "fc") == "fc.hook_out"
    assert act_name(transformer, "resid_pre", -1) == "blocks.1.hook_resid_pre"
    assert act_name("transformer", "pattern", 0) == "blocks.0.attn.hook_pattern"
    assert with_roles(transformer.hook_dict, "resid_post") == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert with_roles(["features_extractor", "hook_obs"], "obs") == ["hook_obs"]  # outside names have no role


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("cnn", "resid_pre", 0), "unknown cnn hook role"),
        (("cnn", "conv"), "pass a layer"),
        (("cnn", "fc", 0), "leave the layer out"),
        (("cnn", "conv", -1), "needs the policy"),
        (("sb3", "conv", 0), "name its hooks"),
    ],  # fmt: skip
)
def test_bad_roles_are_clear_errors(args, words):
    from workbench.policies.names import act_name

    with pytest.raises(ConfigError, match=words):
        act_name(*args)
    with pytest.raises(ConfigError, match="has 2 layers"):
        act_name(make_policy("cnn"), "conv", -3)


# ---------------------------------------------------------------------------------------------- where it came from
def test_a_loaded_policy_carries_its_checkpoint_and_one_built_in_memory_none(tmp_path):
    from pathlib import Path

    from workbench.policies.base import Checkpoint, checkpoint_of
    from workbench.training.checkpoints import list_steps, load_policy

    run = Path(__file__).resolve().parents[2] / "checkpoints" / "trash-cnn-s0"
    policy = load_policy(run)
    assert isinstance(policy.checkpoint, Checkpoint) and checkpoint_of(policy) is policy.checkpoint
    assert policy.step == list_steps(run)[-1] and policy.run_dir == run and policy.run["env"]["variant"] == "trash"
    assert set(policy.metrics) >= {"success_rate"}
    fresh = make_policy("cnn")
    assert fresh.checkpoint is None and fresh.run is None and fresh.step is None and checkpoint_of(fresh) is None
    assert checkpoint_of(lambda state, cfg, rng: None) is None  # a scripted policy
