"""SageMaker -> Prefect: the relay that turns job state changes into Prefect events.

Ships alone in a zip (``make relay``): standard library and boto3 only, nothing of
the project. Handler string: ``relay.handler``. The core, :func:`handle`, knows
nothing of Lambda, so the local runtime calls it directly with the events it builds
(EventBridge's envelope: ``source``, ``detail-type``, ``time``, ``detail``).

For each "SageMaker Training Job State Change", "SageMaker Processing Job State
Change" or "SageMaker Endpoint State Change" event:

1. find the flow run that owns the job: the ``sagepipe:flow-run-id`` tag, read from
   the event's ``Tags`` or, when the event carries none, from SageMaker's ListTags.
   No tag: not a sagepipe job, nothing to do (not an error);
2. POST the Prefect event (``sagemaker.training-job.completed`` ...) with the flow run
   as a related resource, so it shows in the run's event feed. Its id is derived from
   the job, status and LastModifiedTime: SageMaker may send one state change more
   than once, and Prefect stores an event id once;
3. on a terminal job status (Completed, Failed, Stopped), resume the flow run if it
   is suspended (Paused with reschedule, no input awaited): it re-enters from the
   top, where the finished job is re-attached by its deterministic name (only if it
   is suspended for this job: its pause key names the job). A run in
   any other state is left alone (resuming twice is a no-op). A run paused in
   process, or waiting for a person's input (manual approval), is never resumed here.

Only an unreachable or failing Prefect API raises (:class:`RelayError`), after
bounded retries of dropped connections, timeouts and 429/502/503/504 answers, and
never past the deadline: the invocation fails, Lambda retries it and then leaves it
in the dead-letter queue. The API key is never logged.

New data: an S3 "Object Created" event (the bucket sends its events to EventBridge;
the stack's rule passes only keys under ``datasets/``) becomes the Prefect event
``sagepipe.dataset.object-created`` on the resource ``aws.s3.object.<bucket>/<key>``
with the object's version id, size and etag - the event the ``sagepipe-data-arrived``
deployment's trigger waits for. Its id is derived from bucket, key and version, so a
duplicate is stored once. A key outside ``DATASET_PREFIX`` is ignored here too (the
pipeline's own writes, under ``pipeline/``, must never start a run). No AWS call.

Environment (Lambda):
    PREFECT_API_SECRET_ARN  Secrets Manager secret whose SecretString is JSON
                            {"api_url": "...", "api_key": "..."} (api_key may be empty)
    HTTP_TIMEOUT_SECONDS    per Prefect API request (default 10)
    DATASET_PREFIX          the keys whose new versions are announced (default datasets/)

AWS calls: secretsmanager:GetSecretValue, sagemaker:ListTags.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# boto3 is imported by the Lambda part below when it is first called: the local runtime's
# job runners call handle() at every job's end (with a ListTags of their own), the waiting
# run wakes on it, and boto3's import would be ~0.14 s of that (issue 16)

log = logging.getLogger("sagepipe.relay")
log.setLevel(logging.INFO)

FLOW_RUN_TAG = "sagepipe:flow-run-id"  # flows/pipeline.py run_tags puts it on every job
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
# detail-type -> (kind, name field, status field, ARN field)
_KINDS = {
    "SageMaker Training Job State Change":
        ("training", "TrainingJobName", "TrainingJobStatus", "TrainingJobArn"),
    "SageMaker Processing Job State Change":
        ("processing", "ProcessingJobName", "ProcessingJobStatus", "ProcessingJobArn"),
    "SageMaker Endpoint State Change":
        ("endpoint", "EndpointName", "EndpointStatus", "EndpointArn"),
}
MAX_REASON = 500
DEFAULT_TIMEOUT = 10.0
ATTEMPTS = 3
RETRY_BASE_SECONDS = 0.5
RETRY_STATUSES = frozenset({429, 502, 503, 504})
AWS_CALL_SECONDS = 14.0  # 2 attempts of at most 2 s to connect and 5 s to read
_ID_NAMESPACE = uuid.UUID("6f1b1c52-2c55-4c6e-9d4e-5a3f0a7d2e11")  # sagepipe relay events

_AWS: dict[str, Any] = {}
_SECRETS: dict[str, tuple[str, str]] = {}  # per container: one GetSecretValue per ARN


class RelayError(Exception):
    """Prefect could not be reached, or refused the relay: the invocation must fail."""


# ---------------------------------------------------------------- the event


def job_of(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(kind 'training'|'processing'|'endpoint', name, status) of a SageMaker state-change
    event; None if not one."""
    if not isinstance(event, dict) or event.get("source", "aws.sagemaker") != "aws.sagemaker":
        return None
    kind = _KINDS.get(str(event.get("detail-type")))
    detail = event.get("detail")
    if kind is None or not isinstance(detail, dict):
        return None
    name, status = detail.get(kind[1]), detail.get(kind[2])
    if not isinstance(name, str) or not name or not isinstance(status, str) or not status:
        return None
    return kind[0], name, status


def _arn(event: dict[str, Any]) -> str | None:
    kind = _KINDS[str(event.get("detail-type"))]
    arn = event["detail"].get(kind[3])
    if isinstance(arn, str) and arn:
        return arn
    resources = event.get("resources")
    if isinstance(resources, list) and resources and isinstance(resources[0], str):
        return resources[0]
    return None


def _failure_reason(detail: dict[str, Any]) -> str | None:
    """FailureReason, or a processing container's ExitMessage, cut to MAX_REASON."""
    for key in ("FailureReason", "ExitMessage"):
        value = detail.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_REASON]
    return None


def _occurred(event: dict[str, Any]) -> str:
    """The EventBridge event's ``time`` as ISO 8601 (AWS's own endpoint example gives
    epoch milliseconds as a string); now if it has none."""
    value = event.get("time")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        moment = datetime.fromtimestamp(float(value) / 1000.0, tz=UTC)
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, str) and value:
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def event_id(event: dict[str, Any]) -> str:
    """Deterministic in (job ARN or name, status, SecondaryStatus, LastModifiedTime)."""
    job = job_of(event)
    if job is None:
        raise ValueError("not a SageMaker job or endpoint state-change event")
    kind, name, status = job
    detail = event["detail"]
    key = json.dumps([_arn(event) or f"{kind}/{name}", status,
                      str(detail.get("SecondaryStatus") or ""),
                      str(detail.get("LastModifiedTime") or "")])
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def prefect_event(event: dict[str, Any], flow_run_id: str | None) -> dict[str, Any]:
    """The Prefect event (one item of the POST /api/events body) for a SageMaker
    state-change event. Labels are strings (Prefect's Resource is a str -> str map)."""
    job = job_of(event)
    if job is None:
        raise ValueError("not a SageMaker job or endpoint state-change event")
    kind, name, status = job
    detail = event["detail"]
    noun = "endpoint" if kind == "endpoint" else f"{kind}-job"
    reason = _failure_reason(detail)
    resource = {"prefect.resource.id": f"aws.sagemaker.{noun}.{name}",
                "prefect.resource.name": name, "sagemaker.status": status}
    if reason:
        resource["sagemaker.failure-reason"] = reason
    secondary = detail.get("SecondaryStatus")
    return {
        "id": event_id(event),
        "occurred": _occurred(event),
        "event": f"sagemaker.{noun}.{status.lower()}",
        "resource": resource,
        "related": [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                     "prefect.resource.role": "flow-run"}] if flow_run_id else [],
        "payload": {"detail-type": event.get("detail-type"), "status": status,
                    "secondary_status": secondary if isinstance(secondary, str) else None,
                    "failure_reason": reason, "arn": _arn(event)},
    }


DATASET_EVENT = "sagepipe.dataset.object-created"
DEFAULT_DATASET_PREFIX = "datasets/"


def object_of(event: dict[str, Any]) -> dict[str, Any] | None:
    """{bucket, key, version_id, size, etag} of an S3 "Object Created" event; None if not
    one (AWS's example: S3 user guide, "EventBridge event message structure")."""
    if not isinstance(event, dict) or event.get("source") != "aws.s3" \
            or event.get("detail-type") != "Object Created":
        return None
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return None
    holder = detail.get("bucket")
    bucket = holder.get("name") if isinstance(holder, dict) else None
    found = detail.get("object")
    obj: dict[str, Any] = found if isinstance(found, dict) else {}
    key = obj.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        return None
    version = obj.get("version-id")
    size = obj.get("size")
    return {"bucket": bucket, "key": key,
            "version_id": version if isinstance(version, str) and version else None,
            "size": int(size) if isinstance(size, (int, float)) else None,
            "etag": str(obj.get("etag") or "").strip('"') or None,
            "reason": str(detail.get("reason") or "")}


def dataset_event(event: dict[str, Any]) -> dict[str, Any]:
    """The Prefect event for a new object version (labels are strings)."""
    found = object_of(event)
    if found is None:
        raise ValueError("not an S3 Object Created event")
    where = f"{found['bucket']}/{found['key']}"
    version = found["version_id"] or "null"  # an unversioned bucket: S3's own word
    resource = {"prefect.resource.id": f"aws.s3.object.{where}",
                "prefect.resource.name": found["key"], "s3.bucket": found["bucket"],
                "s3.key": found["key"], "s3.version-id": version,
                "s3.size": str(found["size"] if found["size"] is not None else ""),
                "s3.etag": found["etag"] or ""}
    return {"id": str(uuid.uuid5(_ID_NAMESPACE, json.dumps(["s3", where, version]))),
            "occurred": _occurred(event), "event": DATASET_EVENT, "resource": resource,
            "related": [], "payload": {"detail-type": "Object Created", **found}}


def _relay_dataset(event: dict[str, Any], *, api_url: str, api_key: str | None,
                   timeout: float, deadline: float | None,
                   prefix: str | None) -> dict[str, Any]:
    found = object_of(event)
    assert found is not None
    prefix = DEFAULT_DATASET_PREFIX if prefix is None else prefix
    summary: dict[str, Any] = {"relayed": False, "object": f"s3://{found['bucket']}/"
                               f"{found['key']}", "version_id": found["version_id"],
                               "reason": ""}
    if not found["key"].startswith(prefix):
        summary["reason"] = f"{found['key']} is not under {prefix}: not a dataset's"
        return summary
    if deadline is None:
        deadline = time.monotonic() + 2 * ATTEMPTS * timeout
    api = _PrefectAPI(api_url.rstrip("/"), api_key or "", timeout, deadline)
    api.request("POST", "/events", [dataset_event(event)])
    summary.update(relayed=True, reason=f"event posted: {DATASET_EVENT}")
    log.info("New version %s of %s -> Prefect", found["version_id"], summary["object"])
    return summary


def _tag_value(tags: Any) -> str | None:
    """The flow run tag from SageMaker's list form [{"Key", "Value"}] or the event's map."""
    if isinstance(tags, dict):
        value = tags.get(FLOW_RUN_TAG)
        return value if isinstance(value, str) and value else None
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, dict) and tag.get("Key") == FLOW_RUN_TAG:
                value = tag.get("Value")
                return value if isinstance(value, str) and value else None
    return None


# ---------------------------------------------------------------- relaying


def handle(event: dict[str, Any], *, api_url: str, api_key: str | None = None,
           list_tags: Callable[[str], list[dict[str, Any]]] | None = None,
           timeout: float = 10.0, deadline: float | None = None,
           dataset_prefix: str | None = None) -> dict[str, Any]:
    """Relay one event to Prefect: its event, and a resume for a terminal job status
    (or, for a new object version under ``dataset_prefix``, the dataset event).

    ``deadline`` is on time.monotonic()'s clock: no request starts after it (default:
    room for the three requests and their retries). Raises RelayError only when the
    Prefect API cannot be reached or answers an error."""
    if object_of(event) is not None:
        return _relay_dataset(event, api_url=api_url, api_key=api_key, timeout=timeout,
                              deadline=deadline, prefix=dataset_prefix)
    job = job_of(event)
    if job is None:
        return {"relayed": False, "job": None, "status": None, "flow_run_id": None,
                "resumed": False, "reason": "not a SageMaker job or endpoint state change"}
    kind, name, status = job
    summary: dict[str, Any] = {"relayed": False, "job": name, "status": status,
                               "flow_run_id": None, "resumed": False, "reason": ""}
    flow_run_id = _tag_value(event["detail"].get("Tags"))
    if flow_run_id is None and list_tags is not None:
        arn = _arn(event)
        if arn:
            flow_run_id = _tag_value(list_tags(arn))
    if flow_run_id is None:
        summary["reason"] = f"{kind} {name} has no {FLOW_RUN_TAG} tag: not a sagepipe run's"
        return summary
    summary["flow_run_id"] = flow_run_id
    if deadline is None:
        deadline = time.monotonic() + 4 * ATTEMPTS * timeout
    api = _PrefectAPI(api_url.rstrip("/"), api_key or "", timeout, deadline)
    api.request("POST", "/events", [prefect_event(event, flow_run_id)])
    summary["relayed"] = True
    if kind == "endpoint" or status not in TERMINAL:
        summary["reason"] = f"event posted; {status} is not a terminal job status"
        return summary
    summary["resumed"], summary["reason"] = _resume_if_suspended(api, flow_run_id, name)
    log.info("%s %s %s -> flow run %s: %s", kind, name, status, flow_run_id, summary["reason"])
    return summary


def _resume_if_suspended(api: _PrefectAPI, flow_run_id: str, job: str) -> tuple[bool, str]:
    path = f"/flow_runs/{urllib.parse.quote(flow_run_id, safe='')}"
    try:
        run = api.request("GET", path)
    except _NotFound:
        return False, f"event posted; flow run {flow_run_id} does not exist"
    state = (run or {}).get("state") or {}
    details = state.get("state_details") or {}
    if state.get("type") != "PAUSED" or not details.get("pause_reschedule"):
        return False, f"event posted; flow run is {state.get('name') or 'without state'}, " \
                      "not suspended"
    if details.get("run_input_keyset"):
        return False, "event posted; flow run waits for a person's input, left alone"
    # sagepipe suspends with the key "<job>@<how>@<time>" (job names have no @): a run
    # suspended for another job (a later step's) is not this event's to resume
    waited = str(details.get("pause_key") or "").split("@")
    if len(waited) == 3 and waited[0] != job:
        return False, f"event posted; flow run is suspended for {waited[0]}, left alone"
    result = api.request("POST", f"{path}/resume", {})
    if (result or {}).get("status") == "ACCEPT":
        return True, "event posted; flow run resumed"
    reason = ((result or {}).get("details") or {}).get("reason") or "no reason given"
    return False, f"event posted; resume not taken ({reason})"


class _NotFound(Exception):
    pass


class _Transient(Exception):
    def __init__(self, error: RelayError) -> None:
        super().__init__(str(error))
        self.error = error


class _PrefectAPI:
    """Prefect REST calls within a deadline, asked again when worth it. Every call the
    relay makes is idempotent (a fixed event id, a read, a resume of a paused run)."""

    def __init__(self, api_url: str, api_key: str, timeout: float, deadline: float) -> None:
        self.api_url, self.api_key = api_url, api_key
        self.timeout, self.deadline = max(timeout, 0.1), deadline

    def request(self, method: str, path: str, body: Any = None) -> Any:
        attempt = 1
        while True:  # bounded: ATTEMPTS, and the deadline
            try:
                return self._once(method, path, body)
            except _Transient as exc:
                delay = RETRY_BASE_SECONDS * random.uniform(1.0, 2.0) * attempt
                if attempt >= ATTEMPTS or time.monotonic() + delay + 0.1 >= self.deadline:
                    raise exc.error from None
                log.warning("%s; asking again in %.1f s", exc.error, delay)
                time.sleep(delay)
                attempt += 1

    def _once(self, method: str, path: str, body: Any) -> Any:
        where = f"the Prefect API at {self.api_url}"
        left = self.deadline - time.monotonic()
        if left < 0.1:
            raise RelayError(f"Ran out of time before {method} {path} to {where}")
        headers = {"Accept": "application/json", "User-Agent": "sagepipe-relay"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.api_url + path, data=data, headers=headers,
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, left)) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code == 404 and method == "GET":
                raise _NotFound(path) from None
            if exc.code in (401, 403):
                _SECRETS.clear()  # a rotated key: read the secret again next time
                raise RelayError(f"{where} refused the API key ({exc.code}: {detail}); check "
                                 "api_key in the secret") from None
            error = RelayError(f"{where} answered {exc.code} to {method} {path}: {detail}")
            if exc.code in RETRY_STATUSES:
                raise _Transient(error) from None
            raise error from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Transient(RelayError(
                f"Could not reach {where} ({method} {path}): {reason}. Is the server up and "
                "reachable from the function?")) from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise RelayError(f"{where} answered {method} {path} with something other than "
                             "JSON; is api_url the API (ending in /api), not the UI?") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
    except Exception:  # the error body is only a courtesy
        return str(exc.reason or "")
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    return str(detail)[:1000]


# ---------------------------------------------------------------- Lambda


def aws(service: str) -> Any:
    """One boto3 client per service and container, with timeouts and standard retries."""
    import boto3
    from botocore.config import Config

    if service not in _AWS:
        config = Config(connect_timeout=2, read_timeout=5,
                        retries={"mode": "standard", "total_max_attempts": 2})
        _AWS[service] = boto3.client(service, config=config)  # type: ignore[call-overload]
    return _AWS[service]


def list_tags(arn: str) -> list[dict[str, Any]]:
    """SageMaker's ListTags, every page. A resource SageMaker no longer knows has none."""
    from botocore.exceptions import BotoCoreError, ClientError

    tags: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"ResourceArn": arn, "MaxResults": 100}
    try:
        while True:
            page = aws("sagemaker").list_tags(**kwargs)
            tags += page.get("Tags") or []
            if not page.get("NextToken"):
                return tags
            kwargs["NextToken"] = page["NextToken"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ResourceNotFound", "ValidationException"):
            log.warning("ListTags of %s: %s; treated as untagged", arn, code)
            return tags
        raise RelayError(f"SageMaker refused ListTags of {arn}: {code} (the function needs "
                         "sagemaker:ListTags on the project's jobs and endpoints)") from None
    except BotoCoreError as exc:
        raise RelayError(f"Could not reach SageMaker for ListTags of {arn}: {exc}") from None


def prefect_settings() -> tuple[str, str]:
    """(api_url, api_key) from the secret PREFECT_API_SECRET_ARN names, once per container."""
    from botocore.exceptions import BotoCoreError, ClientError

    arn = os.environ.get("PREFECT_API_SECRET_ARN", "").strip()
    if not arn:
        raise RelayError('PREFECT_API_SECRET_ARN is not set: give the function the ARN of a '
                         'secret holding {"api_url": ..., "api_key": ...}')
    if arn in _SECRETS:
        return _SECRETS[arn]
    try:
        secret = aws("secretsmanager").get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise RelayError(f"Secrets Manager refused to read {arn}: {code}") from None
    except BotoCoreError as exc:
        raise RelayError(f"Could not reach Secrets Manager: {exc}") from None
    try:
        value = json.loads(secret.get("SecretString") or "")
        api_url = str(value["api_url"]).strip().rstrip("/")
        api_key = str(value.get("api_key") or "")
    except (TypeError, ValueError, KeyError):
        raise RelayError(f'The secret {arn} must be a JSON string with "api_url" (and '
                         '"api_key", empty for a server without auth)') from None
    if not api_url.startswith(("http://", "https://")):
        raise RelayError(f"The secret {arn} has an api_url that is not an http(s) URL")
    _SECRETS[arn] = (api_url, api_key)
    return _SECRETS[arn]


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point: relay one EventBridge event; raise if Prefect did not take it."""
    try:
        timeout = float(os.environ.get("HTTP_TIMEOUT_SECONDS") or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    span = remaining() / 1000.0 - 1.0 if callable(remaining) else \
        AWS_CALL_SECONDS + 4 * ATTEMPTS * timeout
    deadline = time.monotonic() + max(span, 1.0)
    if job_of(event) is None and object_of(event) is None:
        log.warning("Not a SageMaker job or endpoint state change (detail-type %r); ignored",
                    event.get("detail-type") if isinstance(event, dict) else None)
        return {"relayed": False, "job": None, "status": None, "flow_run_id": None,
                "resumed": False, "reason": "not a SageMaker job or endpoint state change"}
    api_url, api_key = prefect_settings()
    summary = handle(event, api_url=api_url, api_key=api_key, list_tags=list_tags,
                     timeout=timeout, deadline=deadline,
                     dataset_prefix=os.environ.get("DATASET_PREFIX"))
    log.info("Relay: %s", json.dumps(summary))
    return summary
