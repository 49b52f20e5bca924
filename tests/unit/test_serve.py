"""The inference container's server (serve.py + inference.py), run as a real process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"
SERVE = CONTAINERS / "serve" / "serve.py"
TRAIN = CONTAINERS / "train" / "train.py"
LIMIT_MB = 0.01  # 10485 bytes: room for small batches, easy to exceed in a test


def clean_env(base: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    return {**env, "SAGEMAKER_BASE_DIR": str(base), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int

    def request(
        self, method: str, path: str, body: bytes | str | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            names = {k.replace("_", "-"): v for k, v in headers.items()}
            conn.request(method, path, body=body, headers=names)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def invoke(self, body: bytes | str, **headers: str) -> tuple[int, bytes]:
        status, _, data = self.request("POST", "/invocations", body, **headers)
        return status, data


def start(base: Path, **env: str) -> Server:
    """Start serve.py and wait until /ping answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVE), "serve"],
        env=clean_env(base, SAGEMAKER_BIND_TO_PORT=str(port), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process, port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()[1]}")
        try:
            if server.request("GET", "/ping")[0] == 200:
                return server
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not answer /ping")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """{base}/model holds a logistic regression trained by train.py on the breast cancer data."""
    base = tmp_path_factory.mktemp("ml")
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [str(c).replace(" ", "_") for c in data.columns]
    (base / "input" / "data" / "train").mkdir(parents=True)
    data.to_csv(base / "input" / "data" / "train" / "train.csv", index=False)
    result = subprocess.run(
        [sys.executable, str(TRAIN)],
        env=clean_env(base, SM_HPS=json.dumps({"problem": "binary", "model": "linear"})),
        capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return base


@pytest.fixture(scope="module")
def server(base: Path) -> Iterator[Server]:
    server = start(base, SAGEMAKER_MAX_PAYLOAD_IN_MB=str(LIMIT_MB))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def rows(base: Path) -> np.ndarray:
    frame = pd.read_csv(base / "input" / "data" / "train" / "train.csv")
    return frame.drop(columns=["target"]).to_numpy()[:3]


@pytest.fixture(scope="module")
def expected(base: Path, rows: np.ndarray) -> list[float]:
    """The trained pipeline's probability of class 1, in-process."""
    features = json.loads((base / "model" / "model.json").read_text())["feature_columns"]
    pipeline = joblib.load(base / "model" / "model.joblib")
    return pipeline.predict_proba(pd.DataFrame(rows, columns=features))[:, 1].tolist()


def csv_body(rows: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def test_csv_in_json_out(server: Server, rows: np.ndarray, expected: list[float]) -> None:
    status, body = server.invoke(csv_body(rows), Content_Type="text/csv")
    assert status == 200
    predictions = json.loads(body)["predictions"]
    assert [p["probabilities"]["1"] for p in predictions] == pytest.approx(expected, abs=1e-12)
    assert [p["label"] for p in predictions] == [int(p >= 0.5) for p in expected]
    # "probability" is that of the predicted label
    assert [p["probability"] for p in predictions] == pytest.approx(
        [max(p, 1 - p) for p in expected], abs=1e-12)


def test_csv_out_is_label_comma_probability(server: Server, rows: np.ndarray) -> None:
    status, body = server.invoke(csv_body(rows), Content_Type="text/csv", Accept="text/csv")
    assert status == 200
    lines = body.decode().splitlines()
    assert len(lines) == 3
    for line in lines:
        label, probability = line.split(",")
        assert label in {"0", "1"} and 0.5 <= float(probability) <= 1.0


def test_json_payload_shapes(
    server: Server, base: Path, rows: np.ndarray, expected: list[float]
) -> None:
    features = json.loads((base / "model" / "model.json").read_text())["feature_columns"]
    payloads = [
        {"instances": rows.tolist()},
        rows.tolist(),
        {"instances": [dict(zip(features, row, strict=True)) for row in rows.tolist()]},
    ]
    for payload in payloads:
        status, body = server.invoke(json.dumps(payload), Content_Type="application/json")
        assert status == 200, body
        got = [p["probabilities"]["1"] for p in json.loads(body)["predictions"]]
        assert got == pytest.approx(expected, abs=1e-12)


def test_keep_alive_serves_many_requests_on_one_connection(
    server: Server, rows: np.ndarray
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.connect()
    sock = conn.sock
    for _ in range(5):
        headers = {"Content-Type": "text/csv", "Accept": "*/*"}
        conn.request("POST", "/invocations", body=csv_body(rows[:1]), headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        response.read()
    assert conn.sock is sock  # never reconnected
    conn.close()


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ("1,2,3\n", {"Content_Type": "text/csv"}, 400, "Expected 30 values per row"),
        ("1.0," * 29 + "abc\n", {"Content_Type": "text/csv"}, 400,
         "Non-numeric value 'abc' for 'worst_fractal_dimension' in row 1"),
        ('{"instances": [[1, 2', {"Content_Type": "application/json"}, 400, "Invalid JSON"),
        ('{"instances": [["x"' + ", 1" * 29 + "]]}", {"Content_Type": "application/json"}, 400,
         "Non-numeric value 'x' for 'mean_radius' in instance 1"),
        ('{"instances": [{"mean_radius": 1}]}', {"Content_Type": "application/json"}, 400,
         "Instance 1 lacks feature(s) mean_texture"),
        ('{"instances": [7]}', {"Content_Type": "application/json"}, 400,
         "Instance 1 is int"),
        ("", {"Content_Type": "text/csv"}, 400, "Empty request body"),
        ("a", {"Content_Type": "application/xml"}, 415, "text/csv or application/json"),
        ("1," * 29 + "1", {"Content_Type": "text/csv", "Accept": "image/png"}, 406, "image/png"),
        ("1," * 6000, {"Content_Type": "text/csv"}, 413, "exceeds the 10485 byte limit"),
    ],
    ids=["columns", "non-numeric", "bad-json", "json-string", "json-lacks", "json-scalar",
         "empty", "type", "accept", "size"],
)
def test_bad_requests_get_a_clear_4xx(
    server: Server, body: str, headers: dict[str, str], status: int, message: str
) -> None:
    got, data = server.invoke(body, **headers)
    assert got == status
    assert message in json.loads(data)["error"]


def test_wrong_column_count_says_expected_and_got(server: Server, rows: np.ndarray) -> None:
    status, data = server.invoke(csv_body(rows[:, :29]), Content_Type="text/csv")
    assert status == 400
    assert json.loads(data)["error"] == "Expected 30 values per row, got 29 in row 1."


def test_missing_content_length_is_411(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n\r\n")
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 411 ")


def test_unknown_paths_are_404_and_ping_is_200(server: Server) -> None:
    assert server.request("GET", "/ping")[0] == 200
    assert server.request("GET", "/nowhere")[0] == 404
    assert server.request("GET", "/invocations")[0] == 404
    status, _, body = server.request("POST", "/predict", "1", Content_Type="text/csv")
    assert status == 404 and "POST /invocations" in json.loads(body)["error"]


def test_sigterm_stops_the_server_cleanly(base: Path) -> None:
    server = start(base)
    server.process.send_signal(signal.SIGTERM)
    stdout, _ = server.process.communicate(timeout=15)
    assert server.process.returncode == 0
    assert "stopped" in stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_a_model_that_does_not_load_stops_the_server_before_it_listens(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "model").mkdir()
    result = subprocess.run(
        [sys.executable, str(SERVE), "serve"],
        env=clean_env(tmp_path, SAGEMAKER_BIND_TO_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "lacks model.joblib and model.json" in result.stderr
    assert "serving on" not in result.stdout


# ---- the production server: HTTP details, workers, bounded connections ---------------------


def raw(port: int, data: bytes, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def test_expect_100_continue_is_answered_before_the_body_is_sent(
        server: Server, rows: np.ndarray) -> None:
    """curl and AWS's BYOC test scripts wait for the interim answer before sending."""
    body = csv_body(rows[:1]).encode()
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with raw(server.port, head, timeout=1) as sock:
        interim = sock.recv(64)  # before the body: a buffered 100 would time out here
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        status, data = read_response(sock)
    assert status == 200 and len(json.loads(data)["predictions"]) == 1


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_a_chunked_body_is_read_within_the_payload_limit(server: Server,
                                                         rows: np.ndarray) -> None:
    """Batch transform with MaxPayloadInMB=0 streams chunked requests."""
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with raw(server.port, head + chunked(csv_body(rows).encode())) as sock:
        status, data = read_response(sock)
    assert status == 200 and len(json.loads(data)["predictions"]) == len(rows)
    too_big = chunked(csv_body(np.repeat(rows, 40, axis=0)).encode(), size=4096)
    with raw(server.port, head + too_big) as sock:
        status, data = read_response(sock)
    assert status == 413 and "exceeds" in json.loads(data)["error"]


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


def test_workers_follow_the_setting_and_a_dead_one_is_replaced(base: Path,
                                                               rows: np.ndarray) -> None:
    server = start(base, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    try:
        workers = children(server.process.pid)
        assert len(workers) == 2
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = children(server.process.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and victim not in now  # replaced, with its model loaded
        for _ in range(6):  # whichever worker takes the connection answers
            assert server.invoke(csv_body(rows[:1]), Content_Type="text/csv")[0] == 200
    finally:
        server.process.terminate()
        out, _ = server.process.communicate(timeout=20)
    assert server.process.returncode == 0 and "stopped" in out


def test_connections_are_bounded_per_worker(base: Path, rows: np.ndarray) -> None:
    server = start(base, SAGEMAKER_MODEL_SERVER_WORKERS="1", SAGEPIPE_SERVER_CONNECTIONS="1")
    try:
        holder = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        holder.request("GET", "/ping")  # keep-alive: this connection keeps its slot
        assert holder.getresponse().read() == b""
        waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
        with pytest.raises(TimeoutError):  # no thread is started for it meanwhile
            waiting.request("GET", "/ping")
            waiting.getresponse()
        waiting.close()
        holder.close()  # the slot frees: the next connection is served
        assert server.request("GET", "/ping")[0] == 200
    finally:
        server.process.terminate()
        server.process.wait(timeout=20)


def test_predictions_run_with_assume_finite_in_every_request_thread(base: Path) -> None:
    """sklearn's config is thread-local: set once at load, it never reached the threads."""
    import threading

    import sklearn

    sys.path.insert(0, str(CONTAINERS / "serve"))
    try:
        import inference
    finally:
        sys.path.pop(0)
    model = inference.model_fn(str(base / "model"))
    seen: list[bool] = []
    estimator = model.estimator

    class Watch:
        def __getattr__(self, name: str) -> object:
            return getattr(estimator, name)

        def predict_proba(self, frame: object) -> object:
            seen.append(sklearn.get_config()["assume_finite"])
            return estimator.predict_proba(frame)

    import dataclasses

    watched = dataclasses.replace(model, estimator=Watch())
    thread = threading.Thread(target=inference.predict_fn,
                              args=([[1.0] * len(model.input_columns)], watched))
    thread.start()
    thread.join()
    assert seen == [True]


# A handler module whose model_fn returns only once `expected` workers are loading at the
# same time (each leaves a file named by its pid), or fails after `wait` seconds: workers
# loaded one after another can never pass it.
_RENDEZVOUS = '''
import os, time
from pathlib import Path

def model_fn(model_dir):
    here = Path(model_dir)
    (here / f"loading-{os.getpid()}").touch()
    deadline = time.monotonic() + float(os.environ["RENDEZVOUS_WAIT"])
    while len(list(here.glob("loading-*"))) < int(os.environ["RENDEZVOUS_WORKERS"]):
        if time.monotonic() > deadline:
            raise RuntimeError("loaded alone: the other workers had not started")
        time.sleep(0.05)
    return "model"

def input_fn(body, content_type):
    return body

def predict_fn(data, model):
    return data

def output_fn(prediction, accept):
    return prediction, "text/plain"
'''


def test_workers_load_their_models_side_by_side(tmp_path: Path) -> None:
    """Start-up takes one model load, not one per worker: each worker is started before
    any has finished loading."""
    (tmp_path / "model").mkdir()
    handler = tmp_path / "rendezvous.py"
    handler.write_text(_RENDEZVOUS)
    server = start(tmp_path, SAGEMAKER_PROGRAM=str(handler), SAGEMAKER_MODEL_SERVER_WORKERS="3",
                   RENDEZVOUS_WORKERS="3", RENDEZVOUS_WAIT="20")
    try:
        assert len(list((tmp_path / "model").glob("loading-*"))) == 3
        assert server.invoke("ping", Content_Type="text/plain") == (200, b"ping")
    finally:
        server.process.terminate()
        server.process.wait(timeout=20)


def test_one_worker_failing_to_load_stops_the_others_and_the_server(tmp_path: Path) -> None:
    """Two workers load; one fails: the server exits 1 without opening the port, and the
    worker that loaded is not left behind."""
    (tmp_path / "model").mkdir()
    handler = tmp_path / "rendezvous.py"
    handler.write_text(_RENDEZVOUS)
    port = free_port()
    # three workers wanted at once but only two start: each fails after its wait
    result = subprocess.run(
        [sys.executable, str(SERVE), "serve"],
        env=clean_env(tmp_path, SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_PROGRAM=str(handler),
                      SAGEMAKER_MODEL_SERVER_WORKERS="2", RENDEZVOUS_WORKERS="3",
                      RENDEZVOUS_WAIT="1"),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "loaded alone" in result.stderr
    assert "serving on" not in result.stdout
    pids = [int(p.name.split("-")[1]) for p in (tmp_path / "model").glob("loading-*")]
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
