"""Serving processes of local endpoints: start one, ask it ``/ping``, stop its group.

Shared by real-time endpoints (:mod:`.endpoints`), whose server runs from deploy to
delete, and serverless ones (:mod:`.serverless`), whose server is started by the first
request after an idle period and stopped when idle again.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .common import pid_alive

__all__ = ["alive", "ping", "start_server", "stop_process_group", "tail"]

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def stop_process_group(pid: int | None, *, grace: float = 5.0) -> None:
    """SIGTERM a server's process group, SIGKILL it after ``grace`` seconds."""
    if not pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            child = _CHILDREN.get(pid)
            if child is not None and child.poll() is not None:
                _CHILDREN.pop(pid, None)
                return
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs; reaps it if this process started it and it ended."""
    child = _CHILDREN.get(pid or 0)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(child.pid, None)
        return False
    return pid_alive(pid)


def ping(port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_server(command: list[str], env: dict[str, str], workdir: Path) -> tuple[int, int]:
    """Start ``command`` detached (its own session) on a free port; (pid, port).

    The port goes to the container as SAGEMAKER_BIND_TO_PORT; its output is appended to
    ``workdir/server.log``.
    """
    port = free_port()
    env = {**env, "SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_BIND_HOST": "127.0.0.1"}
    with open(workdir / "server.log", "ab") as log:
        proc = subprocess.Popen(command, cwd=str(workdir), env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid, port


def tail(workdir: Path, lines: int = 5) -> str:
    """The last lines of a server's log, on one line."""
    try:
        text = (workdir / "server.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"
