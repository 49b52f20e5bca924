"""A registered model's life after its run: list, approve or reject, deploy, roll back, promote.

The gate decides when a run ends; a person decides later, from the CLI, with the very
functions the flow uses, so the same checks apply: only an Approved package is
deployed, blue/green with the endpoint's settings, the endpoint must really serve the
new config, and a smoke test with rows of a recorded test split must pass or the
endpoint is put back (``tasks.endpoints.deploy_package``). A deploy leaves a run record
(`sagepipe status` lists it) and an SNS notification, like a flow's deploy. Deploying
an older version is the rollback.

A version a paused flow run waits for (``gate.approval: manual``) is answered through
that run, so the flow goes on, records its decision and deploys by itself.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import PrefectException
from prefect.flow_runs import resume_flow_run

from sagepipe.flows.config import PipelineConfig
from sagepipe.flows.pipeline import run_tags
from sagepipe.tasks.data import parse_s3_uri
from sagepipe.tasks.endpoints import (
    DeployResult,
    EndpointSettings,
    deploy_package,
    deployment_config,
    endpoint_status,
    retire_staging,
)
from sagepipe.tasks.errors import (
    ConfigError,
    DataError,
    DeployFailed,
    DeployRolledBack,
    EndpointError,
    RegistryError,
)
from sagepipe.tasks.notify import console_links, publish_outcome
from sagepipe.tasks.registry import find_champion, find_package, set_approval
from sagepipe.tasks.runtime import Clients, get_clients
from sagepipe.tasks.status import model_rows
from sagepipe.tasks.storage import (
    ensure_local_resources,
    latest_sample_rows,
    read_json_if_any,
    record_uri,
    sample_rows,
    write_run_record,
)

__all__ = ["Answered", "Deployed", "decide", "deploy_version", "live_models", "model_versions",
           "promote"]

FLOW_NAME = "ml-pipeline"
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answered:
    """What ``decide`` did: the registry's new status, or the paused run it answered."""

    version: int
    package_arn: str
    approval: str  # approved | rejected
    description: str
    flow_run: Any | None = None  # the resumed flow run (it sets the status itself)
    api_problem: str | None = None  # why no paused run could be looked for


@dataclass(frozen=True)
class Deployed:
    version: int
    package_arn: str
    endpoint: str
    result: DeployResult
    previous_version: int | None
    record_uri: str

    @property
    def rollback(self) -> bool:
        return self.previous_version is not None and self.previous_version > self.version


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "an unknown user"


def live_models(clients: Clients, config: PipelineConfig) -> dict[str, list[str]]:
    """{package ARN: the configured endpoints (production, staging) serving it}."""
    live: dict[str, list[str]] = {}
    for name in (config.endpoint.name, config.endpoint.staging_name):
        champion = find_champion(clients, name) if name else None
        if champion is not None and name:
            live.setdefault(champion.package_arn, []).append(name)
    return live


def model_versions(config: PipelineConfig, limit: int = 20) -> list[dict[str, Any]]:
    """The rows of `sagepipe models`: newest first, with metric, data, commit and where live."""
    clients = get_clients(config.runtime)
    return model_rows(clients, config.model_package_group, limit=limit,
                      live=live_models(clients, config))


def decide(config: PipelineConfig, version: str, *, approve: bool, note: str = "",
           by: str | None = None) -> Answered:
    """Approve or reject a version; a flow run paused for it gets the answer instead."""
    clients = get_clients(config.runtime)
    package = find_package(clients, config.model_package_group, version)
    arn, number = package["ModelPackageArn"], int(package["ModelPackageVersion"])
    approval = "approved" if approve else "rejected"
    how = f"from the CLI by {by or who()}" + (f": {note}" if note else "")
    text = f"{'Approved' if approve else 'Rejected'} {how}"
    metadata = package.get("CustomerMetadataProperties") or {}
    problem = None
    if package["ModelApprovalStatus"] == "PendingManualApproval" and metadata.get(
            "flow_run_id"):
        apis = _apis(config)
        if not apis:
            problem = ("PREFECT_API_URL is unset and no Prefect server sagepipe started is "
                       "running here")
        try:
            for api in apis:
                with _using(api):
                    flow_run = _paused_run(config.project, metadata["flow_run_id"])
                    if flow_run is not None:  # the flow records "<Approved> by a person"
                        _resume(flow_run.id, {"approve": approve, "note": how})
                        return Answered(number, arn, approval, text, flow_run=flow_run)
        # no API (an unreachable PREFECT_API_URL, a temporary server that did not start), or
        # the run stopped waiting between the lookup and the answer: the registry decides
        except (httpx.HTTPError, OSError, RuntimeError, PrefectException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    set_approval(clients, arn, approval, text)
    _notify_decision(clients, config, number, arn, approval, text)
    return Answered(number, arn, approval, text, api_problem=problem)


def _apis(config: PipelineConfig) -> list[str | None]:
    """Where a paused run can wait: PREFECT_API_URL when set (None: the current settings);
    else the local server `sagepipe run` keeps, and the servers of `--no-server` runs."""
    from prefect.settings import get_current_settings

    from sagepipe.flows.runner import temporary_servers
    from sagepipe.flows.server import running

    if os.environ.get("PREFECT_API_URL") or get_current_settings().api.url:
        return [None]
    state = Path(config.runtime.state_dir)
    servers = [running(state / "prefect"), *(running(d) for d in temporary_servers(state))]
    return [s.api_url for s in servers if s is not None]


def _using(api: str | None) -> Any:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return contextlib.nullcontext() if api is None else temporary_settings(
        updates={PREFECT_API_URL: api})


def _notify_decision(clients: Clients, config: PipelineConfig, number: int, arn: str,
                     approval: str, text: str) -> None:
    """A decision made from the CLI is announced like a run's outcome."""
    topic = config.notifications.topic_arn
    if topic is None and config.runtime.kind == "local":
        topic = ensure_local_resources(config.runtime, parse_s3_uri(config.artifacts_uri)[0],
                                       f"{config.project}-events")
    if topic:
        publish_outcome(clients, topic, approval, project=config.project,
                        summary=f"version {number} {approval}: {text}",
                        details={"model_package": {"arn": arn, "approval": approval},
                                 "by": text})


def _paused_run(project: str, flow_run_id: str) -> Any | None:
    """The run of ml-pipeline for ``project`` paused for input with this id, if any."""
    try:
        wanted = uuid.UUID(flow_run_id)
    except ValueError:  # "adhoc-...": the run had no Prefect flow run to pause
        return None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    for run in runs:
        config = (run.parameters or {}).get("config") or {}
        details = run.state.state_details if run.state else None
        if (run.id == wanted and config.get("project", project) == project
                and details is not None and details.run_input_keyset):
            return run
    return None


def _resume(flow_run_id: Any, answer: dict[str, Any]) -> None:
    resume_flow_run(flow_run_id, run_input=answer)


def endpoint_settings(clients: Clients, config: PipelineConfig,
                      name: str | None) -> EndpointSettings:
    """The settings a deploy to ``name`` uses: production's, staging's, or production's
    rollout (not its autoscaling) for another endpoint that exists (a typo must not create
    a new endpoint)."""
    if name is None or name == config.endpoint.name:
        return config.endpoint
    if name == config.endpoint.staging_name:
        return config.endpoint.for_staging()
    if endpoint_status(clients, name) is None:
        known = ", ".join(n for n in (config.endpoint.name, config.endpoint.staging_name) if n)
        raise EndpointError(name, f"No endpoint named {name!r}, and it is not one of the "
                            f"settings' endpoints ({known}). Deploy to one of those (or "
                            "leave out --endpoint for production); `sagepipe status` lists "
                            "the endpoints there are.")
    return config.endpoint.model_copy(update={"name": name, "autoscaling": None})


def smoke_rows(clients: Clients, config: PipelineConfig, flow_run_id: str | None) -> str:
    """Rows of the version's own test split if its run recorded one, else of the newest run
    that did: the payload the endpoint must answer before the deploy counts."""
    if flow_run_id:
        record = read_json_if_any(clients, record_uri(config.artifacts_uri, flow_run_id))
        test = ((((record or {}).get("steps") or {}).get("preprocess") or {})
                .get("outputs") or {}).get("test")
        if test:
            return sample_rows(clients, test, config.label_column)
    rows = latest_sample_rows(clients, config.artifacts_uri, config.label_column)
    if rows is None:
        raise DataError(f"No run under {config.artifacts_uri} recorded a test split, so there "
                        "are no rows to smoke-test the endpoint with. Run the pipeline once "
                        "(sagepipe run), then deploy again.")
    return rows


def deploy_version(config: PipelineConfig, version: str, *, endpoint: str | None = None,
                   action: str = "deploy", by: str | None = None,
                   log: logging.Logger | logging.LoggerAdapter[Any] = _LOG) -> Deployed:
    """Deploy a registered, Approved version to an endpoint, as the flow deploys.

    Raises RegistryError (unknown, not Approved), EndpointError (unknown endpoint),
    DataError (no smoke payload) before anything changes; DeployFailed or
    DeployRolledBack when the endpoint did not take the version (recorded, notified).
    """
    clients = get_clients(config.runtime)
    package = find_package(clients, config.model_package_group, version)
    arn, number = package["ModelPackageArn"], int(package["ModelPackageVersion"])
    status = package["ModelApprovalStatus"]
    if status != "Approved":
        raise RegistryError(arn, (
            f"Version {number} of {config.model_package_group} is {status} in the model "
            "registry, and only Approved versions are deployed. If it should go live, approve "
            f"it first: sagepipe approve {number} --note \"why\", then deploy it again."))
    settings = endpoint_settings(clients, config, endpoint)
    metadata = package.get("CustomerMetadataProperties") or {}
    payload = smoke_rows(clients, config, metadata.get("flow_run_id"))
    champion = find_champion(clients, settings.name)
    previous = champion.version if champion else None
    started = time.time()
    run_id = f"cli-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}-{action}-v{number}"
    record: dict[str, Any] = {
        "run_id": run_id, "run_name": f"{action} v{number} to {settings.name}",
        "commit": metadata.get("commit") or None, "project": config.project,
        "runtime": config.runtime.kind, "started": started, "steps": {}, "action": action,
        "by": by or who(), "model_package": {"arn": arn, "version": number,
                                             "approval": "approved"},
        "previous": {"version": previous, "arn": champion.package_arn if champion else None,
                     "endpoint_config": champion.endpoint_config if champion else None}}
    tags = run_tags(run_id, config.project, metadata.get("commit") or None)
    log.info("Deploying version %d (%s) to %s%s", number, arn, settings.name,
             f", live now: version {previous}" if previous is not None else "")
    try:
        result = deploy_package(
            clients, endpoint=settings.name, package_arn=arn, role_arn=config.jobs.role_arn,
            instance_type=settings.instance_type, instance_count=settings.instance_count,
            deploy_config=deployment_config(settings), smoke_payload=payload,
            timeout=settings.timeout_seconds, log=log, first_poll=settings.poll_first_seconds,
            max_poll=settings.poll_max_seconds,
            tags=[{"Key": k, "Value": v[:256]} for k, v in tags.items()],
            autoscaling=settings.autoscaling, serverless=settings.serverless)
    except DeployFailed as exc:
        outcome = "rolled_back" if isinstance(exc, DeployRolledBack) else "failed"
        record.update(outcome=outcome, error={"type": type(exc).__name__, "message": str(exc)},
                      summary=f"{outcome}: {action} of version {number} to {settings.name}: "
                              f"{exc}")
        _finish(clients, config, record, settings.name)
        raise
    record.update(outcome="deployed", endpoint=result.model_dump(), summary=(
        f"deployed {arn} to {settings.name} ({action}"
        + (f", rolled back from version {previous}" if previous and previous > number else "")
        + (f", replacing version {previous}" if previous and previous < number else "")
        + ")"))
    uri = _finish(clients, config, record, settings.name)
    return Deployed(number, arn, settings.name, result, previous, uri)


def promote(config: PipelineConfig, *, by: str | None = None,
            log: logging.Logger | logging.LoggerAdapter[Any] = _LOG) -> Deployed:
    """Staging's live version to production, through the same deploy."""
    staging = config.endpoint.staging_name
    if not staging:
        raise ConfigError("No staging endpoint is configured (endpoint.staging_name), so there "
                          "is nothing to promote. Set endpoint.staging_name in the settings "
                          "(or --set endpoint.staging_name=NAME), or deploy a version to "
                          "production directly: sagepipe deploy VERSION.")
    champion = find_champion(get_clients(config.runtime), staging)
    if champion is None:
        raise EndpointError(staging, f"No registered model is live on the staging endpoint "
                            f"{staging}. Deploy a version there first: sagepipe deploy VERSION "
                            f"--endpoint {staging}.")
    deployed = deploy_version(config, champion.package_arn, endpoint=config.endpoint.name,
                              action="promote", by=by, log=log)
    if not config.endpoint.staging_keep:  # production serves it now: staging may go
        retire_staging(get_clients(config.runtime), staging, champion.endpoint_config, log=log)
    return deployed


def _finish(clients: Clients, config: PipelineConfig, record: dict[str, Any],
            endpoint: str) -> str:
    """Record the deploy where run records live and notify, as the flow's deploy does."""
    record["ended"] = time.time()
    record["seconds"] = round(record["ended"] - record["started"], 2)
    record["links"] = console_links(config.runtime.region, endpoint=endpoint,
                                    group=config.model_package_group, flow_run_url=None)
    uri = write_run_record(clients, config.artifacts_uri, record["run_id"], record)
    record["record_uri"] = uri
    topic = config.notifications.topic_arn
    if topic is None and config.runtime.kind == "local":
        topic = ensure_local_resources(config.runtime, parse_s3_uri(config.artifacts_uri)[0],
                                       f"{config.project}-events")
    if topic:
        publish_outcome(clients, topic, record["outcome"], project=config.project,
                        summary=record["summary"],
                        details={k: record.get(k) for k in (
                            "run_id", "action", "by", "commit", "model_package", "previous",
                            "endpoint", "error", "links")})
    return uri
