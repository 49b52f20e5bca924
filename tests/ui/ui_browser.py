"""Headless Chromium over the Chrome DevTools Protocol, and the process helpers of tests/ui.

The browser is Debian's ``chromium`` (``make screenshot`` installs it), driven with the
``websockets`` client Prefect already depends on: no browser download, no extra package.
Every wait has a deadline, and every process started here runs in a process group of its
own that is stopped by its id.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-proxy-server",
                  "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
                  "--remote-debugging-port=0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(check: Callable[[], Any], *, timeout: float, what: str,
             process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"{what}: the process exited with {process.returncode}\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"Gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this test started, SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def get(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=3.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


class Page:
    """One browser tab over the Chrome DevTools Protocol: commands by id, events skipped."""

    def __init__(self, socket_url: str) -> None:
        self._ws: ClientConnection = connect(socket_url, max_size=None, open_timeout=30,
                                             proxy=None)
        self._id = 0

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"DevTools gave no answer to {method} in {timeout:.0f} s")
            message = json.loads(self._ws.recv(timeout=left))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, *, width: int = 1400, height: int = 1000) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path, *, height: int | None = None) -> None:
        """A PNG of the page; ``height`` grows the viewport first to take in all of it."""
        if height:
            self.call("Emulation.setDeviceMetricsOverride", width=1400, height=height,
                      deviceScaleFactor=1, mobile=False)
            time.sleep(1.0)  # let the layout settle at the new size
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._ws.close()


