"""The runtime seam: the one place that makes the clients tasks talk to.

``RuntimeSettings.kind`` picks the implementation:

* ``local`` — clients from :mod:`tasks.local` that really run jobs and endpoints
  on this machine, with state under ``state_dir``;
* ``aws`` — real boto3 clients from a prefect-aws ``AwsCredentials`` block (or the
  default credential chain), with botocore's ``standard`` retry mode and
  explicit connect/read timeouts.

Both have boto3's method names and response shapes, so every task runs
unchanged on either. :func:`call_with_retry` is the one place that retries AWS
errors on top of botocore: throttling and 5xx only, for the long Describe waits.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["THROTTLING_CODES", "Clients", "RuntimeSettings", "call_with_retry", "get_clients",
           "is_transient", "runtime_identity"]

T = TypeVar("T")


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
    job_events: bool = Field(
        True, description="local runtime: a job that ends announces it to the Prefect API "
        "(what SageMaker's EventBridge event and the relay do on AWS); false is a disabled "
        "rule: waits fall back to their safety poll, suspended runs to the reconciler")


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
    application_autoscaling: Any = None  # endpoint autoscaling (tasks.scaling)


_CACHE: dict[RuntimeSettings, Clients] = {}
_LOCK = threading.Lock()


def get_clients(settings: RuntimeSettings) -> Clients:
    """Clients for ``settings``, made once per process.

    A relative ``state_dir`` is keyed by the folder it means now: the same settings run
    from another folder (another project) are other state, not the cached clients'.
    """
    key = settings
    if settings.kind == "local" and not Path(settings.state_dir).is_absolute():
        key = settings.model_copy(update={"state_dir": str(Path(settings.state_dir).resolve())})
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _make(key)
        return _CACHE[key]


def _make(settings: RuntimeSettings) -> Clients:
    if settings.kind == "local":
        from sagepipe.tasks.local import local_clients

        root = Path(settings.state_dir).resolve()
        c = local_clients(root, region=settings.region, job_events=settings.job_events)
        return Clients(s3=c["s3"], sagemaker=c["sagemaker"],
                       sagemaker_runtime=c["sagemaker-runtime"], sns=c["sns"], logs=c["logs"],
                       ecr=c["ecr"], codebuild=c["codebuild"], local_root=root,
                       application_autoscaling=c["application-autoscaling"])
    import boto3
    from botocore.config import Config

    config = Config(region_name=settings.region,
                    retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
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
                   logs=client("logs"), ecr=client("ecr"), codebuild=client("codebuild"),
                   application_autoscaling=client("application-autoscaling"))


def runtime_identity(settings: RuntimeSettings) -> str:
    """Names the store behind cached results, so a wiped local state is never a cache hit."""
    if settings.kind == "local":
        marker = Path(settings.state_dir).resolve() / "instance-id"
        marker.parent.mkdir(parents=True, exist_ok=True)
        ident = marker.read_text().strip() if marker.exists() else ""
        if not ident:
            ident = _write_once(marker, uuid.uuid4().hex)
        return f"local:{ident}"
    return f"aws:{settings.region}"


def _write_once(path: Path, text: str) -> str:
    """Give ``path`` the content ``text`` unless another process gave it one first; the
    content it has. Written whole to a temporary file, then renamed: a kill leaves it
    absent or complete, never empty (an empty id would name every wiped state alike)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails if a whole one is already there
    except FileExistsError:
        if not path.read_text().strip():  # an empty one, left by a version before this
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def is_not_found(exc: BaseException) -> bool:
    """SageMaker says 'not found' as a ValidationException whose message says so."""
    response: dict[str, Any] = getattr(exc, "response", {}) or {}
    error = response.get("Error", {})
    message = str(error.get("Message", ""))
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and (
        "not found" in message.lower() or "could not find" in message.lower()
        or "does not exist" in message.lower())


# The codes AWS services use for "slow down": botocore's standard-mode list without
# LimitExceededException and TransactionInProgressException, which SageMaker and
# others also use for quotas and conflicts that waiting a few seconds does not cure.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "RequestThrottledException",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "SlowDown",
    "EC2ThrottledException", "PriorRequestNotComplete",
})
# 5xx codes, for replies whose HTTP status was lost on the way (fakes, wrappers)
_SERVER_CODES = frozenset({"InternalFailure", "InternalError", "InternalServerError",
                           "ServiceUnavailable", "ServiceUnavailableException"})


def is_transient(exc: BaseException) -> bool:
    """True for throttling and AWS-side (5xx) errors: the only ones worth asking again."""
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return (code in THROTTLING_CODES or code in _SERVER_CODES
            or (isinstance(status, int) and status >= 500))


def call_with_retry(fn: Callable[..., T], /, *,
                    log: logging.Logger | logging.LoggerAdapter[Any],
                    attempts: int = 5, base: float = 1.0, cap: float = 20.0,
                    sleep: Callable[[float], None] = time.sleep, **params: Any) -> T:
    """``fn(**params)``, asking again after throttling or a 5xx, with full-jitter backoff.

    botocore's ``standard`` mode already retries each call a few times, but a wait
    that polls Describe for hours will meet a burst of throttling that outlasts
    those; the wait should slow down, not fail. Any other ``ClientError`` (and
    the last transient one) is raised unchanged.
    """
    attempt = 1
    while True:  # bounded: the last attempt returns or raises
        try:
            return fn(**params)
        except ClientError as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = random.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))
            log.warning("AWS answered %s to %s; asking again in %.1f s (retry %d of %d)",
                        exc.response.get("Error", {}).get("Code"), exc.operation_name, delay,
                        attempt, attempts - 1)
            sleep(delay)
            attempt += 1


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
