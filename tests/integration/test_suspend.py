"""``jobs.wait: suspend`` with a real local Prefect server and process worker: a
deployment run suspends while each step's job runs (no flow process is held), the job's
end — announced by the local runtime through the relay — resumes it, and the run
re-enters from the top to finish without creating any job twice; a job that fails
while the run is suspended fails the run with the job's own reason; with the events
lost, the reconciler resumes the run (and a job deleted meanwhile fails it clearly);
a run cancelled while suspended has its job stopped by the reconciler its Cancelled
event starts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import prefect_http
import pytest
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import build_config
from sagepipe.flows.server import LocalServer, down, up
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
PREFECT = Path(os.environ.get("VIRTUAL_ENV", PROJECT / ".venv")) / "bin" / "prefect"
SLOW = ("import pathlib, runpy, time\ntime.sleep({seconds})\n"
        "runpy.run_path(str(pathlib.Path(__file__).with_name('real_train.py')), "
        "run_name='__main__')\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])




def _api(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One Prefect API call (retried while the server is busy); an error status raises."""
    answer = prefect_http.request(method, url, **kwargs)
    answer.raise_for_status()
    return answer

@dataclass
class Stack:
    server: LocalServer
    tmp: Path

    @property
    def api(self) -> str:
        return self.server.api_url

    def config(self, name: str, train: str, **runtime: Any) -> dict[str, Any]:
        containers = self.tmp / name / "containers"
        shutil.copytree(PROJECT / "containers", containers)
        script = containers / "train" / "train.py"
        script.rename(script.with_name("real_train.py"))
        script.write_text(train)
        config = build_config({
            "project": name,
            "runtime": {"kind": "local", "state_dir": str(self.tmp / name / "state"),
                        **runtime},
            "dataset_uri": f"s3://{name}/data/data.csv",
            "artifacts_uri": f"s3://{name}/pipeline",
            "containers_dir": str(containers),
            "jobs": {"wait": "suspend"},
            "endpoint": {"name": name, "timeout_seconds": 120},
        })
        ensure_local_resources(config.runtime, name, f"{name}-events")
        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        frame.to_csv(self.tmp / name / "data.csv", index=False)
        push_dataset(get_clients(config.runtime), self.tmp / name / "data.csv",
                     config.dataset_uri, "target")
        return config.model_dump(mode="json")

    def start(self, config: dict[str, Any] | None = None,
              deployment: str = "ml-pipeline/local") -> str:
        found = _api("GET", f"{self.api}/deployments/name/{deployment}", timeout=30).json()
        run = _api("POST", f"{self.api}/deployments/{found['id']}/create_flow_run",
                         json={"parameters": {"config": config} if config else {}},
                         timeout=30).json()
        return str(run["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(_api("GET", f"{self.api}/flow_runs/{run_id}", timeout=30).json())

    def runs_of(self, deployment: str) -> list[dict[str, Any]]:
        found = _api("GET", f"{self.api}/deployments/name/{deployment}", timeout=30).json()
        return list(_api("POST", f"{self.api}/flow_runs/filter", timeout=30, json={
            "deployments": {"id": {"any_": [found["id"]]}}}).json())

    def states(self, run_id: str) -> list[dict[str, Any]]:
        found = _api("GET", f"{self.api}/flow_run_states/", params={"flow_run_id": run_id},
                          timeout=30).json()
        return sorted(found, key=lambda s: s["timestamp"])

    def wait_final(self, run_id: str, timeout: float = 400) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = _api("GET", f"{self.api}/flow_runs/{run_id}", timeout=30).json()
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return dict(run)
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} still {run['state']['name']}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("suspend")
    server = up(tmp / "prefect", port=free_port(), poll_seconds=0.5, ui=False)
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        deploy = subprocess.run(
            [str(PREFECT), "deploy", "--prefect-file", "deployments/prefect.yaml",
             "--name", "ml-pipeline/local", "--name", "sagepipe-reconcile/local",
             "--no-prompt"],
            env=env, cwd=PROJECT, text=True, capture_output=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        # the reconciler runs here when a test asks (or on its Cancelled-event trigger),
        # not on its 5-minute schedule
        reconciler = _api("GET", f"{server.api_url}/deployments/name/sagepipe-reconcile/local",
                               timeout=30).json()
        assert "schedules" in reconciler, (reconciler, deploy.stdout[-3000:])
        for schedule in reconciler["schedules"]:
            prefect_http.delete(f"{server.api_url}/deployments/{reconciler['id']}/schedules/"
                         f"{schedule['id']}", timeout=30).raise_for_status()
        for run in _api("POST", f"{server.api_url}/flow_runs/filter", timeout=30, json={
                "deployments": {"id": {"any_": [reconciler["id"]]}}}).json():
            prefect_http.delete(f"{server.api_url}/flow_runs/{run['id']}", timeout=30)
        yield Stack(server, tmp)
    finally:
        for state in tmp.glob("*/state"):
            teardown(state)
        down(tmp / "prefect", grace=10)


def when(state: dict[str, Any]) -> float:
    return datetime.fromisoformat(state["timestamp"]).timestamp()


def test_a_run_suspends_while_its_jobs_run_and_their_events_resume_it(stack: Stack) -> None:
    config = stack.config("suspend-demo", SLOW.format(seconds=8))
    run_id = stack.start(config)
    final = stack.wait_final(run_id)
    states = stack.states(run_id)
    names = [s["name"] for s in states]
    assert final["state"]["type"] == "COMPLETED", names
    assert names.count("Suspended") >= 1, names  # at least the training step's
    clients = get_clients(build_config(config).runtime)
    jobs = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert len(jobs) == 1, jobs  # re-entered from the top: re-found, not created again
    job = clients.sagemaker.describe_training_job(TrainingJobName=jobs[0]["TrainingJobName"])
    ended = job["TrainingEndTime"].timestamp()
    # the suspension around the training job: from it to the next Running
    suspended = [s for s in states if s["name"] == "Suspended" and when(s) < ended][-1]
    running = next(s for s in states if s["type"] == "RUNNING" and when(s) > ended)
    held = when(suspended) - when(next(s for s in states if s["type"] == "RUNNING"))
    resumed_after = when(running) - ended
    print(f"suspended {when(running) - when(suspended):.1f} s of a "
          f"{ended - job['TrainingStartTime'].timestamp():.1f} s job; back to work "
          f"{resumed_after:.1f} s after it ended; {names.count('Suspended')} suspensions")
    assert resumed_after < 60, resumed_after  # the event, not the reconciler or a timeout
    assert held >= 0
    processing = clients.sagemaker.list_processing_jobs()["ProcessingJobSummaries"]
    assert len(processing) == 2, processing  # preprocess and evaluate, once each


def test_a_job_that_fails_while_the_run_is_suspended_fails_the_run(stack: Stack) -> None:
    config = stack.config("suspend-fails", SLOW.format(seconds=6).replace(
        "runpy.run_path", "raise SystemExit('the data has no rows left after cleaning')\n#"))
    run_id = stack.start(config)
    final = stack.wait_final(run_id)
    names = [s["name"] for s in stack.states(run_id)]
    assert final["state"]["type"] == "FAILED", names
    assert "Suspended" in names
    assert "the data has no rows left after cleaning" in final["state"]["message"]
    clients = get_clients(build_config(config).runtime)
    jobs = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert len(jobs) == 1, jobs  # the failure is the outcome: no second attempt


def until(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def reconcile_once(stack: Stack) -> None:
    """Run the reconcile deployment through the worker, as its schedule would."""
    final = stack.wait_final(stack.start(deployment="sagepipe-reconcile/local"), timeout=120)
    assert final["state"]["type"] == "COMPLETED", final["state"]


def test_with_the_events_lost_the_reconciler_resumes_and_a_deleted_job_fails_the_run(
        stack: Stack) -> None:
    # the local runtime's EventBridge rule "disabled": no job end is announced
    config = stack.config("suspend-lost", SLOW.format(seconds=3), job_events=False)
    run_id = stack.start(config)
    clients = get_clients(build_config(config).runtime)

    def suspended_with_ended(kind: str) -> bool:
        jobs = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"] \
            if kind == "training" else \
            clients.sagemaker.list_processing_jobs()["ProcessingJobSummaries"]
        return (stack.run(run_id)["state"]["name"] == "Suspended" and bool(jobs)
                and all(j[f"{kind.title()}JobStatus"] == "Completed" for j in jobs))

    # preprocess ended, nobody told the run: it stays suspended until the reconciler
    until("suspended with preprocess ended", lambda: suspended_with_ended("processing"))
    time.sleep(3)
    assert stack.run(run_id)["state"]["name"] == "Suspended"
    reconcile_once(stack)
    # resumed, it goes on to training: suspended again, training ends unannounced
    until("suspended with training ended", lambda: suspended_with_ended("training"), 180)
    [job] = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    # DeleteTrainingJob (API reference): only a job in a terminal state can be deleted; all
    # its metadata is lost and its name can be used again
    clients.sagemaker.delete_training_job(TrainingJobName=job["TrainingJobName"])
    reconcile_once(stack)
    final = stack.wait_final(run_id)
    assert final["state"]["type"] == "FAILED", final["state"]
    message = final["state"]["message"]
    assert f"training job {job['TrainingJobName']} is gone" in message, message
    assert "start a new run" in message, message
    # nothing was created again in its place
    assert clients.sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


def test_cancelling_a_suspended_run_stops_its_job(stack: Stack) -> None:
    config = stack.config("suspend-cancel", SLOW.format(seconds=300))
    run_id = stack.start(config)
    clients = get_clients(build_config(config).runtime)

    def training() -> list[dict[str, Any]]:
        return list(clients.sagemaker.list_training_jobs()["TrainingJobSummaries"])

    until("suspended while training runs",
          lambda: stack.run(run_id)["state"]["name"] == "Suspended" and training(), 180)
    cancelled_at = time.monotonic()
    # what the UI's Cancel does; a suspended run has no process, Prefect cancels it at once
    _api("POST", f"{stack.api}/flow_runs/{run_id}/set_state", timeout=30, json={
        "state": {"type": "CANCELLING", "message": "cancelled by the test"}}
    ).raise_for_status()
    assert stack.wait_final(run_id, timeout=30)["state"]["type"] == "CANCELLED"
    # the Cancelled event's trigger runs the reconciler for this run, which stops the job
    [_stopped] = until("the training job stopped", lambda: [
        j for j in training() if j["TrainingJobStatus"] == "Stopped"], 120)
    print(f"training job stopped {time.monotonic() - cancelled_at:.1f} s after the cancel")
    reconciles = stack.runs_of("sagepipe-reconcile/local")
    assert any(r["parameters"].get("flow_run_id") == f"prefect.flow-run.{run_id}"
               for r in reconciles), [r["parameters"] for r in reconciles]
    assert clients.sagemaker.list_processing_jobs(
        StatusEquals="InProgress")["ProcessingJobSummaries"] == []
