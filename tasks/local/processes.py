"""Which process is which, across kills and machine restarts; and sweeping up after them.

A pid alone does not name a process for long: the kernel reuses it, and after a restart
every pid in the state belongs to somebody else. :func:`identity` adds the boot (the
kernel's ``boot_id``) and the process's start time (``/proc/<pid>/stat``), so a stored
``(pid, identity)`` is that very process or nothing. :func:`this_boot` is how the local
runtime tells an endpoint that stopped because the machine restarted (it stays down until
``sagepipe up``) from one whose process was killed (its supervisor starts it again).

:func:`sweep` kills what a kill can leave behind under a state directory: a container a
killed job runner no longer waits for, a server whose pid was never recorded. Linux only
(``/proc``); elsewhere identities are ``None`` (pids are trusted) and nothing is swept.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

from .common import pid_alive

__all__ = ["alive_as", "identity", "kill_group", "sweep", "this_boot"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def this_boot() -> str | None:
    """The kernel's id of the current boot (None where there is none to read); read once:
    a process does not outlive its boot."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def identity(pid: int | None) -> str | None:
    """``<boot>:<start time>`` of a running process, None if it is gone or unknowable."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return f"{this_boot()}:{fields[19]}"  # field 22 of stat: start time in clock ticks


def alive_as(pid: int | None, ident: str | None) -> bool:
    """True while ``pid`` runs and is the process recorded as ``ident`` (a recorded identity
    of None, where /proc cannot be read, trusts the pid)."""
    if not pid_alive(pid):
        return False
    return ident is None or identity(pid) == ident


def kill_group(pgid: int | None) -> None:
    """SIGKILL what is left of a process group whose leader is gone (a server's workers,
    a job's container). Linux never gives a new process the id of a group that still has
    members, so this reaches only that group."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def sweep(folders: list[Path], *, grace: float = 2.0) -> list[int]:
    """SIGTERM (then, after ``grace`` seconds, SIGKILL) every process working in one of
    ``folders``; returns their pids."""
    prefixes = [str(Path(f).resolve()) for f in folders]
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cwd = _cwd(int(entry.name))
        if cwd and any(cwd == p or cwd.startswith(p + os.sep) for p in prefixes):
            found.append(int(entry.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [pid for pid in found if pid_alive(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [pid for pid in left if pid_alive(pid)]
    return found
