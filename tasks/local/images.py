"""Local ECR and CodeBuild: an image is an immutable snapshot of a container folder.

``start_build`` takes the same request the AWS runtime sends to CodeBuild: the
source is a zip of ``containers/`` in the (local) object store and the
environment variable ``IMAGES`` lists ``<folder>=<repository>:<tag>`` pairs. The
local build unpacks each folder into ``<root>/images/<repository>/<digest>/`` and
tags it, so ``describe_images`` then finds it exactly as ECR would after a push.
Jobs and endpoints refer to images by digest; :func:`resolve_image` maps an image
URI back to its snapshot folder.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .common import ACCOUNT, LocalClient, arn, metadata, now, to_datetime
from .pyenv import interpreter
from .s3 import LocalS3
from .state import StateStore
from .validation import client_error

__all__ = ["LocalCodeBuild", "LocalECR", "registry_host", "resolve_image"]


def registry_host(region: str) -> str:
    return f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com"


def folder_digest(folder: Path) -> str:
    """sha256 over relative paths and bytes: the local stand-in for a manifest digest."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


# AWS's prebuilt SageMaker images (image: framework), in any region and version
FRAMEWORK_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
                             r"sagemaker-(scikit-learn|xgboost):[\w.-]+$")
FRAMEWORK_FOLDER = Path(__file__).parent / "framework_image"


def resolve_image(state: StateStore, image_uri: str) -> Path:
    """The snapshot folder of ``<registry>/<repository>@sha256:...`` or ``...:<tag>``; AWS's
    framework images resolve to the local stand-in (:mod:`.framework`)."""
    if FRAMEWORK_IMAGE.match(image_uri):
        return FRAMEWORK_FOLDER
    repo_part = image_uri.split("/", 1)[-1]
    if "@" in repo_part:
        repository, digest = repo_part.split("@", 1)
        doc = state.get("image", f"{repository}@{digest}")
    else:
        repository, _, tag = repo_part.partition(":")
        tag_doc = state.get("image-tag", f"{repository}:{tag or 'latest'}")
        doc = state.get("image", f"{repository}@{tag_doc['digest']}") if tag_doc else None
    if doc is None:
        raise LookupError(
            f"Image {image_uri} is not in the local registry; run the pipeline's image step "
            "(or `sagepipe run`) so it is built first."
        )
    return Path(doc["path"])


class LocalECR(LocalClient):
    service = "ecr"

    def __init__(self, state: StateStore, *, region: str) -> None:
        super().__init__(region=region)
        self.state = state

    def create_repository(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateRepository", params)
        name = params["repositoryName"]
        doc = self._repository_doc(name)
        if not self.state.create("ecr-repository", name, doc):
            raise client_error("CreateRepository", "RepositoryAlreadyExistsException",
                               f"The repository with name '{name}' already exists in the "
                               f"registry with id '{ACCOUNT}'")
        return {"repository": self._repository_shape(doc), **metadata()}

    def describe_repositories(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeRepositories", params)
        names = params.get("repositoryNames")
        docs = self.state.list("ecr-repository")
        if names:
            found = {d["repositoryName"] for d in docs}
            missing = [n for n in names if n not in found]
            if missing:
                raise client_error("DescribeRepositories", "RepositoryNotFoundException",
                                   f"The repository with name '{missing[0]}' does not exist in "
                                   f"the registry with id '{ACCOUNT}'")
            docs = [d for d in docs if d["repositoryName"] in names]
        return {"repositories": [self._repository_shape(d) for d in docs], **metadata()}

    def describe_images(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeImages", params)
        repository = params["repositoryName"]
        if self.state.get("ecr-repository", repository) is None:
            raise client_error("DescribeImages", "RepositoryNotFoundException",
                               f"The repository with name '{repository}' does not exist in "
                               f"the registry with id '{ACCOUNT}'")
        details = []
        for image_id in params.get("imageIds") or []:
            digest = image_id.get("imageDigest")
            if digest is None and "imageTag" in image_id:
                tag_doc = self.state.get("image-tag", f"{repository}:{image_id['imageTag']}")
                digest = tag_doc["digest"] if tag_doc else None
            doc = self.state.get("image", f"{repository}@{digest}") if digest else None
            if doc is None:
                raise client_error("DescribeImages", "ImageNotFoundException",
                                   f"The image with imageId {image_id} does not exist within "
                                   f"the repository with name '{repository}' in the registry "
                                   f"with id '{ACCOUNT}'")
            details.append({
                "registryId": ACCOUNT, "repositoryName": repository,
                "imageDigest": doc["digest"], "imageTags": doc["tags"],
                # a local image is a folder: it stands for a Docker v2 manifest
                "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "imagePushedAt": to_datetime(doc["pushed"]),
                "imageSizeInBytes": doc["size"],
            })
        return {"imageDetails": details, **metadata()}

    def _repository_doc(self, name: str) -> dict[str, Any]:
        return {"repositoryName": name, "created": now(),
                "repositoryArn": arn(self.region, "ecr", f"repository/{name}")}

    def _repository_shape(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"repositoryArn": doc["repositoryArn"], "registryId": ACCOUNT,
                "repositoryName": doc["repositoryName"],
                "repositoryUri": f"{registry_host(self.region)}/{doc['repositoryName']}",
                "createdAt": to_datetime(doc["created"]), "imageTagMutability": "IMMUTABLE"}

    def push(self, repository: str, tag: str, folder: Path, root: Path) -> str:
        """Snapshot ``folder`` as ``repository:tag``; returns the digest (tags are immutable)."""
        if self.state.get("ecr-repository", repository) is None:
            self.state.create("ecr-repository", repository, self._repository_doc(repository))
        digest = folder_digest(folder)
        existing = self.state.get("image-tag", f"{repository}:{tag}")
        if existing is not None:
            if existing["digest"] != digest:
                raise client_error("PutImage", "ImageTagAlreadyExistsException",
                                   f"The image tag '{tag}' already exists in the '{repository}' "
                                   "repository and cannot be overwritten because the tag is "
                                   "immutable.")
            return digest
        target = root / "images" / repository / digest.replace(":", "-")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent))
            shutil.copytree(folder, staging / "c")
            try:
                (staging / "c").rename(target)
            except OSError:  # another process pushed the same digest first
                if not target.exists():
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        self.state.put("image", f"{repository}@{digest}", {
            "digest": digest, "tags": [tag], "path": str(target), "pushed": now(), "size": size})
        self.state.put("image-tag", f"{repository}:{tag}", {"digest": digest})
        return digest


class LocalCodeBuild(LocalClient):
    """Builds run synchronously inside ``start_build``; the build log goes to local logs."""

    service = "codebuild"

    def __init__(self, root: Path, state: StateStore, s3: LocalS3, ecr: LocalECR, *,
                 region: str) -> None:
        super().__init__(region=region)
        self.root, self.state, self.s3, self.ecr = root, state, s3, ecr

    def start_build(self, **params: Any) -> dict[str, Any]:
        self._validate("StartBuild", params)
        project = params["projectName"]
        build_number = self.state.next_value(f"codebuild:{project}")
        build_id = f"{project}:{build_number:08d}"
        env = {v["name"]: v["value"] for v in params.get("environmentVariablesOverride", [])}
        started = now()
        lines: list[str] = []
        status, reason = "SUCCEEDED", None
        try:
            source = params.get("sourceLocationOverride")
            if params.get("sourceTypeOverride") != "S3" or not source:
                raise ValueError("the local CodeBuild builds from an S3 zip: set "
                                 "sourceTypeOverride='S3' and sourceLocationOverride")
            bucket, _, key = source.partition("/")
            blob = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            with tempfile.TemporaryDirectory() as tmp, \
                    zipfile.ZipFile(io.BytesIO(blob)) as archive:
                archive.extractall(tmp)
                for item in env.get("IMAGES", "").split():
                    folder, _, ref = item.partition("=")
                    repository, _, tag = ref.partition(":")
                    # what the Dockerfile's pip install bakes into the image, before the
                    # push: a requirement pip cannot install fails the build, no image
                    python = interpreter(Path(tmp) / folder, self.root, name=folder)
                    if python != sys.executable:
                        lines.append(f"{folder}: requirements.txt installed into {python}")
                    digest = self.ecr.push(repository, tag, Path(tmp) / folder, self.root)
                    lines.append(f"pushed {registry_host(self.region)}/{repository}:{tag} "
                                 f"digest: {digest}")
        except Exception as exc:  # a failed build is a FAILED status, as in CodeBuild
            status, reason = "FAILED", f"{type(exc).__name__}: {exc}"
            lines.append(f"build failed: {reason}")
        log_group, stream = f"/aws/codebuild/{project}", build_id.split(":", 1)[1]
        logs_dir = self.root / "logs" / log_group.strip("/")
        logs_dir.mkdir(parents=True, exist_ok=True)
        with open(logs_dir / f"{stream}.log", "a") as fh:
            for line in lines:
                fh.write(f"{int(now() * 1000)}\t{line}\n")
        doc = {"id": build_id, "arn": arn(self.region, "codebuild", f"build/{build_id}"),
               "buildNumber": build_number, "projectName": project, "buildStatus": status,
               "currentPhase": "COMPLETED", "startTime": started, "endTime": now(),
               "reason": reason, "logs": {"groupName": log_group, "streamName": stream},
               "environmentVariables": params.get("environmentVariablesOverride", [])}
        self.state.put("codebuild-build", build_id, doc)
        return {"build": self._shape(doc), **metadata()}

    def batch_get_builds(self, **params: Any) -> dict[str, Any]:
        self._validate("BatchGetBuilds", params)
        builds, missing = [], []
        for build_id in params["ids"]:
            doc = self.state.get("codebuild-build", build_id)
            if doc is None:
                missing.append(build_id)
            else:
                builds.append(self._shape(doc))
        return {"builds": builds, "buildsNotFound": missing, **metadata()}

    def _shape(self, doc: dict[str, Any]) -> dict[str, Any]:
        phases = [{"phaseType": "BUILD", "phaseStatus": doc["buildStatus"]}]
        if doc["reason"]:
            phases[0]["contexts"] = [{"statusCode": "COMMAND_EXECUTION_ERROR",
                                      "message": doc["reason"]}]
        return {"id": doc["id"], "arn": doc["arn"], "buildNumber": doc["buildNumber"],
                "projectName": doc["projectName"], "buildStatus": doc["buildStatus"],
                "buildComplete": True, "currentPhase": doc["currentPhase"],
                "startTime": to_datetime(doc["startTime"]), "endTime": to_datetime(doc["endTime"]),
                "phases": phases, "logs": doc["logs"],
                "environment": {"environmentVariables": doc["environmentVariables"]}}
