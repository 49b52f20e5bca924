"""A warm start for ``sagepipe run``: the command's first two seconds, paid once.

Every ``sagepipe run`` used to start a Python that imports Prefect (1.5 s on this
machine's kind, bench/, issue 16), sagepipe's flow and their dependencies before the
flow run could begin: on an unchanged re-run that start-up was two thirds of the wall
time. So the ``sagepipe`` command is this small module first, which imports nothing but
the standard library:

- A *warm process* (``python -m sagepipe.warm --serve``) has imported all of that once
  and waits on a Unix socket. For each ``sagepipe run`` it forks: the child takes the
  command's terminal (its stdin, stdout and stderr are handed over the socket), its
  working directory, environment, umask and arguments, re-reads Prefect's settings and
  logging set-up from them, and runs the command exactly as a new process would.
- This command (the client) forwards Ctrl-C, SIGTERM, SIGHUP and SIGWINCH to the child,
  stops it on Ctrl-Z and resumes it on ``fg``, and exits with the child's exit status.
  If the client dies, the child is killed at once (SIGKILL), as the command itself
  would have died: a killed ``sagepipe run`` is the same on both paths (its jobs'
  runners survive and a new run re-attaches).
- When no warm process answers, the command runs in this process as before (a *cold*
  run) and starts one in the background for the next run. It stops by itself after
  ``SAGEPIPE_WARM_IDLE`` seconds (default 1800) without a run, when any file of a module
  it imported changes (an upgrade or an edit: it would run stale code; the run that
  notices runs cold and starts a fresh one), and on ``sagepipe down``.

Off with ``SAGEPIPE_WARM=off`` (also off when ``CI`` is set, unless ``SAGEPIPE_WARM=on``,
so a build machine keeps nothing running) and for ``run --no-server``, which promises to
leave nothing behind. Only ``run`` goes warm: the other commands do not import Prefect.

Safety: the socket lives in a folder only this user can open (``$XDG_RUNTIME_DIR/sagepipe``,
else ``<tmp>/sagepipe-<uid>``, or ``SAGEPIPE_WARM_DIR``); a folder that is not this user's
or that others can open is not used. The warm process also checks the peer's uid. The
environment it gets (which may hold credentials) is the user's own, handed to a process
of the same user, and is never written anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "stop_all", "wanted"]

OFF = ("0", "off", "false", "no")
ON = ("1", "on", "true", "yes")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH, signal.SIGTSTP,
             signal.SIGCONT)
IDLE_SECONDS = 1800.0
# imported before the first fork: what a `sagepipe run` imports on its way to the first
# job (measured with -X importtime); any that fails to import is skipped
PRELOAD = (
    "sagepipe.flows.cli", "sagepipe.flows.runner", "sagepipe.flows.pipeline",
    "sagepipe.flows.estimate", "sagepipe.flows.console", "sagepipe.tasks.local",
    "sagepipe.tasks.local.runtime", "sagepipe.tasks.local.validation",
    "sagepipe.tasks.local.s3", "sagepipe.tasks.local.sagemaker",
    "prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration",
    "prefect.events.worker", "prefect.logging.handlers", "fastapi.encoders",
    "botocore.session", "boto3", "httpx", "typer", "yaml", "pandas",
)

SERVICE_MODELS = ("s3", "sagemaker", "sagemaker-runtime", "sns", "ecr", "codebuild", "logs",
                  "application-autoscaling")


def main() -> None:
    """The ``sagepipe`` console script."""
    argv = sys.argv[1:]
    if wanted(argv, os.environ):
        code = _run_warm(argv)
        if code is not None:
            sys.exit(code)
    _run_command()


def _run_command() -> None:
    from sagepipe.flows.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as exc:
        finish(exc.code)
    finish(0)


def _exit_now(signum: int, _frame: Any) -> None:
    with contextlib.suppress(OSError):
        os.write(2, b"\nInterrupted.\n")
    os._exit(128 + signum)


def finish(code: int | str | None) -> None:
    """Exit as the interpreter does — non-daemon threads joined, ``atexit`` handlers run
    (Prefect's log and event workers drain, ``logging.shutdown``, ``weakref.finalize``),
    the standard streams flushed — but without then tearing down every module and
    object one by one: for a process that imported Prefect and the flow that took
    ~0.45 s of every command's exit (bench/, issue 16), and the OS frees it all at once."""
    import atexit
    import threading

    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (or SIGTERM) while the command winds down (Prefect's log workers drain
        # for up to 5 s): the person wants out now, not a traceback from an atexit handler
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _exit_now)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def wanted(argv: list[str], env: Any) -> bool:
    """Whether this command line goes to a warm process."""
    switch = env.get("SAGEPIPE_WARM", "").strip().lower()
    if switch in OFF:
        return False
    if env.get("CI", "").strip().lower() not in ("", *OFF) and switch not in ON:
        return False
    if not (hasattr(os, "fork") and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")):
        return False
    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "run" or any(a in ("--no-server", "--help", "-h") for a in argv):
        return False
    return env.get("SAGEPIPE_PREFECT_SERVER", "").lower() not in ("temporary", "none", "off")


# ---- where: a folder only this user can open, one socket per installation -------------

def directory(create: bool = True) -> Path | None:
    """The warm processes' folder, or None if it is not safe to use."""
    configured = os.environ.get("SAGEPIPE_WARM_DIR")
    if configured:
        folder = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "sagepipe"
    else:
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"sagepipe-{os.getuid()}"
    if create:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return None
    try:
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def key() -> str:
    """One warm process per Python, sagepipe installation and start-up environment."""
    parts = [os.path.realpath(sys.executable), str(Path(__file__).resolve().parent),
             sys.version, *(f"{k}={os.environ.get(k, '')}" for k in
                            ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE",
                             "PYTHONOPTIMIZE", "PYTHONUTF8", "PYTHONWARNINGS"))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# ---- the client -------------------------------------------------------------------------

def _run_warm(argv: list[str]) -> int | None:
    """The command's exit status from a warm process, or None to run it here (cold)."""
    folder = directory()
    if folder is None:
        return None
    name = key()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(folder / f"{name}.sock"))
    except OSError:
        conn.close()
        _spawn(folder, name)
        return None
    pending: list[int] = []
    target: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        if not target:
            pending.append(signum)
            return
        # Ctrl-Z: the run stops, then this command (the shell's job); `fg` sends SIGCONT to
        # this command, which passes it on. SIGSTOP, not SIGTSTP: the run leads a session
        # of its own, and the kernel drops SIGTSTP to an orphaned process group
        with contextlib.suppress(ProcessLookupError):
            os.kill(target[0], signal.SIGSTOP if signum == signal.SIGTSTP else signum)
        if signum == signal.SIGTSTP:  # (SIGSTOP here too: a command started in an
            os.kill(os.getpid(), signal.SIGSTOP)  # orphaned group would ignore SIGTSTP and
            # wait on its stopped run forever)

    try:
        cwd = os.getcwd()
    except OSError:  # the folder is gone: the command itself says so
        conn.close()
        return None
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    with conn:
        fds, opened = _std_fds()
        request = {"argv": [sys.argv[0], *argv], "cwd": cwd, "env": dict(os.environ),
                   "umask": _umask(), "encodings": _encodings()}
        try:
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], fds)
            reply = _read_line(conn)
        except OSError:
            reply = None
        finally:
            for fd in opened:
                os.close(fd)
        if not reply or "pid" not in reply:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stops = [sig for sig in pending if sig in (signal.SIGINT, signal.SIGTERM,
                                                       signal.SIGHUP)]
            if stops:
                return 128 + stops[0]  # interrupted before anything ran
            if reply and reply.get("refused") == "stale":
                _spawn(folder, name, wait_for_old=True)
            return None  # nothing ran: run it here
        target.append(int(reply["pid"]))
        for signum in pending:
            forward(signum, None)
        return _wait_for(conn)


def _wait_for(conn: socket.socket) -> int:
    try:
        outcome = _read_line(conn)
    except OSError:
        outcome = None
    if outcome is None or "exit" not in outcome:
        os.write(2, b"sagepipe: the warm process ended before the run reported how it ended; "
                    b"see `sagepipe status`. SAGEPIPE_WARM=off runs without it.\n")
        return 1
    return int(outcome["exit"])


def _std_fds() -> tuple[list[int], list[int]]:
    """This command's stdin, stdout and stderr; /dev/null for any that is closed."""
    fds, opened = [], []
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            opened.append(null)
            fds.append(null)
    return fds, opened


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _encodings() -> dict[str, list[str | None]]:
    return {name: [getattr(stream, "encoding", None), getattr(stream, "errors", None)]
            for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout),
                                 ("stderr", sys.stderr))}


def _read_line(conn: socket.socket, limit: int = 1 << 16) -> dict[str, Any] | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > limit:
            return None
    return dict(json.loads(data))


def _spawn(folder: Path, name: str, *, wait_for_old: bool = False) -> None:
    """Start a warm process in the background for the next run (never fails the command)."""
    import subprocess

    notice = folder / "told"
    if not notice.exists():
        os.write(2, b"sagepipe: starting a warm process in the background so that the next "
                    b"`sagepipe run` starts faster (`sagepipe down` stops it; "
                    b"SAGEPIPE_WARM=off turns this off).\n")
        with contextlib.suppress(OSError):
            notice.touch()
    try:
        log_path = folder / f"{name}.log"
        if log_path.exists() and log_path.stat().st_size > 1 << 20:  # 2 lines a run
            log_path.replace(log_path.with_suffix(".log.1"))
        with open(log_path, "ab") as log:
            # -P and cwd /: the folder of the run that started it is neither on its
            # sys.path (a user's yaml.py would shadow a library) nor kept busy by it
            subprocess.Popen([sys.executable, "-P", "-m", "sagepipe.warm", "--serve"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                             start_new_session=True, close_fds=True,
                             env={**os.environ, "SAGEPIPE_WARM_WAIT": "1" if wait_for_old
                                  else ""})
    except OSError:
        pass


def stop_all(folder: Path | None = None) -> list[int]:
    """Stop this user's warm processes (in the folder); the pids told to stop.

    Each holds a lock on ``<key>.lock`` with its pid in it while it lives. SIGTERM: it
    takes no new run at once and exits when its running children have ended (it tells
    their commands their exit status first)."""
    import fcntl

    folder = folder or directory(create=False)
    if folder is None or not folder.is_dir():
        return []
    told = []
    for path in sorted(folder.glob("*.lock")):
        with open(path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                continue  # nobody holds it: no warm process for this one
            except OSError:
                pass
            lock.seek(0)
            text = lock.read().strip()
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGTERM)
                told.append(int(text))
            except ProcessLookupError:
                pass
    return told


# ---- the warm process -------------------------------------------------------------------

class _Stale(Exception):
    pass


def _log(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {text}\n")
    sys.stderr.flush()


def _preload() -> None:
    import importlib

    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing optional part: that run imports it itself
            _log(f"not preloaded: {module}: {type(exc).__name__}: {exc}")
    try:  # the local runtime's request validation parses botocore's service models
        # (JSON, megabytes: ~0.25 s a run); cached per process, so once here for every run
        from sagepipe.tasks.local.validation import service_model

        for service in SERVICE_MODELS:
            service_model(service)
    except Exception as exc:
        _log(f"service models not preloaded: {type(exc).__name__}: {exc}")
    _premake_tls()


# TLS contexts, made before the fork. Each Prefect client of a run makes its own verified
# context from certifi's CA bundle (its flow-run client, the log worker's, the events
# worker's and its version check): parsing the bundle is ~35-60 ms each, ~0.2 s of every
# run's start on this machine (py-spy, issue 16), and it is the same work every time.
TLS_PREMADE = 6
_tls: dict[str, Any] = {"cafile": None, "contexts": []}


def _premake_tls() -> None:
    try:
        import ssl

        import certifi

        cafile = certifi.where()
        _tls["cafile"] = cafile
        _tls["contexts"] = [ssl.create_default_context(cafile=cafile)
                            for _ in range(TLS_PREMADE)]
    except Exception as exc:  # no certifi: each run makes its own, as a cold one does
        _log(f"TLS contexts not premade: {type(exc).__name__}: {exc}")


def use_premade_tls() -> None:
    """In a run: ``ssl.create_default_context(cafile=<certifi's bundle>)`` hands out one of
    the contexts made before the fork, each once: the same call with the same arguments,
    made earlier, never shared between clients (they set options on their own). Any other
    call, or one after the premade are used up, makes a new context as always. The
    bundle's file is watched like a module's (``snapshot``): changed, the warm process
    stops before the next run."""
    import ssl

    original = ssl.create_default_context
    if getattr(original, "_sagepipe_premade", False):
        return

    def create_default_context(purpose: Any = ssl.Purpose.SERVER_AUTH, *,
                               cafile: Any = None, capath: Any = None,
                               cadata: Any = None) -> ssl.SSLContext:
        premade = _tls["contexts"]
        if (premade and purpose == ssl.Purpose.SERVER_AUTH and cafile is not None
                and cafile == _tls["cafile"] and capath is None and cadata is None):
            context: ssl.SSLContext = premade.pop()
            return context
        return original(purpose, cafile=cafile, capath=capath, cadata=cadata)

    create_default_context._sagepipe_premade = True  # type: ignore[attr-defined]
    ssl.create_default_context = create_default_context  # type: ignore[assignment]


def snapshot() -> dict[str, int]:
    """Every imported module's file (and the premade TLS contexts' CA bundle) and its
    modification time."""
    files: dict[str, int] = {}
    paths = [getattr(module, "__file__", None) for module in list(sys.modules.values())]
    for path in [*paths, _tls["cafile"]]:
        if path and path not in files:
            try:
                files[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
    return files


def changed(files: dict[str, int]) -> str | None:
    """The first imported file that changed or went since ``snapshot``, or None."""
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def serve() -> tuple[Any, ...] | None:
    """The warm process: import, listen, fork one child per run. Returns in a forked
    child only (what ``_child`` needs), so that the child's exit unwinds no frame of this
    loop (whose clean-up would remove the socket the warm process still serves on)."""
    import fcntl
    import selectors
    import threading

    folder = directory()
    if folder is None:
        _log("the warm folder is not this user's alone; not serving")
        return None
    name = key()
    lock = open(folder / f"{name}.lock", "a+")  # noqa: SIM115 (held for the process's life)
    deadline = time.monotonic() + (30.0 if os.environ.get("SAGEPIPE_WARM_WAIT") else 0.0)
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                return None  # another warm process serves (or is starting)
            time.sleep(0.1)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    started = time.monotonic()
    _preload()
    if threading.active_count() != 1:  # forking with threads running is not safe
        _log(f"threads running after the imports ({threading.enumerate()}); not serving")
        return None
    files = snapshot()
    path = folder / f"{name}.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)  # a stop like any other: see below
    _log(f"serving {path} ({len(files)} files imported in "
         f"{time.monotonic() - started:.2f} s)")
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    idle = float(os.environ.get("SAGEPIPE_WARM_IDLE", IDLE_SECONDS))
    last = time.monotonic()
    stopping = False
    try:
        while not (stopping and not children):
            timeout = None if children else max(0.0, last + idle - time.monotonic())
            events = selector.select(timeout)
            if not events and not children and time.monotonic() >= last + idle:
                _log(f"idle for {idle:.0f} s: stopping")
                stopping = True
                break
            for event, _ in events:
                if event.data == "signal":
                    received = os.read(wake_r, 512)
                    if signal.SIGTERM in received and not stopping:
                        _log("SIGTERM: stopping once the running runs end")
                        stopping = True
                        _close_listener(selector, listener, path)
                    _reap(children)
                    continue
                if stopping:
                    continue
                conn, _ = listener.accept()
                request = _receive(conn)
                if request is None:
                    continue
                last = time.monotonic()
                stale = changed(files)
                if stale is not None:
                    _send(conn, {"refused": "stale", "file": stale})
                    conn.close()
                    _close_fds(request)
                    _log(f"{stale} changed since it was imported: stopping")
                    stopping = True
                    _close_listener(selector, listener, path)
                    continue
                pid = os.fork()
                if pid == 0:  # the child: leave this loop, then run the command
                    stopping = True  # (so that `finally` leaves the socket alone)
                    selector.close()
                    return (request, conn, [listener, *children.values()],
                            [lock, wake_r, wake_w])
                children[pid] = conn
                _close_fds(request)
                _send(conn, {"pid": pid})
                _log(f"run {pid}: {' '.join(request['argv'][1:])[:200]} in {request['cwd']}")
            _reap(children)
    finally:
        if not stopping:
            _close_listener(selector, listener, path)
    _log("stopped")
    return None


def _close_listener(selector: Any, listener: socket.socket, path: Path) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(listener)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _receive(conn: socket.socket) -> dict[str, Any] | None:
    """A request and its three descriptors; None (and the connection closed) if bad."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        if uid != os.getuid():
            _log(f"refused a connection from uid {uid}")
            conn.close()
            return None
        conn.settimeout(10.0)
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        while data and not data.endswith(b"\n") and len(data) < 1 << 24:
            more = conn.recv(1 << 16)
            if not more:
                break
            data += more
        conn.settimeout(None)
        request = dict(json.loads(data)) if data.endswith(b"\n") else None
    except (OSError, ValueError) as exc:
        _log(f"a bad request: {type(exc).__name__}: {exc}")
        conn.close()
        return None
    if request is None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    request["fds"] = fds
    return request


def _close_fds(request: dict[str, Any]) -> None:
    for fd in request.get("fds", []):
        os.close(fd)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code  # killed by a signal: as a shell says it
        _log(f"run {pid} ended: {code}")
        _send(conn, {"exit": code})
        conn.close()


def _child(request: dict[str, Any], conn: socket.socket, close: list[socket.socket],
           fds: list[Any]) -> None:
    """In the forked child: become the command the client ran, then run it."""
    import io
    import threading

    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sock in close:
            sock.close()
        for item in fds:
            if hasattr(item, "close"):
                item.close()
            else:
                os.close(item)
        for target, fd in enumerate(request["fds"]):
            os.dup2(fd, target)
            os.close(fd)
        encodings = request.get("encodings", {})
        streams = []
        for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
            encoding, errors = (encodings.get(name) or [None, None])
            raw = io.FileIO(fd, mode, closefd=False)
            tty = raw.isatty()
            buffered: Any = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
            streams.append(io.TextIOWrapper(
                buffered, encoding=encoding or "utf-8",
                errors=errors or ("backslashreplace" if fd == 2 else "strict"),
                line_buffering=fd == 2 or tty))
        sys.stdin, sys.stdout, sys.stderr = streams
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _refresh_prefect()
        use_premade_tls()
    except BaseException as exc:  # could not become the command: say so, exit 70
        os.write(2, f"sagepipe: the warm process could not start this run ({exc}); "
                    f"SAGEPIPE_WARM=off runs without it.\n".encode())
        os._exit(70)

    def watch() -> None:  # the client gone (killed, its terminal closed): so is the command
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="sagepipe-warm-client", daemon=True).start()
    _run_command()


def _refresh_prefect() -> None:
    """Prefect read its settings, profile and logging set-up at import, in the warm
    process's environment: read them again in this command's (what a new process does
    at ``import prefect``)."""
    import prefect
    import prefect.context
    import prefect.logging.configuration

    prefect.context.refresh_global_settings_context()
    prefect.logging.configuration.setup_logging(incremental=False)
    plugins = getattr(prefect, "_initialize_plugins", None)  # opt-in startup hooks
    if callable(plugins):  # (they may set environment variables: run them here too)
        plugins()


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        child = serve()
        if child is not None:
            _child(*child)
    else:
        main()
