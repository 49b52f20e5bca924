"""The local runtime: AWS-shaped clients that do the work on this machine.

``local_clients(root)`` returns clients keyed by boto3 service name. They share
one state directory (``root``), so every process that opens the same root sees
the same objects, jobs, images, registry and endpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# the clients are imported when they are made: a job runner (``python -m
# sagepipe.tasks.local.runner``) imports this package first and needs none of them
if TYPE_CHECKING:
    from .sagemaker import LocalSageMaker

__all__ = ["local_clients", "teardown"]


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
    clients = local_clients(root)
    sm: LocalSageMaker = clients["sagemaker"]
    stopped: dict[str, list[str]] = {"endpoints": [], "jobs": []}
    for endpoint in sm.state.list("endpoint"):
        sm.delete_endpoint(EndpointName=endpoint["EndpointName"])
        stopped["endpoints"].append(endpoint["EndpointName"])
    for kind, stop in (("training", sm.stop_training_job), ("processing", sm.stop_processing_job)):
        for job in sm.state.list(f"{kind}-job"):
            if job["status"] == "InProgress":
                key = "TrainingJobName" if kind == "training" else "ProcessingJobName"
                stop(**{key: job["name"]})
                stopped["jobs"].append(job["name"])
    return stopped
