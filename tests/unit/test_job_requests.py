"""The job requests the pipeline plans: valid for SageMaker, keyed on content."""

from __future__ import annotations

from typing import Any

import pytest

from sagepipe.flows.config import build_config
from sagepipe.tasks.data import DataPin, PinnedObject
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.images import ImageRef
from sagepipe.tasks.local.validation import validate_request
from sagepipe.tasks.runtime import RuntimeSettings
from sagepipe.tasks.steps import JobPlan, JobSettings, plan_evaluate, plan_preprocess, plan_train

AWS = RuntimeSettings(kind="aws", region="eu-west-1")


def image(name: str) -> ImageRef:
    return ImageRef(name=name, repository=f"sagepipe-{name}", tag="c-1", built=False,
                    digest="sha256:" + "a" * 64,
                    uri=f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/sagepipe-{name}@sha256:"
                        + "a" * 64)


PIN = DataPin(source_uri="s3://b/d.csv", bucket="b", digest="d1", snapshot_uri="s3://b/p/data/d1/",
              objects=[PinnedObject(key="d.csv", version_id="v1", etag="e", size=10)])


def plans(settings: JobSettings, **train: Any) -> list[JobPlan]:
    common: dict[str, Any] = {"project": "demo", "runtime": AWS, "artifacts_uri": "s3://b/p",
                              "settings": settings}
    pre = plan_preprocess(**common, pin=PIN, image=image("preprocess"), label_column="target",
                          validation_fraction=0.15, test_fraction=0.15, seed=42)
    fit = plan_train(**common, splits={k: f"s3://b/p/{k}" for k in ("train", "validation")},
                     image=image("train"), label_column="target",
                     hyperparameters=train or {"C": 1.0, "fast": True})
    ev = plan_evaluate(**common, model_uri="s3://b/p/m/model.tar.gz",
                       champion_model_uri="s3://b/p/c/model.tar.gz", test_uri="s3://b/p/test",
                       image=image("evaluate"))
    return [pre, fit, ev]


def test_requests_satisfy_the_service_model_with_every_option() -> None:
    settings = JobSettings(role_arn="arn:aws:iam::123456789012:role/x", spot=True,
                           max_wait_seconds=7200, subnets=["subnet-0abc"],
                           security_group_ids=["sg-0abc"], kms_key_id="alias/sagepipe",
                           environment={"LOG_LEVEL": "info"})
    pre, fit, ev = plans(settings)
    for plan in (pre, fit, ev):
        operation = "CreateTrainingJob" if plan.kind == "training" else "CreateProcessingJob"
        validate_request("sagemaker", operation, plan.request)
    assert fit.request["EnableManagedSpotTraining"] is True
    assert fit.request["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200
    assert fit.request["CheckpointConfig"]["S3Uri"].startswith("s3://b/p/jobs/train-")
    assert fit.request["VpcConfig"] == {"Subnets": ["subnet-0abc"],
                                        "SecurityGroupIds": ["sg-0abc"]}
    assert fit.request["ResourceConfig"]["VolumeKmsKeyId"] == "alias/sagepipe"
    # JSON-encoded as the SageMaker SDK sends them (the training toolkit json-decodes each)
    assert fit.request["HyperParameters"] == {"C": "1.0", "fast": "true",
                                              "label_column": '"target"'}
    assert pre.request["NetworkConfig"]["EnableNetworkIsolation"] is True
    assert pre.request["ProcessingOutputConfig"]["KmsKeyId"] == "alias/sagepipe"
    assert [i["InputName"] for i in ev.request["ProcessingInputs"]] == ["model", "test",
                                                                         "champion"]


def test_keys_change_exactly_when_content_does() -> None:
    base = plans(JobSettings())
    assert [p.key for p in plans(JobSettings())] == [p.key for p in base]
    changed = plans(JobSettings(), C=0.5)
    assert changed[0].key == base[0].key  # preprocess is unaffected by hyperparameters
    assert changed[1].key != base[1].key
    assert changed[1].name != base[1].name
    assert changed[1].outputs["model"] != base[1].outputs["model"]


def test_inconsistent_job_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"subnets and jobs\.security_group_ids go together"):
        build_config({"jobs": {"subnets": ["subnet-1"]}})
    with pytest.raises(ConfigError, match="applies to spot"):
        build_config({"jobs": {"max_wait_seconds": 7200}})
    with pytest.raises(ConfigError, match=r"at least jobs\.max_runtime_seconds"):
        build_config({"jobs": {"spot": True, "max_wait_seconds": 600,
                               "max_runtime_seconds": 3600}})


def test_string_hyperparameters_keep_their_type_through_the_training_toolkit() -> None:
    """sagemaker-training json-decodes each value it reads from hyperparameters.json; sent as
    str(v), the string "null" became None and "1e3" became 1000.0 in the script."""
    import json

    fit = plans(JobSettings(), note="null", scale="1e3", depth=3)[1]
    sent = fit.request["HyperParameters"]
    decoded = {k: json.loads(v) for k, v in sent.items()}  # what the toolkit hands the script
    assert decoded == {"note": "null", "scale": "1e3", "depth": 3, "label_column": "target"}
