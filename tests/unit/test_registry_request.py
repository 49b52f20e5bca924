"""The CreateModelPackage request a run sends: what AWS documents it accepts.

Rules from https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateModelPackage.html:
CustomerMetadataProperties has 1 to 50 entries, keys of 1-128 and values of 1-256
characters matching [\\p{L}\\p{Z}\\p{N}_.:\\/=+\\-@]*; Task is one of the documented values
(CLASSIFICATION, REGRESSION, ...). botocore's model carries the lengths but not the Java-only
pattern, so neither botocore nor the local runtime would catch a "(" in a value.
"""

from __future__ import annotations

import re

import pytest

from sagepipe.tasks.local.validation import validate_request
from sagepipe.tasks.registry import metadata_text, model_package_request

# the documented pattern, with \p{L}\p{N}_ as Python's \w and \p{Z} as the space separators
ALLOWED = re.compile(r"[\w \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000.:/=+\-@]*")


def request(**extra: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        group="demo", idempotency_key="job-1", image="1.dkr.ecr.us-east-1.amazonaws.com/x@sha256:"
        + "0" * 64, model_data_url="s3://b/m/model.tar.gz", evaluation_uri="s3://b/e/evaluation.json",
        approval="approved", description="deploy", instance_type="ml.m5.large",
        metadata={"label_column": "price ($, net)", "dataset_uri": "s3://b/datasets/x y/d.csv",
                  "commit": "abc123", "empty": ""})
    args.update(extra)
    return model_package_request(**args)  # type: ignore[arg-type]


def test_metadata_keeps_only_the_characters_aws_accepts() -> None:
    metadata = request()["CustomerMetadataProperties"]
    assert isinstance(metadata, dict)
    assert metadata == {"label_column": "price ___ net_", "dataset_uri":
                        "s3://b/datasets/x y/d.csv", "commit": "abc123"}  # empty values dropped
    for key, value in metadata.items():
        assert ALLOWED.fullmatch(key) and ALLOWED.fullmatch(value)
    assert metadata_text("é:ü/ß=1+2-3@4_5.6 7", 256) == "é:ü/ß=1+2-3@4_5.6 7"  # letters stay
    assert len(metadata_text("x" * 300, 256)) == 256


def test_at_most_fifty_metadata_entries() -> None:
    many = {f"k{i}": str(i) for i in range(60)}
    assert len(request(metadata=many)["CustomerMetadataProperties"]) == 50  # type: ignore[arg-type]


@pytest.mark.parametrize(("problem", "task"), [("binary", "CLASSIFICATION"),
                                              ("multiclass", "CLASSIFICATION"),
                                              ("regression", "REGRESSION"), (None, None)])
def test_task_and_the_feature_schema_as_data_quality_constraints(problem: str | None,
                                                                 task: str | None) -> None:
    made = request(problem=problem, constraints_uri="s3://b/e/constraints.json")
    assert made.get("Task") == task
    assert made["ModelMetrics"] == {
        "ModelQuality": {"Statistics": {"ContentType": "application/json",
                                        "S3Uri": "s3://b/e/evaluation.json"}},
        "ModelDataQuality": {"Constraints": {"ContentType": "application/json",
                                             "S3Uri": "s3://b/e/constraints.json"}}}
    validate_request("sagemaker", "CreateModelPackage", made)  # botocore's own model


def test_the_client_token_covers_the_decision_not_just_the_training_job(
        tmp_path: object) -> None:
    """ClientToken makes CreateModelPackage idempotent (same token: the same package back).
    Keyed on the training job alone, a run that reuses the cached job but decides otherwise
    got the earlier package back, still Rejected, and went on to deploy it."""
    from pathlib import Path

    from sagepipe.tasks.local import local_clients
    from sagepipe.tasks.registry import register_package
    from sagepipe.tasks.runtime import Clients

    assert request()["ClientToken"] == request()["ClientToken"]  # a retry: same package
    assert request()["ClientToken"] != request(approval="rejected")["ClientToken"]
    assert request()["ClientToken"] != request(description="deploy: beats v3")["ClientToken"]

    local = local_clients(Path(str(tmp_path)))
    clients = Clients(s3=local["s3"], sagemaker=local["sagemaker"],
                      sagemaker_runtime=local["sagemaker-runtime"], sns=local["sns"],
                      logs=local["logs"], ecr=local["ecr"], codebuild=local["codebuild"])
    local["sagemaker"].create_model_package_group(ModelPackageGroupName="demo")
    args = dict(group="demo", idempotency_key="job-1", image="1.dkr.ecr.us-east-1."
                "amazonaws.com/x@sha256:" + "0" * 64, model_data_url="s3://b/m/model.tar.gz",
                evaluation_uri="s3://b/e/evaluation.json", instance_type="ml.m5.large",
                metadata={"commit": "abc"})
    rejected = register_package(clients, **args, approval="rejected", description="reject: margin")
    approved = register_package(clients, **args, approval="approved", description="deploy")
    assert approved != rejected
    status = local["sagemaker"].describe_model_package(ModelPackageName=approved)
    assert status["ModelApprovalStatus"] == "Approved"
