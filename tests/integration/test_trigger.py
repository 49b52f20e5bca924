"""From a CodePipeline job to a finished flow run, against a real Prefect server.

The module starts what `make prefect-up` starts (a Prefect server on a free port
and a process worker polling `sagepipe-local`), registers both deployments with
`prefect deploy --prefect-file deployments/prefect.yaml`, and lets the worker
run the flow on the local runtime in a temporary state dir. The Lambda handler
talks to that server over HTTP; its CodePipeline and Secrets Manager clients are
boto3 clients with botocore Stubbers (moto has no CodePipeline job APIs), so
every AWS request is validated against the service model and checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prefect_http
import pytest
from lambda_fakes import (
    ARTIFACT_SECRETS,
    REVISION,
    FakeAWS,
    fake_aws,
    free_port,
    handler,
    job_event,
)
from prefect_aws.workers.ecs_worker import ECSWorker
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import build_config, load_config
from sagepipe.flows.server import LocalServer, down, up
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.local import teardown
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.slow]
PROJECT = Path(__file__).resolve().parents[2]
SAGEPIPE = Path(sys.executable).with_name("sagepipe")
ENDPOINT = "trigger-endpoint"
FLOW_IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/sagepipe-flow:test"


@dataclass
class Stack:
    server: LocalServer
    config: dict[str, Any]
    env: dict[str, str]

    @property
    def api_url(self) -> str:
        return self.server.api_url

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(prefect_http.get(f"{self.api_url}/flow_runs/{run_id}", timeout=10).json())

    def wait_final(self, run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout} s")

    def settings(self) -> dict[str, Any]:
        return {"api_url": self.api_url, "api_key": ""}

    def sagepipe(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SAGEPIPE), *args], env=self.env, cwd=PROJECT, text=True,
                              capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("trigger")
    server = up(tmp / "prefect", port=free_port(), poll_seconds=0.5, ui=False)
    state = tmp / "state"
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SAGEPIPE_FLOW_IMAGE": FLOW_IMAGE}
        prefect_http.post(f"{server.api_url}/work_pools/", timeout=10, json={
            "name": "sagepipe-ecs", "type": "ecs",
            "base_job_template": ECSWorker.get_default_base_job_template()}
        ).raise_for_status()
        deploy = subprocess.run(
            [str(SAGEPIPE.with_name("prefect")), "deploy", "--prefect-file",
             "deployments/prefect.yaml", "--all", "--no-prompt"],
            env=env, cwd=PROJECT, text=True, capture_output=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        config = build_config({
            "project": "trigger-demo",
            "runtime": {"kind": "local", "state_dir": str(state)},
            "dataset_uri": "s3://trigger-bucket/data/data.csv",
            "artifacts_uri": "s3://trigger-bucket/pipeline",
            "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.3},
            "endpoint": {"name": ENDPOINT, "timeout_seconds": 120},
        })
        ensure_local_resources(config.runtime, "trigger-bucket", "trigger-demo-events")
        frame = load_breast_cancer(as_frame=True).frame
        frame.columns = [c.replace(" ", "_") for c in frame.columns]
        frame.to_csv(tmp / "data.csv", index=False)
        push_dataset(get_clients(config.runtime), tmp / "data.csv", config.dataset_uri,
                     "target")
        yield Stack(server, config.model_dump(mode="json"), env)
    finally:
        teardown(state)
        down(tmp / "prefect", grace=10)
        assert not pid_alive(server.worker_pid) and not pid_alive(server.server_pid)


@pytest.fixture()
def aws(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAWS]:
    # The test server's SQLite answers 503 now and then on a busy 2-core machine, for
    # longer than the function's 3 attempts; these tests are about the jobs' outcomes, so
    # the function asks 6 times (its bounded retries are held by test_trigger_lambda.py).
    monkeypatch.setattr(handler, "ATTEMPTS", 6)
    with fake_aws(monkeypatch, timeout="10") as fake:
        yield fake


def new_job() -> str:
    return str(uuid.uuid4())


def invoke(aws: FakeAWS, event: dict[str, Any], status: str) -> dict[str, Any]:
    """One Lambda invocation that must end in ``status``; returns what CodePipeline got."""
    result = handler.handler(event, None)
    assert result["status"] == status, aws.sent[-1:]
    return aws.last()


def test_prefect_deploy_registers_both_deployments_from_the_settings(stack: Stack) -> None:
    # `make prefect-up` twice: the second finds the first still running
    assert up(Path(stack.server.directory), port=free_port()) == stack.server
    local = prefect_http.get(f"{stack.api_url}/deployments/name/ml-pipeline/local").json()
    assert local["parameters"] == {"config": load_config("local").model_dump(mode="json")}
    assert local["work_pool_name"] == "sagepipe-local"
    assert local["entrypoint"] == "sagepipe.flows.pipeline:ml_pipeline"
    assert local["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(PROJECT)}}]
    production = prefect_http.get(f"{stack.api_url}/deployments/name/ml-pipeline/production").json()
    assert production["parameters"] == {"config": load_config("aws").model_dump(mode="json")}
    assert production["work_pool_name"] == "sagepipe-ecs"
    assert production["job_variables"] == {"image": FLOW_IMAGE}


def test_a_codepipeline_job_runs_the_deployment_to_success(
        stack: Stack, aws: FakeAWS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    job_id = new_job()
    user = {"deployment": "ml-pipeline/local", "parameters": {"config": stack.config}}

    # round 1: the run is created; CodePipeline is told to come back
    aws.expect_secret(stack.settings())
    aws.expect_continuation(job_id)
    sent = invoke(aws, job_event(user, job_id=job_id), "continue")
    token = sent["continuationToken"]
    run_id = json.loads(token)["flow_run_id"]
    assert sent["executionDetails"]["externalExecutionId"] == run_id
    run = stack.flow_run(run_id)
    assert run["idempotency_key"] == job_id
    assert run["parameters"]["commit"] == REVISION  # the input artifact's revision
    assert run["parameters"]["config"] == stack.config

    # the same job invoked again (a Lambda retry): the same run; the secret is cached
    aws.expect_continuation(job_id, token)
    invoke(aws, job_event(user, job_id=job_id), "continue")

    # CodePipeline's next job carries the token; the run has not finished yet
    aws.expect_continuation(later := new_job(), token)
    invoke(aws, job_event(user, job_id=later, token=token), "continue")

    assert stack.wait_final(run_id)["state"]["type"] == "COMPLETED"
    aws.expect_success(last := new_job())
    sent = invoke(aws, job_event(user, job_id=last, token=token), "success")
    assert "continuationToken" not in sent
    assert sent["executionDetails"]["externalExecutionId"] == run_id
    variables = sent["outputVariables"]
    assert variables["FlowRunId"] == run_id
    assert variables["FlowRunUrl"] == f"{stack.api_url[:-4]}/runs/flow-run/{run_id}"
    assert variables["Outcome"] == "deployed"
    assert variables["Decision"].startswith("deploy: roc_auc")
    assert variables["ModelPackageArn"].endswith(":model-package/trigger-demo/1")
    assert variables["Endpoint"] == ENDPOINT
    aws.done()
    assert not any(secret in caplog.text for secret in ARTIFACT_SECRETS)


def test_a_failing_flow_fails_the_job_with_its_message_and_a_link(
        stack: Stack, aws: FakeAWS) -> None:
    job_id = new_job()
    config = {**stack.config, "label_column": "no_such_column"}
    user = {"deployment": "ml-pipeline/local", "parameters": {"config": config}}
    aws.expect_secret(stack.settings())
    aws.expect_continuation(job_id)
    token = invoke(aws, job_event(user, job_id=job_id), "continue")["continuationToken"]
    run_id = json.loads(token)["flow_run_id"]
    assert stack.wait_final(run_id)["state"]["type"] == "FAILED"

    aws.expect_failure(later := new_job())
    failure = invoke(aws, job_event(user, job_id=later, token=token), "failure")[
        "failureDetails"]
    assert failure["type"] == "JobFailed"
    assert failure["externalExecutionId"] == run_id
    assert "DataError" in failure["message"]
    assert "no label column 'no_such_column'" in failure["message"]
    assert f"/runs/flow-run/{run_id}" in failure["message"]
    aws.done()

    # `sagepipe trigger` with the job id as its idempotency key follows the same run
    result = stack.sagepipe("trigger", "ml-pipeline/local", "--idempotency-key", job_id,
                            "--poll", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert run_id in result.stdout
    assert "ended Failed" in result.stderr and "no_such_column" in result.stderr


BUILT_IMAGE = ("111122223333.dkr.ecr.us-east-1.amazonaws.com/sagepipe-flow@sha256:"
               + "ab" * 32)  # what the Build stage exports as FLOW_IMAGE
CODE_HASH = "c-0123456789abcdef0123"


def test_a_push_runs_in_the_flow_image_its_build_stage_built(stack: Stack,
                                                              aws: FakeAWS) -> None:
    """UserParameters carry #{Build.FLOW_IMAGE} and #{Build.FLOW_CODE_HASH}, resolved by
    CodePipeline: the run gets the image as its own job variable; the deployment keeps
    its image for runs started by hand."""
    job_id = new_job()
    user = {"deployment": "ml-pipeline/production", "image": BUILT_IMAGE,
            "code_hash": CODE_HASH}
    aws.expect_secret(stack.settings())
    aws.expect_continuation(job_id)
    token = invoke(aws, job_event(user, job_id=job_id), "continue")["continuationToken"]
    run_id = json.loads(token)["flow_run_id"]
    try:
        run = stack.flow_run(run_id)  # read back through the API
        assert run["job_variables"] == {"image": BUILT_IMAGE}
        assert run["parameters"]["commit"] == REVISION
        assert run["parameters"]["trigger"] == {"kind": "push", "commit": REVISION,
                                                "image": BUILT_IMAGE, "code_hash": CODE_HASH}
        production = prefect_http.get(f"{stack.api_url}/deployments/name/ml-pipeline/production"
                               ).json()
        assert production["job_variables"] == {"image": FLOW_IMAGE}  # the fallback, as it was
        # the ECS worker would start it with the deployment's variables under the run's
        variables = {**production["job_variables"], **run["job_variables"]}
        assert variables["image"] == BUILT_IMAGE
        aws.done()

        # `sagepipe trigger --image` does the same from any CI
        started = stack.sagepipe("trigger", "ml-pipeline/production", "--commit", REVISION,
                                 "--image", BUILT_IMAGE, "--code-hash", CODE_HASH,
                                 "--no-follow")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"in {BUILT_IMAGE}" in started.stdout
        found = re.search(r"\(([0-9a-f-]{36})\)", started.stdout)
        assert found, started.stdout
        cli_run_id = found.group(1)
        cli_run = stack.flow_run(cli_run_id)
        assert cli_run["job_variables"] == {"image": BUILT_IMAGE}
        assert cli_run["parameters"]["trigger"]["code_hash"] == CODE_HASH
        prefect_http.delete(f"{stack.api_url}/flow_runs/{cli_run_id}", timeout=10)
    finally:  # no ECS worker here: the runs would wait for ever
        prefect_http.delete(f"{stack.api_url}/flow_runs/{run_id}", timeout=10)

    # a process pool runs no image: --image there is refused before a run exists
    refused = stack.sagepipe("trigger", "ml-pipeline/local", "--image", BUILT_IMAGE)
    assert refused.returncode == 2
    assert "take no image" in refused.stderr and "Traceback" not in refused.stderr


def run_in_image(stack: Stack, config: dict[str, Any], image_commit: str) -> dict[str, Any]:
    """A run of ml-pipeline/local for REVISION whose environment is that of a flow image
    built from ``image_commit`` (the flow image's Dockerfile bakes it in): the process
    worker gives the run that environment, as ECS gives a container its image's."""
    deployment = prefect_http.get(f"{stack.api_url}/deployments/name/ml-pipeline/local").json()
    created = prefect_http.post(f"{stack.api_url}/deployments/{deployment['id']}/create_flow_run",
                         timeout=30, json={
                             "parameters": {"config": config, "commit": REVISION},
                             "job_variables": {"image": BUILT_IMAGE, "env": {
                                 "SAGEPIPE_COMMIT": image_commit,
                                 "SAGEPIPE_CODE_HASH": CODE_HASH}}})
    created.raise_for_status()
    return stack.wait_final(created.json()["id"])


def task_names(stack: Stack, run_id: str) -> list[str]:
    tasks = prefect_http.post(f"{stack.api_url}/task_runs/filter", timeout=10, json={
        "flow_runs": {"id": {"any_": [run_id]}}}).json()
    return [t["name"] for t in tasks]


def test_a_run_in_the_image_of_another_commit_fails_before_any_job(stack: Stack) -> None:
    other = "feedbeef" * 5
    run = run_in_image(stack, stack.config, image_commit=other)

    assert run["state"]["type"] == "FAILED"
    message = run["state"]["message"]
    assert f"This run is for commit {REVISION}" in message
    assert f"built from commit {other} (code hash {CODE_HASH})" in message
    started = [name for name in task_names(stack, run["id"]) if name.startswith((
        "pin-data", "build-images", "start-job", "run-job", "preprocess", "train", "evaluate",
        "register-model", "deploy"))]
    assert started == [], started  # nothing was pinned, built or run


def test_the_run_record_states_the_image_its_digest_and_code_hash(stack: Stack) -> None:
    # the image of this very commit passes the check; the bad label then fails the run
    # at its first step, so the record is written without a job
    config = {**stack.config, "label_column": "no_such_column"}
    run = run_in_image(stack, config, image_commit=REVISION)
    assert run["state"]["type"] == "FAILED"
    assert "no label column 'no_such_column'" in run["state"]["message"]
    [record] = prefect_http.post(f"{stack.api_url}/artifacts/filter", timeout=10, json={
        "artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"like_": "-run-record"}}}
    ).json()
    digest = BUILT_IMAGE.split("@")[1]
    assert (f"Flow image `{BUILT_IMAGE}`: digest `{digest}`, code hash `{CODE_HASH}`, built "
            f"from commit `{REVISION}`; runs commit {REVISION}: the image was built from it."
            ) in record["data"]


def test_sagepipe_trigger_follows_a_run_to_its_end(stack: Stack) -> None:
    sets = [arg for key in ("project", "runtime.state_dir", "dataset_uri", "artifacts_uri",
                            "endpoint.name", "jobs.poll_first_seconds",
                            "jobs.poll_max_seconds")
            for arg in ("--set", f"{key}={_get(stack.config, key)}")]
    result = stack.sagepipe("trigger", "ml-pipeline/local", *sets, "--commit", "feedbeef",
                            "--poll", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "for commit feedbeef" in result.stdout
    assert "completed:" in result.stdout and f"endpoint: {ENDPOINT}" in result.stdout

    refused = stack.sagepipe("trigger", "ml-pipeline/local", "--set", "gate.margin=7")
    assert refused.returncode == 2 and "gate.margin" in refused.stderr


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node

