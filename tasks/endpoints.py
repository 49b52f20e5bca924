"""Deploying a registered model to an endpoint, blue/green, and proving it serves.

``deploy_package`` is idempotent (deterministic model and config names, describe
before create) so a retried task never doubles anything. After the wait it checks
that the endpoint really serves the new config: a failed SageMaker update leaves
the endpoint InService on the old config with FailureReason set, which a plain
waiter would call success. Then a smoke test invokes it; if that fails after an
update, the endpoint is put back on the previous config. The wait's Describe
calls ride out throttling and 5xx replies (:func:`tasks.runtime.call_with_retry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DeployFailed, DeployRolledBack, EndpointError
from .runtime import (
    Clients,
    RuntimeSettings,
    call_with_retry,
    get_clients,
    is_not_found,
    retry_transient,
)
from .scaling import AutoscalingSettings, EndpointScaling

__all__ = ["DeployResult", "EndpointSettings", "deploy_model", "deploy_package",
           "deployment_config", "endpoint_status", "invoke"]

_TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack")
_LOG = logging.getLogger(__name__)
Strategy = Literal["all_at_once", "canary", "linear"]


class EndpointSettings(BaseModel):
    """The production endpoint and how a new model reaches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("sagepipe-demo", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    instance_type: str = "ml.m5.large"
    instance_count: int = Field(1, ge=1, le=100)
    strategy: Strategy = "all_at_once"
    canary_percent: int = Field(10, ge=1, le=50, description="of the fleet, at least one "
                                "instance, at most half (SageMaker's CanarySize)")
    linear_step_percent: int = Field(25, ge=10, le=50, description="of the fleet per step: "
                                     "10-50% (SageMaker's LinearStepSize)")
    wait_seconds: int = Field(300, ge=0, le=3600, description="bake time between traffic shifts")
    alarms: list[str] = Field(default_factory=list, max_length=10,
                              description="CloudWatch alarms that roll a deployment back")
    timeout_seconds: float = Field(3600, gt=0)
    poll_first_seconds: float = Field(1.0, gt=0, le=300)
    poll_max_seconds: float = Field(30.0, gt=0, le=600)
    staging_name: str | None = Field(
        None, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
        description="deploy and smoke-test here first, then production")
    staging_alarms: list[str] = Field(
        default_factory=list, max_length=10,
        description="alarms that roll the staging endpoint back (production's watch "
        "production); none: staging is updated all at once and its smoke test decides")
    autoscaling: AutoscalingSettings | None = Field(
        None, description="production only: instances follow the traffic between "
        "min_instances and max_instances (Application Auto Scaling, target tracking on "
        "invocations per instance); unset: always instance_count")

    @model_validator(mode="after")
    def _rollout(self) -> EndpointSettings:
        # TrafficRoutingConfig (SageMaker API reference): CanarySize at most 50% of the
        # variant's instances, LinearStepSize 10-50%; batches are whole instances
        if self.strategy != "all_at_once" and self.instance_count < 2:
            raise ValueError(
                f"endpoint.strategy {self.strategy} shifts traffic to the new model in "
                "batches of instances: a canary is at most half the fleet and a linear step "
                "10-50% of it (SageMaker's TrafficRoutingConfig), so one instance has no "
                "smaller batch. Set endpoint.instance_count: 2 or more, or strategy: "
                "all_at_once.")
        # deployment guardrails: "If you do not have any CloudWatch alarms set up to monitor
        # your endpoint, then the auto-rollback functionality does not work"
        if self.strategy != "all_at_once" and not self.alarms:
            raise ValueError(
                f"endpoint.strategy {self.strategy} without endpoint.alarms cannot roll "
                "back: SageMaker's auto-rollback works only with CloudWatch alarms that "
                "watch the endpoint. Name them (the stack's EndpointAlarms output) or use "
                "strategy: all_at_once.")
        return self

    @model_validator(mode="after")
    def _autoscaling_fits_the_endpoint(self) -> EndpointSettings:
        """endpoint.autoscaling scales the instances of a real-time endpoint; a hook that
        also refuses it on a serverless one (endpoint.serverless, when that setting exists)."""
        scaling = self.autoscaling
        if scaling is None:
            return self
        if getattr(self, "serverless", None) is not None:
            raise ValueError(
                "endpoint.autoscaling scales the instances of a real-time endpoint, and "
                "endpoint.serverless has none: a serverless endpoint scales itself up to its "
                "max_concurrency. Remove one of the two.")
        if not scaling.min_instances <= self.instance_count <= scaling.max_instances:
            raise ValueError(
                f"endpoint.instance_count ({self.instance_count}) is the fleet a first deploy "
                f"starts with, and endpoint.autoscaling keeps the fleet between min_instances "
                f"({scaling.min_instances}) and max_instances ({scaling.max_instances}): set "
                "instance_count within those bounds.")
        # TrafficRoutingConfig (SageMaker API reference): a canary at most 50% of the
        # variant's instances, a linear step 10-50%. While the variant is a scalable target a
        # deploy keeps its current instance count (RetainAllVariantProperties), so the batch
        # must fit every fleet size autoscaling may have reached.
        if self.strategy == "canary":
            batch = _batch(self.instance_count, self.canary_percent, 0)
            if scaling.min_instances < 2 * batch:
                raise ValueError(
                    f"endpoint.strategy canary shifts traffic to {batch} instance(s) first, "
                    "and a canary may be at most half the fleet (SageMaker's "
                    "TrafficRoutingConfig); with endpoint.autoscaling a deploy may start from "
                    f"a fleet of min_instances ({scaling.min_instances}). Set "
                    f"endpoint.autoscaling.min_instances to {2 * batch} or more, lower "
                    "canary_percent, or use strategy all_at_once.")
        elif self.strategy == "linear":
            batch = _batch(self.instance_count, self.linear_step_percent, 10)
            if scaling.min_instances < 2 * batch or scaling.max_instances > 10 * batch:
                raise ValueError(
                    f"endpoint.strategy linear moves {batch} instance(s) per step, and a step "
                    "must be 10-50% of the fleet (SageMaker's TrafficRoutingConfig); with "
                    "endpoint.autoscaling a deploy may start from any fleet size between "
                    f"min_instances ({scaling.min_instances}) and max_instances "
                    f"({scaling.max_instances}). Keep min_instances >= {2 * batch} and "
                    f"max_instances <= {10 * batch}, or use strategy canary or all_at_once.")
        return self

    def for_staging(self) -> EndpointSettings:
        """The staging endpoint's settings: its own alarms (or all at once without any)."""
        if not self.staging_name:
            raise ValueError("no endpoint.staging_name")
        return self.model_copy(update={
            "name": self.staging_name, "alarms": list(self.staging_alarms),
            "autoscaling": None,  # staging is smoke-tested, not scaled
            "strategy": self.strategy if self.staging_alarms else "all_at_once"})


class DeployResult(BaseModel):
    endpoint: str
    endpoint_config: str
    model_name: str
    action: Literal["created", "updated", "unchanged"]
    previous_config: str | None
    smoke_test: str
    autoscaling: dict[str, Any] | None = None  # in force after the deploy, or what was removed


def _batch(count: int, percent: int, low: int) -> int:
    """``percent`` of ``count`` instances as whole instances within [low%, 50%], at least 1."""
    wanted = max(1, count * percent // 100, math.ceil(count * low / 100))
    return min(wanted, count // 2)


def deployment_config(settings: EndpointSettings) -> dict[str, Any]:
    """BlueGreenUpdatePolicy from the settings; auto-rollback on their alarms.

    Batches are sent as INSTANCE_COUNT: a percentage of a small fleet is not a whole
    number of instances, and SageMaker needs one within its documented bounds.
    """
    routing: dict[str, Any] = {"Type": settings.strategy.upper(),
                               "WaitIntervalInSeconds": settings.wait_seconds}
    count = settings.instance_count
    if settings.strategy == "canary":
        routing["CanarySize"] = {"Type": "INSTANCE_COUNT",
                                 "Value": _batch(count, settings.canary_percent, 0)}
    elif settings.strategy == "linear":
        routing["LinearStepSize"] = {"Type": "INSTANCE_COUNT",
                                     "Value": _batch(count, settings.linear_step_percent, 10)}
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": routing, "TerminationWaitInSeconds": 0}}
    if settings.alarms:
        config["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": a} for a in settings.alarms]}
    return config


# Putting an endpoint back after a failed smoke test: at once, and without alarms the
# failing smoke test itself may have tripped (they would roll the rollback back).
ROLLBACK_CONFIG: dict[str, Any] = {"BlueGreenUpdatePolicy": {
    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
    "TerminationWaitInSeconds": 0}}


def _names(endpoint: str, package_arn: str) -> tuple[str, str]:
    digest = hashlib.sha256(package_arn.encode()).hexdigest()[:10]
    version = package_arn.rsplit("/", 1)[-1]
    stem = f"{endpoint[:40]}-v{version}-{digest}"
    return stem, f"{stem}-cfg"


def _exists(describe: Callable[..., Any], **params: Any) -> bool:
    try:
        describe(**params)
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise
    return True


def _await_config(sm: Any, name: str, *, sleep: Callable[[float], None],
                  attempts: int = 5) -> None:
    """CreateEndpoint reads the config with an eventually consistent read; the API reference
    advises calling DescribeEndpointConfig first. Bounded: a few tries, then go on."""
    for attempt in range(attempts):
        if _exists(sm.describe_endpoint_config, EndpointConfigName=name):
            return
        sleep(min(0.5 * 2 ** attempt, 4.0))


def _wait_deleted(clients: Clients, name: str, *, timeout: float,
                  sleep: Callable[[float], None],
                  log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Until DescribeEndpoint says the endpoint no longer exists (bounded)."""
    start, interval = time.monotonic(), 1.0
    while True:
        try:
            call_with_retry(clients.sagemaker.describe_endpoint, log=log, sleep=sleep,
                            EndpointName=name)
        except ClientError as exc:
            if is_not_found(exc):
                return
            raise
        if time.monotonic() - start > timeout:
            raise DeployFailed(name, f"Endpoint {name} is still Deleting after {timeout:.0f} s; "
                               "run again once it is gone.")
        sleep(interval)
        interval = min(interval * 1.5, 30.0)


def endpoint_status(clients: Clients, name: str) -> str | None:
    """The endpoint's EndpointStatus, or None if there is no such endpoint."""
    try:
        described = clients.sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    return str(described["EndpointStatus"])


def wait_endpoint(clients: Clients, name: str, *, timeout: float,
                  sleep: Callable[[float], None] = time.sleep,
                  first_poll: float = 1.0, max_poll: float = 30.0,
                  log: logging.Logger | logging.LoggerAdapter[Any] = _LOG) -> dict[str, Any]:
    """Poll until ``name`` leaves the transitional states; returns the last Describe."""
    start, interval = time.monotonic(), first_poll
    while True:
        described: dict[str, Any] = call_with_retry(
            clients.sagemaker.describe_endpoint, log=log, sleep=sleep, EndpointName=name)
        if described["EndpointStatus"] not in _TRANSITIONAL:
            return described
        if time.monotonic() - start > timeout:
            raise DeployFailed(name, f"Endpoint {name} still {described['EndpointStatus']} "
                               f"after {timeout:.0f} s. Check it in the SageMaker console; "
                               "raise endpoint.timeout_seconds if it needs longer.")
        sleep(interval)
        interval = min(interval * 1.5, max_poll)


def deploy_requests(*, endpoint: str, package_arn: str, role_arn: str, instance_type: str,
                    instance_count: int, tags: list[dict[str, str]] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CreateModel and CreateEndpointConfig requests for a package (names derived)."""
    model_name, config_name = _names(endpoint, package_arn)
    model = {"ModelName": model_name, "ExecutionRoleArn": role_arn,
             "PrimaryContainer": {"ModelPackageName": package_arn}, "Tags": tags or []}
    config = {"EndpointConfigName": config_name, "Tags": tags or [],
              "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model_name,
                                      "InitialInstanceCount": instance_count,
                                      "InstanceType": instance_type}]}
    return model, config


def deploy_package(clients: Clients, *, endpoint: str, package_arn: str, role_arn: str,
                   instance_type: str, instance_count: int, deploy_config: dict[str, Any],
                   smoke_payload: str, timeout: float,
                   log: logging.Logger | logging.LoggerAdapter[Any],
                   tags: list[dict[str, str]] | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   first_poll: float = 1.0, max_poll: float = 30.0,
                   autoscaling: AutoscalingSettings | None = None) -> DeployResult:
    """``autoscaling``: applied once the new model serves (None: sagepipe's own scaling
    policy, if an earlier deploy left one, is removed); see :mod:`tasks.scaling`."""
    model_request, config_request = deploy_requests(
        endpoint=endpoint, package_arn=package_arn, role_arn=role_arn,
        instance_type=instance_type, instance_count=instance_count, tags=tags)
    model_name = model_request["ModelName"]
    config_name = config_request["EndpointConfigName"]
    sm = clients.sagemaker
    scaling = EndpointScaling(clients.application_autoscaling, sm, endpoint, autoscaling, log,
                              sleep)
    # only an Approved package is ever deployed, whatever the caller decided
    status = sm.describe_model_package(ModelPackageName=package_arn)["ModelApprovalStatus"]
    if status != "Approved":
        raise DeployFailed(endpoint, f"{package_arn} is {status} in the model registry; only "
                           "Approved packages are deployed. Approve it first if intended.")
    if not _exists(sm.describe_model, ModelName=model_name):
        sm.create_model(**model_request)
    if not _exists(sm.describe_endpoint_config, EndpointConfigName=config_name):
        sm.create_endpoint_config(**config_request)
        _await_config(sm, config_name, sleep=sleep)
    try:
        current = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        current = None
    previous: str | None = None
    if current is not None and current["EndpointStatus"] == "Deleting":
        log.info("Endpoint %s is being deleted; waiting until it is gone", endpoint)
        _wait_deleted(clients, endpoint, timeout=timeout, sleep=sleep, log=log)
        current = None
    if current is None:
        log.info("Creating endpoint %s with %s", endpoint, config_name)
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name, Tags=tags or [])
        action: Literal["created", "updated", "unchanged"] = "created"
    else:
        if current["EndpointStatus"] in _TRANSITIONAL:  # a retry, or somebody else's update
            current = wait_endpoint(clients, endpoint, timeout=timeout, sleep=sleep, log=log,
                          first_poll=first_poll, max_poll=max_poll)
        previous = current["EndpointConfigName"]
        if previous == config_name and current["EndpointStatus"] == "InService":
            action = "unchanged"
        elif current["EndpointStatus"] == "Failed":
            raise DeployFailed(endpoint, f"Endpoint {endpoint} is Failed "
                               f"({current.get('FailureReason', 'no reason given')}); it cannot "
                               "be updated. Delete it (sagepipe down) and run again.")
        else:
            action = "updated"
    try:
        if action == "updated":
            scaling.before_update(current, config_request)
            log.info("Updating endpoint %s: %s -> %s (blue/green)", endpoint, previous,
                     config_name)
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name,
                               DeploymentConfig=deploy_config, **scaling.update_options())
        answer = _serves(clients, endpoint, config_name, previous, smoke_payload,
                         timeout=timeout, sleep=sleep, log=log, first_poll=first_poll,
                         max_poll=max_poll, update_options=scaling.update_options())
    except Exception:
        scaling.restore()  # the endpoint is (back) on its old config: so is its autoscaling
        raise
    in_force = scaling.after_deploy(config_request, created=action == "created")
    return DeployResult(endpoint=endpoint, endpoint_config=config_name, model_name=model_name,
                        action=action, previous_config=previous, smoke_test=answer[:200],
                        autoscaling=in_force)


def _serves(clients: Clients, endpoint: str, config_name: str, previous: str | None,
            smoke_payload: str, *, timeout: float, sleep: Callable[[float], None],
            log: logging.Logger | logging.LoggerAdapter[Any], first_poll: float,
            max_poll: float, update_options: dict[str, Any]) -> str:
    """Wait until ``endpoint`` serves ``config_name`` and answers the smoke test (its
    answer); after an update whose smoke test fails, put it back on ``previous``."""
    sm = clients.sagemaker
    final = wait_endpoint(clients, endpoint, timeout=timeout, sleep=sleep, log=log,
                          first_poll=first_poll, max_poll=max_poll)
    if final["EndpointStatus"] != "InService":
        raise DeployFailed(endpoint, f"Endpoint {endpoint} ended {final['EndpointStatus']}: "
                           f"{final.get('FailureReason', 'no reason given')}")
    if final["EndpointConfigName"] != config_name:
        raise DeployRolledBack(
            endpoint, f"Update of {endpoint} to {config_name} was rolled back; it still serves "
            f"{final['EndpointConfigName']}. Reason: {final.get('FailureReason', 'not given')}")
    try:
        return invoke(clients, endpoint, smoke_payload, content_type="text/csv")
    except EndpointError as exc:
        if previous and previous != config_name:
            log.error("Smoke test failed (%s); rolling %s back to %s", exc, endpoint, previous)
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=previous,
                               DeploymentConfig=ROLLBACK_CONFIG, **update_options)
            back = wait_endpoint(clients, endpoint, timeout=timeout, sleep=sleep, log=log,
                                 first_poll=first_poll, max_poll=max_poll)
            if back["EndpointStatus"] != "InService" or back["EndpointConfigName"] != previous:
                raise DeployFailed(endpoint, (
                    f"Smoke test of {endpoint} on {config_name} failed ({exc}), and putting "
                    f"it back on {previous} did not take: it is {back['EndpointStatus']} on "
                    f"{back['EndpointConfigName']} "
                    f"({back.get('FailureReason', 'no reason given')}). Check the endpoint in "
                    "the SageMaker console.")) from exc
            raise DeployRolledBack(endpoint, f"Smoke test of {endpoint} on {config_name} "
                                   f"failed ({exc}); rolled back to {previous}.") from exc
        raise DeployFailed(endpoint, f"Smoke test of {endpoint} failed: {exc}") from exc


def invoke(clients: Clients, endpoint: str, body: bytes | str, *,
           content_type: str = "text/csv", accept: str = "application/json") -> str:
    """Invoke ``endpoint``; EndpointError says what went wrong in the caller's terms."""
    try:
        response = clients.sagemaker_runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body, ContentType=content_type, Accept=accept)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code"), error.get("Message", str(exc))
        if code == "ValidationError" and "not found" in message:
            raise EndpointError(endpoint, f"No endpoint named {endpoint!r}. `sagepipe status` "
                                "lists the endpoints.") from exc
        status: Any = exc.response.get("OriginalStatusCode")
        if code == "ModelError" and status:
            original = _container_message(str(exc.response.get("OriginalMessage", message)))
            raise EndpointError(endpoint, f"{endpoint} refused the request ({status}): "
                                f"{original}", status=int(status)) from exc
        raise EndpointError(endpoint, f"Invoking {endpoint} failed: {code}: {message}") from exc
    return str(response["Body"].read().decode())


@task(name="deploy-model", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def deploy_model(runtime: RuntimeSettings, settings: EndpointSettings, package_arn: str,
                 role_arn: str, smoke_payload: str, tags: dict[str, str]) -> DeployResult:
    config = deployment_config(settings)
    result = deploy_package(
        get_clients(runtime), endpoint=settings.name, package_arn=package_arn,
        role_arn=role_arn, instance_type=settings.instance_type,
        instance_count=settings.instance_count, deploy_config=config,
        smoke_payload=smoke_payload, timeout=settings.timeout_seconds, log=get_run_logger(),
        first_poll=settings.poll_first_seconds, max_poll=settings.poll_max_seconds,
        tags=[{"Key": k, "Value": v[:256]} for k, v in tags.items()],
        autoscaling=settings.autoscaling)
    get_run_logger().info("Endpoint %s %s: serves %s; smoke test answered %s", result.endpoint,
                          result.action, result.endpoint_config, result.smoke_test)
    return result


def _container_message(original: str) -> str:
    """The serving container answers {"error": "..."}; show just the text."""
    try:
        parsed = json.loads(original)
    except ValueError:
        return original
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed["error"]
    return original
