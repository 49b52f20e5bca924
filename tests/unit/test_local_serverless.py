"""Serverless endpoints on the local runtime: validated as SageMaker does, no server while
idle, a cold start on the next request, blue/green updates, concurrency, and the
deploy path (tasks.endpoints.deploy_package) against a real served endpoint."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError
from test_local_endpoints import ask, settle
from test_local_endpoints import env as local_runtime  # noqa: F401  (a fixture)

from sagepipe.tasks.endpoints import (
    EndpointSettings,
    ServerlessSettings,
    deploy_package,
    deployment_config,
)
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.local.serverless import IDLE_ENV
from sagepipe.tasks.runtime import Clients

ROLE = "arn:aws:iam::000000000000:role/x"
SERVERLESS = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def serverless_config(served: Any, name: str, answer: str, serverless: dict[str, Any] | None = None,
                      **model: Any) -> str:
    sm = served["sm"]
    sm.create_model(ModelName=f"m-{name}", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": served["image"], "ModelDataUrl": f"s3://bkt/models/{answer}.tar.gz"}, **model)
    sm.create_endpoint_config(EndpointConfigName=f"c-{name}", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"m-{name}",
        "ServerlessConfig": serverless or SERVERLESS}])
    return f"c-{name}"


def deployment(served: Any, name: str = "ep") -> dict[str, Any]:
    return dict(served["sm"].state.get("endpoint", name)["current"])


@pytest.fixture()
def served(local_runtime: Any) -> Any:  # noqa: F811  (the fixture imported above)
    """test_local_endpoints' local runtime with a tiny serving image and two models."""
    return local_runtime


@pytest.fixture()
def quick_idle(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv(IDLE_ENV, "1")
    return 1.0


def test_an_idle_serverless_endpoint_runs_nothing_and_cold_starts_on_the_next_request(
        served: Any, quick_idle: float) -> None:
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=serverless_config(served, "a", "blue"))
    described = settle(sm, "ep")
    assert described["EndpointStatus"] == "InService"
    variant = described["ProductionVariants"][0]
    assert variant["CurrentServerlessConfig"] == SERVERLESS  # no instance counts
    assert "CurrentInstanceCount" not in variant
    assert ask(rt, "ep")["answer"] == "blue"
    warm = deployment(served)
    assert pid_alive(warm["pid"]) and pid_alive(warm["reaper"])

    # idle for its idle time: the watcher stops the server, and itself
    wait_for(lambda: deployment(served)["pid"] is None, what="scale to zero")
    wait_for(lambda: not pid_alive(warm["pid"]) and not pid_alive(warm["reaper"]),
             what="the server and its watcher to exit")
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"

    started = time.monotonic()
    assert ask(rt, "ep", b"3,4") == {"answer": "blue", "echo": "3,4"}  # the cold start
    cold = deployment(served)
    assert cold["cold_starts"] == 1 and cold["pid"] != warm["pid"] and pid_alive(cold["pid"])
    assert time.monotonic() - started < 30
    assert ask(rt, "ep")["answer"] == "blue"  # warm again: no second cold start
    assert deployment(served)["cold_starts"] == 1

    sm.delete_endpoint(EndpointName="ep")  # takes the server and the new watcher along
    assert not pid_alive(cold["pid"]) and not pid_alive(cold["reaper"])


def test_a_serverless_endpoint_is_updated_blue_green(served: Any, quick_idle: float) -> None:
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=serverless_config(served, "a", "blue"))
    settle(sm, "ep")
    blue = deployment(served)
    bigger = {"MemorySizeInMB": 4096, "MaxConcurrency": 2}
    sm.update_endpoint(EndpointName="ep",
                       EndpointConfigName=serverless_config(served, "b", "green", bigger))
    described = settle(sm, "ep")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "c-b")
    assert described["ProductionVariants"][0]["CurrentServerlessConfig"] == bigger
    assert ask(rt, "ep")["answer"] == "green"
    # the supervisor stops the blue deployment once traffic has moved
    wait_for(lambda: not pid_alive(blue["pid"]) and not pid_alive(blue["reaper"]),
             what="the blue server and its watcher to exit")
    # and the green one scales to zero and cold-starts like the first
    wait_for(lambda: deployment(served)["pid"] is None, what="scale to zero")
    assert ask(rt, "ep")["answer"] == "green"


def test_an_instance_based_endpoint_cannot_become_serverless_but_the_reverse_works(
        served: Any) -> None:
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=served["config"]("a", "blue"))
    settle(sm, "ep")
    with pytest.raises(ClientError) as err:
        sm.update_endpoint(EndpointName="ep",
                           EndpointConfigName=serverless_config(served, "s", "green"))
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "cannot be converted to a serverless" in err.value.response["Error"]["Message"]
    assert ask(rt, "ep")["answer"] == "blue"  # untouched

    sm.create_endpoint(EndpointName="ep2", EndpointConfigName="c-s")
    settle(sm, "ep2")
    sm.update_endpoint(EndpointName="ep2", EndpointConfigName="c-a")  # serverless -> instances
    assert settle(sm, "ep2")["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert ask(rt, "ep2")["answer"] == "blue"


@pytest.mark.parametrize(("variant", "model", "message"), [
    ({"InstanceType": "ml.m5.large"}, {}, "sets ServerlessConfig and InstanceType"),
    ({"ServerlessConfig": {"MemorySizeInMB": 1500, "MaxConcurrency": 1}}, {},
     "MemorySizeInMB 1500 is not one of"),
    ({"ServerlessConfig": {"MemorySizeInMB": 7168, "MaxConcurrency": 1}}, {},
     "less than or equal to 6144"),
    ({"ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 2,
                           "ProvisionedConcurrency": 3}}, {},
     "ProvisionedConcurrency 3 is more than MaxConcurrency 2"),
    ({}, {"EnableNetworkIsolation": True}, "network isolation is not supported"),
    ({}, {"VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1"]}},
     "VPC configuration is not supported"),
])
def test_serverless_configs_sagemaker_refuses_are_refused(
        served: Any, variant: dict[str, Any], model: dict[str, Any], message: str) -> None:
    sm = served["sm"]
    sm.create_model(ModelName="m", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": served["image"], "ModelDataUrl": "s3://bkt/models/blue.tar.gz"}, **model)
    with pytest.raises(ClientError) as err:
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "m", "ServerlessConfig": SERVERLESS,
            **variant}])
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert message in err.value.response["Error"]["Message"]
    with pytest.raises(ParamValidationError):  # botocore's own check, client side
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "m",
            "ServerlessConfig": {"MemorySizeInMB": 512, "MaxConcurrency": 1}}])


def test_more_than_max_concurrency_at_once_is_throttled(served: Any) -> None:
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=serverless_config(
        served, "a", "blue", {"MemorySizeInMB": 1024, "MaxConcurrency": 1}))
    settle(sm, "ep")
    busy = sm.endpoints.acquire("ep", "InvokeEndpoint")  # one invocation in flight
    with pytest.raises(ClientError) as err:
        ask(rt, "ep")
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    assert "max_concurrency" in err.value.response["Error"]["Message"]
    sm.endpoints.release(busy)
    assert ask(rt, "ep")["answer"] == "blue"
    assert deployment(served)["inflight"] == {}


def test_provisioned_concurrency_keeps_the_server_warm(served: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IDLE_ENV, "0.2")
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=serverless_config(
        served, "a", "blue", {**SERVERLESS, "ProvisionedConcurrency": 1}))
    settle(sm, "ep")
    warm = deployment(served)
    time.sleep(1.5)
    assert ask(rt, "ep")["answer"] == "blue"
    now = deployment(served)
    assert (now["pid"], now["cold_starts"], now["reaper"]) == (warm["pid"], 0, None)


def test_a_server_that_died_is_replaced_by_a_cold_start_and_a_failed_one_says_why(
        served: Any) -> None:
    sm, rt = served["sm"], served["rt"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=serverless_config(served, "a", "blue"))
    settle(sm, "ep")
    first = deployment(served)
    os.killpg(first["pid"], 9)
    wait_for(lambda: not pid_alive(first["pid"]), what="the kill")
    # not Failed, as an instance-based endpoint would be: SageMaker replaces serverless compute
    assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"
    assert ask(rt, "ep")["answer"] == "blue"
    assert deployment(served)["cold_starts"] == 1

    # the container cannot start any more: the cold start fails with its log, and the next
    # request tries again
    second = deployment(served)
    sm.state.update("endpoint", "ep", lambda d: d["current"]["env"].update(BREAK="1"))
    os.killpg(second["pid"], 9)
    wait_for(lambda: not pid_alive(second["pid"]), what="the kill")
    with pytest.raises(ClientError) as err:
        ask(rt, "ep")
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert "cannot load" in err.value.response["Error"]["Message"]
    assert deployment(served)["pid"] is None and deployment(served)["inflight"] == {}


# ------------------------------------------------ the deploy path, on a served endpoint

SERVE_WORKERS = r'''
import json, os, pathlib
from http.server import BaseHTTPRequestHandler, HTTPServer
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
answer = json.loads((base / "model" / "model.json").read_text())["answer"]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        msg = json.dumps({"answer": answer,
                          "workers": os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(msg))); self.end_headers()
        self.wfile.write(msg)
HTTPServer((os.environ["SAGEMAKER_BIND_HOST"], int(os.environ["SAGEMAKER_BIND_TO_PORT"])),
           H).serve_forever()
'''


def test_deploy_package_creates_and_updates_a_serverless_endpoint_that_serves_after_a_cold_start(
        served: Any, quick_idle: float, tmp_path: Path) -> None:
    from sagepipe.tasks.local.images import registry_host

    clients, sm = served["clients"], served["sm"]
    folder = tmp_path / "serve-workers"
    folder.mkdir()
    (folder / "Dockerfile").write_text('FROM python:3.11-slim\n'
                                       'ENTRYPOINT ["python3", "/opt/ml/code/serve.py"]\n')
    (folder / "serve.py").write_text(SERVE_WORKERS)
    digest = clients["ecr"].push("t-serve-w", "v1", folder, served["root"])
    image = f"{registry_host('us-east-1')}/t-serve-w@{digest}"
    sm.create_model_package_group(ModelPackageGroupName="g")
    packages = [sm.create_model_package(
        ModelPackageGroupName="g", ModelApprovalStatus="Approved", InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": f"s3://bkt/models/{answer}.tar.gz",
                            "Environment": {"FROM_PACKAGE": answer}}],
            "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]}
    )["ModelPackageArn"] for answer in ("blue", "green")]
    seam = Clients(s3=clients["s3"], sagemaker=sm, sagemaker_runtime=clients["sagemaker-runtime"],
                   sns=clients["sns"], logs=clients["logs"], ecr=clients["ecr"],
                   codebuild=clients["codebuild"], local_root=served["root"])
    serverless = ServerlessSettings(memory_mb=1024, max_concurrency=3)

    def deploy(package: str) -> Any:
        return deploy_package(seam, endpoint="sls", package_arn=package, role_arn=ROLE,
                              instance_type="ml.m5.large", instance_count=1,
                              deploy_config=deployment_config(EndpointSettings(
                                  name="sls", serverless=serverless)),
                              smoke_payload="1,2", timeout=60,
                              log=logging.getLogger("test"), first_poll=0.05, max_poll=0.2,
                              serverless=serverless)

    created = deploy(packages[0])
    assert created.action == "created"
    assert json.loads(created.smoke_test) == {"answer": "blue", "workers": "1"}
    config = sm.describe_endpoint_config(EndpointConfigName=created.endpoint_config)
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 1024, "MaxConcurrency": 3}
    model = sm.describe_model(ModelName=created.model_name)["PrimaryContainer"]
    assert model["Environment"] == {"FROM_PACKAGE": "blue", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}

    wait_for(lambda: deployment(served, "sls")["pid"] is None, what="scale to zero")
    assert ask(served["rt"], "sls")["answer"] == "blue"  # after a cold start
    assert deployment(served, "sls")["cold_starts"] == 1

    wait_for(lambda: deployment(served, "sls")["pid"] is None, what="scale to zero")
    updated = deploy(packages[1])  # blue/green while blue has no server at all
    assert (updated.action, updated.previous_config) == ("updated", created.endpoint_config)
    assert json.loads(updated.smoke_test)["answer"] == "green"
    assert sm.describe_endpoint(EndpointName="sls")["EndpointConfigName"] == \
        updated.endpoint_config


def test_deploy_package_refuses_to_turn_an_instance_based_endpoint_serverless(
        served: Any) -> None:
    clients, sm = served["clients"], served["sm"]
    sm.create_endpoint(EndpointName="ep", EndpointConfigName=served["config"]("a", "blue"))
    settle(sm, "ep")
    sm.create_model_package_group(ModelPackageGroupName="g")
    package = sm.create_model_package(
        ModelPackageGroupName="g", ModelApprovalStatus="Approved", InferenceSpecification={
            "Containers": [{"Image": served["image"], "ModelDataUrl": "s3://bkt/models/green.tar.gz"}],
            "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]}
    )["ModelPackageArn"]
    seam = Clients(s3=clients["s3"], sagemaker=sm, sagemaker_runtime=clients["sagemaker-runtime"],
                   sns=clients["sns"], logs=clients["logs"], ecr=clients["ecr"],
                   codebuild=clients["codebuild"], local_root=served["root"])
    models_before = len(sm.state.list("model"))
    with pytest.raises(ConfigError, match="cannot turn an instance-based endpoint into a "
                       "serverless one"):
        deploy_package(seam, endpoint="ep", package_arn=package, role_arn=ROLE,
                       instance_type="ml.m5.large", instance_count=1, deploy_config={},
                       smoke_payload="1", timeout=60, log=logging.getLogger("test"),
                       serverless=ServerlessSettings())
    assert len(sm.state.list("model")) == models_before  # nothing made
    assert ask(served["rt"], "ep")["answer"] == "blue"

