"""The local runtime: AWS-shaped clients that do the work on this machine.

``local_clients(root)`` returns clients keyed by boto3 service name. They share
one state directory (``root``), so every process that opens the same root sees
the same objects, jobs, images, registry and endpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the clients are imported when they are made: a job runner (``python -m
# sagepipe.tasks.local.runner``) imports this package first and needs none of them
if TYPE_CHECKING:
    from .sagemaker import LocalSageMaker

__all__ = ["bring_up", "local_clients", "teardown"]

_TRANSITIONAL = ("Creating", "Updating", "SystemUpdating")
_RUNNER_GRACE_SECONDS = 12.0  # a stopped job's runner: its container's grace, and a little


def local_clients(root: Path, *, region: str = "us-east-1",
                  job_events: bool = True) -> dict[str, Any]:
    from .autoscaling import LocalApplicationAutoScaling
    from .images import LocalCodeBuild, LocalECR
    from .logs import LocalLogs
    from .runtime import LocalSageMakerRuntime
    from .s3 import LocalS3
    from .sagemaker import LocalSageMaker
    from .sns import LocalSNS
    from .state import StateStore

    root = Path(root).resolve()
    state = StateStore(root)
    s3 = LocalS3(root, state)
    sagemaker = LocalSageMaker(root, state, s3, region=region, job_events=job_events)
    ecr = LocalECR(state, region=region)
    return {
        "s3": s3,
        "sagemaker": sagemaker,
        "sagemaker-runtime": LocalSageMakerRuntime(sagemaker.endpoints, region=region),
        "sns": LocalSNS(root, state, region=region),
        "logs": LocalLogs(root, region=region),
        "ecr": ecr,
        "codebuild": LocalCodeBuild(root, state, s3, ecr, region=region),
        "application-autoscaling": LocalApplicationAutoScaling(state, region=region),
    }


def teardown(root: Path) -> dict[str, list[str]]:
    """Stop every running job and delete every endpoint under ``root``.

    Stored objects, images and the registry are kept: only processes go.
    """
    from .common import pid_alive
    from .processes import sweep

    clients = local_clients(root)
    sm: LocalSageMaker = clients["sagemaker"]
    stopped: dict[str, list[str]] = {"endpoints": [], "jobs": []}
    runners: list[int | None] = []
    for endpoint in sm.state.list("endpoint"):
        sm.delete_endpoint(EndpointName=endpoint["EndpointName"])
        stopped["endpoints"].append(endpoint["EndpointName"])
    for kind, stop in (("training", sm.stop_training_job), ("processing", sm.stop_processing_job)):
        for job in sm.state.list(f"{kind}-job"):
            if job["status"] == "InProgress":
                key = "TrainingJobName" if kind == "training" else "ProcessingJobName"
                stop(**{key: job["name"]})
                stopped["jobs"].append(job["name"])
                runners.append(job.get("pid"))
    deadline = time.monotonic() + _RUNNER_GRACE_SECONDS  # they record Stopped, then exit
    while any(pid_alive(pid) for pid in runners) and time.monotonic() < deadline:
        time.sleep(0.1)
    # what a kill left without a record: a container whose runner was killed, a server
    # whose supervisor was killed before it wrote the pid down
    sweep([root / "jobs", root / "endpoints"])
    return stopped


def bring_up(root: Path, *, timeout: float = 300.0) -> list[dict[str, Any]]:
    """Start again every endpoint under ``root`` whose servers are not running: after a
    machine restart (OutOfService), or Failed because its server kept exiting; each on the
    config it served. Waits until each is InService or Failed. One row per endpoint:
    name, status before and after, config, FailureReason."""
    clients = local_clients(root)
    sm: LocalSageMaker = clients["sagemaker"]
    rows = []
    for doc in sm.state.list("endpoint"):
        name = doc["EndpointName"]
        before = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        if before in ("OutOfService", "Failed"):
            sm.endpoints.start(name)
        rows.append({"endpoint": name, "before": before})
    deadline = time.monotonic() + timeout
    for row in rows:
        while True:
            described = sm.describe_endpoint(EndpointName=row["endpoint"])
            if described["EndpointStatus"] not in _TRANSITIONAL or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        row.update(after=described["EndpointStatus"], config=described["EndpointConfigName"],
                   reason=described.get("FailureReason") or "")
    return rows
