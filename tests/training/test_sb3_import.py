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
from workbench.common.errors import CheckpointError, ConfigError
from workbench.data import collect
from workbench.policies.views import SB3PolicyView, hook
from workbench.training.checkpoints import load_policy
from workbench.training.sb3_import import import_sb3

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
    assert {"hook_obs", "features_extractor.cnn.0", "mlp_extractor.policy_net", "hook_logits",
            "hook_value"} <= set(view.hook_dict)  # fmt: skip
    obs = torch.as_tensor(np.stack([algo.observation_space.sample() for _ in range(6)]))
    (logits, value), cache = view.run_with_cache(obs)
    with torch.no_grad():
        dist = algo.policy.get_distribution(obs)
        values = algo.policy.predict_values(obs)
    assert torch.allclose(torch.log_softmax(logits, -1), dist.distribution.logits, atol=1e-6)
    assert torch.allclose(value, values[:, 0], atol=1e-6)
    assert torch.equal(cache["hook_logits"], logits) and cache["features_extractor"].shape == (6, 64)


def test_minigrid_labels_follow_the_grid_state():
    from workbench.envs.minigrid import MiniGridBatch, minigrid_config

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
    ds = collect(algo, env, 1500, hooks=["features_extractor", "mlp_extractor.policy_net"], seed=0, n_envs=8)
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
    from workbench.interventions.patching import patch_sweep

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
    ds = collect(run, None, 300, hooks=["mlp_extractor.policy_net"], seed=0, n_envs=4)  # the run's env (run.json)
    assert ds.n == 300


def test_import_an_mlp_policy_from_the_cli(tmp_path):
    from stable_baselines3 import PPO
    from typer.testing import CliRunner

    from workbench.cli.main import app

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

    from workbench.cli.main import app

    result = CliRunner().invoke(app, ["bench", "--only", "hook", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["hook"]
    for case in ("sb3_cnn_policy", "mlp"):
        for row in figures[case].values():
            assert row["hooked_ms"] > 0 and row["ratio"] == pytest.approx(row["hooked_ms"] / row["plain_ms"], rel=0.05)


# ---------------------------------------------------------------------------------------------- imported MiniGrid runs
def _image_env(env_id=ENV_ID, **kwargs):
    from minigrid.wrappers import ImgObsWrapper

    return ImgObsWrapper(gym.make(env_id, **kwargs))


def _mlp_algo(normalize_images: bool, env_id=ENV_ID, seed=0, **kwargs):
    """An untrained stock SB3 MlpPolicy on MiniGrid's symbolic view (SB3 makes it channel-first): enough to test
    what the workbench does with its spaces and preprocessing."""
    from stable_baselines3 import PPO

    torch.manual_seed(seed)
    return PPO("MlpPolicy", _image_env(env_id, **kwargs), n_steps=64, batch_size=64, seed=seed, device="cpu",
               policy_kwargs={"net_arch": [16], "normalize_images": normalize_images})  # fmt: skip


def _cli(*args):
    from typer.testing import CliRunner

    from workbench.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(trained, tmp_path_factory):
    """The trained DoorKey policy imported through the CLI, its env made with max_steps=40 (short episodes)."""
    _, path = trained
    run = tmp_path_factory.mktemp("imported") / "run"
    result = _cli("import-sb3", path, "--out", run, "--env", ENV_ID, "-o", "max_steps=40")
    assert result.exit_code == 0, result.output
    assert "taken as given" in result.output  # the zip does not name its env: said, not hidden
    return run


def test_minigrid_datasets_write_to_disk_all_or_nothing(imported, tmp_path, monkeypatch):
    from workbench.common.errors import DatasetError
    from workbench.data import dataset as dataset_module
    from workbench.data import open_dataset

    policy = load_policy(imported)
    assert policy.run["env"] == {"world": "minigrid", "env_id": ENV_ID, "obs": "rgb", "kwargs": {"max_steps": 40}}
    out = tmp_path / "ds"
    ds = collect(policy, None, n_steps=300, n_envs=4, seed=1, out=out, shard_size=128)
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["map_shapes"]["agent_map"] == [5, 5] and spec["obs_shape"] == [3, 56, 56]  # recorded, not derived
    memory = collect(policy, None, n_steps=300, n_envs=4, seed=1)
    reopened = open_dataset(out)
    assert reopened.n == ds.n == 300 and [s.rows for s in reopened._shards] == [128, 128, 44]
    for name in reopened.map_label_names:
        assert np.array_equal(reopened.map_label(name), memory.map_label(name)), name
    agent = reopened.map_label("agent_map")
    rows, cols = reopened.labels["agent_row"].to_numpy(), reopened.labels["agent_col"].to_numpy()
    assert agent.sum((1, 2)).tolist() == [1] * 300 and agent[np.arange(300), rows, cols].all()
    assert torch.equal(reopened.activations("features_extractor"), memory.activations("features_extractor"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left

    # the folder now holds a dataset, and says so; so do a damaged dataset, stray shards and other files
    with pytest.raises(DatasetError, match=r"holds a dataset \(300 rows in 3 shards"):
        collect(policy, None, n_steps=10, n_envs=4, out=out)
    (tmp_path / "json-only").mkdir()
    (tmp_path / "json-only" / "dataset.json").write_text((out / "dataset.json").read_text())
    with pytest.raises(DatasetError, match="shards are missing"):
        collect(policy, None, n_steps=10, n_envs=4, out=tmp_path / "json-only")
    (tmp_path / "shards-only").mkdir()
    (tmp_path / "shards-only" / "shard-00000.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="shards without a dataset.json"):
        collect(policy, None, n_steps=10, n_envs=4, out=tmp_path / "shards-only")

    # a dataset that fails its final check is never committed: the target stays as it was (here: empty)
    (tmp_path / "empty").mkdir()

    def damaged(path, expected, rows):
        raise DatasetError(f"{path}: damaged on purpose")

    monkeypatch.setattr(dataset_module, "_check_shard", damaged)
    with pytest.raises(DatasetError, match="damaged on purpose"):
        collect(policy, None, n_steps=50, n_envs=4, out=tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty", "json-only", "shards-only"]


MINIGRID = {"world": "minigrid", "env_id": ENV_ID, "kwargs": {"max_steps": 30}}


def _sb3_cases(trained):
    algo, _ = trained
    return {
        "normalised": (workbench.hook(algo), {**MINIGRID, "obs": "rgb"}, 255.0),
        "raw": (workbench.hook(_mlp_algo(False)), MINIGRID, 1.0),
    }


@pytest.mark.parametrize("case", ["ours", "normalised", "raw"])
def test_dataset_hook_obs_is_what_the_live_hook_sees(case, trained, tmp_path, monkeypatch):
    from workbench.data import open_dataset
    from workbench.policies import build_policy

    if case == "ours":
        torch.manual_seed(0)
        policy = build_policy({"arch": "cnn", "obs_shape": [3, 14, 14], "n_actions": 5, "channels": [8],
                               "hidden": 16})  # fmt: skip
        env, divisor = {"variant": "trash", "room_size": 5, "max_steps": 30}, 255.0
    else:
        policy, env, divisor = _sb3_cases(trained)[case]
    collect(policy, env, n_steps=120, n_envs=4, out=tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    assert ds.derived == {"hook_obs": divisor}
    obs = ds.observations()
    _, cache = policy.run_with_cache(obs)
    assert torch.allclose(ds.activations("hook_obs"), cache["hook_obs"], atol=1e-6, rtol=0)
    assert ds.activations("hook_obs").max() == obs.max() / divisor  # raw values stay raw: not 255x off
    if case == "raw":
        assert ds.activations("hook_obs").max() >= 5  # MiniGrid's object indices (wall 2, key 5, ...)
        # a policy whose hook_obs is not observations / its divisor gets it stored, still equal to the live hook
        monkeypatch.setattr(type(policy), "hook_obs_divisor", property(lambda self: 7.0))
        stored = collect(policy, env, n_steps=60, n_envs=4, out=tmp_path / "stored")
        assert stored.derived == {} and "hook_obs" in open_dataset(tmp_path / "stored").hook_names
        _, cache = policy.run_with_cache(stored.observations())
        assert torch.allclose(stored.activations("hook_obs"), cache["hook_obs"], atol=1e-3, rtol=0)


def test_replay_derives_hook_obs_for_the_new_policy(tmp_path):
    from workbench.data import replay

    env = {"world": "minigrid", "env_id": ENV_ID, "kwargs": {"max_steps": 30}}
    raw, normalised = workbench.hook(_mlp_algo(False)), workbench.hook(_mlp_algo(True, seed=1))
    ds = collect(raw, env, n_steps=80, n_envs=4)
    again = replay(ds, normalised, out=tmp_path / "replay")
    assert ds.derived == {"hook_obs": 1.0} and again.derived == {"hook_obs": 255.0}
    _, cache = normalised.run_with_cache(again.observations())
    assert torch.allclose(again.activations("hook_obs"), cache["hook_obs"], atol=1e-6, rtol=0)
    assert again.map_shapes == ds.map_shapes == {name: (5, 5) for name in ds.map_label_names}


def test_sb3_views_list_each_activation_once(trained, imported):
    algo, _ = trained
    view = workbench.hook(algo)
    assert view.hook_aliases == {
        "features_extractor.cnn.6": "features_extractor.cnn",  # Flatten, the Sequential's last layer
        "features_extractor.linear": "features_extractor",
        "features_extractor.linear.1": "features_extractor",
        "mlp_extractor.0": "mlp_extractor.policy_net",  # the MLP extractor's tuple holds the nets' outputs
        "mlp_extractor.policy_net.1": "mlp_extractor.policy_net",
        "mlp_extractor.1": "mlp_extractor.value_net",
        "mlp_extractor.value_net.1": "mlp_extractor.value_net",
        "action_net": "hook_logits",
    }
    assert not set(view.hook_aliases) & set(view.hook_dict)
    obs = torch.as_tensor(np.stack([algo.observation_space.sample() for _ in range(5)]))
    _, cache = view.run_with_cache(obs)
    assert torch.equal(cache["features_extractor"], algo.policy.extract_features(obs))  # SB3 preprocesses itself
    # an alias still reaches the same activation: zeroing it by either name gives the same run
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    by_alias, _ = view.run_with_hooks(obs, fwd_hooks=[("mlp_extractor.0", zero)])
    by_name, _ = view.run_with_hooks(obs, fwd_hooks=[("mlp_extractor.policy_net", zero)])
    assert torch.equal(by_alias, by_name) and torch.allclose(by_name, algo.policy.action_net.bias.expand(5, 7))
    with pytest.raises(ConfigError, match="same activation as 'mlp_extractor.policy_net'"):
        collect(view, {"world": "minigrid", "env_id": ENV_ID, "obs": "rgb"}, 10, hooks=["mlp_extractor.0"])
    mlp = workbench.hook(_mlp_algo(False))
    assert mlp.hook_aliases["features_extractor.flatten"] == "features_extractor"
    result = _cli("hooks", imported)
    assert result.exit_code == 0, result.output
    listed = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") == 3]
    assert len(listed) == len(set(listed)) and "mlp_extractor.0" not in listed and "mlp_extractor.policy_net" in listed
    assert "mlp_extractor.0 = mlp_extractor.policy_net" in result.output


def test_minigrid_maps_are_row_col_of_the_grid_and_views_are_x_y():
    from minigrid.core.constants import OBJECT_TO_IDX

    from workbench.envs.minigrid import MiniGridBatch, minigrid_config

    cfg = minigrid_config("MiniGrid-DistShift1-v0", obs="image")  # 9 wide, 7 high: a transpose cannot hide
    assert cfg.grid_shape == (7, 9)
    env = MiniGridBatch(cfg, n_envs=2, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(30):
        labels = env.labels()
        for i, e in enumerate(env.envs):
            base = e.unwrapped
            x, y = base.agent_pos
            assert labels["agent_map"].shape == (2, 7, 9) and labels["agent_map"][i, y, x]
            assert (labels["agent_row"][i], labels["agent_col"][i]) == (y, x)
            lava = np.array(
                [[getattr(base.grid.get(c, r), "type", None) == "lava" for c in range(9)] for r in range(7)]
            )
            assert np.array_equal(labels["lava_map"][i], lava)
            # the symbolic view is [C, x, y] of the egocentric view: the cell ahead of the agent is (V // 2, V - 2)
            fx, fy = base.front_pos
            ahead = base.grid.get(fx, fy)
            index = OBJECT_TO_IDX[ahead.type] if ahead is not None else OBJECT_TO_IDX["empty"]
            assert env.state.obs[i, 0, 3, 5] == index
        env.step(rng.integers(0, 3, size=2))


def test_import_checks_the_policy_against_the_env_it_is_given(trained, tmp_path):
    from workbench.envs.minigrid import check_spaces, minigrid_config

    _, rgb_path = trained
    wide = _mlp_algo(True, env_id="MiniGrid-Empty-5x5-v0", agent_view_size=9)
    wide.save(tmp_path / "wide.zip")
    with pytest.raises(ConfigError, match=r"\[3, 9, 9\].*\[3, 7, 7\].*-o agent_view_size=9 gives exactly"):
        import_sb3(tmp_path / "wide.zip", tmp_path / "refused", env="MiniGrid-Empty-5x5-v0")
    with pytest.raises(ConfigError, match=r"\[3, 56, 56\].*obs 'image' gives \[3, 7, 7\].*--obs-kind rgb gives"):
        import_sb3(rgb_path, tmp_path / "refused", env=ENV_ID, obs_kind="image")
    with pytest.raises(ConfigError, match="cannot be made with kwargs"):
        import_sb3(tmp_path / "wide.zip", tmp_path / "refused", env="MiniGrid-Empty-5x5-v0", env_kwargs={"nope": 1})
    with pytest.raises(ConfigError, match="without an env"):
        import_sb3(tmp_path / "wide.zip", tmp_path / "refused", obs_kind="image")
    assert not (tmp_path / "refused").exists()
    result = _cli("import-sb3", tmp_path / "wide.zip", "--out", tmp_path / "wide", "--env", "MiniGrid-Empty-5x5-v0",
                  "--obs-kind", "image", "-o", "agent_view_size=9")  # fmt: skip
    assert result.exit_code == 0, result.output
    policy = load_policy(tmp_path / "wide")
    assert policy.run["env"]["kwargs"] == {"agent_view_size": 9} and policy.run["env"]["obs"] == "image"
    ds = collect(tmp_path / "wide", None, 40, n_envs=2)  # the env is rebuilt with its kwargs
    assert ds.obs_shape == (3, 9, 9)
    obs = torch.as_tensor(np.stack([wide.observation_space.sample() for _ in range(3)]))
    assert torch.equal(policy(obs)[0], workbench.hook(wide)(obs)[0])
    # spaces are compared in full: shape, dtype, bounds and the number of actions
    cfg = minigrid_config("MiniGrid-Empty-5x5-v0", kwargs={"agent_view_size": 9})
    assert check_spaces(cfg, (3, 9, 9), "uint8", 7, 0.0, 255.0) == []
    assert check_spaces(cfg, (3, 9, 9), "float32", 5, 0.0, 1.0) == [
        "observation dtype float32 vs uint8", "observation high bound 1..1 vs 255", "5 actions vs 7"]  # fmt: skip


def test_eval_plays_episodes_of_an_imported_minigrid_run(imported, tmp_path):
    from workbench.envs.minigrid import minigrid_config

    result = _cli("eval", imported, "--episodes", 6, "--seed", 3, "-o", "max_steps=12", "--json", "--out",
                  tmp_path / "behaviour.parquet")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["env"]["kwargs"] == {"max_steps": 12} and out["episodes"] == 6
    assert out["intervals"].startswith("episode-level")
    rows = {row["metric"]: row for row in out["rows"]}
    assert {"success_rate", "pickup_rate", "door_open_rate", "return", "length"} <= set(rows)
    assert (
        rows["success_rate"]["interval"] == "wilson (episode-level)"
        and rows["return"]["interval"] == "t (episode-level)"
    )
    assert rows["length"]["n"] == 6 and rows["length"]["value"] == out["mean_length"]
    assert rows["success_rate"]["ci_low"] <= rows["success_rate"]["value"] <= rows["success_rate"]["ci_high"]
    # the argmax figures, played again by hand with gymnasium: the same episodes
    policy = load_policy(imported)
    cfg = minigrid_config(ENV_ID, obs="rgb", kwargs={"max_steps": 12})
    from workbench.envs.minigrid import _make

    returns, lengths = [], []
    for i in range(6):
        env = _make(cfg.env_id, cfg.obs, cfg.kwargs)
        obs, _ = env.reset(seed=3 + i)
        total, steps, done = 0.0, 0, False
        while not done:
            logits, _ = policy(torch.as_tensor(obs.transpose(2, 0, 1)[None].copy()))
            obs, reward, terminated, truncated, _ = env.step(int(logits.argmax()))
            total, steps, done = total + reward, steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    assert out["argmax_mean_return"] == pytest.approx(np.mean(returns))
    assert out["argmax_mean_length"] == pytest.approx(np.mean(lengths)) and max(lengths) <= 12
    import pandas as pd

    table = pd.read_parquet(tmp_path / "behaviour.parquet")
    assert set(table["variant"]) == {ENV_ID} and len(table) == len(rows)


def test_minigrid_contrast_pairs_and_patching(imported, tmp_path):
    from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

    from workbench.envs.minigrid import contrast_pairs, minigrid_config
    from workbench.interventions.patching import patch

    cfg = minigrid_config(ENV_ID, obs="image")
    key, door = OBJECT_TO_IDX["key"], OBJECT_TO_IDX["door"]
    pairs = contrast_pairs("key", 6, 0, cfg)
    assert all((c[0] == key).sum() == 1 and (k[0] == key).sum() == 0 for c, k in zip(pairs.clean_obs, pairs.corrupt_obs,
                                                                                      strict=True))  # fmt: skip
    carrying = contrast_pairs("carrying", 6, 0, cfg)
    assert (carrying.clean_obs[:, 0, 3, 6] == key).all()  # held: drawn at the agent's cell, (V // 2, V - 1)
    assert not (carrying.corrupt_obs[:, 0] == key).any()
    doors = contrast_pairs("door", 6, 0, cfg)
    for c, k in zip(doors.clean_obs, doors.corrupt_obs, strict=True):
        assert (c[2][c[0] == door] == STATE_TO_IDX["open"]).all() and (
            k[2][k[0] == door] == STATE_TO_IDX["locked"]
        ).all()
    with pytest.raises(ConfigError, match="needs rooms with a key"):
        contrast_pairs("key", 2, 0, minigrid_config("MiniGrid-Empty-5x5-v0"))
    # patching the whole features vector from the clean run gives the clean run: a normalised effect of exactly 1
    policy = load_policy(imported)
    rgb = contrast_pairs("key", 8, 0, minigrid_config(**policy.run["env"]))
    table = patch(policy, rgb, ["features_extractor"], per="all", n_boot=50)
    effect = table[(table.metric == "normalised_effect") & (table.source == "clean")]
    assert effect.value.tolist() == [pytest.approx(1.0, abs=1e-5)]
    result = _cli("patch", imported, "--factor", "carrying", "--pairs", 8, "--out", tmp_path / "patch.parquet")
    assert result.exit_code == 0, result.output
    import pandas as pd

    written = pd.read_parquet(tmp_path / "patch.parquet")
    assert set(written.hook) == {"features_extractor.cnn.5", "features_extractor", "mlp_extractor.policy_net"}
    assert set(written.factor) == {"carrying"}
    refused = _cli("patch", imported, "--factor", "trash", "--out", tmp_path / "x.parquet")
    assert refused.exit_code != 0 and "Valid: carrying, door, key" in str(refused.exception)


def test_imported_runs_without_an_env_refuse_eval_and_patch_in_one_line(tmp_path):
    from stable_baselines3 import PPO

    from workbench.common.errors import WorkbenchError

    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, device="cpu", seed=0).save(tmp_path / "cartpole.zip")
    import_sb3(tmp_path / "cartpole.zip", tmp_path / "run")
    for args in (
        ["eval", tmp_path / "run"],
        ["patch", tmp_path / "run", "--factor", "key", "--out", tmp_path / "p.pq"],
    ):
        result = _cli(*args)
        assert isinstance(result.exception, WorkbenchError), result.output
        message = str(result.exception)
        assert "\n" not in message and "imported without one" in message and "workbench hooks RUN" in message
    report = _cli("report", tmp_path / "run", "--out", tmp_path / "r.html")
    assert report.exit_code == 0, report.output
    text = (tmp_path / "r.html").read_text()
    assert "Hooks" in text and "imported without an env" in text and "An episode of" not in text


@pytest.mark.slow  # collects to disk, probes every default hook and reports: ~75 s on 2 cores
def test_minigrid_round_trip_import_collect_probe_report(imported, tmp_path):
    """A stock SB3 policy trained here, imported with the CLI, collected to disk and reopened, probed without
    --hooks and reported."""
    import pandas as pd

    from workbench.data import open_dataset

    collect(imported, None, n_steps=300, n_envs=4, out=tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    assert ds.n == 300 and ds.meta["env"]["kwargs"] == {"max_steps": 40} and ds.map_shapes["key_map"] == (5, 5)
    assert (ds.map_label("key_map").sum((1, 2)) == 1 - ds.labels["carrying"].to_numpy()).all()  # in the room or held
    result = _cli("probe", imported, "--steps", 300, "--out", imported / "probes.parquet", "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(imported / "probes.parquet")
    fitted = table[table.metric != "skipped"]
    assert {"carrying", "agent_row"} <= set(fitted.label) and "features_extractor" in set(fitted.hook)
    best = probes.summary(table).set_index("label")
    assert "agent_row" in best.index and np.isfinite(best.value).all()
    report = _cli("report", imported, "--out", tmp_path / "report.html")
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report.html").read_text()
    for heading in ("Hooks", "An episode of step 512", "Activations of step 512", "probes.parquet: step 512"):
        assert heading in text, heading
    assert "no probe table yet" not in text and "mlp_extractor.0, mlp_extractor.policy_net.1" in text
    # the episode it shows: the policy's own observations, the whole grid drawn beside them, events from the state
    from workbench.apps import data

    run = data.load_run(imported)
    ep = data.episode(run, 512, 0)
    assert ep.obs.shape[1:] == (3, 56, 56) and ep.frames.shape[1:] == (3, 40, 40) and len(ep.frames) == len(ep.obs)
    assert len(ep) <= 41 and ep.labels[-1] is None and data.action_names(7, "minigrid")[3] == "pickup"
    for t in range(1, len(ep) - 1):
        picked = "picked up key" in ep.events[t]
        assert picked == (ep.labels[t]["carrying"] == 1 and ep.labels[t - 1]["carrying"] == 0), t
