"""SageMaker managed warm pools on the local runtime: the rules and WarmPoolStatus, no pool.

A local training job starts in about a second, so nothing is kept running between jobs:
this module holds the bookkeeping AWS reports, so a flow (and its tests) see what they
would see on AWS (SageMaker developer guide, "SageMaker AI Managed Warm Pools"):

* CreateTrainingJob with ``ResourceConfig.KeepAlivePeriodInSeconds`` is refused with spot
  training or a heterogeneous cluster ("cannot be used with" either, Considerations);
  the range 0-21600 is botocore's model, checked with every request;
* a job that ends after its cluster started, Completed, Stopped, or Failed by its own code,
  leaves a pool ``Available`` for the keep-alive period, then ``Terminated``; a job whose
  runner died (an infrastructure failure) leaves none;
* a new training job that also asks for a keep-alive and matches an ``Available`` pool on
  every field the guide lists (role, instance count and type, volume size and KMS key,
  VPC subnets and security groups, inter-container encryption, network isolation) takes
  it: the old job's pool becomes ``Reused`` (``ReusedByJob``), the new one ``InUse``;
* ``ResourceRetainedBillableTimeInSeconds`` is the wall-clock time the pool was kept.

Not modelled: the warm pool quota (AWS keeps no pool without one), patch-update
terminations and the 28-day limit of a chain of reuses.
"""

from __future__ import annotations

import json
from typing import Any

from .state import StateStore
from .validation import client_error

__all__ = ["check_request", "claim_pool", "match_key", "warm_pool_status"]

_RUNNER_DIED = "InternalServerError"  # the local runtime's reason for an infrastructure failure


def _keep_alive(request: dict[str, Any]) -> int:
    return int((request.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds") or 0)


def check_request(params: dict[str, Any]) -> None:
    """The warm pool rules CreateTrainingJob is held to (beyond botocore's model)."""
    if not _keep_alive(params):
        return
    if params.get("EnableManagedSpotTraining"):
        raise client_error("CreateTrainingJob", "ValidationException",
                           "Warm pools (ResourceConfig.KeepAlivePeriodInSeconds) cannot be "
                           "used with managed spot training.")
    if (params.get("ResourceConfig") or {}).get("InstanceGroups"):
        raise client_error("CreateTrainingJob", "ValidationException",
                           "Warm pools (ResourceConfig.KeepAlivePeriodInSeconds) cannot be "
                           "used with heterogeneous clusters (InstanceGroups).")


def match_key(request: dict[str, Any]) -> str:
    """What must be identical for a training job to reuse another's warm pool
    ("Matching training jobs", SageMaker developer guide)."""
    resources = request.get("ResourceConfig") or {}
    vpc = request.get("VpcConfig") or {}
    return json.dumps({
        "RoleArn": request.get("RoleArn"),
        **{k: resources.get(k) for k in ("InstanceCount", "InstanceType", "VolumeKmsKeyId",
                                         "VolumeSizeInGB")},
        "SecurityGroupIds": vpc.get("SecurityGroupIds"), "Subnets": vpc.get("Subnets"),
        "EnableInterContainerTrafficEncryption":
            bool(request.get("EnableInterContainerTrafficEncryption")),
        "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation")),
    }, sort_keys=True)


def _retained(doc: dict[str, Any]) -> bool:
    """A pool exists after a job whose cluster started and that did not die of the
    infrastructure (an algorithm or client error, or a stop, keeps it)."""
    return bool(doc.get("started")) and not str(doc.get("reason") or "").startswith(
        _RUNNER_DIED)


def warm_pool_status(doc: dict[str, Any], now: float) -> dict[str, Any] | None:
    """DescribeTrainingJob's WarmPoolStatus for a job document, or None (no keep-alive,
    or a job still cold-starting)."""
    keep = _keep_alive(doc["request"])
    if not keep:
        return None
    pool = doc.get("warm_pool") or {}
    if doc["status"] in ("InProgress", "Stopping"):
        return {"Status": "InUse"} if pool.get("from") else None
    if not _retained(doc):
        return {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 0}
    ended = float(doc.get("ended") or now)
    if pool.get("reused_by"):
        return {"Status": "Reused", "ReusedByJob": pool["reused_by"],
                "ResourceRetainedBillableTimeInSeconds": int(pool["at"] - ended)}
    kept = now - ended
    if kept < keep:
        return {"Status": "Available", "ResourceRetainedBillableTimeInSeconds": int(kept)}
    return {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": keep}


def claim_pool(state: StateStore, name: str, request: dict[str, Any], now: float) -> str | None:
    """At CreateTrainingJob ``name``: take the newest Available pool that matches (its job
    becomes Reused, this one InUse). Returns the job whose pool it took."""
    if not _keep_alive(request):
        return None  # "Each subsequent training job must also specify a KeepAlivePeriod..."
    key = match_key(request)
    for doc in reversed(state.list("training-job")):
        if doc["name"] == name or match_key(doc["request"]) != key:
            continue
        if (warm_pool_status(doc, now) or {}).get("Status") == "Available" \
                and _take(state, str(doc["name"]), name, now):
            return str(doc["name"])
    return None


def _take(state: StateStore, old: str, new: str, now: float) -> bool:
    """Move ``old``'s pool to ``new``, unless somebody took it in the meantime."""
    taken = False

    def reuse(doc: dict[str, Any]) -> None:
        nonlocal taken
        if (warm_pool_status(doc, now) or {}).get("Status") == "Available":
            doc["warm_pool"] = {"reused_by": new, "at": now}
            taken = True

    def use(doc: dict[str, Any]) -> None:
        doc["warm_pool"] = {"from": old}

    state.update("training-job", old, reuse)
    if taken:
        state.update("training-job", new, use)
    return taken
