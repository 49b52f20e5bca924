"""The AWS behaviours moto lacks, on real boto3 clients under botocore's Stubber.

moto 5.2 finishes jobs at once and has no StopTrainingJob or UpdateEndpoint, so
these tests script AWS's replies instead. Stubber checks every request and every
scripted reply against botocore's service model, expects the calls in the
scripted order, and fails on any call that was not scripted: a test here proves
both what the code sends and that it sends nothing else. No network is used.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from sagepipe.tasks.endpoints import (
    ROLLBACK_CONFIG,
    EndpointSettings,
    _names,
    deploy_package,
    deployment_config,
)
from sagepipe.tasks.errors import DeployFailed, DeployRolledBack, JobFailed, JobTimeout
from sagepipe.tasks.jobs import PROCESSING, TRAINING, WaitPolicy, run_job
from sagepipe.tasks.notify import publish_outcome
from sagepipe.tasks.runtime import Clients, call_with_retry

ACCOUNT = "123456789012"
SM_ARN = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sagepipe-sagemaker-execution"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/sagepipe-train@sha256:{'a' * 64}"
JOB = "sagepipe-demo-train-0123456789abcdef"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
LOGGER = "test.aws_stubbed"
SERVICES = {"s3": "s3", "sagemaker": "sagemaker", "sagemaker_runtime": "sagemaker-runtime",
            "sns": "sns", "logs": "logs", "ecr": "ecr", "codebuild": "codebuild"}


@dataclass
class FakeTime:
    """An injected clock and sleep: time passes only when the code sleeps."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Stubbed:
    clients: Clients
    stubbers: dict[str, Stubber]
    calls: list[str]  # every API call in order, as "service.Operation"

    @property
    def sm(self) -> Stubber:
        return self.stubbers["sagemaker"]

    @property
    def logs(self) -> Stubber:
        return self.stubbers["logs"]

    def ops(self, service: str) -> list[str]:
        return [c.split(".", 1)[1] for c in self.calls if c.startswith(f"{service}.")]

    def assert_done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubbed]:
    """Real boto3 clients (fake credentials, no config files), each under an active Stubber."""
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                       ("AWS_CONFIG_FILE", "/nonexistent"),
                       ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(f"{model.service_model.service_name}.{model.name}")

    clients: dict[str, Any] = {}
    stubbers: dict[str, Stubber] = {}
    for attr, service in SERVICES.items():
        client = boto3.client(service, region_name="us-east-1")  # type: ignore[call-overload]
        client.meta.events.register("before-parameter-build.*.*", record)
        clients[attr] = client
        stubbers[attr] = Stubber(client)
        stubbers[attr].activate()
    yield Stubbed(Clients(**clients), stubbers, calls)
    for stubber in stubbers.values():
        stubber.deactivate()


# ---- replies shaped like AWS's (Stubber validates them against the model) ----

def not_found(stubber: Stubber, method: str, message: str = "Requested resource not found.",
              **expected: Any) -> None:
    """SageMaker's 'not found' is a ValidationException that says so."""
    stubber.add_client_error(method, service_error_code="ValidationException",
                             service_message=message, http_status_code=400,
                             expected_params=expected or None)


def training(name: str, status: str, **extra: Any) -> dict[str, Any]:
    secondary = {"InProgress": "Training", "Stopping": "Stopping"}.get(status, status)
    return {"TrainingJobName": name, "TrainingJobArn": f"{SM_ARN}:training-job/{name}",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://bkt/jobs/{name}/output/model.tar.gz"},
            "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600}, "CreationTime": T0, **extra}


def processing(name: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"ProcessingJobName": name, "ProcessingJobArn": f"{SM_ARN}:processing-job/{name}",
            "ProcessingJobStatus": status, "CreationTime": T0,
            "ProcessingResources": {"ClusterConfig": {
                "InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}},
            "AppSpecification": {"ImageUri": IMAGE}, **extra}


def train_request(name: str = JOB) -> dict[str, Any]:
    """Shaped like tasks.steps.plan_train's request plus run_step's tags."""
    return {
        "TrainingJobName": name, "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": [{"Name": "validation:roc_auc",
                                                          "Regex": "roc_auc=([0-9.]+);"}]},
        "HyperParameters": {"C": "1.0", "label_column": "\"target\""},
        "InputDataConfig": [{"ChannelName": "train", "ContentType": "text/csv",
                             "InputMode": "File", "DataSource": {"S3DataSource": {
                                 "S3DataType": "S3Prefix", "S3Uri": "s3://bkt/splits/train/",
                                 "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://bkt/jobs/train-0123456789abcdef"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                           "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Environment": {},
        "Tags": [{"Key": "sagepipe:flow-run-id", "Value": "run-1"}],
    }


def processing_request(name: str) -> dict[str, Any]:
    proc = "/opt/ml/processing"
    return {
        "ProcessingJobName": name, "RoleArn": ROLE,
        "AppSpecification": {"ImageUri": IMAGE, "ContainerArguments": ["--seed", "7"]},
        "ProcessingInputs": [{"InputName": "data", "S3Input": {
            "S3Uri": "s3://bkt/pins/abc/", "LocalPath": f"{proc}/input/data",
            "S3DataType": "S3Prefix", "S3InputMode": "File"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "train", "S3Output": {
            "S3Uri": "s3://bkt/jobs/pre/train", "LocalPath": f"{proc}/output/train",
            "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Environment": {},
    }


def streams(stubber: Stubber, group: str, job: str, *names: str) -> None:
    stubber.add_response(
        "describe_log_streams",
        {"logStreams": [{"logStreamName": f"{job}/{n}", "creationTime": 1} for n in names]},
        {"logGroupName": group, "logStreamNamePrefix": f"{job}/"})


def events(stubber: Stubber, group: str, stream: str, token: str | None, after: str,
           *messages: str) -> None:
    """One get_log_events page: asked with ``token``, answering ``messages`` and ``after``."""
    expected: dict[str, Any] = {"logGroupName": group, "logStreamName": stream,
                                "startFromHead": True}
    if token:
        expected["nextToken"] = token
    stubber.add_response("get_log_events", {
        "events": [{"timestamp": 1, "message": m, "ingestionTime": 2} for m in messages],
        "nextForwardToken": after, "nextBackwardToken": "b/0"}, expected)


def job_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.getMessage().startswith("[")]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


# ---- jobs -------------------------------------------------------------------------------

def test_training_job_is_created_waited_for_with_capped_backoff_and_its_log_streamed(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    group, stream = "/aws/sagemaker/TrainingJobs", f"{JOB}/algo-1-1735689600"
    named = {"TrainingJobName": JOB}
    not_found(aws.sm, "describe_training_job", **named)
    aws.sm.add_response("create_training_job", {"TrainingJobArn": f"{SM_ARN}:training-job/{JOB}"},
                        train_request())
    for _ in range(4):
        aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("describe_training_job", training(JOB, "Completed"), named)
    # poll 1: the container has not started logging yet
    streams(aws.logs, group, JOB)
    # poll 2: two lines; CloudWatch repeats the token at the end of a stream
    streams(aws.logs, group, JOB, "algo-1-1735689600")
    events(aws.logs, group, stream, None, "f/1", "epoch 1", "epoch 2")
    events(aws.logs, group, stream, "f/1", "f/1")
    # poll 3: one more line
    streams(aws.logs, group, JOB, "algo-1-1735689600")
    events(aws.logs, group, stream, "f/1", "f/2", "epoch 3")
    events(aws.logs, group, stream, "f/2", "f/2")
    # poll 4: nothing new
    streams(aws.logs, group, JOB, "algo-1-1735689600")
    events(aws.logs, group, stream, "f/2", "f/2")
    # poll 5 (Completed): the last line is still copied
    streams(aws.logs, group, JOB, "algo-1-1735689600")
    events(aws.logs, group, stream, "f/2", "f/3", "model saved")
    events(aws.logs, group, stream, "f/3", "f/3")

    fake = FakeTime()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        final = run_job(aws.clients, TRAINING, train_request(),
                        policy=WaitPolicy(first_poll=1.0, max_poll=3.0, factor=2.0,
                                          timeout=3600),
                        log=logging.getLogger(LOGGER), clock=fake.clock, sleep=fake.sleep)

    assert final["TrainingJobStatus"] == "Completed"
    assert final["_how"] == "created"
    assert fake.sleeps == [1.0, 2.0, 3.0, 3.0]  # grows by the factor, then capped
    assert job_lines(caplog) == [f"[{JOB}] epoch 1", f"[{JOB}] epoch 2", f"[{JOB}] epoch 3",
                                 f"[{JOB}] model saved"]  # each line once, in order
    assert aws.ops("sagemaker") == ["DescribeTrainingJob", "CreateTrainingJob"] + [
        "DescribeTrainingJob"] * 5
    aws.assert_done()


def test_failed_processing_job_raises_job_failed_with_aws_failure_reason(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    name = "sagepipe-demo-preprocess-0123456789abcdef"
    # Processing reports the container's /opt/ml/output/message as ExitMessage; its
    # FailureReason is generic (developer guide: "Save and Access Metadata Information
    # About Your Processing Job")
    reason = "AlgorithmError: See job logs for more information"
    exit_message = "ValueError: label column 'target' not in the data"
    named = {"ProcessingJobName": name}
    not_found(aws.sm, "describe_processing_job", **named)
    aws.sm.add_response("create_processing_job",
                        {"ProcessingJobArn": f"{SM_ARN}:processing-job/{name}"},
                        processing_request(name))
    aws.sm.add_response("describe_processing_job", processing(name, "InProgress"), named)
    aws.sm.add_response("describe_processing_job",
                        processing(name, "Failed", FailureReason=reason,
                                   ExitMessage=exit_message), named)
    for _ in range(2):  # no log group before the first job of the account: not an error
        aws.logs.add_client_error("describe_log_streams",
                                  service_error_code="ResourceNotFoundException",
                                  service_message="The specified log group does not exist.")

    fake = FakeTime()
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(JobFailed) as err:
        run_job(aws.clients, PROCESSING, processing_request(name),
                policy=WaitPolicy(first_poll=5.0), log=logging.getLogger(LOGGER),
                clock=fake.clock, sleep=fake.sleep)

    assert err.value.status == "Failed"
    assert err.value.reason == f"{exit_message} ({reason})"  # the container's own words
    assert err.value.job == name and err.value.kind == "processing"
    assert exit_message in str(err.value)
    assert job_lines(caplog) == []  # a missing log group is not reported as a log line
    assert "StopProcessingJob" not in aws.ops("sagemaker")  # it ended: nothing to stop
    aws.assert_done()


def test_an_interrupted_wait_stops_the_training_job_and_the_interrupt_propagates(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    named = {"TrainingJobName": JOB}
    not_found(aws.sm, "describe_training_job", **named)
    aws.sm.add_response("create_training_job", {"TrainingJobArn": f"{SM_ARN}:training-job/{JOB}"},
                        train_request())
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    # the wait is interrupted here; the cleanup describes again, then stops
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("stop_training_job", {}, named)
    streams(aws.logs, "/aws/sagemaker/TrainingJobs", JOB)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt  # what Ctrl-C or a cancelled flow run looks like here

    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(KeyboardInterrupt):
        run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                log=logging.getLogger(LOGGER), sleep=interrupted)

    assert aws.ops("sagemaker")[-1] == "StopTrainingJob"
    assert f"Stopped training job {JOB} because its wait was interrupted" in warnings(caplog)
    aws.assert_done()


def test_timeout_stops_the_training_job_then_raises_job_timeout(aws: Stubbed) -> None:
    named = {"TrainingJobName": JOB}
    # a retried task finds its job running and attaches to it
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    for _ in range(4):  # waited 0, 10, 20, 25 s
        aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
        streams(aws.logs, "/aws/sagemaker/TrainingJobs", JOB)
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("stop_training_job", {}, named)

    fake = FakeTime()
    with pytest.raises(JobTimeout) as err:
        run_job(aws.clients, TRAINING, train_request(),
                policy=WaitPolicy(first_poll=10.0, max_poll=10.0, timeout=25.0),
                log=logging.getLogger(LOGGER), clock=fake.clock, sleep=fake.sleep)

    assert fake.sleeps == [10.0, 10.0, 5.0]  # the last sleep ends at the deadline
    assert err.value.waited == 25.0 and err.value.status == "Stopped"
    assert aws.ops("sagemaker")[-1] == "StopTrainingJob"
    assert "CreateTrainingJob" not in aws.ops("sagemaker")
    aws.assert_done()


def test_a_retried_task_attaches_to_its_running_job_instead_of_creating_another(
        aws: Stubbed) -> None:
    named = {"TrainingJobName": JOB}
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("describe_training_job", training(JOB, "Completed"), named)
    streams(aws.logs, "/aws/sagemaker/TrainingJobs", JOB)

    final = run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                    log=logging.getLogger(LOGGER), sleep=FakeTime().sleep)

    assert final["_how"] == "attached"
    assert aws.ops("sagemaker").count("CreateTrainingJob") == 0
    aws.assert_done()


def test_a_retried_task_reuses_its_completed_job(aws: Stubbed) -> None:
    named = {"TrainingJobName": JOB}
    for _ in range(2):
        aws.sm.add_response("describe_training_job", training(JOB, "Completed"), named)

    final = run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                    log=logging.getLogger(LOGGER), sleep=FakeTime().sleep)

    assert final["_how"] == "reused"
    assert final["ModelArtifacts"]["S3ModelArtifacts"].startswith(f"s3://bkt/jobs/{JOB}/")
    assert aws.ops("sagemaker").count("CreateTrainingJob") == 0
    assert aws.ops("logs") == []  # a reused job's log was already copied by its own run
    aws.assert_done()


def test_a_retried_task_starts_a_new_attempt_after_a_failed_job(aws: Stubbed) -> None:
    retry = f"{JOB}-r2"
    aws.sm.add_response("describe_training_job",
                        training(JOB, "Failed", FailureReason="CapacityError: no ml.m5.large"),
                        {"TrainingJobName": JOB})
    not_found(aws.sm, "describe_training_job", TrainingJobName=retry)
    aws.sm.add_response("create_training_job",
                        {"TrainingJobArn": f"{SM_ARN}:training-job/{retry}"},
                        train_request(retry))
    aws.sm.add_response("describe_training_job", training(retry, "Completed"),
                        {"TrainingJobName": retry})
    streams(aws.logs, "/aws/sagemaker/TrainingJobs", retry)

    final = run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                    log=logging.getLogger(LOGGER), sleep=FakeTime().sleep)

    assert final["TrainingJobName"] == retry and final["_how"] == "created"
    assert aws.ops("sagemaker").count("CreateTrainingJob") == 1
    aws.assert_done()


# ---- throttling ---------------------------------------------------------------------------

def throttle(stubber: Stubber, method: str, **expected: Any) -> None:
    stubber.add_client_error(method, service_error_code="ThrottlingException",
                             service_message="Rate exceeded", http_status_code=400,
                             expected_params=expected or None)


def test_a_throttled_wait_slows_down_with_a_warning_and_then_succeeds(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    named = {"TrainingJobName": JOB}
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    throttle(aws.sm, "describe_training_job", **named)
    throttle(aws.sm, "describe_training_job", **named)
    aws.sm.add_response("describe_training_job", training(JOB, "Completed"), named)
    streams(aws.logs, "/aws/sagemaker/TrainingJobs", JOB)

    fake = FakeTime()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        final = run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                        log=logging.getLogger(LOGGER), clock=fake.clock, sleep=fake.sleep)

    assert final["TrainingJobStatus"] == "Completed"
    assert len(fake.sleeps) == 2  # one jittered pause per throttled call
    assert 0 <= fake.sleeps[0] <= 1.0 and 0 <= fake.sleeps[1] <= 2.0
    throttled = warnings(caplog)
    assert len(throttled) == 2
    assert all("ThrottlingException" in w and "DescribeTrainingJob" in w for w in throttled)
    aws.assert_done()


def test_a_non_throttling_error_surfaces_at_once_and_unchanged(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    message = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/ci/x is not authorized to perform: "
               "sagemaker:DescribeTrainingJob")
    aws.sm.add_client_error("describe_training_job", service_error_code="AccessDeniedException",
                            service_message=message, http_status_code=400)

    fake = FakeTime()
    with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(ClientError) as err:
        run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(),
                log=logging.getLogger(LOGGER), clock=fake.clock, sleep=fake.sleep)

    assert err.value.response["Error"] == {"Code": "AccessDeniedException", "Message": message}
    assert err.value.operation_name == "DescribeTrainingJob"
    assert fake.sleeps == [] and warnings(caplog) == []
    assert aws.calls == ["sagemaker.DescribeTrainingJob"]
    aws.assert_done()


def test_server_errors_are_retried_and_the_last_one_surfaces_after_capped_backoff(
        aws: Stubbed, monkeypatch: pytest.MonkeyPatch) -> None:
    named = {"EndpointName": "sagepipe-prod"}
    # a 5xx is retried by its HTTP status, whatever the service calls its code
    aws.sm.add_client_error("describe_endpoint", service_error_code="InternalServerException",
                            service_message="We encountered an internal error.",
                            http_status_code=500, expected_params=named)
    for _ in range(4):
        throttle(aws.sm, "describe_endpoint", **named)
    # the jitter's upper bound, so the exponential growth and the cap are visible
    monkeypatch.setattr("sagepipe.tasks.runtime.random.uniform", lambda low, high: high)
    fake = FakeTime()

    with pytest.raises(ClientError) as err:
        call_with_retry(aws.clients.sagemaker.describe_endpoint, log=logging.getLogger(LOGGER),
                        attempts=5, base=1.0, cap=3.0, sleep=fake.sleep, **named)

    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    assert fake.sleeps == [1.0, 2.0, 3.0, 3.0]
    assert aws.ops("sagemaker") == ["DescribeEndpoint"] * 5
    aws.assert_done()


def test_log_reads_ride_out_throttling_and_other_log_errors_never_fail_the_job(
        aws: Stubbed, caplog: pytest.LogCaptureFixture) -> None:
    group, stream = "/aws/sagemaker/TrainingJobs", f"{JOB}/algo-1-1"
    named = {"TrainingJobName": JOB}
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("describe_training_job", training(JOB, "InProgress"), named)
    aws.sm.add_response("describe_training_job", training(JOB, "Completed"), named)
    throttle(aws.logs, "describe_log_streams", logGroupName=group,
             logStreamNamePrefix=f"{JOB}/")
    streams(aws.logs, group, JOB, "algo-1-1")
    aws.logs.add_client_error("get_log_events", service_error_code="ServiceUnavailableException",
                              service_message="try again", http_status_code=503)
    events(aws.logs, group, stream, None, "f/1", "epoch 1")
    events(aws.logs, group, stream, "f/1", "f/1")
    streams(aws.logs, group, JOB, "algo-1-1")
    aws.logs.add_client_error("get_log_events", service_error_code="AccessDeniedException",
                              service_message="no logs:GetLogEvents", http_status_code=400)

    fake = FakeTime()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        final = run_job(aws.clients, TRAINING, train_request(), policy=WaitPolicy(first_poll=2),
                        log=logging.getLogger(LOGGER), clock=fake.clock, sleep=fake.sleep)

    assert final["TrainingJobStatus"] == "Completed"
    assert job_lines(caplog) == [f"[{JOB}] epoch 1",
                                 f"[{JOB}] (could not read job logs: AccessDeniedException)"]
    assert len(warnings(caplog)) == 2  # the throttled and the 503 log reads
    assert len(fake.sleeps) == 3  # two retry pauses and one poll interval
    aws.assert_done()


# ---- endpoints ----------------------------------------------------------------------------

ENDPOINT = "sagepipe-prod"
PACKAGE = f"{SM_ARN}:model-package/sagepipe-demo/7"
OLD_CONFIG = "sagepipe-prod-v6-0a1b2c3d4e-cfg"
MODEL, CONFIG = _names(ENDPOINT, PACKAGE)
TAGS = [{"Key": "sagepipe:flow-run-id", "Value": "run-1"}]
ROLLBACK_REASON = ("Endpoint update was rolled back because alarm sagepipe-prod-5xx went into "
                   "ALARM state during the canary.")


def endpoint(status: str, config: str, **extra: Any) -> dict[str, Any]:
    return {"EndpointName": ENDPOINT, "EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}",
            "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": T0,
            "LastModifiedTime": T0, **extra}


def deploy(aws: Stubbed, config: dict[str, Any], fake: FakeTime) -> Any:
    return deploy_package(aws.clients, endpoint=ENDPOINT, package_arn=PACKAGE, role_arn=ROLE,
                          instance_type="ml.m5.large", instance_count=1, deploy_config=config,
                          smoke_payload="17.99,10.38,122.8", timeout=3600,
                          log=logging.getLogger(LOGGER), tags=TAGS, sleep=fake.sleep)


def package_status(aws: Stubbed, status: str = "Approved") -> None:
    """The first call of a deploy: only an Approved package goes further."""
    aws.sm.add_response("describe_model_package", {
        "ModelPackageName": "sagepipe-demo", "ModelPackageArn": PACKAGE, "CreationTime": T0,
        "ModelPackageStatus": "Completed", "ModelApprovalStatus": status,
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []}},
        {"ModelPackageName": PACKAGE})


def new_model_and_config(aws: Stubbed) -> None:
    package_status(aws)
    not_found(aws.sm, "describe_model", f'Could not find model "{MODEL}".', ModelName=MODEL)
    aws.sm.add_response("create_model", {"ModelArn": f"{SM_ARN}:model/{MODEL}"}, {
        "ModelName": MODEL, "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"ModelPackageName": PACKAGE}, "Tags": TAGS})
    not_found(aws.sm, "describe_endpoint_config",
              f'Could not find endpoint configuration "{CONFIG}".', EndpointConfigName=CONFIG)
    aws.sm.add_response("create_endpoint_config",
                        {"EndpointConfigArn": f"{SM_ARN}:endpoint-config/{CONFIG}"}, {
                            "EndpointConfigName": CONFIG, "Tags": TAGS,
                            "ProductionVariants": [{
                                "VariantName": "AllTraffic", "ModelName": MODEL,
                                "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}]})
    # CreateEndpoint reads the config eventually consistently: it is described first
    aws.sm.add_response("describe_endpoint_config", endpoint_config_shape(),
                        {"EndpointConfigName": CONFIG})


def endpoint_config_shape() -> dict[str, Any]:
    return {"EndpointConfigName": CONFIG, "EndpointConfigArn": f"{SM_ARN}:endpoint-config/{CONFIG}",
            "CreationTime": T0, "ProductionVariants": [{
                "VariantName": "AllTraffic", "ModelName": MODEL, "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large"}]}


def update(aws: Stubbed, to: str, config: dict[str, Any]) -> None:
    aws.sm.add_response("update_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": to,
                         "DeploymentConfig": config})


def describe(aws: Stubbed, status: str, config: str, **extra: Any) -> None:
    aws.sm.add_response("describe_endpoint", endpoint(status, config, **extra),
                        {"EndpointName": ENDPOINT})


def test_a_rolled_back_update_raises_deploy_rolled_back_and_leaves_the_endpoint_alone(
        aws: Stubbed) -> None:
    config = deployment_config(EndpointSettings(
        strategy="canary", instance_count=2, wait_seconds=300, alarms=["sagepipe-prod-5xx"]))
    new_model_and_config(aws)
    describe(aws, "InService", OLD_CONFIG)
    update(aws, CONFIG, config)
    describe(aws, "Updating", OLD_CONFIG)
    # SageMaker rolled the update back: InService again, on the old config, with a reason
    describe(aws, "InService", OLD_CONFIG, FailureReason=ROLLBACK_REASON)

    fake = FakeTime()
    with pytest.raises(DeployRolledBack) as err:
        deploy(aws, config, fake)

    assert ROLLBACK_REASON in str(err.value)
    assert OLD_CONFIG in str(err.value) and CONFIG in str(err.value)
    assert err.value.endpoint == ENDPOINT
    # nothing after the verdict: no delete, no second update, no smoke test
    assert aws.calls == ["sagemaker.DescribeModelPackage",
                         "sagemaker.DescribeModel", "sagemaker.CreateModel",
                         "sagemaker.DescribeEndpointConfig", "sagemaker.CreateEndpointConfig",
                         "sagemaker.DescribeEndpointConfig",
                         "sagemaker.DescribeEndpoint", "sagemaker.UpdateEndpoint",
                         "sagemaker.DescribeEndpoint", "sagemaker.DescribeEndpoint"]
    aws.assert_done()


def test_the_rolled_back_notification_is_a_valid_sns_publish(aws: Stubbed) -> None:
    """What the flow publishes after DeployRolledBack (flows.pipeline._finish -> notify)."""
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:sagepipe-events"
    summary = f"rolled_back: Update of {ENDPOINT} to {CONFIG} was rolled back"
    aws.stubbers["sns"].add_response("publish", {"MessageId": "m-1"}, {
        "TopicArn": topic, "Subject": "[sagepipe] sagepipe-demo: rolled back", "Message": ANY,
        "MessageAttributes": {"outcome": {"DataType": "String", "StringValue": "rolled_back"}}})
    sent: dict[str, Any] = {}
    aws.clients.sns.meta.events.register(
        "before-parameter-build.sns.Publish", lambda params, **_: sent.update(params))

    assert publish_outcome(aws.clients, topic, "rolled_back", project="sagepipe-demo",
                           summary=summary, details={"error": {"message": ROLLBACK_REASON}}
                           ) == "m-1"
    message = json.loads(sent["Message"])
    assert message["outcome"] == "rolled_back" and message["summary"] == summary
    assert message["error"]["message"] == ROLLBACK_REASON
    aws.assert_done()


def invoke_ok(aws: Stubbed, answer: bytes) -> None:
    aws.stubbers["sagemaker_runtime"].add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)),
         "ContentType": "application/json"},
        {"EndpointName": ENDPOINT, "Body": "17.99,10.38,122.8", "ContentType": "text/csv",
         "Accept": "application/json"})


def test_a_good_update_serves_the_new_config_and_passes_the_smoke_test(aws: Stubbed) -> None:
    config = deployment_config(EndpointSettings(
        strategy="linear", instance_count=4, wait_seconds=60, alarms=["sagepipe-prod-5xx"]))
    # a retried task: model and config exist already, so nothing is created twice
    package_status(aws)
    aws.sm.add_response("describe_model", {
        "ModelName": MODEL, "ModelArn": f"{SM_ARN}:model/{MODEL}", "CreationTime": T0,
        "PrimaryContainer": {"ModelPackageName": PACKAGE}}, {"ModelName": MODEL})
    aws.sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": CONFIG, "EndpointConfigArn": f"{SM_ARN}:endpoint-config/{CONFIG}",
        "CreationTime": T0, "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": MODEL, "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}]}, {"EndpointConfigName": CONFIG})
    describe(aws, "InService", OLD_CONFIG)
    update(aws, CONFIG, config)
    describe(aws, "Updating", OLD_CONFIG)
    throttle(aws.sm, "describe_endpoint", EndpointName=ENDPOINT)  # the wait rides it out
    describe(aws, "Updating", OLD_CONFIG)
    describe(aws, "InService", CONFIG)
    answer = b'{"predictions": [{"label": 0, "probability": 0.97}]}'
    invoke_ok(aws, answer)

    fake = FakeTime()
    result = deploy(aws, config, fake)

    assert result.action == "updated"
    assert (result.endpoint_config, result.previous_config) == (CONFIG, OLD_CONFIG)
    assert result.smoke_test == answer.decode()
    poll_1, retry, poll_2 = fake.sleeps
    assert (poll_1, poll_2) == (1.0, 1.5)  # the endpoint wait backs off too
    assert 0 <= retry <= 1.0  # the throttled describe was asked again after a jittered pause
    assert "sagemaker.CreateModel" not in aws.calls
    assert "sagemaker.CreateEndpointConfig" not in aws.calls
    assert aws.calls[-1] == "sagemaker-runtime.InvokeEndpoint"
    aws.assert_done()


def smoke_test_fails(aws: Stubbed, message: str = "boom") -> None:
    """The endpoint's container answers 500: SageMaker's ModelError with its message."""
    aws.stubbers["sagemaker_runtime"].add_client_error(
        "invoke_endpoint", service_error_code="ModelError", http_status_code=424,
        service_message="Received server error (500) from primary with message ...",
        modeled_fields={"OriginalStatusCode": 500, "OriginalMessage": message,
                        "LogStreamArn": f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:x"})


def test_a_failed_smoke_test_puts_the_endpoint_back_on_its_previous_config(
        aws: Stubbed) -> None:
    config = deployment_config(EndpointSettings(wait_seconds=0, alarms=["sagepipe-prod-5xx"]))
    new_model_and_config(aws)
    describe(aws, "InService", OLD_CONFIG)
    update(aws, CONFIG, config)
    describe(aws, "Updating", OLD_CONFIG)
    describe(aws, "InService", CONFIG)
    smoke_test_fails(aws, "ValueError: X has 3 features, expecting 30")
    update(aws, OLD_CONFIG, ROLLBACK_CONFIG)  # back at once, without the alarms
    describe(aws, "Updating", CONFIG)
    describe(aws, "InService", OLD_CONFIG)

    with pytest.raises(DeployRolledBack) as err:
        deploy(aws, config, FakeTime())

    assert f"rolled back to {OLD_CONFIG}" in str(err.value)
    assert "expecting 30" in str(err.value)  # the model's own complaint reaches the message
    assert aws.ops("sagemaker").count("UpdateEndpoint") == 2
    assert not any("Delete" in c for c in aws.calls)
    aws.assert_done()




def test_a_rollback_that_does_not_take_is_reported_not_claimed(aws: Stubbed) -> None:
    """Before the fix the rollback re-used the canary policy with the alarms and reported
    success without reading where the endpoint ended."""
    config = deployment_config(EndpointSettings(
        strategy="canary", instance_count=2, wait_seconds=0, alarms=["sagepipe-prod-5xx"]))
    new_model_and_config(aws)
    describe(aws, "InService", OLD_CONFIG)
    update(aws, CONFIG, config)
    describe(aws, "InService", CONFIG)
    smoke_test_fails(aws)
    update(aws, OLD_CONFIG, ROLLBACK_CONFIG)
    describe(aws, "Updating", CONFIG)
    # the update back failed: SageMaker keeps the endpoint on the new config
    describe(aws, "InService", CONFIG, FailureReason="Instance capacity unavailable.")

    with pytest.raises(DeployFailed) as err:
        deploy(aws, config, FakeTime())

    assert not isinstance(err.value, DeployRolledBack)
    assert f"putting it back on {OLD_CONFIG} did not take" in str(err.value)
    assert "Instance capacity unavailable." in str(err.value)
    aws.assert_done()


def test_a_new_config_is_described_before_the_endpoint_is_created(aws: Stubbed) -> None:
    """CreateEndpoint (API reference): it reads the config with an eventually consistent
    read; call DescribeEndpointConfig first. A config not yet visible is waited for."""
    package_status(aws)
    not_found(aws.sm, "describe_model", f'Could not find model "{MODEL}".', ModelName=MODEL)
    aws.sm.add_response("create_model", {"ModelArn": f"{SM_ARN}:model/{MODEL}"}, None)
    not_found(aws.sm, "describe_endpoint_config", "Could not find endpoint configuration.",
              EndpointConfigName=CONFIG)
    aws.sm.add_response("create_endpoint_config",
                        {"EndpointConfigArn": f"{SM_ARN}:endpoint-config/{CONFIG}"}, None)
    not_found(aws.sm, "describe_endpoint_config", "Could not find endpoint configuration.",
              EndpointConfigName=CONFIG)  # not visible yet
    aws.sm.add_response("describe_endpoint_config", endpoint_config_shape(),
                        {"EndpointConfigName": CONFIG})
    not_found(aws.sm, "describe_endpoint", "Could not find endpoint.", EndpointName=ENDPOINT)
    aws.sm.add_response("create_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG, "Tags": TAGS})
    describe(aws, "InService", CONFIG)
    invoke_ok(aws, b'{"predictions": []}')

    fake = FakeTime()
    result = deploy(aws, {}, fake)

    assert result.action == "created"
    calls = aws.ops("sagemaker")
    assert calls.index("CreateEndpoint") > max(
        i for i, op in enumerate(calls) if op == "DescribeEndpointConfig")
    assert fake.sleeps[0] == 0.5  # one short pause while the config was not yet visible
    aws.assert_done()


def test_a_package_that_is_not_approved_is_never_deployed(aws: Stubbed) -> None:
    package_status(aws, "Rejected")
    with pytest.raises(DeployFailed, match="is Rejected in the model registry"):
        deploy(aws, {}, FakeTime())
    assert aws.calls == ["sagemaker.DescribeModelPackage"]  # nothing created, nothing updated
    aws.assert_done()


@pytest.mark.parametrize("status", ["SystemUpdating", "RollingBack", "UpdateRollbackFailed",
                                    "OutOfService", "Creating", "Deleting"])
def test_the_champion_is_read_whatever_the_endpoints_state(aws: Stubbed, status: str) -> None:
    """Before the fix a transitional endpoint had no champion, so the threshold alone
    decided and a worse model could replace the live one."""
    from sagepipe.tasks.registry import find_champion

    describe(aws, status, OLD_CONFIG)
    aws.sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": OLD_CONFIG, "EndpointConfigArn": f"{SM_ARN}:endpoint-config/x",
        "CreationTime": T0, "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": "live-model", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}]}, {"EndpointConfigName": OLD_CONFIG})
    aws.sm.add_response("describe_model", {
        "ModelName": "live-model", "ModelArn": f"{SM_ARN}:model/live-model", "CreationTime": T0,
        "PrimaryContainer": {"ModelPackageName": PACKAGE}}, {"ModelName": "live-model"})
    aws.sm.add_response("describe_model_package", {
        "ModelPackageName": "sagepipe-demo", "ModelPackageArn": PACKAGE, "CreationTime": T0,
        "ModelPackageStatus": "Completed", "ModelPackageVersion": 7,
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "InferenceSpecification": {"Containers": [{
            "Image": "1.dkr.ecr.us-east-1.amazonaws.com/s@sha256:" + "0" * 64,
            "ModelDataUrl": "s3://b/live/model.tar.gz"}],
            "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]}},
        {"ModelPackageName": PACKAGE})

    champion = find_champion(aws.clients, ENDPOINT)

    assert champion is not None and champion.model_data_url == "s3://b/live/model.tar.gz"
    aws.assert_done()


def test_an_endpoint_being_deleted_is_waited_out_then_created_again(aws: Stubbed) -> None:
    """Deleting is a state too: UpdateEndpoint on it fails; wait until it is gone."""
    new_model_and_config(aws)
    describe(aws, "Deleting", OLD_CONFIG)
    describe(aws, "Deleting", OLD_CONFIG)
    not_found(aws.sm, "describe_endpoint", "Could not find endpoint.", EndpointName=ENDPOINT)
    aws.sm.add_response("create_endpoint", {"EndpointArn": f"{SM_ARN}:endpoint/{ENDPOINT}"},
                        {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG, "Tags": TAGS})
    describe(aws, "InService", CONFIG)
    invoke_ok(aws, b'{"predictions": []}')

    result = deploy(aws, {}, FakeTime())

    assert result.action == "created" and "UpdateEndpoint" not in aws.ops("sagemaker")
    aws.assert_done()
