"""The local stand-in for EventBridge: a job that ends announces it as SageMaker does.

On AWS, SageMaker sends "SageMaker Training Job State Change" / "SageMaker Processing
Job State Change" events to EventBridge, whose rule invokes the relay Lambda. Locally
the job's runner, as it ends, builds the same event (the job's Describe with epoch
milliseconds for times, and, for a training job, its tags as a map) and hands it to
the same relay code (``deployments/relay/relay.py``), which posts the Prefect event
and resumes a flow run suspended for the job. The runner learns the Prefect API from
``SAGEPIPE_PREFECT_API_URL``, set by whoever created the job from a Prefect run; without
it (or with the API gone) nothing is published and the job is unaffected.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "API_ENV",
    "announce_object",
    "object_created_event",
    "prefect_api_url",
    "preload_publish",
    "publish",
    "state_change_event",
]

API_ENV = "SAGEPIPE_PREFECT_API_URL"
_DETAIL_TYPE = {"training": "SageMaker Training Job State Change",
                "processing": "SageMaker Processing Job State Change"}


def prefect_api_url() -> str | None:
    """The Prefect API the creating flow run talks to: the current settings' URL, else
    the temporary server Prefect started in this process (a flow run with ``python`` and
    no PREFECT_API_URL: without it, no job event would reach the run, and each wait would
    sit out its jobs.safety_poll_seconds)."""
    try:
        from prefect.settings import get_current_settings
    except ImportError:
        return None
    url = get_current_settings().api.url
    if url:
        return str(url)
    server = sys.modules.get("prefect.server.api.server")  # imported only if one started
    if server is None:
        return None
    for instance in list(getattr(server.SubprocessASGIServer, "_instances", {}).values()):
        if getattr(instance, "running", False) and getattr(instance, "port", None):
            return str(instance.api_url)
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # EventBridge's SageMaker details: epoch millis
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def state_change_event(kind: str, described: dict[str, Any], tags: list[dict[str, str]],
                       *, region: str, account: str = "000000000000") -> dict[str, Any]:
    """The EventBridge event SageMaker sends for this job's current state."""
    noun = "Training" if kind == "training" else "Processing"
    detail = _jsonable({k: v for k, v in described.items() if k != "ResponseMetadata"})
    if kind == "training":  # the training event carries the job's tags as a map
        detail["Tags"] = {t["Key"]: t.get("Value", "") for t in tags}
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": _DETAIL_TYPE[kind],
            "source": "aws.sagemaker", "account": account,
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region, "resources": [described[f"{noun}JobArn"]], "detail": detail}


def publish(root: Path, kind: str, name: str, *, region: str = "us-east-1") -> dict[str, Any]:
    """Announce the job's current state through the relay; what the relay did."""
    api = os.environ.get(API_ENV)
    if not api:
        return {"relayed": False, "reason": f"no {API_ENV}"}
    from sagepipe.deployments.relay.relay import handle

    from . import local_clients

    # SageMaker's own view of its job, as it puts it in the event: no request, so nothing
    # to check (and no botocore: the waiting run wakes on this, issue 16)
    sagemaker = local_clients(root, region=region)["sagemaker"]
    noun = "Training" if kind == "training" else "Processing"
    described = sagemaker.job_description(kind, name)
    tags = sagemaker.tags_of(described[f"{noun}JobArn"])
    event = state_change_event(kind, described, tags, region=region)

    def list_tags(arn: str) -> list[dict[str, Any]]:  # the relay's ListTags
        return sagemaker.tags_of(arn)

    result: dict[str, Any] = handle(event, api_url=api, list_tags=list_tags, timeout=5.0,
                                    deadline=time.monotonic() + 20)
    return result


def preload_publish() -> threading.Thread | None:
    """For the runner, while its container runs: import what :func:`publish` needs (the
    local clients, the relay: ~0.04 s, no botocore) in a background thread, so that the
    waiting run's wake does not wait for them after the job ends. None when nothing will
    be announced (no API)."""
    if not os.environ.get(API_ENV):
        return None
    thread = threading.Thread(target=_import_publish, name="preload-publish", daemon=True)
    thread.start()
    return thread


def _import_publish() -> None:
    try:
        import sagepipe.deployments.relay.relay  # noqa: F401

        from . import local_clients  # noqa: F401
        from .autoscaling import LocalApplicationAutoScaling  # noqa: F401
        from .logs import LocalLogs  # noqa: F401
        from .runtime import LocalSageMakerRuntime  # noqa: F401
        from .sagemaker import LocalSageMaker  # noqa: F401
        from .sns import LocalSNS  # noqa: F401
    except Exception as exc:  # publish meets the same failure, and reports it
        print(f"could not import the announcement's code ahead: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)


def publish_quietly(root: Path, kind: str, name: str,
                    preloading: threading.Thread | None = None) -> None:
    """For the runner: a failed announcement is written to its log, never raised.
    ``preloading``: the :func:`preload_publish` thread, waited for first (one importer)."""
    if preloading is not None:
        preloading.join()
    try:
        result = publish(root, kind, name)
    except Exception as exc:  # the job's outcome stands; the wait's safety poll sees it
        print(f"could not announce the job's state: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return
    print(f"announced: {result}", file=sys.stderr, flush=True)


def object_created_event(bucket: str, key: str, head: dict[str, Any], *,
                         region: str = "us-east-1", account: str = "000000000000",
                         reason: str = "PutObject") -> dict[str, Any]:
    """The EventBridge event S3 sends for a new object version (S3 user guide,
    "EventBridge event message structure", Object created), from its HeadObject."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created",
            "source": "aws.s3", "account": account,
            "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": region,
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket},
                       "object": {"key": key, "size": int(head.get("ContentLength") or 0),
                                  "etag": str(head.get("ETag") or "").strip('"'),
                                  "version-id": head.get("VersionId"),
                                  "sequencer": f"{time.time_ns():016X}"},
                       "request-id": uuid.uuid4().hex[:16].upper(), "requester": account,
                       "source-ip-address": "127.0.0.1", "reason": reason}}


def announce_object(s3: Any, bucket: str, key: str, version_id: str, *, api_url: str,
                    region: str = "us-east-1") -> dict[str, Any]:
    """What S3 + EventBridge + the relay do for a new object version on AWS: the same
    event, through the same relay code (which drops keys outside datasets/)."""
    from sagepipe.deployments.relay.relay import handle

    head = s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
    return handle(object_created_event(bucket, key, head, region=region), api_url=api_url)
