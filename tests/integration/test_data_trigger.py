"""New data, new run, with a real local Prefect server and process worker: the
deployments of deployments/prefect.yaml (ml-pipeline/local, sagepipe-data-arrived/local
with its trigger on sagepipe.dataset.object-created), new versions announced as on AWS
(S3's "Object Created" event through the relay code; locally `sagepipe data push`).

- a push starts exactly one run, on the pushed version, and its first step starts;
- three files pushed together start one run, on all three;
- a version that already started a run starts none;
- the pipeline's own writes start none; a dataset with triggers.on_data false neither.

After the first test the pipeline deployment is moved to a work pool no worker serves,
so the runs these tests start are looked at (their parameters), not run to the end.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prefect_http
import pytest
import yaml
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.arrivals import dataset_run_name
from sagepipe.flows.config import build_config
from sagepipe.flows.server import LocalServer, down, up
from sagepipe.tasks.local import local_clients, teardown
from sagepipe.tasks.local.events import announce_object
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", PROJECT / ".venv")) / "bin"
BUCKET = "arrive"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    server: LocalServer
    tmp: Path
    state: Path

    @property
    def api(self) -> str:
        return self.server.api_url

    def settings(self, dataset: str, **triggers: Any) -> dict[str, Any]:
        return {"project": "arrive",
                "runtime": {"kind": "local", "state_dir": str(self.state)},
                "dataset_uri": f"s3://{BUCKET}/{dataset}",
                "artifacts_uri": f"s3://{BUCKET}/pipeline",
                "triggers": {"quiet_seconds": 3, **triggers},
                "endpoint": {"name": "arrive", "timeout_seconds": 120}}

    def aim(self, settings: dict[str, Any], pool: str) -> None:
        """The pipeline deployment's settings (what the arrivals flow reads) and pool."""
        deployment = self.deployment("ml-pipeline/local")
        answer = prefect_http.patch(f"{self.api}/deployments/{deployment['id']}", timeout=30,
                                    json={"parameters": {"config": build_config(
                                        settings).model_dump(mode="json")},
                                        "work_pool_name": pool})
        answer.raise_for_status()

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(prefect_http.get(f"{self.api}/deployments/name/{name}", timeout=30).json())

    def runs(self, name: str) -> list[dict[str, Any]]:
        return list(prefect_http.post(f"{self.api}/flow_runs/filter", timeout=30, json={
            "deployments": {"id": {"any_": [self.deployment(name)["id"]]}},
            "sort": "EXPECTED_START_TIME_ASC"}).json())

    def put(self, key: str, body: bytes) -> str:
        s3 = local_clients(self.state)["s3"]
        return str(s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"])

    def announce(self, key: str, version: str) -> dict[str, Any]:
        s3 = local_clients(self.state)["s3"]
        return announce_object(s3, BUCKET, key, version, api_url=self.api)

    def settled(self, before: int, timeout: float = 120) -> list[dict[str, Any]]:
        """Every arrivals run finished (after at least ``before`` of them exist)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs("sagepipe-data-arrived/local")
            if len(runs) > before and all(r["state"]["type"] in (
                    "COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
                return runs
            time.sleep(0.5)
        raise AssertionError(f"arrivals runs not done: {[r['state']['name'] for r in runs]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("arrive")
    state = tmp / "state"
    server = up(tmp / "prefect", port=free_port(), poll_seconds=0.5, ui=False)
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        deploy = subprocess.run(
            [str(BIN / "prefect"), "deploy", "--prefect-file", "deployments/prefect.yaml",
             "--name", "ml-pipeline/local", "--name", "sagepipe-data-arrived/local",
             "--no-prompt"],
            env=env, cwd=PROJECT, text=True, capture_output=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        prefect_http.post(f"{server.api_url}/work_pools/", timeout=30, json={
            "name": "sagepipe-hold", "type": "process"}).raise_for_status()
        ensure_local_resources(build_config({"runtime": {
            "kind": "local", "state_dir": str(state)}}).runtime, BUCKET, "arrive-events")
        yield Stack(server, tmp, state)
    finally:
        teardown(state)
        down(tmp / "prefect", grace=10)


def test_a_push_starts_one_run_on_the_pushed_version(stack: Stack) -> None:
    settings = stack.settings("datasets/one/data.csv")
    stack.aim(settings, "sagepipe-local")
    (stack.tmp / "sagepipe.yaml").write_text(yaml.safe_dump(settings))
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(stack.tmp / "data.csv", index=False)
    pushed_at = time.time()
    push = subprocess.run([str(BIN / "sagepipe"), "data", "push", "data.csv"], cwd=stack.tmp,
                          env={**os.environ, "PREFECT_API_URL": stack.api}, text=True,
                          capture_output=True, timeout=300)
    assert push.returncode == 0, push.stdout + push.stderr
    version = push.stdout.split(" version ", 1)[1].split()[0]
    [run] = stack.runs("ml-pipeline/local")
    assert f"Started {run['name']}: {stack.api.removesuffix('/api')}/runs/flow-run/" \
        f"{run['id']}" in push.stdout, push.stdout
    assert run["parameters"]["dataset_versions"] == {"datasets/one/data.csv": version}
    assert run["parameters"]["trigger"]["kind"] == "data"
    assert run["name"] == dataset_run_name({"datasets/one/data.csv": version})
    # its first step starts: the run really runs, on the worker
    deadline = time.monotonic() + 180
    first: dict[str, Any] | None = None
    while first is None and time.monotonic() < deadline:
        tasks = prefect_http.post(f"{stack.api}/task_runs/filter", timeout=30, json={
            "flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        started = [t for t in tasks if t.get("start_time")]
        first = min(started, key=lambda t: t["start_time"]) if started else None
        time.sleep(0.5)
    assert first is not None, "the triggered run never started a step"
    from datetime import datetime

    began = datetime.fromisoformat(first["start_time"]).timestamp()
    print(f"data push -> the run's first step ({first['name']}): {began - pushed_at:.1f} s "
          f"(quiet period {settings['triggers']['quiet_seconds']} s)")
    prefect_http.post(f"{stack.api}/flow_runs/{run['id']}/set_state", timeout=30, json={
        "state": {"type": "CANCELLING"}}).raise_for_status()
    stack.aim(settings, "sagepipe-hold")  # from here on: started runs are only looked at


def test_three_files_pushed_together_start_one_run_and_again_none(stack: Stack) -> None:
    stack.aim(stack.settings("datasets/multi/"), "sagepipe-hold")
    before_runs = len(stack.runs("ml-pipeline/local"))
    before_arrivals = len(stack.runs("sagepipe-data-arrived/local"))
    versions = {}
    for part in range(3):
        key = f"datasets/multi/part-{part}.csv"
        versions[key] = stack.put(key, f"a,b,target\n{part},2,0\n3,{part},1\n".encode())
        assert stack.announce(key, versions[key])["relayed"]
    stack.settled(before_arrivals + 2)
    runs = stack.runs("ml-pipeline/local")[before_runs:]
    assert len(runs) == 1, [r["name"] for r in runs]
    assert runs[0]["parameters"]["dataset_versions"] == versions
    # the same event again (EventBridge delivers at least once): stored once, no new look
    arrivals = len(stack.runs("sagepipe-data-arrived/local"))
    key = "datasets/multi/part-1.csv"
    assert stack.announce(key, versions[key])["relayed"]
    time.sleep(5)
    assert len(stack.runs("sagepipe-data-arrived/local")) == arrivals
    # a late look at the same versions (a retried arrivals run): nothing new starts
    deployment = stack.deployment("sagepipe-data-arrived/local")
    prefect_http.post(f"{stack.api}/deployments/{deployment['id']}/create_flow_run", timeout=30,
               json={"parameters": {"bucket": BUCKET, "key": key,
                                    "version_id": versions[key]}}).raise_for_status()
    [late] = stack.settled(arrivals)[arrivals:]
    assert late["state"]["type"] == "COMPLETED"
    assert len(stack.runs("ml-pipeline/local")[before_runs:]) == 1


def test_the_pipelines_own_writes_and_a_dataset_turned_off_start_none(stack: Stack) -> None:
    stack.aim(stack.settings("datasets/quiet/", on_data=False), "sagepipe-hold")
    before_runs = len(stack.runs("ml-pipeline/local"))
    before_arrivals = len(stack.runs("sagepipe-data-arrived/local"))
    own = "pipeline/data/0123abcd/part-0.csv"
    assert not stack.announce(own, stack.put(own, b"a,target\n1,0\n"))["relayed"]
    key = "datasets/quiet/part-0.csv"
    assert stack.announce(key, stack.put(key, b"a,target\n1,0\n"))["relayed"]
    [arrival] = stack.settled(before_arrivals)[before_arrivals:]  # one: the dataset's
    assert arrival["parameters"]["key"] == key
    assert arrival["state"]["type"] == "COMPLETED"
    assert len(stack.runs("ml-pipeline/local")) == before_runs
