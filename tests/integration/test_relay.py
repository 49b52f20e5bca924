"""The relay (deployments/relay/relay.py) against a real Prefect server.

Events are AWS's documented examples, copied from "Events that Amazon SageMaker AI
sends to Amazon EventBridge"
(https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html,
source awsdocs/amazon-sagemaker-developer-guide doc_source/automating-sagemaker-with-
eventbridge.md), with sagepipe's names and tags put in. AWS rules relied on (rows in
AWS_RULES.md):

* the training event's ``detail`` is DescribeTrainingJob-like and carries ``Tags`` as a
  key -> value map; a failed one carries ``FailureReason``;
* SageMaker may send one state change more than once ("This behavior is expected"):
  the relay's event id dedupes them;
* the endpoint event's status is upper snake case (``IN_SERVICE``) and its ``time``,
  in AWS's example, epoch milliseconds;
* a processing event need not carry tags: the relay asks ListTags (the page has no
  processing example in the stored copy we could read; the event below is the
  training example's envelope with DescribeProcessingJob's fields, API_ProcessingJob).

SageMaker is a botocore Stubber on a real client (requests checked against the model).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import boto3
import httpx
import prefect_http
import pytest
from botocore.stub import Stubber
from prefect.settings import PREFECT_API_URL

from sagepipe.deployments.relay import relay

PROJECT = Path(__file__).resolve().parents[2]
RELAY = PROJECT / "deployments" / "relay"
ACCOUNT, REGION = "123456789012", "us-east-1"

# AWS's training job example, verbatim but for names, status, tags and a recent time
# (Prefect's event queries look back a bounded window; 2018 would be out of it)
TRAINING_EXAMPLE: dict[str, Any] = {
    "version": "0",
    "id": "844e2571-85d4-695f-b930-0153b71dcb42",
    "detail-type": "SageMaker Training Job State Change",
    "source": "aws.sagemaker",
    "account": "123456789012",
    "time": "2018-10-06T12:26:13Z",
    "region": "us-east-1",
    "resources": ["arn:aws:sagemaker:us-east-1:123456789012:training-job/kmeans-1"],
    "detail": {
        "TrainingJobName": "89c96cc8-dded-4739-afcc-6f1dc936701d",
        "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/kmeans-1",
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "HyperParameters": {"Hyper": "Parameters"},
        "AlgorithmSpecification": {"TrainingImage": "TrainingImage",
                                   "TrainingInputMode": "TrainingInputMode"},
        "RoleArn": "arn:aws:iam::123456789012:role/SMRole",
        "InputDataConfig": [{"ChannelName": "Train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3DataType", "S3Uri": "S3Uri",
            "S3DataDistributionType": "S3DataDistributionType"}},
            "ContentType": "ContentType", "CompressionType": "CompressionType",
            "RecordWrapperType": "RecordWrapperType"}],
        "OutputDataConfig": {"KmsKeyId": "KmsKeyId", "S3OutputPath": "S3OutputPath"},
        "ResourceConfig": {"InstanceType": "InstanceType", "InstanceCount": 3,
                           "VolumeSizeInGB": 20, "VolumeKmsKeyId": "VolumeKmsKeyId"},
        "VpcConfig": {},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        "CreationTime": "1583831889050",
        "TrainingStartTime": "1583831889050",
        "TrainingEndTime": "1583831889050",
        "LastModifiedTime": "1583831889050",
        "SecondaryStatusTransitions": [],
        "Tags": {},
    },
}

# AWS's endpoint example (status IN_SERVICE, time in epoch milliseconds)
ENDPOINT_EXAMPLE: dict[str, Any] = {
    "version": "0",
    "id": "d2921b5a-b0ad-cace-a8e3-0f159d018e06",
    "detail-type": "SageMaker Endpoint State Change",
    "source": "aws.sagemaker",
    "account": "123456789012",
    "time": "1583831889050",
    "region": "us-west-2",
    "resources": ["arn:aws:sagemaker:us-west-2:123456789012:endpoint/myendpoint"],
    "detail": {
        "EndpointName": "MyEndpoint",
        "EndpointArn": "arn:aws:sagemaker:us-west-2:123456789012:endpoint/myendpoint",
        "EndpointConfigName": "MyEndpointConfig",
        "ProductionVariants": [{"DesiredWeight": 1.0, "DesiredInstanceCount": 1.0}],
        "EndpointStatus": "IN_SERVICE",
        "CreationTime": 1592411992203.0,
        "LastModifiedTime": 1592411994287.0,
        "Tags": {},
    },
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def training_event(run_id: str | None, *, status: str = "Completed",
                   job: str | None = None, **detail: Any) -> dict[str, Any]:
    event = copy.deepcopy(TRAINING_EXAMPLE)
    job = job or f"sagepipe-demo-train-{uuid.uuid4().hex[:10]}"
    event["time"] = now_iso()
    event["resources"] = [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{job}"]
    event["detail"].update({"TrainingJobName": job, "TrainingJobArn": event["resources"][0],
                            "TrainingJobStatus": status, "SecondaryStatus": status,
                            "LastModifiedTime": str(int(time.time() * 1000)), **detail})
    if run_id:
        event["detail"]["Tags"] = {relay.FLOW_RUN_TAG: run_id,
                                   "sagepipe:project": "sagepipe-demo"}
    return event


def processing_event(status: str = "Completed", **detail: Any) -> dict[str, Any]:
    """The training example's envelope with DescribeProcessingJob's fields, no Tags."""
    job = f"sagepipe-demo-evaluate-{uuid.uuid4().hex[:10]}"
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/{job}"
    return {"version": "0", "id": str(uuid.uuid4()),
            "detail-type": "SageMaker Processing Job State Change", "source": "aws.sagemaker",
            "account": ACCOUNT, "time": now_iso(), "region": REGION, "resources": [arn],
            "detail": {"ProcessingJobName": job, "ProcessingJobArn": arn,
                       "ProcessingJobStatus": status,
                       "LastModifiedTime": str(int(time.time() * 1000)), **detail}}


# ---------------------------------------------------------------- Prefect


@pytest.fixture()
def api(prefect_server: None) -> Iterator[httpx.Client]:
    with prefect_http.client(str(PREFECT_API_URL.value()).rstrip("/")) as client:
        yield client


def new_run(api: httpx.Client) -> str:
    """A flow run of a deployment (Prefect suspends only those), set Running."""
    flow = api.post("/flows/", json={"name": "relay-test"}).json()
    deployment = api.post("/deployments/", json={"name": f"d-{uuid.uuid4().hex[:8]}",
                                                 "flow_id": flow["id"]}).json()
    run = api.post(f"/deployments/{deployment['id']}/create_flow_run", json={}).json()
    answer = api.post(f"/flow_runs/{run['id']}/set_state", json={
        "state": {"type": "RUNNING", "name": "Running"}, "force": True}).json()
    assert answer["status"] == "ACCEPT", answer
    return str(run["id"])


def suspend(api: httpx.Client, run_id: str, key: str | None = None) -> None:
    """What suspend_flow_run proposes (prefect.states.Suspended), through orchestration;
    ``key``: the pause key (the pipeline's is ``<job>@<how>@<time>``)."""
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    details: dict[str, Any] = {"pause_reschedule": True, "pause_timeout": until}
    if key:
        details["pause_key"] = key
    answer = api.post(f"/flow_runs/{run_id}/set_state", json={"state": {
        "type": "PAUSED", "name": "Suspended", "state_details": details}}).json()
    assert answer["status"] == "ACCEPT", answer


def state_of(api: httpx.Client, run_id: str) -> dict[str, Any]:
    return dict(api.get(f"/flow_runs/{run_id}").json()["state"])


def stored_events(api: httpx.Client, *, ids: list[str] | None = None,
                  name: str | None = None, wait_for: int = 1) -> list[dict[str, Any]]:
    """Events the server stored (it persists them in batches: poll, bounded)."""
    body: dict[str, Any] = {"filter": {"occurred": {
        "since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}}, "limit": 50}
    if ids:
        body["filter"]["id"] = {"id": ids}
    if name:
        body["filter"]["resource"] = {"id": [name]}
    found: list[dict[str, Any]] = []
    end = time.monotonic() + 60
    while time.monotonic() < end:
        found = api.post("/events/filter", json=body).json()["events"]
        if len(found) >= wait_for:
            return found
        time.sleep(0.5)
    return found


def api_url(api: httpx.Client) -> str:
    return str(api.base_url).rstrip("/")


def fail_if_called(arn: str) -> list[dict[str, Any]]:
    raise AssertionError(f"ListTags({arn}) called though the event carries the tag")


# ---------------------------------------------------------------- tests


def test_a_terminal_training_event_reaches_the_runs_event_feed(api: httpx.Client) -> None:
    run_id = new_run(api)
    event = training_event(run_id)
    summary = relay.handle(event, api_url=api_url(api), list_tags=fail_if_called)
    job = event["detail"]["TrainingJobName"]
    assert summary == {"relayed": True, "job": job, "status": "Completed",
                       "flow_run_id": run_id, "resumed": False,
                       "reason": "event posted; flow run is Running, not suspended"}
    [stored] = stored_events(api, name=f"aws.sagemaker.training-job.{job}")
    assert stored["event"] == "sagemaker.training-job.completed"
    assert stored["resource"]["prefect.resource.name"] == job
    assert stored["resource"]["sagemaker.status"] == "Completed"
    assert stored["related"] == [{"prefect.resource.id": f"prefect.flow-run.{run_id}",
                                  "prefect.resource.role": "flow-run"}]
    assert stored["payload"]["detail-type"] == "SageMaker Training Job State Change"
    assert stored["id"] == relay.prefect_event(event, run_id)["id"]
    assert state_of(api, run_id)["type"] == "RUNNING"  # a running run is left alone


def test_a_duplicate_event_is_stored_once(api: httpx.Client) -> None:
    run_id = new_run(api)
    event = training_event(run_id, status="InProgress", SecondaryStatus="Training")
    first = relay.handle(event, api_url=api_url(api))
    second = relay.handle(copy.deepcopy(event), api_url=api_url(api))
    assert first == second and first["relayed"] and not first["resumed"]
    # a later event: once it is stored, the server has handled the two before it
    later = training_event(run_id, job=event["detail"]["TrainingJobName"])
    relay.handle(later, api_url=api_url(api))
    ids = [relay.prefect_event(event, run_id)["id"], relay.prefect_event(later, run_id)["id"]]
    assert ids[0] != ids[1]
    stored = stored_events(api, ids=ids, wait_for=2)
    time.sleep(1)
    stored = stored_events(api, ids=ids, wait_for=2)
    assert sorted(e["id"] for e in stored) == sorted(ids), "the duplicate was stored twice"


def test_a_suspended_run_is_resumed_once_by_its_failed_job(api: httpx.Client) -> None:
    run_id = new_run(api)
    suspend(api, run_id)
    event = training_event(run_id, status="Failed",
                           FailureReason="AlgorithmError: " + "x" * 2000)
    summary = relay.handle(event, api_url=api_url(api))
    assert summary["resumed"] and summary["reason"] == "event posted; flow run resumed"
    # a suspended run resumes by being rescheduled: a worker runs it again from the top
    assert (state_of(api, run_id)["type"], state_of(api, run_id)["name"]) == (
        "SCHEDULED", "Resuming")
    # the same event again (EventBridge or SageMaker sends it twice): no error, no resume
    again = relay.handle(copy.deepcopy(event), api_url=api_url(api))
    assert again["relayed"] and not again["resumed"]
    assert "not suspended" in again["reason"]
    [stored] = stored_events(api, ids=[relay.prefect_event(event, run_id)["id"]])
    reason = stored["resource"]["sagemaker.failure-reason"]
    assert reason.startswith("AlgorithmError: ") and len(reason) == relay.MAX_REASON


def test_a_run_suspended_for_another_job_is_left_alone_and_its_own_job_resumes_it(
        api: httpx.Client) -> None:
    run_id = new_run(api)
    event = training_event(run_id)
    job = event["detail"]["TrainingJobName"]
    suspend(api, run_id, key=f"evaluate-{job}@created@1700000000")
    late = relay.handle(event, api_url=api_url(api))  # e.g. a duplicate delivered late
    assert late["relayed"] and not late["resumed"]
    assert late["reason"] == f"event posted; flow run is suspended for evaluate-{job}, left alone"
    assert state_of(api, run_id)["name"] == "Suspended"
    api.post(f"/flow_runs/{run_id}/set_state", json={
        "state": {"type": "RUNNING", "name": "Running"}, "force": True})
    suspend(api, run_id, key=f"{job}@created@1700000001")
    assert relay.handle(copy.deepcopy(event), api_url=api_url(api))["resumed"]
    assert state_of(api, run_id)["name"] == "Resuming"


def test_a_run_waiting_for_a_persons_input_is_not_resumed(api: httpx.Client) -> None:
    run_id = new_run(api)
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    answer = api.post(f"/flow_runs/{run_id}/set_state", json={"state": {
        "type": "PAUSED", "name": "Suspended", "state_details": {
            "pause_reschedule": True, "pause_timeout": until,
            "run_input_keyset": {"description": "d", "response": "r", "schema": "s"}}}}).json()
    assert answer["status"] == "ACCEPT", answer
    summary = relay.handle(training_event(run_id), api_url=api_url(api))
    assert summary["relayed"] and not summary["resumed"]
    assert state_of(api, run_id)["type"] == "PAUSED"


def test_a_processing_event_without_tags_asks_list_tags(api: httpx.Client) -> None:
    run_id = new_run(api)
    event = processing_event("Failed", ExitMessage="bad column 'age'",
                             FailureReason="AlgorithmError: See job logs")
    arn = event["detail"]["ProcessingJobArn"]
    sagemaker = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="testing",
                             aws_secret_access_key="testing")
    with Stubber(sagemaker) as stub:  # two pages: the tag is on the second
        stub.add_response("list_tags", {"Tags": [{"Key": "sagepipe:project",
                                                  "Value": "sagepipe-demo"}],
                                        "NextToken": "page-2"},
                          {"ResourceArn": arn, "MaxResults": 100})
        stub.add_response("list_tags", {"Tags": [{"Key": relay.FLOW_RUN_TAG,
                                                  "Value": run_id}]},
                          {"ResourceArn": arn, "MaxResults": 100, "NextToken": "page-2"})
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(relay._AWS, "sagemaker", sagemaker)
            summary = relay.handle(event, api_url=api_url(api), list_tags=relay.list_tags)
        stub.assert_no_pending_responses()
    assert summary["flow_run_id"] == run_id and summary["relayed"]
    [stored] = stored_events(api, ids=[relay.prefect_event(event, run_id)["id"]])
    assert stored["event"] == "sagemaker.processing-job.failed"
    # FailureReason first (AWS's own), the container's ExitMessage in its absence
    assert stored["resource"]["sagemaker.failure-reason"] == "AlgorithmError: See job logs"


def test_foreign_events_are_not_relayed_and_not_an_error() -> None:
    nowhere = "http://127.0.0.1:9/api"  # any request would raise RelayError
    asked: list[str] = []

    def untagged(arn: str) -> list[dict[str, Any]]:
        asked.append(arn)
        return [{"Key": "team", "Value": "someone-else"}]

    summary = relay.handle(training_event(None), api_url=nowhere, list_tags=untagged)
    assert summary["relayed"] is False and "no sagepipe:flow-run-id tag" in summary["reason"]
    assert len(asked) == 1
    ec2 = {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
           "detail": {"instance-id": "i-1", "state": "running"}}
    assert relay.handle(ec2, api_url=nowhere)["relayed"] is False
    assert relay.job_of(ec2) is None
    assert relay.job_of({"detail-type": "SageMaker Training Job State Change",
                         "source": "aws.sagemaker", "detail": {}}) is None


def test_the_endpoint_example_names_its_event_and_resumes_nothing() -> None:
    event = copy.deepcopy(ENDPOINT_EXAMPLE)
    event["detail"]["Tags"] = {relay.FLOW_RUN_TAG: "0a1b"}
    assert relay.job_of(event) == ("endpoint", "MyEndpoint", "IN_SERVICE")
    body = relay.prefect_event(event, "0a1b")
    assert body["event"] == "sagemaker.endpoint.in_service"
    assert body["resource"]["prefect.resource.id"] == "aws.sagemaker.endpoint.MyEndpoint"
    assert body["occurred"].startswith("2020-03-10T09:18:09.050")  # epoch ms -> ISO 8601
    assert "sagemaker.failure-reason" not in body["resource"]


class Answers(BaseHTTPRequestHandler):
    """A Prefect API that is busy (503) or hangs, counting requests."""

    mode: ClassVar[str] = "busy"
    count: ClassVar[int] = 0

    def do_POST(self) -> None:
        type(self).count += 1
        if self.mode == "hang":
            time.sleep(5)
            return
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture()
def bad_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    server.daemon_threads = True
    Answers.count = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()


def test_a_busy_prefect_is_asked_three_times_then_the_invocation_fails(bad_api: str) -> None:
    Answers.mode = "busy"
    start = time.monotonic()
    with pytest.raises(relay.RelayError, match="answered 503"):
        relay.handle(training_event("0a1b"), api_url=bad_api, timeout=2,
                     deadline=time.monotonic() + 20)
    assert Answers.count == relay.ATTEMPTS
    assert time.monotonic() - start < 10


def test_a_silent_prefect_fails_the_invocation_by_its_deadline(bad_api: str) -> None:
    Answers.mode = "hang"
    start = time.monotonic()
    with pytest.raises(relay.RelayError):
        relay.handle(training_event("0a1b"), api_url=bad_api, timeout=1,
                     deadline=time.monotonic() + 2.5)
    assert time.monotonic() - start < 3.5
    with socket.socket() as closed:  # refused connections: retried, then an error
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(relay.RelayError, match="Could not reach"):
        relay.handle(training_event("0a1b"), api_url=f"http://127.0.0.1:{port}/api",
                     deadline=time.monotonic() + 10)


SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:sagepipe/prefect-AbCdEf"


def test_the_lambda_handler_reads_the_secret_once_and_asks_list_tags(
        api: httpx.Client, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    run_id = new_run(api)
    suspend(api, run_id)
    kwargs: dict[str, Any] = {"region_name": REGION, "aws_access_key_id": "testing",
                              "aws_secret_access_key": "testing"}
    secrets, sagemaker = boto3.client("secretsmanager", **kwargs), boto3.client(
        "sagemaker", **kwargs)
    key = "pnu_DO-NOT-LOG"  # the harness server takes no key; it must not show in logs
    monkeypatch.setenv("PREFECT_API_SECRET_ARN", SECRET_ARN)
    monkeypatch.setattr(relay, "_SECRETS", {})
    monkeypatch.setitem(relay._AWS, "secretsmanager", secrets)
    monkeypatch.setitem(relay._AWS, "sagemaker", sagemaker)
    events = [processing_event(), processing_event("InProgress")]
    with Stubber(secrets) as secret_stub, Stubber(sagemaker) as tags_stub:
        secret_stub.add_response("get_secret_value", {"ARN": SECRET_ARN, "SecretString":
                                 json.dumps({"api_url": api_url(api), "api_key": key})},
                                 {"SecretId": SECRET_ARN})
        for event in events:
            tags_stub.add_response("list_tags", {"Tags": [{"Key": relay.FLOW_RUN_TAG,
                                                           "Value": run_id}]},
                                   {"ResourceArn": event["resources"][0], "MaxResults": 100})
        context = SimpleNamespace(get_remaining_time_in_millis=lambda: 30_000)
        with caplog.at_level("DEBUG"):
            first = relay.handler(events[0], context)
            second = relay.handler(events[1], context)
        secret_stub.assert_no_pending_responses()  # one read for both invocations
        tags_stub.assert_no_pending_responses()
    assert first["resumed"] and first["flow_run_id"] == run_id
    assert second["relayed"] and not second["resumed"]
    assert key not in caplog.text
    # not a SageMaker event: answered without reading the secret or calling Prefect
    assert relay.handler({"source": "aws.ec2"}, context)["relayed"] is False


def test_zip_holds_only_the_relay_and_it_imports_only_stdlib_and_boto3(
        tmp_path: Path) -> None:
    out = tmp_path / "relay-lambda.zip"
    subprocess.run([sys.executable, str(RELAY / "build.py"), "--output", str(out)],
                   check=True, capture_output=True)
    first = out.read_bytes()
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["relay.py"]
        archive.extractall(tmp_path / "unzipped")
    subprocess.run([sys.executable, str(RELAY / "build.py"), "--output", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == first, "the zip is not reproducible"
    probe = ("import sys\nimport boto3, botocore.config, botocore.exceptions\n"
             "before = set(sys.modules)\nsys.path.insert(0, sys.argv[1])\nimport relay\n"
             "assert callable(relay.handler)\n"
             "print(sorted(m for m in set(sys.modules) - before "
             "if m.split('.')[0] not in sys.stdlib_module_names and m != 'relay'))")
    result = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path / "unzipped")],
                            check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout
    spec = importlib.util.find_spec("sagepipe.deployments.relay.relay")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == (RELAY / "relay.py").resolve()


# AWS's "Object Created" example (S3 user guide, "EventBridge event message structure";
# AWS_RULES.md), the bucket and key made this project's
OBJECT_CREATED: dict[str, Any] = {
    "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created", "source": "aws.s3", "account": "111122223333",
    "time": "2021-11-12T00:00:00Z", "region": "ca-central-1",
    "resources": ["arn:aws:s3:::amzn-s3-demo-bucket1"],
    "detail": {"version": "0", "bucket": {"name": "amzn-s3-demo-bucket1"},
               "object": {"key": "datasets/churn/part-1.csv", "size": 5,
                          "etag": "b1946ac92492d2347c6235b4d2611184",
                          "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                          "sequencer": "617f08299329d189"},
               "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
               "source-ip-address": "1.2.3.4", "reason": "PutObject"}}


def test_a_new_dataset_version_becomes_a_prefect_event_once(
        api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    event = copy.deepcopy(OBJECT_CREATED)
    event["detail"]["object"]["version-id"] = uuid.uuid4().hex  # new to this server
    event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # in the feed's window
    # the Lambda handler: the secret once, and no other AWS call (no SageMaker client)
    kwargs: dict[str, Any] = {"region_name": REGION, "aws_access_key_id": "testing",
                              "aws_secret_access_key": "testing"}
    secrets = boto3.client("secretsmanager", **kwargs)
    monkeypatch.setenv("PREFECT_API_SECRET_ARN", SECRET_ARN)
    monkeypatch.setattr(relay, "_SECRETS", {})
    monkeypatch.setattr(relay, "_AWS", {"secretsmanager": secrets})
    context = SimpleNamespace(get_remaining_time_in_millis=lambda: 30_000)
    with Stubber(secrets) as stub:
        stub.add_response("get_secret_value", {"ARN": SECRET_ARN, "SecretString": json.dumps(
            {"api_url": api_url(api), "api_key": ""})}, {"SecretId": SECRET_ARN})
        first = relay.handler(event, context)
        again = relay.handler(copy.deepcopy(event), context)  # at-least-once delivery
        stub.assert_no_pending_responses()
    assert set(relay._AWS) == {"secretsmanager"}  # nothing else was called
    where = "s3://amzn-s3-demo-bucket1/datasets/churn/part-1.csv"
    assert first == again == {"relayed": True, "object": where,
                              "version_id": event["detail"]["object"]["version-id"],
                              "reason": "event posted: sagepipe.dataset.object-created"}
    stored = stored_events(api, ids=[relay.dataset_event(event)["id"]])
    time.sleep(1)
    stored = stored_events(api, ids=[relay.dataset_event(event)["id"]])
    [one] = stored  # the duplicate is stored once
    assert one["event"] == "sagepipe.dataset.object-created"
    assert one["resource"] == {
        "prefect.resource.id": "aws.s3.object.amzn-s3-demo-bucket1/datasets/churn/part-1.csv",
        "prefect.resource.name": "datasets/churn/part-1.csv",
        "s3.bucket": "amzn-s3-demo-bucket1", "s3.key": "datasets/churn/part-1.csv",
        "s3.version-id": event["detail"]["object"]["version-id"], "s3.size": "5",
        "s3.etag": "b1946ac92492d2347c6235b4d2611184"}
    assert one["payload"]["reason"] == "PutObject"


def test_the_pipelines_own_writes_are_never_announced() -> None:
    """The rule passes only datasets/; the relay drops anything else too (a rule edited by
    hand must not let a run's snapshot start the next run). No Prefect call is made: the
    API URL leads nowhere."""
    for key in ("pipeline/data/0123abcd/part-1.csv", "pipeline/runs/x/record.json",
                "datasetsX/a.csv"):
        event = copy.deepcopy(OBJECT_CREATED)
        event["detail"]["object"]["key"] = key
        summary = relay.handle(event, api_url="http://127.0.0.1:9/api")
        assert summary["relayed"] is False
        assert summary["reason"] == f"{key} is not under datasets/: not a dataset's"
    # another prefix, as DATASET_PREFIX sets it
    event = copy.deepcopy(OBJECT_CREATED)
    assert relay.handle(event, api_url="http://127.0.0.1:9/api",
                        dataset_prefix="incoming/")["relayed"] is False
