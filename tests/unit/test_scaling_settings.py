"""jobs.keep_alive_seconds and endpoint.autoscaling: what the settings allow, the requests
they make (validated against botocore's models), and what `sagepipe plan` prints."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError
from typer.testing import CliRunner

from sagepipe.flows.cli import app
from sagepipe.flows.config import build_config, load_config
from sagepipe.flows.plan import build_plan
from sagepipe.tasks.endpoints import EndpointSettings
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local.validation import validate_request
from sagepipe.tasks.scaling import AutoscalingSettings, scaling_requests

SCALING = {"min_instances": 1, "max_instances": 4, "target_invocations_per_instance": 70}


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def _call(calls: list[Any], operation: str) -> dict[str, Any]:
    return dict(next(c for c in calls if c.operation == operation).params)


# ---------------------------------------------------------------- warm pools


def test_keep_alive_goes_into_the_training_request_only() -> None:
    calls = build_plan(load_config("aws", {"jobs": {"keep_alive_seconds": 1800}}))
    train = _call(calls, "CreateTrainingJob")
    assert train["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    validate_request("sagemaker", "CreateTrainingJob", train)  # what AWS would accept
    # processing jobs have no warm pools (ProcessingResources has no keep-alive)
    assert all("KeepAlivePeriodInSeconds" not in json.dumps(c.params) for c in calls
               if c.operation == "CreateProcessingJob")
    cold = _call(build_plan(load_config("aws")), "CreateTrainingJob")
    assert "KeepAlivePeriodInSeconds" not in cold["ResourceConfig"]


def test_turning_a_warm_pool_on_does_not_change_the_training_jobs_cache_key() -> None:
    """How long instances stay warm afterwards changes nothing a job computes: the same
    job name (and cached result) with or without it, so enabling it retrains nothing."""
    cold = _call(build_plan(load_config("aws")), "CreateTrainingJob")
    warm = _call(build_plan(load_config("aws", {"jobs": {"keep_alive_seconds": 600}})),
                 "CreateTrainingJob")
    assert warm["TrainingJobName"] == cold["TrainingJobName"]
    other = _call(build_plan(load_config("aws", {"jobs": {"volume_size_gb": 50}})),
                  "CreateTrainingJob")
    assert other["TrainingJobName"] != cold["TrainingJobName"]  # the key still sees the rest


def test_a_warm_pool_with_spot_is_refused_before_anything_runs() -> None:
    # "SageMaker AI managed warm pools cannot be used with spot instances" (developer guide)
    with pytest.raises(ConfigError) as err:
        build_config({"jobs": {"spot": True, "keep_alive_seconds": 600}})
    message = str(err.value)
    assert "jobs.keep_alive_seconds" in message and "spot" in message
    assert "set the other to false / 0" in message


@pytest.mark.parametrize(("value", "needle"), [
    (21601, "less than or equal to 21600"), (-1, "greater than or equal to 0")])
def test_keep_alive_outside_the_apis_range_is_refused(value: int, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_config({"jobs": {"keep_alive_seconds": value}})


def test_the_longest_keep_alive_the_api_takes_is_a_valid_request() -> None:
    train = _call(build_plan(load_config("aws", {"jobs": {"keep_alive_seconds": 21600}})),
                  "CreateTrainingJob")
    validate_request("sagemaker", "CreateTrainingJob", train)
    train["ResourceConfig"]["KeepAlivePeriodInSeconds"] = 21601
    with pytest.raises(ClientError, match="less than or equal to 21600"):
        validate_request("sagemaker", "CreateTrainingJob", train)


# ---------------------------------------------------------------- autoscaling


def test_the_scaling_requests_are_what_application_auto_scaling_accepts() -> None:
    register, policy = scaling_requests("sagepipe-demo", "AllTraffic",
                                        AutoscalingSettings(**SCALING))
    assert register == {"ServiceNamespace": "sagemaker",
                        "ResourceId": "endpoint/sagepipe-demo/variant/AllTraffic",
                        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                        "MinCapacity": 1, "MaxCapacity": 4}
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 70.0,
        "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}
    validate_request("application-autoscaling", "RegisterScalableTarget", register)
    validate_request("application-autoscaling", "PutScalingPolicy", policy)
    with pytest.raises(ParamValidationError):  # the check is real: a wrong type fails
        validate_request("application-autoscaling", "RegisterScalableTarget",
                         {**register, "MinCapacity": "one"})


@pytest.mark.parametrize(("endpoint", "needle"), [
    ({"autoscaling": {**SCALING, "min_instances": 5}}, "min_instances (5) is more than "
                                                       "max_instances (4)"),
    ({"autoscaling": {**SCALING, "min_instances": 0}}, "greater than or equal to 1"),
    ({"autoscaling": {"min_instances": 1}}, "max_instances: Field required"),
    ({"autoscaling": {**SCALING, "target_invocations_per_instance": 0}}, "greater than 0"),
    ({"instance_count": 5, "autoscaling": SCALING}, "instance_count (5) is the fleet a first "
                                                    "deploy starts with"),
    ({"instance_count": 2, "strategy": "canary", "canary_percent": 50, "alarms": ["a"],
      "autoscaling": {**SCALING, "min_instances": 1}},
     "Set endpoint.autoscaling.min_instances to 2 or more"),
    ({"instance_count": 4, "strategy": "linear", "linear_step_percent": 25, "alarms": ["a"],
      "autoscaling": {**SCALING, "min_instances": 2, "max_instances": 20}},
     "max_instances <= 10"),
])
def test_autoscaling_that_cannot_work_is_refused_with_what_to_change(
        endpoint: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"endpoint": endpoint})
    assert needle in str(err.value)
    assert "endpoint" in str(err.value)


def test_autoscaling_that_fits_the_rollout_is_accepted() -> None:
    config = build_config({"endpoint": {
        "instance_count": 4, "strategy": "canary", "canary_percent": 25, "alarms": ["a"],
        "autoscaling": {"min_instances": 2, "max_instances": 8,
                        "target_invocations_per_instance": 120}}})
    assert config.endpoint.autoscaling == AutoscalingSettings(
        min_instances=2, max_instances=8, target_invocations_per_instance=120)


def test_staging_is_never_autoscaled() -> None:
    production = EndpointSettings(name="prod", staging_name="stage",
                                  autoscaling=AutoscalingSettings(**SCALING))
    assert production.for_staging().autoscaling is None


@pytest.mark.parametrize("endpoint", [
    {"serverless": {"memory_mb": 2048, "max_concurrency": 5}, "autoscaling": SCALING},
    # the pair is named first, not an instance_count or strategy that serverless also refuses
    {"serverless": {}, "instance_count": 2, "strategy": "canary", "alarms": ["a"],
     "autoscaling": {**SCALING, "min_instances": 2}},
])
def test_autoscaling_on_a_serverless_endpoint_is_refused_before_anything_runs(
        endpoint: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"endpoint": endpoint})
    message = str(err.value)
    assert "endpoint.autoscaling and endpoint.serverless are both set" in message
    assert "a serverless endpoint has no instances" in message
    assert "Remove one of the two" in message
    assert "instance_count 2 with endpoint.serverless" not in message
    build_config({"endpoint": {"autoscaling": SCALING}})  # each alone is fine
    build_config({"endpoint": {"serverless": {}}})


def test_plan_with_autoscaling_and_serverless_exits_2_with_the_reason() -> None:
    result = CliRunner().invoke(app, [
        "plan", "--env", "aws", "--set", "endpoint.serverless.memory_mb=2048",
        "--set", "endpoint.autoscaling.max_instances=3",
        "--set", "endpoint.autoscaling.target_invocations_per_instance=200"])
    assert result.exit_code == 2, result.output
    assert "endpoint.autoscaling and endpoint.serverless are both set" in result.output
    assert "Traceback" not in result.output


def test_the_plan_shows_the_scaling_requests_after_each_deploy_to_production() -> None:
    config = load_config("aws", {"endpoint": {"staging_name": "sagepipe-demo-staging",
                                              "autoscaling": SCALING}})
    calls = build_plan(config)
    assert [c.problems for c in calls if c.problems] == []
    operations = [(c.service, c.operation, c.params.get("EndpointName")
                   or c.params.get("ResourceId") or c.params.get("ResourceIds"))
                  for c in calls if c.service == "application-autoscaling"
                  or c.operation == "UpdateEndpoint"]
    production = "endpoint/sagepipe-demo/variant/AllTraffic"
    assert operations == [
        ("application-autoscaling", "DescribeScalableTargets",
         ["endpoint/sagepipe-demo-staging/variant/AllTraffic"]),
        ("sagemaker", "UpdateEndpoint", "sagepipe-demo-staging"),
        ("application-autoscaling", "DescribeScalableTargets", [production]),
        ("sagemaker", "UpdateEndpoint", "sagepipe-demo"),
        ("application-autoscaling", "RegisterScalableTarget", production),
        ("application-autoscaling", "PutScalingPolicy", production)]
    updates = [c.params for c in calls if c.operation == "UpdateEndpoint"]
    # staging keeps InitialInstanceCount; production keeps the count autoscaling reached
    assert "RetainAllVariantProperties" not in updates[0]
    assert updates[1]["RetainAllVariantProperties"] is True


def test_plan_prints_the_warm_pool_and_scaling_settings_and_refuses_bad_ones() -> None:
    runner = CliRunner()
    result = runner.invoke(app, [
        "plan", "--env", "aws", "--set", "jobs.keep_alive_seconds=900",
        "--set", "endpoint.autoscaling.max_instances=3",
        "--set", "endpoint.autoscaling.target_invocations_per_instance=200"])
    assert result.exit_code == 0, result.output
    assert '"KeepAlivePeriodInSeconds": 900' in result.output
    assert "application-autoscaling PutScalingPolicy (after every deploy" in result.output
    assert '"TargetValue": 200.0' in result.output
    bad = runner.invoke(app, ["plan", "--env", "aws", "--set", "jobs.spot=true",
                              "--set", "jobs.keep_alive_seconds=900"])
    assert bad.exit_code == 2
    assert "warm pools cannot be used with spot instances" in bad.output
    assert "Traceback" not in bad.output


def test_the_run_log_says_whether_a_warm_pool_was_kept(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    import logging

    from sagepipe.tasks.steps import _warm_pool

    log = logging.getLogger("test.warm_pool")
    caplog.set_level(logging.INFO, logger=log.name)

    def described(status: str | None, how: str = "created") -> dict[str, Any]:
        job = {"TrainingJobName": "j", "_how": how, "ResourceConfig": {
            "InstanceType": "ml.m5.large", "KeepAlivePeriodInSeconds": 900}}
        return job | ({"WarmPoolStatus": {"Status": status}} if status else {})

    assert _warm_pool(described("Available"), log) == "Available"
    assert "keeps its ml.m5.large instances warm for 900 s" in caplog.text
    # no pool although one was asked for: the account's warm pool quota (default 0)
    assert _warm_pool(described("Terminated"), log) == "Terminated"
    warning = caplog.records[-1]
    assert warning.levelname == "WARNING" and "Service Quotas" in warning.getMessage()
    caplog.clear()
    assert _warm_pool(described("Terminated", how="reused"), log) == "Terminated"
    assert caplog.text == ""  # an earlier run's job: its pool is that run's story
    cold = described(None)
    del cold["ResourceConfig"]["KeepAlivePeriodInSeconds"]
    assert _warm_pool(cold, log) is None
