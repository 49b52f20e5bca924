"""Shared fixtures: a local runtime in a temporary directory, with tiny fake images."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# `sagepipe run` in a test runs in its own process, not in a warm process (sagepipe/warm.py)
# that would outlive the test; tests/unit/test_warm.py turns it on where it is the subject
os.environ["SAGEPIPE_WARM"] = "off"
os.environ["SAGEPIPE_WARM_DIR"] = tempfile.mkdtemp(prefix="spw-")  # `sagepipe down` looks here
# Cached task results of one test session must not leak into the next (moto's account
# ids and regions repeat, so cache keys would too): a fresh result store per session.
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="sagepipe-results-")

from sagepipe.tasks.local import local_clients, teardown
from sagepipe.tasks.local.images import registry_host

FAKE_TRAIN = r'''
import json, os, pathlib, sys, time
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
hps = json.loads(os.environ["SM_HPS"])
print("training with", sorted(hps), flush=True)
if hps.get("sleep"):
    time.sleep(float(hps["sleep"]))
if hps.get("crash"):
    (base / "output").mkdir(parents=True, exist_ok=True)
    (base / "output" / "failure").write_text("ValueError: C must be positive, got -1")
    sys.exit(1)
if hps.get("die"):
    sys.exit(3)
rows = (pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "data.csv").read_text().splitlines()
model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
(model_dir / "model.json").write_text(json.dumps({"rows": len(rows) - 1, "hps": hps}))
print("secret visible:", "AWS_SECRET_ACCESS_KEY" in os.environ, flush=True)
'''

FAKE_PROCESS = r'''
import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--input"); p.add_argument("--output")
a = p.parse_args()
text = (pathlib.Path(a.input) / "data.csv").read_text()
out = pathlib.Path(a.output); out.mkdir(parents=True, exist_ok=True)
(out / "upper.csv").write_text(text.upper())
print("processed", len(text), "bytes")
'''


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a slow test first, then those with a flow test, then the rest; each
    module kept whole and in its own order. `make test` hands whole files to parallel
    workers in this order: a long file handed out last would keep one worker busy long
    after the others ran out of work."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    rank: dict[str, int] = {}
    for item in items:
        weight = 0 if item.get_closest_marker("slow") else (
            1 if item.get_closest_marker("flow") else 2)
        rank[module(item)] = min(rank.get(module(item), 2), weight)
    items.sort(key=lambda item: rank[module(item)])  # stable: the order within a module stays


def training_request(image: str, name: str, **hps: str) -> dict[str, Any]:
    """A valid CreateTrainingJob request for the fake ``train`` image reading s3://bkt/in/."""
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::000000000000:role/sm",
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": hps,
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": "s3://bkt/in/"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://bkt/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                           "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


@pytest.fixture()
def fake_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Local clients under tmp_path with images ``train`` and ``process`` and bucket ``bkt``."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    root = tmp_path / "state"
    clients = local_clients(root)
    images = {}
    for name, dockerfile, script in (
        ("train", "ENV SAGEMAKER_PROGRAM train.py\n", FAKE_TRAIN),
        ("process", 'ENTRYPOINT ["python3", "/opt/ml/code/process.py"]\n', FAKE_PROCESS),
    ):
        folder = tmp_path / "containers" / name
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text("FROM python:3.11-slim\n" + dockerfile)
        (folder / f"{name}.py").write_text(script)
        digest = clients["ecr"].push(f"t-{name}", "v1", folder, root)
        images[name] = f"{registry_host('us-east-1')}/t-{name}@{digest}"
    s3 = clients["s3"]
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="in/data.csv", Body=b"a,b\n1,2\n3,4\n")
    yield {"clients": clients, "sm": clients["sagemaker"], "s3": s3, "images": images,
           "root": root, "training_request": lambda name, **hps: training_request(
               images["train"], name, **hps)}
    teardown(root)
