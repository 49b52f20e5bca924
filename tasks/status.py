"""What ``sagepipe status`` shows: runs, model versions, endpoints, job logs, data versions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.exceptions import ClientError

from .datasets import dataset_rows
from .gate import ALL_METRICS
from .registry import list_packages, package_summary
from .runtime import Clients
from .storage import list_run_records

__all__ = ["dataset_rows", "endpoint_rows", "job_log_lines", "model_rows", "run_rows"]


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    if isinstance(value, dt.datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value or "")


def run_rows(clients: Clients, artifacts_uri: str, limit: int) -> list[dict[str, Any]]:
    rows = []
    for record in list_run_records(clients, artifacts_uri, limit):
        decision = record.get("decision") or {}
        metric, value = decision.get("metric"), decision.get("challenger")
        rows.append({
            "started": _when(record.get("started")),
            "run": record.get("run_name") or record["run_id"],
            "outcome": record["outcome"] + (" (forced)" if record.get("forced") else ""),
            "problem": (record.get("problem") or {}).get("type", ""),
            "metric": f"{metric}={value:.4f}" if metric and value is not None else "",
            "jobs": " ".join(f"{n}:{s.get('how', s.get('status'))}"
                             for n, s in (record.get("steps") or {}).items()),
            "seconds": record.get("seconds", ""),
        })
    return rows


def model_rows(clients: Clients, group: str, *, limit: int = 20,
               live: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """The group's versions, newest first.

    With ``live`` ({package ARN: endpoints serving it}), each version is described too:
    its gate metric, data digest and commit (the run's CustomerMetadataProperties) and
    where it is live, instead of its description.
    """
    rows = []
    for p in list_packages(clients, group, limit):
        row: dict[str, Any] = {"version": p["ModelPackageVersion"],
                               "approval": p["ModelApprovalStatus"]}
        if live is None:
            row.update(created=_when(p["CreationTime"]),
                       description=(p.get("ModelPackageDescription") or "")[:70])
        else:
            metadata = package_summary(clients, p["ModelPackageArn"]).get(
                "CustomerMetadataProperties") or {}
            metric = next((k for k in ALL_METRICS if k in metadata), None)
            row.update(metric=f"{metric}={float(metadata[metric]):.4f}" if metric else "",
                       data=(metadata.get("data_digest") or "")[:12],
                       commit=(metadata.get("commit") or "")[:12],
                       created=_when(p["CreationTime"]),
                       live=", ".join(live.get(p["ModelPackageArn"], [])))
        rows.append(row)
    return rows


def endpoint_rows(clients: Clients) -> list[dict[str, Any]]:
    rows = []
    for summary in clients.sagemaker.list_endpoints(SortBy="CreationTime")["Endpoints"]:
        described = clients.sagemaker.describe_endpoint(EndpointName=summary["EndpointName"])
        rows.append({"endpoint": summary["EndpointName"], "status": described["EndpointStatus"],
                     "config": described["EndpointConfigName"],
                     "updated": _when(described["LastModifiedTime"]),
                     "failure": (described.get("FailureReason") or "")[:60]})
    return rows


def job_log_lines(clients: Clients, job: str) -> list[str]:
    lines: list[str] = []
    for group in ("/aws/sagemaker/TrainingJobs", "/aws/sagemaker/ProcessingJobs"):
        try:
            streams = clients.logs.describe_log_streams(
                logGroupName=group, logStreamNamePrefix=f"{job}/")["logStreams"]
        except ClientError:
            continue
        for stream in streams:
            token = None
            while True:
                kwargs: dict[str, Any] = {"logGroupName": group, "startFromHead": True,
                                          "logStreamName": stream["logStreamName"]}
                if token:
                    kwargs["nextToken"] = token
                page = clients.logs.get_log_events(**kwargs)
                lines += [e["message"] for e in page["events"]]
                if not page["events"] or page["nextForwardToken"] == token:
                    break
                token = page["nextForwardToken"]
    return lines
