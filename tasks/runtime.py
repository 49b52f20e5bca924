"""The runtime seam: the one place that makes the clients tasks talk to.

``RuntimeSettings.kind`` picks the implementation:

* ``local`` — clients from :mod:`tasks.local` that really run jobs and endpoints
  on this machine, with state under ``state_dir``;
* ``aws`` — real boto3 clients from a prefect-aws ``AwsCredentials`` block (or the
  default credential chain), with botocore's ``standard`` retry mode and
  explicit connect/read timeouts.

Both have boto3's method names and response shapes, so every task runs
unchanged on either.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Clients", "RuntimeSettings", "get_clients", "runtime_identity"]


class RuntimeSettings(BaseModel):
    """Where the pipeline runs. Part of the pipeline config (and of cache keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "aws"] = Field("local", description="local: this machine; aws: AWS")
    region: str = Field("us-east-1", description="AWS region (the local runtime mimics one)")
    state_dir: str = Field(".sagepipe", description="local runtime: where its state lives")
    aws_credentials_block: str | None = Field(
        None, description="name of a prefect-aws AwsCredentials block; default credential "
        "chain if unset")
    connect_timeout: float = Field(10.0, gt=0, le=300)
    read_timeout: float = Field(70.0, gt=0, le=900)
    max_attempts: int = Field(5, ge=1, le=20, description="botocore standard-mode attempts")


@dataclass(frozen=True)
class Clients:
    s3: Any
    sagemaker: Any
    sagemaker_runtime: Any
    sns: Any
    logs: Any
    ecr: Any
    codebuild: Any
    local_root: Path | None = None


_CACHE: dict[RuntimeSettings, Clients] = {}
_LOCK = threading.Lock()


def get_clients(settings: RuntimeSettings) -> Clients:
    """Clients for ``settings``, made once per process."""
    with _LOCK:
        if settings not in _CACHE:
            _CACHE[settings] = _make(settings)
        return _CACHE[settings]


def _make(settings: RuntimeSettings) -> Clients:
    if settings.kind == "local":
        from tasks.local import local_clients

        root = Path(settings.state_dir).resolve()
        c = local_clients(root, region=settings.region)
        return Clients(s3=c["s3"], sagemaker=c["sagemaker"],
                       sagemaker_runtime=c["sagemaker-runtime"], sns=c["sns"], logs=c["logs"],
                       ecr=c["ecr"], codebuild=c["codebuild"], local_root=root)
    import boto3
    from botocore.config import Config

    config = Config(region_name=settings.region,
                    retries={"mode": "standard", "max_attempts": settings.max_attempts},
                    connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    if settings.aws_credentials_block:
        from prefect_aws import AwsCredentials

        block: Any = AwsCredentials.load(settings.aws_credentials_block)
        session = block.get_boto3_session()
    else:
        session = boto3.Session(region_name=settings.region)

    def client(name: str) -> Any:
        return session.client(name, config=config)  # type: ignore[call-overload]

    return Clients(s3=client("s3"), sagemaker=client("sagemaker"),
                   sagemaker_runtime=client("sagemaker-runtime"), sns=client("sns"),
                   logs=client("logs"), ecr=client("ecr"), codebuild=client("codebuild"))


def runtime_identity(settings: RuntimeSettings) -> str:
    """Names the store behind cached results, so a wiped local state is never a cache hit."""
    if settings.kind == "local":
        marker = Path(settings.state_dir).resolve() / "instance-id"
        marker.parent.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text(uuid.uuid4().hex)
        return f"local:{marker.read_text().strip()}"
    return f"aws:{settings.region}"


def is_not_found(exc: BaseException) -> bool:
    """SageMaker says 'not found' as a ValidationException whose message says so."""
    response: dict[str, Any] = getattr(exc, "response", {}) or {}
    error = response.get("Error", {})
    message = str(error.get("Message", ""))
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and (
        "not found" in message.lower() or "could not find" in message.lower()
        or "does not exist" in message.lower())


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry infrastructure hiccups, not the pipeline's verdicts.

    A bad config, bad data, a crashing training script or a rejected deploy fails
    the same way on every try; a dropped connection or a lost job runner may not.
    """
    from .errors import JobFailed, PipelineError

    try:
        state.result()
    except JobFailed as exc:
        reason = exc.reason or ""
        return reason.startswith(("InternalServerError", "CapacityError"))
    except PipelineError:
        return False
    except Exception:
        return True
    return False
