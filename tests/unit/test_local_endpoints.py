"""Local endpoints: create, invoke, blue/green update, rollback, delete, registry links."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sagepipe.tasks.local import local_clients, teardown
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.local.images import registry_host

SERVE = r'''
import json, os, pathlib, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
time.sleep(float(os.environ.get("STARTUP_DELAY", "0")))  # a model that loads slowly
if os.environ.get("BREAK"):
    print("model_fn failed: cannot load", flush=True)
    sys.exit(1)
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
    assert not pid_alive(blue_pid)


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
