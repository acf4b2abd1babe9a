"""``forgesweep report`` on a tiny real sweep, opened in a real headless Chromium with no network.

A two-trial, two-stage sweep runs through Ray Tune + Ray Train on the session's Ray head and
logs to a fresh MLflow store; the report command writes its page; Debian's Chromium (driven by
Playwright against the system binary, offline, every host name unresolvable) loads it from
disk. The page must render without console errors or page errors, fetch nothing but itself,
show a decoded heat map per trial and the comparison table, and a screenshot is kept.

Playwright rather than Selenium: it reports console messages, uncaught page errors and every
request the page makes as events, and switches a context offline in one call, without a
separate chromedriver process. Without Chromium the test is skipped locally and fails on CI
(``CI`` set), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from forgesweep.cli import resolve_config
from forgesweep.report import cli as report_cli
from forgesweep.sweep.runner import run_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FORGESWEEP_CHROMIUM", "/usr/bin/chromium")
SWEEP = "e2e-report-sweep"
MODEL = "e2e-report-model"
SCREENSHOT_COPY = Path("/tmp/reports/report_screenshot.png")


def _browser_or_fail() -> str:
    """The Chromium binary; a missing browser or Playwright fails on CI and skips elsewhere."""
    problem = None
    path = shutil.which(CHROMIUM)
    if path is None:
        problem = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium; or set FORGESWEEP_CHROMIUM)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return path


@pytest.fixture(scope="module")
def report_page(ray_session, tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("report-sweep")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        cfg = resolve_config(None, [
            "data.root=data", "data.synthetic.methods=[Deepfakes,Face2Face]", "data.sequence=[Deepfakes,Face2Face]",
            "data.synthetic.train_identities=4", "data.synthetic.val_identities=1",
            "data.synthetic.test_identities=2", "data.synthetic.write_videos=false", "data.batch_size=8",
            "sweep.num_samples=2", f"sweep.name={SWEEP}", f"tracking.tracking_uri={uri}",
            f"tracking.artifact_location={root / 'artifacts'}", f"tracking.registered_model={MODEL}",
        ], smoke=True, configs_dir=REPO / "jobs" / "configs")
        outcome = run_sweep(cfg, echo=lambda _: None)
        out = root / "report.html"
        parser = argparse.ArgumentParser()
        report_cli.add_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["report", SWEEP, "--tracking-uri", uri, "--out", str(out)])
        assert report_cli.run(args) == 0
    finally:
        mp.undo()
    return out, outcome


@pytest.fixture(scope="module")
def rendered(report_page, tmp_path_factory):
    """What Chromium saw: console messages, page errors, requests, DOM facts, the screenshot."""
    chromium = _browser_or_fail()
    from playwright.sync_api import sync_playwright

    out, outcome = report_page
    shot = tmp_path_factory.mktemp("screenshot") / "report.png"
    seen: dict = {"console": [], "errors": [], "requests": []}
    with sync_playwright() as p:
        # No network at all: every host name fails to resolve, and the context is offline.
        browser = p.chromium.launch(executable_path=chromium, args=["--host-resolver-rules=MAP * ~NOTFOUND"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: seen["console"].append((m.type, m.text)))
            page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(out.as_uri(), wait_until="load")
            seen["heatmaps"] = page.eval_on_selector_all(
                "figure.heatmap img", "els => els.map(i => [i.alt, i.complete && i.naturalWidth > 0])")
            seen["broken_images"] = page.eval_on_selector_all(
                "img", "els => els.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")
            seen["comparison"] = page.eval_on_selector_all(
                "table.comparison tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
            seen["registered"] = page.eval_on_selector_all(
                "table.registered td code", "els => els.map(e => e.textContent)")
            seen["title"] = page.title()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    if SCREENSHOT_COPY.parent.is_dir():  # a copy for a person to look at, where that folder exists
        shutil.copyfile(shot, SCREENSHOT_COPY)
    seen["screenshot"] = shot
    return seen, outcome


def test_page_renders_without_console_or_page_errors(rendered):
    seen, _ = rendered
    problems = [m for m in seen["console"] if m[0] in ("error", "warning")]
    assert not problems and not seen["errors"], (problems, seen["errors"])
    assert seen["title"] == f"forgesweep report: {SWEEP}"


def test_page_fetches_nothing_but_itself(rendered):
    seen, _ = rendered
    outside = [u for u in seen["requests"] if not u.startswith(("file://", "data:"))]
    assert not outside, outside
    assert not seen["broken_images"], seen["broken_images"]


def test_heatmaps_of_both_trials_and_the_comparison_table_are_shown(rendered):
    seen, outcome = rendered
    heatmaps = dict(seen["heatmaps"])
    assert len(heatmaps) == 2 and all(heatmaps.values()), heatmaps
    assert f"trial {outcome.best.trial_id}: accuracy" in heatmaps
    rows = seen["comparison"]
    assert len(rows) == 2 and rows[0][0] == outcome.best.trial_id, rows
    assert all(r[-1] == "2/2" for r in rows)
    assert f"models:/{MODEL}@stage-2" in seen["registered"]


def test_screenshot_saved(rendered):
    seen, _ = rendered
    shot: Path = seen["screenshot"]
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
