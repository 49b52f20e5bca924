"""The pipeline with serverless endpoints and endpoint.staging_keep: false, on the local
runtime with sagepipe's own serving container: staging is kept when production did not
take the model, deleted (with its config) once production does; production runs nothing
while idle and answers after a cold start."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import build_config
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import DeployFailed
from sagepipe.tasks.local import teardown
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.local.images import registry_host
from sagepipe.tasks.local.serverless import IDLE_ENV
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources, list_run_records

pytestmark = [pytest.mark.flow, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
PROD, STAGING = "sls-prod", "sls-prod-staging"
ROW = ",".join(["14.0"] * 30) + "\n"


def current(clients: object, name: str) -> dict[str, object]:
    return dict(clients.sagemaker.state.get("endpoint", name)["current"])  # type: ignore[attr-defined]


def test_serverless_staging_is_kept_until_production_serves_then_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IDLE_ENV, "2")
    config = build_config({
        "project": "sls-demo", "runtime": {"kind": "local", "state_dir": str(tmp_path / "s")},
        "dataset_uri": "s3://sls-bucket/data/data.csv", "artifacts_uri": "s3://sls-bucket/p",
        "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.3},
        "hyperparameters": {"model": "random_forest", "n_estimators": 5, "max_depth": 2},
        "gate": {"threshold": 0.5},
        "endpoint": {"name": PROD, "staging_name": STAGING, "staging_keep": False,
                     "serverless": {"memory_mb": 1024, "max_concurrency": 2},
                     "timeout_seconds": 90}})
    ensure_local_resources(config.runtime, "sls-bucket", "sls-demo-events")
    clients = get_clients(config.runtime)
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(tmp_path / "data.csv", index=False)
    push_dataset(clients, tmp_path / "data.csv", config.dataset_uri, "target")
    sm = clients.sagemaker
    try:
        # production is broken before the run: a serverless endpoint whose container dies
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "Dockerfile").write_text('FROM python:3.11-slim\n'
                                           'ENTRYPOINT ["python3", "/opt/ml/code/serve.py"]\n')
        (broken / "serve.py").write_text("import sys\nprint('no model here')\nsys.exit(3)\n")
        digest = clients.ecr.push("b", "v1", broken, clients.local_root)
        image = f"{registry_host('us-east-1')}/b@{digest}"
        sm.create_model(ModelName="broken", ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
                        PrimaryContainer={"Image": image})
        sm.create_endpoint_config(EndpointConfigName="broken-cfg", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "broken",
            "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1}}])
        sm.create_endpoint(EndpointName=PROD, EndpointConfigName="broken-cfg")
        deadline = time.monotonic() + 60
        while sm.describe_endpoint(EndpointName=PROD)["EndpointStatus"] != "Failed":
            assert time.monotonic() < deadline
            time.sleep(0.1)

        # 1: staging takes the model, production cannot: staging is kept, serving it
        with pytest.raises(DeployFailed, match=f"Endpoint {PROD} is Failed"):
            ml_pipeline(config=config)
        record = list_run_records(clients, config.artifacts_uri, limit=1)[0]
        assert record["outcome"] == "failed" and "retired" not in record["staging_endpoint"]
        staging = sm.describe_endpoint(EndpointName=STAGING)
        assert staging["EndpointStatus"] == "InService"
        assert staging["ProductionVariants"][0]["CurrentServerlessConfig"] == {
            "MemorySizeInMB": 1024, "MaxConcurrency": 2}
        assert len(json.loads(invoke(clients, STAGING, ROW))["predictions"]) == 1

        # 2: production fixed (deleted): the next run deploys there and staging goes
        sm.delete_endpoint(EndpointName=PROD)
        second = ml_pipeline(config=config)
        assert second["outcome"] == "deployed", second.get("error")
        assert second["staging_endpoint"]["action"] == "updated"  # blue/green, serverless
        retired = second["staging_endpoint"]["retired"]
        assert (retired["deleted"], retired["endpoint_config"]) == (
            True, second["staging_endpoint"]["endpoint_config"])
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == [PROD]
        configs = {c["EndpointConfigName"] for c in sm.state.list("endpoint-config")}
        assert second["staging_endpoint"]["endpoint_config"] not in configs
        assert second["endpoint"]["endpoint_config"] in configs

        # production: the serving container with one worker, stopped once idle, and the
        # next request pays a cold start and gets its prediction
        warm = current(clients, PROD)
        assert warm["env"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"  # type: ignore[index]
        deadline = time.monotonic() + 60
        while current(clients, PROD)["pid"] is not None:
            assert time.monotonic() < deadline, "production never scaled to zero"
            time.sleep(0.1)
        while pid_alive(warm["pid"]):  # type: ignore[arg-type]  # the watcher stops it
            assert time.monotonic() < deadline, "the idle server was not stopped"
            time.sleep(0.1)
        started = time.monotonic()
        answer = json.loads(invoke(clients, PROD, ROW))
        cold_start = time.monotonic() - started
        assert answer["predictions"][0]["label"] in (0, 1)
        assert current(clients, PROD)["cold_starts"] == 1
        print(f"\ncold start + first prediction: {cold_start:.2f} s")
    finally:
        teardown(Path(config.runtime.state_dir))
