"""Raw HTTP calls to a test Prefect server, retried while it answers 503.

Prefect's server answers 503 when SQLite reports the database busy or locked
(``prefect.server.api.server.is_client_retryable_exception``); a busy snapshot is
reported at once, whatever the busy timeout, so a parallel ``make test`` sees it now
and then. Prefect's own client retries those; the tests' raw calls do the same here,
and any other status is left to the caller.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

ATTEMPTS = 6  # waits 1 + 2 + 3 + 4 + 5 s: 15 s of a busy server before giving up


class RetryWhileBusy(httpx.HTTPTransport):
    """An HTTP transport that sends a request again while the answer is 503."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body is sent again
        for attempt in range(ATTEMPTS):
            answer = super().handle_request(request)
            if answer.status_code != 503 or attempt == ATTEMPTS - 1:
                return answer
            answer.read()
            answer.close()
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")


def client(base_url: str = "", timeout: float = 30) -> httpx.Client:
    """An ``httpx.Client`` whose calls are retried while the server is busy."""
    return httpx.Client(base_url=base_url, timeout=timeout, transport=RetryWhileBusy())


_shared = client()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return _shared.request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return _shared.get(url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return _shared.post(url, **kwargs)


def patch(url: str, **kwargs: Any) -> httpx.Response:
    return _shared.patch(url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return _shared.delete(url, **kwargs)
