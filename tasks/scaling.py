"""Endpoint autoscaling: Application Auto Scaling on a real-time endpoint's variant.

``endpoint.autoscaling`` becomes a scalable target on the production variant
(``endpoint/<name>/variant/<variant>``, dimension ``sagemaker:variant:DesiredInstanceCount``)
and one target-tracking policy on ``SageMakerVariantInvocationsPerInstance``. A deploy
applies it once the new model serves and passed its smoke test, and applies it again after
every blue/green update: RegisterScalableTarget and PutScalingPolicy both create or update.

What SageMaker and Application Auto Scaling require around an update (the AWS rules are
cited where the code holds them):

* an UpdateEndpoint that changes the instance type of a variant that is a scalable target
  (or removes the variant) fails: sagepipe deregisters its own target first and registers
  it again afterwards, or puts it back if the deploy does not take; a target with scaling
  policies that are not sagepipe's is left alone and the deploy refused before any change;
* without ``RetainAllVariantProperties`` the green fleet starts at the new config's
  InitialInstanceCount, not at the count autoscaling reached: sagepipe sets it while the
  variant is a scalable target, so a deploy under load does not shrink the fleet;
* settings without ``autoscaling`` remove sagepipe's policy (and its target, if nothing
  else scales it) at the next deploy: the settings say what is live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import DeployFailed

__all__ = ["DIMENSION", "METRIC", "NAMESPACE", "POLICY_NAME", "AutoscalingSettings",
           "EndpointScaling", "ScalableTarget", "describe_targets", "resource_id",
           "scaling_requests"]

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "sagepipe-invocations-per-instance"  # how sagepipe knows its own policy

Log = logging.Logger | logging.LoggerAdapter[Any]


class AutoscalingSettings(BaseModel):
    """Instances of the production variant follow its traffic, between two bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "Register a model" (SageMaker developer guide): MinCapacity "must be set to at least 1
    # and must be equal to or less than the value specified for MaxCapacity"
    min_instances: int = Field(1, ge=1, le=100, description="never fewer instances (at least 1)")
    max_instances: int = Field(..., ge=1, le=100, description="never more instances")
    target_invocations_per_instance: float = Field(
        ..., gt=0, le=1_000_000,
        description="requests per instance per minute that autoscaling keeps the variant at "
        "(the CloudWatch metric InvocationsPerInstance); measure what one instance serves "
        "and take about half")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"endpoint.autoscaling.min_instances ({self.min_instances}) is more than "
                f"max_instances ({self.max_instances}); Application Auto Scaling needs "
                "MinCapacity <= MaxCapacity. Raise max_instances or lower min_instances.")
        return self


def resource_id(endpoint: str, variant: str) -> str:
    """Application Auto Scaling's ResourceId of a SageMaker variant."""
    return f"endpoint/{endpoint}/variant/{variant}"


def scaling_requests(endpoint: str, variant: str, settings: AutoscalingSettings
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The RegisterScalableTarget and PutScalingPolicy requests for one variant."""
    target = {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint, variant),
              "ScalableDimension": DIMENSION}
    register = {**target, "MinCapacity": settings.min_instances,
                "MaxCapacity": settings.max_instances}
    # "Define a scaling policy" (SageMaker developer guide): target tracking on the
    # predefined SageMakerVariantInvocationsPerInstance, e.g. TargetValue 70
    policy = {**target, "PolicyName": POLICY_NAME, "PolicyType": "TargetTrackingScaling",
              "TargetTrackingScalingPolicyConfiguration": {
                  "TargetValue": float(settings.target_invocations_per_instance),
                  "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC}}}
    return register, policy


@dataclass
class ScalableTarget:
    """A registered variant: its bounds and the scaling policies attached to it."""

    variant: str
    min_capacity: int
    max_capacity: int
    policies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def foreign_policies(self) -> list[str]:
        return [p["PolicyName"] for p in self.policies if p["PolicyName"] != POLICY_NAME]

    @property
    def has_ours(self) -> bool:
        return any(p["PolicyName"] == POLICY_NAME for p in self.policies)


def _pages(method: Any, key: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        page = method(**params)
        items += page.get(key, [])
        if not page.get("NextToken"):
            return items
        params["NextToken"] = page["NextToken"]


def describe_targets(aas: Any, endpoint: str, variants: list[str]) -> dict[str, ScalableTarget]:
    """{variant: its scalable target} for the variants that are registered."""
    ids = {resource_id(endpoint, v): v for v in variants}
    if not ids:  # an empty ResourceIds would list every target of the namespace
        return {}
    found = _pages(aas.describe_scalable_targets, "ScalableTargets", ServiceNamespace=NAMESPACE,
                   ResourceIds=list(ids), ScalableDimension=DIMENSION)
    targets: dict[str, ScalableTarget] = {}
    for item in found:
        variant = ids.get(item["ResourceId"])
        if variant is None:
            continue
        policies = _pages(aas.describe_scaling_policies, "ScalingPolicies",
                          ServiceNamespace=NAMESPACE, ResourceId=item["ResourceId"],
                          ScalableDimension=DIMENSION)
        targets[variant] = ScalableTarget(variant, int(item["MinCapacity"]),
                                          int(item["MaxCapacity"]), policies)
    return targets


def _instance_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The config's variants that run on instances (a serverless one has no InstanceType)."""
    return {v["VariantName"]: v for v in config["ProductionVariants"] if v.get("InstanceType")}


class EndpointScaling:
    """Autoscaling around one deploy of ``endpoint`` (see the module's docstring).

    ``aas`` None (a Clients without an application-autoscaling client) leaves autoscaling
    alone; asking for autoscaling without one is a programming error.
    """

    def __init__(self, aas: Any, sagemaker: Any, endpoint: str,
                 settings: AutoscalingSettings | None, log: Log,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if settings is not None and aas is None:
            raise ValueError("endpoint.autoscaling needs an application-autoscaling client "
                             "(tasks.runtime.get_clients makes one)")
        self.aas, self.sm, self.endpoint, self.settings, self.log, self.sleep = (
            aas, sagemaker, endpoint, settings, log, sleep)
        self.targets: dict[str, ScalableTarget] | None = None  # described before an update
        self.released: list[ScalableTarget] = []

    def update_options(self) -> dict[str, Any]:
        """Extra UpdateEndpoint parameters: keep the instance count autoscaling reached."""
        # "Update endpoints that use auto scaling" (SageMaker developer guide): with
        # RetainAllVariantProperties=True, variants of the same name keep the latest
        # DesiredInstanceCount from DescribeEndpoint "regardless of the values of the
        # InitialInstanceCount field in the new EndpointConfig"
        return {"RetainAllVariantProperties": True} if self.targets else {}

    def before_update(self, current: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Before UpdateEndpoint: find the variants that are scalable targets; deregister
        sagepipe's where the update changes the instance type or drops the variant."""
        if self.aas is None:
            return
        new = _instance_variants(new_config)
        # a serverless variant (CurrentServerlessConfig) has no instance count to scale
        live = [v["VariantName"] for v in current.get("ProductionVariants") or []
                if "CurrentServerlessConfig" not in v]
        self.targets = describe_targets(self.aas, self.endpoint, sorted({*live, *new}))
        if not self.targets:
            return
        old = self.sm.describe_endpoint_config(
            EndpointConfigName=current["EndpointConfigName"])
        old_types = {v["VariantName"]: v.get("InstanceType") for v in old["ProductionVariants"]}
        changes = {}
        for variant in self.targets:
            now, then = old_types.get(variant), (new.get(variant) or {}).get("InstanceType")
            # "If you change the model for a variant that is configured for auto scaling,
            # Amazon SageMaker AI auto scaling allows the update"
            if now != then:
                changes[variant] = (f"changes its instance type from {now} to {then}" if then
                                    else "removes it")
        # every refusal before any deregistration: a refused deploy changes nothing
        for variant, change in changes.items():
            # "If the update would change the instance type for any model that is a target
            # for auto scaling, the update fails ... Before you update the endpoint, delete
            # any scaling policies configured for it and deregister the variant as a
            # scalable target" (SageMaker developer guide, Update endpoints that use auto
            # scaling; the same applies to removing the variant)
            target = self.targets[variant]
            if target.foreign_policies:
                raise DeployFailed(self.endpoint, (
                    f"Variant {variant} of {self.endpoint} is scaled by Application Auto "
                    f"Scaling with policies sagepipe did not make "
                    f"({', '.join(target.foreign_policies)}), and this deploy {change}, "
                    "which SageMaker refuses while the variant is a scalable target. "
                    "Nothing was changed on the endpoint. Deregister it first (aws "
                    "application-autoscaling deregister-scalable-target "
                    "--service-namespace sagemaker --resource-id "
                    f"{resource_id(self.endpoint, variant)} "
                    f"--scalable-dimension {DIMENSION}), deploy, then register it again; or "
                    "keep endpoint.instance_type as it is."))
        for variant, change in changes.items():
            target = self.targets[variant]
            self.log.info("Deregistering %s from autoscaling before the update (it %s, which "
                          "SageMaker refuses for a scalable target); %s",
                          resource_id(self.endpoint, variant), change,
                          "it is registered again once the new model serves" if self.settings
                          else "the settings have no endpoint.autoscaling, so it stays off")
            self._deregister(variant)
            self.released.append(target)

    def restore(self) -> None:
        """The deploy did not take: register again what :meth:`before_update` released.
        Errors are logged, not raised: the deploy's own failure is what the caller reports."""
        for target in self.released:
            try:
                self.aas.register_scalable_target(**self._target(target.variant),
                                                  MinCapacity=target.min_capacity,
                                                  MaxCapacity=target.max_capacity)
                for policy in target.policies:
                    kind = policy["PolicyType"]
                    config: dict[str, Any] = {key: policy[key] for key in (
                        "StepScalingPolicyConfiguration",
                        "TargetTrackingScalingPolicyConfiguration",
                        "PredictiveScalingPolicyConfiguration") if key in policy}
                    self._put_policy({**self._target(target.variant),
                                      "PolicyName": policy["PolicyName"], "PolicyType": kind,
                                      **config})
                self.log.info("Autoscaling of %s is back as it was", target.variant)
            except ClientError as exc:
                self.log.error(
                    "Could not register %s for autoscaling again (%s); it now keeps its "
                    "current instance count. Run the deploy again once the endpoint serves, "
                    "or register it by hand.", resource_id(self.endpoint, target.variant), exc)
        self.released = []

    def after_deploy(self, new_config: dict[str, Any], *, created: bool
                     ) -> dict[str, Any] | None:
        """The new model serves: apply the settings' autoscaling to every instance variant,
        or remove sagepipe's where the settings have none. Returns what is in force."""
        if self.aas is None:
            return None
        variants = sorted(_instance_variants(new_config))
        if self.settings is not None:
            applied = {}
            for variant in variants:
                register, policy = scaling_requests(self.endpoint, variant, self.settings)
                self.aas.register_scalable_target(**register)
                answer = self._put_policy(policy)
                applied[variant] = answer.get("PolicyARN")
            self.log.info("Autoscaling %s: %d-%d instances at %g invocations per instance "
                          "per minute", self.endpoint, self.settings.min_instances,
                          self.settings.max_instances,
                          self.settings.target_invocations_per_instance)
            return {"variants": variants, "min_instances": self.settings.min_instances,
                    "max_instances": self.settings.max_instances,
                    "target_invocations_per_instance":
                        self.settings.target_invocations_per_instance,
                    "policy_arns": applied}
        if created and not self.released:
            return None  # a new endpoint: nothing of sagepipe's can scale it yet
        targets = self.targets if self.targets is not None else describe_targets(
            self.aas, self.endpoint, variants)
        gone = {t.variant for t in self.released}  # deregistered before the update
        removed = sorted(gone)
        for variant, target in targets.items():
            if not target.has_ours or variant in gone:
                continue
            self.aas.delete_scaling_policy(**self._target(variant), PolicyName=POLICY_NAME)
            if not target.foreign_policies:
                self._deregister(variant)
            removed.append(variant)
        if removed:
            self.log.info("Autoscaling removed from %s (variants %s): the settings have no "
                          "endpoint.autoscaling", self.endpoint, ", ".join(removed))
            return {"removed": removed}
        return None

    def _put_policy(self, policy: dict[str, Any], attempts: int = 5) -> dict[str, Any]:
        """PutScalingPolicy right after RegisterScalableTarget: "there might be a brief delay
        until the operation achieves eventual consistency ... The typical strategy is to
        retry the request" (API reference, RegisterScalableTarget). A target not found yet
        is asked again a few times; any other error surfaces."""
        for attempt in range(attempts):
            try:
                return dict(self.aas.put_scaling_policy(**policy))
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code != "ObjectNotFoundException" or attempt == attempts - 1:
                    raise
                self.sleep(min(0.5 * 2 ** attempt, 4.0))
        raise AssertionError("unreachable")

    def _target(self, variant: str) -> dict[str, str]:
        return {"ServiceNamespace": NAMESPACE,
                "ResourceId": resource_id(self.endpoint, variant), "ScalableDimension": DIMENSION}

    def _deregister(self, variant: str) -> None:
        # "Deregistering a scalable target deletes the scaling policies and the scheduled
        # actions that are associated with it" (Application Auto Scaling API reference)
        self.aas.deregister_scalable_target(**self._target(variant))
