"""The plots really render in the Prefect UI: a screenshot of the run record, checked.

Two pipeline runs (``sagepipe run``, as a user starts them) against a local Prefect server:
the first deploys, the second trains a weaker model that is compared with the live one and
rejected. Headless Chromium then opens the second run's artifacts tab and its run record,
waits until every plot image has loaded (``naturalWidth > 0``: the browser decoded it) and
saves screenshots under ``build/screenshots/``.

Slow and needs Chromium, so it runs under ``make screenshot`` (which CI calls), not in
``make test``: ``SAGEPIPE_SCREENSHOT=1`` switches it on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ui_browser import Page, wait_for

from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import RuntimeSettings, get_clients
from sagepipe.tasks.storage import list_run_records

pytestmark = [
    pytest.mark.screenshot,
    pytest.mark.skipif(not os.environ.get("SAGEPIPE_SCREENSHOT"),
                       reason="needs Chromium and a Prefect server: `make screenshot`"),
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = PROJECT_ROOT / "build" / "screenshots"
TITLES = ["ROC curves, new vs live model", "Confusion matrix",
          "Metric history of the model versions"]
PLOTS = f"Array.from(document.images).filter(i => {json.dumps(TITLES)}.includes(i.alt))"
PLOTS_JS = PLOTS + """.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
    height: i.naturalHeight, inline: i.src.startsWith('data:image/png;base64,')}))"""
IN_VIEW_JS = PLOTS + """.every(i => {
    const r = i.getBoundingClientRect(); return r.width > 0 && r.bottom <= innerHeight; })"""
# the tallest scrolling box: the UIs scroll an inner element, not the document
PAGE_HEIGHT_JS = "Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))"


def settings(state: Path, **extra: Any) -> dict[str, Any]:
    return {"project": "ui-demo",
            "runtime": {"kind": "local", "state_dir": str(state)},
            "dataset_uri": "s3://ui-bucket/datasets/cancer/data.csv",
            "artifacts_uri": "s3://ui-bucket/pipeline",
            "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.5,
                     "timeout_seconds": 600},
            "endpoint": {"name": "ui-demo", "timeout_seconds": 120},
            "gate": {"threshold": 0.9, "margin": 0.001}, **extra}


def sagepipe(api_url: str, *args: str, timeout: float = 600, code: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-m", "sagepipe.flows.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
    assert done.returncode == code, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def run_id(prefect_ui: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The flow run id of a run that compared a new model with the live one."""
    state = tmp_path_factory.mktemp("ui-state")
    first, second = state / "first.yaml", state / "second.yaml"
    first.write_text(yaml.safe_dump(settings(state)))
    second.write_text(yaml.safe_dump(settings(state, hyperparameters={
        "model": "random_forest", "n_estimators": 2, "max_depth": 1})))
    api = f"{prefect_ui}/api"
    try:
        sagepipe(api, "data", "push", "--example", "--env", str(first))
        assert "deployed" in sagepipe(api, "run", "--env", str(first))
        # exit 5: the gate rejected the model (README: exit codes)
        assert "rejected" in sagepipe(api, "run", "--env", str(second), code=5)
        clients = get_clients(RuntimeSettings(kind="local", state_dir=str(state)))
        yield str(list_run_records(clients, "s3://ui-bucket/pipeline", limit=1)[0]["run_id"])
    finally:
        teardown(state)


def run_record_artifact(api: str, flow_run_id: str) -> str:
    response = httpx.post(f"{api}/artifacts/filter", trust_env=False, timeout=10, json={
        "artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                      "key": {"any_": ["ui-demo-run-record"]}}})
    response.raise_for_status()
    found = response.json()
    assert len(found) == 1, found
    return str(found[0]["id"])


def assert_plots_loaded(page: Page, screenshot: Path) -> None:
    """Wait until the browser has decoded every plot, then photograph the whole record."""

    def loaded() -> list[dict[str, Any]] | None:
        images: list[dict[str, Any]] = page.evaluate(PLOTS_JS)
        return images if len(images) == len(TITLES) and all(
            i["complete"] for i in images) else None

    images = wait_for(loaded, timeout=120, what="the run record's plots to load")
    assert [i["alt"] for i in images] == TITLES
    for image in images:
        assert image["inline"], image  # a data URI: no URL the browser could fail to reach
        assert image["width"] > 0 and image["height"] > 0, f"{image['alt']} did not load"
    for _ in range(3):  # resizing the viewport can reflow the page: measure again
        page.screenshot(screenshot, height=min(int(page.evaluate(PAGE_HEIGHT_JS)) + 40, 12000))
        if page.evaluate(IN_VIEW_JS):
            break
        time.sleep(1)
    else:
        raise AssertionError("a plot lies outside the screenshot")


def test_the_run_records_plots_render_from_the_flow_runs_artifacts_tab(
        prefect_ui: str, run_id: str, page: Page) -> None:
    """The way a person gets there: the run's link, its Artifacts tab, the run record."""
    page.open(f"{prefect_ui}/runs/flow-run/{run_id}")  # the link in the record and messages
    tab = "Array.from(document.querySelectorAll('li.p-tab')).find(t => t.innerText.trim() === " \
          "'Artifacts')"
    wait_for(lambda: page.evaluate(f"!!{tab}"), timeout=90, what="the Artifacts tab")
    page.evaluate(f"{tab}.click()")
    card = "Array.from(document.querySelectorAll('.flow-run-artifacts a')).find(a => " \
           "a.innerText.includes('ui-demo-run-record'))"
    wait_for(lambda: page.evaluate(f"!!{card}"), timeout=60,
             what="the run record's card on the Artifacts tab")
    page.screenshot(SCREENSHOTS / "flow-run-artifacts.png")
    page.evaluate(f"{card}.click()")
    assert_plots_loaded(page, SCREENSHOTS / "run-record.png")
    assert run_record_artifact(f"{prefect_ui}/api", run_id) in page.evaluate("location.href")


def test_the_run_records_plots_render_in_the_v2_ui(prefect_ui: str, run_id: str,
                                                    page: Page) -> None:
    """Prefect 3.9 also serves a new UI (the default at /); it renders markdown its own way."""
    artifact = run_record_artifact(f"{prefect_ui}/api", run_id)
    page.open(f"{prefect_ui}/v2/artifacts/artifact/{artifact}")
    assert_plots_loaded(page, SCREENSHOTS / "run-record-v2.png")
