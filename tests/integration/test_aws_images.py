"""The image stage on the AWS runtime: ECR and S3 from moto, CodeBuild from moto or Stubber.

moto proves the calls it implements (ECR describe_images / describe_repositories /
put_image, S3 put_object / get_object, CodeBuild start_build / batch_get_builds).
moto's builds always succeed at once and push nothing, so a push is simulated
where the test needs one, and failures, slow builds and log lines come from
botocore's Stubber, which checks every request and response against the model.
The buildspec itself runs under bash with fake ``aws`` and ``docker`` commands.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws

from sagepipe.tasks import runtime
from sagepipe.tasks.errors import ImageBuildFailed
from sagepipe.tasks.images import BUILDSPEC, content_tag, ensure_images
from sagepipe.tasks.runtime import Clients, RuntimeSettings, get_clients
from sagepipe.tasks.stepsource import STEPS

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
BUCKET = "sagepipe-artifacts"
PROJECT = "sagepipe-images"
BUILD_ID = f"{PROJECT}:0f4c2b7e-3c1d-4a55-9e7a-2b8f5d6c1a90"
STREAM = BUILD_ID.split(":", 1)[1]  # CodeBuild names the log stream after the build's UUID
GROUP = f"/aws/codebuild/{PROJECT}"
PUSHED = re.compile(r"^pushed (\S+)/(\S+):(\S+) digest: (sha256:[0-9a-f]{64})$", re.M)


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    """Real boto3 clients from tasks.runtime against in-process moto, with the resources
    the infra stack would create: one repository per step, the bucket, the project."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                        "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": os.devnull,
                        "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        runtime._CACHE.clear()  # clients are cached per settings; these must be moto's
        clients = get_clients(RuntimeSettings(kind="aws", region=REGION, max_attempts=1))
        for step in STEPS:
            clients.ecr.create_repository(repositoryName=f"sagepipe-{step}",
                                          imageTagMutability="IMMUTABLE")
        clients.s3.create_bucket(Bucket=BUCKET)
        clients.codebuild.create_project(
            name=PROJECT, source={"type": "S3", "location": f"{BUCKET}/placeholder.zip"},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                         "computeType": "BUILD_GENERAL1_SMALL", "privilegedMode": True},
            serviceRole=f"arn:aws:iam::{ACCOUNT}:role/sagepipe-codebuild")
        try:
            yield clients
        finally:
            runtime._CACHE.clear()


@pytest.fixture()
def containers(tmp_path: Path) -> Path:
    root = tmp_path / "containers"
    for step in STEPS:
        (root / step).mkdir(parents=True)
        (root / step / "Dockerfile").write_text(f"FROM python:3.11-slim\nCOPY {step}.py /opt/\n")
        (root / step / f"{step}.py").write_text(f"print('{step}')\n")
    return root


def push(clients: Clients, repository: str, tag: str) -> str:
    """Put an image into moto's ECR, as a docker push would; returns its digest."""
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "size": 7, "digest": "sha256:" + hashlib.sha256(
                               f"{repository}:{tag}".encode()).hexdigest()},
                "layers": []}
    image = clients.ecr.put_image(repositoryName=repository, imageTag=tag,
                                  imageManifest=json.dumps(manifest))["image"]
    return str(image["imageId"]["imageDigest"])


@dataclass
class Recorder:
    """Requests as sent on the wire, captured through botocore's event hooks."""

    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def watch(self, client: Any, operation: str) -> None:
        service = client.meta.service_model.service_name

        def record(params: dict[str, Any], **_: Any) -> None:
            body = params.get("body") or b"{}"
            sent = json.loads(body) if service != "s3" else {"url": params["url"]}
            self.calls.setdefault(operation, []).append(sent)

        client.meta.events.register(f"before-call.{service}.{operation}", record)


def ensure(clients: Clients, containers: Path, **kwargs: Any) -> dict[str, Any]:
    return ensure_images(clients, folders={n: containers / n for n in STEPS},
                         repository_prefix="sagepipe",
                         build_project=PROJECT, artifacts_bucket=BUCKET,
                         artifacts_prefix="pipeline", log=logging.getLogger("test.images"),
                         **kwargs)


# ---------------------------------------------------------------- moto: skip and build


def test_every_tag_in_ecr_starts_no_build_and_returns_digests(aws: Clients,
                                                              containers: Path) -> None:
    seeded = {s: push(aws, f"sagepipe-{s}", content_tag(containers / s)) for s in STEPS}
    recorder = Recorder()
    recorder.watch(aws.codebuild, "StartBuild")
    recorder.watch(aws.s3, "PutObject")

    refs = ensure(aws, containers)

    assert recorder.calls == {}  # no build started, no source uploaded
    for step in STEPS:
        assert refs[step].digest == seeded[step]
        assert refs[step].uri == f"{REGISTRY}/sagepipe-{step}@{seeded[step]}"
        assert refs[step].tag == content_tag(containers / step)
        assert not refs[step].built


def start_build_for_changed_train(aws: Clients, containers: Path) -> tuple[Recorder, dict[str, Any],
                                                                         dict[str, str]]:
    """All tags in ECR but train's, which is edited: run ensure_images on moto.

    moto's build succeeds at once and pushes nothing, so an after-call hook pushes
    what the request's IMAGES names, as the buildspec would.
    """
    for step in STEPS:
        push(aws, f"sagepipe-{step}", content_tag(containers / step))
    (containers / "train" / "train.py").write_text("print('a better model')\n")
    recorder = Recorder()
    recorder.watch(aws.codebuild, "StartBuild")
    pushed: dict[str, str] = {}

    def simulate_push(**_: Any) -> None:
        env = recorder.calls["StartBuild"][-1]["environmentVariablesOverride"]
        images = next(v["value"] for v in env if v["name"] == "IMAGES")
        for pair in images.split():
            repository, tag = pair.split("=", 1)[1].split(":")
            pushed[repository] = push(aws, repository, tag)

    aws.codebuild.meta.events.register("after-call.codebuild.StartBuild", simulate_push)
    refs = ensure(aws, containers, buildspec=BUILDSPEC.read_text(), sleep=lambda s: None)
    return recorder, refs, pushed


def test_one_changed_folder_is_built_alone_and_used_by_digest(aws: Clients,
                                                              containers: Path) -> None:
    recorder, refs, pushed = start_build_for_changed_train(aws, containers)

    [request] = recorder.calls["StartBuild"]
    tag = content_tag(containers / "train")
    assert request["projectName"] == PROJECT
    assert request["sourceTypeOverride"] == "S3"
    assert request["environmentVariablesOverride"] == [
        {"name": "IMAGES", "value": f"train=sagepipe-train:{tag}", "type": "PLAINTEXT"}]
    assert request["privilegedModeOverride"] is True
    assert request["buildspecOverride"] == BUILDSPEC.read_text()
    bucket, key = request["sourceLocationOverride"].split("/", 1)
    assert bucket == BUCKET and key.startswith("pipeline/builds/") and key.endswith(".zip")
    blob = aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert sorted(archive.namelist()) == ["train/Dockerfile", "train/train.py"]
        assert archive.read("train/train.py") == b"print('a better model')\n"

    assert pushed == {"sagepipe-train": refs["train"].digest}
    assert refs["train"].built and refs["train"].tag == tag
    assert refs["train"].uri == f"{REGISTRY}/sagepipe-train@{pushed['sagepipe-train']}"
    assert not any(refs[s].built for s in STEPS if s != "train")

    again = ensure(aws, containers)  # now in ECR: nothing to build
    assert len(recorder.calls["StartBuild"]) == 1
    assert again["train"].digest == refs["train"].digest and not again["train"].built


def test_a_build_that_pushes_nothing_is_an_error(aws: Clients, containers: Path) -> None:
    (containers / "serve" / "serve.py").write_text("print('changed')\n")
    for step in STEPS:
        if step != "serve":
            push(aws, f"sagepipe-{step}", content_tag(containers / step))
    with pytest.raises(ImageBuildFailed, match=r"sagepipe-serve:c-\w+ is not in the registry"):
        ensure(aws, containers, sleep=lambda s: None)


def test_a_retry_sends_the_same_idempotency_token_and_a_new_run_a_new_one(
        aws: Clients, containers: Path) -> None:
    for step in STEPS:
        if step != "train":
            push(aws, f"sagepipe-{step}", content_tag(containers / step))
    recorder = Recorder()
    recorder.watch(aws.codebuild, "StartBuild")
    for run_key in ("run-1", "run-1", "run-2"):  # moto pushes nothing: each attempt fails
        with pytest.raises(ImageBuildFailed):
            ensure(aws, containers, run_key=run_key, sleep=lambda s: None)
    first, retry, other = (c["idempotencyToken"] for c in recorder.calls["StartBuild"])
    assert first == retry != other


# ---------------------------------------------------------------- Stubber: CodeBuild's states


@dataclass
class FakeTime:
    """An injectable clock whose sleeps advance it, noting each sleep in a shared timeline."""

    timeline: list[str]
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.timeline.append(f"sleep {seconds:g}")
        self.now += seconds


class Timeline(logging.Handler):
    def __init__(self, timeline: list[str]) -> None:
        super().__init__()
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self.timeline.append(record.getMessage())


def build(status: str, **extra: Any) -> dict[str, Any]:
    return {"builds": [{"id": BUILD_ID, "projectName": PROJECT, "buildStatus": status,
                        "buildComplete": status != "IN_PROGRESS", **extra}]}


def events(*lines: str) -> list[dict[str, Any]]:
    return [{"timestamp": 1_700_000_000_000 + i, "message": line, "ingestionTime": 1}
            for i, line in enumerate(lines)]


def page(lines: list[dict[str, Any]], token: str) -> dict[str, Any]:
    return {"events": lines, "nextForwardToken": token, "nextBackwardToken": "b/0"}


@pytest.fixture()
def stubbed(aws: Clients, containers: Path) -> Iterator[tuple[Clients, Stubber, Stubber]]:
    """Moto's ECR and S3 with only ``train`` missing; CodeBuild and Logs stubbed."""
    for step in STEPS:
        if step != "train":
            push(aws, f"sagepipe-{step}", content_tag(containers / step))
    codebuild = boto3.client("codebuild", region_name=REGION)
    logs = boto3.client("logs", region_name=REGION)
    with Stubber(codebuild) as cb_stub, Stubber(logs) as logs_stub:
        cb_stub.add_response("start_build", {"build": build("IN_PROGRESS")["builds"][0]},
                             {"projectName": PROJECT, "sourceTypeOverride": "S3",
                              "sourceLocationOverride": ANY,
                              "environmentVariablesOverride": ANY,
                              "privilegedModeOverride": True, "idempotencyToken": ANY})
        yield replace(aws, codebuild=codebuild, logs=logs), cb_stub, logs_stub


def test_failed_build_raises_with_the_phase_message_and_streams_its_log(
        stubbed: tuple[Clients, Stubber, Stubber], containers: Path) -> None:
    clients, cb_stub, logs_stub = stubbed
    where = {"groupName": GROUP, "streamName": STREAM}
    read = {"logGroupName": GROUP, "logStreamName": STREAM, "startFromHead": True}
    message = ("Error while executing command: docker build --provenance=false --sbom=false "
               "--tag \"${uri}\" "
               "\"${CODEBUILD_SRC_DIR}/${folder}\". Reason: exit status 1")
    # poll 1: running, two lines so far (then CloudWatch repeats the token: end of stream)
    cb_stub.add_response("batch_get_builds", build("IN_PROGRESS", logs=where), {"ids": [BUILD_ID]})
    logs_stub.add_response("get_log_events", page(events("building train", "Step 1/4"), "f/2"),
                           read)
    logs_stub.add_response("get_log_events", page([], "f/2"), {**read, "nextToken": "f/2"})
    # poll 2: still running, nothing new
    cb_stub.add_response("batch_get_builds", build("IN_PROGRESS", logs=where), {"ids": [BUILD_ID]})
    logs_stub.add_response("get_log_events", page([], "f/2"), {**read, "nextToken": "f/2"})
    # poll 3: failed in BUILD; the last line arrives with it
    phases = [{"phaseType": "PRE_BUILD", "phaseStatus": "SUCCEEDED",
               "contexts": [{"statusCode": "", "message": ""}]},
              {"phaseType": "BUILD", "phaseStatus": "FAILED",
               "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": message}]},
              {"phaseType": "COMPLETED"}]
    cb_stub.add_response("batch_get_builds",
                         build("FAILED", logs=where, phases=phases, currentPhase="COMPLETED"),
                         {"ids": [BUILD_ID]})
    logs_stub.add_response("get_log_events", page(events("ERROR: pip install failed"), "f/3"),
                           {**read, "nextToken": "f/2"})
    logs_stub.add_response("get_log_events", page([], "f/3"), {**read, "nextToken": "f/3"})

    timeline: list[str] = []
    fake = FakeTime(timeline)
    log = logging.getLogger("test.images.failed")
    log.addHandler(Timeline(timeline))
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(ImageBuildFailed) as failed:
            ensure_images(clients, folders={n: containers / n for n in STEPS},
                          repository_prefix="sagepipe",
                          build_project=PROJECT, artifacts_bucket=BUCKET,
                          artifacts_prefix="pipeline", log=log, clock=fake.clock,
                          sleep=fake.sleep)
    finally:
        log.handlers.clear()

    assert f"{BUILD_ID} ended FAILED" in str(failed.value)
    assert f"BUILD phase FAILED (COMMAND_EXECUTION_ERROR: {message})" in str(failed.value)
    assert "PRE_BUILD" not in str(failed.value)
    cb_stub.assert_no_pending_responses()  # and no stop_build: nothing was left unstubbed
    logs_stub.assert_no_pending_responses()
    # lines reach the log while the build runs, not only at the end
    build_lines = [t for t in timeline if t.startswith(("[codebuild]", "sleep"))]
    assert build_lines == ["[codebuild] building train", "[codebuild] Step 1/4", "sleep 5",
                           "sleep 7.5", "[codebuild] ERROR: pip install failed"]


def test_build_outliving_the_timeout_is_stopped(stubbed: tuple[Clients, Stubber, Stubber],
                                                containers: Path) -> None:
    clients, cb_stub, _ = stubbed  # the logs Stubber has nothing queued: no log reads
    for _ in range(4):  # at t = 0, 5, 12.5 and 20 s (the sleep is cut to the timeout)
        cb_stub.add_response("batch_get_builds", build("IN_PROGRESS"), {"ids": [BUILD_ID]})
    cb_stub.add_response("stop_build", {"build": build("STOPPED")["builds"][0]}, {"id": BUILD_ID})
    fake = FakeTime([])

    with pytest.raises(ImageBuildFailed, match=r"still running after 20 s.*it was stopped"):
        ensure(clients, containers, timeout=20.0, clock=fake.clock, sleep=fake.sleep)

    cb_stub.assert_no_pending_responses()  # the stop_build was sent
    assert fake.slept == [5.0, 7.5, 7.5]


def test_interrupted_wait_stops_the_build(stubbed: tuple[Clients, Stubber, Stubber],
                                          containers: Path) -> None:
    clients, cb_stub, _ = stubbed
    cb_stub.add_response("batch_get_builds", build("IN_PROGRESS"), {"ids": [BUILD_ID]})
    cb_stub.add_response("stop_build", {"build": build("STOPPED")["builds"][0]}, {"id": BUILD_ID})

    def cancelled(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure(clients, containers, sleep=cancelled)
    cb_stub.assert_no_pending_responses()


def count_stops(clients: Clients) -> list[dict[str, Any]]:
    stops: list[dict[str, Any]] = []
    clients.codebuild.meta.events.register(  # fires before the Stubber answers
        "provide-client-params.codebuild.StopBuild", lambda params, **_: stops.append(params))
    return stops


def test_a_failed_waiter_leaves_the_build_running(stubbed: tuple[Clients, Stubber, Stubber],
                                                  containers: Path) -> None:
    clients, cb_stub, _ = stubbed
    stops = count_stops(clients)
    cb_stub.add_client_error("batch_get_builds", "AccessDeniedException", "not allowed",
                             http_status_code=400, expected_params={"ids": [BUILD_ID]})

    with pytest.raises(ClientError, match="AccessDenied"):
        ensure(clients, containers, sleep=lambda s: None)
    # a retried task finds the images this build pushes (or re-attaches by token)
    assert stops == []
    cb_stub.assert_no_pending_responses()


def test_a_failed_build_whose_images_another_build_pushed_is_not_an_error(
        stubbed: tuple[Clients, Stubber, Stubber], aws: Clients, containers: Path) -> None:
    clients, cb_stub, _ = stubbed
    tag = content_tag(containers / "train")
    phases = [{"phaseType": "BUILD", "phaseStatus": "FAILED", "contexts": [
        {"statusCode": "COMMAND_EXECUTION_ERROR", "message": "tag already exists"}]}]
    cb_stub.add_response("batch_get_builds", build("IN_PROGRESS"), {"ids": [BUILD_ID]})
    cb_stub.add_response("batch_get_builds", build("FAILED", phases=phases), {"ids": [BUILD_ID]})
    pushed: list[str] = []

    def meanwhile(seconds: float) -> None:  # an earlier attempt's build pushes the same tag
        pushed.append(push(aws, "sagepipe-train", tag))

    refs = ensure(clients, containers, sleep=meanwhile)
    assert refs["train"].digest == pushed[0] and refs["train"].built


# ---------------------------------------------------------------- the buildspec


def test_buildspec_is_a_codebuild_0_2_spec_with_bash() -> None:
    spec = yaml.safe_load(BUILDSPEC.read_text())
    assert str(spec["version"]) == "0.2"
    assert spec["env"]["shell"] == "bash"  # pipefail and [[ ]] need bash, not sh
    for phase in ("pre_build", "build"):
        commands = spec["phases"][phase]["commands"]
        assert commands and all(isinstance(c, str) for c in commands)
    login = "\n".join(spec["phases"]["pre_build"]["commands"])
    assert "aws ecr get-login-password" in login and "docker login" in login


FAKE_AWS = r"""#!/usr/bin/env bash
echo "aws $*" >> "$FAKE_CALLS"
case "$1 $2" in
  "sts get-caller-identity") echo 123456789012 ;;
  "ecr get-login-password") echo secret-password ;;
  "ecr describe-images")
    while [ $# -gt 0 ]; do
      case "$1" in
        --repository-name) repo="$2"; shift ;;
        --image-ids) tag="${2#imageTag=}"; shift ;;
      esac
      shift
    done
    if [ -n "${FAKE_LOOKUP_ERROR:-}" ]; then
      echo "An error occurred ($FAKE_LOOKUP_ERROR) when calling the DescribeImages operation" >&2
      exit 254
    fi
    if [[ " ${FAKE_EXISTING:-} " == *" $repo:$tag "* ]]; then echo "$FAKE_DIGEST"; exit 0; fi
    echo "An error occurred (ImageNotFoundException) when calling the DescribeImages" \
         "operation: The image with imageId {imageTag:'$tag'} does not exist" >&2
    exit 254 ;;
  *) echo "fake aws: unexpected $*" >&2; exit 2 ;;
esac
"""

FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "docker $*" >> "$FAKE_CALLS"
case "$1" in
  login) [ "$(cat)" = secret-password ] || { echo "wrong password" >&2; exit 1; } ;;
  build)
    [ -z "${FAKE_BUILD_FAILS:-}" ] || { echo "ERROR: failed to solve" >&2; exit 1; }
    [ -f "${*: -1}/Dockerfile" ] || { echo "no Dockerfile in ${*: -1}" >&2; exit 1; } ;;
  push) echo "$2: digest: $FAKE_DIGEST size: 1234" ;;
  inspect) uri="${*: -1}"; echo "python@sha256:$(printf '%064d' 1) ${uri%:*}@$FAKE_DIGEST" ;;
  *) echo "fake docker: unexpected $*" >&2; exit 2 ;;
esac
"""


@dataclass
class BuildRun:
    returncode: int
    output: str
    calls: list[str]


def run_buildspec(source: Path, tmp_path: Path, images: str, **fakes: str) -> BuildRun:
    """Run the buildspec's commands as CodeBuild does: phase by phase in one bash, each
    command's exit status checked, the first failure ending the build."""
    spec = yaml.safe_load(BUILDSPEC.read_text())
    script = ["set +e"]
    for phase in ("install", "pre_build", "build", "post_build"):
        for command in (spec["phases"].get(phase) or {}).get("commands", []):
            script += [command, f'rc=$?; if [ "$rc" -ne 0 ]; then echo "[Container] {phase} '
                       'failed: exit status $rc" >&2; exit "$rc"; fi']
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("aws", FAKE_AWS), ("docker", FAKE_DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "CODEBUILD_SRC_DIR": str(source), "AWS_DEFAULT_REGION": REGION, "IMAGES": images,
           "FAKE_CALLS": str(calls), "FAKE_DIGEST": "sha256:" + "ab" * 32, **fakes}
    done = subprocess.run([str(shutil.which("bash")), "-c", "\n".join(script)], cwd=source,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    return BuildRun(done.returncode, done.stdout + done.stderr, calls.read_text().splitlines())


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture()
def sent(aws: Clients, containers: Path, tmp_path: Path) -> tuple[Path, str]:
    """The source folder and IMAGES of the request ensure_images really sent."""
    recorder, _, _ = start_build_for_changed_train(aws, containers)
    [request] = recorder.calls["StartBuild"]
    bucket, key = request["sourceLocationOverride"].split("/", 1)
    source = tmp_path / "src"
    with zipfile.ZipFile(io.BytesIO(aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())) \
            as archive:
        archive.extractall(source)
    return source, request["environmentVariablesOverride"][0]["value"]


@needs_bash
def test_buildspec_builds_and_pushes_what_the_request_names(sent: tuple[Path, str],
                                                            tmp_path: Path) -> None:
    source, images = sent
    tag = images.split(":")[-1]
    run = run_buildspec(source, tmp_path, images)

    assert run.returncode == 0, run.output
    uri = f"{REGISTRY}/sagepipe-train:{tag}"
    assert run.calls[0] == "aws sts get-caller-identity --query Account --output text"
    assert set(run.calls[1:3]) == {  # the two ends of one pipe: either may start first
        f"aws ecr get-login-password --region {REGION}",
        f"docker login --username AWS --password-stdin {REGISTRY}"}
    assert run.calls[3:] == [
        f"aws ecr describe-images --repository-name sagepipe-train --image-ids imageTag={tag} "
        "--query imageDetails[0].imageDigest --output text",
        # attestations off: SageMaker runs only Docker v2 manifests, not OCI indexes
        f"docker build --provenance=false --sbom=false --tag {uri} {source}/train",
        f"docker push {uri}",
        f"docker inspect --format {{{{join .RepoDigests \" \"}}}} {uri}",
    ]
    # the line the local CodeBuild writes too, with the digest of our repository
    assert PUSHED.findall(run.output) == [(REGISTRY, "sagepipe-train", tag,
                                           "sha256:" + "ab" * 32)]


@needs_bash
def test_buildspec_skips_a_tag_already_in_ecr(sent: tuple[Path, str], tmp_path: Path) -> None:
    source, images = sent
    run = run_buildspec(source, tmp_path, images, FAKE_EXISTING=images.split("=", 1)[1],
                        AWS_ACCOUNT_ID=ACCOUNT)
    assert run.returncode == 0, run.output
    assert not any(c.startswith(("docker build", "docker push", "aws sts")) for c in run.calls)
    assert f"exists {REGISTRY}/{images.split('=', 1)[1]} digest: sha256:" in run.output


@needs_bash
@pytest.mark.parametrize("fakes", [{"FAKE_BUILD_FAILS": "1"},
                                   {"FAKE_LOOKUP_ERROR": "AccessDeniedException"}])
def test_buildspec_fails_the_build_when_a_step_fails(sent: tuple[Path, str], tmp_path: Path,
                                                     fakes: dict[str, str]) -> None:
    source, images = sent
    run = run_buildspec(source, tmp_path, images, **fakes)
    assert run.returncode != 0
    assert "build failed" in run.output
    assert not any(c.startswith("docker push") for c in run.calls)
    assert not PUSHED.search(run.output)


@needs_bash
@pytest.mark.parametrize("images", ["", "train", "train=sagepipe-train", "missing=repo:c-1"])
def test_buildspec_refuses_a_bad_images_list_before_docker(sent: tuple[Path, str],
                                                           tmp_path: Path, images: str) -> None:
    source, _ = sent
    run = run_buildspec(source, tmp_path, images)
    assert run.returncode != 0
    assert "pre_build failed" in run.output
    assert not any(c.startswith("docker") for c in run.calls)


def test_an_image_sagemaker_cannot_run_is_refused_before_any_job(
        aws: Clients, containers: Path) -> None:
    """SageMaker refuses OCI manifests and image indexes ("Unsupported manifest media type",
    aws/amazon-sagemaker-feedback#180); BuildKit pushes an index when attestations are on."""
    tag = content_tag(containers / "train")
    aws.ecr.put_image(repositoryName="sagepipe-train", imageTag=tag, imageManifest=json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": []}))
    with pytest.raises(ImageBuildFailed, match=r"oci\.image\.index.*--provenance=false"):
        ensure_images(aws, folders={"train": containers / "train"}, repository_prefix="sagepipe",
                      build_project=PROJECT, artifacts_bucket=BUCKET, artifacts_prefix="pipeline",
                      log=logging.getLogger("test.images"))
