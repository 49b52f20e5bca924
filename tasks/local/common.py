"""Small pieces every local client shares: account, ARNs, times, response metadata."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .validation import validate_request

ACCOUNT = "000000000000"
"""The local runtime's account id (AWS's documentation placeholder)."""


def now() -> float:
    return time.time()


def to_datetime(epoch: float | None) -> dt.datetime | None:
    """boto3 returns timestamps as aware datetimes; state keeps epoch seconds."""
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def request_id() -> str:
    return str(uuid.uuid4())


def metadata(status: int = 200) -> dict[str, Any]:
    return {"ResponseMetadata": {"RequestId": request_id(), "HTTPStatusCode": status,
                                 "RetryAttempts": 0}}


def arn(region: str, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{resource}"


def pid_alive(pid: int | None) -> bool:
    """True while ``pid`` runs and is not a zombie waiting to be reaped."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # state is the field after the parenthesised command name
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


CALL_LOG_ENV = "SAGEPIPE_LOCAL_CALL_LOG"
"""A file every local API call is appended to, CloudTrail-like (time, pid, program,
service, operation, the resource named): what the waiting benchmark counts."""

_NAMED = ("TrainingJobName", "ProcessingJobName", "EndpointName", "logStreamName",
          "logStreamNamePrefix", "ResourceArn", "Bucket")


class LocalClient:
    """Base of the local clients: botocore validation on every call."""

    service: str = ""

    def __init__(self, *, region: str) -> None:
        self.region = region

    def _validate(self, operation: str, params: dict[str, Any]) -> None:
        validate_request(self.service, operation, params)
        log_call(self.service, operation, params)


def log_call(service: str, operation: str, params: dict[str, Any]) -> None:
    """Append the call to the CALL_LOG_ENV file, if one is set (before the call is made)."""
    trail = os.environ.get(CALL_LOG_ENV)
    if trail:
        named = next((str(params[k]) for k in _NAMED if k in params), "")
        if "Key" in params:  # S3: the object too
            named = f"{named}/{params['Key']}"
        program = Path(sys.argv[0]).name if sys.argv else ""
        with open(trail, "a", encoding="utf-8") as out:  # one short line: atomic append
            out.write(f"{time.time():.3f}\t{os.getpid()}\t{program}\t{service}\t"
                      f"{operation}\t{named}\n")
