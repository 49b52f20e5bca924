"""``image: framework``: a step's code on AWS's prebuilt SageMaker framework images.

No image build: the step's folder is uploaded as ``sourcedir.tar.gz`` (its S3 key is the
content hash, so unchanged code is never uploaded twice and the key in every request
changes with the code) and handed to the framework image the way the SageMaker Python
SDK hands it:

* training (``Framework`` estimator): the hyperparameters, JSON-encoded as the SDK encodes
  them, plus ``sagemaker_program`` (the entry point) and ``sagemaker_submit_directory``;
  the archive comes in as the ``code`` channel and the submit directory is its path in
  the container (``/opt/ml/input/data/code/sourcedir.tar.gz``), which is how the SDK
  does it for network-isolated jobs (sagepipe's default) and works without isolation too;
* processing (``FrameworkProcessor``): the archive as the ``code`` input, the SDK's
  ``runproc.sh`` as the ``entrypoint`` input and ``ContainerEntrypoint``
  ``["/bin/bash", ".../runproc.sh"]``, which unpacks the archive, installs its
  ``requirements.txt`` and runs the entry point with the job's arguments;
* serving (``FrameworkModel``): ``SAGEMAKER_PROGRAM``, ``SAGEMAKER_SUBMIT_DIRECTORY`` (the
  archive's S3 URI), ``SAGEMAKER_CONTAINER_LOG_LEVEL`` and ``SAGEMAKER_REGION`` in the
  model container's environment, for the inference toolkit's ``model_fn`` /
  ``input_fn`` / ``predict_fn`` / ``output_fn``.

Image URIs come from sagemaker-core's ``image_uris`` for the region, framework and version.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel

from .data import parse_s3_uri
from .errors import ConfigError
from .stepsource import code_files

__all__ = ["CODE_CHANNEL_ARCHIVE", "PROCESSING_STEPS", "RUNPROC", "FrameworkCode",
           "framework_image", "runproc", "source_archive", "stage_code",
           "training_hyperparameters"]

Framework = Literal["sklearn", "xgboost"]
DEFAULT_VERSION: dict[str, str] = {"sklearn": "1.9-0", "xgboost": "3.2-0"}
CODE_CHANNEL_ARCHIVE = "/opt/ml/input/data/code/sourcedir.tar.gz"
PROCESSING_CODE = "/opt/ml/processing/input/code"
PROCESSING_ENTRYPOINT = "/opt/ml/processing/input/entrypoint"
PROCESSING_STEPS = ("preprocess", "evaluate")
LOG_LEVEL = "20"  # logging.INFO, the SDK's default container_log_level
# The SageMaker Python SDK's FrameworkProcessor entry script, as it generates it.
RUNPROC = """#!/bin/bash

cd /opt/ml/processing/input/code/
tar -xzf sourcedir.tar.gz

# Exit on any error. SageMaker uses error code to mark failed job.
set -e

if [[ -f 'requirements.txt' ]]; then
    # Some py3 containers has typing, which may breaks pip install
    pip uninstall --yes typing

    pip install -r requirements.txt
fi

{command} {entry_point} "$@"
"""


class FrameworkCode(BaseModel):
    """A step's code staged for a framework image."""

    framework: str
    version: str
    entry_point: str
    source_uri: str  # s3://.../sourcedir.tar.gz
    runproc_uri: str  # s3://.../runproc.sh (processing)
    region: str

    def serving_environment(self) -> dict[str, str]:
        return {"SAGEMAKER_PROGRAM": self.entry_point,
                "SAGEMAKER_SUBMIT_DIRECTORY": self.source_uri,
                "SAGEMAKER_CONTAINER_LOG_LEVEL": LOG_LEVEL, "SAGEMAKER_REGION": self.region}


def framework_image(framework: str, version: str, region: str, instance_type: str,
                    scope: Literal["training", "inference"]) -> str:
    """AWS's image URI for the framework, from sagemaker-core's image_uris tables."""
    os.environ.setdefault("AWS_DEFAULT_REGION", region)  # some sagemaker-core modules need it
    from sagemaker.core import image_uris  # 2 s to import: only for framework steps

    try:
        return str(image_uris.retrieve(framework, region, version=version, py_version="py3"
                                       if framework == "sklearn" else None,
                                       instance_type=instance_type, image_scope=scope))
    except ValueError as exc:
        raise ConfigError(f"No SageMaker {framework} image {version!r} for {scope} in "
                          f"{region}: {exc}. Set steps.<step>.framework_version.") from None


def source_archive(folder: Path) -> bytes:
    """``sourcedir.tar.gz`` of the folder: reproducible (sorted, no times or owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for path in code_files(folder):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), path.stat().st_mode & 0o755, 0
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def runproc(entry_point: str, command: str = "python3") -> str:
    return RUNPROC.format(command=command, entry_point=entry_point)


def training_hyperparameters(user: dict[str, Any], code: FrameworkCode) -> dict[str, str]:
    """What the SDK's Framework estimator sends: every value JSON-encoded, plus its own."""
    hps = {str(k): json.dumps(v) for k, v in user.items() if v is not None}
    hps.update(sagemaker_program=json.dumps(code.entry_point),
               sagemaker_submit_directory=json.dumps(CODE_CHANNEL_ARCHIVE),
               sagemaker_container_log_level=LOG_LEVEL,
               sagemaker_region=json.dumps(code.region))
    return hps


def code_prefix(artifacts_uri: str, step: str, archive: bytes, entry_point: str) -> str:
    digest = hashlib.sha256(archive + b"\0" + entry_point.encode()).hexdigest()[:20]
    return f"{artifacts_uri.rstrip('/')}/code/{step}-{digest}"


def stage_code(s3: Any, *, step: str, folder: Path, entry_point: str, framework: str,
               version: str, artifacts_uri: str, region: str) -> FrameworkCode:
    """Upload the step's archive and runproc.sh under a content-hash prefix (if absent)."""
    archive = source_archive(folder)
    prefix = code_prefix(artifacts_uri, step, archive, entry_point)
    objects = {"sourcedir.tar.gz": archive}
    if step in PROCESSING_STEPS:  # only a processing job starts from runproc.sh
        objects["runproc.sh"] = runproc(entry_point).encode()
    for name, body in objects.items():
        bucket, key = parse_s3_uri(f"{prefix}/{name}")
        if not _exists(s3, bucket, key):
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    return FrameworkCode(framework=framework, version=version, entry_point=entry_point,
                         source_uri=f"{prefix}/sourcedir.tar.gz",
                         runproc_uri=f"{prefix}/runproc.sh", region=region)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
