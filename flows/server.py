"""The local Prefect server sagepipe manages, and a process worker for deployments.

``ensure_server`` starts ``prefect server start`` on 127.0.0.1 in a session of its
own (the terminal's Ctrl-C does not reach it), with its database, log and pid under
``<state_dir>/prefect/``, and returns once the API answers. ``sagepipe run`` uses it
when no ``PREFECT_API_URL`` is set: it stays up between runs, like the local
endpoints, so its UI keeps every run and the second run pays no start-up. ``up``
adds a worker for the ``sagepipe-local`` pool (what ``prefect deployment run``
needs). ``down`` stops both: SIGTERM to each process group, SIGKILL after a grace
period. The state file names the processes by pid; a stale one (dead pid, or a pid
recycled by another program) is noticed and replaced, and a port in use by anything
else (even one taken while the server starts) moves the server to the next free port.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from sagepipe.tasks.errors import PipelineError
from sagepipe.tasks.local.common import pid_alive

__all__ = ["LOCAL_POOL", "LocalServer", "ServerError", "down", "ensure_server", "running",
           "up"]

# under the folder sagepipe runs in (the project), beside the local runtime's state
DEFAULT_DIR = Path(".sagepipe") / "prefect"
LOCAL_POOL = "sagepipe-local"
STATE_FILE = "server.json"
DEFAULT_PORT = 4200
PORTS_TRIED = 50  # DEFAULT_PORT .. DEFAULT_PORT + 49
PORT_RACES = 3  # a port taken while the server started: tried again on the next free one


class ServerError(PipelineError):
    pass


class PortTaken(ServerError):
    """The server could not bind its port: something else took it after the check."""


@dataclass(frozen=True)
class LocalServer:
    api_url: str
    pool: str
    server_pid: int
    worker_pid: int  # 0: no worker (a server for `sagepipe run` only)
    directory: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def _read(directory: Path) -> LocalServer | None:
    path = Path(directory) / STATE_FILE
    try:
        return LocalServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(directory: Path = DEFAULT_DIR) -> LocalServer | None:
    """The server started from ``directory``, if its process is still there (a worker is
    reported only while it runs too)."""
    server = _read(directory)
    if server is None or not (pid_alive(server.server_pid) and _is_prefect(server.server_pid)):
        return None
    if server.worker_pid and not (pid_alive(server.worker_pid)
                                  and _is_prefect(server.worker_pid)):
        server = replace(server, worker_pid=0)
    return server


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One starter at a time: two `sagepipe run`s at once share one server."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_server(directory: Path = DEFAULT_DIR, *, port: int | None = None, ui: bool = True,
                  timeout: float = 120.0) -> tuple[LocalServer, bool]:
    """(the server, whether it was started now). Reuses the one running from
    ``directory``; else starts one on ``port`` (default: 4200, or the next free port)."""
    directory = Path(directory).resolve()
    with _locked(directory):
        current = running(directory)
        if current is not None:
            if _get(f"{current.api_url}/health", timeout=5.0) is not None:
                return current, False
            down(directory, grace=5)  # alive but not answering: start afresh
        else:
            _forget(directory)
        first = DEFAULT_PORT
        for attempt in range(PORT_RACES + 1):
            chosen = _check_port_free(port) if port else _free_port(first)
            try:
                server, api_url = _start_server(directory, chosen, ui, timeout)
                break
            except PortTaken:
                # another program bound the port while this server started (another
                # `sagepipe run` in another project, say): on to the next free one
                if port or attempt == PORT_RACES:
                    raise
                first = chosen + 1
        result = LocalServer(api_url, LOCAL_POOL, server.pid, 0, str(directory))
        _write(directory, result)
        return result, True


def _start_server(directory: Path, port: int, ui: bool,
                  timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """The server process on ``port`` once its API answers, and the API's URL."""
    api_url = f"http://127.0.0.1:{port}/api"
    server = _start(_server_command(port), directory / "server.log",
                    _server_env(directory, port, ui))
    try:
        _wait(lambda: _get(f"{api_url}/health") is not None, timeout, server,
              directory / "server.log", "the Prefect server to answer")
    except ServerError as exc:
        exited = server.poll() is not None  # on its own: not stopped by us
        _stop_group(server.pid, grace=5)
        if exited and not _port_free(port):
            raise PortTaken(f"{exc}\n(port {port} was taken while the server started)") \
                from None
        raise
    except BaseException:
        _stop_group(server.pid, grace=5)
        raise
    return server, api_url


def up(directory: Path = DEFAULT_DIR, *, port: int | None = None, pool: str = LOCAL_POOL,
       poll_seconds: float = 5.0, ui: bool = True, timeout: float = 120.0) -> LocalServer:
    """The server (reused, or started) and a worker for ``pool``; waits until both are
    ready."""
    directory = Path(directory).resolve()
    server, _ = ensure_server(directory, port=port, ui=ui, timeout=timeout)
    if server.worker_pid:
        return server
    base = _base_env()
    worker_env = {**base, "PREFECT_API_URL": server.api_url,
                  "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)}
    port_of = server.api_url.rsplit(":", 1)[1].split("/")[0]
    worker = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                     "--type", "process", "--install-policy", "never",
                     "--name", f"sagepipe-local-{port_of}"],
                    directory / "worker.log", worker_env)
    try:
        _wait(lambda: _worker_online(server.api_url, pool), timeout, worker,
              directory / "worker.log", f"a worker polling the {pool!r} work pool")
    except BaseException:
        _stop_group(worker.pid, grace=5)
        raise
    result = replace(server, pool=pool, worker_pid=worker.pid)
    with _locked(directory):
        _write(directory, result)
    return result


def down(directory: Path = DEFAULT_DIR, *, grace: float = 15.0) -> LocalServer | None:
    """Stop the worker, then the server; returns what was stopped (None: nothing was up,
    e.g. a stale pid file, which is removed)."""
    server = _read(directory)
    if server is None:
        _forget(Path(directory))
        return None
    was_up = any(pid_alive(pid) and _is_prefect(pid)
                 for pid in (server.worker_pid, server.server_pid) if pid)
    _stop_group(server.worker_pid, grace=grace)
    _stop_group(server.server_pid, grace=grace)
    _forget(Path(directory))
    return server if was_up else None


def _write(directory: Path, server: LocalServer) -> None:
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(server), indent=2))
    tmp.replace(path)


def _forget(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()


def _base_env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    base["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return base


def _server_env(directory: Path, port: int, ui: bool) -> dict[str, str]:
    return {**_base_env(), "PREFECT_HOME": str(directory / "home"),
            "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_UI_ENABLED": str(ui).lower(),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}


def _server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(port)]


def _free_port(preferred: int) -> int:
    for port in range(preferred, preferred + PORTS_TRIED):
        if _port_free(port):
            return port
    raise ServerError(f"Ports {preferred}-{preferred + PORTS_TRIED - 1} on 127.0.0.1 are all "
                      "in use; set PREFECT_API_URL to a Prefect server you run, or run with "
                      "--no-server.")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _check_port_free(port: int) -> int:
    if not _port_free(port):
        raise ServerError(f"Port {port} on 127.0.0.1 is in use (another Prefect server?). "
                          "Stop it, or pick another port with --port.")
    return port


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # a session of its own: the terminal's Ctrl-C does not reach it, down() stops the group
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(Path.cwd()),
                                start_new_session=True)


def _get(url: str, timeout: float = 2.0) -> Any:
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _worker_online(api_url: str, pool: str) -> bool:
    try:
        response = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={},
                              timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and any(
        w.get("status") == "ONLINE" for w in response.json())


def _wait(ready: Any, timeout: float, process: subprocess.Popen[bytes], log: Path,
          what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServerError(f"Gave up waiting for {what}: the process exited with "
                              f"{process.returncode}. End of {log}:\n{tail}")
        if time.monotonic() > deadline:
            raise ServerError(f"Gave up waiting for {what} after {timeout:.0f} s; see {log}")
        time.sleep(0.3)


def _is_prefect(pid: int) -> bool:
    """Guards against a recycled pid: on Linux, the process must be a prefect command."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return sys.platform != "linux"
    try:
        return b"prefect" in cmdline.read_bytes()
    except OSError:
        return False


def _stop_group(pid: int, *, grace: float) -> None:
    """SIGTERM the process group ``pid`` leads, SIGKILL what is left after ``grace``."""
    if not pid_alive(pid) or not _is_prefect(pid):
        _reap(pid)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (no zombie left)."""
    if not pid:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
