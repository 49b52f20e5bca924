"""Processes the benchmark starts: timed commands, peak memory, a Prefect server.

Every measured thing runs as its own process, the way a user starts it, and is
timed from the outside with a monotonic clock. Peak RSS comes from the kernel's
accounting of that one child (``wait4``), so it covers the whole run without
sampling. A child inherits its parent's high-water mark across fork and exec, so
the child whose memory is measured is started by a small launcher process, not by
this one (which holds numpy, pandas and scikit-learn).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Timed", "free_port", "median", "prefect_server", "run_timed"]


@dataclass(frozen=True)
class Timed:
    seconds: float
    peak_rss_mb: float
    returncode: int


class CommandFailed(RuntimeError):
    pass


# Runs argv[2:] and writes its wall seconds and peak RSS (KiB) to the file argv[1].
_LAUNCHER = """import json, os, subprocess, sys, time
started = time.monotonic()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.monotonic() - started
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "rss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(command: list[str], *, env: dict[str, str], log: Path,
              cwd: Path | None = None, timeout: float = 900.0,
              memory: bool = False) -> Timed:
    """Run ``command`` to completion; its wall seconds (and, with ``memory``, peak RSS).

    Output goes to ``log``; a non-zero exit raises with the log's tail, because a
    benchmark of a run that failed measures nothing.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    measured = log.with_suffix(".measure.json")
    if memory:
        command = [sys.executable, "-c", _LAUNCHER, str(measured), *command]
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status = os.waitpid(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise CommandFailed(f"{' '.join(command[:3])} ... exited {proc.returncode}:\n"
                            + "\n".join(tail))
    if memory:
        inner = json.loads(measured.read_text())
        measured.unlink()
        return Timed(inner["seconds"], inner["rss_kib"] / 1024.0, proc.returncode)
    return Timed(seconds, float("nan"), proc.returncode)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@contextmanager
def prefect_server(python_bin: Path, home: Path, env: dict[str, str], *,
                   timeout: float = 180.0) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own home; yields its API URL."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("ab")
    server = subprocess.Popen(
        [str(python_bin / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--analytics-off"],
        env={**env, "PREFECT_HOME": str(home)}, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if server.poll() is not None:
                raise CommandFailed(f"prefect server exited {server.returncode}; see "
                                    f"{home / 'server.log'}")
            if time.monotonic() > deadline:
                raise CommandFailed(f"prefect server not healthy after {timeout:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
