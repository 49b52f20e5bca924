"""Killing at a kill point: watch the call trail, wait the point's delay, SIGKILL.

:class:`Trigger` follows the trail file a command appends to (from where it ended when
the command started), counts the calls that match the point's anchor and, at the anchor's
occurrence, sleeps the point's delay and sends SIGKILL to the pids the suite's resolver
names for the target at that moment (the CLI, the job runner in progress, the endpoint's
newest server, its supervisor, or every process of the state for a machine restart).

:func:`processes_of` lists the processes that belong to a local state: those whose
working directory is in it or whose command line names it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fault_plan import Call, KillPoint, parse_trail

__all__ = ["Killed", "Proc", "Trigger", "kill_all", "processes_of"]

_POLL = 0.005


@dataclass
class Killed:
    fired: bool = False
    at: float | None = None  # seconds after the command started
    pids: list[int] = field(default_factory=list)
    what: str = ""
    anchor_seen_at: float | None = None


class Trigger(threading.Thread):
    """Kills at ``point`` during one command (started at ``started``, epoch seconds)."""

    def __init__(self, trail: Path, point: KillPoint, *, started: float, command_pid: int,
                 resolve: Callable[[Call | None], tuple[list[int], str]]) -> None:
        super().__init__(daemon=True)
        self.trail, self.point, self.started = trail, point, started
        self.command_pid, self.resolve = command_pid, resolve
        self.offset = trail.stat().st_size if trail.exists() else 0
        self.done = threading.Event()
        self.result = Killed()

    def stop(self) -> None:
        self.done.set()

    def run(self) -> None:
        anchor = self.point.anchor
        call: Call | None = None
        if anchor.actor != "start":
            call = self._wait_for_anchor()
            if call is None:
                self.result.what = "the command ended before its anchor came"
                return
            self.result.anchor_seen_at = round(call.t - self.started, 3)
            wake = call.t + self.point.delay_now(call.t - self.started)
        else:
            wake = self.started + self.point.delay
        while not self.done.is_set() and time.time() < wake:
            time.sleep(min(_POLL, max(wake - time.time(), 0)))
        if self.done.is_set():
            self.result.what = (f"the command ended {wake - time.time():.2f} s before the "
                                "kill was due")
            return
        pids, what = self.resolve(call)
        self.result.at = round(time.time() - self.started, 3)
        self.result.what = what
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                self.result.pids.append(pid)
            except ProcessLookupError:
                pass
        self.result.fired = bool(self.result.pids)

    def _wait_for_anchor(self) -> Call | None:
        seen: Counter[tuple[str, str]] = Counter()
        buffer = ""
        while not self.done.is_set():
            try:
                with open(self.trail, encoding="utf-8") as trail:
                    trail.seek(self.offset)
                    chunk = trail.read()
            except FileNotFoundError:
                chunk = ""
            if chunk:
                self.offset += len(chunk.encode())
                buffer += chunk
                lines, _, buffer = buffer.rpartition("\n")
                for call in parse_trail(lines):
                    if call.actor == "cli" and call.pid != self.command_pid:
                        continue  # another command's (an earlier, killed one)
                    if self.point.anchor.matches(call, seen):
                        return call
            time.sleep(_POLL)
        return None


@dataclass(frozen=True)
class Proc:
    pid: int
    cwd: str
    cmdline: str

    def __str__(self) -> str:
        return f"{self.pid} [{self.cwd}] {self.cmdline[:160]}"


def processes_of(root: Path) -> list[Proc]:
    """Live processes (not zombies) whose working directory is under ``root`` or whose
    command line names it."""
    root_s = str(Path(root).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except (OSError, IndexError):
            continue  # gone meanwhile
        if cwd == root_s or cwd.startswith(root_s + "/") or root_s in cmdline:
            found.append(Proc(int(entry.name), cwd, cmdline))
    return found


def kill_all(root: Path) -> list[int]:
    """SIGKILL every process of the state (a machine restart's effect on them)."""
    killed = []
    for _ in range(3):  # a process may start another while we kill
        procs = processes_of(root)
        if not procs:
            break
        for proc in procs:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed
