"""endpoint.serverless and endpoint.staging_keep: what is refused (before anything runs, one
message each, no traceback), and the requests they make, validated against botocore."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from sagepipe.flows.cli import app
from sagepipe.flows.config import build_config, load_config
from sagepipe.flows.plan import build_plan
from sagepipe.tasks.endpoints import (
    EndpointSettings,
    ServerlessSettings,
    deploy_requests,
    deployment_config,
    serverless_environment,
)
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local.validation import validate_request

PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/demo/3"
ROLE = "arn:aws:iam::123456789012:role/x"


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.mark.parametrize("memory_mb", [1024, 2048, 3072, 4096, 5120, 6144])
def test_the_six_memory_sizes_sagemaker_offers_are_accepted(memory_mb: int) -> None:
    settings = ServerlessSettings(memory_mb=memory_mb)
    assert settings.request() == {"MemorySizeInMB": memory_mb, "MaxConcurrency": 5}


@pytest.mark.parametrize(("endpoint", "messages"), [
    ({"serverless": {"memory_mb": 1500}},
     ["endpoint.serverless.memory_mb: 1500 MB is not a size SageMaker offers", "1 GB steps"]),
    ({"serverless": {"memory_mb": 8192, "max_concurrency": 201}},
     ["endpoint.serverless.memory_mb: 8192 MB", "endpoint.serverless.max_concurrency"]),
    ({"serverless": {"max_concurrency": 2, "provisioned_concurrency": 3}},
     ["provisioned_concurrency 3 is more than max_concurrency 2"]),
    ({"serverless": {}, "strategy": "canary", "instance_count": 2, "alarms": ["a"]},
     ["endpoint.strategy canary", "a serverless endpoint has none",
      "rolling deployments exclude serverless endpoints", "Use strategy: all_at_once"]),
    ({"serverless": {}, "strategy": "linear", "instance_count": 4, "alarms": ["a"]},
     ["endpoint.strategy linear"]),
    ({"serverless": {}, "instance_count": 3},
     ["endpoint.instance_count 3 with endpoint.serverless", "max_concurrency"]),
    ({"serverless": {}, "instance_type": "ml.g5.xlarge"},
     ["ml.g5.xlarge is an accelerated instance", "CPUs only"]),
    ({"serverless": {"memory": 2048}}, ["unknown key 'endpoint.serverless.memory'",
                                        "Did you mean 'memory_mb'?"]),
])
def test_serverless_settings_sagemaker_cannot_carry_out_are_refused(
        endpoint: dict[str, Any], messages: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"endpoint": endpoint})
    for message in messages:
        assert message in str(err.value)


def test_serverless_with_alarms_and_staging_is_accepted_and_staging_is_serverless_too() -> None:
    config = build_config({"endpoint": {
        "serverless": {"memory_mb": 4096, "max_concurrency": 20}, "alarms": ["prod-5xx"],
        "staging_name": "demo-staging", "instance_count": 1}})
    staging = config.endpoint.for_staging()
    assert staging.serverless == config.endpoint.serverless
    assert deployment_config(config.endpoint)["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "prod-5xx"}]}
    assert config.endpoint.staging_keep is True  # the default: staging stays


def test_a_serverless_variant_has_no_instances_and_its_model_one_worker() -> None:
    serverless = ServerlessSettings(memory_mb=2048, max_concurrency=8, provisioned_concurrency=1)
    framework = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "s3://b/c"}
    model, config = deploy_requests(
        endpoint="demo", package_arn=PACKAGE, role_arn=ROLE, instance_type="ml.m5.large",
        instance_count=1, serverless=serverless, environment=serverless_environment(framework))
    assert config["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": model["ModelName"],
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 8,
                             "ProvisionedConcurrency": 1}}]
    assert model["PrimaryContainer"] == {"ModelPackageName": PACKAGE, "Environment": {
        **framework, "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}}
    validate_request("sagemaker", "CreateModel", model)
    validate_request("sagemaker", "CreateEndpointConfig", config)

    # names: another serverless size is another config; instance-based names are unchanged
    _, bigger = deploy_requests(endpoint="demo", package_arn=PACKAGE, role_arn=ROLE,
                                instance_type="ml.m5.large", instance_count=1,
                                serverless=ServerlessSettings(memory_mb=4096))
    plain_model, plain = deploy_requests(endpoint="demo", package_arn=PACKAGE, role_arn=ROLE,
                                         instance_type="ml.m5.large", instance_count=1)
    names = {config["EndpointConfigName"], bigger["EndpointConfigName"],
             plain["EndpointConfigName"]}
    assert len(names) == 3
    assert plain["EndpointConfigName"] == "demo-v3-" + plain_model["ModelName"].rsplit(
        "-", 1)[1] + "-cfg"
    assert plain["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert plain_model["PrimaryContainer"] == {"ModelPackageName": PACKAGE}


def test_the_plan_shows_serverless_configs_and_the_staging_deletes_all_valid() -> None:
    config = load_config("aws", {"endpoint": {
        "serverless": {"memory_mb": 3072, "max_concurrency": 4},
        "staging_name": "sagepipe-demo-staging", "staging_keep": False}})
    calls = build_plan(config, commit="abc")
    assert [c.problems for c in calls if c.problems] == []
    configs = [c.params for c in calls if c.operation == "CreateEndpointConfig"]
    assert len(configs) == 2  # staging, production
    for params in configs:
        variant = params["ProductionVariants"][0]
        assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 4}
        assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    # no instance count to scale: no Application Auto Scaling around the updates
    assert not [c for c in calls if c.service == "application-autoscaling"]
    assert [c.params["EndpointName"] for c in calls if c.operation == "UpdateEndpoint"] == [
        "sagepipe-demo-staging", "sagepipe-demo"]
    deletes = [c for c in calls if c.operation.startswith("Delete")]
    assert [(c.operation, c.params) for c in deletes] == [
        ("DeleteEndpoint", {"EndpointName": "sagepipe-demo-staging"}),
        ("DeleteEndpointConfig", {"EndpointConfigName": configs[0]["EndpointConfigName"]})]
    assert all("staging_keep: false" in c.when for c in deletes)
    kept = build_plan(load_config("aws", {"endpoint": {"staging_name": "sagepipe-demo-staging"}}))
    assert not any(c.operation.startswith("Delete") for c in kept)


def test_plan_with_bad_serverless_settings_exits_2_with_the_reason_and_no_traceback() -> None:
    result = CliRunner().invoke(app, ["plan", "--env", "aws", "--set",
                                      "endpoint.serverless.memory_mb=1000", "--set",
                                      "endpoint.strategy=linear"])
    assert result.exit_code == 2
    assert "memory_mb: 1000 MB is not a size SageMaker offers" in result.output
    assert "Traceback" not in result.output


def test_serverless_settings_are_a_frozen_part_of_the_endpoint() -> None:
    settings = EndpointSettings(serverless={"memory_mb": 1024})  # type: ignore[arg-type]
    assert settings.serverless == ServerlessSettings(memory_mb=1024)
    with pytest.raises(ValueError):
        settings.serverless.memory_mb = 2048  # type: ignore[misc, union-attr]
