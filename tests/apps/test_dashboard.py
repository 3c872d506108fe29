"""The dashboard: paths outside the run directory are refused, every view renders in headless Chromium without
console errors, changing a control changes a figure, missing results give clear messages; callback latencies are
measured (not asserted) and written with the screenshots to tests/artifacts/.

Browser tests need Debian's chromium and chromium-driver: they skip without them, except under CI=true, where a
missing browser is a failure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.apps.conftest import ARTIFACTS, PROBE_LABELS, console_errors, make_browser, screenshot


class Served:
    """A dashboard app served on a free local port in a thread."""

    def __init__(self, run: Path):
        from werkzeug.serving import make_server

        from workbench.apps.dashboard.app import create_app, wait_warm

        self.app = create_app(run)
        wait_warm(self.app)
        self.server = make_server("127.0.0.1", 0, self.app.server, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        from workbench.apps import data

        self.server.shutdown()
        data.stop_background()


@pytest.fixture(scope="module")
def served(run_dir):
    from workbench.apps.data import one_torch_thread

    with one_torch_thread():  # as `workbench dashboard` serves
        served = Served(run_dir)
        yield served
        served.close()


@pytest.fixture(scope="module")
def browser():
    browser = make_browser()
    yield browser
    browser.quit()


# ---------------------------------------------------------------------------------------------- paths
def test_paths_outside_the_run_directory_are_refused(run_dir, tmp_path):
    from workbench.apps.paths import PathError, find_tables, run_root, safe_path

    root = run_root(run_dir)
    assert safe_path(root, "probes.parquet") == root / "probes.parquet"
    assert safe_path(root, "results/behaviour.parquet").is_file()
    outside = tmp_path / "secret.parquet"
    pd.read_parquet(run_dir / "patch.parquet").to_parquet(outside)  # a patching table, but outside
    link = root / "escape.parquet"
    link.symlink_to(outside)
    try:
        for bad in ("../run.json", "results/../../x", "/etc/passwd", str(root / "run.json"), "~/x", "", "a\\..\\b",
                    "escape.parquet", "..", "a/\x00"):  # fmt: skip
            with pytest.raises(PathError):
                safe_path(root, bad)
        found = find_tables(root)
        assert found["probes"] == ["probes.parquet"] and found["patching"] == ["patch.parquet"]
        assert found["behaviour"] == ["results/behaviour.parquet"]  # the symlink out is not listed
    finally:
        link.unlink()
    with pytest.raises(PathError):
        run_root(tmp_path)  # no run.json


def test_forged_callback_paths_and_file_urls_are_refused(run_dir):
    from workbench.apps.dashboard.app import create_app

    app = create_app(run_dir, warm=False)
    client = app.server.test_client()
    for url in ("/run.json", "/probes.parquet", "/assets/../run.json", "/_dash-component-suites/../../run.json",
                "/assets/%2e%2e/run.json", "/static/../run.json"):  # fmt: skip
        response = client.get(url)
        assert response.status_code in (403, 404) or b"schema_version" not in response.data, url
    secret = run_dir.parent / "outside.parquet"
    pd.read_parquet(run_dir / "patch.parquet").assign(value=12345.678).to_parquet(secret)
    for forged in ("../outside.parquet", str(secret), "/etc/passwd"):
        body = {
            "output": "patch-fig.figure",
            "outputs": {"id": "patch-fig", "property": "figure"},
            "inputs": [{"id": "patch-table", "property": "value", "value": forged},
                       {"id": "patch-hook", "property": "value", "value": "conv.1.hook_out"},
                       {"id": "patch-metric", "property": "value", "value": "normalised_effect"}],
            "changedPropIds": ["patch-table.value"],
        }  # fmt: skip
        response = client.post("/_dash-update-component", json=body)
        assert response.status_code == 200, response.data[:300]
        text = response.get_data(as_text=True)
        assert "refused" in text or "outside" in text, text[:300]
        assert "12345.678" not in text
    body = {"output": "..ep-t.max...ep-t.value..", "outputs": [{"id": "ep-t", "property": "max"},
            {"id": "ep-t", "property": "value"}],
            "inputs": [{"id": "ep-step", "property": "value", "value": 7}, {"id": "ep-seed", "property": "value",
                       "value": 0}, {"id": "ep-dist", "property": "value", "value": "train"},
                       {"id": "ep-prev", "property": "n_clicks", "value": 0},
                       {"id": "ep-next", "property": "n_clicks", "value": 0}],
            "state": [{"id": "ep-t", "property": "value", "value": 0}],
            "changedPropIds": ["ep-step.value"]}  # fmt: skip
    assert client.post("/_dash-update-component", json=body).status_code in (200, 204)  # a stale step: no update


def test_figures_from_tables(run_dir):
    from workbench.apps import data, figures
    from workbench.apps.paths import run_root

    run = data.load_run(run_root(run_dir))
    scores, best = data.probe_tables(run, "probes.parquet")
    assert set(best["label"]) == set(PROBE_LABELS) and best.groupby(["step", "hook", "label"]).size().max() == 1
    heat = figures.selectivity_heatmap(best, run.steps[-1])
    assert heat.data[0].z.shape == (2, len(PROBE_LABELS))
    directions = data.probe_directions(run, "probes.parquet")
    ep = data.episode(run, run.steps[-1], 3, "train")
    for d in directions:  # every kind of direction draws, and reads the frame
        assert figures.direction_grid(d).data
        assert figures.probe_on_frame(d, data.activation(run, d.step, ep.obs[0], d.hook), 0).layout.title
    trash = data.find_direction(directions, run.steps[-1], "conv.1.hook_out", "trash_map", "conv1x1")
    grid = figures.probe_on_frame(trash, data.activation(run, run.steps[-1], ep.obs[0], "conv.1.hook_out"), 0)
    assert grid.data[0].z.shape == (7, 7) and 0 <= grid.data[0].z.min() <= grid.data[0].z.max() <= 1
    assert len(ep) == len(ep.actions) + 1 == len(ep.labels) and np.allclose(ep.probs.sum(1), 1, atol=1e-5)
    for hook, shape in data.hook_names(run, run.steps[-1]).items():
        act = data.activation(run, run.steps[-1], ep.obs[0], hook)
        assert act.shape == shape and figures.activation(act, hook, 1).data
    patch_table = data.read_table(run.root, run.tables("patching"))
    cells = figures.patching(patch_table, "conv.1.hook_out")
    assert cells.data[0].type == "heatmap"
    assert figures.patching(patch_table, "fc.hook_out").data[0].type == "bar"
    beh = data.read_table(run.root, run.tables("behaviour"))
    assert {"reward_choice", "success_rate"} <= set(beh["metric"])
    over_training = figures.behaviour(beh, "success_rate")  # two checkpoints: a curve over steps
    assert list(over_training.data[0].x) == sorted(set(beh.loc[beh.metric == "success_rate", "step"]))
    assert len(figures.behaviour(beh, "reward_choice").data[0].x) == 1  # one checkpoint: by condition


# ---------------------------------------------------------------------------------------------- the browser
VIEWS = ("episode", "activations", "probes", "patching", "behaviour")


def wait_for(browser, condition, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the element may be re-rendering
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def press_slider(browser, slider_id: str, presses: int) -> None:
    """Step a slider right `presses` times by keyboard, one press at a time, each confirmed by the thumb's
    aria-valuenow. A key sent before the slider has focus (the page may still be re-rendering it) is lost; such a
    press is retried (focus again, press again), so the slider ends exactly `presses` steps on."""
    from selenium.webdriver.common.keys import Keys

    def value():
        return browser.execute_script(
            "const t = document.querySelector(`#${arguments[0]} [role=slider]`);"
            "return t ? t.getAttribute('aria-valuenow') : null;",
            slider_id,
        )

    for _ in range(presses):
        start = wait_for(browser, value, what=f"the {slider_id} slider")
        for _attempt in range(5):
            browser.execute_script("document.querySelector(`#${arguments[0]} [role=slider]`).focus()", slider_id)
            browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
            try:
                wait_for(browser, lambda s=start: value() not in (None, s), 3, f"the {slider_id} slider to move")
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(f"the {slider_id} slider did not move from {start} after 5 key presses")


def graph_title(browser, graph_id: str) -> str:
    return browser.execute_script(
        "const g = document.querySelector(`#${arguments[0]} .js-plotly-plot`);"
        "return g && g.layout && g.layout.title ? (g.layout.title.text || '') : '';",
        graph_id,
    )


def idle(browser, served, quiet: float = 0.6, timeout: float = 30.0) -> None:
    """Wait until no callback request has been answered for `quiet` seconds and no spinner shows."""
    deadline = time.monotonic() + timeout
    count, since = len(served.app.callback_times), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(served.app.callback_times)
        if now != count:
            count, since = now, time.monotonic()
        loading = browser.execute_script("return document.querySelectorAll('[data-dash-is-loading=\"true\"]').length")
        if not loading and time.monotonic() - since > quiet:
            return


def test_every_view_renders_without_console_errors_and_controls_change_figures(served, browser):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served.url)
    wait_for(browser, lambda: graph_title(browser, "ep-frame").startswith("frame 0"), what="the episode player")
    wait_for(browser, lambda: "caches ready" in browser.find_element(By.ID, "warm-text").text, what="warm-up")
    idle(browser, served)
    load_times = list(served.app.callback_times)
    screenshot(browser, "dashboard-episode")

    # the episode player: next steps the frame
    browser.find_element(By.ID, "ep-next").click()
    wait_for(browser, lambda: graph_title(browser, "ep-frame").startswith("frame 1"), what="frame 1")
    assert "step 1 of" in browser.find_element(By.ID, "ep-info").text
    seed = browser.find_element(By.ID, "ep-seed")
    seed.send_keys(Keys.BACKSPACE, "5", Keys.ENTER)
    wait_for(browser, lambda: graph_title(browser, "ep-frame").startswith("frame 0"), what="a new episode")
    idle(browser, served)

    for view in VIEWS[1:]:
        browser.find_element(By.ID, f"tab-{view}").click()
        idle(browser, served)
        screenshot(browser, f"dashboard-{view}")
        if view == "activations":
            before = graph_title(browser, "act-fig")
            assert "channel" in before
            press_slider(browser, "act-index", 1)
            wait_for(browser, lambda b=before: graph_title(browser, "act-fig") != b, what="another channel")
        if view == "probes":
            before = graph_title(browser, "probe-curves")
            assert "over training" in before and graph_title(browser, "probe-direction").startswith("direction")
            on_frame = graph_title(browser, "probe-frame")  # a vector hook has no grid: its output in words
            assert "read on frame" in on_frame or "no grid at" in browser.find_element(By.ID, "probe-frame").text
            heat = browser.find_element(By.CSS_SELECTOR, "#probe-heat .nsewdrag")
            width, height = heat.size["width"], heat.size["height"]
            cells = [(x, y) for y in (0.25, 0.75) for x in (0.1, 0.4, 0.6, 0.9)]  # 2 hooks x 4 labels
            for x, y in cells:  # click cells until one shows another (hook, label) than the default
                offset = int(width * (x - 0.5)), int(height * (y - 0.5))
                ActionChains(browser).move_to_element_with_offset(heat, *offset).click().perform()
                try:
                    wait_for(browser, lambda b=before: graph_title(browser, "probe-curves") != b, 4, "new curves")
                    break
                except AssertionError:
                    continue
            idle(browser, served)
            assert graph_title(browser, "probe-curves") != before
        if view == "patching":
            assert "patching conv.1.hook_out" in graph_title(browser, "patch-fig")
            before = graph_title(browser, "steer-effects")
            assert "coef 0" in before
            press_slider(browser, "steer-coef", 4)
            wait_for(browser, lambda b=before: graph_title(browser, "steer-effects") != b, what="steered rollout")
            idle(browser, served)
            assert "coef 2" in graph_title(browser, "steer-effects"), graph_title(browser, "steer-effects")
            screenshot(browser, "dashboard-steering")
        if view == "behaviour":
            assert "success_rate" in json.dumps(browser.execute_script(
                "return document.querySelector('#beh-training .js-plotly-plot').data.map(t => t.name)"))  # fmt: skip
            assert graph_title(browser, "beh-fig").startswith("reward_choice")
    errors = console_errors(browser)
    assert not errors, errors
    record_latency(served.app.callback_times, load_times)


def record_latency(times: list[tuple[str, float]], load_times: list[tuple[str, float]]) -> None:
    """Per callback: the median and the worst answer time after the first page load (the interactions), and the
    page load's own (concurrent) times; written to tests/artifacts/callback_latency.json and printed."""
    after = times[len(load_times) :]
    summary = {}
    for name, group in (("interaction", after), ("page_load", load_times)):
        by = {}
        for output, ms in group:
            by.setdefault(output.strip("."), []).append(ms)
        summary[name] = {k: {"n": len(v), "median_ms": round(float(np.median(v)), 1), "max_ms": round(max(v), 1)}
                         for k, v in sorted(by.items())}  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "callback_latency.json").write_text(json.dumps(summary, indent=2))
    for output, stats in summary["interaction"].items():
        print(f"callback {output[:70]:70s} median {stats['median_ms']:7.1f} ms  max {stats['max_ms']:7.1f} ms")


def test_missing_results_show_what_to_run(bare_run):
    from selenium.webdriver.common.by import By

    from workbench.apps.data import one_torch_thread

    with one_torch_thread():
        served = Served(bare_run)
        browser = make_browser()
        try:
            browser.get(served.url)
            wait_for(browser, lambda: graph_title(browser, "ep-frame").startswith("frame 0"), what="the player")
            expected = {"probes": "no probe table yet", "patching": "no patching results yet",
                        "behaviour": "no behaviour table yet"}  # fmt: skip
            for view, text in expected.items():
                browser.find_element(By.ID, f"tab-{view}").click()
                wait_for(browser, lambda t=text: t in browser.find_element(By.TAG_NAME, "body").text, what=text)
                idle(browser, served)
                screenshot(browser, f"dashboard-bare-{view}")
            errors = console_errors(browser)
            assert not errors, errors
        finally:
            browser.quit()
            served.close()


def test_cli_dashboard_and_report_commands(run_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import workbench.apps.dashboard
    from workbench.cli.main import app

    calls = []
    monkeypatch.setattr(workbench.apps.dashboard, "serve", lambda *a, **k: calls.append((a, k)))
    result = CliRunner().invoke(app, ["dashboard", str(run_dir), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert calls == [((run_dir,), {"host": "127.0.0.1", "port": 8123})]
    assert "--host" in CliRunner().invoke(app, ["dashboard", "--help"]).output


def test_transformer_views_and_report_without_training(tmp_path):
    """Attention patterns, token maps and the report for a transformer checkpoint (untrained: written directly)."""
    from workbench.apps import data, figures
    from workbench.apps.paths import run_root
    from workbench.apps.report import build_report
    from workbench.envs import make_config
    from workbench.policies import build_policy
    from workbench.training.checkpoints import save_step, tensor_spec, write_run

    env = {"variant": "trash", "room_size": 5}
    policy = build_policy({"arch": "transformer", "obs_shape": list(make_config(**env).obs_shape), "n_actions": 5})
    run_dir = tmp_path / "tf"
    write_run(run_dir, {"env": env, "policy": policy.config(), "tensors": tensor_spec(policy.state_dict()), "seed": 0})
    save_step(run_dir, 0, policy, {"success_rate": 0.0, "mean_return": 0.0})
    run = data.load_run(run_root(run_dir))
    ep = data.episode(run, 0, 0, "train")
    pattern = data.activation(run, 0, ep.obs[0], "blocks.0.attn.hook_pattern")
    fig = figures.activation(pattern, "blocks.0.attn.hook_pattern", 1)
    assert len(fig.data) == 2 and fig.data[1].z.shape == (3, 3)  # the readout's attention on the 3x3 patch grid
    assert np.allclose(pattern.sum(-1), 1, atol=1e-5)
    for hook in ("blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "hook_value"):
        assert figures.activation(data.activation(run, 0, ep.obs[0], hook), hook, 0).data
    text = build_report(run_dir, tmp_path / "tf.html").read_text()
    assert "blocks.0.attn.hook_pattern" in text and "no probe table yet" in text


def test_workbench_dashboard_serves_on_localhost(run_dir):
    """The real command: it listens on 127.0.0.1 by default and serves the page; stopped by its own pid."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-c", "from workbench.cli.main import main; main()", "dashboard", str(run_dir), "--port",
               str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, page = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert page is not None and "workbench" in page, process.stdout.read1().decode() if process.poll() else ""
        try:
            import psutil
        except ImportError:  # the page answered on 127.0.0.1; which other interfaces it binds is unchecked
            return
        sockets = psutil.Process(process.pid).net_connections("tcp")
        assert {c.laddr.ip for c in sockets if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}
    finally:
        process.terminate()
        process.wait(10)
