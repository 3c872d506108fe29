"""The static report: one self-contained HTML file (plotly inlined, nothing fetched) that opens offline in headless
Chromium with every figure drawn; views without results say which command writes them."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tests.apps.conftest import ARTIFACTS, console_errors, make_browser
from workbench.cli.main import app


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def figure_ids(text: str) -> list[str]:
    return re.findall(r'<div id="(figure-\d+)"', text)


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "Plotly.newPlot" in text and len(figure_ids(text)) >= 10
    assert not re.search(r"<script[^>]+src=", text), "no external scripts"
    assert not re.search(r"<link[^>]+href=", text), "no external stylesheets"
    assert "cdn.plot.ly/plotly" not in text.split("</head>")[1]  # the body loads nothing from a CDN
    for heading in ("Training", "An episode of step 512", "Activations", "Probes", "Patching", "Behaviour"):
        assert heading in text
    assert "no patching results yet" not in text


def test_report_opens_offline_with_every_figure(report):
    browser = make_browser(1300, 2400)
    try:
        browser.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        browser.get(report.as_uri())
        ids = figure_ids(report.read_text())
        drawn = browser.execute_script(
            "return arguments[0].filter(id => { const g = document.getElementById(id);"
            " return g && g.classList.contains('js-plotly-plot') && g.querySelector('.main-svg'); }).length",
            ids,
        )
        assert drawn == len(ids)
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched == [], fetched
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "report.png"))
        errors = console_errors(browser)
        assert not errors, errors
    finally:
        browser.quit()


def test_report_of_one_checkpoint_and_of_a_run_without_results(run_dir, bare_run, tmp_path):
    from workbench.apps.report import build_report

    out = build_report(run_dir / "step-000000128.safetensors", tmp_path / "r.html")
    assert "step 128" in out.read_text()
    text = build_report(bare_run, tmp_path / "bare.html").read_text()
    for missing in ("no probe table yet", "no patching results yet", "no behaviour table yet"):
        assert missing in text
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")])
    assert bad.exit_code != 0 and not (tmp_path / "x.html").exists()
