"""The AWS runtime's clients and a retried job task, against moto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from prefect import flow
from prefect_aws import AwsCredentials

import sagepipe.tasks.runtime
from sagepipe.tasks.images import ImageRef
from sagepipe.tasks.runtime import RuntimeSettings, get_clients
from sagepipe.tasks.steps import JobSettings, plan_train, run_step

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
REGION = "eu-west-1"


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    sagepipe.tasks.runtime._CACHE.clear()
    with mock_aws():
        yield
    sagepipe.tasks.runtime._CACHE.clear()


def test_clients_come_from_an_aws_credentials_block_with_retries_and_timeouts(
        aws: None) -> None:
    AwsCredentials(aws_access_key_id="AKIDBLOCK", aws_secret_access_key="from-the-block",
                   region_name=REGION).save("sagepipe-test", overwrite=True)
    settings = RuntimeSettings(kind="aws", region=REGION, aws_credentials_block="sagepipe-test",
                               connect_timeout=3, read_timeout=40, max_attempts=7)
    clients = get_clients(settings)
    assert get_clients(settings) is clients  # made once per process
    config = clients.sagemaker.meta.config
    assert config.region_name == REGION
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert (config.connect_timeout, config.read_timeout) == (3, 40)
    credentials = clients.s3._request_signer._credentials
    assert credentials.access_key == "AKIDBLOCK"
    clients.s3.create_bucket(Bucket="works", CreateBucketConfiguration={
        "LocationConstraint": REGION})
    assert [b["Name"] for b in clients.s3.list_buckets()["Buckets"]] == ["works"]


def test_a_retried_train_task_creates_no_second_job(aws: None) -> None:
    settings = RuntimeSettings(kind="aws", region=REGION)
    clients = get_clients(settings)
    creates: list[str] = []
    failures = {"left": 1}

    clients.s3.create_bucket(Bucket="bkt-retry", CreateBucketConfiguration={
        "LocationConstraint": REGION})

    def count_create(params: dict[str, Any], **_: Any) -> None:
        # moto runs no container: write the model where SageMaker would
        creates.append(params["TrainingJobName"])
        prefix = params["OutputDataConfig"]["S3OutputPath"].removeprefix("s3://bkt-retry/")
        clients.s3.put_object(Bucket="bkt-retry", Body=b"model",
                              Key=f"{prefix}/{params['TrainingJobName']}/output/model.tar.gz")

    def flaky_describe(**_: Any) -> None:
        # the first wait after the create loses its connection: Prefect retries the task
        if creates and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("connection reset by peer")

    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", count_create)
    clients.sagemaker.meta.events.register(
        "before-call.sagemaker.DescribeTrainingJob", flaky_describe)
    image = ImageRef(name="train", repository="sagepipe-train", tag="c-1", built=False,
                     digest="sha256:" + "b" * 64,
                     uri=f"123456789012.dkr.ecr.{REGION}.amazonaws.com/sagepipe-train@sha256:"
                         + "b" * 64)
    plan = plan_train(project="retry-demo", runtime=settings, artifacts_uri="s3://bkt-retry/p",
                      splits={"train": "s3://bkt-retry/p/train", "validation": "s3://bkt-retry/p/validation"},
                      image=image, label_column="target", hyperparameters={"C": 1.0},
                      settings=JobSettings(role_arn="arn:aws:iam::123456789012:role/x",
                                           poll_first_seconds=0.01))

    @flow
    def one_step() -> Any:
        return run_step.with_options(retry_delay_seconds=0, cache_policy=None,
                                     cache_key_fn=None)(settings, plan, JobSettings(
                                         role_arn="arn:aws:iam::123456789012:role/x",
                                         poll_first_seconds=0.01), {"t": "1"},
                                     return_state=True)

    state = one_step()
    outcome = state.result()
    assert failures["left"] == 0  # the failure did happen
    assert creates == [plan.name]
    assert outcome.job_name == plan.name
    assert outcome.how == "reused"
    assert outcome.outputs["model"].endswith(f"{plan.name}/output/model.tar.gz")
