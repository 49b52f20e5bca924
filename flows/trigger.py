"""Start a deployment's flow run and follow it to its end: ``sagepipe trigger`` for any CI.

The CodePipeline Lambda (``deployments/trigger/handler.py``) does the same
through the REST API with the standard library, because it ships alone; the
two agree on these points, and on nothing else:

* parameters given for a run are merged key by key over the deployment's own,
  so ``--set gate.margin=0.01`` changes one setting and keeps the rest;
* an idempotency key (the CI job's id) maps a retried job to the same run;
* a flow image built for the commit (``--image``; the pipeline's ``#{Build.FLOW_IMAGE}``)
  is the run's own ``image`` job variable, and the ``trigger`` parameter names it and
  its code hash, which the flow checks against the image it runs in;
* a finished run's result for CI is its ``<project>-outcome`` table artifact,
  one row written by the flow (:func:`publish_outcome`): outcome, gate decision,
  model package, endpoint. The flow's return value stays on the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.utilities.urls import url_for

from sagepipe.flows.config import _merge, build_config
from sagepipe.tasks.errors import ConfigError

__all__ = ["OUTCOME_SUFFIX", "FollowedRun", "follow_run", "outcome_row", "publish_outcome",
           "read_outcome", "start_run"]

OUTCOME_SUFFIX = "-outcome"


def outcome_row(record: dict[str, Any], endpoint: str) -> dict[str, str | None]:
    """What CI needs from a finished run, from the flow's run record."""
    outcome = record.get("outcome")
    decision = record.get("decision") or {}
    package = (record.get("model_package") or {}).get("arn")
    live = None
    if outcome == "deployed":
        live = (record.get("endpoint") or {}).get("endpoint") or endpoint
    elif outcome == "unchanged":
        live = endpoint
        package = package or (record.get("champion") or {}).get("package_arn")
    return {"flow_run_id": record.get("run_id"), "outcome": outcome,
            "summary": record.get("summary"),
            "decision": decision.get("summary") or "; ".join(decision.get("reasons") or []),
            "model_package_arn": package,
            "approval": (record.get("model_package") or {}).get("approval"),
            "endpoint": live, "commit": record.get("commit")}


def publish_outcome(record: dict[str, Any], endpoint: str) -> None:
    create_table_artifact(table=[outcome_row(record, endpoint)],
                          key=f"{record['project']}{OUTCOME_SUFFIX}",
                          description="What this run decided, for CI (sagepipe trigger, the "
                                      "CodePipeline trigger)")


def start_run(deployment: str, *, overrides: dict[str, Any] | None = None,
              commit: str | None = None, force: bool = False,
              idempotency_key: str | None = None, image: str | None = None,
              code_hash: str | None = None) -> FlowRun:
    """A flow run of ``deployment`` ("<flow>/<deployment>"); the same run for the same key.

    ``overrides`` change the deployment's ``config`` key by key, and the result is
    validated here, before a run exists. ``image``: the run's own flow image (its work
    pool must run images); ``code_hash``: the content hash that image was built from.
    """
    if not get_current_settings().api.url:
        raise ConfigError("PREFECT_API_URL is not set: point it at the Prefect server that has "
                          "the deployment (and set PREFECT_API_KEY for Prefect Cloud).")
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(f"No deployment {deployment!r} on the Prefect API; register it "
                              "with `prefect deploy --prefect-file deployments/prefect.yaml`"
                              ) from None
        parameters = dict(found.parameters or {})
        config = _merge(parameters.get("config") or {}, overrides or {})
        parameters["config"] = build_config(config, f"deployment {deployment}").model_dump(
            mode="json")
        if commit:
            parameters["commit"] = commit
        if force:
            parameters["force"] = True
        job_variables: dict[str, Any] = {}
        if image:
            _check_image_pool(client, deployment, found.work_pool_name, image)
            job_variables["image"] = image
        if image or code_hash:
            parameters["trigger"] = {"kind": "push", "commit": commit,
                                     **({"image": image} if image else {}),
                                     **({"code_hash": code_hash} if code_hash else {})}
        return client.create_flow_run_from_deployment(
            found.id, parameters=parameters, idempotency_key=idempotency_key,
            tags=["sagepipe-trigger"], job_variables=job_variables or None)


def _check_image_pool(client: Any, deployment: str, pool: str | None, image: str) -> None:
    """``--image`` needs a work pool whose jobs run an image (ECS, Docker, Kubernetes)."""
    if any(c.isspace() for c in image) or "#{" in image:
        raise ConfigError(f"--image {image!r} is not an image URI; give one like "
                          "<registry>/<repository>@sha256:<digest> (the Build stage's "
                          "FLOW_IMAGE).")
    variables: dict[str, Any] = {}
    if pool:
        template = client.read_work_pool(pool).base_job_template or {}
        variables = (template.get("variables") or {}).get("properties") or {}
    if "image" not in variables:
        raise ConfigError(f"Deployment {deployment!r} runs on work pool {pool or '(none)'}, "
                          "whose jobs take no image: --image applies to deployments on an "
                          "ECS, Docker or Kubernetes work pool (e.g. ml-pipeline/production).")


@dataclass(frozen=True)
class FollowedRun:
    run: FlowRun
    url: str | None
    finished: bool

    @property
    def state_name(self) -> str:
        return (self.run.state.name or "Unknown") if self.run.state else "Unknown"

    @property
    def completed(self) -> bool:
        return bool(self.run.state and self.run.state.is_completed())

    @property
    def message(self) -> str:
        return (self.run.state.message or "") if self.run.state else ""


def follow_run(run_id: UUID, *, timeout: float, poll: float = 5.0,
               on_change: Callable[[FlowRun], None] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> FollowedRun:
    """Read the run until it ends or ``timeout`` passes (the run itself goes on)."""
    deadline = time.monotonic() + timeout
    seen: str | None = None
    with get_client(sync_client=True) as client:
        while True:  # bounded by the deadline
            run = client.read_flow_run(run_id)
            name = run.state.name if run.state else None
            if name != seen and on_change is not None:
                on_change(run)
            seen = name
            finished = bool(run.state and run.state.is_final())
            if finished or time.monotonic() >= deadline:
                return FollowedRun(run, url_for(run), finished)
            sleep(min(poll, max(deadline - time.monotonic(), 0.0)))


def read_outcome(run_id: UUID) -> dict[str, Any]:
    """The row of the run's outcome artifact; {} if the run left none."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            key=ArtifactFilterKey(like_=OUTCOME_SUFFIX)))
    for artifact in artifacts:
        if (artifact.key or "").endswith(OUTCOME_SUFFIX) and isinstance(artifact.data, str):
            rows = json.loads(artifact.data)
            return dict(rows[0]) if rows else {}
    return {}
