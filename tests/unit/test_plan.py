"""`sagepipe plan`: the requests a run would send, validated, with no credentials."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sagepipe.flows.cli import app
from sagepipe.flows.config import load_config
from sagepipe.flows.plan import build_plan


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


def test_the_aws_plan_is_complete_and_valid() -> None:
    calls = build_plan(load_config("aws", {"endpoint": {"staging_name": "demo-staging"}}),
                       commit="abc")
    operations = [f"{c.service}:{c.operation}" for c in calls]
    for expected in ("s3:CopyObject", "ecr:DescribeImages", "codebuild:StartBuild",
                     "sagemaker:CreateProcessingJob", "sagemaker:CreateTrainingJob",
                     "sagemaker:CreateModelPackage", "sagemaker:CreateModel",
                     "sagemaker:CreateEndpointConfig", "sagemaker:UpdateEndpoint",
                     "sns:Publish"):
        assert expected in operations
    assert operations.count("sagemaker:CreateEndpoint") == 2  # staging, then production
    assert [c.problems for c in calls if c.problems] == []
    train = next(c for c in calls if c.operation == "CreateTrainingJob").params
    assert train["RoleArn"].startswith("arn:aws:iam::123456789012:role/")
    assert train["AlgorithmSpecification"]["TrainingImage"].startswith(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagepipe-train@")


def test_a_request_aws_would_refuse_is_reported_and_the_command_fails(tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["plan", "--env", "aws", "--set",
                                      "endpoint.instance_type=ml.banana.huge"])
    assert result.exit_code == 1
    assert "CreateEndpointConfig (if the gate passes) - INVALID" in result.output
    assert "ml.banana.huge" in result.output
    assert "invalid" in result.output.splitlines()[-1]


def test_the_plan_shows_the_requests_exactly_as_a_run_sends_them() -> None:
    """Tags, StartBuild's overrides and token: built by the same functions the run uses."""
    from sagepipe.tasks.images import BUILDSPEC

    calls = build_plan(load_config("aws"), commit="abc")
    train = next(c for c in calls if c.operation == "CreateTrainingJob").params
    tags = {t["Key"]: t["Value"] for t in train["Tags"]}
    assert tags["sagepipe:flow-run-id"] == "<flow-run-id>"
    assert (tags["sagepipe:commit"], tags["sagepipe:step"]) == ("abc", "train")
    assert train["TrainingJobName"].endswith(tags["sagepipe:cache-key"])
    build = next(c for c in calls if c.operation == "StartBuild").params
    assert build["privilegedModeOverride"] is True
    assert build["buildspecOverride"] == BUILDSPEC.read_text()
    assert build["idempotencyToken"].startswith("<")
    upload = next(c for c in calls if c.operation == "PutObject" and "/builds/" in c.params[
        "Key"])
    assert build["sourceLocationOverride"].endswith(upload.params["Key"])
    endpoint = next(c for c in calls if c.operation == "CreateEndpoint").params
    assert {"Key": "sagepipe:project", "Value": "sagepipe-demo"} in endpoint["Tags"]
