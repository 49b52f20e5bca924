"""Measurement 5: the local endpoint vs in-process ``predict`` on the same rows.

The endpoint is the one a pipeline run of this benchmark deployed through the local
runtime (the serving container as an HTTP server). Three ways to get predictions
for the same rows, one request at a time:

* ``endpoint``: a keep-alive HTTP client straight to the endpoint's port: what
  the serving container costs (CSV parse, predict, JSON answer, HTTP);
* ``sagepipe client``: ``invoke_endpoint`` of the local runtime's
  ``sagemaker-runtime`` client, as ``sagepipe invoke`` and the smoke test call it
  (adds request validation and the endpoint lookup);
* ``in-process``: the container's own ``predict_fn`` on the parsed rows in this
  process: the limit.

Each is timed per request; the figures are medians over interleaved rounds of
throughput (rows/s), p50 and p99 latency, at batch 1 and batch 100.

Then the serving container's scaling: ``serve.py`` started on the deployed model with
1 and with 2 worker processes (``SAGEMAKER_MODEL_SERVER_WORKERS``), each under 4
concurrent keep-alive clients (``bench/load.py``, one process each, raw sockets) sending
batches of 100 rows for a fixed time; throughput of 2 workers over that of 1, median
over interleaved rounds.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .proc import free_port, median

__all__ = ["measure_serving"]

SERVE = Path(__file__).resolve().parents[1] / "containers" / "serve"
LOAD = Path(__file__).resolve().parent / "load.py"
CLIENTS = 4


def _inference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_inference", SERVE / "inference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rows(csv_path: Path, label: str) -> list[str]:
    """Feature values of every data row, as the CSV lines a client would send."""
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    at = header.index(label)
    return [",".join(v for i, v in enumerate(line.split(",")) if i != at)
            for line in lines[1:] if line]


def _batches(rows: list[str], size: int, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        start = (i * size) % len(rows)
        chunk = (rows + rows)[start:start + size]
        out.append(("\n".join(chunk) + "\n").encode())
    return out


def _timed(call: Callable[[bytes], Any], bodies: list[bytes], rows: int) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        call(body)
        latencies.append(time.perf_counter() - t)
    total = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"rows_per_second": len(bodies) * rows / total,
            "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000}


class _KeepAlive:
    """One persistent HTTP/1.1 connection to the endpoint's server."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def __call__(self, body: bytes) -> bytes:
        self.conn.request("POST", "/invocations", body=body,
                          headers={"Content-Type": "text/csv", "Accept": "application/json"})
        response = self.conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"endpoint answered {response.status}: {answer[:200]!r}")
        return answer


def measure_serving(state: Path, endpoint: str, csv_path: Path, label: str, *,
                    requests: dict[int, int], rounds: int, work: Path, python: Path,
                    load_seconds: float) -> dict[str, Any]:
    """``requests`` maps batch size -> timed requests per round."""
    from sagepipe.tasks.local import local_clients

    clients = local_clients(state)
    port, _ = clients["sagemaker"].endpoints.target(endpoint, "InvokeEndpoint")
    deployment = clients["sagemaker"].state.get("endpoint", endpoint)["current"]
    inference = _inference()
    model = inference.model_fn(str(Path(deployment["dir"]) / "opt" / "ml" / "model"))
    rows = _rows(csv_path, label)
    runtime = clients["sagemaker-runtime"]
    http_client = _KeepAlive(port)

    def via_client(body: bytes) -> bytes:
        return bytes(runtime.invoke_endpoint(EndpointName=endpoint, Body=body,
                                             ContentType="text/csv",
                                             Accept="application/json")["Body"].read())

    out: dict[str, Any] = {"endpoint": endpoint, "requests_per_round": requests,
                           "rounds": rounds, "batches": {}}
    for size, count in requests.items():
        bodies = _batches(rows, size, count)
        parsed = {body: np.array([r.split(",") for r in body.decode().splitlines()],
                                 dtype=np.float64) for body in set(bodies)}
        ways: dict[str, Callable[[bytes], Any]] = {
            "endpoint": http_client,
            "sagepipe client": via_client,
            "in-process": lambda body, parsed=parsed: inference.predict_fn(parsed[body], model),
        }
        for call in ways.values():  # warm-up: connections, caches, first-call costs
            for body in bodies[: max(20, count // 10)]:
                call(body)
        samples: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
        for _ in range(rounds):
            for way, call in ways.items():
                samples[way].append(_timed(call, bodies, size))
        figures = {way: {k: round(median([s[k] for s in runs]), 3) for k in runs[0]}
                   for way, runs in samples.items()}
        limit = figures["in-process"]["rows_per_second"]
        for way in figures:
            figures[way]["share_of_in_process"] = round(
                figures[way]["rows_per_second"] / limit, 3)
        out["batches"][str(size)] = figures
    load_body = work / "serving-body-100.csv"
    load_body.write_bytes(_batches(rows, 100, 1)[0])
    out["workers"] = measure_workers(Path(deployment["dir"]) / "opt" / "ml", load_body, python,
                                     rounds=rounds, seconds=load_seconds, logs=work / "logs")
    return out


def _serve(base: Path, workers: int, python: Path, log: Path) -> tuple[subprocess.Popen[bytes],
                                                                      int]:
    """serve.py on the model in ``base``/model with ``workers`` workers, answering /ping."""
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SAGEMAKER_BIND_HOST": "127.0.0.1", "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        server = subprocess.Popen([str(python), str(SERVE / "serve.py"), "serve"], env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    server.kill()
    raise RuntimeError(f"serve.py with {workers} worker(s) did not answer /ping; see {log}")


def _load(port: int, body: Path, python: Path, seconds: float) -> tuple[int, int]:
    """(requests answered, errors) of CLIENTS concurrent clients over ``seconds``."""
    start = time.time() + 1.0  # every client connected and started before the clock runs
    clients = [subprocess.Popen([str(python), str(LOAD), str(port), str(body), str(start),
                                 str(start + seconds)], stdout=subprocess.PIPE)
               for _ in range(CLIENTS)]
    answers = [json.loads(c.communicate(timeout=seconds + 60)[0]) for c in clients]
    return sum(a["requests"] for a in answers), sum(a["errors"] for a in answers)


def measure_workers(base: Path, body: Path, python: Path, *, rounds: int, seconds: float,
                    logs: Path) -> dict[str, Any]:
    """Rows/s of serve.py with 1 and 2 workers under CLIENTS concurrent clients."""
    rows = len(body.read_bytes().splitlines())
    samples: dict[int, list[float]] = {1: [], 2: []}
    errors = 0
    for r in range(rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            server, port = _serve(base, workers, python, logs / f"serve-{workers}.log")
            try:
                done, failed = _load(port, body, python, seconds)
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
            errors += failed
            samples[workers].append(done * rows / seconds)
    one, two = median(samples[1]), median(samples[2])
    return {"clients": CLIENTS, "batch": rows, "seconds_per_round": seconds,
            "rows_per_second": {"1": round(one), "2": round(two)},
            "speedup": round(two / one, 3), "errors": errors}
