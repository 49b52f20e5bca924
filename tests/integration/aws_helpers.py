"""What the AWS-runtime tests share: moto credentials, the container runner, request
recording, stand-ins for the APIs moto lacks, and infra/sagepipe.yaml deployed into
moto's CloudFormation.

moto completes SageMaker jobs at once and runs no containers, so
:class:`ContainerRunner` plays the container's part: when a job is created, the real
container script runs here with the job's inputs staged from (moto's) S3, and its
outputs and log lines go where SageMaker would put them.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import subprocess
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from cfnlint.decode import decode

from sagepipe.tasks.local.containers import container_command, job_environment
from sagepipe.tasks.local.images import FRAMEWORK_FOLDER, FRAMEWORK_IMAGE
from sagepipe.tasks.local.validation import validate_request

PROJECT = Path(__file__).resolve().parents[2]
TEMPLATE = PROJECT / "infra" / "sagepipe.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


def moto_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and one attempt per call, so nothing can reach a real account."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                       "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def s3_uri_split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# ---------------------------------------------------------------- SageMaker's side


class ContainerRunner:
    """Runs the real container scripts for moto's instantly 'Completed' jobs.

    With ``logs``, the script's output also goes to CloudWatch Logs the way SageMaker
    writes it (``/aws/sagemaker/<Kind>Jobs``, stream ``<job>/algo-1-<time>``).
    """

    def __init__(self, s3: Any, logs: Any | None = None) -> None:
        self.s3 = s3
        self.logs = logs
        self.created: list[str] = []

    def stage(self, uri: str, target: Path) -> None:
        bucket, prefix = s3_uri_split(uri)
        for item in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            rel = item["Key"][len(prefix):].lstrip("/") or item["Key"].rsplit("/", 1)[-1]
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, item["Key"], str(target / rel))

    def upload(self, source: Path, uri: str) -> None:
        bucket, prefix = s3_uri_split(uri)
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            self.s3.upload_file(str(path), bucket,
                                f"{prefix.rstrip('/')}/{path.relative_to(source).as_posix()}")

    @staticmethod
    def folder(image_uri: str) -> Path:
        if FRAMEWORK_IMAGE.match(image_uri):  # AWS's framework image: the local stand-in
            return FRAMEWORK_FOLDER
        repository = image_uri.split("/", 1)[1].split("@")[0]
        return PROJECT / "containers" / repository.rsplit("-", 1)[-1]

    def run(self, command: list[str], base: Path, env: dict[str, str], *, group: str,
            job: str) -> None:
        done = subprocess.run(command, env=job_environment(base, env), capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        if self.logs is not None:
            write_log(self.logs, group, f"{job}/algo-1-{int(time.time())}",
                      (done.stdout + done.stderr).splitlines() or ["(no output)"])

    def processing(self, params: dict[str, Any], **_: Any) -> None:
        self.created.append(params["ProcessingJobName"])
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "opt" / "ml"
            local = lambda p: Path(str(base) + p[len("/opt/ml"):])  # noqa: E731
            for item in params["ProcessingInputs"]:
                self.stage(item["S3Input"]["S3Uri"], local(item["S3Input"]["LocalPath"]))
            spec = params["AppSpecification"]
            command = container_command(self.folder(spec["ImageUri"]), base, mode="process",
                                        entrypoint=spec.get("ContainerEntrypoint"),
                                        arguments=spec["ContainerArguments"],
                                        root=Path(tmp) / "root")
            self.run(command, base, {}, group="/aws/sagemaker/ProcessingJobs",
                     job=params["ProcessingJobName"])
            for item in params["ProcessingOutputConfig"]["Outputs"]:
                self.upload(local(item["S3Output"]["LocalPath"]), item["S3Output"]["S3Uri"])

    def training(self, params: dict[str, Any], **_: Any) -> None:
        self.created.append(params["TrainingJobName"])
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "opt" / "ml"
            channels = {}
            for channel in params["InputDataConfig"]:
                target = base / "input" / "data" / channel["ChannelName"]
                self.stage(channel["DataSource"]["S3DataSource"]["S3Uri"], target)
                channels[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(target)
            (base / "model").mkdir(parents=True)
            hps = params["HyperParameters"]
            (base / "input" / "config").mkdir(parents=True, exist_ok=True)
            (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
            command = container_command(
                self.folder(params["AlgorithmSpecification"]["TrainingImage"]), base,
                mode="train", hyperparameters=hps, root=Path(tmp) / "root")
            self.run(command, base, {**channels, "SM_MODEL_DIR": str(base / "model"),
                                     "SM_HPS": json.dumps(toolkit_decoded(hps))},
                     group="/aws/sagemaker/TrainingJobs", job=params["TrainingJobName"])
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                for path in (base / "model").iterdir():
                    tar.add(path, arcname=path.name)
            bucket, prefix = s3_uri_split(params["OutputDataConfig"]["S3OutputPath"])
            self.s3.put_object(Bucket=bucket, Body=archive.getvalue(),
                               Key=f"{prefix}/{params['TrainingJobName']}/output/model.tar.gz")


def toolkit_decoded(hps: dict[str, str]) -> dict[str, Any]:
    """SM_HPS as sagemaker-training builds it: each value json-decoded where it parses."""
    decoded: dict[str, Any] = {}
    for key, value in hps.items():
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            decoded[key] = value
    return decoded


def write_log(logs: Any, group: str, stream: str, lines: list[str]) -> None:
    """Append ``lines`` to a CloudWatch log stream, creating group and stream as needed."""
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": now, "message": line} for line in lines])


class CodeBuildPushes:
    """Plays the image build: moto's builds succeed at once and push nothing.

    After StartBuild it pushes each ``IMAGES`` pair into (moto's) ECR and writes the
    build's log; after BatchGetBuilds it fills in the log group and stream that real
    CodeBuild reports, so the flow tails the build log as it would on AWS.
    """

    def __init__(self, ecr: Any, logs: Any, log_group: str) -> None:
        self.ecr, self.logs, self.log_group = ecr, logs, log_group
        self.builds: list[str] = []
        self._images = ""

    def attach(self, codebuild: Any) -> None:
        events = codebuild.meta.events
        events.register("provide-client-params.codebuild.StartBuild", self._requested)
        events.register("after-call.codebuild.StartBuild", self._started)
        events.register("after-call.codebuild.BatchGetBuilds", self._described)

    def _requested(self, params: dict[str, Any], **_: Any) -> None:
        self._images = next(v["value"] for v in params["environmentVariablesOverride"]
                            if v["name"] == "IMAGES")

    def _started(self, parsed: dict[str, Any], **_: Any) -> None:
        build_id = parsed["build"]["id"]
        self.builds.append(build_id)
        lines = []
        for pair in self._images.split():
            repository, tag = pair.split("=", 1)[1].rsplit(":", 1)
            manifest = {"schemaVersion": 2,
                        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                   "size": 7, "digest": f"sha256:{uuid.uuid4().hex * 2}"},
                        "layers": []}
            image = self.ecr.put_image(repositoryName=repository, imageTag=tag,
                                       imageManifest=json.dumps(manifest))["image"]
            lines.append(f"pushed {repository}:{tag} digest: {image['imageId']['imageDigest']}")
        write_log(self.logs, self.log_group, build_id.split(":", 1)[1], lines)

    def _described(self, parsed: dict[str, Any], **_: Any) -> None:
        for build in parsed.get("builds", []):
            build.setdefault("logs", {}).update(groupName=self.log_group,
                                                streamName=build["id"].split(":", 1)[1])


def answer(parsed: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    """A before-call hook's reply: botocore skips the HTTP request and returns ``parsed``."""
    parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": 200, "HTTPHeaders": {}})
    return AWSResponse("https://stand-in.invalid", 200, {}, None), parsed


def stand_in_for_missing_sagemaker_apis(sagemaker: Any) -> None:
    """UpdateEndpoint and StopTrainingJob, which moto 5.2.5 lacks, applied to moto's state.

    UpdateEndpoint switches the endpoint to the new config at once (a blue/green
    deployment that succeeded); StopTrainingJob marks the job Stopped.
    """
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends[ACCOUNT][REGION]

    def body(params: dict[str, Any]) -> dict[str, Any]:
        """The API parameters of a before-call request dict (SageMaker speaks JSON)."""
        return dict(json.loads(params["body"]))

    def update_endpoint(params: dict[str, Any], **_: Any) -> Any:
        params = body(params)
        endpoint = backend.endpoints[params["EndpointName"]]
        config = backend.endpoint_configs[params["EndpointConfigName"]]
        endpoint.endpoint_config_name = config.endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(
            config.production_variants)
        return answer({"EndpointArn": endpoint.arn})

    def stop_training_job(params: dict[str, Any], **_: Any) -> Any:
        params = body(params)
        backend.training_jobs[params["TrainingJobName"]].training_job_status = "Stopped"
        return answer({})

    sagemaker.meta.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    sagemaker.meta.events.register("before-call.sagemaker.StopTrainingJob", stop_training_job)


# ---------------------------------------------------------------- what the code sends


def server_side_check(recorded: list[tuple[str, str]]) -> Any:
    """A provide-client-params hook: checks the model's server-side constraints too."""
    def check(params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        if service == "s3":
            return  # S3's model has no server-side constraints worth checking here
        validate_request(service, model.name, params)
        recorded.append((service, model.name))
    return check


@dataclass(frozen=True)
class Request:
    service: str  # botocore's service name: s3, sagemaker, sagemaker-runtime, ...
    operation: str  # the API operation: PutObject, CreateTrainingJob, ...
    params: dict[str, Any]


@dataclass
class RequestRecorder:
    """Every request the watched clients send, with its parameters, as the code made it.

    ``provide-client-params`` fires for every call before botocore builds the request,
    whether moto, a stand-in or the network answers it, so nothing sent is missed.
    """

    requests: list[Request] = field(default_factory=list)
    validate: bool = True

    def watch(self, *clients: Any) -> None:
        for client in clients:
            client.meta.events.register("provide-client-params.*.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        if self.validate and service != "s3":
            validate_request(service, model.name, params)
        self.requests.append(Request(service, model.name, copy.deepcopy(
            {k: v for k, v in params.items() if k != "Body"})))

    def operations(self) -> set[tuple[str, str]]:
        return {(r.service, r.operation) for r in self.requests}


# ---------------------------------------------------------------- the stack in moto

# Resource types of infra/sagepipe.yaml that moto's CloudFormation does not create
# (it warns and skips them). The moto deployment drops them and puts, in place of each
# reference to one, the value CloudFormation gives (its name for Ref, its ARN format
# for GetAtt Arn), so everything that refers to them deploys with the real values.
MOTO_SKIPS = {
    "AWS::CodeBuild::Project": "moto's CloudFormation has no CodeBuild projects",
    "AWS::CodePipeline::Pipeline": "moto has no CodePipeline pipelines",
    "AWS::S3::BucketPolicy": "moto's CloudFormation skips bucket policies",
    "AWS::SNS::TopicPolicy": "moto's CloudFormation skips topic policies",
    "AWS::CloudWatch::Alarm": "moto's CloudFormation has no CloudWatch alarms",
    "AWS::SQS::QueuePolicy": "moto's CloudFormation skips queue policies",
}
_NAME_PROPERTY = {"AWS::CodeBuild::Project": "Name", "AWS::CodePipeline::Pipeline": "Name",
                  "AWS::CloudWatch::Alarm": "AlarmName"}
_ARN_FORMAT = {
    "AWS::CodeBuild::Project":
        "arn:${AWS::Partition}:codebuild:${AWS::Region}:${AWS::AccountId}:project/${Name}",
}


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as CloudFormation reads it (short-form tags in their long form)."""
    template, errors = decode(str(path))
    assert not errors, errors
    assert template is not None
    return json.loads(json.dumps(template))  # plain dicts, lists and strings


def moto_template(template: dict[str, Any]) -> dict[str, Any]:
    """``template`` without the resources moto cannot create, references resolved."""
    resources = template["Resources"]
    skipped = {name: r for name, r in resources.items() if r["Type"] in MOTO_SKIPS}

    def stand_in(name: str, attribute: str | None) -> Any:
        resource = skipped[name]
        value = resource["Properties"][_NAME_PROPERTY[resource["Type"]]]
        if attribute is None:
            return value
        assert attribute == "Arn", f"no stand-in for {name}.{attribute}"
        return {"Fn::Sub": [_ARN_FORMAT[resource["Type"]], {"Name": value}]}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in skipped:
                return stand_in(node["Ref"], None)
            if set(node) == {"Fn::GetAtt"}:
                target, attribute = node["Fn::GetAtt"]
                if target in skipped:
                    return stand_in(target, attribute)
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    kept = {k: v for k, v in template.items() if k != "Resources"}
    kept["Resources"] = {n: r for n, r in resources.items() if n not in skipped}
    return dict(walk(kept))


STACK = "sagepipe"
CONNECTION_ARN = f"arn:aws:codeconnections:{REGION}:{ACCOUNT}:connection/0f4c2b7e-3c1d"


@dataclass
class DeployedStack:
    outputs: dict[str, str]
    resources: dict[str, dict[str, str]]  # logical id -> {type, physical id}
    parameters: dict[str, str]

    def physical(self, logical: str) -> str:
        return self.resources[logical]["physical"]

    def role_statements(self, logical: str) -> list[dict[str, Any]]:
        """The inline policy statements of a role, as moto's IAM holds them (resolved)."""
        iam = boto3.client("iam", region_name=REGION)
        name = self.physical(logical)
        statements: list[dict[str, Any]] = []
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            document = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            if isinstance(document, str):  # moto keeps CloudFormation's as a Python repr
                document = ast.literal_eval(document)
            # CloudFormation drops an !If's AWS::NoValue from the list; moto leaves a null
            statements += [s for s in document["Statement"] if s is not None]
        return statements


def deploy_stack(**parameters: str) -> DeployedStack:
    """infra/sagepipe.yaml in moto's CloudFormation (inside an active ``mock_aws``).

    The trigger's zip goes to a deployment bucket first, as the README's deploy steps
    do. The image build project, which moto's CloudFormation skips, is created through
    the CodeBuild API with the template's settings, so the flow has one to start.
    """
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="sagepipe-deploy")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(PROJECT / "deployments" / "trigger" / "handler.py", "handler.py")
    s3.put_object(Bucket="sagepipe-deploy", Key="trigger/handler.zip", Body=zipped.getvalue())
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(PROJECT / "deployments" / "relay" / "relay.py", "relay.py")
    s3.put_object(Bucket="sagepipe-deploy", Key="relay/relay.zip", Body=zipped.getvalue())
    if "PrefectApiSecretArn" not in parameters:  # the secret exists before the stack
        parameters["PrefectApiSecretArn"] = boto3.client(
            "secretsmanager", region_name=REGION).create_secret(
            Name="sagepipe-prefect-api",
            SecretString=json.dumps({"api_url": "http://127.0.0.1:9/api", "api_key": ""}))["ARN"]
    values = {"GitHubConnectionArn": CONNECTION_ARN, "GitHubRepository": "example/sagepipe",
              "TriggerCodeBucket": "sagepipe-deploy",
              "TriggerCodeKey": "trigger/handler.zip", "RelayCodeBucket": "sagepipe-deploy",
              "RelayCodeKey": "relay/relay.zip", **parameters}
    template = load_template()
    cfn = boto3.client("cloudformation", region_name=REGION)
    cfn.create_stack(StackName=STACK, TemplateBody=json.dumps(moto_template(template)),
                     Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                 for k, v in values.items()])
    stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    resources = {r["LogicalResourceId"]: {"type": r["ResourceType"],
                                          "physical": r["PhysicalResourceId"]}
                 for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    defaults = {k: str(p.get("Default")) for k, p in template["Parameters"].items()}
    deployed = DeployedStack(outputs, resources, {**defaults, **values})
    _create_image_build_project(template, deployed)
    return deployed


def _create_image_build_project(template: dict[str, Any], stack: DeployedStack) -> None:
    """The template's image build project, through the CodeBuild API (see MOTO_SKIPS)."""
    spec = template["Resources"]["ImageBuildProject"]["Properties"]
    environment = spec["Environment"]
    boto3.client("codebuild", region_name=REGION).create_project(
        name=stack.outputs["BuildProject"],
        source={"type": spec["Source"]["Type"],
                "location": f"{stack.outputs['BucketName']}/pipeline/builds/none.zip"},
        artifacts={"type": spec["Artifacts"]["Type"]},
        environment={"type": environment["Type"], "image": environment["Image"],
                     "computeType": environment["ComputeType"],
                     "privilegedMode": environment["PrivilegedMode"]},
        serviceRole=f"arn:aws:iam::{ACCOUNT}:role/{stack.physical('ImageBuildRole')}")


def first(items: list[Any], predicate: Callable[[Any], bool]) -> Any:
    return next(item for item in items if predicate(item))
