"""The inference container's HTTP server: SageMaker's serving contract on the stdlib.

`serve` (SageMaker runs `docker run <image> serve`) loads the model with the handler
module's model_fn BEFORE binding the port, so a broken model fails the container at start
(exit 1, reason on stderr) instead of answering /ping while unable to predict. Then:
GET /ping -> 200, POST /invocations -> input_fn -> predict_fn -> output_fn.

Environment: SAGEMAKER_BASE_DIR (default /opt/ml; the model is in {base}/model),
SAGEMAKER_PROGRAM (handler module file next to this one, default inference.py),
SAGEMAKER_BIND_TO_PORT (default 8080), SAGEMAKER_BIND_HOST (default 127.0.0.1; the image
sets 0.0.0.0), SAGEMAKER_MAX_PAYLOAD_IN_MB (default 6, SageMaker's real-time limit).
SIGTERM stops accepting, lets in-flight requests finish (up to a few seconds), exits 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

HANDLERS = ("model_fn", "input_fn", "predict_fn", "output_fn")
DRAIN_LIMIT = 64 << 20  # bytes of a refused body read and dropped so the client sees the answer


def load_handlers(program: str) -> ModuleType:
    path = Path(__file__).resolve().parent / program
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"handler module {path} not found (SAGEMAKER_PROGRAM={program})")
    sys.dont_write_bytecode = True  # leave the code directory (and the image's hash) untouched
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    missing = [name for name in HANDLERS if not callable(getattr(module, name, None))]
    if missing:
        raise AttributeError(f"{path.name} does not define {', '.join(missing)}")
    return module


class InferenceServer(ThreadingHTTPServer):
    """Threaded server holding the loaded model, the handlers and the in-flight count."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handlers: ModuleType, model: Any, limit: int):
        super().__init__(address, RequestHandler)
        self.handlers = handlers
        self.model = model
        self.max_payload = limit
        self.inflight = 0
        self.idle = threading.Condition()

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.inflight and (left := deadline - time.monotonic()) > 0:
                self.idle.wait(left)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: no new connection per request
    disable_nagle_algorithm = True  # TCP_NODELAY: small responses leave at once
    wbufsize = 1 << 16  # headers and body go out in one write, flushed per request
    timeout = 120  # idle keep-alive connections are closed after this
    server_version = "sagepipe-serve"
    sys_version = ""
    server: InferenceServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/ping":
            self.respond(200, b"", "text/plain")
        else:
            self.not_found()

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/invocations":
            self.not_found()
            return
        length = self.content_length()
        if length is None:
            return
        body = self.rfile.read(length)
        with self.server.idle:
            self.server.inflight += 1
        try:
            self.invoke(body)
        finally:
            with self.server.idle:
                self.server.inflight -= 1
                self.server.idle.notify_all()

    def do_PUT(self) -> None:
        self.not_found()

    do_DELETE = do_PATCH = do_HEAD = do_PUT

    def invoke(self, body: bytes) -> None:
        h, model = self.server.handlers, self.server.model
        try:
            data = h.input_fn(body, self.headers.get("Content-Type", ""))
            prediction = h.predict_fn(data, model)
            payload, content_type = h.output_fn(prediction, self.headers.get("Accept", ""))
        except Exception as e:
            status = getattr(e, "status", None)
            if isinstance(status, int) and 400 <= status <= 499:
                self.error(status, str(e))
            else:
                traceback.print_exc()
                self.error(500, "Internal error while predicting; see the endpoint's logs.")
            return
        self.respond(200, payload, content_type)

    def content_length(self) -> int | None:
        """The body size, or None after answering 411/400/413 (decided before any read)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True  # the body's end is unknown: drop the connection
            self.error(411, "Content-Length is required.")
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self.error(400, f"Invalid Content-Length '{raw}'.")
            return None
        if length > self.server.max_payload:
            self.close_connection = True
            self.error(
                413,
                f"Payload of {length} bytes exceeds the {self.server.max_payload} byte limit; "
                "send smaller batches.",
            )
            self.wfile.flush()
            self.drain(length)
            return None
        return length

    def drain(self, length: int) -> None:
        """Read and drop a refused body, so closing does not reset the connection mid-answer."""
        self.connection.settimeout(2)
        left = min(length, DRAIN_LIMIT)
        try:
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
        except OSError:
            pass

    def handle_expect_100(self) -> bool:
        raw = self.headers.get("Content-Length", "")
        if raw.isdigit() and int(raw) > self.server.max_payload:
            self.close_connection = True
            self.error(413, f"Payload exceeds the {self.server.max_payload} byte limit.")
            return False
        return super().handle_expect_100()

    def not_found(self) -> None:
        route = f"{self.command} {self.path}"
        self.error(404, f"No route for {route}; use GET /ping or POST /invocations.")

    def error(self, status: int, message: str) -> None:
        self.respond(status, json.dumps({"error": message}).encode(), "application/json")

    def respond(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int) and code >= 400:  # successes are not logged: hot path
            super().log_request(code, size)


def main(argv: list[str]) -> int:
    if argv not in ([], ["serve"]):
        print(f"usage: serve.py [serve]; got {' '.join(argv)}", file=sys.stderr)
        return 2
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    try:
        handlers = load_handlers(os.environ.get("SAGEMAKER_PROGRAM", "inference.py"))
        model = handlers.model_fn(str(base / "model"))
        port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
        limit = int(float(os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", "6")) * 1024 * 1024)
    except Exception as e:
        traceback.print_exc()
        print(f"cannot start the model server: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    host = os.environ.get("SAGEMAKER_BIND_HOST", "127.0.0.1")
    try:
        server = InferenceServer((host, port), handlers, model, limit)
    except OSError as e:
        print(f"cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1

    def stop(signum: int, _frame: object) -> None:
        print(f"received {signal.Signals(signum).name}: shutting down", flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serving on http://{host}:{port} (max payload {limit} bytes)", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.wait_idle(timeout=5)
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
