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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError, DeployFailed, DeployRolledBack, EndpointError, EndpointMissing
from .runtime import (
    Clients,
    RuntimeSettings,
    call_with_retry,
    get_clients,
    is_not_found,
    retry_transient,
)
from .scaling import AutoscalingSettings, EndpointScaling

__all__ = ["DeployResult", "EndpointSettings", "ServerlessSettings", "StagingRetired",
           "check_endpoint_in_service", "check_endpoint_kind", "deploy_model", "deploy_package",
           "deployment_config", "endpoint_status", "invoke", "out_of_service",
           "retire_staging", "retire_staging_endpoint", "settle_endpoint"]

# an endpoint in one of these is being changed (a request SageMaker has taken)
TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack")
_LOG = logging.getLogger(__name__)
Strategy = Literal["all_at_once", "canary", "linear"]
# ProductionVariantServerlessConfig.MemorySizeInMB (SageMaker API reference): "Valid values
# are in 1 GB increments: 1024 MB, 2048 MB, 3072 MB, 4096 MB, 5120 MB, or 6144 MB"
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
# "For serverless endpoints, we recommend creating only one worker in the container and only
# loading one copy of the model" (Serverless Inference, Container support); sagepipe's server
# and the framework images' inference toolkit both read this variable
_ONE_WORKER = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}


class ServerlessSettings(BaseModel):
    """A serverless endpoint: no instances; SageMaker starts compute when requests come and
    scales to zero when none do (a cold start for the first request after a while)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # defaults: the SageMaker Python SDK's ServerlessInferenceConfig (2048 MB, 5)
    memory_mb: int = Field(2048, description="1024, 2048, 3072, 4096, 5120 or 6144: the "
                           "memory of each concurrent copy (vCPUs grow with it)")
    max_concurrency: int = Field(5, ge=1, le=200, description="concurrent invocations at "
                                 "most (1-200); more are throttled")
    provisioned_concurrency: int | None = Field(
        None, ge=1, le=200, description="copies kept warm (no cold start for them, billed "
        "while provisioned); at most max_concurrency; unset: none, scale to zero")

    @field_validator("memory_mb")
    @classmethod
    def _memory_size(cls, memory_mb: int) -> int:
        if memory_mb not in SERVERLESS_MEMORY_MB:
            raise ValueError(
                f"{memory_mb} MB is not a size SageMaker offers: a serverless endpoint has "
                "1024, 2048, 3072, 4096, 5120 or 6144 MB (1 GB steps). Pick one at least as "
                "large as the model in memory.")
        return memory_mb

    @model_validator(mode="after")
    def _concurrency(self) -> ServerlessSettings:
        # ProductionVariantServerlessConfig.ProvisionedConcurrency: "Should be less than or
        # equal to MaxConcurrency"
        if (self.provisioned_concurrency is not None
                and self.provisioned_concurrency > self.max_concurrency):
            raise ValueError(
                f"endpoint.serverless.provisioned_concurrency {self.provisioned_concurrency} "
                f"is more than max_concurrency {self.max_concurrency}: SageMaker keeps at "
                "most max_concurrency copies. Lower it, or raise max_concurrency.")
        return self

    def request(self) -> dict[str, int]:
        """ProductionVariantServerlessConfig."""
        config = {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned_concurrency is not None:
            config["ProvisionedConcurrency"] = self.provisioned_concurrency
        return config


LOCAL_POLL = {"poll_first_seconds": 0.05, "poll_max_seconds": 0.1}
"""The endpoint settings' polls on the local runtime when a config does not set them: a
Describe there is a read of this machine's state database, and the endpoint's supervisor
looks at its starting server every 0.05 s, so a wait paced for AWS (1 s rising to 30 s)
only adds up to a poll interval to every deploy (flows/config.py applies it)."""


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
    # AWS's pace (an endpoint takes minutes there); unset on the local runtime: LOCAL_POLL
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
    serverless: ServerlessSettings | None = Field(
        None, description="a serverless endpoint (memory_mb, max_concurrency, "
        "provisioned_concurrency) instead of instance_type x instance_count: nothing runs, "
        "and nothing is billed, while no request comes; the first after a while waits for a "
        "cold start. Also used by the staging endpoint")
    staging_keep: bool = Field(
        True, description="false: delete the staging endpoint (and its config) once "
        "production serves the model it was tested with; never when production did not "
        "take it. true (default): it stays, serving that model (and billed, unless "
        "serverless)")

    @model_validator(mode="after")
    def _serverless_fits(self) -> EndpointSettings:
        if self.serverless is None:
            return self
        # checked first, so that the two settings together get this message rather than one
        # about instance_count or strategy. endpoint.autoscaling is the variant's
        # sagemaker:variant:DesiredInstanceCount, which a serverless variant does not have
        # (it scales by concurrency; Application Auto Scaling could only move its
        # provisioned concurrency, which sagepipe does not manage)
        if self.autoscaling is not None:
            raise ValueError(
                "endpoint.autoscaling and endpoint.serverless are both set: autoscaling moves "
                "the instance count of a real-time endpoint between min_instances and "
                "max_instances, and a serverless endpoint has no instances - it scales "
                "itself, up to endpoint.serverless.max_concurrency. Remove one of the two: "
                "serverless (nothing billed while idle, cold starts) or autoscaling "
                "(instances always warm, at least min_instances billed).")
        # Deployment guardrails, Exclusions: a rolling deployment cannot update a serverless
        # endpoint; TrafficRoutingConfig sizes a canary (at most 50%) and linear steps
        # (10-50%) "of the variant's total instance count", which a serverless variant does
        # not have. An update is blue/green, all at once (alarms may still roll it back).
        if self.strategy != "all_at_once":
            raise ValueError(
                f"endpoint.strategy {self.strategy} shifts traffic in batches of the "
                "variant's instances, and a serverless endpoint has none: SageMaker updates "
                "a serverless endpoint blue/green all at once (rolling deployments exclude "
                "serverless endpoints). Use strategy: all_at_once - endpoint.alarms still "
                "roll a bad update back - or drop endpoint.serverless for canary or linear.")
        if self.instance_count > 1:
            raise ValueError(
                f"endpoint.instance_count {self.instance_count} with endpoint.serverless: a "
                "serverless endpoint has no instances, it scales by concurrency. Set "
                "endpoint.serverless.max_concurrency (and provisioned_concurrency to keep "
                "copies warm) instead, or drop endpoint.serverless.")
        # Serverless Inference, Feature exclusions: "GPUs ... are not supported"
        if self.instance_type.startswith(("ml.p", "ml.g", "ml.inf", "ml.trn")):
            raise ValueError(
                f"endpoint.instance_type {self.instance_type} is an accelerated instance, "
                "and serverless endpoints run on CPUs only (SageMaker supports no GPUs for "
                "Serverless Inference). Drop endpoint.serverless, or use a CPU instance "
                "type (it picks the serving image: CPU).")
        return self

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
        """endpoint.autoscaling scales the instances of a real-time endpoint (a serverless
        one is refused first, by :meth:`_serverless_fits`)."""
        scaling = self.autoscaling
        if scaling is None:
            return self
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


def _names(endpoint: str, package_arn: str, variant: str = "") -> tuple[str, str]:
    """(model, endpoint config) names; ``variant`` keys what else the config holds (a
    serverless config's sizes), so changing it makes a new config, not a silent reuse."""
    digest = hashlib.sha256((package_arn + variant).encode()).hexdigest()[:10]
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
                  log: logging.Logger | logging.LoggerAdapter[Any],
                  first_poll: float = 1.0, max_poll: float = 30.0) -> None:
    """Until DescribeEndpoint says the endpoint no longer exists (bounded)."""
    start, interval = time.monotonic(), first_poll
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
        interval = min(interval * 1.5, max_poll)


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
        if described["EndpointStatus"] not in TRANSITIONAL:
            return described
        if time.monotonic() - start > timeout:
            raise DeployFailed(name, f"Endpoint {name} still {described['EndpointStatus']} "
                               f"after {timeout:.0f} s. Check it in the SageMaker console; "
                               "raise endpoint.timeout_seconds if it needs longer.")
        sleep(interval)
        interval = min(interval * 1.5, max_poll)


def serverless_environment(package_environment: dict[str, str] | None) -> dict[str, str]:
    """The model container's Environment on a serverless endpoint: the package's own (a
    framework image's SAGEMAKER_PROGRAM, ...) plus one server worker."""
    return {**(package_environment or {}), **_ONE_WORKER}


def deploy_requests(*, endpoint: str, package_arn: str, role_arn: str, instance_type: str,
                    instance_count: int, tags: list[dict[str, str]] | None = None,
                    serverless: ServerlessSettings | None = None,
                    environment: dict[str, str] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CreateModel and CreateEndpointConfig requests for a package (names derived).

    Serverless: the variant carries ServerlessConfig "instead of an instance-based endpoint
    configuration" (ProductionVariant, API reference), so no InstanceType or count; the
    model gets ``environment`` (:func:`serverless_environment`) next to the package, as the
    SageMaker Python SDK's ModelPackage sends its ``env``.
    """
    variant: dict[str, Any] = {"VariantName": "AllTraffic"}
    if serverless is not None:
        variant["ServerlessConfig"] = serverless.request()
        key = "serverless:" + json.dumps(variant["ServerlessConfig"], sort_keys=True)
    else:
        variant.update(InitialInstanceCount=instance_count, InstanceType=instance_type)
        key = ""
    model_name, config_name = _names(endpoint, package_arn, key)
    container: dict[str, Any] = {"ModelPackageName": package_arn}
    if serverless is not None:
        container["Environment"] = dict(environment or serverless_environment(None))
    model = {"ModelName": model_name, "ExecutionRoleArn": role_arn,
             "PrimaryContainer": container, "Tags": tags or []}
    config = {"EndpointConfigName": config_name, "Tags": tags or [],
              "ProductionVariants": [{"VariantName": variant.pop("VariantName"),
                                      "ModelName": model_name, **variant}]}
    return model, config


def settle_endpoint(clients: Clients, settings: EndpointSettings, *,
                    log: logging.Logger | logging.LoggerAdapter[Any] = _LOG) -> bool:
    """Wait until no change of the endpoint is under way (Creating, Updating, ...; up to
    ``endpoint.timeout_seconds``); True if there was one. DeployFailed if it then cannot
    serve (Failed, OutOfService). What a run asks before calling itself unchanged because
    the endpoint already names its model: a deploy carried on after its run was killed may
    still be going, and may yet fail."""
    try:
        described = clients.sagemaker.describe_endpoint(EndpointName=settings.name)
    except ClientError as exc:
        if is_not_found(exc):
            return False
        raise
    waited = described["EndpointStatus"] in TRANSITIONAL
    if waited:
        log.info("Endpoint %s is %s: waiting for that to end", settings.name,
                 described["EndpointStatus"])
        described = wait_endpoint(clients, settings.name, timeout=settings.timeout_seconds,
                                  first_poll=settings.poll_first_seconds,
                                  max_poll=settings.poll_max_seconds, log=log)
    if described["EndpointStatus"] == "OutOfService":
        raise DeployFailed(settings.name, out_of_service(settings.name, described))
    if described["EndpointStatus"] == "Failed":
        raise DeployFailed(settings.name, (
            f"Endpoint {settings.name} is Failed "
            f"({described.get('FailureReason', 'no reason given')}); it serves nothing and "
            "cannot be updated. Delete it (sagepipe down) and run again."))
    return waited


def out_of_service(name: str, described: dict[str, Any]) -> str:
    return (f"Endpoint {name} is OutOfService: "
            f"{described.get('FailureReason') or 'it takes no requests'}. Nothing can be "
            "deployed to it until it serves again: on the local runtime `sagepipe up` starts "
            "it on the config it served; then run again.")


def check_endpoint_in_service(clients: Clients, name: str) -> None:
    """EndpointError before anything runs when ``name`` is OutOfService (the local runtime
    after a machine restart): a deploy could not update it, so no job is worth starting."""
    try:
        described = clients.sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if is_not_found(exc):
            return
        raise
    if described["EndpointStatus"] == "OutOfService":
        raise EndpointError(name, out_of_service(name, described))


def check_endpoint_kind(clients: Clients, name: str,
                        serverless: ServerlessSettings | None) -> None:
    """ConfigError when the settings want ``name`` serverless and it is instance-based.

    Serverless Inference, Feature exclusions: "You cannot convert your instance-based,
    real-time endpoint to a serverless endpoint. If you try to update your real-time
    endpoint to serverless, you receive a ValidationError message." (The other way round is
    allowed, and cannot be undone.) Checked before anything is made.
    """
    if serverless is None:
        return
    try:
        current = clients.sagemaker.describe_endpoint(EndpointName=name)
        if current["EndpointStatus"] == "Deleting":
            return
        config = clients.sagemaker.describe_endpoint_config(
            EndpointConfigName=current["EndpointConfigName"])
    except ClientError as exc:
        if is_not_found(exc):
            return
        raise
    variants = config["ProductionVariants"]
    if not variants or any("ServerlessConfig" in v for v in variants):
        return
    live = variants[0]
    raise ConfigError(
        f"Endpoint {name} runs on instances ({live.get('InitialInstanceCount', '?')} x "
        f"{live.get('InstanceType', '?')}), and endpoint.serverless is set: SageMaker cannot "
        "turn an instance-based endpoint into a serverless one (UpdateEndpoint fails with a "
        f"ValidationError). Delete {name} first (aws sagemaker delete-endpoint "
        f"--endpoint-name {name}; locally: sagepipe down) so the next deploy creates it "
        "serverless, deploy to another endpoint name, or drop endpoint.serverless.")


def deploy_package(clients: Clients, *, endpoint: str, package_arn: str, role_arn: str,
                   instance_type: str, instance_count: int, deploy_config: dict[str, Any],
                   smoke_payload: str, timeout: float,
                   log: logging.Logger | logging.LoggerAdapter[Any],
                   tags: list[dict[str, str]] | None = None,
                   sleep: Callable[[float], None] = time.sleep,
                   first_poll: float = 1.0, max_poll: float = 30.0,
                   autoscaling: AutoscalingSettings | None = None,
                   serverless: ServerlessSettings | None = None) -> DeployResult:
    """``autoscaling``: applied once the new model serves (None: sagepipe's own scaling
    policy, if an earlier deploy left one, is removed); see :mod:`tasks.scaling`.
    ``serverless``: a serverless variant instead of instances (never with autoscaling:
    :class:`EndpointSettings` refuses the two together)."""
    sm = clients.sagemaker
    scaling = EndpointScaling(clients.application_autoscaling, sm, endpoint, autoscaling, log,
                              sleep)
    # only an Approved package is ever deployed, whatever the caller decided
    package = sm.describe_model_package(ModelPackageName=package_arn)
    status = package["ModelApprovalStatus"]
    if status != "Approved":
        raise DeployFailed(endpoint, f"{package_arn} is {status} in the model registry; only "
                           "Approved packages are deployed. Approve it first if intended.")
    environment = None
    if serverless is not None:
        check_endpoint_kind(clients, endpoint, serverless)
        containers = (package.get("InferenceSpecification") or {}).get("Containers") or [{}]
        environment = serverless_environment(containers[0].get("Environment"))
    model_request, config_request = deploy_requests(
        endpoint=endpoint, package_arn=package_arn, role_arn=role_arn,
        instance_type=instance_type, instance_count=instance_count, tags=tags,
        serverless=serverless, environment=environment)
    model_name = model_request["ModelName"]
    config_name = config_request["EndpointConfigName"]
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
        _wait_deleted(clients, endpoint, timeout=timeout, sleep=sleep, log=log,
                      first_poll=first_poll, max_poll=max_poll)
        current = None
    if current is None:
        log.info("Creating endpoint %s with %s", endpoint, config_name)
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name, Tags=tags or [])
        action: Literal["created", "updated", "unchanged"] = "created"
    else:
        if current["EndpointStatus"] in TRANSITIONAL:  # a retry, or somebody else's update
            current = wait_endpoint(clients, endpoint, timeout=timeout, sleep=sleep, log=log,
                          first_poll=first_poll, max_poll=max_poll)
        previous = current["EndpointConfigName"]
        if previous == config_name and current["EndpointStatus"] == "InService":
            action = "unchanged"
        elif current["EndpointStatus"] == "OutOfService":
            raise DeployFailed(endpoint, out_of_service(endpoint, current))
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
        return _smoke_test(clients, endpoint, smoke_payload, sleep=sleep, log=log)
    except EndpointError as exc:
        if previous and previous != config_name:
            log.error("Smoke test failed (%s); rolling %s back to %s", exc, endpoint, previous)
            try:
                sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=previous,
                                   DeploymentConfig=ROLLBACK_CONFIG,
                                   **update_options)
            except ClientError as refused:
                # e.g. a serverless endpoint updated to instances: "once you make the update,
                # you cannot roll it back to serverless" (Serverless Inference, exclusions)
                error = refused.response.get("Error", {})
                raise DeployFailed(endpoint, (
                    f"Smoke test of {endpoint} on {config_name} failed ({exc}), and SageMaker "
                    f"refused to put it back on {previous}: {error.get('Code')}: "
                    f"{error.get('Message')}. It serves {config_name}; deploy a version that "
                    "works (sagepipe deploy VERSION).")) from refused
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


def _smoke_test(clients: Clients, endpoint: str, payload: str, *,
                sleep: Callable[[float], None],
                log: logging.Logger | logging.LoggerAdapter[Any], attempts: int = 6) -> str:
    """Invoke the endpoint once it answers. A serverless endpoint may answer 429
    ModelNotReadyException while its compute is still being provisioned ("Wait and try
    your request again", InvokeEndpoint's errors) and cold-starts after an update: asked
    again after 2, 4, 8, 16, 30 s; any other error is the smoke test's verdict at once."""
    for attempt in range(attempts):
        try:
            return invoke(clients, endpoint, payload, content_type="text/csv")
        except EndpointError as exc:
            if exc.code != "ModelNotReadyException" or attempt == attempts - 1:
                raise
            pause = min(2.0 * 2 ** attempt, 30.0)
            log.info("%s is not ready yet (%s); asking again in %.0f s", endpoint, exc, pause)
            sleep(pause)
    raise AssertionError("unreachable")


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
            raise EndpointMissing(endpoint, f"No endpoint named {endpoint!r}. `sagepipe "
                                  "status` lists the endpoints.", code=code) from exc
        status: Any = exc.response.get("OriginalStatusCode")
        if code == "ModelError" and status:
            original = _container_message(str(exc.response.get("OriginalMessage", message)))
            raise EndpointError(endpoint, f"{endpoint} refused the request ({status}): "
                                f"{original}", status=int(status)) from exc
        raise EndpointError(endpoint, f"Invoking {endpoint} failed: {code}: {message}",
                            code=code) from exc
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
        autoscaling=settings.autoscaling, serverless=settings.serverless)
    get_run_logger().info("Endpoint %s %s: serves %s; smoke test answered %s", result.endpoint,
                          result.action, result.endpoint_config, result.smoke_test)
    return result


class StagingRetired(BaseModel):
    """What became of the staging endpoint once production served its model."""

    endpoint: str
    deleted: bool
    endpoint_config: str | None = None
    reason: str


def retire_staging(clients: Clients, name: str, tested_config: str, *,
                   log: logging.Logger | logging.LoggerAdapter[Any] = _LOG) -> StagingRetired:
    """Delete the staging endpoint and its config, if it still serves ``tested_config``.

    Called only after production took the model (``endpoint.staging_keep: false``). An
    endpoint somebody changed since (another config, an update under way) is left alone. A
    refused delete is reported, not raised: production serves either way.
    """
    try:
        current = clients.sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if is_not_found(exc):
            return StagingRetired(endpoint=name, deleted=False, reason="already gone")
        why = f"could not look at it: {exc}; delete it yourself if it should go"
        log.warning("Staging endpoint %s kept: %s", name, why)
        return StagingRetired(endpoint=name, deleted=False, reason=why)
    config = str(current["EndpointConfigName"])
    if config != tested_config or current["EndpointStatus"] != "InService":
        why = (f"it is {current['EndpointStatus']} on {config}, not InService on "
               f"{tested_config}, the config production was promoted from; left alone")
        log.warning("Staging endpoint %s kept: %s", name, why)
        return StagingRetired(endpoint=name, deleted=False, endpoint_config=config, reason=why)
    try:
        clients.sagemaker.delete_endpoint(EndpointName=name)
        # DeleteEndpointConfig (API reference): "You must not delete an EndpointConfig in use
        # by an endpoint that is live or while the UpdateEndpoint or CreateEndpoint operations
        # are being performed on the endpoint": after DeleteEndpoint it is neither
        clients.sagemaker.delete_endpoint_config(EndpointConfigName=config)
    except ClientError as exc:
        if not is_not_found(exc):
            error = exc.response.get("Error", {})
            why = (f"deleting it was refused: {error.get('Code')}: {error.get('Message')}; "
                   f"delete it yourself (aws sagemaker delete-endpoint --endpoint-name {name}) "
                   "or set endpoint.staging_keep: true")
            log.warning("Staging endpoint %s kept: %s", name, why)
            return StagingRetired(endpoint=name, deleted=False, endpoint_config=config,
                                  reason=why)
    log.info("Staging endpoint %s deleted (and %s): production serves its model; "
             "endpoint.staging_keep is false", name, config)
    return StagingRetired(endpoint=name, deleted=True, endpoint_config=config,
                          reason="production serves the model it was tested with")


@task(name="retire-staging", retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def retire_staging_endpoint(runtime: RuntimeSettings, name: str,
                            tested_config: str) -> StagingRetired:
    """The flow's :func:`retire_staging` (``endpoint.staging_keep: false``)."""
    return retire_staging(get_clients(runtime), name, tested_config, log=get_run_logger())


def _container_message(original: str) -> str:
    """The serving container answers {"error": "..."}; show just the text."""
    try:
        parsed = json.loads(original)
    except ValueError:
        return original
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return parsed["error"]
    return original
