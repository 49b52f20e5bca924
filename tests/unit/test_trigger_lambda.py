"""The CodePipeline trigger Lambda when things go wrong, and the zip it ships in.

Every AWS call goes through real boto3 clients with botocore Stubbers
(tests/lambda_fakes.py): each request is validated against the service model
and must be the one expected, in order. The Prefect API is absent,
unreachable, silent or misbehaving here; tests/integration/test_trigger.py runs
the handler against a real Prefect server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from lambda_fakes import (
    ARTIFACT_SECRETS,
    JOB_ID,
    SECRET_ARN,
    TRIGGER,
    FakeAWS,
    fake_aws,
    free_port,
    handler,
    job_event,
)


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAWS]:
    with fake_aws(monkeypatch) as fake:
        yield fake


GOOD_PARAMETERS = {"deployment": "ml-pipeline/production"}


def test_zip_holds_only_the_handler_and_it_imports_only_stdlib_and_boto3(
        tmp_path: Path) -> None:
    out = tmp_path / "trigger-lambda.zip"
    subprocess.run([sys.executable, str(TRIGGER / "build.py"), "--output", str(out)],
                   check=True, capture_output=True)
    first = out.read_bytes()
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["handler.py"]
        archive.extractall(tmp_path / "unzipped")
    subprocess.run([sys.executable, str(TRIGGER / "build.py"), "--output", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == first, "the zip is not reproducible"
    probe = ("import json, sys\nimport boto3, botocore.config, botocore.exceptions\n"
             "before = set(sys.modules)\nsys.path.insert(0, sys.argv[1])\nimport handler\n"
             "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
             "print(json.dumps(sorted(new - set(sys.stdlib_module_names))))\n")
    loaded = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path / "unzipped")],
                            check=True, capture_output=True, text=True, cwd=tmp_path)
    assert json.loads(loaded.stdout) == ["handler"]


@pytest.mark.parametrize("event", [
    {}, {"Records": []}, "not a dict", {"CodePipeline.job": {"id": "../../etc"}},
    {"CodePipeline.job": {"data": {}}},
])
def test_an_event_without_a_job_id_is_ignored_and_nothing_is_called(
        aws: FakeAWS, event: Any) -> None:
    assert handler.handler(event, None)["status"] == "ignored"
    assert aws.sent == []
    aws.done()


@pytest.mark.parametrize(("user_parameters", "says"), [
    (None, "no UserParameters"),
    ("{not json", "not valid JSON"),
    ('["ml-pipeline/production"]', "must be a JSON object"),
    ({"deployment": "ml-pipeline/production", "paramters": {}}, "Unknown key(s)"),
    ({"deployment": "ml-pipeline"}, "'<flow>/<deployment>'"),
    ({"deployment": "ml-pipeline/production", "parameters": ["x"]}, "must be a JSON object"),
])
def test_bad_user_parameters_fail_the_job_before_anything_else(
        aws: FakeAWS, user_parameters: Any, says: str) -> None:
    aws.expect_failure()
    assert handler.handler(job_event(user_parameters), None)["status"] == "failure"
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "ConfigurationError"
    assert says in failure["message"]
    aws.done()  # the secret was not even read


def test_a_job_without_data_fails_with_a_configuration_error(aws: FakeAWS) -> None:
    aws.expect_failure()
    handler.handler({"CodePipeline.job": {"id": JOB_ID}}, None)
    assert aws.last()["failureDetails"]["type"] == "ConfigurationError"
    aws.done()


def test_a_foreign_continuation_token_fails_the_job(aws: FakeAWS) -> None:
    aws.expect_failure()
    handler.handler(job_event(GOOD_PARAMETERS, token="garbage"), None)
    assert "continuation token" in aws.last()["failureDetails"]["message"]
    aws.done()


def test_a_missing_secret_fails_the_job_and_names_it(aws: FakeAWS) -> None:
    aws.secrets_stub.add_client_error("get_secret_value", "ResourceNotFoundException",
                                      "Secrets Manager can't find the specified secret.",
                                      400, expected_params={"SecretId": SECRET_ARN})
    aws.expect_failure()
    assert handler.handler(job_event(GOOD_PARAMETERS), None)["status"] == "failure"
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "ConfigurationError"
    assert SECRET_ARN in failure["message"] and "does not exist" in failure["message"]
    aws.done()


@pytest.mark.parametrize(("secret", "says"), [
    ("not json", "must be a JSON string"),
    ({"api_key": "k"}, "must be a JSON string"),
    ({"api_url": "api.prefect.cloud", "api_key": "k"}, "http(s) URL"),
])
def test_a_malformed_secret_fails_the_job(aws: FakeAWS, secret: Any, says: str) -> None:
    aws.expect_secret(secret)
    aws.expect_failure()
    handler.handler(job_event(GOOD_PARAMETERS), None)
    assert says in aws.last()["failureDetails"]["message"]
    aws.done()


def test_an_unset_secret_variable_fails_the_job(aws: FakeAWS,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_SECRET_ARN")
    aws.expect_failure()
    handler.handler(job_event(GOOD_PARAMETERS), None)
    assert "PREFECT_API_SECRET_ARN" in aws.last()["failureDetails"]["message"]
    aws.done()


def test_an_unreachable_prefect_api_fails_the_job(aws: FakeAWS,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    aws.expect_secret({"api_url": url, "api_key": "pnu_secret_key"})
    aws.expect_failure()
    assert handler.handler(job_event(GOOD_PARAMETERS), None)["status"] == "failure"
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "SystemUnavailable"
    assert f"Could not reach the Prefect API at {url}" in failure["message"]
    assert "pnu_secret_key" not in caplog.text
    assert not any(secret in caplog.text for secret in ARTIFACT_SECRETS)
    aws.done()


def test_a_prefect_api_that_never_answers_times_out(aws: FakeAWS) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        aws.expect_secret({"api_url": url, "api_key": ""})
        aws.expect_failure()
        started = time.monotonic()
        handler.handler(job_event(GOOD_PARAMETERS), None)
        assert time.monotonic() - started < 5  # HTTP_TIMEOUT_SECONDS is 1
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "SystemUnavailable" and "timed out" in failure["message"]
    aws.done()


class _Answer(BaseHTTPRequestHandler):
    status = 200
    body = b""
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "body", "kind", "says", "attempts"), [
    (401, b'{"detail": "Invalid API key"}', "PermissionError", "refused the API key", 1),
    (503, b"upstream down", "SystemUnavailable", "answered 503", 3),  # asked again, twice
    (200, b"<html>the UI</html>", "SystemUnavailable", "not the UI", 1),
    (404, b'{"detail": "Deployment not found"}', "ConfigurationError", "No deployment", 1),
])
def test_prefect_api_errors_fail_the_job_with_what_to_check(
        aws: FakeAWS, status: int, body: bytes, kind: str, says: str, attempts: int) -> None:
    requests: list[str] = []
    answer = type("Answer", (_Answer,), {"status": status, "body": body,
                                         "requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        aws.expect_secret({"api_url": f"http://127.0.0.1:{server.server_port}/api",
                           "api_key": "k1"})
        aws.expect_failure()
        handler.handler(job_event(GOOD_PARAMETERS), None)
    finally:
        server.shutdown()
        server.server_close()
    failure = aws.last()["failureDetails"]
    assert (failure["type"], says in failure["message"]) == (kind, True), failure
    assert requests == ["/api/deployments/name/ml-pipeline/production"] * attempts
    # a refused key is read again on the next invocation (it may have been rotated)
    assert (SECRET_ARN in handler._SECRETS) == (status != 401)
    aws.done()


def test_a_failure_to_report_is_logged_not_raised(aws: FakeAWS,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    aws.pipeline_stub.add_client_error("put_job_failure_result", "JobNotFoundException",
                                       "The job was specified in an invalid format or cannot "
                                       "be found.", 400)
    result = handler.handler(job_event("{not json"), None)
    assert result["status"] == "report-failed"
    assert "Could not report job" in caplog.text
    aws.done()


def test_requests_stay_within_the_invocation_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    class Context:
        def __init__(self, millis: int) -> None:
            self.millis = millis

        def get_remaining_time_in_millis(self) -> int:
            return self.millis

    monkeypatch.delenv("HTTP_TIMEOUT_SECONDS", raising=False)
    assert handler.Budget.for_context(None).request_timeout() == pytest.approx(10.0)
    # 7 s left, 3 s kept for reporting: a request may take 4 s, not HTTP_TIMEOUT_SECONDS
    budget = handler.Budget.for_context(Context(7000))
    assert budget.request_timeout() == pytest.approx(4.0, abs=0.1)
    assert not budget.allows(4.0)
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "0.7")
    assert handler.Budget.for_context(Context(7000)).request_timeout() == pytest.approx(0.7)
    spent = handler.Budget(timeout=10, deadline=time.monotonic() + 0.2)
    with pytest.raises(handler.TriggerError, match="Ran out of time"):
        spent.request_timeout()


@pytest.mark.parametrize(("api_url", "ui_url"), [
    ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200"),
    ("https://api.prefect.cloud/api/accounts/a1/workspaces/w2",
     "https://app.prefect.cloud/account/a1/workspace/w2"),
])
def test_run_links_point_at_the_ui(api_url: str, ui_url: str) -> None:
    assert handler.ui_url_for(api_url) == ui_url


def test_parameters_merge_key_by_key_and_the_commit_is_the_source_revision() -> None:
    base = {"config": {"gate": {"margin": 0.001, "threshold": 0.9}, "project": "p"},
            "force": False}
    merged = handler.merge(base, {"config": {"gate": {"margin": 0.01}}, "force": True})
    assert merged == {"config": {"gate": {"margin": 0.01, "threshold": 0.9}, "project": "p"},
                      "force": True}
    assert base["config"]["gate"]["margin"] == 0.001  # the deployment's own are untouched
    data = job_event(GOOD_PARAMETERS)["CodePipeline.job"]["data"]
    data["inputArtifacts"].insert(0, {"name": "BuildOutput", "revision": None})
    assert handler.commit_of(data) == "0123456789abcdef0123"
    assert handler.commit_of({"inputArtifacts": []}) is None
