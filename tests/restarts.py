"""A machine restart, as the local runtime's state sees it (for tests and the fault suite).

A restart kills every process and gives the kernel a new boot id. Tests cannot reboot the
machine, so they do what it does to a local state: kill every process working in it and
mark each process recorded in its endpoints as started in an earlier boot.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from sagepipe.tasks.local.state import StateStore

__all__ = ["kill_state_processes", "simulate_machine_restart"]

EARLIER_BOOT = "an-earlier-boot"


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def kill_state_processes(root: Path) -> list[int]:
    """SIGKILL every process working under ``root`` or naming it on its command line."""
    root_s = str(Path(root).resolve())
    killed: list[int] = []
    for _ in range(3):  # a process may start another while we kill
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue
            cwd = _cwd(int(entry.name))
            if cwd == root_s or cwd.startswith(root_s + "/") or root_s in cmdline:
                found.append(int(entry.name))
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def mark_earlier_boot(root: Path) -> None:
    """Every process recorded in the state's endpoints was started in an earlier boot."""
    state = StateStore(root)

    def earlier(doc: dict[str, Any]) -> None:
        for part in (doc.get("current"), doc.get("pending"), doc.get("supervisor")):
            if isinstance(part, dict) and part.get("pid"):
                part["boot"] = EARLIER_BOOT
                if part.get("ident"):
                    part["ident"] = f"{EARLIER_BOOT}:{part['ident'].rsplit(':', 1)[-1]}"
    for doc in state.list("endpoint"):
        state.update("endpoint", doc["EndpointName"], earlier)


def simulate_machine_restart(root: Path) -> list[int]:
    killed = kill_state_processes(root)
    mark_earlier_boot(root)
    return killed
