"""Waiting for a SageMaker job on Prefect's event stream (``jobs.wait: events``).

SageMaker publishes a state-change event when a job ends; the relay
(``deployments/relay/relay.py``: a Lambda behind an EventBridge rule on AWS, called
by the job runner itself on the local runtime) turns it into a Prefect event:

    event     sagemaker.<kind>-job.<status, lower case>   e.g. sagemaker.training-job.completed
    resource  aws.sagemaker.<kind>-job.<job name>, with the label sagemaker.status
    related   prefect.flow-run.<flow run id>               (role flow-run)

A :class:`JobEvents` subscription (Prefect's websocket ``/api/events/out``, held by a
thread of its own, so the synchronous task can wait on a queue) wakes the wait the
moment that event arrives; the wait still describes the job every
``safety_poll_seconds`` so a lost event costs minutes, not the run. When the
subscription cannot be made (no events endpoint, a server that went away) the wait
says so and falls back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import queue
import threading
from typing import Any, Protocol

__all__ = ["TERMINAL", "EventsUnavailable", "JobEvents", "JobWaiter", "event_name",
           "resource_id"]

TERMINAL = ("Completed", "Failed", "Stopped")
_LOG = logging.getLogger(__name__)


class EventsUnavailable(RuntimeError):
    """The event stream cannot be read: the wait falls back to polling."""


class JobWaiter(Protocol):
    def wait(self, seconds: float) -> str | None:
        """Block up to ``seconds`` for the job's next state-change event; its status, or
        None when the time ran out. Raises EventsUnavailable if no event can come."""

    def close(self) -> None: ...


def resource_id(kind: str, name: str) -> str:
    """``kind``: training or processing."""
    return f"aws.sagemaker.{kind}-job.{name}"


def event_name(kind: str, status: str) -> str:
    return f"sagemaker.{kind}-job.{status.lower()}"


class JobEvents:
    """A subscription to one job's state-change events, from now (and the last few
    minutes: an event that came before the subscription is replayed)."""

    def __init__(self, kind: str, name: str, *, api_url: str | None = None,
                 connect_timeout: float = 15.0, lookback: float = 600.0) -> None:
        self.kind, self.name = kind, name
        self._api_url = api_url
        self._lookback = lookback
        self._events: queue.Queue[str | BaseException] = queue.Queue()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # the caller's context: Prefect's settings (the API URL a run was given with
        # temporary_settings) live in context variables a new thread would not see
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,),
                                        name=f"events-{name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(connect_timeout):
            self.close()
            raise EventsUnavailable(f"no event subscription within {connect_timeout:.0f} s")
        failed = self._failed()
        if failed is not None:
            self.close()
            raise EventsUnavailable(f"{type(failed).__name__}: {failed}") from failed

    def _failed(self) -> BaseException | None:
        try:
            head = self._events.queue[0] if self._events.queue else None
        except IndexError:
            return None
        return head if isinstance(head, BaseException) else None

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._task = self._loop.create_task(self._listen())
            self._loop.run_until_complete(self._task)
        except (asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self._loop.close()

    async def _listen(self) -> None:
        from prefect.events.clients import PrefectEventSubscriber
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventResourceFilter,
        )

        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._lookback)
        wanted = EventFilter(
            event=EventNameFilter(prefix=[f"sagemaker.{self.kind}-job."]),
            resource=EventResourceFilter(id=[resource_id(self.kind, self.name)]),
            occurred=EventOccurredFilter(since=since))
        try:
            subscriber = PrefectEventSubscriber(api_url=self._api_url, filter=wanted,
                                                reconnection_attempts=3) \
                if self._api_url else _default_subscriber(wanted)
            async with subscriber:
                self._ready.set()
                async for event in subscriber:
                    self._events.put(str(event.resource.get("sagemaker.status") or ""))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the wait reports it and polls instead
            self._events.put(exc)
            self._ready.set()

    def wait(self, seconds: float) -> str | None:
        try:
            item = self._events.get(timeout=max(seconds, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise EventsUnavailable(f"the event stream ended: {type(item).__name__}: "
                                    f"{item}") from item
        return item

    def close(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=5)


def _default_subscriber(wanted: Any) -> Any:
    from prefect.events.clients import get_events_subscriber

    return get_events_subscriber(filter=wanted, reconnection_attempts=3)
