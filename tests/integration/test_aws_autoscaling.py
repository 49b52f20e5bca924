"""endpoint.autoscaling on the AWS runtime: the exact Application Auto Scaling and SageMaker
requests around a deploy, on real boto3 clients under botocore's Stubber.

Stubber checks each request and scripted reply against botocore's models and the calls'
order per client; every request is also held to the model's server-side constraints
(``aws_helpers.server_side_check``), and ``aws.calls`` gives the order across clients (a
deregistration must come before the UpdateEndpoint that needs it). moto implements
Application Auto Scaling, but not UpdateEndpoint and not SageMaker's refusal to change the
instance type of a scaled variant, which these tests are about; the least-privilege test
runs autoscaling against moto.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_helpers import server_side_check
from botocore.stub import Stubber
from test_aws_stubbed import (
    CONFIG,
    ENDPOINT,
    LOGGER,
    OLD_CONFIG,
    PACKAGE,
    ROLE,
    ROLLBACK_REASON,
    SERVICES,
    SM_ARN,
    T0,
    TAGS,
    FakeTime,
    Stubbed,
    endpoint,
    invoke_ok,
    new_model_and_config,
    not_found,
)
from test_serverless_stubbed import CONFIG as SERVERLESS_CONFIG_NAME
from test_serverless_stubbed import (
    FRAMEWORK_ENV,
    SERVERLESS,
    config_reply,
    serverless_model_and_config,
)
from test_serverless_stubbed import deploy as serverless_deploy
from test_serverless_stubbed import package as serverless_package

from sagepipe.tasks.endpoints import EndpointSettings, deploy_package, deployment_config
from sagepipe.tasks.errors import DeployFailed, DeployRolledBack
from sagepipe.tasks.runtime import Clients
from sagepipe.tasks.scaling import POLICY_NAME, AutoscalingSettings

TARGET = {"ServiceNamespace": "sagemaker",
          "ResourceId": f"endpoint/{ENDPOINT}/variant/AllTraffic",
          "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
SCALING = AutoscalingSettings(min_instances=1, max_instances=6,
                              target_invocations_per_instance=120)
OURS = {"PolicyName": POLICY_NAME, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 80.0, "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}}
CONFIG_UPDATE = deployment_config(EndpointSettings(wait_seconds=0))
ANSWER = b'{"predictions": [{"label": 0}]}'


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubbed]:
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_CONFIG_FILE", "/nonexistent"),
                       ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    calls: list[str] = []
    checked: list[tuple[str, str]] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(f"{model.service_model.service_name}.{model.name}")

    clients: dict[str, Any] = {}
    stubbers: dict[str, Stubber] = {}
    services = {**SERVICES, "application_autoscaling": "application-autoscaling"}
    for attr, service in services.items():
        client = boto3.client(service, region_name="us-east-1")  # type: ignore[call-overload]
        client.meta.events.register("before-parameter-build.*.*", record)
        client.meta.events.register("provide-client-params.*.*", server_side_check(checked))
        clients[attr] = client
        stubbers[attr] = Stubber(client)
        stubbers[attr].activate()
    yield Stubbed(Clients(**clients), stubbers, calls)
    for stubber in stubbers.values():
        stubber.deactivate()


def aas(aws: Stubbed) -> Stubber:
    return aws.stubbers["application_autoscaling"]


def live(aws: Stubbed, status: str = "InService", config: str = OLD_CONFIG, **extra: Any
         ) -> None:
    aws.sm.add_response("describe_endpoint", endpoint(status, config, ProductionVariants=[{
        "VariantName": "AllTraffic", "CurrentInstanceCount": 3, "DesiredInstanceCount": 3}],
        **extra), {"EndpointName": ENDPOINT})


def registered(aws: Stubbed, *policies: dict[str, Any], low: int = 2, high: int = 5) -> None:
    """DescribeScalableTargets (and its policies) find the variant registered."""
    aas(aws).add_response("describe_scalable_targets", {"ScalableTargets": [{
        **TARGET, "MinCapacity": low, "MaxCapacity": high, "CreationTime": T0,
        "RoleARN": "arn:aws:iam::123456789012:role/aws-service-role/x"}]},
        {**{k: v for k, v in TARGET.items() if k != "ResourceId"},
         "ResourceIds": [TARGET["ResourceId"]]})
    aas(aws).add_response("describe_scaling_policies", {"ScalingPolicies": [{
        **TARGET, **policy, "PolicyARN": f"arn:aws:autoscaling:us-east-1:123456789012:"
        f"scalingPolicy:1:resource/{policy['PolicyName']}", "CreationTime": T0}
        for policy in policies]}, TARGET)


def live_config(aws: Stubbed, instance_type: str) -> None:
    aws.sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": OLD_CONFIG, "EndpointConfigArn": f"{SM_ARN}:endpoint-config/old",
        "CreationTime": T0, "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": "old-model", "InitialInstanceCount": 1,
            "InstanceType": instance_type}]}, {"EndpointConfigName": OLD_CONFIG})


def update(aws: Stubbed, to: str = CONFIG, config: dict[str, Any] = CONFIG_UPDATE) -> None:
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": to,
                         "DeploymentConfig": config, "RetainAllVariantProperties": True})


def applied(aws: Stubbed, low: int = 1, high: int = 6, target: float = 120.0,
            policy: dict[str, Any] | None = None) -> None:
    aas(aws).add_response("register_scalable_target", {"ScalableTargetARN": "arn:x"},
                          {**TARGET, "MinCapacity": low, "MaxCapacity": high})
    policy = policy or {**OURS, "TargetTrackingScalingPolicyConfiguration": {
        **OURS["TargetTrackingScalingPolicyConfiguration"], "TargetValue": target}}
    aas(aws).add_response("put_scaling_policy", {"PolicyARN": "arn:policy", "Alarms": []},
                          {**TARGET, **policy})


def deregistered(aws: Stubbed) -> None:
    aas(aws).add_response("deregister_scalable_target", {}, TARGET)


def run(aws: Stubbed, autoscaling: AutoscalingSettings | None = SCALING) -> Any:
    return deploy_package(aws.clients, endpoint=ENDPOINT, package_arn=PACKAGE, role_arn=ROLE,
                          instance_type="ml.m5.large", instance_count=1,
                          deploy_config=CONFIG_UPDATE, smoke_payload="17.99,10.38,122.8",
                          timeout=3600, log=logging.getLogger(LOGGER), tags=TAGS,
                          sleep=FakeTime().sleep, autoscaling=autoscaling)


def test_a_first_deploy_registers_the_variant_once_the_smoke_test_passed(aws: Stubbed) -> None:
    new_model_and_config(aws)
    not_found(aws.sm, "describe_endpoint", EndpointName=ENDPOINT)
    aws.sm.add_response("create_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG, "Tags": TAGS})
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)
    applied(aws)

    result = run(aws)

    assert result.action == "created"
    assert result.autoscaling == {"variants": ["AllTraffic"], "min_instances": 1,
                                  "max_instances": 6, "target_invocations_per_instance": 120.0,
                                  "policy_arns": {"AllTraffic": "arn:policy"}}
    assert aws.calls[-3:] == ["sagemaker-runtime.InvokeEndpoint",
                              "application-autoscaling.RegisterScalableTarget",
                              "application-autoscaling.PutScalingPolicy"]
    aws.assert_done()


def test_a_blue_green_update_keeps_the_scaled_fleet_and_applies_scaling_again(
        aws: Stubbed) -> None:
    new_model_and_config(aws)
    live(aws)
    registered(aws, OURS)
    live_config(aws, "ml.m5.large")  # same instance type: SageMaker allows the update
    update(aws)  # RetainAllVariantProperties: the green fleet starts at 3, not at 1
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)
    applied(aws)

    assert run(aws).action == "updated"
    assert "application-autoscaling.DeregisterScalableTarget" not in aws.calls
    aws.assert_done()


def test_an_instance_type_change_deregisters_before_the_update(aws: Stubbed) -> None:
    new_model_and_config(aws)
    live(aws)
    registered(aws, OURS)
    live_config(aws, "ml.c5.xlarge")  # the update moves the variant to ml.m5.large
    deregistered(aws)
    update(aws)
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)
    applied(aws)

    run(aws)

    # "If the update would change the instance type for any model that is a target for
    # auto scaling, the update fails" (SageMaker developer guide): deregistered first
    assert aws.calls.index("application-autoscaling.DeregisterScalableTarget") < \
        aws.calls.index("sagemaker.UpdateEndpoint")
    assert aws.calls[-2:] == ["application-autoscaling.RegisterScalableTarget",
                              "application-autoscaling.PutScalingPolicy"]
    aws.assert_done()


def test_an_update_sagemaker_rolls_back_gets_its_autoscaling_back_as_it_was(
        aws: Stubbed) -> None:
    new_model_and_config(aws)
    live(aws)
    registered(aws, OURS, low=2, high=5)
    live_config(aws, "ml.c5.xlarge")
    deregistered(aws)
    update(aws)
    live(aws, FailureReason=ROLLBACK_REASON)  # InService again, on the old config
    applied(aws, low=2, high=5, policy=OURS)  # registered again exactly as it was

    with pytest.raises(DeployRolledBack):
        run(aws)
    assert aws.calls[-2:] == ["application-autoscaling.RegisterScalableTarget",
                              "application-autoscaling.PutScalingPolicy"]
    aws.assert_done()


def test_a_variant_scaled_by_someone_else_is_left_alone_and_the_change_refused(
        aws: Stubbed) -> None:
    theirs = {**OURS, "PolicyName": "ops-team-cpu"}
    new_model_and_config(aws)
    live(aws)
    registered(aws, theirs)
    live_config(aws, "ml.c5.xlarge")

    with pytest.raises(DeployFailed) as err:
        run(aws, autoscaling=None)
    assert "ops-team-cpu" in str(err.value) and "Nothing was changed" in str(err.value)
    assert "sagemaker.UpdateEndpoint" not in aws.calls
    assert not any("Deregister" in c or "Register" in c for c in aws.calls)
    aws.assert_done()


def test_settings_without_autoscaling_remove_sagepipes_policy_and_target(
        aws: Stubbed) -> None:
    new_model_and_config(aws)
    live(aws)
    registered(aws, OURS)
    live_config(aws, "ml.m5.large")
    update(aws)
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)
    aas(aws).add_response("delete_scaling_policy", {}, {**TARGET, "PolicyName": POLICY_NAME})
    deregistered(aws)

    assert run(aws, autoscaling=None).autoscaling == {"removed": ["AllTraffic"]}
    aws.assert_done()


def test_without_autoscaling_anywhere_an_update_sends_what_it_always_did(
        aws: Stubbed) -> None:
    """No scalable target: the update carries no RetainAllVariantProperties and nothing is
    registered; the one extra request is the DescribeScalableTargets that found none."""
    new_model_and_config(aws)
    live(aws)
    aas(aws).add_response("describe_scalable_targets", {"ScalableTargets": []}, {
        **{k: v for k, v in TARGET.items() if k != "ResourceId"},
        "ResourceIds": [TARGET["ResourceId"]]})
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG,
                         "DeploymentConfig": CONFIG_UPDATE})
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)

    assert run(aws, autoscaling=None).autoscaling is None
    assert [c for c in aws.calls if c.startswith("application-autoscaling")] == [
        "application-autoscaling.DescribeScalableTargets"]
    aws.assert_done()


def test_a_serverless_update_asks_application_auto_scaling_nothing(aws: Stubbed) -> None:
    """A serverless variant has no instance count (AWS_RULES row 47): around its blue/green
    update nothing is looked up, registered or removed, and no RetainAllVariantProperties
    is sent (Stubber fails on any application-autoscaling call not scripted)."""
    small = {"MemorySizeInMB": 1024, "MaxConcurrency": 5}
    serving = {"ProductionVariants": [{"VariantName": "AllTraffic",
                                       "CurrentServerlessConfig": small,
                                       "DesiredServerlessConfig": small}]}
    serverless_package(aws, FRAMEWORK_ENV)
    aws.sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG, **serving),
                        {"EndpointName": ENDPOINT})  # check_endpoint_kind
    aws.sm.add_response("describe_endpoint_config", config_reply(
        OLD_CONFIG, {"ServerlessConfig": small}), {"EndpointConfigName": OLD_CONFIG})
    serverless_model_and_config(aws)
    aws.sm.add_response("describe_endpoint", endpoint("InService", OLD_CONFIG, **serving),
                        {"EndpointName": ENDPOINT})
    config = deployment_config(EndpointSettings(name=ENDPOINT, serverless=SERVERLESS))
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": SERVERLESS_CONFIG_NAME,
                         "DeploymentConfig": config})
    aws.sm.add_response("describe_endpoint", endpoint("InService", SERVERLESS_CONFIG_NAME),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)

    result = serverless_deploy(aws, FakeTime())

    assert (result.action, result.autoscaling) == ("updated", None)
    assert not [c for c in aws.calls if c.startswith("application-autoscaling")]
    aws.assert_done()


def test_a_policy_put_before_its_new_target_is_visible_is_asked_again(aws: Stubbed) -> None:
    """RegisterScalableTarget is eventually consistent ("there might be a brief delay ...
    The typical strategy is to retry the request", API reference): the PutScalingPolicy
    that follows it may not find the target yet."""
    new_model_and_config(aws)
    not_found(aws.sm, "describe_endpoint", EndpointName=ENDPOINT)
    aws.sm.add_response("create_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG, "Tags": TAGS})
    aws.sm.add_response("describe_endpoint", endpoint("InService", CONFIG),
                        {"EndpointName": ENDPOINT})
    invoke_ok(aws, ANSWER)
    aas(aws).add_response("register_scalable_target", {"ScalableTargetARN": "arn:x"},
                          {**TARGET, "MinCapacity": 1, "MaxCapacity": 6})
    aas(aws).add_client_error("put_scaling_policy", service_error_code="ObjectNotFoundException",
                              service_message="No scalable target registered for service "
                              "namespace: sagemaker", http_status_code=400)
    aas(aws).add_response("put_scaling_policy", {"PolicyARN": "arn:policy", "Alarms": []}, {
        **TARGET, **OURS, "TargetTrackingScalingPolicyConfiguration": {
            **OURS["TargetTrackingScalingPolicyConfiguration"], "TargetValue": 120.0}})

    assert run(aws).autoscaling["policy_arns"] == {"AllTraffic": "arn:policy"}
    assert aws.calls.count("application-autoscaling.PutScalingPolicy") == 2
    aws.assert_done()
