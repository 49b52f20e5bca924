"""Shared by the trigger Lambda's tests: the handler as Lambda loads it, events, stubbed AWS.

``FakeAWS`` holds real boto3 clients with botocore Stubbers: every request is
validated against the service model and must be the one expected, in order; a
call nobody expected fails (the handler then returns ``report-failed``).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

PROJECT = Path(__file__).resolve().parents[1]
TRIGGER = PROJECT / "deployments" / "trigger"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:111122223333:secret:sagepipe/prefect-AbCdEf"
JOB_ID = "11111111-2222-4333-8444-555555555555"
REVISION = "0123456789abcdef0123"
ARTIFACT_SECRETS = ("artifact-secret-DO-NOT-LOG", "session-DO-NOT-LOG")


def load_handler() -> ModuleType:
    """The handler as the Lambda runtime loads it: a lone module, nothing of the project."""
    spec = importlib.util.spec_from_file_location("sagepipe_trigger_handler",
                                                  TRIGGER / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


handler = load_handler()


def job_event(user_parameters: Any = None, *, job_id: str = JOB_ID,
              token: str | None = None) -> dict[str, Any]:
    """A CodePipeline job event shaped like the real one, artifact credentials included."""
    configuration: dict[str, Any] = {"FunctionName": "sagepipe-trigger"}
    if user_parameters is not None:
        configuration["UserParameters"] = (user_parameters if isinstance(user_parameters, str)
                                           else json.dumps(user_parameters))
    data: dict[str, Any] = {
        "actionConfiguration": {"configuration": configuration},
        "inputArtifacts": [{"name": "SourceOutput", "revision": REVISION,
                            "location": {"type": "S3", "s3Location": {
                                "bucketName": "artifacts", "objectKey": "src.zip"}}}],
        "outputArtifacts": [],
        "artifactCredentials": {"accessKeyId": "ASIAEXAMPLE",
                                "secretAccessKey": ARTIFACT_SECRETS[0],
                                "sessionToken": ARTIFACT_SECRETS[1]},
    }
    if token:
        data["continuationToken"] = token
    return {"CodePipeline.job": {"id": job_id, "accountId": "111122223333", "data": data}}


class FakeAWS:
    """Stubbed CodePipeline and Secrets Manager clients, recording what was sent."""

    def __init__(self) -> None:
        kwargs: dict[str, Any] = {"region_name": "us-east-1", "aws_access_key_id": "testing",
                                  "aws_secret_access_key": "testing"}
        self.codepipeline = boto3.client("codepipeline", **kwargs)
        self.secrets = boto3.client("secretsmanager", **kwargs)
        self.pipeline_stub = Stubber(self.codepipeline)
        self.secrets_stub = Stubber(self.secrets)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.codepipeline.meta.events.register("provide-client-params.codepipeline.*",
                                               self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent.append((model.name, json.loads(json.dumps(params))))

    def expect_secret(self, value: dict[str, Any] | str) -> None:
        self.secrets_stub.add_response(
            "get_secret_value",
            {"ARN": SECRET_ARN, "Name": "sagepipe/prefect",
             "SecretString": value if isinstance(value, str) else json.dumps(value)},
            {"SecretId": SECRET_ARN})

    def expect_failure(self, job_id: str = JOB_ID) -> None:
        self.pipeline_stub.add_response("put_job_failure_result", {},
                                        {"jobId": job_id, "failureDetails": ANY})

    def expect_continuation(self, job_id: str = JOB_ID, token: Any = ANY) -> None:
        self.pipeline_stub.add_response("put_job_success_result", {},
                                        {"jobId": job_id, "continuationToken": token,
                                         "executionDetails": ANY})

    def expect_success(self, job_id: str = JOB_ID) -> None:
        self.pipeline_stub.add_response("put_job_success_result", {},
                                        {"jobId": job_id, "executionDetails": ANY,
                                         "outputVariables": ANY})

    def last(self) -> dict[str, Any]:
        return self.sent[-1][1]

    def done(self) -> None:
        self.pipeline_stub.assert_no_pending_responses()
        self.secrets_stub.assert_no_pending_responses()


@contextmanager
def fake_aws(monkeypatch: pytest.MonkeyPatch, *, timeout: str = "1") -> Iterator[FakeAWS]:
    """A fresh Lambda container: stubbed clients, an empty secret cache, its env vars."""
    fake = FakeAWS()
    monkeypatch.setenv("PREFECT_API_SECRET_ARN", SECRET_ARN)
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", timeout)
    # the handler's per-container caches are the seam
    monkeypatch.setattr(handler, "_AWS", {"codepipeline": fake.codepipeline,
                                          "secretsmanager": fake.secrets})
    monkeypatch.setattr(handler, "_SECRETS", {})
    monkeypatch.setattr(handler, "RETRY_BASE_SECONDS", 0.01)
    with fake.pipeline_stub, fake.secrets_stub:
        yield fake


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
