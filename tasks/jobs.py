"""SageMaker processing and training jobs: start or re-attach, wait, tail logs.

Prefect retries re-run a whole task, so starting a job must be idempotent. A
job's name is ``<prefix>-<step>-<key>``, where ``key`` hashes the job's content
(image digest, inputs, arguments). A retried task describes that name first:

* not found -> create it;
* InProgress -> attach and wait;
* Completed -> reuse its outputs;
* Failed / Stopped -> a new attempt under ``<name>-r<N>``.

Waits poll Describe with capped exponential backoff, copy the job's log stream
into the Prefect task log, give up after a timeout (stopping the job), and stop
the job if the wait itself is interrupted (flow cancelled, Ctrl-C). A wait lasts
hours, so its Describe and log reads ride out throttling and 5xx replies
(:func:`tasks.runtime.call_with_retry`); any other error surfaces unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from .errors import JobFailed, JobMissing, JobTimeout
from .events import EventsUnavailable, JobWaiter
from .runtime import Clients, call_with_retry, is_not_found

__all__ = ["JobKind", "WaitPolicy", "content_key", "job_name", "run_job", "stop_job"]

MAX_ATTEMPTS = 9
_NAME_LIMIT = 63
_LOG = logging.getLogger(__name__)

Log = logging.Logger | logging.LoggerAdapter[Any]
Sleep = Callable[[float], None]


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able content."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def job_name(prefix: str, step: str, key: str, attempt: int = 1) -> str:
    """Deterministic and valid for SageMaker: <=63 chars of [a-zA-Z0-9-]."""
    clean = "".join(c if c.isalnum() else "-" for c in prefix).strip("-") or "sagepipe"
    # room is kept for an attempt suffix (-r2 .. -r9), so retries stay within the limit
    head = f"{clean}-{step}"[: _NAME_LIMIT - len(key) - 1 - 3].rstrip("-")
    return f"{head}-{key}" + ("" if attempt == 1 else f"-r{attempt}")


@dataclass(frozen=True)
class JobKind:
    """The per-kind spelling of the same API (training vs processing)."""

    noun: str  # "Training" or "Processing"

    @property
    def name_key(self) -> str:
        return f"{self.noun}JobName"

    @property
    def status_key(self) -> str:
        return f"{self.noun}JobStatus"

    @property
    def log_group(self) -> str:
        return f"/aws/sagemaker/{self.noun}Jobs"

    def method(self, clients: Clients, verb: str) -> Callable[..., Any]:
        """The client method, e.g. ``describe_training_job``."""
        method: Callable[..., Any] = getattr(clients.sagemaker, f"{verb}_{self.noun.lower()}_job")
        return method

    def call(self, clients: Clients, verb: str, **params: Any) -> dict[str, Any]:
        return dict(self.method(clients, verb)(**params))


TRAINING = JobKind("Training")
PROCESSING = JobKind("Processing")


@dataclass(frozen=True)
class WaitPolicy:
    first_poll: float = 2.0
    max_poll: float = 30.0
    factor: float = 1.5
    timeout: float = 24 * 3600.0
    safety_poll: float = 360.0  # with events: describe this often, in case one is lost


def _describe(clients: Clients, kind: JobKind, name: str, *, log: Log = _LOG,
              sleep: Sleep = time.sleep) -> dict[str, Any] | None:
    params: dict[str, Any] = {kind.name_key: name}
    try:
        return dict(call_with_retry(kind.method(clients, "describe"), log=log, sleep=sleep,
                                    **params))
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def start_or_attach(clients: Clients, kind: JobKind, request: dict[str, Any], log: Log, *,
                    sleep: Sleep = time.sleep,
                    reusable: Callable[[dict[str, Any]], bool] | None = None
                    ) -> tuple[str, str]:
    """(job name, how) where how is 'created', 'attached' or 'reused'.

    ``reusable`` vets a Completed job (e.g. its outputs still exist); one it rejects
    is treated like a failed attempt.
    """
    name, how, _ = find_or_start(clients, kind, request, log, sleep=sleep, reusable=reusable)
    return name, how


def find_or_start(clients: Clients, kind: JobKind, request: dict[str, Any], log: Log, *,
                  sleep: Sleep = time.sleep,
                  reusable: Callable[[dict[str, Any]], bool] | None = None,
                  ours: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(job name, how, status): :func:`start_or_attach` in one pass over the attempts
    (one Describe each), knowing ``ours`` - the attempts this flow run already started or
    attached to, with how (a run that suspended while they ran, now resumed):

    * one of ours that ended Completed is this run's result (no reuse vetting);
    * one of ours that ended Failed or Stopped is the step's outcome: JobFailed, no
      new attempt;
    * one of ours that no longer exists: JobMissing, nothing created in its place.
    """
    ours = ours or {}
    base = request[kind.name_key]
    seen: set[str] = set()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        name = base if attempt == 1 else f"{base}-r{attempt}"
        found = _describe(clients, kind, name, log=log, sleep=sleep)
        if found is None:
            gone = [n for n in ours if n not in seen and (n == base or n.startswith(f"{base}-r"))]
            if gone:
                raise JobMissing(gone[0], kind=f"{kind.noun.lower()} job")
            kind.call(clients, "create", **{**request, kind.name_key: name})
            log.info("Started %s job %s", kind.noun.lower(), name)
            return name, "created", "InProgress"
        seen.add(name)
        status = found[kind.status_key]
        if status in ("InProgress", "Stopping"):
            log.info("Re-attached to %s job %s (%s)", kind.noun.lower(), name, status)
            return name, ours.get(name, "attached"), status
        if name in ours:
            if status != "Completed":  # it ended while the run was suspended
                raise JobFailed(name, status, failure_reason(found, []),
                                kind=kind.noun.lower())
            return name, ours[name], status
        if status == "Completed":
            if reusable is None or reusable(found):
                log.info("Reusing completed %s job %s", kind.noun.lower(), name)
                return name, "reused", status
            log.info("%s job %s completed earlier but its outputs are gone; starting "
                     "attempt %d", kind.noun, name, attempt + 1)
            continue
        log.info("%s job %s ended %s earlier; starting attempt %d", kind.noun, name, status,
                 attempt + 1)
    raise JobFailed(base, "Failed", f"{MAX_ATTEMPTS} attempts already failed; fix the cause "
                    "shown in the job logs, then run again", kind=kind.noun.lower())


class LogTail:
    """Copies new lines of a job's CloudWatch log streams into a logger."""

    def __init__(self, clients: Clients, group: str, job: str,
                 emit: Callable[[str], None], *, log: Log = _LOG,
                 sleep: Sleep = time.sleep) -> None:
        self.clients, self.group, self.job, self.emit = clients, group, job, emit
        self.log, self.sleep = log, sleep
        self.tokens: dict[str, str | None] = {}
        self.recent: deque[str] = deque(maxlen=5)  # the last lines, for a failure's message

    def _call(self, fn: Callable[..., Any], **params: Any) -> dict[str, Any]:
        return dict(call_with_retry(fn, log=self.log, sleep=self.sleep, **params))

    def poll(self) -> None:
        logs = self.clients.logs
        try:
            streams = self._call(logs.describe_log_streams, logGroupName=self.group,
                                 logStreamNamePrefix=f"{self.job}/")["logStreams"]
            for stream in streams:
                name = stream["logStreamName"]
                while True:
                    kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": name,
                                              "startFromHead": True}
                    if self.tokens.get(name):
                        kwargs["nextToken"] = self.tokens[name]
                    page = self._call(logs.get_log_events, **kwargs)
                    for event in page["events"]:
                        self.emit(event["message"])
                        self.recent.append(event["message"])
                    if page["nextForwardToken"] == self.tokens.get(name):
                        break  # CloudWatch returns the same token at the end of a stream
                    self.tokens[name] = page["nextForwardToken"]
                    if not page["events"]:
                        break
        except ClientError as exc:  # logs are a convenience: never fail a job over them
            code = exc.response.get("Error", {}).get("Code")
            if code != "ResourceNotFoundException":
                self.emit(f"(could not read job logs: {code})")


def stop_job(clients: Clients, kind: JobKind, name: str, *, log: Log = _LOG,
             sleep: Sleep = time.sleep) -> bool:
    """Stop ``name`` if it still runs; True if a stop was sent."""
    found = _describe(clients, kind, name, log=log, sleep=sleep)
    if found is None or found[kind.status_key] != "InProgress":
        return False
    try:
        kind.call(clients, "stop", **{kind.name_key: name})
    except ClientError as exc:  # it may have ended between describe and stop
        if exc.response.get("Error", {}).get("Code") != "ValidationException":
            raise
        return False
    return True


def failure_reason(described: dict[str, Any], recent: Iterable[str]) -> str | None:
    """Why a job failed, in the container's own words where AWS keeps them.

    A processing container reports through ``/opt/ml/output/message``, which
    DescribeProcessingJob returns as ``ExitMessage``; its ``FailureReason`` is generic
    ("AlgorithmError: See job logs for more information"). A training container's
    ``/opt/ml/output/failure`` is in ``FailureReason``. Without either, the last log lines.
    """
    reason = described.get("FailureReason")
    message = (described.get("ExitMessage") or "").strip()
    if message:
        return f"{message} ({reason})" if reason else message
    lines = [line for line in recent if line.strip()]
    if lines and (not reason or "See job logs" in reason):
        return f"{reason or 'no reason given'}; last log lines: {' | '.join(lines)}"
    return reason


def run_job(clients: Clients, kind: JobKind, request: dict[str, Any], *,
            policy: WaitPolicy, log: Log, clock: Callable[[], float] = time.monotonic,
            sleep: Sleep = time.sleep,
            reusable: Callable[[dict[str, Any]], bool] | None = None,
            watch: Callable[[str], JobWaiter] | None = None,
            known: tuple[str, str] | None = None) -> dict[str, Any]:
    """Start (or re-attach to) a job and wait for it; returns the final Describe.

    Raises JobFailed (with AWS's FailureReason) on Failed or Stopped, and
    JobTimeout after stopping a job that outlived ``policy.timeout``. ``sleep`` also
    paces the retries after throttling.

    ``watch`` (``jobs.wait: events``) subscribes to the job's state-change events: the
    wait then wakes on the job's event and otherwise describes it (and reads its log)
    only every ``policy.safety_poll`` seconds; without events it polls with backoff.
    ``known``: (name, how) of the job already found or started (``jobs.wait: suspend``).
    """
    name, how = known or start_or_attach(clients, kind, request, log, sleep=sleep,
                                         reusable=reusable)
    tail = LogTail(clients, kind.log_group, name, lambda line: log.info("[%s] %s", name, line),
                   log=log, sleep=sleep)
    started = clock()
    interval = policy.first_poll
    stop_sent = False
    waiter = _subscribe(watch, name, log) if watch is not None and how != "reused" else None
    try:
        while True:
            described = _describe(clients, kind, name, log=log, sleep=sleep)
            if described is None:
                raise JobFailed(name, "Missing", "the job disappeared while being watched",
                                kind=kind.noun.lower())
            status = described[kind.status_key]
            if how != "reused":
                tail.poll()
            if status in ("Completed", "Failed", "Stopped"):
                if status != "Completed":
                    raise JobFailed(name, status, failure_reason(described, tail.recent),
                                    kind=kind.noun.lower())
                described["_how"] = how
                return described
            waited = clock() - started
            if waited >= policy.timeout and not stop_sent:
                stop_sent = True
                if stop_job(clients, kind, name, log=log, sleep=sleep):
                    raise JobTimeout(name, waited, kind=kind.noun.lower())
                # it ended (or is stopping) between the describe and the stop: report that

            remaining = policy.timeout - waited
            pause = min(interval, remaining) if remaining > 0 else policy.first_poll
            if waiter is not None:
                try:
                    waiter.wait(min(policy.safety_poll, remaining) if remaining > 0
                                else policy.first_poll)
                    continue  # an event, or the safety poll's turn: describe now
                except EventsUnavailable as exc:
                    log.warning("No job events (%s): polling %s instead", exc, name)
                    waiter.close()
                    waiter = None
            sleep(pause)
            interval = min(interval * policy.factor, policy.max_poll)
    except Exception:
        # the waiter failed (network, AWS error): the job may be fine, and a retried
        # task re-attaches to it, so hours of training are not thrown away
        raise
    except BaseException:
        # interrupted: a cancelled flow run (TerminationSignal), Ctrl-C
        try:
            if stop_job(clients, kind, name, log=log, sleep=sleep):
                log.warning("Stopped %s job %s because its wait was interrupted",
                            kind.noun.lower(), name)
        except Exception:  # never mask the interruption itself
            log.exception("Could not stop %s job %s", kind.noun.lower(), name)
        raise
    finally:
        if waiter is not None:
            waiter.close()


def _subscribe(watch: Callable[[str], JobWaiter], name: str, log: Log) -> JobWaiter | None:
    try:
        return watch(name)
    except EventsUnavailable as exc:
        log.warning("No job events (%s): polling %s instead", exc, name)
        return None
