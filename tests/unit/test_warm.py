"""The warm start of ``sagepipe run`` (sagepipe/warm.py): a real warm process, real forks,
the real console script; the runs stop early (no Prefect API answers, or Ctrl-C) so that
each takes a second, but every one of them goes through the same path a full run does:
settings, preflight, the Prefect API check."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagepipe import warm

SAGEPIPE = str(Path(sys.executable).parent / "sagepipe")


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # short: a Unix socket's path is at most 107 bytes
    path = Path(tempfile.mkdtemp(prefix="spw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(folder: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PREFECT_API_URL")}
    env.update(SAGEPIPE_WARM="on", SAGEPIPE_WARM_DIR=str(folder), PREFECT_HOME=str(home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", NO_COLOR="1", **extra)
    return env


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A warm process, started as `sagepipe run` starts one, in an environment that
    differs from the runs' (its own PREFECT_API_URL): each run must use its own."""
    home = tmp_path_factory.mktemp("warm-home")
    env = _env(folder, home, PREFECT_API_URL="http://127.0.0.1:9/api")
    name = _key(env)
    with open(folder / f"{name}.log", "ab") as log:  # where `sagepipe run` sends its log
        process = subprocess.Popen([sys.executable, "-P", "-m", "sagepipe.warm", "--serve"],
                                   env=env, stdout=log, stderr=log, start_new_session=True,
                                   cwd="/")
    sock = folder / f"{name}.sock"
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert process.poll() is None, _log(folder)
        assert time.monotonic() < deadline, "the warm process did not start listening"
        time.sleep(0.1)
    yield {"process": process, "home": home, "sock": sock}
    if process.poll() is None:
        process.kill()
        process.wait()


def _key(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", "from sagepipe.warm import key; print(key())"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def project(folder: Path, server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Path:
    """A folder whose local state (relative to it) holds the example data set."""
    cwd = tmp_path_factory.mktemp("warm-project")
    pushed = subprocess.run([SAGEPIPE, "data", "push", "--example", "--no-trigger",
                             "--set=runtime.state_dir=state"], cwd=cwd,
                            env=_env(folder, server["home"]), capture_output=True, text=True,
                            timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    return cwd


class Silent:
    """A TCP port that accepts connections and never answers: a run waits on it in the
    Prefect API check (up to its 5 s timeout) until a signal reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _log(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("*.log"))


def _run_pid(folder: Path, cwd: Path, before: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = _log(folder)[len(before):]
        found = re.search(rf"run (\d+): run .* in {re.escape(str(cwd))}", new)
        if found:
            return int(found[1])
        time.sleep(0.05)
    raise AssertionError(f"the warm process never took the run:\n{_log(folder)}")


def test_a_run_takes_this_commands_environment_folder_and_terminal(
        folder: Path, server: dict[str, Any], project: Path) -> None:
    port = _closed_port()
    before = _log(folder)
    done = subprocess.run([SAGEPIPE, "run", "--set=runtime.state_dir=state"], cwd=project,
                          env=_env(folder, server["home"],
                                   PREFECT_API_URL=f"http://127.0.0.1:{port}/api"),
                          capture_output=True, text=True, timeout=60)
    # the warm process took it (it logs each run) ...
    pid = _run_pid(folder, project, before)
    assert pid != server["process"].pid
    # ... found the data under the relative state dir (this command's folder), used this
    # command's PREFECT_API_URL (not the warm process's :9), wrote to this command's
    # stderr, and its exit status is the command's: 4, no Prefect API (README)
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert f"No Prefect API answers at http://127.0.0.1:{port}/api" in done.stderr
    assert "127.0.0.1:9/" not in done.stderr
    assert re.search(rf"run {pid} ended: 4", _log(folder))


def test_a_usage_error_in_a_warm_run_names_the_command(
        folder: Path, server: dict[str, Any], project: Path) -> None:
    """click names the program after ``__main__``; in the warm process that is a module,
    so it said ``Usage: python -m sagepipe...``."""
    before = _log(folder)
    done = subprocess.run([SAGEPIPE, "run", "--sett", "x=1"], cwd=project,
                          env=_env(folder, server["home"]), capture_output=True, text=True,
                          timeout=60)
    _run_pid(folder, project, before)  # the warm process took it
    assert done.returncode == 2, done.stderr
    assert "Usage: sagepipe run [OPTIONS]" in done.stderr, done.stderr
    assert "No such option: --sett" in done.stderr and "python -m" not in done.stderr


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_hanging_run(folder: Path, server: dict[str, Any], project: Path
                       ) -> tuple[subprocess.Popen[str], Silent, int]:
    silent = Silent()
    before = _log(folder)
    client = subprocess.Popen([SAGEPIPE, "run", "--set=runtime.state_dir=state"], cwd=project,
                              env=_env(folder, server["home"],
                                       PREFECT_API_URL=f"http://127.0.0.1:{silent.port}/api"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = _run_pid(folder, project, before)
    assert silent.accepted.wait(30), "the run never reached the Prefect API check"
    _STARTED.append((client, pid))
    return client, silent, pid


_STARTED: list[tuple[subprocess.Popen[str], int]] = []


@pytest.fixture(autouse=True)
def _no_run_left() -> Iterator[None]:
    """A failed test leaves no stopped or waiting run behind (the warm process waits for
    its runs before it stops: the next tests would wait too)."""
    yield
    while _STARTED:
        client, pid = _STARTED.pop()
        for target in (pid, client.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        client.wait(timeout=10)


def test_ctrl_c_reaches_the_run(folder: Path, server: dict[str, Any], project: Path) -> None:
    client, silent, pid = _start_hanging_run(folder, server, project)
    try:
        client.send_signal(signal.SIGINT)
        # 130, not 4: the run ended by the signal, not by the API check's 5 s timeout
        _, err = client.communicate(timeout=30)
    finally:
        silent.close()
    # the command's own Ctrl-C handling (flows/cli.py): "Interrupted.", 128 + SIGINT
    assert client.returncode == 130, err
    assert "Interrupted." in err
    assert re.search(rf"run {pid} ended: 130", _log(folder))


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(check: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_ctrl_z_stops_the_run_and_fg_resumes_it(folder: Path, server: dict[str, Any],
                                                project: Path) -> None:
    """Ctrl-Z (SIGTSTP) stops the run and then the command, as the shell expects of a job;
    `fg` (SIGCONT to the command) resumes both."""
    client, silent, pid = _start_hanging_run(folder, server, project)
    try:
        client.send_signal(signal.SIGTSTP)
        assert _until(lambda: _state(pid) == "T" and _state(client.pid) == "T"), \
            (_state(pid), _state(client.pid))
        client.send_signal(signal.SIGCONT)
        assert _until(lambda: _state(pid) != "T" and _state(client.pid) != "T")
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=30)
    finally:
        silent.close()
    assert client.returncode == 130, err


def test_a_killed_command_takes_its_run_with_it(folder: Path, server: dict[str, Any],
                                                project: Path) -> None:
    """As a cold `sagepipe run` killed with SIGKILL: the flow's process is gone too (its
    jobs' runners are not: they are detached, and a new run re-attaches)."""
    client, silent, pid = _start_hanging_run(folder, server, project)
    try:
        client.kill()
        client.wait()
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the run outlived its command"
    finally:
        silent.close()
    assert re.search(rf"run {pid} ended: 137", _log(folder))  # SIGKILL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_warm_process_per_installation(folder: Path, server: dict[str, Any]) -> None:
    """A second one (two first runs at once) sees the lock and leaves at once."""
    second = subprocess.run([sys.executable, "-m", "sagepipe.warm", "--serve"],
                            env=_env(folder, server["home"]), capture_output=True, timeout=30)
    assert second.returncode == 0
    assert server["process"].poll() is None
    assert len(list(folder.glob("*.sock"))) == 1


def test_stop_all_stops_it(folder: Path, server: dict[str, Any]) -> None:
    """`sagepipe down` calls this: SIGTERM to the lock's holder, which removes its socket."""
    told = warm.stop_all(folder)
    assert told == [server["process"].pid]
    assert server["process"].wait(timeout=10) == 0
    assert not server["sock"].exists()
    assert warm.stop_all(folder) == []


# ---- the decisions, without processes ---------------------------------------------------

@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["run"], {}, True),
    (["--debug", "run", "--set", "gate.margin=0.1"], {}, True),
    (["run", "--no-server"], {}, False),  # promises to leave nothing running
    (["run", "--help"], {}, False),
    (["status"], {}, False),  # only `run` imports Prefect
    (["data", "push", "run"], {}, False),
    (["run"], {"SAGEPIPE_WARM": "off"}, False),
    (["run"], {"SAGEPIPE_PREFECT_SERVER": "temporary"}, False),
    (["run"], {"CI": "true"}, False),  # a build machine keeps nothing running
    (["run"], {"CI": "true", "SAGEPIPE_WARM": "on"}, True),
    (["run"], {"CI": "false"}, True),
])
def test_which_commands_go_warm(argv: list[str], env: dict[str, str], expected: bool) -> None:
    assert warm.wanted(argv, env) is expected


def test_a_folder_others_can_open_is_not_used(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user who could plant a socket there would get the command's environment
    (credentials included): such a folder means a cold run, never a connection."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("SAGEPIPE_WARM_DIR", str(shared))
    assert warm.directory() is None
    shared.chmod(0o700)
    assert warm.directory() == shared
    link = tmp_path / "link"
    link.symlink_to(shared)
    monkeypatch.setenv("SAGEPIPE_WARM_DIR", str(link))
    assert warm.directory() is None


def test_an_edited_module_makes_it_stale(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "spw_edited_module.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("spw_edited_module")
    try:
        files = warm.snapshot()
        assert str(module) in files
        assert warm.changed(files) is None
        os.utime(module, ns=(files[str(module)] + 10**9, files[str(module)] + 10**9))
        assert warm.changed(files) == str(module)
        module.unlink()
        assert warm.changed(files) == str(module)
    finally:
        sys.modules.pop("spw_edited_module", None)


def test_finish_exits_as_the_interpreter_would(tmp_path: Path) -> None:
    """`finish` skips only the module teardown: a non-daemon thread is waited for, atexit
    handlers run (logging.shutdown flushes a file handler), buffered output is written,
    the exit status is the command's."""
    script = tmp_path / "probe.py"
    script.write_text(f'''
import atexit, logging, sys, threading, time
from sagepipe.warm import finish
out = {str(tmp_path)!r}
logging.basicConfig(filename=out + "/log.txt", level=logging.INFO)
logging.info("logged")
def late():
    time.sleep(0.3)
    open(out + "/thread.txt", "w").write("joined")
threading.Thread(target=late).start()
atexit.register(lambda: open(out + "/atexit.txt", "w").write("ran"))
sys.stdout.write("buffered, no newline")
finish(3)
''')
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered, no newline"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "logged" in (tmp_path / "log.txt").read_text()
    message = subprocess.run([sys.executable, "-c", "from sagepipe.warm import finish; "
                              "finish('a message')"], capture_output=True, text=True, timeout=60)
    assert (message.returncode, message.stderr) == (1, "a message\n")


def test_ctrl_c_while_the_command_winds_down_exits_at_once_without_a_traceback(
        tmp_path: Path) -> None:
    """A second Ctrl-C while Prefect's log workers drain (an atexit handler, up to 5 s):
    the CLI's SIGINT handler raised SystemExit inside it, and Python printed "Exception
    ignored in atexit callback" with a traceback."""
    script = tmp_path / "probe.py"
    script.write_text('''
import atexit, os, signal, sys, time
from sagepipe.warm import finish
def interrupted(signum, frame):  # what sagepipe.flows.cli installs
    sys.exit(128 + signum)
signal.signal(signal.SIGINT, interrupted)
def draining():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
atexit.register(draining)
finish(0)
''')
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 130
    assert done.stderr == "\nInterrupted.\n"


def test_a_cold_run_starts_one_for_the_next_run(server: dict[str, Any], project: Path) -> None:
    """No warm process yet: the command runs in its own process (as before) and starts one
    in the background, saying so the first time only."""
    folder = Path(tempfile.mkdtemp(prefix="spw-"))
    try:
        env = _env(folder, server["home"], PREFECT_API_URL=f"http://127.0.0.1:{_closed_port()}/api")
        first = subprocess.run([SAGEPIPE, "run", "--set=runtime.state_dir=state"], cwd=project,
                               env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 4, first.stderr
        assert "starting a warm process" in first.stderr
        assert _until(lambda: any(folder.glob("*.sock")), timeout=60), _log(folder)
        second = subprocess.run([SAGEPIPE, "run", "--set=runtime.state_dir=state"],
                                cwd=project, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 4, second.stderr
        assert "starting a warm process" not in second.stderr
        assert re.search(rf"run \d+: run .* in {re.escape(str(project))}", _log(folder))
    finally:
        told = warm.stop_all(folder)
        assert len(told) == 1
        assert _until(lambda: not _alive(told[0]), timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def test_premade_tls_contexts_are_each_handed_out_once() -> None:
    """The contexts made before the fork go to the calls Prefect's clients make, one each;
    other calls, and calls after they are used up, make new ones (in a process of its own:
    the patch is for a warm run, not for pytest)."""
    probe = '''
import ssl, certifi
from sagepipe import warm
warm._premake_tls()
made = list(warm._tls["contexts"])
warm.use_premade_tls()
warm.use_premade_tls()  # twice: still one layer
first = ssl.create_default_context(cafile=certifi.where())
second = ssl.create_default_context(cafile=certifi.where())
assert first is made[-1] and second is made[-2], "premade, in turn"
assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
assert all(ssl.create_default_context() is not m for m in made), "no cafile: a new one"
assert all(ssl.create_default_context(cafile=certifi.where(), capath="/etc/ssl/certs")
           is not m for m in made), "other arguments: a new one"
rest = [ssl.create_default_context(cafile=certifi.where()) for _ in range(len(made) + 2)]
assert sum(any(r is m for m in made) for r in rest) == len(made) - 2, "each once"
assert len({id(r) for r in rest}) == len(rest)
print("ok")
'''
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
