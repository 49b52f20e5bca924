"""``jobs.wait: events`` against a real Prefect server: the wait wakes on the job's
state-change event (posted as the relay posts it), an event that came first is
replayed, and without an event stream the wait polls instead."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any

import prefect_http
import pytest
from prefect.settings import get_current_settings

from sagepipe.tasks.events import EventsUnavailable, JobEvents, event_name, resource_id
from sagepipe.tasks.jobs import TRAINING, WaitPolicy, run_job

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


def api() -> str:
    return str(get_current_settings().api.url)


def post_state_change(name: str, status: str) -> None:
    """What the relay sends for a SageMaker job's state change."""
    event = {"id": str(uuid.uuid4()), "occurred": dt.datetime.now(dt.UTC).isoformat(),
             "event": event_name("training", status),
             "resource": {"prefect.resource.id": resource_id("training", name),
                          "prefect.resource.name": name, "sagemaker.status": status},
             "related": [], "payload": {}}
    response = prefect_http.post(f"{api()}/events", json=[event], timeout=10)
    assert response.status_code == 204, response.text


def test_the_wait_wakes_on_the_jobs_event() -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    events = JobEvents("training", name, api_url=api())
    try:
        assert events.wait(0.2) is None  # nothing yet
        post_state_change(f"{name}-other", "Completed")  # another job's: not ours
        sent = time.monotonic()
        threading.Timer(0.5, post_state_change, (name, "Completed")).start()
        assert events.wait(30) == "Completed"
        lag = time.monotonic() - sent - 0.5
    finally:
        events.close()
    assert lag < 5, lag  # seen within seconds of the event, not at the next poll


def stored(name: str, timeout: float = 30) -> None:
    """Until the server has written the job's event (its persister batches writes)."""
    deadline = time.monotonic() + timeout
    wanted = {"filter": {"resource": {"id": [resource_id("training", name)]}}}
    while time.monotonic() < deadline:
        found = prefect_http.post(f"{api()}/events/filter", json=wanted, timeout=10).json()
        if found["events"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"the event of {name} was never stored")


def test_an_event_that_came_before_the_subscription_is_replayed() -> None:
    """A subscriber replays the last minute (a run that re-attaches after the job ended
    also describes the job first: an event is never needed to see an end that came
    before the wait)."""
    name = f"ev-{uuid.uuid4().hex[:8]}"
    post_state_change(name, "Failed")
    stored(name)
    events = JobEvents("training", name, api_url=api())
    try:
        assert events.wait(30) == "Failed"
    finally:
        events.close()


def test_without_an_event_stream_the_subscription_says_so() -> None:
    started = time.monotonic()
    with pytest.raises(EventsUnavailable):
        JobEvents("training", "ev-none", api_url="http://127.0.0.1:9/api", connect_timeout=20)
    assert time.monotonic() - started < 25


class FakeSageMaker:
    """A training job that is InProgress until ``done`` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.describes = 0

    def describe_training_job(self, **params: Any) -> dict[str, Any]:
        self.describes += 1
        if params["TrainingJobName"].endswith("-new") and self.describes == 1:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": "Requested resource not found."}},
                              "DescribeTrainingJob")
        status = "Completed" if self.done.is_set() else "InProgress"
        return {"TrainingJobName": params["TrainingJobName"], "TrainingJobStatus": status,
                "ModelArtifacts": {"S3ModelArtifacts": "s3://b/model.tar.gz"}}

    def create_training_job(self, **params: Any) -> dict[str, Any]:
        return {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:0:training-job/x"}


class NoLogs:
    def describe_log_streams(self, **params: Any) -> dict[str, Any]:
        return {"logStreams": []}


def test_run_job_with_events_describes_rarely_and_returns_on_the_event() -> None:
    from types import SimpleNamespace

    sagemaker = FakeSageMaker()
    clients: Any = SimpleNamespace(sagemaker=sagemaker, logs=NoLogs())
    name = f"ev-{uuid.uuid4().hex[:8]}-new"

    def finish() -> None:
        sagemaker.done.set()
        post_state_change(name, "Completed")

    threading.Timer(3.0, finish).start()
    started = time.monotonic()
    final = run_job(clients, TRAINING, {"TrainingJobName": name},
                    policy=WaitPolicy(first_poll=0.1, max_poll=0.2, safety_poll=60),
                    log=logging.getLogger("test.events"),
                    watch=lambda job: JobEvents("training", job, api_url=api()))
    took = time.monotonic() - started
    assert final["TrainingJobStatus"] == "Completed"
    assert took < 3.0 + 5.0, took
    # a polling wait at 0.1-0.2 s would have described ~20 times in those 3 s
    assert sagemaker.describes <= 4, sagemaker.describes
