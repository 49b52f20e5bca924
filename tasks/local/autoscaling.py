"""Local Application Auto Scaling: scalable targets and scaling policies of endpoint variants.

What it does, and what it does not:

* it keeps scalable targets and scaling policies as AWS does (RegisterScalableTarget and
  PutScalingPolicy create or update, Describe* page through them, DeregisterScalableTarget
  deletes the target's policies with it) and refuses what AWS refuses: a request that does
  not fit botocore's model, a policy on a variant that is not registered, MinCapacity above
  MaxCapacity or below 1, a target on an endpoint or variant that does not exist;
* registering a target moves the variant's instance count into [MinCapacity,
  MaxCapacity], which DescribeEndpoint then reports (the local endpoint serves with one
  process whatever the count: the count is bookkeeping);
* it never scales on traffic: there is no CloudWatch here, so a target-tracking policy is
  recorded (with the two alarms AWS would create named as AWS names them) and never fires.

Only SageMaker variants with instances (``sagemaker:variant:DesiredInstanceCount``) are
supported; a serverless variant is refused (it has no instance count).
"""

from __future__ import annotations

import uuid
from typing import Any

from .common import ACCOUNT, LocalClient, arn, metadata, now, to_datetime
from .state import StateStore
from .validation import client_error

__all__ = ["LocalApplicationAutoScaling", "deregister_endpoint", "registered_variants"]

_NAMESPACE = "sagemaker"
_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# the predefined metrics Application Auto Scaling offers for a SageMaker variant
_VARIANT_METRICS = ("SageMakerVariantInvocationsPerInstance",
                    "SageMakerVariantConcurrentRequestsPerModelHighResolution")
_SERVICE_LINKED_ROLE = (
    f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling."
    "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")


def _key(namespace: str, dimension: str, resource: str) -> str:
    return f"{namespace}|{dimension}|{resource}"


def _variant_of(resource: str) -> tuple[str, str] | None:
    """(endpoint, variant) of ``endpoint/<endpoint>/variant/<variant>``."""
    parts = resource.split("/")
    if len(parts) == 4 and parts[0] == "endpoint" and parts[2] == "variant" and all(parts):
        return parts[1], parts[3]
    return None


def registered_variants(state: StateStore, endpoint: str) -> set[str]:
    """The variants of ``endpoint`` that are scalable targets (for the endpoint's rules)."""
    names = set()
    for doc in state.list("scalable-target"):
        found = _variant_of(doc["ResourceId"])
        if found and found[0] == endpoint:
            names.add(found[1])
    return names


def deregister_endpoint(state: StateStore, endpoint: str) -> None:
    """DeleteEndpoint: "Application Auto Scaling deregisters those models as scalable
    targets" (SageMaker developer guide, Delete endpoints configured for auto scaling)."""
    for variant in registered_variants(state, endpoint):
        resource = f"endpoint/{endpoint}/variant/{variant}"
        _drop(state, _key(_NAMESPACE, _DIMENSION, resource))


def _drop(state: StateStore, target_key: str) -> None:
    for policy in state.list("scaling-policy"):
        if policy["target"] == target_key:
            state.delete("scaling-policy", f"{target_key}|{policy['PolicyName']}")
    state.delete("scalable-target", target_key)


class LocalApplicationAutoScaling(LocalClient):
    service = "application-autoscaling"

    def __init__(self, state: StateStore, *, region: str) -> None:
        super().__init__(region=region)
        self.state = state

    # ------------------------------------------------------------------ targets
    def register_scalable_target(self, **params: Any) -> dict[str, Any]:
        self._validate("RegisterScalableTarget", params)
        key, endpoint, variant = self._sagemaker_variant(params, "RegisterScalableTarget")
        existing = self.state.get("scalable-target", key)
        low = params.get("MinCapacity", existing["MinCapacity"] if existing else None)
        high = params.get("MaxCapacity", existing["MaxCapacity"] if existing else None)
        if low is None or high is None:
            # the API reference: MinCapacity and MaxCapacity are "required to register a
            # scalable target", optional when updating one
            raise client_error("RegisterScalableTarget", "ValidationException",
                               "MinCapacity and MaxCapacity are required to register a new "
                               "scalable target.")
        if low < 1:  # "This value must be set to at least 1" (SageMaker, Register a model)
            raise client_error("RegisterScalableTarget", "ValidationException",
                               f"MinCapacity must be at least 1 for {_DIMENSION}; got {low}.")
        if low > high:
            raise client_error("RegisterScalableTarget", "ValidationException",
                               f"Minimum capacity ({low}) cannot be greater than maximum "
                               f"capacity ({high}).")
        self._live_variant(endpoint, variant, "RegisterScalableTarget")
        target_arn = existing["ScalableTargetARN"] if existing else arn(
            self.region, "application-autoscaling", f"scalable-target/{uuid.uuid4().hex}")
        self.state.put("scalable-target", key, {
            "ServiceNamespace": _NAMESPACE, "ResourceId": params["ResourceId"],
            "ScalableDimension": _DIMENSION, "MinCapacity": low, "MaxCapacity": high,
            "RoleARN": _SERVICE_LINKED_ROLE, "ScalableTargetARN": target_arn,
            "created": existing["created"] if existing else now()})
        # "it changes the resource's current capacity to a value that is inside of this
        # range" (API reference, RegisterScalableTarget)
        self._clamp(endpoint, variant, low, high)
        return {"ScalableTargetARN": target_arn, **metadata()}

    def describe_scalable_targets(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeScalableTargets", params)
        wanted = set(params.get("ResourceIds") or [])
        items = [{k: v for k, v in doc.items() if k != "created"}
                 | {"CreationTime": to_datetime(doc["created"])}
                 for doc in self.state.list("scalable-target")
                 if doc["ServiceNamespace"] == params["ServiceNamespace"]
                 and (not wanted or doc["ResourceId"] in wanted)
                 and params.get("ScalableDimension", doc["ScalableDimension"])
                 == doc["ScalableDimension"]]
        page, token = _page(items, params)
        return {"ScalableTargets": page, **token, **metadata()}

    def deregister_scalable_target(self, **params: Any) -> dict[str, Any]:
        self._validate("DeregisterScalableTarget", params)
        key = _key(params["ServiceNamespace"], params["ScalableDimension"], params["ResourceId"])
        if self.state.get("scalable-target", key) is None:
            raise self._no_target(params, "DeregisterScalableTarget")
        # "Deregistering a scalable target deletes the scaling policies and the scheduled
        # actions that are associated with it" (API reference, DeregisterScalableTarget)
        _drop(self.state, key)
        return metadata()

    # ----------------------------------------------------------------- policies
    def put_scaling_policy(self, **params: Any) -> dict[str, Any]:
        self._validate("PutScalingPolicy", params)
        key = _key(params["ServiceNamespace"], params["ScalableDimension"], params["ResourceId"])
        if self.state.get("scalable-target", key) is None:
            raise self._no_target(params, "PutScalingPolicy")
        name = params["PolicyName"]
        existing = self.state.get("scaling-policy", f"{key}|{name}")
        kind = params.get("PolicyType") or (existing or {}).get("PolicyType")
        config_key = f"{kind}PolicyConfiguration"
        config = params.get(config_key) or (existing or {}).get(config_key)
        if kind not in ("TargetTrackingScaling", "StepScaling") or config is None:
            raise client_error("PutScalingPolicy", "ValidationException",
                               "A new policy needs PolicyType TargetTrackingScaling or "
                               "StepScaling and its configuration (the local runtime keeps "
                               "no predictive scaling).")
        metric = (config.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType")
        if kind == "TargetTrackingScaling" and metric not in (None, *_VARIANT_METRICS):
            raise client_error("PutScalingPolicy", "ValidationException",
                               f"The predefined metric {metric} does not apply to "
                               f"{_DIMENSION}; use one of {', '.join(_VARIANT_METRICS)}.")
        policy_id = existing["id"] if existing else str(uuid.uuid4())
        policy_arn = (f"arn:aws:autoscaling:{self.region}:{ACCOUNT}:scalingPolicy:{policy_id}:"
                      f"resource/{_NAMESPACE}/{params['ResourceId']}:policyName/{name}")
        alarms: list[dict[str, str]] = []
        if kind == "TargetTrackingScaling":  # the two alarms target tracking manages
            alarms = existing["Alarms"] if existing else [
                {"AlarmName": (alarm := f"TargetTracking-{params['ResourceId']}-Alarm{side}-"
                                        f"{uuid.uuid4()}"),
                 "AlarmARN": arn(self.region, "cloudwatch", f"alarm:{alarm}")}
                for side in ("High", "Low")]
        self.state.put("scaling-policy", f"{key}|{name}", {
            "target": key, "id": policy_id, "PolicyARN": policy_arn, "PolicyName": name,
            "ServiceNamespace": params["ServiceNamespace"], "ResourceId": params["ResourceId"],
            "ScalableDimension": params["ScalableDimension"], "PolicyType": kind,
            config_key: config, "Alarms": alarms,
            "created": existing["created"] if existing else now()})
        return {"PolicyARN": policy_arn, "Alarms": alarms, **metadata()}

    def describe_scaling_policies(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeScalingPolicies", params)
        names = set(params.get("PolicyNames") or [])
        items = [{k: v for k, v in doc.items() if k not in ("target", "id", "created")}
                 | {"CreationTime": to_datetime(doc["created"])}
                 for doc in self.state.list("scaling-policy")
                 if doc["ServiceNamespace"] == params["ServiceNamespace"]
                 and (not names or doc["PolicyName"] in names)
                 and params.get("ResourceId", doc["ResourceId"]) == doc["ResourceId"]
                 and params.get("ScalableDimension", doc["ScalableDimension"])
                 == doc["ScalableDimension"]]
        page, token = _page(items, params)
        return {"ScalingPolicies": page, **token, **metadata()}

    def delete_scaling_policy(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteScalingPolicy", params)
        key = _key(params["ServiceNamespace"], params["ScalableDimension"], params["ResourceId"])
        if not self.state.delete("scaling-policy", f"{key}|{params['PolicyName']}"):
            raise client_error("DeleteScalingPolicy", "ObjectNotFoundException",
                               f"No scaling policy found for service namespace: "
                               f"{params['ServiceNamespace']}, resource ID: "
                               f"{params['ResourceId']}, scalable dimension: "
                               f"{params['ScalableDimension']}, policy name: "
                               f"{params['PolicyName']}")
        return metadata()

    # ------------------------------------------------------------------ helpers
    def _sagemaker_variant(self, params: dict[str, Any], operation: str) -> tuple[str, str, str]:
        found = _variant_of(params["ResourceId"])
        if (params["ServiceNamespace"], params["ScalableDimension"]) != (_NAMESPACE, _DIMENSION) \
                or found is None:
            raise client_error(operation, "ValidationException",
                               "The local runtime scales SageMaker endpoint variants only: "
                               f"ServiceNamespace {_NAMESPACE}, ScalableDimension {_DIMENSION}, "
                               "ResourceId endpoint/<endpoint>/variant/<variant>.")
        return (_key(_NAMESPACE, _DIMENSION, params["ResourceId"]), *found)

    def _live_variant(self, endpoint: str, variant: str, operation: str) -> None:
        doc = self.state.get("endpoint", endpoint)
        current = (doc or {}).get("current") or {}
        if doc is None or current.get("variant") != variant:
            raise client_error(operation, "ValidationException",
                               f"Endpoint {endpoint} has no live variant {variant}: register a "
                               "variant of an endpoint that serves.")
        if current.get("serverless"):
            # a serverless variant has no instance count; Application Auto Scaling scales
            # only its provisioned concurrency (sagemaker:variant:DesiredProvisionedConcurrency)
            raise client_error(operation, "ValidationException",
                               f"Variant {variant} of endpoint {endpoint} is serverless: it has "
                               f"no instance count to scale ({_DIMENSION}).")

    def _clamp(self, endpoint: str, variant: str, low: int, high: int) -> None:
        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current")
            if current and current.get("variant") == variant:
                count = int(current.get("instances", 1))
                current["instances"] = min(max(count, low), high)
        self.state.update("endpoint", endpoint, change)

    @staticmethod
    def _no_target(params: dict[str, Any], operation: str) -> Exception:
        return client_error(operation, "ObjectNotFoundException",
                            f"No scalable target registered for service namespace: "
                            f"{params['ServiceNamespace']}, resource ID: {params['ResourceId']}, "
                            f"scalable dimension: {params['ScalableDimension']}")


def _page(items: list[dict[str, Any]],
          params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    start = int(params.get("NextToken") or 0)
    size = int(params.get("MaxResults", 50))
    token = {"NextToken": str(start + size)} if start + size < len(items) else {}
    return items[start:start + size], token
