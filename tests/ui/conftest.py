"""A real Prefect UI in a real browser: a local Prefect server and a headless Chromium tab."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_browser import CHROMIUM_FLAGS, Page, free_port, get, start, stop, wait_for


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 and a free port, with a fresh database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"{url}/api", PREFECT_API_URL=f"{url}/api")
    log = home / "server.log"
    server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], log, env)
    try:
        wait_for(lambda: get(f"{url}/api/health") is not None, timeout=180,
                 what="the Prefect server to answer", process=server, log=log)
        yield url
    finally:
        stop(server)


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[Page]:
    """A tab of a fresh headless Chromium (its own profile directory, its own port)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("No chromium on PATH: `make screenshot` installs Debian's chromium, or "
                    "run `apt-get install -y chromium`.")
    profile = tmp_path / "chromium-profile"
    log = tmp_path / "chromium.log"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    browser = start([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                    log, env)
    try:
        active = profile / "DevToolsActivePort"
        port = wait_for(lambda: active.exists() and active.read_text().split("\n")[0],
                        timeout=60, what="Chromium's DevTools port", process=browser, log=log)
        targets = wait_for(lambda: [t for t in get(f"http://127.0.0.1:{port}/json/list") or []
                                    if t.get("type") == "page"],
                           timeout=30, what="a Chromium tab", process=browser, log=log)
        tab = Page(targets[0]["webSocketDebuggerUrl"])
        try:
            yield tab
        finally:
            tab.close()
    finally:
        stop(browser)
