"""Local ``sagemaker-runtime``: invoke_endpoint over HTTP to the endpoint's server."""

from __future__ import annotations

import http.client
import io
import threading
from typing import Any

from .common import LocalClient, metadata
from .endpoints import EndpointManager
from .validation import client_error

__all__ = ["LocalSageMakerRuntime"]


class LocalSageMakerRuntime(LocalClient):
    service = "sagemaker-runtime"

    def __init__(self, endpoints: EndpointManager, *, region: str, timeout: float = 60.0) -> None:
        super().__init__(region=region)
        self.endpoints = endpoints
        self.timeout = timeout  # SageMaker's own limit for a real-time invocation is 60 s
        self._conns = threading.local()

    def _connection(self, port: int) -> http.client.HTTPConnection:
        pool: dict[int, http.client.HTTPConnection] = getattr(self._conns, "pool", None) or {}
        self._conns.pool = pool
        if port not in pool:
            pool[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        return pool[port]

    def invoke_endpoint(self, **params: Any) -> dict[str, Any]:
        self._validate("InvokeEndpoint", params)
        name = params["EndpointName"]
        try:
            lease = self.endpoints.acquire(name, "InvokeEndpoint")
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code == "ValidationException":  # unknown endpoint: the runtime's own wording
                raise client_error("InvokeEndpoint", "ValidationError",
                                   f"Endpoint {name} of account 000000000000 not found.") from exc
            raise
        body = params["Body"]
        if isinstance(body, str):
            body = body.encode()
        elif hasattr(body, "read"):
            body = body.read()
        headers = {"Content-Type": params.get("ContentType", "application/octet-stream"),
                   "Accept": params.get("Accept", "*/*"), "Content-Length": str(len(body))}
        try:
            status, reply, content_type = self._post(lease.port, body, headers)
        finally:  # answered or not, it is in flight no more
            self.endpoints.release(lease)
        variant = lease.variant
        if status >= 400:
            message = reply.decode(errors="replace")
            raise client_error(
                "InvokeEndpoint", "ModelError",
                f"Received {'client' if status < 500 else 'server'} error ({status}) from "
                f"primary with message \"{message}\". See the endpoint's log in "
                f"{self.endpoints.root / 'endpoints' / name}/ for more information.",
                status=424,
                extra={"OriginalStatusCode": status, "OriginalMessage": message})
        from botocore.response import StreamingBody  # loaded with the first answer

        return {"Body": StreamingBody(io.BytesIO(reply), len(reply)),
                "ContentType": content_type, "InvokedProductionVariant": variant, **metadata()}

    def _post(self, port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        for attempt in (1, 2):  # a kept-alive connection the server closed gets one retry
            conn = self._connection(port)
            try:
                conn.request("POST", "/invocations", body=body, headers=headers)
                response = conn.getresponse()
                return (response.status, response.read(),
                        response.getheader("Content-Type", "application/json"))
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._conns.pool.pop(port, None)
                if attempt == 2:
                    raise client_error("InvokeEndpoint", "ServiceUnavailable",
                                       f"The endpoint's server did not answer: {exc}",
                                       status=503) from exc
        raise AssertionError("unreachable")
