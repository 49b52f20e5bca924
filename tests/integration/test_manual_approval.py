"""gate.approval: manual pauses the flow run for a person's answer in the Prefect UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run
from prefect.settings import get_current_settings
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import build_config
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
PROJECT = Path(__file__).resolve().parents[2]


def run_paused_flow(tmp_path: Path, run_name: str) -> tuple[subprocess.Popen[bytes], Any]:
    config = build_config({
        "project": "approve-demo",
        "runtime": {"kind": "local", "state_dir": str(tmp_path / "state")},
        "dataset_uri": "s3://approve-bucket/data/data.csv",
        "artifacts_uri": "s3://approve-bucket/pipeline",
        "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.3},
        "endpoint": {"name": "approve-endpoint"},
        "gate": {"approval": "manual", "approval_timeout_seconds": 120},
    })
    ensure_local_resources(config.runtime, "approve-bucket", "approve-demo-events")
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(tmp_path / "data.csv", index=False)
    push_dataset(get_clients(config.runtime), tmp_path / "data.csv", config.dataset_uri,
                 "target")
    script = ("import json, sys\nfrom sagepipe.flows.config import build_config\n"
              "from sagepipe.flows.pipeline import ml_pipeline\n"
              "r = ml_pipeline.with_options(flow_run_name=sys.argv[2])("
              "config=build_config(json.loads(sys.argv[1])))\n"
              "print('OUTCOME', r['outcome'])\n")
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(config.model_dump()),
                             run_name], env=env, cwd=str(PROJECT), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, config


def wait_paused(run_name: str, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[run_name])))
            if runs and runs[0].state and runs[0].state.is_paused():
                return runs[0]
            time.sleep(0.3)
    raise AssertionError("the flow run never paused for approval")


@pytest.mark.parametrize("approve", [True, False])
def test_manual_approval_decides_the_deploy(tmp_path: Path, approve: bool) -> None:
    run_name = f"approval-{'yes' if approve else 'no'}-{int(time.time())}"
    proc, config = run_paused_flow(tmp_path, run_name)
    try:
        flow_run = wait_paused(run_name, proc)
        sm = get_clients(config.runtime).sagemaker
        packages = sm.list_model_packages(ModelPackageGroupName="approve-demo")[
            "ModelPackageSummaryList"]
        assert [p["ModelApprovalStatus"] for p in packages] == ["PendingManualApproval"]
        resume_flow_run(flow_run.id, run_input={"approve": approve, "note": "looked fine"})
        proc.wait(timeout=120)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert f"OUTCOME {'deployed' if approve else 'rejected'}" in output, output[-3000:]
        package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
        assert package["ModelApprovalStatus"] == ("Approved" if approve else "Rejected")
        assert "looked fine" in package["ApprovalDescription"]
        endpoints = [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
        assert endpoints == (["approve-endpoint"] if approve else [])
    finally:
        if proc.poll() is None:
            proc.kill()
        teardown(Path(config.runtime.state_dir))
