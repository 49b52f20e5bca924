"""Local endpoints: create, invoke, blue/green update, rollback, delete, registry links; and
what the endpoint's supervisor keeps true when processes die (issue 19)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from restarts import simulate_machine_restart

from sagepipe.tasks.local import bring_up, local_clients, teardown
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.local.images import registry_host
from sagepipe.tasks.local.supervisor import MAX_RESTARTS

SERVE = r'''
import json, os, pathlib, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
time.sleep(float(os.environ.get("STARTUP_DELAY", "0")))  # a model that loads slowly
if os.environ.get("BREAK"):
    print("model_fn failed: cannot load", flush=True)
    sys.exit(1)
if os.environ.get("DIE_AFTER"):  # a server that keeps crashing
    threading.Timer(float(os.environ["DIE_AFTER"]), lambda: os._exit(3)).start()
answer = json.loads((base / "model" / "model.json").read_text())["answer"]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if body == b"bad":
            msg = b'{"error": "bad payload"}'
            self.send_response(400)
        else:
            msg = json.dumps({"answer": answer, "echo": body.decode()}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(msg))); self.end_headers()
        self.wfile.write(msg)
HTTPServer((os.environ["SAGEMAKER_BIND_HOST"], int(os.environ["SAGEMAKER_BIND_TO_PORT"])),
           H).serve_forever()
'''


def _model_tar(answer: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = json.dumps({"answer": answer}).encode()
        info = tarfile.TarInfo("model.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture()
def env(tmp_path: Path) -> Any:
    root = tmp_path / "state"
    clients = local_clients(root)
    folder = tmp_path / "serve"
    folder.mkdir()
    (folder / "Dockerfile").write_text('FROM python:3.11-slim\n'
                                       'ENTRYPOINT ["python3", "/opt/ml/code/serve.py"]\n')
    (folder / "serve.py").write_text(SERVE)
    digest = clients["ecr"].push("t-serve", "v1", folder, root)
    image = f"{registry_host('us-east-1')}/t-serve@{digest}"
    s3, sm = clients["s3"], clients["sagemaker"]
    s3.create_bucket(Bucket="bkt")
    for answer in ("blue", "green"):
        s3.put_object(Bucket="bkt", Key=f"models/{answer}.tar.gz", Body=_model_tar(answer))

    def config(name: str, answer: str, **env_vars: str) -> str:
        sm.create_model(ModelName=f"m-{name}", ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
                        PrimaryContainer={"Image": image, "Environment": env_vars,
                                          "ModelDataUrl": f"s3://bkt/models/{answer}.tar.gz"})
        sm.create_endpoint_config(EndpointConfigName=f"c-{name}", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": f"m-{name}", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large", "ContainerStartupHealthCheckTimeoutInSeconds": 60}])
        return f"c-{name}"

    yield {"clients": clients, "sm": sm, "rt": clients["sagemaker-runtime"], "config": config,
           "root": root, "image": image}
    teardown(root)


def settle(sm: Any, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sm.describe_endpoint(EndpointName=name)
        if described["EndpointStatus"] not in ("Creating", "Updating"):
            return described
        time.sleep(0.05)
    raise AssertionError(f"{name} did not settle")


def ask(rt: Any, name: str, body: bytes = b"1,2") -> dict[str, Any]:
    reply = rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv")
    return json.loads(reply["Body"].read())


def test_create_then_invoke(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] in ("Creating", "InService")
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == \
        env["image"]
    assert ask(rt, "ep") == {"answer": "blue", "echo": "1,2"}


def test_the_supervisor_works_without_botocore(env: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint's supervisor serves no requests (CreateEndpoint and UpdateEndpoint were
    checked by their callers): through a create and a blue/green update it loads no
    botocore or boto3, which was most of its start (~0.13 s of a local CreateEndpoint ->
    InService, issue 16). Its real process's own import profile (PYTHONPROFILEIMPORTTIME,
    inherited into supervisor.log) says what it loaded."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    assert settle(sm, "ep")["EndpointStatus"] == "InService"
    sm.update_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("b", "green"))
    assert settle(sm, "ep")["EndpointConfigName"] == "c-b"
    assert ask(rt, "ep")["answer"] == "green"
    profile = (env["root"] / "endpoints" / "ep" / "supervisor.log").read_text()
    loaded = [line.rsplit("|", 1)[-1].strip() for line in profile.splitlines()
              if line.startswith("import time:")]
    assert "sagepipe.tasks.local.supervisor" in loaded  # the profile is there
    assert [m for m in loaded if m.split(".")[0] in ("botocore", "boto3")] == []


def test_blue_green_update_moves_traffic_and_stops_blue(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    blue_pid = sm.state.get("endpoint", "ep")["current"]["pid"]
    sm.update_endpoint(EndpointName="ep",
                       EndpointConfigName=env["config"]("b", "green", STARTUP_DELAY="3"))
    # while green warms up (it opens its port 3 s after it starts), blue keeps serving
    answers, window = [], time.monotonic() + 1.5
    while time.monotonic() < window:
        assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "Updating"
        answers.append(ask(rt, "ep")["answer"])
    assert answers and set(answers) == {"blue"}, answers
    assert pid_alive(blue_pid)
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "c-b"
    assert "FailureReason" not in described
    assert ask(rt, "ep")["answer"] == "green"
    assert gone(blue_pid), "the blue server outlived the update"  # stopped once traffic moved


def test_failed_update_rolls_back_to_the_old_config(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    sm.update_endpoint(EndpointName="ep",
                       EndpointConfigName=env["config"]("broken", "green", BREAK="1"))
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "c-a"
    assert "exited before it answered /ping" in described["FailureReason"]
    assert "cannot load" in described["FailureReason"]
    assert ask(rt, "ep")["answer"] == "blue"


def test_update_of_an_updating_endpoint_is_refused(env: Any) -> None:
    sm = env["sm"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    with pytest.raises(ClientError, match="in-progress"):
        sm.update_endpoint(EndpointName="ep", EndpointConfigName="c-a")
    settle(sm, "ep")


def test_failed_create_reports_failed(env: Any) -> None:
    sm = env["sm"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("x", "blue",
                                                                            BREAK="1"))
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "Failed"
    assert "cannot load" in described["FailureReason"]


def test_invoke_errors(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName="nope", Body=b"1", ContentType="text/csv")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert "nope" in err.value.response["Error"]["Message"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName="ep", Body=b"bad", ContentType="text/csv")
    assert err.value.response["Error"]["Code"] == "ModelError"
    assert err.value.response["OriginalStatusCode"] == 400
    assert "bad payload" in err.value.response["OriginalMessage"]


def test_delete_and_teardown_leave_no_processes(env: Any) -> None:
    sm = env["sm"]
    sm.create_endpoint(EndpointName="ep1", EndpointConfigName=env["config"]("a", "blue"))
    sm.create_endpoint(EndpointName="ep2", EndpointConfigName=env["config"]("b", "green"))
    settle(sm, "ep1")
    settle(sm, "ep2")
    pids = [sm.state.get("endpoint", n)["current"]["pid"] for n in ("ep1", "ep2")]
    sm.delete_endpoint(EndpointName="ep1")
    assert not pid_alive(pids[0])
    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName="ep1")
    assert teardown(env["root"])["endpoints"] == ["ep2"]
    assert not pid_alive(pids[1])
    assert sm.list_endpoints()["Endpoints"] == []


def test_registry_packages_approval_and_model_from_package(env: Any) -> None:
    sm = env["sm"]
    sm.create_model_package_group(ModelPackageGroupName="g")
    spec = {"Containers": [{"Image": env["image"],
                            "ModelDataUrl": "s3://bkt/models/green.tar.gz"}],
            "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]}
    first = sm.create_model_package(ModelPackageGroupName="g", InferenceSpecification=spec,
                                    ModelApprovalStatus="Approved", ClientToken="t1")
    again = sm.create_model_package(ModelPackageGroupName="g", InferenceSpecification=spec,
                                    ModelApprovalStatus="Approved", ClientToken="t1")
    assert first["ModelPackageArn"] == again["ModelPackageArn"]  # idempotent retry
    second = sm.create_model_package(ModelPackageGroupName="g", InferenceSpecification=spec,
                                     ModelApprovalStatus="Rejected")
    assert second["ModelPackageArn"].endswith("/2")
    sm.update_model_package(ModelPackageArn=second["ModelPackageArn"],
                            ModelApprovalStatus="Approved", ApprovalDescription="by hand")
    described = sm.describe_model_package(ModelPackageName=second["ModelPackageArn"])
    assert (described["ModelApprovalStatus"], described["ApprovalDescription"]) == (
        "Approved", "by hand")
    approved = sm.list_model_packages(ModelPackageGroupName="g", ModelApprovalStatus="Approved",
                                      SortOrder="Ascending")["ModelPackageSummaryList"]
    assert [p["ModelPackageVersion"] for p in approved] == [1, 2]
    with pytest.raises(ClientError):
        sm.create_model_package(ModelPackageGroupName="nope", InferenceSpecification=spec)
    sm.create_model(ModelName="from-pkg", ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
                    PrimaryContainer={"ModelPackageName": first["ModelPackageArn"]})
    model = sm.describe_model(ModelName="from-pkg")["PrimaryContainer"]
    assert model["ModelDataUrl"] == "s3://bkt/models/green.tar.gz"
    assert model["ModelPackageName"] == first["ModelPackageArn"]
    sm.add_tags(ResourceArn=described["ModelPackageArn"], Tags=[{"Key": "k", "Value": "v"}])
    assert sm.list_tags(ResourceArn=described["ModelPackageArn"])["Tags"] == [
        {"Key": "k", "Value": "v"}]


# -- the supervisor: an endpoint keeps its promises when processes die (issue 19) -----------


def doc_of(sm: Any, name: str) -> dict[str, Any]:
    """The stored endpoint, read without describing it (a describe may act)."""
    return dict(sm.state.get("endpoint", name) or {})


def stored_status_becomes(sm: Any, name: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while doc_of(sm, name).get("status") != status:
        assert time.monotonic() < deadline, f"{name} is {doc_of(sm, name).get('status')}"
        time.sleep(0.05)


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def killed_caller(root: Path, call: str) -> None:
    """Make one local SageMaker call in a process that is SIGKILLed right after it returns
    (a `sagepipe run` killed at that moment)."""
    code = (f"import os, signal\nfrom sagepipe.tasks.local import local_clients\n"
            f"sm = local_clients({str(root)!r})['sagemaker']\nsm.{call}\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def test_creation_goes_on_after_its_caller_is_killed(env: Any) -> None:
    """SageMaker: an endpoint being created keeps being created whoever asked for it. The
    supervisor takes it to InService with nobody looking (the state is only read here)."""
    sm, rt = env["sm"], env["rt"]
    config = env["config"]("a", "blue")
    killed_caller(env["root"], f"create_endpoint(EndpointName='ep', EndpointConfigName={config!r})")
    stored_status_becomes(sm, "ep", "InService")
    assert ask(rt, "ep")["answer"] == "blue"


def test_a_blue_green_update_goes_on_after_its_caller_is_killed(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    blue = doc_of(sm, "ep")["current"]["pid"]
    green = env["config"]("b", "green")
    killed_caller(env["root"], f"update_endpoint(EndpointName='ep', EndpointConfigName={green!r})")
    deadline = time.monotonic() + 30
    while doc_of(sm, "ep")["EndpointConfigName"] != "c-b":
        assert time.monotonic() < deadline, doc_of(sm, "ep")
        time.sleep(0.05)
    assert doc_of(sm, "ep")["status"] == "InService"
    assert ask(rt, "ep")["answer"] == "green"
    assert gone(blue), "the blue server outlived the update"


def test_a_killed_server_is_replaced_and_the_endpoint_never_claims_it_serves(env: Any) -> None:
    """SageMaker replaces a failed instance (SystemUpdating meanwhile); locally the
    supervisor starts the server again. No describe says InService while nothing listens."""
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    old = doc_of(sm, "ep")["current"]["pid"]
    os.kill(old, signal.SIGKILL)
    assert gone(old)
    described = sm.describe_endpoint(EndpointName="ep")
    if described["EndpointStatus"] == "InService":  # already replaced: by a new process
        assert doc_of(sm, "ep")["current"]["pid"] != old
    else:
        assert described["EndpointStatus"] == "SystemUpdating"
        assert "Replacing the serving process" in described["FailureReason"]
    assert ask(rt, "ep")["answer"] == "blue"  # waits for the new server, then answers
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "InService"
    assert "FailureReason" not in described
    assert doc_of(sm, "ep")["current"]["restarts"]  # counted against the restart budget


def test_a_server_that_keeps_exiting_fails_the_endpoint_with_its_log(env: Any) -> None:
    """A bounded restart rate: after MAX_RESTARTS replacements within the window the endpoint
    is Failed with the reason, not restarted forever nor InService."""
    sm = env["sm"]
    sm.create_endpoint(EndpointName="ep",
                       EndpointConfigName=env["config"]("crash", "blue", DIE_AFTER="0.3"))
    stored_status_becomes(sm, "ep", "Failed", timeout=60)
    described = sm.describe_endpoint(EndpointName="ep")
    assert f"exited {MAX_RESTARTS + 1} times" in described["FailureReason"]
    assert len(doc_of(sm, "ep")["current"]["restarts"]) == MAX_RESTARTS
    assert not pid_alive(doc_of(sm, "ep")["current"]["pid"])


def test_a_killed_supervisor_is_started_again_by_the_next_look(env: Any) -> None:
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    first = doc_of(sm, "ep")["supervisor"]["pid"]
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    sm.describe_endpoint(EndpointName="ep")
    second = doc_of(sm, "ep")["supervisor"]["pid"]
    assert second != first and pid_alive(second)
    server = doc_of(sm, "ep")["current"]["pid"]
    os.kill(server, signal.SIGKILL)  # the new supervisor watches the server too
    deadline = time.monotonic() + 30
    while doc_of(sm, "ep")["current"]["pid"] == server or doc_of(sm, "ep")["status"] != (
            "InService"):
        assert time.monotonic() < deadline, doc_of(sm, "ep")
        time.sleep(0.05)
    assert ask(rt, "ep")["answer"] == "blue"


def test_after_a_machine_restart_an_endpoint_is_out_of_service_until_brought_up(
        env: Any) -> None:
    """Endpoints are durable on AWS. Locally, after a restart, a look does not start servers
    by itself: the endpoint says it is down and why; bring_up (`sagepipe up`) brings it back
    on the config it served."""
    sm, rt = env["sm"], env["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    simulate_machine_restart(env["root"])
    described = sm.describe_endpoint(EndpointName="ep")
    assert described["EndpointStatus"] == "OutOfService"
    assert "sagepipe up" in described["FailureReason"]
    assert not doc_of(sm, "ep")["supervisor"]  # nothing was started by the look
    with pytest.raises(ClientError) as err:
        ask(rt, "ep")
    assert "not in service (status OutOfService)" in err.value.response["Error"]["Message"]
    assert "sagepipe up" in err.value.response["Error"]["Message"]
    [row] = bring_up(env["root"], timeout=60)
    assert (row["endpoint"], row["before"], row["after"], row["config"]) == (
        "ep", "OutOfService", "InService", "c-a")
    assert ask(rt, "ep")["answer"] == "blue"


def test_delete_stops_the_supervisor_and_a_server_nobody_recorded(env: Any) -> None:
    sm = env["sm"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    settle(sm, "ep")
    supervisor = doc_of(sm, "ep")["supervisor"]["pid"]
    # a server started by a supervisor killed before it could write the pid down
    stray_dir = env["root"] / "endpoints" / "ep" / "unrecorded"
    stray_dir.mkdir(parents=True)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             cwd=stray_dir, start_new_session=True)
    sm.delete_endpoint(EndpointName="ep")
    assert gone(supervisor) and gone(stray.pid)
    stray.wait(timeout=5)
    assert not (env["root"] / "endpoints" / "ep").exists()


def test_a_run_calls_its_model_live_only_once_the_deploy_under_way_took(env: Any) -> None:
    """The bug of issue 19: a run killed while its endpoint was being created left the
    endpoint naming the new model, and the next run called itself "unchanged" (exit 0)
    while nothing served. settle_endpoint waits for a change under way and refuses an
    endpoint that cannot serve."""
    from sagepipe.tasks.endpoints import EndpointSettings, settle_endpoint
    from sagepipe.tasks.errors import DeployFailed
    from sagepipe.tasks.runtime import Clients

    raw = env["clients"]
    clients = Clients(s3=raw["s3"], sagemaker=raw["sagemaker"],
                      sagemaker_runtime=raw["sagemaker-runtime"], sns=raw["sns"],
                      logs=raw["logs"], ecr=raw["ecr"], codebuild=raw["codebuild"])
    sm = env["sm"]

    def settings(name: str) -> EndpointSettings:
        return EndpointSettings(name=name, timeout_seconds=60, poll_first_seconds=0.05,
                                poll_max_seconds=0.2)

    assert settle_endpoint(clients, settings("nothing-yet")) is False
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    assert settle_endpoint(clients, settings("ep")) is True  # it waited for Creating
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"
    assert settle_endpoint(clients, settings("ep")) is False  # nothing under way
    sm.create_endpoint(EndpointName="bad", EndpointConfigName=env["config"]("x", "blue",
                                                                             BREAK="1"))
    with pytest.raises(DeployFailed, match="cannot load"):
        settle_endpoint(clients, settings("bad"))


def test_an_interrupted_run_names_the_endpoints_still_being_created(env: Any) -> None:
    """Ctrl-C during deploy: the run is cancelled, but the endpoint's creation carries on
    (it said only "No job was running", and the endpoint went InService after)."""
    from sagepipe.flows.config import load_config
    from sagepipe.flows.runner import endpoints_changing

    config = load_config("local", overrides={
        "runtime": {"state_dir": str(env["root"])},
        "endpoint": {"name": "ep", "staging_name": "ep-staging"}})
    assert endpoints_changing(config) == []  # neither exists
    env["sm"].create_endpoint(EndpointName="ep", EndpointConfigName=env["config"](
        "slow", "blue", STARTUP_DELAY="30"))
    assert endpoints_changing(config) == [("ep", "Creating")]
    env["sm"].delete_endpoint(EndpointName="ep")
    env["sm"].create_endpoint(EndpointName="ep", EndpointConfigName=env["config"]("a", "blue"))
    assert settle(env["sm"], "ep")["EndpointStatus"] == "InService"
    assert endpoints_changing(config) == []
