"""endpoint.autoscaling on the local runtime: its application-autoscaling client, the rules
SageMaker applies to a scaled variant, and deploys that apply, keep, move and remove it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import test_local_endpoints
from botocore.exceptions import ClientError, ParamValidationError

from sagepipe.tasks.endpoints import deploy_package
from sagepipe.tasks.errors import DeployFailed, DeployRolledBack
from sagepipe.tasks.runtime import Clients
from sagepipe.tasks.scaling import POLICY_NAME, AutoscalingSettings

TARGET = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/ep/variant/AllTraffic",
          "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
POLICY = {**TARGET, "PolicyType": "TargetTrackingScaling",
          "TargetTrackingScalingPolicyConfiguration": {
              "TargetValue": 50.0, "PredefinedMetricSpecification": {
                  "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}}
SCALING = AutoscalingSettings(min_instances=1, max_instances=4,
                              target_invocations_per_instance=50)
LOG = logging.getLogger("test.local_autoscaling")
env = test_local_endpoints.env  # the fixture: real local endpoints serving a tiny model
settle = test_local_endpoints.settle


def _count(sm: Any, name: str = "ep") -> int:
    variant = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
    assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"]
    return int(variant["DesiredInstanceCount"])


def _targets(aas: Any) -> list[dict[str, Any]]:
    return list(aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"])


def _policies(aas: Any) -> list[str]:
    return [p["PolicyName"] for p in aas.describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"]]


def _live(env: Any) -> Any:
    env["sm"].create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(env["sm"], "ep")
    return env["clients"]["application-autoscaling"]


# ---------------------------------------------------------------- the client


def test_a_registered_variant_is_kept_within_its_bounds_and_policies_follow_it(
        env: Any) -> None:
    aas, sm = _live(env), env["sm"]
    assert _count(sm) == 1
    aas.register_scalable_target(**TARGET, MinCapacity=3, MaxCapacity=5)
    # "it changes the resource's current capacity to a value that is inside of this range"
    assert _count(sm) == 3
    aas.register_scalable_target(**TARGET, MaxCapacity=8)  # an update keeps MinCapacity
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas)] == [(3, 8)]
    answer = aas.put_scaling_policy(**POLICY, PolicyName="p")
    alarms = [a["AlarmName"] for a in answer["Alarms"]]
    assert [a.split("-Alarm")[0] for a in alarms] == ["TargetTracking-endpoint/ep/variant/"
                                                      "AllTraffic"] * 2
    again = aas.put_scaling_policy(**POLICY, PolicyName="p")  # create or update: same policy
    assert again["PolicyARN"] == answer["PolicyARN"] and _policies(aas) == ["p"]
    aas.deregister_scalable_target(**TARGET)
    # "Deregistering a scalable target deletes the scaling policies ... associated with it"
    assert _targets(aas) == [] and _policies(aas) == []


@pytest.mark.parametrize(("change", "code"), [
    ({"MinCapacity": 4, "MaxCapacity": 2}, "ValidationException"),
    ({"MinCapacity": 0, "MaxCapacity": 2}, "ValidationException"),
    ({"MaxCapacity": 2}, "ValidationException"),  # a new target needs both bounds
    ({"ResourceId": "endpoint/nope/variant/AllTraffic", "MinCapacity": 1, "MaxCapacity": 2},
     "ValidationException"),
    ({"ResourceId": "endpoint/ep/variant/Other", "MinCapacity": 1, "MaxCapacity": 2},
     "ValidationException"),
])
def test_targets_application_auto_scaling_refuses_are_refused(
        env: Any, change: dict[str, Any], code: str) -> None:
    aas = _live(env)
    with pytest.raises(ClientError) as err:
        aas.register_scalable_target(**{**TARGET, **change})
    assert err.value.response["Error"]["Code"] == code
    assert _targets(aas) == []


def test_a_serverless_variant_is_not_a_target_for_instance_autoscaling(env: Any) -> None:
    """A serverless variant has no instance count (AWS_RULES row 47): registering its
    DesiredInstanceCount is refused, and nothing is registered."""
    sm, aas = env["sm"], env["clients"]["application-autoscaling"]
    sm.create_model(ModelName="m-s", ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
                    PrimaryContainer={"Image": env["image"],
                                      "ModelDataUrl": "s3://bkt/models/blue.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName="c-s", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "m-s",
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}])
    sm.create_endpoint(EndpointName="ep", EndpointConfigName="c-s")
    assert settle(sm, "ep")["EndpointStatus"] == "InService"
    with pytest.raises(ClientError) as err:
        aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "is serverless" in err.value.response["Error"]["Message"]
    assert _targets(aas) == []


def test_policies_need_a_registered_target_and_requests_fit_botocores_model(env: Any) -> None:
    aas = _live(env)
    with pytest.raises(ClientError) as err:
        aas.put_scaling_policy(**POLICY, PolicyName="p")
    assert err.value.response["Error"]["Code"] == "ObjectNotFoundException"
    with pytest.raises(ClientError) as err:
        aas.deregister_scalable_target(**TARGET)
    assert err.value.response["Error"]["Code"] == "ObjectNotFoundException"
    with pytest.raises(ParamValidationError):  # client side: a required member missing
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId="x")
    with pytest.raises(ClientError, match="enum value set"):  # server side: an enum
        aas.register_scalable_target(**{**TARGET, "ScalableDimension": "sagemaker:nope"},
                                     MinCapacity=1, MaxCapacity=2)
    aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
    with pytest.raises(ClientError, match="does not apply"):
        aas.put_scaling_policy(**{**POLICY, "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 50.0, "PredefinedMetricSpecification": {
                "PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}}, PolicyName="p")


def test_sagemaker_refuses_an_instance_type_change_of_a_scaled_variant(env: Any) -> None:
    aas, sm = _live(env), env["sm"]
    aas.register_scalable_target(**TARGET, MinCapacity=2, MaxCapacity=4)
    sm.create_endpoint_config(EndpointConfigName="c-bigger", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "m-a", "InitialInstanceCount": 1,
        "InstanceType": "ml.c5.xlarge"}])
    with pytest.raises(ClientError, match="deregister it as a scalable target first"):
        sm.update_endpoint(EndpointName="ep", EndpointConfigName="c-bigger")
    # a new model on the same instance type is allowed, and with RetainAllVariantProperties
    # the new fleet keeps the count autoscaling set (2), not InitialInstanceCount (1)
    sm.update_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("b", "green"),
                       RetainAllVariantProperties=True)
    assert settle(sm, "ep")["EndpointConfigName"] == "c-b"
    assert _count(sm) == 2
    sm.delete_endpoint(EndpointName="ep")  # deleting the endpoint deregisters its variants
    assert _targets(aas) == [] and _policies(aas) == []


# ---------------------------------------------------------------- deploys


@pytest.fixture()
def deploy(env: Any) -> Any:
    """deploy_package on the local runtime, a package per call (a new model each time)."""
    sm, local = env["sm"], env["clients"]
    clients = Clients(s3=local["s3"], sagemaker=sm, sagemaker_runtime=local["sagemaker-runtime"],
                      sns=local["sns"], logs=local["logs"], ecr=local["ecr"],
                      codebuild=local["codebuild"], local_root=Path(env["root"]),
                      application_autoscaling=local["application-autoscaling"])
    sm.create_model_package_group(ModelPackageGroupName="g")

    def run(answer: str = "blue", *, autoscaling: AutoscalingSettings | None = SCALING,
            instance_type: str = "ml.m5.large", payload: str = "1,2",
            package: str | None = None) -> Any:
        if package is None:
            package = sm.create_model_package(
                ModelPackageGroupName="g", ModelApprovalStatus="Approved",
                InferenceSpecification={"Containers": [{
                    "Image": env["image"], "ModelDataUrl": f"s3://bkt/models/{answer}.tar.gz"}],
                    "SupportedContentTypes": ["text/csv"],
                    "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]
        return deploy_package(
            clients, endpoint="ep", package_arn=package,
            role_arn="arn:aws:iam::000000000000:role/x", instance_type=instance_type,
            instance_count=1, deploy_config={}, smoke_payload=payload, timeout=60, log=LOG,
            sleep=lambda _: None, first_poll=0.05, max_poll=0.2, autoscaling=autoscaling)
    return run


def test_every_deploy_applies_autoscaling_and_an_update_keeps_the_scaled_fleet(
        env: Any, deploy: Any) -> None:
    aas, sm = env["clients"]["application-autoscaling"], env["sm"]
    first = deploy("blue")
    assert first.action == "created"
    assert first.autoscaling["min_instances"] == 1 and first.autoscaling["max_instances"] == 4
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas)] == [
        ("endpoint/ep/variant/AllTraffic", 1, 4)]
    assert _policies(aas) == [POLICY_NAME]
    # traffic scaled the variant out to 3 (here: a bound raised and lowered again)
    aas.register_scalable_target(**TARGET, MinCapacity=3)
    aas.register_scalable_target(**TARGET, MinCapacity=1)
    assert _count(sm) == 3
    second = deploy("green")  # a new model: blue/green, the variant stays a target
    assert second.action == "updated"
    assert _count(sm) == 3  # not InitialInstanceCount (1): RetainAllVariantProperties
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas)] == [(1, 4)]
    assert _policies(aas) == [POLICY_NAME]


def test_an_instance_type_change_deregisters_first_and_registers_again(
        env: Any, deploy: Any, caplog: pytest.LogCaptureFixture) -> None:
    aas, sm = env["clients"]["application-autoscaling"], env["sm"]
    deploy("blue")
    caplog.set_level(logging.INFO, logger=LOG.name)
    moved = deploy("green", instance_type="ml.c5.xlarge")  # refused if still registered
    assert moved.action == "updated"
    assert "Deregistering endpoint/ep/variant/AllTraffic from autoscaling" in caplog.text
    assert sm.describe_endpoint_config(EndpointConfigName=moved.endpoint_config)[
        "ProductionVariants"][0]["InstanceType"] == "ml.c5.xlarge"
    assert len(_targets(aas)) == 1 and _policies(aas) == [POLICY_NAME]


def test_a_deploy_that_does_not_take_puts_autoscaling_back_as_it_was(
        env: Any, deploy: Any) -> None:
    aas, sm = env["clients"]["application-autoscaling"], env["sm"]
    deploy("blue", autoscaling=AutoscalingSettings(min_instances=1, max_instances=3,
                                                   target_invocations_per_instance=40))
    before = [(t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas)]
    # the new instance type needs the target gone; the smoke test then fails (the server
    # answers 400 to this payload) and the endpoint goes back to the old config
    with pytest.raises(DeployRolledBack):
        deploy("green", instance_type="ml.c5.xlarge", payload="bad")
    assert settle(sm, "ep")["EndpointConfigName"].startswith("ep-v1-")
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas)] == before
    policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policy] == [
        40.0]


def test_settings_without_autoscaling_remove_sagepipes_and_leave_anyone_elses(
        env: Any, deploy: Any) -> None:
    aas = env["clients"]["application-autoscaling"]
    deploy("blue")
    aas.put_scaling_policy(**POLICY, PolicyName="theirs")  # someone else's, beside ours
    again = deploy(autoscaling=None, package=first_package(env))  # unchanged endpoint
    assert again.action == "unchanged" and again.autoscaling == {"removed": ["AllTraffic"]}
    assert _policies(aas) == ["theirs"] and len(_targets(aas)) == 1  # theirs still scales it
    aas.deregister_scalable_target(**TARGET)
    deploy(autoscaling=SCALING, package=first_package(env))
    assert _policies(aas) == [POLICY_NAME]
    assert deploy(autoscaling=None, package=first_package(env)).autoscaling == {
        "removed": ["AllTraffic"]}
    assert _targets(aas) == [] and _policies(aas) == []  # nothing else scaled it: all gone


def test_someone_elses_scaling_is_never_deregistered_the_deploy_is_refused_instead(
        env: Any, deploy: Any) -> None:
    aas, sm = env["clients"]["application-autoscaling"], env["sm"]
    deploy("blue", autoscaling=None)
    aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
    aas.put_scaling_policy(**POLICY, PolicyName="theirs")
    live = sm.describe_endpoint(EndpointName="ep")["EndpointConfigName"]
    with pytest.raises(DeployFailed) as err:
        deploy("green", autoscaling=None, instance_type="ml.c5.xlarge")
    message = str(err.value)
    assert "theirs" in message and "Nothing was changed" in message
    assert "deregister-scalable-target" in message
    assert sm.describe_endpoint(EndpointName="ep")["EndpointConfigName"] == live
    assert _policies(aas) == ["theirs"]


def first_package(env: Any) -> str:
    packages = env["sm"].list_model_packages(ModelPackageGroupName="g", SortOrder="Ascending")
    return str(packages["ModelPackageSummaryList"][0]["ModelPackageArn"])
