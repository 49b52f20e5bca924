"""A flow run that is terminated or cancelled stops the SageMaker jobs it started."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import prefect_http
import pytest
from prefect.settings import get_current_settings
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.pipeline import FLOW_RUN_TAG, _stop_jobs_of_run
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.images import ensure_images
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
PROJECT = Path(__file__).resolve().parents[2]

SLOW_TRAIN = """
import time
print("training slowly", flush=True)
time.sleep(300)
"""


def slow_setup(tmp_path: Path) -> PipelineConfig:
    containers = tmp_path / "containers"
    shutil.copytree(PROJECT / "containers", containers)
    (containers / "train" / "train.py").write_text(SLOW_TRAIN)
    config = build_config({
        "project": "cancel-demo",
        "runtime": {"kind": "local", "state_dir": str(tmp_path / "state")},
        "dataset_uri": "s3://cancel-bucket/data/data.csv",
        "artifacts_uri": "s3://cancel-bucket/pipeline",
        "containers_dir": str(containers),
        "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.3},
        "endpoint": {"name": "cancel-endpoint"},
    })
    ensure_local_resources(config.runtime, "cancel-bucket", "cancel-demo-events")
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(tmp_path / "data.csv", index=False)
    push_dataset(get_clients(config.runtime), tmp_path / "data.csv", config.dataset_uri,
                 "target")
    return config


def training_jobs(config: PipelineConfig) -> list[dict[str, Any]]:
    sm = get_clients(config.runtime).sagemaker
    return list(sm.list_training_jobs()["TrainingJobSummaries"])


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_terminating_a_flow_run_stops_its_training_job(tmp_path: Path) -> None:
    config = slow_setup(tmp_path)
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    script = ("import json, sys\nfrom sagepipe.flows.config import build_config\n"
              "from sagepipe.flows.pipeline import ml_pipeline\n"
              "ml_pipeline(config=build_config(json.loads(sys.argv[1])))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(config.model_dump())],
                            env=env, cwd=str(PROJECT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        line.decode(errors="replace") for line in proc.stdout or ()), daemon=True)
    reader.start()
    try:
        # the flow is waiting on the job once it copies the job's log lines (that happens
        # inside the wait): a SIGTERM before lands between CreateTrainingJob and the wait,
        # where the crash hook alone stops the job (a runner that registers in 0.15 s made
        # that window reachable)
        wait_for(lambda: any("training slowly" in line for line in list(lines)), 120,
                 "the flow to wait on its training job")
        proc.send_signal(signal.SIGTERM)  # what a worker does to a cancelled flow run
        proc.wait(timeout=60)
        wait_for(lambda: all(j["TrainingJobStatus"] == "Stopped"
                             for j in training_jobs(config)), 30, "the job to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown(Path(config.runtime.state_dir))
    reader.join(timeout=10)
    output = "".join(lines)
    assert "because its wait was interrupted" in output, output[-2000:]
    assert "Crashed" in output or "Cancelled" in output
    assert len(training_jobs(config)) == 1


def job_starter(config: PipelineConfig) -> Any:
    """start(name, run_id): a slow training job tagged as the flow run ``run_id``'s."""
    clients = get_clients(config.runtime)
    refs = ensure_images(clients, folders={"train": Path(config.containers_dir) / "train"},
                         repository_prefix="sagepipe", build_project="p",
                         artifacts_bucket="cancel-bucket", artifacts_prefix="pipeline",
                         log=logging.getLogger("test"))

    def start(name: str, run_id: str) -> None:
        clients.sagemaker.create_training_job(
            TrainingJobName=name, RoleArn="arn:aws:iam::000000000000:role/x",
            AlgorithmSpecification={"TrainingImage": refs["train"].uri,
                                    "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://cancel-bucket/out"},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1,
                            "VolumeSizeInGB": 1},
            StoppingCondition={"MaxRuntimeInSeconds": 600},
            Tags=[{"Key": FLOW_RUN_TAG, "Value": run_id}])
    return start


def test_the_cancellation_hook_stops_only_this_runs_jobs(tmp_path: Path) -> None:
    config = slow_setup(tmp_path)
    start = job_starter(config)


    try:
        start("cancel-demo-mine", "run-1")
        start("cancel-demo-theirs", "run-2")
        flow_run = SimpleNamespace(id="run-1", parameters={"config": config.model_dump()})
        _stop_jobs_of_run(None, flow_run, None)
        statuses = {}
        wait_for(lambda: statuses.update({j["TrainingJobName"]: j["TrainingJobStatus"]
                                          for j in training_jobs(config)})
                 or statuses.get("cancel-demo-mine") == "Stopped", 30, "mine to stop")
        assert statuses["cancel-demo-theirs"] == "InProgress"
    finally:
        teardown(Path(config.runtime.state_dir))


def pipeline_run(config: PipelineConfig, state: dict[str, Any]) -> str:
    """A flow run of an ml-pipeline deployment with ``config``, put in ``state``."""
    with prefect_http.client(str(get_current_settings().api.url).rstrip("/")) as api:
        def post(path: str, body: dict[str, Any]) -> Any:
            answer = api.post(path, json=body)
            answer.raise_for_status()
            return answer.json()

        flow = post("/flows/", {"name": "ml-pipeline"})
        deployment = post("/deployments/", {
            "name": f"reconcile-{time.monotonic_ns()}", "flow_id": flow["id"]})
        run = post(f"/deployments/{deployment['id']}/create_flow_run", {
            "parameters": {"config": config.model_dump(mode="json")}})
        for step in ({"type": "RUNNING", "name": "Running"}, state):
            answer = post(f"/flow_runs/{run['id']}/set_state", {"state": step, "force": True})
            assert answer["status"] == "ACCEPT", answer
        return str(run["id"])


def run_state(run_id: str) -> dict[str, Any]:
    url = f"{str(get_current_settings().api.url).rstrip('/')}/flow_runs/{run_id}"
    return dict(prefect_http.get(url, timeout=30).json()["state"])


def test_the_reconciler_resumes_a_run_whose_job_ended_and_stops_a_cancelled_runs_job(
        tmp_path: Path) -> None:
    """An event that never came: the scheduled reconciler does what the relay would."""
    from datetime import UTC, datetime, timedelta

    from sagepipe.flows.reconcile import sagepipe_reconcile

    config = slow_setup(tmp_path)
    start = job_starter(config)
    suspended = {"type": "PAUSED", "name": "Suspended", "state_details": {
        "pause_reschedule": True,
        "pause_timeout": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}}
    ended = pipeline_run(config, suspended)  # its job is gone: nothing runs for it
    waiting = pipeline_run(config, suspended)  # its job still runs
    cancelled = pipeline_run(config, {"type": "CANCELLED", "name": "Cancelled"})


    try:
        start("cancel-demo-waiting", waiting)
        start("cancel-demo-orphan", cancelled)
        done = sagepipe_reconcile()
        statuses = {}
        wait_for(lambda: statuses.update({j["TrainingJobName"]: j["TrainingJobStatus"]
                                          for j in training_jobs(config)})
                 or statuses.get("cancel-demo-orphan") == "Stopped", 30, "the orphan to stop")
        assert statuses["cancel-demo-waiting"] == "InProgress"
        assert ended in done["resumed"] and waiting not in done["resumed"]
        assert run_state(ended)["type"] != "PAUSED"  # rescheduled: a worker picks it up
        assert run_state(waiting)["name"] == "Suspended"
        assert "training job cancel-demo-orphan" in done["stopped"]
    finally:
        teardown(Path(config.runtime.state_dir))  # its end's event resumes `waiting`
