"""The tests' raw Prefect API calls are sent again while the server answers 503."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import prefect_http
import pytest


class Busy(BaseHTTPRequestHandler):
    """503 for the first ``busy`` requests, then 200 with the body it was sent."""

    busy: ClassVar[int] = 0
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Busy.bodies.append(body)
        status = 503 if len(Busy.bodies) <= Busy.busy else 200
        answer = b'{"exception_message": "Service Unavailable"}' if status == 503 else body
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(prefect_http.time, "sleep", lambda seconds: None)
    Busy.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_busy_answer_is_asked_again_with_the_same_body(url: str) -> None:
    Busy.busy = 2
    answer = prefect_http.post(f"{url}/flows/", json={"name": "f"})
    assert answer.status_code == 200 and answer.json() == {"name": "f"}
    assert Busy.bodies == [b'{"name":"f"}'] * 3


def test_a_server_busy_for_longer_is_given_up_on_with_its_503(url: str) -> None:
    Busy.busy = 100
    with prefect_http.client(url) as client:
        answer = client.post("/flows/", json={})
    assert answer.status_code == 503
    assert len(Busy.bodies) == prefect_http.ATTEMPTS
