"""The local Prefect server ``sagepipe run`` keeps: a stale pid file, a recycled pid and a
port in use do not stop it from starting, and nothing but its own process is stopped."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from sagepipe.flows import server
from sagepipe.tasks.local.common import pid_alive

pytestmark = [pytest.mark.flow]


def test_a_stale_pid_file_and_a_port_in_use_are_stepped_around(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "prefect"
    directory.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(server, "DEFAULT_PORT", port)
        # the pid file names a process that is not a Prefect server (a recycled pid)
        stranger = subprocess.Popen(["sleep", "300"])
        (directory / server.STATE_FILE).write_text(json.dumps({
            "api_url": f"http://127.0.0.1:{port}/api", "pool": server.LOCAL_POOL,
            "server_pid": stranger.pid, "worker_pid": 0, "directory": str(directory)}))
        try:
            assert server.running(directory) is None
            started, new = server.ensure_server(directory, ui=False)
            try:
                assert new
                assert started.api_url != f"http://127.0.0.1:{port}/api"  # the next port
                assert httpx.get(f"{started.api_url}/health", timeout=10).status_code == 200
                assert stranger.poll() is None  # never signalled: not ours
                again, new_again = server.ensure_server(directory, ui=False)
                assert (again, new_again) == (started, False)  # reused, not restarted
            finally:
                stopped = server.down(directory, grace=10)
            assert stopped == started
            assert not pid_alive(started.server_pid)
            assert not (directory / server.STATE_FILE).exists()
            assert stranger.poll() is None
        finally:
            stranger.kill()
            stranger.wait()


def test_a_port_taken_while_the_server_starts_moves_it_to_the_next_free_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `sagepipe run`s in two projects at once both find the port free; the server
    that binds it second fails, and is started again on the next free port."""
    directory = tmp_path / "prefect"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(server, "DEFAULT_PORT", port)
        port_free, checked = server._port_free, []

        def free_when_checked(candidate: int) -> bool:  # taken just after the check
            if candidate == port and not checked:
                checked.append(candidate)
                return True
            return port_free(candidate)

        monkeypatch.setattr(server, "_port_free", free_when_checked)
        started, new = server.ensure_server(directory, ui=False)
        try:
            assert new and checked == [port]  # the first start was on the taken port
            assert started.api_url != f"http://127.0.0.1:{port}/api"
            assert httpx.get(f"{started.api_url}/health", timeout=10).status_code == 200
            assert server.running(directory) == started
        finally:
            server.down(directory, grace=10)
        assert not pid_alive(started.server_pid)


def test_a_pid_file_of_a_dead_server_is_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "prefect"
    directory.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (directory / server.STATE_FILE).write_text(json.dumps({
        "api_url": "http://127.0.0.1:9/api", "pool": server.LOCAL_POOL,
        "server_pid": gone.pid, "worker_pid": 0, "directory": str(directory)}))
    assert server.running(directory) is None
    assert server.down(directory) is None  # nothing was up: the file is just forgotten
    assert not (directory / server.STATE_FILE).exists()
