"""``image: framework``: the archive, runproc.sh and the requests, as the SageMaker SDK makes
them (sagepipe.tasks.framework), shown by ``sagepipe plan`` and valid for botocore."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sagepipe.flows.config import build_config
from sagepipe.flows.plan import build_plan
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.framework import (
    FrameworkCode,
    framework_image,
    runproc,
    source_archive,
    training_hyperparameters,
)
from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS, StepsSettings, step_folders

CODE = FrameworkCode(framework="sklearn", version="1.9-0", entry_point="fit.py",
                     source_uri="s3://b/code/train-x/sourcedir.tar.gz",
                     runproc_uri="s3://b/code/train-x/runproc.sh", region="eu-west-1")


def test_the_archive_is_reproducible_and_holds_only_code(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "fit.py").write_text("print('fit')\n")
    (tmp_path / "pkg" / "util.py").write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "fit.cpython-311.pyc").write_bytes(b"junk")
    first = source_archive(tmp_path)
    os.utime(tmp_path / "fit.py", (1, 1))  # a touched file is the same code
    assert source_archive(tmp_path) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["fit.py", "pkg/util.py"]
    (tmp_path / "fit.py").write_text("print('fit v2')\n")
    assert source_archive(tmp_path) != first


def test_runproc_and_hyperparameters_are_the_sdks() -> None:
    script = runproc("clean.py")
    assert script.startswith("#!/bin/bash\n\ncd /opt/ml/processing/input/code/\n"
                             "tar -xzf sourcedir.tar.gz\n")
    assert "pip install -r requirements.txt" in script
    assert script.rstrip().endswith('python3 clean.py "$@"')
    hps = training_hyperparameters({"model": "linear", "max_iter": 100, "early": True,
                                    "unset": None}, CODE)
    assert hps == {"model": '"linear"', "max_iter": "100", "early": "true",
                   "sagemaker_program": '"fit.py"',
                   "sagemaker_submit_directory": '"/opt/ml/input/data/code/sourcedir.tar.gz"',
                   "sagemaker_container_log_level": "20", "sagemaker_region": '"eu-west-1"'}
    assert CODE.serving_environment() == {
        "SAGEMAKER_PROGRAM": "fit.py", "SAGEMAKER_SUBMIT_DIRECTORY": CODE.source_uri,
        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": "eu-west-1"}


def test_image_uris_come_from_sagemaker_core_per_region() -> None:
    uri = framework_image("xgboost", "3.2-0", "eu-west-1", "ml.m5.large", "training")
    assert uri == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:3.2-0"
    with pytest.raises(ConfigError, match=r"No SageMaker sklearn image '0\.1-9'"):
        framework_image("sklearn", "0.1-9", "eu-west-1", "ml.m5.large", "training")


def test_a_framework_bundle_adds_no_dockerfile_server_or_default_requirements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "handlers.py").write_text("def model_fn(d):\n    return d\n")
    (tmp_path / "serve" / "deps.txt").write_text("lightgbm==4.5.0\n")
    steps = StepsSettings.model_validate({"serve": {
        "source": "serve", "entry_point": "handlers.py", "requirements": "deps.txt",
        "image": "framework"}})
    folder = step_folders(steps, DEFAULT_CONTAINERS, tmp_path / "work")["serve"]
    assert sorted(p.name for p in folder.iterdir()) == ["deps.txt", "handlers.py",
                                                       "requirements.txt"]
    assert (folder / "requirements.txt").read_text() == "lightgbm==4.5.0\n"


def test_plan_shows_a_framework_run_valid_for_botocore_and_without_a_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    framework = {"image": "framework"}
    config = build_config({
        "runtime": {"kind": "aws", "region": "eu-west-1"},
        "dataset_uri": "s3://my-bucket/datasets/d.csv", "artifacts_uri": "s3://my-bucket/p",
        "jobs": {"role_arn": "arn:aws:iam::123456789012:role/sm", "network_isolation": False},
        "steps": {s: framework for s in ("preprocess", "train", "evaluate", "serve")}})
    calls = build_plan(config)
    assert [c.problems for c in calls if c.problems] == []
    operations = [c.operation for c in calls]
    assert "StartBuild" not in operations and "DescribeImages" not in operations
    uploads = [c.params["Key"] for c in calls if c.operation == "PutObject"]
    assert len(uploads) == 6 and all(k.startswith("p/code/") for k in uploads)
    assert sorted(k.rsplit("/", 1)[-1] for k in uploads) == ["runproc.sh"] * 2 + [
        "sourcedir.tar.gz"] * 4  # runproc.sh: the processing steps only
    training = next(c.params for c in calls if c.operation == "CreateTrainingJob")
    assert training["AlgorithmSpecification"]["TrainingImage"] == (
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-scikit-learn:1.9-0-cpu-py3")
    assert training["HyperParameters"]["sagemaker_program"] == '"train.py"'
    processing = next(c.params for c in calls if c.operation == "CreateProcessingJob")
    assert processing["AppSpecification"]["ContainerEntrypoint"] == [
        "/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]
    assert {i["InputName"] for i in processing["ProcessingInputs"]} == {
        "data", "code", "entrypoint"}
    package = next(c.params for c in calls if c.operation == "CreateModelPackage")
    environment = package["InferenceSpecification"]["Containers"][0]["Environment"]
    assert environment["SAGEMAKER_PROGRAM"] == "inference.py"
    assert environment["SAGEMAKER_SUBMIT_DIRECTORY"].startswith("s3://my-bucket/p/code/serve-")
