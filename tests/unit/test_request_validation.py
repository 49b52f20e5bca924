"""The local runtime's server-side validation: every maximum botocore's models give.

AWS checks maximum lengths, list and map sizes and numeric maxima after a request
arrives (a ``ValidationException``); botocore's client checks only minimums. Each
kind of maximum is tested at the limit (accepted) and one past it (refused with the
path and the constraint), on CreateTrainingJob's own shapes.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from sagepipe.tasks.local.validation import operation_model, validate_request

ROLE = "arn:aws:iam::123456789012:role/sagepipe-execution"


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "TrainingJobName": "job",
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                           "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def limit(*path: str) -> int:
    """The model's maximum at ``path`` of CreateTrainingJob's input (``<key>``/``<value>``
    for a map's key and value shapes)."""
    shape: Any = operation_model("sagemaker", "CreateTrainingJob").input_shape
    for name in path:
        shape = {"<key>": getattr(shape, "key", None), "<value>": getattr(shape, "value", None)
                 }.get(name) or shape.members[name]
    return int(shape.metadata["max"])


def refused(params: dict[str, Any]) -> str:
    with pytest.raises(ClientError) as caught:
        validate_request("sagemaker", "CreateTrainingJob", params)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    return str(caught.value.response["Error"]["Message"])


def test_a_valid_request_passes() -> None:
    validate_request("sagemaker", "CreateTrainingJob", request())


def test_a_string_longer_than_its_maximum_is_refused() -> None:
    most = limit("TrainingJobName")
    assert most == 63
    validate_request("sagemaker", "CreateTrainingJob", request(TrainingJobName="a" * most))
    message = refused(request(TrainingJobName="a" * (most + 1)))
    assert "CreateTrainingJobRequest.TrainingJobName" in message
    assert f"length less than or equal to {most}" in message


def test_a_list_longer_than_its_maximum_is_refused() -> None:
    most = limit("Tags")
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(most + 1)]
    validate_request("sagemaker", "CreateTrainingJob", request(Tags=tags[:most]))
    message = refused(request(Tags=tags))
    assert "CreateTrainingJobRequest.Tags" in message
    assert f"length less than or equal to {most}" in message


def test_a_map_with_more_entries_than_its_maximum_is_refused() -> None:
    most = limit("HyperParameters")
    hps = {f"h{i}": "1" for i in range(most + 1)}
    validate_request("sagemaker", "CreateTrainingJob",
                     request(HyperParameters=dict(list(hps.items())[:most])))
    message = refused(request(HyperParameters=hps))
    assert "CreateTrainingJobRequest.HyperParameters" in message
    assert f"at most {most} entries" in message


def test_a_map_key_or_value_longer_than_its_maximum_is_refused() -> None:
    key_most, value_most = limit("HyperParameters", "<key>"), limit("HyperParameters",
                                                                      "<value>")
    validate_request("sagemaker", "CreateTrainingJob", request(
        HyperParameters={"k" * key_most: "v" * value_most}))
    message = refused(request(HyperParameters={"k" * (key_most + 1): "v"}))
    assert "HyperParameters.key" in message and f"equal to {key_most}" in message
    message = refused(request(HyperParameters={"k": "v" * (value_most + 1)}))
    assert "HyperParameters.k" in message and f"equal to {value_most}" in message


def test_a_number_above_its_maximum_is_refused() -> None:
    most = limit("ResourceConfig", "KeepAlivePeriodInSeconds")
    assert most == 21600
    validate_request("sagemaker", "CreateTrainingJob",
                     request(ResourceConfig={"KeepAlivePeriodInSeconds": most}))
    message = refused(request(ResourceConfig={"KeepAlivePeriodInSeconds": most + 1}))
    assert "ResourceConfig.KeepAlivePeriodInSeconds" in message
    assert f"value less than or equal to {most}" in message


def test_a_maximum_inside_a_list_item_is_checked_too() -> None:
    shape: Any = operation_model("sagemaker", "CreateTrainingJob").input_shape
    key_most = int(shape.members["Tags"].member.members["Key"].metadata["max"])
    validate_request("sagemaker", "CreateTrainingJob",
                     request(Tags=[{"Key": "k" * key_most, "Value": "v"}]))
    message = refused(request(Tags=[{"Key": "k" * (key_most + 1), "Value": "v"}]))
    assert "CreateTrainingJobRequest.Tags.1.Key" in message
    assert f"length less than or equal to {key_most}" in message
