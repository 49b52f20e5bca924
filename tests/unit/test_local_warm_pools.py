"""Training warm pools on the local runtime: refused where SageMaker refuses them, and
WarmPoolStatus as DescribeTrainingJob reports it (Available, Reused/InUse, Terminated)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sagepipe.tasks.local.warmpools import match_key


@pytest.fixture()
def env(fake_runtime: dict[str, Any]) -> dict[str, Any]:
    return fake_runtime


def warm(env: dict[str, Any], name: str, keep: int = 600, **hps: str) -> dict[str, Any]:
    request = dict(env["training_request"](name, **hps))
    request["ResourceConfig"] = {**request["ResourceConfig"], "KeepAlivePeriodInSeconds": keep}
    return request


def wait(sm: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sm.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return dict(described)
        time.sleep(0.05)
    raise AssertionError(f"{name} did not finish")


def pool(sm: Any, name: str) -> dict[str, Any] | None:
    return sm.describe_training_job(TrainingJobName=name).get("WarmPoolStatus")


def test_a_finished_job_keeps_its_pool_for_the_keep_alive_then_terminates(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**warm(env, "keep-1", keep=2))
    final = wait(sm, "keep-1")
    assert final["TrainingJobStatus"] == "Completed"
    assert final["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 2
    assert final["WarmPoolStatus"]["Status"] == "Available"
    time.sleep(2.2)
    assert pool(sm, "keep-1") == {"Status": "Terminated",
                                  "ResourceRetainedBillableTimeInSeconds": 2}
    sm.create_training_job(**env["training_request"]("cold-1"))
    assert "WarmPoolStatus" not in wait(sm, "cold-1")  # no keep-alive, no pool


def test_a_matching_job_reuses_the_pool_and_a_different_one_does_not(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**warm(env, "first-1"))
    wait(sm, "first-1")
    # other hyperparameters and data do not matter; the instance settings do
    bigger = warm(env, "other-1", C="2")
    bigger["ResourceConfig"]["VolumeSizeInGB"] = 2
    sm.create_training_job(**bigger)
    assert pool(sm, "first-1")["Status"] == "Available"
    wait(sm, "other-1")
    # the same instance settings without a keep-alive of its own takes no pool
    sm.create_training_job(**env["training_request"]("plain-1", C="4"))
    assert pool(sm, "first-1")["Status"] == "Available"
    wait(sm, "plain-1")
    sm.create_training_job(**warm(env, "second-1", C="3", sleep="1"))
    running = sm.describe_training_job(TrainingJobName="second-1")
    assert running["TrainingJobStatus"] == "InProgress"
    assert running["WarmPoolStatus"] == {"Status": "InUse"}
    reused = pool(sm, "first-1")
    assert (reused["Status"], reused["ReusedByJob"]) == ("Reused", "second-1")
    assert reused["ResourceRetainedBillableTimeInSeconds"] >= 0
    assert wait(sm, "second-1")["WarmPoolStatus"]["Status"] == "Available"  # passed on


def test_what_must_match_is_what_the_developer_guide_lists() -> None:
    base = {"RoleArn": "arn:aws:iam::000000000000:role/sm", "ResourceConfig": {
        "InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30,
        "KeepAlivePeriodInSeconds": 600}, "EnableNetworkIsolation": True,
        "HyperParameters": {"C": "1"}}
    same = {**base, "HyperParameters": {"C": "2"}, "TrainingJobName": "x",
            "ResourceConfig": {**base["ResourceConfig"], "KeepAlivePeriodInSeconds": 60}}
    assert match_key(same) == match_key(base)
    for changed in ({"RoleArn": "arn:aws:iam::000000000000:role/other"},
                    {"EnableNetworkIsolation": False},
                    {"EnableInterContainerTrafficEncryption": True},
                    {"VpcConfig": {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}},
                    {"ResourceConfig": {**base["ResourceConfig"], "InstanceCount": 2}},
                    {"ResourceConfig": {**base["ResourceConfig"], "VolumeKmsKeyId": "k"}}):
        assert match_key({**base, **changed}) != match_key(base), changed


def test_a_pool_survives_the_scripts_failure_but_not_the_infrastructures(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**warm(env, "crash-1", crash="1"))
    assert wait(sm, "crash-1")["TrainingJobStatus"] == "Failed"
    # "If the training job fails due to an algorithm or client error, a warm pool is
    # still retained"
    assert pool(sm, "crash-1")["Status"] == "Available"
    sm.create_training_job(**warm(env, "orphan-1", sleep="60"))
    deadline = time.monotonic() + 20
    while sm.describe_training_job(TrainingJobName="orphan-1")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(sm.state.get("training-job", "orphan-1")["pid"], signal.SIGKILL)
    assert "exited without reporting" in wait(sm, "orphan-1")["FailureReason"]
    assert pool(sm, "orphan-1") == {"Status": "Terminated",
                                    "ResourceRetainedBillableTimeInSeconds": 0}


def test_requests_sagemaker_refuses_are_refused_before_anything_runs(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    spot = warm(env, "spot-1")
    spot.update(EnableManagedSpotTraining=True,
                StoppingCondition={"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 600})
    with pytest.raises(ClientError, match="cannot be used with managed spot training"):
        sm.create_training_job(**spot)
    with pytest.raises(ClientError, match="less than or equal to 21600"):
        sm.create_training_job(**warm(env, "long-1", keep=21601))
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
