"""Step images: tag by content, build only what the registry lacks, use by digest.

The tag of a step's code folder (``containers/<name>/``, or the bundle made of the
user's own code, see :mod:`.stepsource`) is a hash of its files, so unchanged code is
never rebuilt: ``describe_images`` finds the tag and its digest. The missing
ones are built by one CodeBuild run (``buildspecs/build-images.yml``) whose
source is a zip of just those folders and whose ``IMAGES`` variable lists
``<folder>=<repository>:<tag>``. Jobs then reference ``<repository>@<digest>``,
which cannot move under them.

The wait polls ``batch_get_builds`` with capped backoff, copies the build's new
CloudWatch lines into the task log on every poll, and stops the build when it
outlives the timeout or when the wait itself is interrupted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel

from .data import parse_s3_uri
from .errors import ConfigError, ImageBuildFailed
from .framework import FrameworkCode, framework_image, stage_code
from .jobs import LogTail
from .runtime import Clients, RuntimeSettings, call_with_retry, get_clients, retry_transient
from .stepsource import code_files

__all__ = ["BUILDSPEC", "ImageRef", "build_images", "build_request", "content_tag",
           "ensure_images"]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Sent with every build, so the CodeBuild project needs no copy of it.
BUILDSPEC = Path(__file__).parent.parent / "buildspecs" / "build-images.yml"


class ImageRef(BaseModel):
    name: str
    repository: str
    tag: str
    digest: str
    uri: str  # <registry>/<repository>@<digest>; a framework image: AWS's, by tag
    built: bool  # built by this run (False: found in the registry)
    build_seconds: float | None = None  # built: the CodeBuild build's startTime to endTime
    framework: FrameworkCode | None = None  # image: framework: the code shipped with it


def framework_refs(clients: Clients, *, folders: Mapping[str, Path],
                   frameworks: Mapping[str, Mapping[str, str]], artifacts_uri: str,
                   region: str, instance_types: Mapping[str, str],
                   log: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, ImageRef]:
    """The framework steps' images: AWS's, with each step's code uploaded by content hash."""
    refs = {}
    for step, spec in frameworks.items():
        scope: Any = "inference" if step == "serve" else "training"
        uri = framework_image(spec["framework"], spec["version"], region,
                              instance_types[step], scope)
        code = stage_code(clients.s3, step=step, folder=folders[step],
                          entry_point=spec["entry_point"], framework=spec["framework"],
                          version=spec["version"], artifacts_uri=artifacts_uri, region=region)
        log.info("%s: %s with %s (%s)", step, uri, code.source_uri, code.entry_point)
        repository, _, tag = uri.split("/", 1)[1].partition(":")
        refs[step] = ImageRef(name=step, repository=repository, tag=tag, digest="", uri=uri,
                              built=False, framework=code)
    return refs


def content_tag(folder: Path) -> str:
    """A hash of the folder's relative paths and bytes (caches and bytecode excluded)."""
    h = hashlib.sha256()
    for path in code_files(folder):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return "c-" + h.hexdigest()[:20]


def _find(clients: Clients, repository: str, tag: str) -> str | None:
    try:
        found = clients.ecr.describe_images(repositoryName=repository,
                                            imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("ImageNotFoundException",
                                             "RepositoryNotFoundException"):
            return None
        raise
    details = found.get("imageDetails", [])
    if not details:
        return None
    media_type = details[0].get("imageManifestMediaType")
    if media_type is not None and media_type != DOCKER_MANIFEST:
        # SageMaker refuses OCI manifests and image indexes ("Unsupported manifest media
        # type", aws/amazon-sagemaker-feedback#180): say so now, not when a job starts
        raise ImageBuildFailed(
            f"Image {repository}:{tag} in ECR is a {media_type}; SageMaker runs only Docker "
            f"image manifests ({DOCKER_MANIFEST}). Build without attestations and with "
            "Docker media types (`docker build --provenance=false --sbom=false`, as "
            "buildspecs/build-images.yml does), delete the tag, and run again.")
    return str(details[0]["imageDigest"])


def _zip(folders: Mapping[str, Path], names: list[str]) -> bytes:
    """``<name>/<file>`` for each folder: the build's source, one folder per image."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            for path in code_files(folders[name]):
                info = zipfile.ZipInfo(f"{name}/{path.relative_to(folders[name]).as_posix()}",
                                       date_time=(1980, 1, 1, 0, 0, 0))  # reproducible zip
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def build_request(*, build_project: str, artifacts_bucket: str, artifacts_prefix: str,
                  tags: Mapping[str, str], repositories: Mapping[str, str],
                  buildspec: str | None, run_key: str | None) -> tuple[str, dict[str, Any]]:
    """(source zip key, the StartBuild request) for the images to build."""
    source_key = f"{artifacts_prefix.strip('/')}/builds/{'-'.join(tags.values())}"
    source_key = source_key.lstrip("/")[:900] + ".zip"
    images = " ".join(f"{n}={repositories[n]}:{tag}" for n, tag in tags.items())
    request: dict[str, Any] = {
        "projectName": build_project, "sourceTypeOverride": "S3",
        "sourceLocationOverride": f"{artifacts_bucket}/{source_key}",
        "environmentVariablesOverride": [{"name": "IMAGES", "value": images,
                                          "type": "PLAINTEXT"}],
        # docker build needs CodeBuild's privileged mode; without it the daemon is absent
        "privilegedModeOverride": True,
    }
    if buildspec is not None:
        request["buildspecOverride"] = buildspec
    # Prefect may retry this task while the build still runs: CodeBuild answers a repeated
    # token (valid 5 minutes) with the same build instead of a second one. The run key
    # keeps a new run from being handed an earlier run's failed build.
    request["idempotencyToken"] = hashlib.sha256(
        json.dumps([request, run_key], sort_keys=True).encode()).hexdigest()[:32]
    return source_key, request


def ensure_images(clients: Clients, *, folders: Mapping[str, Path], repository_prefix: str,
                  build_project: str, artifacts_bucket: str, artifacts_prefix: str,
                  log: logging.Logger | logging.LoggerAdapter[Any],
                  timeout: float = 3600.0, buildspec: str | None = None, run_key: str | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, ImageRef]:
    """Images of ``{name: folder}`` by digest, building the missing ones in one CodeBuild run.

    ``buildspec`` is sent inline (``buildspecOverride``); None uses the project's own.
    ``run_key`` (the flow run id) goes into CodeBuild's idempotency token, so a retried
    task re-attaches to its build while a new run starts a fresh one.
    """
    names = tuple(folders)
    missing = [str(folders[n] / "Dockerfile") for n in names
               if not (folders[n] / "Dockerfile").exists()]
    if missing:
        raise ConfigError(f"No Dockerfile: {', '.join(missing)}. Each step's folder needs one "
                          "(a step with its own source folder gets sagepipe's unless it "
                          "ships its own); set containers_dir or steps.<step>.source.")
    tags = {n: content_tag(folders[n]) for n in names}
    repos = {n: f"{repository_prefix}-{n}" for n in names}
    digests = {n: _find(clients, repos[n], tags[n]) for n in names}
    to_build = [n for n in names if digests[n] is None]
    build_seconds: float | None = None
    if to_build:
        source_key, request = build_request(
            build_project=build_project, artifacts_bucket=artifacts_bucket,
            artifacts_prefix=artifacts_prefix, tags={n: tags[n] for n in to_build},
            repositories={n: repos[n] for n in to_build}, buildspec=buildspec,
            run_key=run_key)
        clients.s3.put_object(Bucket=artifacts_bucket, Key=source_key,
                              Body=_zip(folders, to_build))
        log.info("Building %s with CodeBuild project %s", ", ".join(to_build), build_project)
        build_id = clients.codebuild.start_build(**request)["build"]["id"]
        log.info("Started image build %s", build_id)
        build = _wait_build(clients, build_id, log=log, timeout=timeout, clock=clock,
                            sleep=sleep)
        if build.get("startTime") and build.get("endTime"):  # what CodeBuild bills
            build_seconds = (build["endTime"] - build["startTime"]).total_seconds()
        digests.update({n: _find(clients, repos[n], tags[n]) for n in to_build})
        missing = [f"{repos[n]}:{tags[n]}" for n in to_build if digests[n] is None]
        if build["buildStatus"] != "SUCCEEDED":
            if missing:
                raise ImageBuildFailed(f"Image build {build_id} ended {build['buildStatus']}: "
                                       f"{_failure_reason(build)}. The build's log is in the flow "
                                       "run's logs.")
            # An earlier attempt's build, left running when its waiter failed, pushed the
            # same tags first; immutable tags then fail this push. The content is the same.
            log.warning("Image build %s ended %s, but every image it was to push is in the "
                        "registry (pushed by another build of the same content); using them",
                        build_id, build["buildStatus"])
        elif missing:
            raise ImageBuildFailed(f"Build {build_id} succeeded but {', '.join(missing)} "
                                   "is not in the registry; check the buildspec's push.")
        for n in to_build:
            log.info("Built %s:%s as %s", repos[n], tags[n], digests[n])
    registry = clients.ecr.describe_repositories(repositoryNames=[repos[names[0]]])
    host = registry["repositories"][0]["repositoryUri"].split("/", 1)[0]
    return {n: ImageRef(name=n, repository=repos[n], tag=tags[n], digest=str(digests[n]),
                        uri=f"{host}/{repos[n]}@{digests[n]}", built=n in to_build,
                        build_seconds=build_seconds if n in to_build else None)
            for n in names}


class _OneStream:
    """A logs client that lists exactly one stream, so LogTail can follow a build.

    LogTail finds a SageMaker job's streams by the prefix ``<job>/``; a CodeBuild
    build writes one stream, named by the build id's UUID part, which
    batch_get_builds reports. Paging (nextToken, CloudWatch repeating the token at
    the end of a stream, a stream not created yet) stays LogTail's job.
    """

    def __init__(self, logs: Any, stream: str) -> None:
        self.logs, self.stream = logs, stream

    def describe_log_streams(self, **_: Any) -> dict[str, Any]:
        return {"logStreams": [{"logStreamName": self.stream}]}

    def get_log_events(self, **params: Any) -> dict[str, Any]:
        return dict(self.logs.get_log_events(**params))


class _BuildLog:
    """Copies a build's new CloudWatch lines into the task log on every poll."""

    def __init__(self, clients: Clients, emit: Callable[[str], None], *,
                 log: logging.Logger | logging.LoggerAdapter[Any],
                 sleep: Callable[[float], None]) -> None:
        self.clients, self.emit, self.log, self.sleep = clients, emit, log, sleep
        self.tail: LogTail | None = None

    def poll(self, build: dict[str, Any]) -> None:
        if self.tail is None:
            # groupName/streamName appear once the build leaves the queue (and never
            # when the project has CloudWatch logs disabled).
            logs = build.get("logs") or {}
            group, stream = logs.get("groupName"), logs.get("streamName")
            if not group or not stream:
                return
            one = replace(self.clients, logs=_OneStream(self.clients.logs, stream))
            self.tail = LogTail(one, group, stream, self.emit, log=self.log, sleep=self.sleep)
        self.tail.poll()


_FIRST_POLL, _MAX_POLL, _FACTOR = 5.0, 30.0, 1.5
_FAILED_PHASE = ("FAILED", "FAULT", "TIMED_OUT", "STOPPED")


def _wait_build(clients: Clients, build_id: str, *,
                log: logging.Logger | logging.LoggerAdapter[Any], timeout: float,
                clock: Callable[[], float], sleep: Callable[[float], None]) -> dict[str, Any]:
    """The ended build: poll with capped backoff, tailing the log; stop the build on
    timeout or interruption."""
    tail = _BuildLog(clients, lambda line: log.info("[codebuild] %s", line.rstrip("\n")),
                     log=log, sleep=sleep)
    started, interval = clock(), _FIRST_POLL
    try:
        while True:
            found = call_with_retry(clients.codebuild.batch_get_builds, ids=[build_id],
                                    log=log, sleep=sleep)["builds"]
            if not found:
                raise ImageBuildFailed(f"Image build {build_id} disappeared while being "
                                       "watched; run the pipeline again.")
            build: dict[str, Any] = found[0]
            tail.poll(build)
            if build.get("buildComplete") or build["buildStatus"] != "IN_PROGRESS":
                return build
            waited = clock() - started
            if waited >= timeout:
                _stop_build(clients, build_id, log)
                raise ImageBuildFailed(f"Image build {build_id} still running after "
                                       f"{waited:.0f} s, the timeout; it was stopped. Its log "
                                       "is above; give the build more time if it needs it.")
            sleep(min(interval, max(timeout - waited, 0.0)))
            interval = min(interval * _FACTOR, _MAX_POLL)
    except Exception:
        # the waiter failed (network, AWS error), not the build: leave it running, so the
        # retried task finds its images pushed, or re-attaches through the token
        raise
    except BaseException:
        # interrupted: a cancelled flow run (TerminationSignal), Ctrl-C
        try:
            if _stop_build(clients, build_id, log):
                log.warning("Stopped image build %s because its wait was interrupted",
                            build_id)
        except Exception:  # never mask the interruption itself
            log.exception("Could not stop image build %s", build_id)
        raise


def _failure_reason(build: dict[str, Any]) -> str:
    """The failing phases with CodeBuild's context messages (e.g. the command's exit status)."""
    reasons = []
    for phase in build.get("phases", []):
        if phase.get("phaseStatus") not in _FAILED_PHASE:
            continue
        messages = [f"{c['statusCode']}: {c['message']}" if c.get("statusCode") else c["message"]
                    for c in phase.get("contexts", []) if c.get("message")]
        reasons.append(f"{phase['phaseType']} phase {phase['phaseStatus']}"
                       + (f" ({'; '.join(messages)})" if messages else ""))
    return "; ".join(reasons) or "no phase reported a reason"


def _stop_build(clients: Clients, build_id: str,
                log: logging.Logger | logging.LoggerAdapter[Any]) -> bool:
    try:
        clients.codebuild.stop_build(id=build_id)
    except ClientError as exc:  # it may have ended between the poll and the stop
        log.warning("Could not stop image build %s: %s", build_id, exc)
        return False
    return True


@task(name="build-images", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def build_images(runtime: RuntimeSettings, folders: dict[str, str], repository_prefix: str,
                 build_project: str, artifacts_uri: str,
                 frameworks: dict[str, dict[str, str]] | None = None,
                 instance_types: dict[str, str] | None = None) -> dict[str, ImageRef]:
    """Images for every step's folder, by digest; only changed folders are built.

    ``frameworks``: the steps on AWS's framework images (``{step: framework, version,
    entry_point}``): their code is uploaded, nothing is built for them.
    """
    bucket, prefix = parse_s3_uri(artifacts_uri)
    clients = get_clients(runtime)
    frameworks = frameworks or {}
    refs = framework_refs(clients, folders={n: Path(f) for n, f in folders.items()},
                          frameworks=frameworks, artifacts_uri=artifacts_uri,
                          region=runtime.region, instance_types=instance_types or {},
                          log=get_run_logger()) if frameworks else {}
    to_build = {n: Path(f) for n, f in folders.items() if n not in frameworks}
    if not to_build:
        return refs
    built = ensure_images(clients, folders=to_build, repository_prefix=repository_prefix,
                          build_project=build_project, artifacts_bucket=bucket,
                          artifacts_prefix=prefix,
                          buildspec=BUILDSPEC.read_text() if BUILDSPEC.is_file() else None,
                          run_key=flow_run.get_id(), log=get_run_logger())
    return refs | built
