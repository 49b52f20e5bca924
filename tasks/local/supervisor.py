"""An endpoint's supervisor: the detached process that keeps a local endpoint's promises.

On SageMaker an endpoint being created keeps being created whoever asked for it, a
blue/green update goes on after the caller is gone, and an instance that fails is
replaced. Locally the same is done by one process per endpoint,
``python -m sagepipe.tasks.local.supervise <root> <endpoint>``, started by whoever
creates or updates the endpoint (and by anyone who finds it missing, see
:mod:`.endpoints`). It works only through the shared state, in a loop:

* a *pending* deployment (CreateEndpoint, UpdateEndpoint) is launched: its model
  unpacked, its server started; once the server answers ``GET /ping`` traffic moves to it
  (the blue server is stopped): ``InService``. A server that exits first, or does not
  answer within ``ContainerStartupHealthCheckTimeoutInSeconds``, is removed: a new
  endpoint is ``Failed``, an update leaves it ``InService`` on the old config, both with
  ``FailureReason`` - what SageMaker does;
* the *current* server of an instance-based endpoint is watched: one that exits is
  replaced (``SystemUpdating``, SageMaker's status for replacing an instance) and the
  endpoint is ``InService`` again once the new one answers ``/ping``. At most
  ``MAX_RESTARTS`` replacements in ``RESTART_WINDOW_SECONDS``; one more, and the endpoint
  is ``Failed`` with the reason and the server's last log lines;
* it exits when nothing is left to watch (a serverless endpoint between requests, a
  failed one) or the endpoint is being deleted.

One supervisor per endpoint: it holds an exclusive lock for its lifetime (a second one
exits at once), records its pid and identity (:mod:`.processes`) in the endpoint, and
stops when another one is recorded there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import now
from .containers import container_command, job_environment
from .images import resolve_image
from .processes import alive_as, identity, this_boot
from .pyenv import interpreter
from .s3 import LocalS3, parse_s3_uri
from .serverless import Serverless
from .servers import alive, ping, start_server, stop_process_group, tail
from .state import StateStore

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_SECONDS", "needs_supervisor", "spawn_supervisor",
           "supervise", "supervisor_alive"]

MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 600.0
_BUSY_POLL = 0.05  # while a server starts
_IDLE_POLL = 0.5  # while all is well: how soon a dead server is noticed
_STARTING_GRACE = 30.0  # a spawned supervisor that has not claimed the endpoint yet
_LOCK_WAIT = 3.0


def needs_supervisor(doc: dict[str, Any]) -> bool:
    """Whether the endpoint has anything a supervisor must do or watch."""
    if doc.get("pending"):
        return doc["status"] not in ("Deleting", "OutOfService")
    current = doc.get("current") or {}
    return bool(current) and not current.get("serverless") and doc["status"] in (
        "InService", "SystemUpdating", "Updating")


def supervisor_alive(doc: dict[str, Any]) -> bool:
    record = doc.get("supervisor") or {}
    pid = record.get("pid")
    if not pid:
        return False
    if record.get("ident") is None:  # spawned, not claimed yet: give it time to start
        return alive(pid) and now() - float(record.get("spawned") or 0) < _STARTING_GRACE
    return alive_as(pid, record["ident"])


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn_supervisor(root: Path, name: str) -> int:
    """Start the endpoint's supervisor detached (its own session: a Ctrl-C or a kill of the
    caller does not reach it); its pid."""
    from .jobs import _project_path

    folder = root / "endpoints" / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagepipe.tasks.local.supervise", str(root), name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=str(folder), env={**os.environ, "PYTHONPATH": _project_path()})
    for pid, child in list(_CHILDREN.items()):  # reap the ones that ended
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
    _CHILDREN[proc.pid] = proc
    return proc.pid


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[bool]:
    """The endpoint's supervisor lock, waited for a little (a predecessor may be exiting)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "supervisor.lock", "a") as lock:
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True


def supervise(root: Path, name: str) -> None:
    """The supervisor's life: claim the endpoint, then step until nothing is left to do."""
    root = Path(root).resolve()
    with _exclusive(root / "endpoints" / name) as mine:
        if not mine:
            return
        Supervisor(root, name).run()


class Supervisor:
    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.state = StateStore(root)
        self.s3 = LocalS3(root, self.state)
        self.serverless = Serverless(root, self.state)
        self.me = {"pid": os.getpid(), "ident": identity(os.getpid()), "boot": this_boot(),
                   "spawned": now()}

    def run(self) -> None:
        if not self._claim():
            return
        while True:
            doc = self.state.get("endpoint", self.name)
            if doc is None or (doc.get("supervisor") or {}).get("pid") != self.me["pid"] \
                    or doc["status"] == "Deleting":
                return
            busy = self.step(doc)
            if not busy and self._retire():
                return
            time.sleep(_BUSY_POLL if busy else _IDLE_POLL)

    def _claim(self) -> bool:
        def change(doc: dict[str, Any]) -> None:
            if doc["status"] != "Deleting":
                doc["supervisor"] = dict(self.me)
        doc = self.state.update("endpoint", self.name, change)
        return doc is not None and (doc.get("supervisor") or {}).get("pid") == self.me["pid"]

    def _retire(self) -> bool:
        """Exit if there is nothing to do (decided in one transaction with the state, so an
        update made meanwhile is seen: its caller then finds no supervisor and starts one)."""
        retired: dict[str, bool] = {}

        def change(doc: dict[str, Any]) -> None:
            if (doc.get("supervisor") or {}).get("pid") == self.me["pid"] \
                    and not needs_supervisor(doc):
                doc["supervisor"] = None
                retired["yes"] = True
        self.state.update("endpoint", self.name, change)
        return bool(retired)

    # -------------------------------------------------------------- one step
    def step(self, doc: dict[str, Any]) -> bool:
        """One look at the endpoint, at most one change; True while a server starts."""
        pending, current = doc.get("pending"), doc.get("current")
        busy = False
        if pending and doc["status"] not in ("OutOfService", "Deleting"):
            busy = True
            if not pending.get("pid"):
                self._launch(pending["id"])
            elif alive_as(pending["pid"], pending.get("ident")) and ping(pending["port"]):
                self._promote(pending["id"])
            elif not alive_as(pending["pid"], pending.get("ident")):
                self._abandon(pending["id"], died=True)
            elif now() - float(pending["launched"]) > float(pending["health_timeout"]):
                self._abandon(pending["id"], died=False)
        if current and not current.get("serverless") and doc["status"] in (
                "InService", "SystemUpdating", "Updating"):
            if not current.get("pid") or not alive_as(current["pid"], current.get("ident")):
                self._replace(current["id"])
                busy = True
            elif not current.get("ready"):
                busy = True
                if ping(current["port"]):
                    self._ready(current["id"])
                elif now() - float(current["launched"]) > float(current["health_timeout"]):
                    stop_process_group(current["pid"])  # counted as a failure on the next look
        return busy

    # ----------------------------------------------------------- transitions
    def _launch(self, deployment_id: str) -> None:
        """Unpack the pending deployment's model and start its server."""
        doc = self.state.get("endpoint", self.name) or {}
        pending = doc.get("pending") or {}
        if pending.get("id") != deployment_id or pending.get("pid"):
            return
        try:
            launch = self._prepare(pending)
        except Exception as exc:  # what SageMaker says of a container it cannot start
            self._fail_launch(deployment_id, f"Failed to start the model container: "
                              f"{type(exc).__name__}: {exc}")
            return
        started: dict[str, int] = {}

        def record(d: dict[str, Any]) -> None:
            live = d.get("pending")
            if not live or live["id"] != deployment_id or live.get("pid") \
                    or d["status"] == "Deleting":
                return
            pid, port = start_server(launch["command"], launch["env"], Path(live["dir"]))
            started["pid"] = pid
            live.update(launch, pid=pid, port=port, ident=identity(pid), boot=this_boot(),
                        launched=now(), ready=False)
        try:
            self.state.update("endpoint", self.name, record)
        except OSError as exc:  # the server could not even be started (no fd, no memory)
            stop_process_group(started.get("pid"))
            self._fail_launch(deployment_id, f"Failed to start the model container: {exc}")
        except BaseException:
            stop_process_group(started.get("pid"))
            raise

    def _prepare(self, pending: dict[str, Any]) -> dict[str, Any]:
        """The model unpacked into the deployment's folder, and the server's command."""
        config = self.state.get("endpoint-config", pending["config"])
        if config is None:
            raise LookupError(f"endpoint config {pending['config']} no longer exists")
        variant = config["ProductionVariants"][0]
        model = self.state.get("model", variant["ModelName"])
        if model is None:
            raise LookupError(f"model {variant['ModelName']} no longer exists")
        container = model["PrimaryContainer"]
        folder = resolve_image(self.state, container["Image"])
        base = Path(pending["dir"]) / "opt" / "ml"
        model_dir = base / "model"
        if not pending.get("unpacked"):
            model_dir.mkdir(parents=True, exist_ok=True)
            if container.get("ModelDataUrl"):
                bucket, key = parse_s3_uri(container["ModelDataUrl"])
                with tarfile.open(self.s3.path_of(bucket, key), "r:gz") as archive:
                    archive.extractall(model_dir, filter="data")
        command = container_command(folder, base, mode="serve",
                                    python=interpreter(folder, self.root), root=self.root)
        env = job_environment(base, dict(container.get("Environment", {})))
        return {"command": command, "env": env, "unpacked": True}

    def _fail_launch(self, deployment_id: str, reason: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            if (doc.get("pending") or {}).get("id") != deployment_id:
                return
            doc.update(pending=None, status="InService" if doc.get("current") else "Failed",
                       reason=reason[:1024], modified=now())
        self.state.update("endpoint", self.name, change)

    def _promote(self, deployment_id: str) -> None:
        old: dict[str, Any] | None = None

        def change(doc: dict[str, Any]) -> None:
            nonlocal old
            if not doc.get("pending") or doc["pending"]["id"] != deployment_id:
                return
            old = doc.get("current")
            doc.update(current={**doc["pending"], "ready": True}, pending=None,
                       status="InService", reason=None,
                       EndpointConfigName=doc["pending"]["config"], modified=now())
        doc = self.state.update("endpoint", self.name, change)
        if old:  # traffic has moved: now the blue fleet goes
            _remove(old)
        current = (doc or {}).get("current") or {}
        if current.get("serverless") and current.get("id") == deployment_id:
            self.serverless.warmed(self.name, deployment_id)  # idle from now: scale to zero

    def _abandon(self, deployment_id: str, *, died: bool) -> None:
        pending: dict[str, Any] | None = None

        def change(doc: dict[str, Any]) -> None:
            nonlocal pending
            if not doc.get("pending") or doc["pending"]["id"] != deployment_id:
                return
            pending = doc["pending"]
            why = ("exited before it answered /ping" if died else
                   f"did not pass the /ping health check within "
                   f"{pending['health_timeout']} seconds")
            reason = (f"The primary container for production variant {pending['variant']} "
                      f"{why}. Log: {tail(Path(pending['dir']))}")[:1024]
            # a failed update rolls back: InService on the old config, FailureReason set
            doc.update(pending=None, status="InService" if doc.get("current") else "Failed",
                       reason=reason, modified=now())
        self.state.update("endpoint", self.name, change)
        if pending:
            _remove(pending)

    def _replace(self, deployment_id: str) -> None:
        """The current server is gone: start it again, or give up after too many."""
        replaced: dict[str, Any] = {}

        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current") or {}
            if current.get("id") != deployment_id or doc["status"] not in (
                    "InService", "SystemUpdating", "Updating"):
                return
            if current.get("pid") and alive_as(current["pid"], current.get("ident")):
                return  # replaced meanwhile
            old = current.get("pid")
            recent = [t for t in current.get("restarts") or []
                      if now() - t < RESTART_WINDOW_SECONDS]
            if old and len(recent) >= MAX_RESTARTS:
                reason = (f"The serving process for variant {current['variant']} exited "
                          f"{len(recent) + 1} times within {RESTART_WINDOW_SECONDS:.0f} s; it "
                          f"is not started again. Log: {tail(Path(current['dir']))}")
                doc.update(status="Failed", reason=reason[:1024], modified=now())
                replaced["failed"] = old
                return
            if old:
                stop_process_group(old, grace=0.5)  # what is left of it (its workers)
            pid, port = start_server(current["command"], current["env"], Path(current["dir"]))
            replaced["pid"] = pid
            current.update(pid=pid, port=port, ident=identity(pid), boot=this_boot(),
                           launched=now(), ready=False,
                           restarts=[*recent, now()] if old else recent)
            if doc["status"] == "InService":
                doc.update(status="SystemUpdating", modified=now(), reason=(
                    f"Replacing the serving process of variant {current['variant']}"
                    + (f" (pid {old} exited)" if old else "")))
        try:
            self.state.update("endpoint", self.name, change)
        except BaseException:
            stop_process_group(replaced.get("pid"))
            raise
        if replaced.get("failed"):
            stop_process_group(replaced["failed"], grace=0.5)

    def _ready(self, deployment_id: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            current = doc.get("current") or {}
            if current.get("id") != deployment_id:
                return
            current["ready"] = True
            if doc["status"] == "SystemUpdating":
                doc.update(status="InService", reason=None, modified=now())
        self.state.update("endpoint", self.name, change)


def _remove(deployment: dict[str, Any]) -> None:
    """Stop a deployment's processes and delete its folder."""
    stop_process_group(deployment.get("reaper"), grace=1.0)
    stop_process_group(deployment.get("pid"))
    shutil.rmtree(deployment["dir"], ignore_errors=True)
