"""Serverless endpoints on the local runtime: nothing runs while idle; cold starts.

A SageMaker serverless endpoint "scales your endpoint down to 0" when no requests come,
and "if your endpoint does not receive traffic for a while and then ... suddenly
receives new requests, it can take some time for your endpoint to spin up the compute
resources": a cold start (Serverless Inference, How it works). Here:

* the server of a serverless deployment is stopped after ``idle_seconds`` without an
  invocation, by a small watcher process (``python -m sagepipe.tasks.local.idle``) that
  exits with it; nothing of the endpoint runs while it is idle;
* the next invocation starts the server again from the stored command (the model is
  already unpacked), waits for ``GET /ping`` and then sends the request: it pays the
  cold start. A server that does not answer within the invocation's 60 s gives
  ``ModelNotReadyException`` (429, "a serverless endpoint variant's resources are still
  being provisioned ... Wait and try your request again"); one that exits, 503;
* ``ProvisionedConcurrency`` keeps it warm: no watcher, the server stays ("SageMaker AI
  ensures that ... the compute resources are initialized and ready to respond");
* more than ``MaxConcurrency`` invocations at once are throttled ("any endpoint
  invocations beyond the maximum are throttled"): ``ThrottlingException``.

AWS does not document how long an idle endpoint stays warm ("for a while"). The local
default is 300 s: a person trying the endpoint from the CLI keeps it warm between
requests, and a laptop does not keep a server per endpoint for hours.
``SAGEPIPE_SERVERLESS_IDLE_SECONDS`` sets another, read when a deployment starts.
``MemorySizeInMB`` is not enforced locally (a memory limit on a Python process counts
address space, not the memory the model uses).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import now, pid_alive
from .processes import alive_as, identity, this_boot
from .servers import alive, ping, start_server, stop_process_group, tail
from .state import StateStore
from .validation import client_error

__all__ = ["IDLE_ENV", "Lease", "Serverless", "idle_seconds", "scale_to_zero_when_idle"]

IDLE_ENV = "SAGEPIPE_SERVERLESS_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 300.0
# InvokeEndpoint: "A customer's model containers must respond to requests within 60 seconds"
_INVOCATION_SECONDS = 60.0


def idle_seconds() -> float:
    """How long a serverless deployment's server outlives its last invocation."""
    raw = os.environ.get(IDLE_ENV)
    if not raw:
        return DEFAULT_IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{IDLE_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{IDLE_ENV} must be more than 0 seconds, got {raw}")
    return value


@dataclass(frozen=True)
class Lease:
    """One invocation's hold on a deployment: where to send it, and (serverless) who
    counts as in flight until it is released."""

    endpoint: str
    deployment: str
    port: int
    variant: str
    token: str | None  # the invoking process, counted in the deployment's "inflight"


def _live(inflight: dict[str, int] | None) -> dict[str, int]:
    """In-flight counts of processes that still exist (a killed client counts no more)."""
    return {p: n for p, n in (inflight or {}).items() if n > 0 and pid_alive(int(p))}


class Serverless:
    """The serverless side of :class:`.endpoints.EndpointManager`, on the shared state."""

    def __init__(self, root: Path, state: StateStore) -> None:
        self.root, self.state = root, state

    def acquire(self, name: str, deployment: str, operation: str) -> Lease | None:
        """Count an invocation in; start the server if the deployment has none (a cold
        start) and wait until it answers. None: the deployment was replaced meanwhile."""
        token = str(os.getpid())
        seen: dict[str, Any] = {}

        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current")
            if not current or current["id"] != deployment:
                return
            inflight = _live(current.get("inflight"))
            limit = int(current["serverless"]["MaxConcurrency"])
            if sum(inflight.values()) >= limit:
                seen["throttled"] = limit
                return
            inflight[token] = inflight.get(token, 0) + 1
            current.update(inflight=inflight, last_active=now())
            if not current.get("pid") or not _running(current):
                pid, port = start_server(current["command"], current["env"],
                                         Path(current["dir"]))
                seen["started"] = pid
                current.update(pid=pid, port=port, ident=identity(pid), boot=this_boot(),
                               ready=False, cold_start_at=now(),
                               cold_starts=int(current.get("cold_starts") or 0) + 1)
            seen["current"] = dict(current)

        try:
            self.state.update("endpoint", name, change)
        except BaseException:
            stop_process_group(seen.get("started"))
            raise
        if "throttled" in seen:
            raise client_error(
                operation, "ThrottlingException",
                f"Endpoint {name} is already processing {seen['throttled']} invocations, "
                "its MaxConcurrency; this one was throttled. Try again, or raise "
                "endpoint.serverless.max_concurrency.")
        current = seen.get("current")
        if current is None:
            return None
        lease = Lease(name, deployment, int(current["port"]), str(current["variant"]), token)
        try:
            if not current.get("ready"):
                self._wait_ready(name, current, operation)
            self.keep_warm_or_watch(name, deployment)
        except BaseException:
            self.release(lease)
            raise
        return lease

    def release(self, lease: Lease) -> None:
        """The invocation is answered: it counts no more, and the idle time starts now."""
        if lease.token is None:
            return

        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current")
            if not current or current["id"] != lease.deployment:
                return
            inflight = dict(current.get("inflight") or {})
            left = inflight.get(str(lease.token), 0) - 1
            if left > 0:
                inflight[str(lease.token)] = left
            else:
                inflight.pop(str(lease.token), None)
            current.update(inflight=inflight, last_active=now())

        self.state.update("endpoint", lease.endpoint, change)

    def _wait_ready(self, name: str, current: dict[str, Any], operation: str) -> None:
        pid, port = current["pid"], int(current["port"])
        deadline = time.monotonic() + min(float(current["health_timeout"]), _INVOCATION_SECONDS)
        while not ping(port, timeout=0.5):
            if not alive(pid):
                self._update(name, current["id"], pid, pid=None, port=None, ready=False)
                raise client_error(
                    operation, "ServiceUnavailable",
                    f"The serverless endpoint {name}'s container exited before it answered "
                    f"/ping on a cold start. Log: {tail(Path(current['dir']))}", status=503)
            if time.monotonic() > deadline:
                # InvokeEndpoint's ModelNotReadyException (429): "a serverless endpoint
                # variant's resources are still being provisioned ... Wait and try again"
                raise client_error(
                    operation, "ModelNotReadyException",
                    f"Endpoint {name} is still starting (cold start): its container has not "
                    "answered /ping yet. Wait and try your request again.", status=429)
            time.sleep(0.05)
        self._update(name, current["id"], pid, ready=True)

    def warmed(self, name: str, deployment: str) -> None:
        """A new deployment passed its health check: it is warm, idle from now on."""
        doc = self.state.get("endpoint", name) or {}
        current = doc.get("current") or {}
        if current.get("id") == deployment:
            self._update(name, deployment, current.get("pid"), ready=True, last_active=now())
            self.keep_warm_or_watch(name, deployment)

    def keep_warm_or_watch(self, name: str, deployment: str) -> None:
        """Without provisioned concurrency, make sure a watcher will stop the idle server."""
        started: dict[str, int] = {}

        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current")
            if (not current or current["id"] != deployment or not current.get("pid")
                    or current["serverless"].get("ProvisionedConcurrency")
                    or alive(current.get("reaper"))):
                return
            started["pid"] = current["reaper"] = _spawn_watcher(self.root, name, deployment)

        try:
            self.state.update("endpoint", name, change)
        except BaseException:
            stop_process_group(started.get("pid"), grace=1.0)
            raise

    def forget_dead(self, name: str, current: dict[str, Any]) -> None:
        """A warm server that exited on its own is no endpoint failure here: SageMaker
        replaces serverless compute, so the next request starts a new one (a cold start)."""
        pid = current.get("pid")
        if pid and not _running(current):
            self._update(name, current["id"], pid, pid=None, port=None, ready=False)

    def _update(self, name: str, deployment: str, server: int | None, **fields: Any) -> None:
        """Change the deployment if it is still ``deployment`` on the server ``server``."""
        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current")
            if current and current["id"] == deployment and current.get("pid") == server:
                current.update(fields)
        self.state.update("endpoint", name, change)


def _running(deployment: dict[str, Any]) -> bool:
    """The deployment's server runs: its pid is alive (reaped if it is our child) and is
    the process that was started (not a pid reused after a kill or a machine restart)."""
    return alive(deployment.get("pid")) and alive_as(deployment.get("pid"),
                                                     deployment.get("ident"))


def _spawn_watcher(root: Path, name: str, deployment: str) -> int:
    from .jobs import _project_path  # the job runners' way of making sagepipe importable

    log = root / "endpoints" / name / deployment / "idle.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagepipe.tasks.local.idle", str(root), name, deployment],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            cwd=str(log.parent), env={**os.environ, "PYTHONPATH": _project_path()})
    return proc.pid


def scale_to_zero_when_idle(root: Path, name: str, deployment: str, *,
                            sleep: Callable[[float], None] = time.sleep) -> bool:
    """The watcher's loop: once the deployment has had no invocation for its idle time,
    stop its server (True). Ends at once (False) when the deployment is replaced, deleted
    or already stopped."""
    state = StateStore(root)
    while True:
        current = ((state.get("endpoint", name) or {}).get("current")) or {}
        if current.get("id") != deployment or not current.get("pid"):
            return False
        idle = float(current["idle_seconds"])
        quiet = now() - float(current.get("last_active") or 0)
        if _live(current.get("inflight")):
            sleep(min(idle, 1.0))  # answered requests restart the idle time
            continue
        if quiet < idle:
            sleep(idle - quiet)
            continue
        victim = _claim_idle_server(state, name, deployment)
        if victim is not None:
            stop_process_group(victim)
            return True


def _claim_idle_server(state: StateStore, name: str, deployment: str) -> int | None:
    """Mark the deployment scaled to zero if it is still idle; the server's pid to stop."""
    stopped: dict[str, int] = {}

    def change(doc: dict[str, Any]) -> None:
        live = doc.get("current")
        if (not live or live["id"] != deployment or not live.get("pid")
                or _live(live.get("inflight"))
                or now() - float(live.get("last_active") or 0) < float(live["idle_seconds"])):
            return
        stopped["pid"] = live["pid"]
        live.update(pid=None, port=None, ready=False, reaper=None, scaled_to_zero_at=now())

    state.update("endpoint", name, change)
    return stopped.get("pid")
