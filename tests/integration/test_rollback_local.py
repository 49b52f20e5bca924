"""A better model whose server cannot start is rolled back; the old model keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import build_config
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import DeployRolledBack
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources, list_run_records

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
PROJECT = Path(__file__).resolve().parents[2]


def test_a_failed_update_rolls_back_and_notifies(tmp_path: Path) -> None:
    broken = tmp_path / "containers"
    shutil.copytree(PROJECT / "containers", broken)
    (broken / "serve" / "serve.py").write_text(
        "import sys\nprint('cannot start: port in use', flush=True)\nsys.exit(1)\n")
    base = {"project": "rb-demo", "runtime": {"kind": "local", "state_dir": str(tmp_path / "s")},
            "dataset_uri": "s3://rb-bucket/data/data.csv", "artifacts_uri": "s3://rb-bucket/p",
            "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.3},
            "endpoint": {"name": "rb-endpoint", "timeout_seconds": 60},
            "gate": {"threshold": 0.5}}
    weak = build_config({**base, "hyperparameters": {"model": "random_forest",
                                                     "n_estimators": 1, "max_depth": 1}})
    good = build_config({**base, "containers_dir": str(broken)})
    topic = ensure_local_resources(weak.runtime, "rb-bucket", "rb-demo-events")
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(tmp_path / "data.csv", index=False)
    clients = get_clients(weak.runtime)
    push_dataset(clients, tmp_path / "data.csv", weak.dataset_uri, "target")
    try:
        assert ml_pipeline(config=weak)["outcome"] == "deployed"
        live = clients.sagemaker.describe_endpoint(EndpointName="rb-endpoint")
        with pytest.raises(DeployRolledBack) as err:
            ml_pipeline(config=good)
        assert "cannot start: port in use" in str(err.value)
        after = clients.sagemaker.describe_endpoint(EndpointName="rb-endpoint")
        assert after["EndpointStatus"] == "InService"
        assert after["EndpointConfigName"] == live["EndpointConfigName"]
        assert "cannot start" in after["FailureReason"]
        answer = json.loads(invoke(clients, "rb-endpoint", ",".join(["1.0"] * 30) + "\n"))
        assert len(answer["predictions"]) == 1
        record = list_run_records(clients, weak.artifacts_uri, limit=1)[0]
        assert record["outcome"] == "rolled_back"
        assert record["decision"]["passed"] is True
        message = json.loads(clients.sns.messages(topic)[-1]["Message"])
        assert message["outcome"] == "rolled_back"
        assert "cannot start" in message["error"]["message"]
    finally:
        teardown(Path(weak.runtime.state_dir))
