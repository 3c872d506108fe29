"""Activation datasets: round trips, determinism, streaming, outcome labels against a hand computation, labels against
pixels, replay, bad input, and partial or damaged datasets that must not open."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.common.errors import ConfigError, DatasetError
from workbench.data import collect, open_dataset, replay, storage
from workbench.envs import make_config
from workbench.envs.render import COLORS
from workbench.policies import build_policy
from workbench.training import checkpoints as ckpt

# A 5x5 room with one trash and the shaped schedule: random policies earn rewards often enough to test returns.
ENV = {"variant": "trash", "room_size": 5, "n_trash": 1, "schedule": "shaped", "max_steps": 30}
ARGS = {"n_steps": 1500, "n_envs": 16, "seed": 3}


def small_cnn(seed: int = 0, room: int = 5):
    torch.manual_seed(seed)
    side = 2 * (room + 2)
    return build_policy({"arch": "cnn", "obs_shape": [3, side, side], "n_actions": 5, "channels": [8, 8], "hidden": 32})


@pytest.fixture(scope="module")
def policy():
    return small_cnn()


@pytest.fixture(scope="module")
def ds(policy):
    return collect(policy, ENV, **ARGS)


def assert_same(a, b):
    pd.testing.assert_frame_equal(a.labels, b.labels)
    assert a.hook_names == b.hook_names and a.map_label_names == b.map_label_names
    for hook in a.hook_names:
        assert torch.equal(a.activations(hook), b.activations(hook)), hook
    for name in a.map_label_names:
        assert np.array_equal(a.map_label(name), b.map_label(name)), name
    assert torch.equal(a.observations(), b.observations())


def test_shapes_and_columns(ds, policy):
    assert ds.n == len(ds.labels) == ARGS["n_steps"] and ds.path is None
    assert list(ds.labels.index) == list(range(ds.n))
    assert ds.hook_names[0] == "hook_obs" and ds.hook_shapes["conv.1.hook_out"] == (8, 7, 7)
    for hook in ds.hook_names:
        acts = ds.activations(hook)
        assert acts.dtype == torch.float32 and tuple(acts.shape) == (ds.n, *ds.hook_shapes[hook])
    assert ds.observations().dtype == torch.uint8 and tuple(ds.observations().shape) == (ds.n, 3, 14, 14)
    assert ds.map_label_names == ["trash_map", "bin_map", "button_map", "goal_map", "decoy_map"]
    assert ds.map_label("trash_map").dtype == bool and ds.map_label("trash_map").shape == (ds.n, 7, 7)
    for column in ("episode_id", "step", "carrying", "reward", "event_picked", "reward_available", "action",
                   "value_pred", "reward_next", "return_to_go", "value_target", "reward_within_k"):  # fmt: skip
        assert column in ds.labels, column
    assert np.array_equal(ds.episode_ids(), ds.labels["episode_id"].to_numpy())
    assert ds.meta["policy"]["config"] == policy.config() and ds.meta["env"] == make_config(**ENV).to_dict()
    assert ds.meta["seed"] == 3 and ds.meta["n_envs"] == 16 and ds.meta["dtype"] == "float16"


def test_round_trip_streams_several_shards_equal_to_memory(ds, policy, tmp_path):
    out = tmp_path / "ds"
    on_disk = collect(policy, ENV, **ARGS, out=out, shard_size=400)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"] + [
        f"shard-{i:05d}.{ext}" for i in range(4) for ext in ("parquet", "safetensors")
    ]
    assert [shard.rows for shard in on_disk._shards] == [400, 400, 400, 300]
    assert_same(on_disk, ds)
    reopened = open_dataset(out)
    assert reopened.path == out and reopened.meta == on_disk.meta
    assert_same(reopened, ds)


def test_large_rows_make_smaller_shards(ds, policy, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SHARD_BYTES", 50_000)  # a shard's tensors stay under it: ~20 rows here
    capped = collect(policy, ENV, **ARGS, out=tmp_path / "capped")
    assert len(capped._shards) > 50 and max(shard.rows for shard in capped._shards) <= 20
    assert_same(capped, ds)


def test_transformer_hooks_round_trip(tmp_path):
    torch.manual_seed(0)
    tiny = build_policy({"arch": "transformer", "obs_shape": [3, 14, 14], "n_actions": 5, "d_model": 16,
                         "n_heads": 2, "n_layers": 1, "d_mlp": 32, "stem": 4})  # fmt: skip
    stored = collect(tiny, ENV, n_steps=200, n_envs=8, out=tmp_path / "tf", shard_size=64)
    with torch.no_grad():
        _, cache = tiny.run_with_cache(stored.observations())
    assert "blocks.0.attn.hook_pattern" in stored.hook_names
    for hook in stored.hook_names:
        torch.testing.assert_close(stored.activations(hook), cache[hook], atol=2e-2, rtol=1e-2)


def test_same_seed_same_dataset_other_seed_differs(ds, policy):
    assert_same(collect(policy, ENV, **ARGS), ds)
    other = collect(policy, ENV, **{**ARGS, "seed": 4})
    assert not other.labels.equals(ds.labels)


def test_episodes_are_contiguous_and_steps_consistent(ds):
    labels = ds.labels
    ids = labels["episode_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    assert len(starts) == len(np.unique(ids))  # each episode is one block of rows
    for lo, hi in zip(starts, np.r_[starts[1:], len(ids)], strict=True):
        episode = labels.iloc[lo:hi]
        assert list(episode["step"]) == list(range(hi - lo)) and hi - lo <= ENV["max_steps"]
        # The reward label of a row is the reward_next of the row before it.
        assert np.array_equal(episode["reward"].to_numpy()[1:], episode["reward_next"].to_numpy()[:-1])
        assert episode["reward"].iloc[0] == 0


def hand_outcomes(rewards: list[float], gamma: float, k: int):
    n = len(rewards)
    to_go = [sum(rewards[t:]) for t in range(n)]
    discounted = [sum(gamma**j * r for j, r in enumerate(rewards[t:])) for t in range(n)]
    soon = [any(r != 0 for r in rewards[t : t + k]) for t in range(n)]
    return to_go, discounted, soon


def test_returns_match_a_hand_computation(ds):
    labels = ds.labels
    rewarded = labels.groupby("episode_id")["reward_next"].sum() > 0
    assert rewarded.sum() >= 5  # the fixture must exercise real returns
    last_episode = labels["episode_id"].iloc[-1]  # possibly cut at n_steps: its tail is not in the rows
    for episode_id in rewarded[rewarded].index[:20]:
        if episode_id == last_episode:
            continue
        episode = labels[labels["episode_id"] == episode_id]
        to_go, discounted, soon = hand_outcomes(list(episode["reward_next"].astype(float)), 0.99, 5)
        np.testing.assert_allclose(episode["return_to_go"], to_go, rtol=1e-6)
        np.testing.assert_allclose(episode["value_target"], discounted, rtol=1e-5)
        assert list(episode["reward_within_k"]) == soon


def test_gamma_and_reward_k_are_used(policy):
    short = collect(policy, ENV, **ARGS, gamma=0.5, reward_k=1)
    np.testing.assert_array_equal(short.labels["reward_within_k"], short.labels["reward_next"] != 0)
    episode = short.labels[short.labels["episode_id"] == short.labels["episode_id"].iloc[0]]
    _, discounted, _ = hand_outcomes(list(episode["reward_next"].astype(float)), 0.5, 1)
    np.testing.assert_allclose(episode["value_target"], discounted, rtol=1e-5)


def test_labels_agree_with_the_pixels_and_the_policy(ds, policy):
    labels, obs = ds.labels, ds.observations().numpy()
    n = np.arange(ds.n)
    r, c = 2 * labels["agent_row"].to_numpy(), 2 * labels["agent_col"].to_numpy()
    assert (obs[n, :, r, c] == COLORS["agent"]).all()  # the agent's top-left pixel is white
    carried = (obs[n, :, r + 1, c] == COLORS["trash"]).all(-1)  # its bottom-left pixel shows carried trash
    assert np.array_equal(carried, labels["carrying"].to_numpy()) and carried.any()
    in_room = labels["trash_remaining"].to_numpy() - labels["carrying"].to_numpy()
    assert np.array_equal(ds.map_label("trash_map").sum((1, 2)), in_room)
    assert (ds.map_label("bin_map").sum((1, 2)) == 1).all() and not ds.map_label("goal_map").any()
    assert labels.loc[labels["event_picked"], "carrying"].all()
    # Derived and stored activations agree with a fresh forward of the same observations.
    assert torch.equal(ds.activations("hook_obs"), ds.observations() / 255.0)
    with torch.no_grad():
        (logits, value), cache = policy.run_with_cache(ds.observations())
    torch.testing.assert_close(ds.activations("fc.hook_out"), cache["fc.hook_out"], atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(ds.activations("hook_value"), value, atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(labels["value_pred"], value.numpy(), atol=1e-5)


def test_storage_dtypes_and_hook_subsets(ds, policy):
    exact = collect(policy, ENV, **ARGS, hooks=["conv.1.hook_out", "hook_logits"], storage_dtype="float32")
    assert exact.hook_names == ["conv.1.hook_out", "hook_logits"]
    pd.testing.assert_frame_equal(exact.labels, ds.labels)  # the hooks stored do not change the rollout
    with torch.no_grad():
        _, cache = policy.run_with_cache(exact.observations())
    torch.testing.assert_close(exact.activations("hook_logits"), cache["hook_logits"], atol=1e-5, rtol=1e-5)
    bf16 = collect(policy, ENV, **ARGS, hooks=["fc.hook_out"], storage_dtype="bfloat16")
    torch.testing.assert_close(bf16.activations("fc.hook_out"), cache["fc.hook_out"], atol=5e-2, rtol=1e-2)


def test_deterministic_actions_are_the_argmax(policy):
    greedy = collect(policy, ENV, n_steps=200, n_envs=8, deterministic=True)
    with torch.no_grad():
        logits, _ = policy(greedy.observations())
    assert np.array_equal(greedy.labels["action"].to_numpy(), logits.argmax(-1).numpy())


def test_replay_same_weights_reproduce_other_weights_differ(ds, policy, tmp_path):
    same = replay(ds, policy, batch_size=256)
    for hook in ds.hook_names:
        torch.testing.assert_close(same.activations(hook), ds.activations(hook), atol=2e-2, rtol=1e-2)
    assert same.labels is ds.labels and torch.equal(same.observations(), ds.observations())
    control = replay(ds, small_cnn(seed=1), hooks=["fc.hook_out"], out=tmp_path / "control")
    assert not torch.allclose(control.activations("fc.hook_out"), ds.activations("fc.hook_out"), atol=0.1)
    assert control.meta["replay_of"]["policy"] == ds.meta["policy"] and control.hook_names == ["fc.hook_out"]
    reopened = open_dataset(tmp_path / "control")  # on disk a replay is a complete dataset
    pd.testing.assert_frame_equal(reopened.labels, ds.labels)
    assert np.array_equal(reopened.map_label("trash_map"), ds.map_label("trash_map"))
    assert torch.equal(reopened.activations("fc.hook_out"), control.activations("fc.hook_out"))
    back = replay(reopened, policy, hooks=["fc.hook_out"])  # in memory, borrowing the on-disk observations
    torch.testing.assert_close(back.activations("fc.hook_out"), ds.activations("fc.hook_out"), atol=2e-2, rtol=1e-2)
    assert torch.equal(back.observations(), ds.observations())
    with pytest.raises(ConfigError, match="room_size 6"):
        replay(ds, small_cnn(room=6))


def test_policy_from_a_checkpoint_and_its_training_env(policy, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(**ENV)
    spec = ckpt.tensor_spec(policy.state_dict())
    ckpt.write_run(run_dir, {"env": cfg.to_dict(), "policy": policy.config(), "tensors": spec})
    ckpt.save_step(run_dir, 0, policy, {})
    from_path = collect(str(run_dir), None, n_steps=100, n_envs=4)
    assert from_path.meta["env"] == cfg.to_dict()
    assert from_path.meta["policy"]["run_dir"] == str(run_dir) and from_path.meta["policy"]["step"] == 0


def test_bad_input_errors(ds, policy, tmp_path):
    with pytest.raises(ConfigError, match=r"Did you mean 'fc.hook_out'.*Valid: .*conv.0.hook_out"):
        collect(policy, ENV, 10, hooks=["fc.hook_ot"])
    for bad in ({"n_steps": 0}, {"n_steps": 10, "n_envs": 0}, {"n_steps": 10, "shard_size": 0},
                {"n_steps": 10, "gamma": 1.5}, {"n_steps": 10, "reward_k": 0}):  # fmt: skip
        with pytest.raises(ConfigError, match="use"):
            collect(policy, ENV, **bad)
    with pytest.raises(ConfigError, match="bfloat16"):
        collect(policy, ENV, 10, storage_dtype="int8")
    with pytest.raises(ConfigError, match=r"room_size 5.*use room_size=5"):
        collect(policy, "trash", 10)
    with pytest.raises(ConfigError, match="pass env"):
        collect(policy, None, 10)
    with pytest.raises(ConfigError, match="workbench policy, an SB3 actor-critic"):
        collect(object(), ENV, 10)
    with pytest.raises(ConfigError, match="Did you mean 'trash_map'"):
        ds.map_label("trash")
    with pytest.raises(ConfigError, match="Did you mean 'hook_value'"):
        ds.activations("hook_valu")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        collect(policy, ENV, 10, out=tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_failed_collection_leaves_nothing(policy, tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt  # as if interrupted after the first shards were written

    with pytest.raises(KeyboardInterrupt):
        collect(policy, ENV, **ARGS, out=tmp_path / "new", shard_size=50, progress=stop)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyboardInterrupt):
        collect(policy, ENV, **ARGS, out=tmp_path / "empty", shard_size=50, progress=stop)
    assert list((tmp_path / "empty").iterdir()) == []


def test_partial_or_damaged_datasets_do_not_open(policy, tmp_path):
    def fresh(name):
        out = tmp_path / name
        collect(policy, ENV, n_steps=300, n_envs=8, out=out, shard_size=100)
        return out

    killed = fresh("killed")
    (killed / "dataset.json").unlink()  # a collection killed before its commit marker
    with pytest.raises(DatasetError, match="did not finish"):
        open_dataset(killed)
    garbage = fresh("garbage")
    (garbage / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="damaged"):
        open_dataset(garbage)
    foreign = fresh("foreign")
    (foreign / "dataset.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DatasetError, match="not an activation dataset"):
        open_dataset(foreign)
    empty = fresh("empty")
    spec = json.loads((empty / "dataset.json").read_text())
    (empty / "dataset.json").write_text(json.dumps({**spec, "n": 0, "shards": []}))
    with pytest.raises(DatasetError, match="empty dataset"):
        open_dataset(empty)
    missing = fresh("missing")
    (missing / "shard-00001.parquet").unlink()
    with pytest.raises(DatasetError, match="missing"):
        open_dataset(missing)
    truncated = fresh("truncated")
    data = (truncated / "shard-00002.safetensors").read_bytes()
    (truncated / "shard-00002.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="shard-00002.safetensors"):
        open_dataset(truncated)
    bad_labels = fresh("bad_labels")
    (bad_labels / "shard-00000.parquet").write_bytes(b"PAR1 nonsense")
    with pytest.raises(DatasetError, match="parquet"):
        open_dataset(bad_labels)
    with pytest.raises(DatasetError, match="not a dataset folder"):
        open_dataset(tmp_path / "nowhere")


def test_atomic_direct_write_round_trips_unaligned_sizes(tmp_path):
    from workbench.common.io import atomic_write_bytes

    for size in (0, 100, 4096, 3 * 4096 + 7):
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        path = atomic_write_bytes(tmp_path / f"x{size}.bin", data, direct=True)
        assert path.read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
