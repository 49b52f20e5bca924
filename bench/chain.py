"""The bare chain: the four container scripts run one after another by a plain script.

No orchestrator, no object store, no job runner: each script reads the previous
one's output folder directly, with the same arguments, hyperparameters and
SageMaker-contract environment the pipeline's jobs give it. Then the serving
container starts, answers /ping and one invocation, and is stopped. This is the
floor the pipeline's orchestration overhead is measured against; the Metaflow peer
(``bench/peers/``) calls the same functions from its steps.

Only the standard library, so the peer's own interpreter can run it too:

    python bench/chain.py --data DIR_WITH_CSV --work SCRATCH_DIR
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CONTAINERS", "HYPERPARAMETERS", "evaluate", "preprocess", "serve_once", "train"]

CONTAINERS = Path(__file__).resolve().parents[1] / "containers"
LABEL = "target"
# deployments/settings/local.yaml and PipelineConfig's split defaults; the run tells the
# preprocess job "classification" when the data's first rows show a few classes
HYPERPARAMETERS = {"model": "linear", "C": "1.0", "max_iter": "1000", "label_column": LABEL}
SPLIT_ARGS = ["--label-column", LABEL, "--problem", "classification",
              "--validation-fraction", "0.15", "--test-fraction", "0.15", "--seed", "42"]


def _run(command: list[str], env: dict[str, str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(command, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        raise SystemExit(f"{command[1]} exited {done.returncode}; see {log}")


def preprocess(data_dir: Path, work: Path) -> Path:
    """Split the CSV in ``data_dir``; returns the folder holding train/validation/test."""
    out = work / "preprocess" / "output"
    _run([sys.executable, str(CONTAINERS / "preprocess" / "preprocess.py"),
          "--input-dir", str(data_dir), "--output-dir", str(out), *SPLIT_ARGS],
         {"SAGEMAKER_BASE_DIR": str(work / "preprocess")}, work / "chain.log")
    return out


def train(splits: Path, work: Path) -> Path:
    """Train as the sagemaker-training toolkit would start it; returns the model folder."""
    base = work / "train"
    model = base / "model"
    model.mkdir(parents=True, exist_ok=True)
    flags = [item for key, value in HYPERPARAMETERS.items() for item in (f"--{key}", value)]
    env = {"SAGEMAKER_BASE_DIR": str(base), "SM_MODEL_DIR": str(model),
           "SM_OUTPUT_DATA_DIR": str(base / "output" / "data"),
           "SM_CHANNELS": json.dumps(["train", "validation", "schema"]),
           "SM_CHANNEL_TRAIN": str(splits / "train"),
           "SM_CHANNEL_VALIDATION": str(splits / "validation"),
           "SM_CHANNEL_SCHEMA": str(splits / "schema"),
           "SM_HPS": json.dumps({k: _decode(v) for k, v in HYPERPARAMETERS.items()})}
    _run([sys.executable, str(CONTAINERS / "train" / "train.py"), *flags], env,
         work / "chain.log")
    return model


def evaluate(model: Path, splits: Path, work: Path) -> dict[str, object]:
    """Score the model on the test split; returns evaluation.json."""
    out = work / "evaluate" / "output" / "evaluation"
    _run([sys.executable, str(CONTAINERS / "evaluate" / "evaluate.py"),
          "--model-dir", str(model), "--test-dir", str(splits / "test"),
          "--output-dir", str(out)],
         {"SAGEMAKER_BASE_DIR": str(work / "evaluate")}, work / "chain.log")
    result: dict[str, object] = json.loads((out / "evaluation.json").read_text())
    return result


def serve_once(model: Path, splits: Path, work: Path, *, timeout: float = 120.0) -> str:
    """Start the serving container on ``model``, wait for /ping, invoke once, stop it."""
    base = model.parent  # serve.py reads {SAGEMAKER_BASE_DIR}/model
    port = _free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
           "SAGEMAKER_BIND_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    with (work / "chain.log").open("ab") as log:
        server = subprocess.Popen([sys.executable, str(CONTAINERS / "serve" / "serve.py"),
                                   "serve"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _ping(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the serving container did not come up; see {work}")
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/invocations", body=_sample_row(splits / "test"),
                     headers={"Content-Type": "text/csv", "Accept": "application/json"})
        response = conn.getresponse()
        answer = response.read().decode()
        conn.close()
        if response.status != 200:
            raise SystemExit(f"smoke test answered {response.status}: {answer}")
        return answer
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _sample_row(test_dir: Path) -> bytes:
    """The first test row without its label: the pipeline's smoke payload."""
    with next(iter(sorted(test_dir.glob("*.csv")))).open() as fh:
        header = fh.readline().rstrip("\n").split(",")
        values = fh.readline().rstrip("\n").split(",")
    at = header.index(LABEL)
    return (",".join(v for i, v in enumerate(values) if i != at) + "\n").encode()


def _ping(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _decode(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with the CSV")
    parser.add_argument("--work", required=True, type=Path, help="empty scratch folder")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        seconds[step] = round(time.monotonic() - clock, 3)
        clock = time.monotonic()

    splits = preprocess(args.data, args.work)
    lap("preprocess")
    model = train(splits, args.work)
    lap("train")
    evaluate(model, splits, args.work)
    lap("evaluate")
    answer = serve_once(model, splits, args.work)
    lap("serve")
    print(json.dumps({"seconds": seconds, "smoke_test": answer[:200]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
