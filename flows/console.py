"""What a person at the terminal sees while ``sagepipe run`` works, and when it fails.

Three views of a run, chosen by the CLI:

- ``live``: on a terminal, one compact table of the steps (step, state, job,
  elapsed, last log line), redrawn in place;
- ``plain``: not a terminal (CI), a line per step event;
- ``stream``: ``--verbose``, Prefect's own log stream, as before.

In every view the steps are read from the flow's and tasks' run loggers (the same
records the Prefect API stores, with their tracebacks), and no traceback of an
expected error (a sagepipe error, an interrupt, AWS refusing access) reaches the
terminal unless ``--debug``. ``explain`` turns an exception into the exit code and
one paragraph the CLI prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from sagepipe.tasks.errors import (
    ConfigError,
    DataError,
    DeployFailed,
    DeployRolledBack,
    ImageBuildFailed,
    JobFailed,
    PipelineError,
)

__all__ = ["EXIT_CODES", "Explained", "RunView", "explain", "save_report"]

# the documented exit codes of every command (README: "Exit codes")
EXIT_CODES = {
    0: "done: deployed, or unchanged (the trained model is already live)",
    1: "the run failed: a job, the image build or the deploy (nothing new is live)",
    2: "bad input: settings, data or arguments (nothing was started)",
    3: "`sagepipe trigger`: still running at --timeout",
    4: "no Prefect API: unreachable, or it went away",
    5: "the gate (or a person) rejected the model: registered as Rejected, the live "
       "endpoint untouched",
    6: "the deploy was rolled back: the model that was live still serves",
    7: "AWS refused: access denied, or no credentials",
    70: "an unexpected error (a bug): a one-line summary, the full report saved to a file",
    130: "interrupted by Ctrl-C (143: by SIGTERM); the run's jobs were stopped",
}

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_ACCESS_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                 "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
                 "ExpiredTokenException", "SignatureDoesNotMatch"}
_JOB = re.compile(r"(?:Started|Re-attached to|Reusing completed) (?:training|processing) "
                  r"job (\S+)")
_FINISHED = re.compile(r"^Finished in state (\w+)")
_SUFFIX = re.compile(r"-[0-9a-z]{3}$")
_ENGINE_LINES = ("Beginning flow run", "Finished in state", "View at ", "Created task run",
                 "Executing ", "Crash detected", "Received ", "Flow run ")


@dataclass(frozen=True)
class Explained:
    code: int
    text: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _aws_refusal(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    for item in _chain(exc):
        if isinstance(item, NoCredentialsError):
            return ("No AWS credentials were found. Configure them (aws configure, "
                    "AWS_PROFILE, or a role), or run on the local runtime (--env local).")
        if isinstance(item, NoRegionError):
            return ("No AWS region is set. Set runtime.region in the settings, or "
                    "AWS_DEFAULT_REGION.")
        if isinstance(item, ClientError):
            error = item.response.get("Error", {})
            if error.get("Code") in _ACCESS_CODES:
                operation = getattr(item, "operation_name", "a request")
                return (f"AWS refused {operation}: {error.get('Code')}: "
                        f"{error.get('Message', '')}. The identity running sagepipe needs that "
                        "permission: the roles in infra/ grant what the pipeline uses; check "
                        "which credentials are in use with `aws sts get-caller-identity`.")
    return None


def _no_api(exc: BaseException) -> bool:
    import httpx

    return any(isinstance(item, httpx.TransportError) for item in _chain(exc))


def explain(exc: BaseException, *, where: str = "", flow_run_url: str | None = None
            ) -> Explained | None:
    """(exit code, paragraph: what, where, what to do) for an expected failure; None for a
    bug."""
    def said(code: int, what: str, todo: str = "") -> Explained:
        lines = [what]
        if where:
            lines.append(f"  Where: {where}")
        if flow_run_url:
            lines.append(f"  Flow run (full logs and traceback): {flow_run_url}")
        if todo:
            lines.append(f"  Next: {todo}")
        return Explained(code, "\n".join(lines))

    refusal = _aws_refusal(exc)
    if refusal is not None:
        return said(7, refusal)
    if isinstance(exc, ConfigError | DataError):
        return said(2, str(exc))
    if isinstance(exc, DeployRolledBack):
        return said(6, f"Deploy rolled back: {exc}",
                    "the model that was live still serves; nothing else changed.")
    if isinstance(exc, DeployFailed):
        return said(1, f"Deploy failed: {exc}")
    if isinstance(exc, JobFailed):
        noun = "job" if exc.kind == "job" else f"{exc.kind} job"
        return said(1, f"Run failed: {noun} {exc.job} ended {exc.status}: "
                       f"{exc.reason or 'no reason given'}",
                    f"read the job's log with `sagepipe logs {exc.job}`, fix the cause and run "
                    "again: the steps that completed are reused.")
    if isinstance(exc, ImageBuildFailed | PipelineError):
        return said(1, f"Run failed: {exc}")
    if _no_api(exc):
        return said(4, f"Lost the Prefect API: {exc}",
                    "start it again (`sagepipe run` starts its own unless PREFECT_API_URL is "
                    "set).")
    return None


def save_report(exc: BaseException, directory: Path) -> Path:
    """The full traceback of an unexpected error, where the user can attach it to a bug."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"error-{dt.datetime.now():%Y%m%d-%H%M%S}.txt"
    path.write_text("".join(traceback.format_exception(exc))
                    + f"\nsagepipe {' '.join(sys.argv[1:])}\nPython {sys.version}\n")
    return path


def _expected(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from prefect.exceptions import TerminationSignal

    return (isinstance(exc, PipelineError | KeyboardInterrupt | TerminationSignal)
            or _aws_refusal(exc) is not None)


class _NoTraceback(logging.Formatter):
    """Formats as ``inner`` does, without the traceback of the exceptions ``strip`` picks."""

    def __init__(self, inner: logging.Formatter | None, strip: Any) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.strip = strip

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and self.strip(record.exc_info[1]):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None})
        return self.inner.format(record)


class _Quiet(logging.Filter):
    """On the terminal's Prefect handler in the live and plain views: the run loggers'
    records are shown by the view; the rest only from warnings up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(RUN_LOGGERS):
            return False
        return record.levelno >= logging.WARNING


@dataclass
class Step:
    label: str
    started: float
    state: str = "running"
    job: str = ""
    ended: float | None = None
    last: str = ""

    def elapsed(self, now: float) -> str:
        return f"{(self.ended or now) - self.started:5.1f}s"


class RunView(logging.Handler):
    """A logging handler on the run loggers that keeps the steps' states, and shows them."""

    def __init__(self, mode: Literal["live", "plain", "stream"], *, debug: bool = False,
                 ui_url: str | None = None, out: IO[str] | None = None) -> None:
        super().__init__(level=logging.INFO)
        self.mode, self.debug, self.ui_url = mode, debug, ui_url
        self.out = out or sys.stderr
        self.flow_run_id: str | None = None
        self.flow_run_name: str | None = None
        self.steps: dict[str, Step] = {}
        self._live: Any = None
        self._restore: list[tuple[logging.Handler, logging.Formatter | None]] = []
        self._quiet = _Quiet()

    @property
    def flow_run_url(self) -> str | None:
        if self.ui_url and self.flow_run_id:
            return f"{self.ui_url.rstrip('/')}/runs/flow-run/{self.flow_run_id}"
        return None

    def current(self) -> Step | None:
        running = [s for s in self.steps.values() if s.state == "running"]
        return running[-1] if running else None

    # -- set-up -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def attached(self) -> Iterator[RunView]:
        for name in RUN_LOGGERS:
            logging.getLogger(name).addHandler(self)
        strip = (lambda exc: not self.debug) if self.mode != "stream" else (
            lambda exc: not self.debug and _expected(exc))
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) or type(handler).__name__ == \
                    "PrefectConsoleHandler":
                self._restore.append((handler, handler.formatter))
                handler.setFormatter(_NoTraceback(handler.formatter, strip))
                if self.mode != "stream":
                    handler.addFilter(self._quiet)
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, refresh_per_second=4,
                              console=Console(file=self.out), transient=False)
            self._live.start()
        try:
            yield self
        finally:
            if self._live is not None:
                self._live.stop()
                self._live = None
            for name in RUN_LOGGERS:
                logging.getLogger(name).removeHandler(self)
            for handler, formatter in self._restore:
                handler.setFormatter(formatter)  # type: ignore[arg-type]
                handler.removeFilter(self._quiet)
            self._restore.clear()

    # -- records ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line above the live table (or a plain line)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:  # not print(): the flow's log_prints turns print() into a log record
            self.out.write(text + "\n")
            self.out.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._take(record)
        except Exception:  # a display problem must never fail the run
            self.handleError(record)

    def _take(self, record: logging.LogRecord) -> None:
        run_id = getattr(record, "flow_run_id", None)
        if run_id and self.flow_run_id is None:
            self.flow_run_id = str(run_id)
            self.flow_run_name = getattr(record, "flow_run_name", None)
            link = self.flow_run_url or "(a temporary Prefect server: no UI)"
            self.say(f"Flow run {self.flow_run_name}: {link}")
        message = record.getMessage()
        task_run = getattr(record, "task_run_name", None)
        if not task_run:  # the flow's own lines (the gate, approval, ...), not the engine's
            if self.mode != "stream" and record.levelno < logging.ERROR and \
                    not message.startswith(_ENGINE_LINES):
                warn = "Warning: " if record.levelno >= logging.WARNING else ""
                self.say(f"{warn}{message}")
            return
        label = _label(task_run, getattr(record, "task_name", ""))
        step = self.steps.get(label)
        if step is None or (step.state != "running" and not message.startswith("Finished")):
            step = self.steps[label] = Step(label, record.created)
            self._plain(step, "running")
        finished = _FINISHED.match(message)
        if finished:
            step.state = finished.group(1).lower()
            step.ended = record.created
            self._plain(step, step.state)
            return
        job = _JOB.search(message)
        if job:
            step.job = job.group(1)
            self._plain(step, f"job {step.job}")
        step.last = re.sub(r"^\[[^\]]+\] ", "", message).splitlines()[0] if message else ""
        if logging.WARNING <= record.levelno < logging.ERROR and self.mode != "stream":
            self.say(f"Warning: {label}: {message}")

    def _plain(self, step: Step, what: str) -> None:
        if self.mode != "plain":
            return
        clock = time.strftime("%H:%M:%S")
        took = f" ({step.elapsed(time.time()).strip()})" if step.ended else ""
        self.say(f"  {clock} {step.label:<16} {what}{took}")

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("step", "state", "job", "time", "last log line"):
            table.add_column(column, no_wrap=True, overflow="ellipsis",
                             max_width=60 if column == "last log line" else None)
        colours = {"completed": "green", "cached": "blue", "failed": "red", "crashed": "red",
                   "running": "yellow", "cancelled": "yellow"}
        for step in self.steps.values():
            table.add_row(step.label, Text(step.state, style=colours.get(step.state, "")),
                          step.job, step.elapsed(now), Text(step.last[:200]))
        return table


def _label(task_run_name: str, task_name: str) -> str:
    """A step's name: the task run's, without Prefect's random suffix."""
    if task_name and task_run_name.startswith(f"{task_name}-") and _SUFFIX.search(
            task_run_name):
        return task_name
    return task_run_name
