"""A local Prefect server and a process worker: what ``prefect deployment run`` needs.

``up`` starts ``prefect server start`` on 127.0.0.1 and ``prefect worker start``
for the local work pool, each in its own process group, with logs, pids and the
server's database under ``.sagepipe/prefect/``. It returns once the API answers
and the worker is polling, so ``prefect deploy`` can follow at once. ``down``
stops both: SIGTERM to each group, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from sagepipe.tasks.errors import PipelineError
from sagepipe.tasks.local.common import pid_alive

__all__ = ["LOCAL_POOL", "LocalServer", "ServerError", "down", "running", "up"]

# under the folder sagepipe runs in (the project), beside the local runtime's state
DEFAULT_DIR = Path(".sagepipe") / "prefect"
LOCAL_POOL = "sagepipe-local"
STATE_FILE = "server.json"


class ServerError(PipelineError):
    pass


@dataclass(frozen=True)
class LocalServer:
    api_url: str
    pool: str
    server_pid: int
    worker_pid: int
    directory: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def running(directory: Path = DEFAULT_DIR) -> LocalServer | None:
    """The server started from ``directory``, if both of its processes are still there."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    server = LocalServer(**json.loads(path.read_text()))
    return server if pid_alive(server.server_pid) and pid_alive(server.worker_pid) else None


def up(directory: Path = DEFAULT_DIR, *, port: int = 4200, pool: str = LOCAL_POOL,
       poll_seconds: float = 5.0, ui: bool = True, timeout: float = 120.0) -> LocalServer:
    """Start the server and a worker for ``pool``; wait until both are ready."""
    directory = Path(directory).resolve()
    if (current := running(directory)) is not None:
        return current
    down(directory, grace=5)  # what is left of an earlier server whose worker died, say
    directory.mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    api_url = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    base["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    server_env = {**base, "PREFECT_HOME": str(directory / "home"),
                  "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
                  "PREFECT_SERVER_UI_ENABLED": str(ui).lower(), "PREFECT_API_URL": api_url}
    server = _start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(port)], directory / "server.log", server_env)
    worker_pid = 0
    try:
        _wait(lambda: _get(f"{api_url}/health") is not None, timeout, server,
              directory / "server.log", "the Prefect server to answer")
        worker_env = {**base, "PREFECT_API_URL": api_url,
                      "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)}
        worker = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                         "--type", "process", "--install-policy", "never",
                         "--name", f"sagepipe-local-{port}"],
                        directory / "worker.log", worker_env)
        worker_pid = worker.pid
        _wait(lambda: _worker_online(api_url, pool), timeout, worker, directory / "worker.log",
              f"a worker polling the {pool!r} work pool")
    except BaseException:
        _stop_group(worker_pid, grace=5)
        _stop_group(server.pid, grace=5)
        raise
    result = LocalServer(api_url, pool, server.pid, worker_pid, str(directory))
    (directory / STATE_FILE).write_text(json.dumps(asdict(result), indent=2))
    return result


def down(directory: Path = DEFAULT_DIR, *, grace: float = 15.0) -> LocalServer | None:
    """Stop the worker, then the server; returns what was stopped (None: nothing was up)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    server = LocalServer(**json.loads(path.read_text()))
    _stop_group(server.worker_pid, grace=grace)
    _stop_group(server.server_pid, grace=grace)
    path.unlink()
    return server


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServerError(f"Port {port} on 127.0.0.1 is in use (another Prefect server?). "
                              "Stop it, or pick another port with --port.") from None


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # a session of its own: the terminal's Ctrl-C does not reach it, down() stops the group
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(Path.cwd()),
                                start_new_session=True)


def _get(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=2.0)
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
