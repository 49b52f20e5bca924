"""The local runtime gives an image's code what its Dockerfile's ``pip install -r
requirements.txt`` would: this interpreter when it already satisfies them, else a venv of
its own, built once per requirements hash (installs from the package index)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagepipe.tasks.errors import ImageBuildFailed
from sagepipe.tasks.images import ensure_images
from sagepipe.tasks.local.pyenv import RequirementsError, interpreter, unmet_requirements
from sagepipe.tasks.runtime import Clients
from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS, STEPS


def clients_of(local: dict[str, Any], root: Path) -> Clients:
    return Clients(s3=local["s3"], sagemaker=local["sagemaker"],
                   sagemaker_runtime=local["sagemaker-runtime"], sns=local["sns"],
                   logs=local["logs"], ecr=local["ecr"], codebuild=local["codebuild"],
                   local_root=root)


def wait_training(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described: dict[str, Any] = sm.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return described
        time.sleep(0.1)
    raise AssertionError(f"{name} did not finish")


def test_what_this_interpreter_satisfies_needs_no_venv(tmp_path: Path) -> None:
    assert unmet_requirements(
        "# a comment\n\nscikit-learn==1.9.1  # pinned\npandas>=2\n"
        "nothing-old; python_version < '3'\n") == []
    assert unmet_requirements("scikit-learn==0.1\nno-such-dist-here\n-r other.txt\n"
                              "pandas[pyarrow]\n") == [
        "scikit-learn==0.1", "no-such-dist-here", "-r other.txt", "pandas[pyarrow]"]
    for step in STEPS:  # sagepipe's own steps run on this interpreter, at no cost
        assert interpreter(DEFAULT_CONTAINERS / step, tmp_path) == sys.executable
    assert not (tmp_path / "venvs").exists()


def test_other_requirements_get_a_venv_built_once_over_this_one(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "requirements.txt").write_text("pandas==3.1.1\ntomli-w==1.2.0\n")
    python = interpreter(image, tmp_path / "root")
    assert python != sys.executable and Path(python).parent.parent.parent.name == "venvs"
    check = subprocess.run([python, "-c", "import tomli_w, pandas; print(pandas.__version__)"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "3.1.1"  # the project's own, seen through the overlay
    marker = Path(python).parent.parent / ".complete"
    built = marker.stat().st_mtime_ns
    assert interpreter(image, tmp_path / "root") == python  # reused, not rebuilt
    assert marker.stat().st_mtime_ns == built


def test_a_requirement_pip_cannot_install_fails_with_pips_message(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.mkdir()
    (image / "requirements.txt").write_text("sagepipe-no-such-package-4f1d==1.0\n")
    with pytest.raises(RequirementsError, match="sagepipe-no-such-package-4f1d"):
        interpreter(image, tmp_path / "root")
    assert list((tmp_path / "root" / "venvs").glob("*/.complete")) == []  # nothing half-made


def test_a_local_build_bakes_the_venv_and_the_job_runs_on_it(
        fake_runtime: dict[str, Any], tmp_path: Path) -> None:
    """Through the local CodeBuild and SageMaker clients, as the pipeline drives them."""
    clients, root = fake_runtime["clients"], fake_runtime["root"]
    folder = tmp_path / "src" / "train"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM python:3.11-slim\nENV SAGEMAKER_PROGRAM train.py\n")
    (folder / "requirements.txt").write_text("tomli-w==1.2.0\n")
    (folder / "train.py").write_text(
        "import os, pathlib, tomli_w\n"
        "out = pathlib.Path(os.environ['SM_MODEL_DIR']) / 'model.toml'\n"
        "out.write_text(tomli_w.dumps({'ok': True}))\n")
    refs = ensure_images(clients_of(clients, root), folders={"train": folder},
                         repository_prefix="t", build_project="p", artifacts_bucket="bkt",
                         artifacts_prefix="pipeline", log=logging.getLogger("test"))
    log = (root / "logs" / "aws" / "codebuild" / "p").glob("*.log")
    assert "requirements.txt installed into" in "".join(p.read_text() for p in log)
    request = fake_runtime["training_request"]("needs-tomli-w")
    request["AlgorithmSpecification"]["TrainingImage"] = refs["train"].uri
    clients["sagemaker"].create_training_job(**request)
    final = wait_training(clients["sagemaker"], "needs-tomli-w")
    assert final["TrainingJobStatus"] == "Completed", final.get("FailureReason")


def unbuildable_train(parent: Path) -> Path:
    """A train step whose requirements.txt pins a version pip cannot find."""
    folder = parent / "train"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM python:3.11-slim\nENV SAGEMAKER_PROGRAM train.py\n")
    (folder / "requirements.txt").write_text("pandas==99.0\n")
    (folder / "train.py").write_text("print('never runs')\n")
    return folder


def test_a_requirement_pip_cannot_install_fails_the_build_and_pushes_nothing(
        fake_runtime: dict[str, Any], tmp_path: Path) -> None:
    """As `docker build` stops at a failing `RUN pip install`: no image, so no job starts
    on it (the local build used to push first and fail after: the run then used the
    pushed image, and each training attempt failed on the same pip error)."""
    clients, root = fake_runtime["clients"], fake_runtime["root"]
    folder = unbuildable_train(tmp_path / "src")
    build = {"folders": {"train": folder}, "repository_prefix": "t", "build_project": "p",
             "artifacts_bucket": "bkt", "artifacts_prefix": "pipeline",
             "log": logging.getLogger("test")}
    with pytest.raises(ImageBuildFailed, match=r"ended FAILED: .*pip could not install "
                       r"requirements.txt of the train image: .*pandas==99\.0"):
        ensure_images(clients_of(clients, root), **build)
    assert clients["ecr"].describe_images(repositoryName="t-train")["imageDetails"] == []
    with pytest.raises(ImageBuildFailed):  # the next run builds again and fails again
        ensure_images(clients_of(clients, root), **build)


def test_a_job_on_an_image_whose_requirements_cannot_be_installed_fails_once_as_a_client_error(
        fake_runtime: dict[str, Any], tmp_path: Path) -> None:
    """An image already in the registry (pushed by an older local build) whose
    requirements pip cannot install fails the same way every time: a ClientError, not an
    InternalServerError. AWS retries a job only "when a training job fails due to an
    InternalServerError" (RetryStrategy, docs.aws.amazon.com/sagemaker/latest/APIReference/
    API_RetryStrategy.html), and so does the pipeline (tasks.runtime.retry_transient): the
    InternalServerError this said made it start the job three times."""
    clients, root = fake_runtime["clients"], fake_runtime["root"]
    folder = unbuildable_train(tmp_path / "old")
    digest = clients["ecr"].push("t-old", "v1", folder, root)
    request = fake_runtime["training_request"]("unstartable")
    request["AlgorithmSpecification"]["TrainingImage"] = (
        fake_runtime["images"]["train"].split("/", 1)[0] + f"/t-old@{digest}")
    clients["sagemaker"].create_training_job(**request)
    final = wait_training(clients["sagemaker"], "unstartable")
    assert final["TrainingJobStatus"] == "Failed"
    assert final["FailureReason"].startswith("ClientError: the image cannot start: pip could "
                                             "not install requirements.txt"), final
    assert "pandas==99.0" in final["FailureReason"]
