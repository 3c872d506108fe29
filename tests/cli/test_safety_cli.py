"""Every bad input is one clear line and exit status 2, refused before any work, and nothing is overwritten: output
paths (a run's own files, directories, devices, unwritable folders), numeric and key=value options, memory
estimated before large allocations, the dashboard's companion files, callbacks and Host header, and the CLI's
top-level handling of the workbench's errors and of OSErrors. The hostile fixtures are made here, in tmp_path,
from a copy of a bundled run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import parsers
from workbench.cli.main import app
from workbench.common import guards
from workbench.common.errors import ResourceError, WorkbenchError

ROOT = Path(__file__).parents[2]
BUNDLED = ROOT / "checkpoints" / "trash-cnn-s0"
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A copy of a bundled run (never the bundled files themselves)."""
    if not (BUNDLED / "run.json").is_file():
        pytest.skip("the bundled checkpoints/trash-cnn-s0 is missing")
    return Path(shutil.copytree(BUNDLED, tmp_path_factory.mktemp("safety") / "run"))


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def last_step(run: Path) -> Path:
    return sorted(run.glob("step-*.safetensors"))[-1]


def refused(args: list[str], *words: str):
    """Invoke the CLI in-process: exit status 2, exactly one line on stderr holding `words`, no traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- 1. output paths
OUTPUT_CASES = {
    "eval onto a checkpoint": lambda r, t: ["eval", r, "--episodes", "2", "--out", last_step(r)],
    "report onto run.json": lambda r, t: ["report", last_step(r), "--out", r / "run.json"],
    "probe onto a step json": lambda r, t: ["probe", r, "--out", r / "step-000000000.json"],
    "patch onto a checkpoint": lambda r, t: ["patch", r, "--factor", "trash", "--out", last_step(r)],
    "render onto the lock": lambda r, t: ["render", "--out", r / ".workbench.lock"],
    "steer --save onto a checkpoint": lambda r, t: ["steer", r, "--vector", "trash", "--save", r / "step-000000000"],
    "train into run.json": lambda r, t: ["train", "--out", r / "run.json", "--steps", "64"],
    "train into a step name": lambda r, t: ["train", "--out", r / "step-000000007.json", "--steps", "64"],
    "import-sb3 onto a checkpoint": lambda r, t: ["import-sb3", t / "m.zip", "--out", r / "step-000000000.safetensors"],
    "a link to run.json": lambda r, t: ["eval", r, "--episodes", "2", "--out", _link(t / "l.parquet", r / "run.json")],
}  # fmt: skip


def _link(link: Path, target: Path) -> Path:
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_output_into_a_runs_own_files_is_refused_and_nothing_is_touched(run, tmp_path, case):
    before = snapshot(run)
    line = refused(OUTPUT_CASES[case](run, tmp_path), "one of the run's own files")
    assert str(run) in line
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(before)  # no new file, no temporary left


def test_output_that_is_a_directory_device_or_under_a_file_is_refused(run, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("keep")
    refused(["eval", run, "--episodes", "2", "--out", folder], "is a directory")
    refused(["report", run, "--out", folder], "is a directory")
    refused(["patch", run, "--factor", "trash", "--out", folder], "is a directory")
    refused(["render", "--out", folder], "is a directory")
    refused(["render", "--out", note / "strip.png"], "which is a file, not a folder")
    refused(["train", "--out", note, "--steps", "64"], "is a file")
    refused(["demo", "--out", note], "is a file")
    if Path("/dev/null").exists():
        refused(["render", "--out", "/dev/null"], "not a regular file")
    assert note.read_text() == "keep" and not any(folder.iterdir())


def test_probe_refuses_a_companion_path_before_collecting(run, tmp_path):
    """The directions are written beside the table: a directory in their place is refused up front, not after the
    sweep (which used to leave orphan directions behind)."""
    (tmp_path / "p.directions.json").mkdir()
    refused(["probe", run, "--out", tmp_path / "p.parquet", "--steps", "64"], "p.directions.json", "is a directory")
    assert not (tmp_path / "p.parquet").exists() and not (tmp_path / "p.directions.safetensors").exists()


def test_unwritable_output_folder_is_refused(run, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: there the refusal of the OS is simulated
        locked.chmod(0o500)
    else:

        def deny(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(locked))

        monkeypatch.setattr(guards.tempfile, "TemporaryFile", deny)
    try:
        for args in (
            ["render", "--out", locked / "x.png"],
            ["eval", run, "--out", locked / "b.parquet"],
            ["train", "--out", locked / "run", "--steps", "64"],
            ["report", run, "--out", locked / "r.html"],
        ):
            refused(args, str(locked), "cannot be written", "Permission denied")
    finally:
        locked.chmod(0o700)
    assert not any(locked.iterdir())


# ---------------------------------------------------------------------------------------------- 2. numeric options
NUMERIC_CASES = [
    (["train", "--out", "{t}/x", "--checkpoints", "1e12"], ["--checkpoints", "1e12", "2 to 1,000"]),
    (["train", "--out", "{t}/x", "--seed", "-1"], ["--seed", "-1", "0 to 4,294,967,295"]),
    (["train", "--out", "{t}/x", "--seeds", "0,-1"], ["--seeds", "-1"]),
    (["train", "--out", "{t}/x", "--steps", "0"], ["--steps", "steps=0"]),
    (["render", "--steps", "-1"], ["--steps", "-1", "0 to 1,000"]),
    (["render", "--steps", "abc"], ["--steps", "steps=abc", "not a number"]),
    (["render", "--seed", "1.5"], ["--seed", "not a whole number"]),
    (["eval", "{r}", "--episodes", "0"], ["--episodes", "episodes=0", "1 to 10,000,000", "at least 1 episode"]),
    (["eval", "{r}", "--episodes", "1e8"], ["--episodes", "1e8"]),
    (["choice-test", "scripted:button", "--episodes", "-3"], ["--episodes", "-3"]),
    (["probe", "{r}", "--out", "{t}/p.parquet", "--steps", "-5"], ["--steps", "-5"]),
    (["patch", "{r}", "--factor", "trash", "--out", "{t}/p.parquet", "--pairs", "1e30"], ["--pairs", "1e30"]),
    (["steer", "{r}", "--vector", "trash", "--coef", "nan"], ["--coef", "coef=nan", "not finite"]),
    (["steer", "{r}", "--vector", "trash", "--coef", "1e308"], ["--coef", "1e308"]),
    (["steer", "{r}", "--vector", "trash", "--n-random", "-1"], ["--n-random", "n_random=-1"]),
    (["dashboard", "{r}", "--port", "-1"], ["--port", "-1", "1 to 65,535"]),
    (["dashboard", "{r}", "--port", "70000"], ["--port", "70000", "1 to 65,535"]),
    (["render", "-o", "room_size=null"], ["room_size=null", "not a value"]),
    (["render", "-o", "room_size=true"], ["room_size=true", "whole number"]),
    (["render", "-o", "trash_prob=NaN"], ["trash_prob=NaN"]),
    (["render", "-o", "mirror=3"], ["mirror=3", "true or false"]),
    (["eval", "{r}", "-o", "max_steps=1e9"], ["max_steps=1e9", "1 to 10,000"]),
    (["eval", "{r}", "-o", "max_steps=1000000000"], ["max_steps=1000000000", "1 to 10,000"]),
    (["probe", "{r}", "--out", "{t}/p.parquet", "--labels", ","], ["--labels", "names nothing"]),
    (["probe", "{r}", "--out", "{t}/p.parquet", "--hooks", " , "], ["--hooks", "names nothing"]),
    (["patch", "{r}", "--factor", "trash", "--out", "{t}/p.parquet", "--hooks", ","], ["--hooks", "names nothing"]),
    (["steer", "{r}", "--vector", "p.parquet#carrying@abc"], ["--vector", "'abc'", "whole numbers"]),
    (["steer", "{r}", "--vector", "p.parquet#carrying@-1"], ["--vector", "'-1'"]),
    (["steer", "{r}", "--vector", "p.parquet#"], ["--vector", "PROBES.parquet#LABEL"]),
    (["steer", "{r}", "--vector", "trash-at:3"], ["trash-at:ROW,COL"]),
    (["train", "--out", "{t}/x", "--ppo", "n_envs=true"], ["--ppo n_envs=true", "whole number"]),
    (["train", "--out", "{t}/x", "--ppo", "n_envs=1.5"], ["--ppo n_envs=1.5", "whole number"]),
    (["train", "--out", "{t}/x", "--ppo", "learning_rate=abc"], ["--ppo learning_rate=abc", "number"]),
    (["train", "--out", "{t}/x", "--ppo", "gamma=null"], ["gamma=null", "not a value"]),
    (["train", "--out", "{t}/x", "--ppo", "clip_range=[1]"], ["clip_range=[1]"]),
    (["train", "--out", "{t}/x", "--ppo", "n_steps"], ["not key=value"]),
]


@pytest.mark.parametrize("args, words", NUMERIC_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in NUMERIC_CASES])
def test_bad_option_values_are_one_line_naming_option_value_and_range(run, tmp_path, args, words):
    before = snapshot(run)
    refused([a.format(r=run, t=tmp_path) for a in args], *words)
    assert snapshot(run) == before and not (tmp_path / "x").exists()


@pytest.mark.parametrize("ppo", ["learning_rate=-1", "gamma=5", "clip_range=-1", "n_envs=0"])
def test_ppo_values_out_of_range_are_refused_by_the_config_check(tmp_path, ppo):
    """Types are checked where --ppo is parsed; ranges by train's config check, as one line too."""
    refused(["train", "--out", tmp_path / "x", "--steps", "64", "--quiet", "--ppo", ppo], ppo.split("=")[0])
    assert not (tmp_path / "x" / "run.json").exists()


def test_numbers_in_scientific_form_are_accepted_where_whole():
    parse = parsers.count("--steps", 1, 10**9)
    assert parse("1e6") == 1_000_000 and parse("200_000") == 200_000 and parse(64) == 64 and parse(None) is None
    assert parsers.parse_pairs(["max_steps=1e3", "trash_prob=1", "button_color=teal"], "-o", parsers.env_types()) == {
        "max_steps": 1000,
        "trash_prob": 1.0,
        "button_color": "teal",
    }


# ---------------------------------------------------------------------------------------------- 3. memory
@pytest.fixture
def eight_gb(monkeypatch):
    """The machine has 8 GB free, whatever it really has: the refusals do not depend on the test machine."""
    monkeypatch.setattr(guards, "available_memory", lambda: 8 * 10**9)


MEMORY_CASES = [
    (["probe", "{r}", "--out", "{t}/p.parquet", "--steps", "1e6"], "--steps"),
    (["eval", "{r}", "--episodes", "1e7"], "--episodes"),
    (["choice-test", "{r}", "--episodes", "1e7"], "--episodes"),
    (["patch", "{r}", "--factor", "trash", "--out", "{t}/p.parquet", "--pairs", "1e7"], "--pairs"),
    (["steer", "{r}", "--vector", "trash", "--pairs", "1e7"], "--pairs"),
    (["steer", "{r}", "--vector", "trash", "--episodes", "1e7", "--n-random", "0"], "--episodes"),
]


@pytest.mark.parametrize("args, option", MEMORY_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in MEMORY_CASES])
def test_large_allocations_are_refused_up_front_with_the_figure(run, tmp_path, eight_gb, args, option):
    line = refused([a.format(r=run, t=tmp_path) for a in args], "of memory", "6.4 GB", f"pass a smaller {option}")
    assert " GB" in line.split("needs about")[1].split("of memory")[0] or " TB" in line
    assert "at most about" in line
    assert not (tmp_path / "p.parquet").exists()


def test_train_refuses_a_rollout_buffer_that_cannot_fit(tmp_path):
    refused(["train", "--out", tmp_path / "x", "--steps", "64", "--quiet", "--ppo", "n_steps=1e8"], "n_steps")
    assert not (tmp_path / "x" / "run.json").exists()


def test_library_calls_are_refused_before_allocating(run, eight_gb):
    from workbench.data import collect
    from workbench.envs.rollouts import rollout_episodes
    from workbench.training.checkpoints import load_policy

    policy = load_policy(run)
    with pytest.raises(ResourceError, match="n_steps"):
        collect(policy, None, n_steps=10**8)  # in memory: ~0.7 TB
    with pytest.raises(ResourceError, match="episodes"):
        rollout_episodes(policy, policy.run["env"], 10**8)


# ---------------------------------------------------------------------------------------------- 4. the dashboard
@pytest.fixture
def dash_run(run, tmp_path) -> Path:
    """A fresh copy of the run with a small probe table, per test (the hostile links go into it)."""
    import pandas as pd

    copy = Path(shutil.copytree(run, tmp_path / "dash-run"))
    pd.DataFrame({"x": [1]}).to_parquet(copy / "probes.parquet")
    return copy


def test_dashboard_companion_files_through_links_out_of_the_run_are_refused(dash_run, tmp_path):
    from workbench.apps import data
    from workbench.apps.paths import PathError, run_root
    from workbench.interventions.steering import SteeringVector

    outside = tmp_path / "outside"
    outside.mkdir()
    # a saved steering vector outside, linked in; and one whose index is inside but whose tensors lead outside
    SteeringVector("conv.1.hook_out", torch.ones(16, 1, 1), "secret").save(outside / "v")
    (dash_run / "v.json").symlink_to(outside / "v.json")
    (dash_run / "v.safetensors").symlink_to(outside / "v.safetensors")
    shutil.copy(outside / "v.json", dash_run / "w.json")
    (dash_run / "w.safetensors").symlink_to(outside / "v.safetensors")
    # an index linked to a subfolder inside the run, whose own tensors lead outside
    (dash_run / "sub").mkdir()
    shutil.copy(outside / "v.json", dash_run / "sub" / "x.json")
    (dash_run / "sub" / "x.safetensors").symlink_to(outside / "v.safetensors")
    (dash_run / "x.json").symlink_to(dash_run / "sub" / "x.json")
    shutil.copy(outside / "v.safetensors", dash_run / "x.safetensors")
    # probe directions beside the table, linked out
    (dash_run / "probes.directions.json").symlink_to(outside / "v.json")
    (dash_run / "probes.directions.safetensors").symlink_to(outside / "v.safetensors")
    # a step file linked out, holding a secret metric; a step file that is a FIFO (it would hang a read)
    step = json.loads((dash_run / "step-000000000.json").read_text())
    (outside / "step.json").write_text(json.dumps({**step, "step": 12, "secret": 12345.678}))
    (dash_run / "step-000000012.json").symlink_to(outside / "step.json")
    os.mkfifo(dash_run / "step-000000013.json")
    os.mkfifo(dash_run / "fifo.parquet")  # a table that is a FIFO: listing the tables must not block on it

    def load():
        runs = data.load_run(run_root(dash_run))
        loaded.append((runs, runs.tables("probes")))

    loaded: list = []
    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(30)
    assert loaded, "load_run or the table listing blocked on a FIFO"
    runs, tables = loaded[0]
    assert "fifo.parquet" not in tables
    assert 12 not in runs.steps and 13 not in runs.steps and "secret" not in runs.metrics.columns
    assert len(runs.refused) == 2 and all("step-00000001" in why for why in runs.refused)
    with pytest.raises(PathError, match="outside"):
        data.probe_directions(runs, "probes.parquet")
    last = runs.steps[-1]
    values = [o["value"] for o in data.steering_options(runs, last)]
    assert not any(v.startswith(("file:", "probe:")) for v in values), values
    SteeringVector("conv.1.hook_out", torch.ones(16, 1, 1), "fine").save(dash_run / "good")  # the control: offered
    assert [o["value"] for o in data.steering_options(runs, last) if o["value"].startswith("file:")] == [
        "file:good.json"
    ]
    assert data.steering_vector(data.steering_key(runs, last, "file:good.json")).name == "fine"
    for spec in ("file:v.json", "file:w.json", "file:v.safetensors", "file:x.json", "file:sub/x.json",
                 "file:../outside/v.json"):  # fmt: skip
        with pytest.raises(PathError):
            data.steering_key(runs, last, spec)


def test_dashboard_leaves_out_damaged_step_files_and_says_so(dash_run):
    from workbench.apps import data, figures
    from workbench.apps.paths import run_root

    step = json.loads((dash_run / "step-000000000.json").read_text())
    (dash_run / "step-000000021.json").write_text(json.dumps({**step, "step": "abc"}))
    (dash_run / "step-000000022.json").write_text(json.dumps({**step, "step": "nan"}).replace('"nan"', "NaN"))
    (dash_run / "step-000000023.json").write_text("[" * 100_000 + "]" * 100_000)
    (dash_run / "step-000000024.json").write_text(json.dumps({**step, "step": 24, "success_rate": "abc"}))
    runs = data.load_run(run_root(dash_run))
    assert not {21, 22, 23} & set(runs.steps) and 24 in runs.steps and len(runs.refused) == 3
    assert figures.training_metrics(runs.metrics).data  # the text success rate is a gap in the curve


def test_dashboard_callbacks_refuse_bad_values_with_a_message(dash_run):
    from workbench.apps.dashboard.app import create_app

    app = create_app(dash_run, warm=False)
    client = app.server.test_client()
    last = max(int(p.name[5:14]) for p in dash_run.glob("step-*.json"))

    def frame(seed):
        body = {"output": "..ep-frame.figure...ep-probs.figure...ep-trace.figure...ep-info.children..",
                "outputs": [{"id": i, "property": p} for i, p in (("ep-frame", "figure"), ("ep-probs", "figure"),
                                                                  ("ep-trace", "figure"), ("ep-info", "children"))],
                "inputs": [{"id": "ep-step", "property": "value", "value": last},
                           {"id": "ep-seed", "property": "value", "value": seed},
                           {"id": "ep-dist", "property": "value", "value": "train"},
                           {"id": "ep-t", "property": "value", "value": 0}],
                "changedPropIds": ["ep-seed.value"]}  # fmt: skip
        return client.post("/_dash-update-component", json=body)

    def steer(coef, seed=0, spec="contrast:trash"):
        body = {"output": "..steer-path.figure...steer-effects.figure..",
                "outputs": [{"id": "steer-path", "property": "figure"}, {"id": "steer-effects", "property": "figure"}],
                "inputs": [{"id": "steer-step", "property": "value", "value": last},
                           {"id": "steer-vector", "property": "value", "value": spec},
                           {"id": "steer-coef", "property": "value", "value": coef},
                           {"id": "ep-seed", "property": "value", "value": seed}],
                "changedPropIds": ["steer-coef.value"]}  # fmt: skip
        return client.post("/_dash-update-component", json=body)

    for seed in (1e30, -5, "abc", [1], 2.5):
        response = frame(seed)
        assert response.status_code == 200, (seed, response.data[:300])
        assert "episode seed" in response.get_data(as_text=True), seed
    for coef in (1e308, -1e308, "abc"):
        response = steer(coef)
        assert response.status_code == 200, (coef, response.data[:300])
        assert "steering coefficient" in response.get_data(as_text=True), coef
    for spec in (["contrast:trash"], {"a": 1}):
        response = steer(0.5, spec=spec)
        assert response.status_code == 200 and "refused" in response.get_data(as_text=True)


def test_dashboard_refuses_foreign_host_headers(dash_run):
    from workbench.apps.dashboard.app import create_app

    app = create_app(dash_run, warm=False, allowed_hosts=("lab-box.internal",))
    client = app.server.test_client()
    for host in ("evil.example:8050", "evil.example", "127.0.0.1.evil.example:8050", "localhost.evil.example"):
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 403, host
        assert b"DNS rebinding" in response.data
    for host in ("localhost:8050", "127.0.0.1:8050", "[::1]:8050", "lab-box.internal:8050", "10.1.2.3:8050"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_dashboard_warns_loudly_off_loopback(dash_run, monkeypatch):
    import socket

    import workbench.apps.dashboard

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    calls = []
    monkeypatch.setattr(workbench.apps.dashboard, "serve", lambda *a, **k: calls.append(k))
    loud = runner.invoke(
        app, ["dashboard", str(dash_run), "--host", "0.0.0.0", "--port", str(port), "--allow-host", "box.lan"]
    )
    assert loud.exit_code == 0 and "WARNING" in loud.stderr and "not loopback" in loud.stderr
    quiet = runner.invoke(app, ["dashboard", str(dash_run), "--port", str(port)])
    assert quiet.exit_code == 0 and "WARNING" not in quiet.stderr
    assert calls == [{"host": "0.0.0.0", "port": port, "allowed_hosts": ("box.lan",)},
                     {"host": "127.0.0.1", "port": port}]  # fmt: skip


def test_dashboard_refuses_a_port_in_use_or_a_host_elsewhere_in_one_line(dash_run):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused(["dashboard", dash_run, "--port", port], f"127.0.0.1:{port}", "pass another --port")
    refused(["dashboard", dash_run, "--host", "no-such-host.invalid"], "cannot be resolved")


# ---------------------------------------------------------------------------------------------- 5. top level
def test_workbench_errors_are_one_line_and_still_the_error_in_process(run):
    """In process (CliRunner) the SystemExit(2) is also the WorkbenchError refused, so callers can tell what it was;
    a value refused where it is parsed is a ConfigError there too."""
    from workbench.common.errors import ConfigError

    result = runner.invoke(app, ["hooks", "/nonexistent/run"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert isinstance(result.exception, WorkbenchError) and "does not exist" in str(result.exception)
    result = runner.invoke(app, ["steer", str(run), "--vector", "trash", "--n-random", "-3"])
    assert (
        result.exit_code == 2 and isinstance(result.exception, ConfigError) and "n_random=-3" in str(result.exception)
    )
    result = runner.invoke(app, ["render", "--bogus"])  # typer's own usage errors: one line, exit 2 as before
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "--bogus" in result.stderr


@pytest.mark.parametrize(
    "error, words",
    [
        (IsADirectoryError(21, "Is a directory", "/data/out.png"), ["/data/out.png", "pass a file path"]),
        (PermissionError(13, "Permission denied", "/data/out.png"), ["/data/out.png", "permissions"]),
        (OSError(28, "No space left on device"), ["disk is full"]),
        (MemoryError(), ["ran out of memory", "--steps"]),
    ],
)
def test_os_and_memory_errors_are_one_line(tmp_path, monkeypatch, error, words):
    import workbench.common.io

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(workbench.common.io, "atomic_write_bytes", fail)
    refused(["render", "--steps", "1", "--out", tmp_path / "x.png"], *words)


def test_unexpected_errors_are_not_swallowed(tmp_path, monkeypatch):
    import workbench.common.io

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(workbench.common.io, "atomic_write_bytes", bug)
    result = runner.invoke(app, ["render", "--steps", "1", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    unknown = OSError(5, "Input/output error")  # not caused by an input: shown in full
    assert guards.describe_os_error(unknown) is None


def test_the_console_entry_point_prints_one_line(run):
    """The real entry point in a subprocess: exit status 2 and one line on stderr, as a user sees it."""
    done = subprocess.run([sys.executable, "-m", "workbench.cli.main", "eval", str(run), "--out", str(last_step(run))],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "run's own files" in done.stderr
