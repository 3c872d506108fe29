"""Opening policies we did not write: workbench.hook on torch modules and SB3 policies, MiniGrid as a second world,
and importing SB3 zips without unpickling."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import probes
import workbench
from workbench.checkpoints import load_policy
from workbench.datasets import collect
from workbench.errors import CheckpointError, ConfigError
from workbench.hooked import SB3PolicyView, hook
from workbench.sb3_import import import_sb3

minigrid = pytest.importorskip("minigrid")
gym = pytest.importorskip("gymnasium")
ENV_ID = "MiniGrid-DoorKey-5x5-v0"


# ---------------------------------------------------------------------------------------------- any nn.Module
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.split = Split()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        a, b = self.split(self.body(x))
        return self.out(a) + self.out(b)


class Split(nn.Module):
    def forward(self, x):
        return x[:, :4], x[:, 4:]


def test_hook_any_module_shares_weights_and_changes_nothing():
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(5, 4)
    before = model(x)
    view = hook(model, example_input=x)
    assert set(view.hook_dict) == {"body", "body.0", "body.1", "split.0", "split.1", "out"}
    assert all(a is b for a, b in zip(view.parameters(), model.parameters(), strict=True))  # no copy
    out, cache = view.run_with_cache(x)
    assert torch.equal(out, before) and torch.equal(model(x), before)  # the model computes what it did
    assert torch.equal(cache["body.1"], torch.relu(model.body[0](x)))
    assert cache["split.1"].shape == (5, 4) and "split" not in view.hook_dict
    # a hook changes the view's run; the model called directly is untouched
    zeroed = view.run_with_hooks(x, fwd_hooks=[("split.1", lambda t, hook: torch.zeros_like(t))])
    assert torch.allclose(zeroed, model.out(model.body(x)[:, :4]) + model.out.bias)
    assert torch.equal(model(x), before)
    with torch.no_grad():
        model.out.bias += 1  # training the model trains the view: same tensors
    assert torch.equal(view(x), model(x))
    assert not any(m._forward_hooks for m in model.modules())  # no hook of ours outside the view's own runs


def test_hook_refuses_what_it_cannot_open():
    with pytest.raises(ConfigError, match="nn.Module"):
        hook(object())
    with pytest.raises(ConfigError, match="no submodules"):
        hook(nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------- SB3 + MiniGrid
def _env():
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    return ImgObsWrapper(RGBImgPartialObsWrapper(gym.make(ENV_ID)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SB3 PPO with its stock CnnPolicy (NatureCNN), trained on DoorKey-5x5 pixels for a few seconds."""
    from stable_baselines3 import PPO

    torch.manual_seed(0)
    algo = PPO("CnnPolicy", _env(), n_steps=256, batch_size=128, n_epochs=2, seed=0, device="cpu",
               policy_kwargs={"features_extractor_kwargs": {"features_dim": 64}, "net_arch": [32]})  # fmt: skip
    algo.learn(512)
    path = tmp_path_factory.mktemp("sb3") / "ppo_doorkey.zip"
    algo.save(path)
    return algo, path


def test_sb3_view_matches_sb3_outputs(trained):
    algo, _ = trained
    view = workbench.hook(algo)
    assert isinstance(view, SB3PolicyView) and view.model is algo.policy
    assert {"hook_obs", "features_extractor.cnn.0", "mlp_extractor.0", "mlp_extractor.policy_net", "action_net",
            "hook_logits", "hook_value"} <= set(view.hook_dict)  # fmt: skip
    obs = torch.as_tensor(np.stack([algo.observation_space.sample() for _ in range(6)]))
    (logits, value), cache = view.run_with_cache(obs)
    with torch.no_grad():
        dist = algo.policy.get_distribution(obs)
        values = algo.policy.predict_values(obs)
    assert torch.allclose(torch.log_softmax(logits, -1), dist.distribution.logits, atol=1e-6)
    assert torch.allclose(value, values[:, 0], atol=1e-6)
    assert torch.equal(cache["action_net"], logits) and cache["features_extractor"].shape == (6, 64)


def test_minigrid_labels_follow_the_grid_state():
    from workbench.minigrid_world import MiniGridBatch, minigrid_config

    cfg = minigrid_config(ENV_ID, obs="image")
    assert cfg.obs_shape == (3, 7, 7) and cfg.grid_size == 5
    env = MiniGridBatch(cfg, n_envs=3, seed=4)
    rng = np.random.default_rng(0)
    for _ in range(60):
        labels = env.labels()
        for i, e in enumerate(env.envs):
            base = e.unwrapped
            assert (labels["agent_col"][i], labels["agent_row"][i]) == tuple(base.agent_pos)
            assert (
                labels["agent_map"][i].sum() == 1
                and labels["agent_map"][i, labels["agent_row"][i], labels["agent_col"][i]]
            )
            goal = base.grid.get(labels["goal_col"][i], labels["goal_row"][i])
            assert goal is not None and goal.type == "goal"
            assert labels["wall_map"][i].sum() >= 16 and labels["n_doors"][i] == 1
            assert labels["carrying"][i] == (base.carrying is not None)
            door = next(o for o in base.grid.grid if o is not None and o.type == "door")
            assert labels["door_open"][i] == door.is_open and labels["door_locked"][i] == door.is_locked
            assert np.array_equal(env.state.obs[i], e.unwrapped.gen_obs()["image"].transpose(2, 0, 1))
        env.step(rng.integers(0, 7, size=3))


def test_collect_probe_and_patch_an_sb3_policy(trained):
    algo, _ = trained
    view = workbench.hook(algo)
    env = {"world": "minigrid", "env_id": ENV_ID, "obs": "rgb", "kwargs": {"max_steps": 40}}  # ~40 episodes
    ds = collect(algo, env, 1500, hooks=["features_extractor", "mlp_extractor.0"], seed=0, n_envs=8)
    assert ds.n == 1500 and ds.obs_shape == (3, 56, 56) and "agent_map" in ds.map_label_names
    result = probes.fit_probes(ds, ["features_extractor"], ["agent_row", "agent_dir", "carrying"], n_boot=20)
    table = result.table
    acc = table[(table.metric == "accuracy") & (table.control == "baseline")].set_index("label")
    assert (acc.value > acc.control_value + 0.1).all(), acc[["value", "control_value"]]  # above the majority class
    assert table.control_value[table.control == "random_init"].notna().all()
    # contrast pairs: the same states with and without the key; patching the whole extractor restores the clean run
    clean, corrupted = _key_pairs(6)
    (clean_logits, _), cache = view.run_with_cache(clean)
    corrupted_logits, _ = view(corrupted)
    patched, _ = view.run_with_hooks(
        corrupted, fwd_hooks=[("features_extractor", lambda t, hook: cache["features_extractor"])]
    )
    assert torch.allclose(patched, clean_logits, atol=1e-5) and not torch.allclose(corrupted_logits, clean_logits)
    # and the batched patching sweep takes the view as it takes our policies: per cell of the last conv map
    from workbench.patching import patch_sweep

    result = patch_sweep(view, clean, corrupted, "features_extractor.cnn.5", per="cell")
    assert result.logits.shape == (9, 6, 7) and result.sites.shape == (9, 2)
    table = result.table(n_boot=50)
    assert {"clean", "noise"} <= set(table.source) and table.value.notna().all()
    single, _ = view.run_with_hooks(corrupted, fwd_hooks=[("features_extractor.cnn.5", _patch_cell(cache, 1, 2))])
    cell = int(np.flatnonzero((result.sites == [1, 2]).all(1))[0])
    assert torch.allclose(result.logits[cell], single, atol=1e-5)  # one site patched = the same by hand


def _patch_cell(cache, row, col):
    def fn(act, hook):
        act = act.clone()
        act[:, :, row, col] = cache[hook.name][:, :, row, col]
        return act

    return fn


def _key_pairs(n):
    """(clean, corrupted) pixel observations [n, 3, 56, 56]: DoorKey rooms as reset, and the same with the key gone."""
    e, clean, corrupted = _env(), [], []
    for seed in range(n):
        e.reset(seed=seed)
        clean.append(e.observation(e.env.observation(e.unwrapped.gen_obs())))
        grid = e.unwrapped.grid
        key = next(i for i, o in enumerate(grid.grid) if o is not None and o.type == "key")
        grid.set(key % grid.width, key // grid.width, None)
        corrupted.append(e.observation(e.env.observation(e.unwrapped.gen_obs())))
    to_batch = lambda frames: torch.as_tensor(np.stack(frames)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return to_batch(clean), to_batch(corrupted)


# ---------------------------------------------------------------------------------------------- import-sb3
def test_import_sb3_round_trips_the_policy(trained, tmp_path):
    algo, path = trained
    run = import_sb3(path, tmp_path / "run", env=ENV_ID)
    policy = load_policy(run)
    assert policy.step == algo.num_timesteps and policy.run["env"]["env_id"] == ENV_ID
    spec = policy.config()["sb3"]
    assert spec["features_extractor"] == "NatureCNN" and spec["net_arch"] == {"pi": [32], "vf": [32]}
    obs = torch.as_tensor(np.stack([algo.observation_space.sample() for _ in range(4)]))
    ours, theirs = policy(obs), workbench.hook(algo)(obs)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    ds = collect(run, None, 300, hooks=["mlp_extractor.0"], seed=0, n_envs=4)  # the run's own env, from run.json
    assert ds.n == 300


def test_import_an_mlp_policy_from_the_cli(tmp_path):
    from stable_baselines3 import PPO
    from typer.testing import CliRunner

    from workbench.cli import app

    algo = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, device="cpu", seed=0)
    algo.save(tmp_path / "cartpole.zip")
    result = CliRunner().invoke(app, ["import-sb3", str(tmp_path / "cartpole.zip"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    policy = load_policy(tmp_path / "run")
    assert policy.config()["sb3"]["features_extractor"] == "FlattenExtractor"
    assert policy.config()["sb3"]["activation_fn"] == "Tanh"
    obs = torch.randn(3, 4)
    assert torch.equal(policy(obs)[0], workbench.hook(algo)(obs)[0])
    with pytest.raises(ConfigError, match="pass env"):
        collect(policy, None, 10)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling this would create the marker file
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _rewrite(src, dst, **members):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, members.get(item.filename, zin.read(item.filename)))


def test_pickle_payloads_are_refused_and_never_run(trained, tmp_path):
    _, path = trained
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, buffer)
    _rewrite(path, tmp_path / "evil.zip", **{"policy.pth": buffer.getvalue()})
    with pytest.raises(CheckpointError, match="refused"):
        import_sb3(tmp_path / "evil.zip", tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()
    # a payload in the JSON's ":serialized:" fields is never decoded: the import works and nothing runs
    with zipfile.ZipFile(path) as z:
        data = json.loads(z.read("data"))
    data["policy_class"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    _rewrite(path, tmp_path / "evil2.zip", data=json.dumps(data).encode())
    assert load_policy(import_sb3(tmp_path / "evil2.zip", tmp_path / "run2")).n_actions == 7
    assert not marker.exists()


def test_bad_zips_are_clear_errors(trained, tmp_path):
    _, path = trained
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a zip"):
        import_sb3(tmp_path / "junk.zip", tmp_path / "a")
    with pytest.raises(CheckpointError, match="does not exist"):
        import_sb3(tmp_path / "missing.zip", tmp_path / "a")
    with zipfile.ZipFile(tmp_path / "nodata.zip", "w") as z:
        z.writestr("policy.pth", b"")
    with pytest.raises(CheckpointError, match="no 'data' member"):
        import_sb3(tmp_path / "nodata.zip", tmp_path / "a")
    with pytest.raises(ConfigError, match="MiniGrid-DoorKey-5x5-v0"):
        import_sb3(path, tmp_path / "b", env="MiniGrid-DoorKey-5x5-v9")  # the nearest valid id is suggested
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bench_hook_quick_json():
    from typer.testing import CliRunner

    from workbench.cli import app

    result = CliRunner().invoke(app, ["bench", "--only", "hook", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["hook"]
    for case in ("sb3_cnn_policy", "mlp"):
        for row in figures[case].values():
            assert row["hooked_ms"] > 0 and row["ratio"] == pytest.approx(row["hooked_ms"] / row["plain_ms"], rel=0.05)
