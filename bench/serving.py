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
"""

from __future__ import annotations

import http.client
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .proc import median

__all__ = ["measure_serving"]

SERVE = Path(__file__).resolve().parents[1] / "containers" / "serve"


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
                    requests: dict[int, int], rounds: int) -> dict[str, Any]:
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
    return out
