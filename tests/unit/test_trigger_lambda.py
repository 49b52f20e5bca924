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
    # a Build stage variable CodePipeline did not resolve, or no image at all
    ({"deployment": "ml-pipeline/production", "image": "#{Build.FLOW_IMAGE}"},
     "#{Build.FLOW_IMAGE}\": the Build stage's flow image action"),
    ({"deployment": "ml-pipeline/production", "image": "my image"}, "must be an image URI"),
    ({"deployment": "ml-pipeline/production", "image": 7}, "must be an image URI"),
    ({"deployment": "ml-pipeline/production", "code_hash": "#{Build.FLOW_CODE_HASH}"},
     "must be the Build stage's code hash"),
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
    # 19 s left, 15 s kept for reporting (one bounded AWS call): a request may take 4 s,
    # not HTTP_TIMEOUT_SECONDS
    assert handler.REPORT_SECONDS == 15.0
    budget = handler.Budget.for_context(Context(19000))
    assert budget.request_timeout() == pytest.approx(4.0, abs=0.1)
    assert not budget.allows(4.0)
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "0.7")
    assert handler.Budget.for_context(Context(19000)).request_timeout() == pytest.approx(0.7)
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


# ---- a Prefect API that answers by route, and the trigger's rules for real AWS ------------

RUN_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"


class _Routes(BaseHTTPRequestHandler):
    """``routes``: (method, path) -> list of (status, json body, delay); the last repeats."""

    routes: dict[tuple[str, str], list[tuple[int, Any, float]]]
    seen: list[tuple[str, str, Any]]

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = self.path.removeprefix("/api")
        self.seen.append((method, path, body))
        queue = self.routes.get((method, path)) or [(404, {"detail": "Not found"}, 0.0)]
        status, answer, delay = queue.pop(0) if len(queue) > 1 else queue[0]
        time.sleep(delay)
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def prefect(aws: FakeAWS) -> Iterator[tuple[dict[tuple[str, str], list[Any]], list[Any]]]:
    routes: dict[tuple[str, str], list[Any]] = {}
    seen: list[Any] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type(
        "Routes", (_Routes,), {"routes": routes, "seen": seen}))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    aws.expect_secret({"api_url": f"http://127.0.0.1:{server.server_port}/api", "api_key": ""})
    try:
        yield routes, seen
    finally:
        server.shutdown()
        server.server_close()


def run(state: str = "RUNNING") -> dict[str, Any]:
    return {"id": RUN_ID, "name": "brave-fox", "state": {"type": state, "name": state.title()}}


def token(**fields: Any) -> str:
    return json.dumps({"flow_run_id": RUN_ID, "started": time.time(), **fields})


def test_a_prefect_error_while_following_a_run_continues_with_the_same_run(
        aws: FakeAWS, prefect: Any) -> None:
    routes, _ = prefect
    routes[("GET", f"/flow_runs/{RUN_ID}")] = [(500, {"detail": "db locked"}, 0.0)]
    aws.expect_continuation()
    assert handler.handler(job_event(token=token()), None)["status"] == "continue"
    sent = json.loads(aws.last()["continuationToken"])
    assert (sent["flow_run_id"], sent["lost_rounds"]) == (RUN_ID, 1)
    aws.done()


def test_rounds_without_an_answer_are_bounded(aws: FakeAWS, prefect: Any) -> None:
    routes, _ = prefect
    routes[("GET", f"/flow_runs/{RUN_ID}")] = [(500, {"detail": "db locked"}, 0.0)]
    aws.expect_failure()
    handler.handler(job_event(token=token(lost_rounds=handler.MAX_LOST_ROUNDS - 1)), None)
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "SystemUnavailable" and "rounds in a row" in failure["message"]
    aws.done()


def test_an_answer_resets_the_count_and_keeps_the_start_time(aws: FakeAWS, prefect: Any) -> None:
    routes, _ = prefect
    routes[("GET", f"/flow_runs/{RUN_ID}")] = [(200, run(), 0.0)]
    aws.expect_continuation()
    started = round(time.time() - 3600, 1)
    handler.handler(job_event(token=token(lost_rounds=3, started=started)), None)
    sent = json.loads(aws.last()["continuationToken"])
    assert (sent["lost_rounds"], sent["started"]) == (0, started)
    aws.done()


def test_a_slow_flow_run_creation_is_asked_again_with_the_same_key(
        aws: FakeAWS, prefect: Any) -> None:
    routes, seen = prefect
    routes[("GET", "/deployments/name/ml-pipeline/production")] = [
        (200, {"id": "d1", "parameters": {}}, 0.0)]
    # the first creation outlives the 1 s request timeout; asking again is safe
    routes[("POST", "/deployments/d1/create_flow_run")] = [(201, run("SCHEDULED"), 1.5),
                                                           (201, run("SCHEDULED"), 0.0)]
    aws.expect_continuation()
    assert handler.handler(job_event(GOOD_PARAMETERS), None)["status"] == "continue"
    posts = [body for method, _, body in seen if method == "POST"]
    assert len(posts) == 2 and posts[0]["idempotency_key"] == posts[1]["idempotency_key"]
    aws.done()


def test_a_run_near_codepipelines_24_hour_limit_is_cancelled_and_the_stage_failed(
        aws: FakeAWS, prefect: Any) -> None:
    """CodePipeline quotas: a Lambda invoke action fails after 24 hours."""
    routes, seen = prefect
    routes[("POST", f"/flow_runs/{RUN_ID}/set_state")] = [(201, {"status": "ACCEPT"}, 0.0)]
    aws.expect_failure()
    handler.handler(job_event(token=token(started=time.time() - 23.6 * 3600)), None)
    failure = aws.last()["failureDetails"]
    assert "24-hour limit" in failure["message"] and "was cancelled" in failure["message"]
    assert seen == [("POST", f"/flow_runs/{RUN_ID}/set_state", {
        "state": {"type": "CANCELLING", "name": "Cancelling",
                  "message": "CodePipeline's 24-hour limit"}, "force": True})]
    aws.done()


def test_a_manual_approval_longer_than_the_action_can_wait_is_refused(
        aws: FakeAWS, prefect: Any) -> None:
    routes, seen = prefect
    routes[("GET", "/deployments/name/ml-pipeline/production")] = [(200, {
        "id": "d1", "parameters": {"config": {"gate": {
            "approval": "manual", "approval_timeout_seconds": 7 * 24 * 3600}}}}, 0.0)]
    aws.expect_failure()
    handler.handler(job_event(GOOD_PARAMETERS), None)
    failure = aws.last()["failureDetails"]
    assert failure["type"] == "ConfigurationError" and "at most 72000 s" in failure["message"]
    assert not [s for s in seen if s[0] == "POST"]  # no run was created
    aws.done()


def test_a_refused_success_report_fails_the_job_instead_of_leaving_it_waiting(
        aws: FakeAWS, prefect: Any) -> None:
    routes, _ = prefect
    routes[("GET", f"/flow_runs/{RUN_ID}")] = [(200, run(), 0.0)]
    aws.pipeline_stub.add_client_error("put_job_success_result", "ValidationException",
                                       "Continuation token too long", 400)
    aws.expect_failure()
    assert handler.handler(job_event(token=token()), None)["status"] == "failure"
    assert "Could not report continue" in aws.last()["failureDetails"]["message"]
    aws.done()


def test_when_codepipeline_takes_no_result_lambda_is_asked_to_retry(
        aws: FakeAWS, prefect: Any) -> None:
    routes, _ = prefect
    routes[("GET", f"/flow_runs/{RUN_ID}")] = [(200, run(), 0.0)]
    for method in ("put_job_success_result", "put_job_failure_result"):
        aws.pipeline_stub.add_client_error(method, "ThrottlingException", "Rate exceeded", 400)
    with pytest.raises(handler.ReportError, match="took no result"):
        handler.handler(job_event(token=token()), None)
    aws.done()


def test_aws_calls_are_bounded_and_the_secret_read_waits_for_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "_AWS", {})
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # as in Lambda
    config = handler.aws("codepipeline").meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 5)
    assert config.retries["total_max_attempts"] == 2
    assert handler.AWS_CALL_SECONDS >= 2 * (2 + 5)
    monkeypatch.setenv("PREFECT_API_SECRET_ARN", SECRET_ARN)
    monkeypatch.setattr(handler, "_SECRETS", {})
    short = handler.Budget(timeout=1, deadline=time.monotonic() + 5)
    with pytest.raises(handler.TriggerError, match="No time left to read"):
        handler.prefect_settings(short)  # no call made: none could finish in time
