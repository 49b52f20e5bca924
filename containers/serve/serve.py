"""The inference container's HTTP server: SageMaker's serving contract on the stdlib.

`serve` (SageMaker runs `docker run <image> serve`) starts SAGEMAKER_MODEL_SERVER_WORKERS
worker processes (default: one per vCPU, as AWS's own framework containers do). Each loads
the model with the handler module's model_fn BEFORE the port opens: the port is listened
on only once every worker has its model, so a broken model fails the container at start
(exit 1, reason on stderr) instead of answering /ping while unable to predict. Then:
GET /ping -> 200, POST /invocations -> input_fn -> predict_fn -> output_fn.

Each worker serves at most SAGEPIPE_SERVER_CONNECTIONS connections at a time (default
32; more wait in the listen backlog), so load cannot grow threads without bound. A worker
that dies is replaced (at most 5 times a minute; more, and the container exits so
SageMaker replaces the instance).

HTTP details SageMaker's clients rely on: keep-alive; `Expect: 100-continue` answered at
once; bodies sent with a Content-Length or chunked (batch transform with MaxPayloadInMB=0),
both within the payload limit (413 beyond it).

Environment: SAGEMAKER_BASE_DIR (default /opt/ml; the model is in {base}/model),
SAGEMAKER_PROGRAM (handler module file next to this one, default inference.py),
SAGEMAKER_BIND_TO_PORT (default 8080), SAGEMAKER_BIND_HOST (default 127.0.0.1; the image
sets 0.0.0.0), SAGEMAKER_MAX_PAYLOAD_IN_MB (default 6, SageMaker's real-time limit),
SAGEMAKER_MODEL_SERVER_WORKERS, SAGEMAKER_MODEL_SERVER_TIMEOUT (seconds a worker may take
to load the model, default 300).
SIGTERM stops accepting, lets in-flight requests finish (up to a few seconds), exits 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
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
RESTARTS_PER_MINUTE = 5


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
    """Threaded server holding the loaded model, the handlers and the in-flight count; at
    most ``connections`` are served at once (the accept loop waits for a free slot)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, listener: socket.socket, handlers: ModuleType, model: Any, limit: int,
                 connections: int) -> None:
        super().__init__(listener.getsockname()[:2], RequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.handlers = handlers
        self.model = model
        self.max_payload = limit
        self.inflight = 0
        self.idle = threading.Condition()
        self.slots = threading.BoundedSemaphore(connections)
        self.stopping = False

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self.slots.acquire(timeout=0.2):
            if self.stopping:
                self.shutdown_request(request)
                return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.inflight and (left := deadline - time.monotonic()) > 0:
                self.idle.wait(left)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: no new connection per request
    disable_nagle_algorithm = True  # TCP_NODELAY: small responses leave at once
    wbufsize = 1 << 16  # headers and body go out in one write, flushed per request
    timeout = 60  # idle keep-alive connections are closed after this
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
        body = self.read_body()
        if body is None:
            return
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

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 411/400/413."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        length = self.content_length()
        return None if length is None else self.rfile.read(length)

    def read_chunked(self) -> bytes | None:
        """A chunked body (RFC 9112 7.1), refused with 413 as soon as it outgrows the limit."""
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                self.error(400, "Malformed chunked body.")
                return None
            if chunk == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailer fields: ignored
                return b"".join(parts)
            size += chunk
            if size > self.server.max_payload:
                self.close_connection = True
                self.too_large(size)
                return None
            parts.append(self.rfile.read(chunk))
            self.rfile.readline(16)  # the CRLF after the chunk

    def content_length(self) -> int | None:
        """The body size, or None after answering 411/400/413 (decided before any read)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True  # the body's end is unknown: drop the connection
            self.error(411, "Content-Length (or Transfer-Encoding: chunked) is required.")
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
            self.too_large(length)
            self.wfile.flush()
            self.drain(length)
            return None
        return length

    def too_large(self, length: int) -> None:
        self.error(413, f"Payload of {length} bytes exceeds the {self.server.max_payload} byte "
                   "limit; send smaller batches.")

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
        answered = super().handle_expect_100()
        self.wfile.flush()  # now, not with the response: the client waits for it to send
        return answered

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


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def worker(listen_fd: int, ready_fd: int, go_fd: int) -> int:
    """One worker: load the model, say so, wait for the port to open, serve until SIGTERM."""
    base = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
    listener = socket.socket(fileno=listen_fd)
    # workers share the socket: when another worker took the connection this one was woken
    # for, accept() must not block (it would hold the loop, and SIGTERM, until the next one)
    listener.setblocking(False)
    try:
        handlers = load_handlers(os.environ.get("SAGEMAKER_PROGRAM", "inference.py"))
        model = handlers.model_fn(str(base / "model"))
        limit = int(_setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6) * 1024 * 1024)
        connections = max(1, int(_setting("SAGEPIPE_SERVER_CONNECTIONS", 32)))
    except Exception as e:
        traceback.print_exc()
        print(f"cannot start the model server: {type(e).__name__}: {e}", file=sys.stderr,
              flush=True)
        return 1
    server = InferenceServer(listener, handlers, model, limit, connections)

    def stop(signum: int, _frame: object) -> None:
        server.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    if os.read(go_fd, 1) != b"1":  # the parent went away before opening the port
        return 1
    server.serve_forever(poll_interval=0.2)
    server.wait_idle(timeout=5)
    return 0


def _close(proc: subprocess.Popen[bytes], pipe: str) -> None:
    """Close a worker's pipe end once (the attribute becomes -1: fds are reused)."""
    fd = getattr(proc, pipe, -1)
    if fd >= 0:
        os.close(fd)
        setattr(proc, pipe, -1)


class Workers:
    """The worker processes sharing one listening socket."""

    def __init__(self, listener: socket.socket, count: int) -> None:
        self.listener, self.count = listener, count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts: list[float] = []

    def spawn(self, timeout: float) -> subprocess.Popen[bytes] | None:
        """Start one worker and wait until its model is loaded (None if it failed)."""
        return self.ready(self.start(), timeout)

    def start(self) -> subprocess.Popen[bytes]:
        """Start one worker process; it loads its model while the caller goes on."""
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        fds = (self.listener.fileno(), ready_w, go_r)
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", *map(str, fds)],
            pass_fds=fds)
        os.close(ready_w)
        os.close(go_r)
        proc.go = go_w  # type: ignore[attr-defined]
        proc.ready_fd = ready_r  # type: ignore[attr-defined]
        return proc

    @staticmethod
    def ready(proc: subprocess.Popen[bytes], timeout: float) -> subprocess.Popen[bytes] | None:
        """``proc`` once it says its model is loaded; None (and killed) if it fails or
        takes longer than ``timeout`` seconds."""
        ready_r = proc.ready_fd  # type: ignore[attr-defined]
        ready, _, _ = select.select([ready_r], [], [], max(0.0, timeout))
        ok = bool(ready) and os.read(ready_r, 1) == b"1"
        _close(proc, "ready_fd")
        if not ok:
            proc.kill()
            proc.wait()
            _close(proc, "go")
            return None
        return proc

    @staticmethod
    def go(proc: subprocess.Popen[bytes]) -> None:
        os.write(proc.go, b"1")  # type: ignore[attr-defined]
        _close(proc, "go")

    def supervise(self, stopping: threading.Event, timeout: float) -> int:
        """Replace workers that die, within RESTARTS_PER_MINUTE; 1 if that is exceeded."""
        while not stopping.wait(0.5):
            for i, proc in enumerate(self.procs):
                if proc.poll() is None:
                    continue
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                print(f"worker {proc.pid} exited ({proc.returncode})", file=sys.stderr,
                      flush=True)
                if len(self.restarts) > RESTARTS_PER_MINUTE:
                    print("workers keep dying: stopping the container", file=sys.stderr,
                          flush=True)
                    return 1
                new = self.spawn(timeout)
                if new is None:
                    return 1
                self.go(new)
                self.procs[i] = new
        return 0

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"] and len(argv) == 4:
        return worker(*(int(a) for a in argv[1:]))
    if argv not in ([], ["serve"]):
        print(f"usage: serve.py [serve]; got {' '.join(argv)}", file=sys.stderr)
        return 2
    try:
        port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
        count = int(_setting("SAGEMAKER_MODEL_SERVER_WORKERS", os.cpu_count() or 1))
        load_timeout = _setting("SAGEMAKER_MODEL_SERVER_TIMEOUT", 300)
        if count < 1:
            raise ValueError(f"SAGEMAKER_MODEL_SERVER_WORKERS must be 1 or more, got {count}")
    except ValueError as e:
        print(f"cannot start the model server: {e}", file=sys.stderr)
        return 1
    host = os.environ.get("SAGEMAKER_BIND_HOST", "127.0.0.1")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        print(f"cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1
    workers = Workers(listener, count)
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        print(f"received {signal.Signals(signum).name}: shutting down", flush=True)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # the workers load their models side by side (one per vCPU, so loading takes about as
    # long as one worker's); every worker has its model before the port opens
    started = [workers.start() for _ in range(count)]
    deadline = time.monotonic() + load_timeout
    for proc in started:
        loaded = None if stopping.is_set() else workers.ready(proc, deadline - time.monotonic())
        if loaded is None:  # the others never get the go: closing it ends them at once
            for other in started:
                _close(other, "ready_fd")
                _close(other, "go")
            workers.procs = [p for p in started if p.poll() is None]
            workers.stop()
            return 0 if stopping.is_set() else 1
        workers.procs.append(loaded)
    listener.listen(InferenceServer.request_queue_size)
    for proc in workers.procs:
        workers.go(proc)
    limit = int(_setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6) * 1024 * 1024)
    print(f"serving on http://{host}:{port} with {count} worker(s) (max payload {limit} "
          "bytes)", flush=True)
    code = workers.supervise(stopping, load_timeout)
    workers.stop()
    listener.close()
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
