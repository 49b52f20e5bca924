"""Serverless deploys and the staging endpoint's retirement on real boto3 clients under
botocore's Stubber (moto 5.2 has no UpdateEndpoint). Stubber checks each request and each
scripted reply against botocore's service model and fails on any call not scripted."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_aws_stubbed import (
    ENDPOINT,
    OLD_CONFIG,
    PACKAGE,
    ROLE,
    SM_ARN,
    T0,
    TAGS,
    FakeTime,
    Stubbed,
    describe,
    invoke_ok,
    not_found,
    smoke_test_fails,
)
from test_aws_stubbed import aws as stubbed_aws  # noqa: F401  (a fixture)

from sagepipe.tasks.endpoints import (
    ROLLBACK_CONFIG,
    EndpointSettings,
    ServerlessSettings,
    _names,
    deploy_package,
    deployment_config,
    retire_staging,
)
from sagepipe.tasks.errors import ConfigError, DeployFailed

SERVERLESS = ServerlessSettings(memory_mb=3072, max_concurrency=10, provisioned_concurrency=2)
SERVERLESS_CONFIG = {"MemorySizeInMB": 3072, "MaxConcurrency": 10, "ProvisionedConcurrency": 2}
MODEL, CONFIG = _names(ENDPOINT, PACKAGE, 'serverless:{"MaxConcurrency": 10, '
                       '"MemorySizeInMB": 3072, "ProvisionedConcurrency": 2}')
FRAMEWORK_ENV = {"SAGEMAKER_PROGRAM": "inference.py",
                 "SAGEMAKER_SUBMIT_DIRECTORY": "s3://b/code/serve-1/sourcedir.tar.gz"}
STAGING = "sagepipe-prod-staging"
STAGING_CONFIG = "sagepipe-prod-staging-v7-0a1b2c3d4e-cfg"


@pytest.fixture()
def aws(stubbed_aws: Stubbed) -> Stubbed:  # noqa: F811  (the fixture imported above)
    return stubbed_aws


def package(aws: Stubbed, environment: dict[str, str] | None = None) -> None:
    container: dict[str, Any] = {"Image": "1.dkr.ecr.us-east-1.amazonaws.com/s:1",
                                 "ModelDataUrl": "s3://b/model.tar.gz"}
    if environment:
        container["Environment"] = environment
    aws.sm.add_response("describe_model_package", {
        "ModelPackageName": "sagepipe-demo", "ModelPackageArn": PACKAGE, "CreationTime": T0,
        "ModelPackageStatus": "Completed", "ModelApprovalStatus": "Approved",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "InferenceSpecification": {"Containers": [container],
                                   "SupportedContentTypes": ["text/csv"],
                                   "SupportedResponseMIMETypes": ["application/json"]}},
        {"ModelPackageName": PACKAGE})


def config_reply(name: str, variant: dict[str, Any]) -> dict[str, Any]:
    return {"EndpointConfigName": name, "EndpointConfigArn": f"{SM_ARN}:endpoint-config/{name}",
            "CreationTime": T0, "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": "m", **variant}]}


def serverless_model_and_config(aws: Stubbed) -> None:
    not_found(aws.sm, "describe_model", f'Could not find model "{MODEL}".', ModelName=MODEL)
    aws.sm.add_response("create_model", {"ModelArn": f"{SM_ARN}:model/{MODEL}"}, {
        "ModelName": MODEL, "ExecutionRoleArn": ROLE, "Tags": TAGS, "PrimaryContainer": {
            "ModelPackageName": PACKAGE,
            # the package's environment kept, one server worker added
            "Environment": {**FRAMEWORK_ENV, "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}}})
    not_found(aws.sm, "describe_endpoint_config", "Could not find endpoint configuration.",
              EndpointConfigName=CONFIG)
    aws.sm.add_response("create_endpoint_config",
                        {"EndpointConfigArn": f"{SM_ARN}:endpoint-config/{CONFIG}"}, {
                            "EndpointConfigName": CONFIG, "Tags": TAGS,
                            "ProductionVariants": [{  # no InstanceType, no instance count
                                "VariantName": "AllTraffic", "ModelName": MODEL,
                                "ServerlessConfig": SERVERLESS_CONFIG}]})
    aws.sm.add_response("describe_endpoint_config",
                        config_reply(CONFIG, {"ServerlessConfig": SERVERLESS_CONFIG}),
                        {"EndpointConfigName": CONFIG})


def deploy(aws: Stubbed, fake: FakeTime, **settings: Any) -> Any:
    config = deployment_config(EndpointSettings(name=ENDPOINT, serverless=SERVERLESS,
                                                **settings))
    return deploy_package(aws.clients, endpoint=ENDPOINT, package_arn=PACKAGE, role_arn=ROLE,
                          instance_type="ml.m5.large", instance_count=1, deploy_config=config,
                          smoke_payload="17.99,10.38,122.8", timeout=3600,
                          log=logging.getLogger("test.serverless"), tags=TAGS,
                          sleep=fake.sleep, serverless=SERVERLESS)


def not_ready(aws: Stubbed) -> None:
    """InvokeEndpoint's 429 while a serverless variant's compute is provisioned."""
    aws.stubbers["sagemaker_runtime"].add_client_error(
        "invoke_endpoint", service_error_code="ModelNotReadyException", http_status_code=429,
        service_message="Model is not ready yet.")


def test_a_serverless_endpoint_is_created_and_its_smoke_test_waits_out_the_cold_start(
        aws: Stubbed) -> None:
    package(aws, FRAMEWORK_ENV)
    not_found(aws.sm, "describe_endpoint", "Could not find endpoint.", EndpointName=ENDPOINT)
    serverless_model_and_config(aws)
    not_found(aws.sm, "describe_endpoint", "Could not find endpoint.", EndpointName=ENDPOINT)
    aws.sm.add_response("create_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG, "Tags": TAGS})
    describe(aws, "Creating", CONFIG)
    describe(aws, "InService", CONFIG)
    not_ready(aws)
    not_ready(aws)
    invoke_ok(aws, b'{"predictions": [{"label": 1}]}')

    fake = FakeTime()
    result = deploy(aws, fake)

    assert (result.action, result.endpoint_config) == ("created", CONFIG)
    assert fake.sleeps[-2:] == [2.0, 4.0]  # asked again after 2 s, then 4 s
    aws.assert_done()


def test_a_serverless_endpoint_is_updated_blue_green_all_at_once_with_its_alarms(
        aws: Stubbed) -> None:
    package(aws, FRAMEWORK_ENV)
    describe(aws, "InService", OLD_CONFIG)  # is it serverless? its config says so
    aws.sm.add_response("describe_endpoint_config", config_reply(
        OLD_CONFIG, {"ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 5}}),
        {"EndpointConfigName": OLD_CONFIG})
    serverless_model_and_config(aws)
    describe(aws, "InService", OLD_CONFIG)
    policy = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 120},
        "TerminationWaitInSeconds": 0},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "sagepipe-prod-5xx"}]}}
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG,
                         "DeploymentConfig": policy})
    describe(aws, "Updating", OLD_CONFIG)
    describe(aws, "InService", CONFIG)
    invoke_ok(aws, b'{"predictions": []}')

    result = deploy(aws, FakeTime(), wait_seconds=120, alarms=["sagepipe-prod-5xx"])

    assert (result.action, result.previous_config) == ("updated", OLD_CONFIG)
    aws.assert_done()


def test_an_instance_based_endpoint_is_not_turned_serverless_and_nothing_is_made(
        aws: Stubbed) -> None:
    package(aws)
    describe(aws, "InService", OLD_CONFIG)
    aws.sm.add_response("describe_endpoint_config", config_reply(
        OLD_CONFIG, {"InitialInstanceCount": 2, "InstanceType": "ml.m5.large"}),
        {"EndpointConfigName": OLD_CONFIG})

    with pytest.raises(ConfigError) as err:
        deploy(aws, FakeTime())

    message = str(err.value)
    assert "runs on instances (2 x ml.m5.large)" in message
    assert "cannot turn an instance-based endpoint into a serverless one" in message
    assert f"aws sagemaker delete-endpoint --endpoint-name {ENDPOINT}" in message
    assert not any("Create" in c or "Update" in c for c in aws.calls)
    aws.assert_done()


def test_a_put_back_sagemaker_refuses_is_reported_with_its_reason(aws: Stubbed) -> None:
    """A serverless endpoint updated to instances cannot go back to serverless: the failed
    smoke test's put-back is refused, and the error says so instead of a raw ClientError."""
    package(aws)
    aws.sm.add_response("describe_model", {
        "ModelName": "m", "ModelArn": f"{SM_ARN}:model/m", "CreationTime": T0,
        "PrimaryContainer": {"ModelPackageName": PACKAGE}}, None)
    instance_config = _names(ENDPOINT, PACKAGE)[1]
    aws.sm.add_response("describe_endpoint_config", config_reply(
        instance_config, {"InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}), None)
    describe(aws, "InService", OLD_CONFIG)
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        None)
    describe(aws, "InService", instance_config)
    smoke_test_fails(aws)
    aws.sm.add_client_error("update_endpoint", service_error_code="ValidationException",
                            service_message="Cannot update an instance-based endpoint to "
                            "serverless.", http_status_code=400, expected_params={
                                "EndpointName": ENDPOINT, "EndpointConfigName": OLD_CONFIG,
                                "DeploymentConfig": ROLLBACK_CONFIG})

    with pytest.raises(DeployFailed) as err:
        deploy_package(aws.clients, endpoint=ENDPOINT, package_arn=PACKAGE, role_arn=ROLE,
                       instance_type="ml.m5.large", instance_count=1, deploy_config={},
                       smoke_payload="1", timeout=60, log=logging.getLogger("test"),
                       tags=TAGS, sleep=FakeTime().sleep)

    assert f"refused to put it back on {OLD_CONFIG}" in str(err.value)
    assert "Cannot update an instance-based endpoint to serverless" in str(err.value)
    aws.assert_done()


# ---- endpoint.staging_keep: false ---------------------------------------------------------

def staging(aws: Stubbed, status: str, config: str) -> None:
    aws.sm.add_response("describe_endpoint", {
        "EndpointName": STAGING, "EndpointArn": f"{SM_ARN}:endpoint/{STAGING}",
        "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": T0,
        "LastModifiedTime": T0}, {"EndpointName": STAGING})


def test_the_staging_endpoint_then_its_config_are_deleted(aws: Stubbed) -> None:
    staging(aws, "InService", STAGING_CONFIG)
    aws.sm.add_response("delete_endpoint", {}, {"EndpointName": STAGING})
    aws.sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": STAGING_CONFIG})

    retired = retire_staging(aws.clients, STAGING, STAGING_CONFIG)

    assert (retired.deleted, retired.endpoint_config) == (True, STAGING_CONFIG)
    assert aws.ops("sagemaker") == ["DescribeEndpoint", "DeleteEndpoint", "DeleteEndpointConfig"]
    aws.assert_done()


@pytest.mark.parametrize(("status", "config"), [("InService", "somebody-elses-cfg"),
                                                ("Updating", STAGING_CONFIG)])
def test_a_staging_endpoint_changed_since_is_left_alone(aws: Stubbed, status: str,
                                                        config: str) -> None:
    staging(aws, status, config)

    retired = retire_staging(aws.clients, STAGING, STAGING_CONFIG)

    assert not retired.deleted and "left alone" in retired.reason
    assert aws.ops("sagemaker") == ["DescribeEndpoint"]  # no delete at all
    aws.assert_done()


def test_a_refused_delete_is_reported_not_raised(aws: Stubbed) -> None:
    staging(aws, "InService", STAGING_CONFIG)
    aws.sm.add_client_error("delete_endpoint", service_error_code="AccessDeniedException",
                            service_message="not authorized to perform: sagemaker:DeleteEndpoint",
                            http_status_code=400, expected_params={"EndpointName": STAGING})

    retired = retire_staging(aws.clients, STAGING, STAGING_CONFIG)

    assert not retired.deleted
    assert "AccessDeniedException" in retired.reason and "staging_keep: true" in retired.reason
    aws.assert_done()


def test_a_staging_endpoint_already_gone_is_fine(aws: Stubbed) -> None:
    not_found(aws.sm, "describe_endpoint", "Could not find endpoint.", EndpointName=STAGING)
    assert retire_staging(aws.clients, STAGING, STAGING_CONFIG).reason == "already gone"
    aws.assert_done()

