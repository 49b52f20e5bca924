"""Step images: tag by content, build only what the registry lacks, use by digest.

The tag of ``containers/<name>/`` is a hash of its files, so unchanged code is
never rebuilt: ``describe_images`` finds the tag and its digest. The missing
ones are built by one CodeBuild run (``buildspecs/build-images.yml``) whose
source is a zip of just those folders and whose ``IMAGES`` variable lists
``<folder>=<repository>:<tag>``. Jobs then reference ``<repository>@<digest>``,
which cannot move under them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from pydantic import BaseModel

from .data import parse_s3_uri
from .errors import ConfigError, ImageBuildFailed
from .runtime import Clients, RuntimeSettings, get_clients, retry_transient

__all__ = ["ImageRef", "build_images", "content_tag", "ensure_images"]

STEPS = ("preprocess", "train", "evaluate", "serve")


class ImageRef(BaseModel):
    name: str
    repository: str
    tag: str
    digest: str
    uri: str  # <registry>/<repository>@<digest>
    built: bool  # built by this run (False: found in the registry)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def content_tag(folder: Path) -> str:
    """A hash of the folder's relative paths and bytes (caches and bytecode excluded)."""
    h = hashlib.sha256()
    for path in _files(folder):
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
    return str(details[0]["imageDigest"]) if details else None


def _zip(containers_dir: Path, names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            for path in _files(containers_dir / name):
                info = zipfile.ZipInfo(path.relative_to(containers_dir).as_posix(),
                                       date_time=(1980, 1, 1, 0, 0, 0))  # reproducible zip
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def ensure_images(clients: Clients, *, containers_dir: Path, repository_prefix: str,
                  build_project: str, artifacts_bucket: str, artifacts_prefix: str,
                  log: logging.Logger | logging.LoggerAdapter[Any],
                  timeout: float = 3600.0, names: tuple[str, ...] = STEPS,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, ImageRef]:
    missing_dirs = [n for n in names if not (containers_dir / n / "Dockerfile").exists()]
    if missing_dirs:
        raise ConfigError(f"{containers_dir} lacks {', '.join(missing_dirs)} (each step needs "
                          "a folder with a Dockerfile). Set containers_dir to the project's "
                          "containers/ folder.")
    tags = {n: content_tag(containers_dir / n) for n in names}
    repos = {n: f"{repository_prefix}-{n}" for n in names}
    digests = {n: _find(clients, repos[n], tags[n]) for n in names}
    to_build = [n for n in names if digests[n] is None]
    if to_build:
        source_key = f"{artifacts_prefix.strip('/')}/builds/{'-'.join(tags[n] for n in to_build)}"
        source_key = source_key.lstrip("/")[:900] + ".zip"
        clients.s3.put_object(Bucket=artifacts_bucket, Key=source_key,
                              Body=_zip(containers_dir, to_build))
        images = " ".join(f"{n}={repos[n]}:{tags[n]}" for n in to_build)
        log.info("Building %s with CodeBuild project %s", ", ".join(to_build), build_project)
        build = clients.codebuild.start_build(
            projectName=build_project, sourceTypeOverride="S3",
            sourceLocationOverride=f"{artifacts_bucket}/{source_key}",
            environmentVariablesOverride=[{"name": "IMAGES", "value": images,
                                           "type": "PLAINTEXT"}])["build"]
        _wait_build(clients, build["id"], log=log, timeout=timeout, sleep=sleep)
        for n in to_build:
            digests[n] = _find(clients, repos[n], tags[n])
            if digests[n] is None:
                raise ImageBuildFailed(f"Build {build['id']} succeeded but {repos[n]}:{tags[n]} "
                                       "is not in the registry; check the buildspec's push.")
    registry = clients.ecr.describe_repositories(repositoryNames=[repos[names[0]]])
    host = registry["repositories"][0]["repositoryUri"].split("/", 1)[0]
    return {n: ImageRef(name=n, repository=repos[n], tag=tags[n], digest=str(digests[n]),
                        uri=f"{host}/{repos[n]}@{digests[n]}", built=n in to_build)
            for n in names}


def _wait_build(clients: Clients, build_id: str, *,
                log: logging.Logger | logging.LoggerAdapter[Any], timeout: float,
                sleep: Callable[[float], None]) -> None:
    start, interval = time.monotonic(), 5.0
    while True:
        build = clients.codebuild.batch_get_builds(ids=[build_id])["builds"][0]
        if build.get("buildComplete") or build["buildStatus"] != "IN_PROGRESS":
            break
        if time.monotonic() - start > timeout:
            clients.codebuild.stop_build(id=build_id)
            raise ImageBuildFailed(f"Image build {build_id} still running after {timeout:.0f} s;"
                                   " it was stopped.")
        sleep(interval)
        interval = min(interval * 1.5, 30.0)
    logs = build.get("logs", {})
    if logs.get("groupName"):
        _copy_build_log(clients, logs["groupName"], logs["streamName"], log)
    if build["buildStatus"] != "SUCCEEDED":
        contexts = [c.get("message", "") for p in build.get("phases", [])
                    for c in p.get("contexts", []) if c.get("message")]
        raise ImageBuildFailed(f"Image build {build_id} ended {build['buildStatus']}: "
                               f"{'; '.join(contexts) or 'see the CodeBuild log'}")


def _copy_build_log(clients: Clients, group: str, stream: str,
                    log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    try:
        events = clients.logs.get_log_events(logGroupName=group, logStreamName=stream,
                                             startFromHead=True)["events"]
    except ClientError:
        return
    for event in events:
        log.info("[codebuild] %s", event["message"])


@task(name="build-images", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def build_images(runtime: RuntimeSettings, containers_dir: str, repository_prefix: str,
                 build_project: str, artifacts_uri: str) -> dict[str, ImageRef]:
    """Images for every step, by digest; only changed container folders are built."""
    bucket, prefix = parse_s3_uri(artifacts_uri)
    return ensure_images(get_clients(runtime), containers_dir=Path(containers_dir),
                         repository_prefix=repository_prefix, build_project=build_project,
                         artifacts_bucket=bucket, artifacts_prefix=prefix,
                         log=get_run_logger())
