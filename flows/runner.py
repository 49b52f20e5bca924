"""``sagepipe run`` behind the command line: which Prefect API, the view, the outcome.

- The Prefect API: ``PREFECT_API_URL`` when set (checked first: exit 4 if it does
  not answer); else the local server sagepipe keeps under ``<state_dir>/prefect``
  (started on first use, reused after); with ``--no-server``, a server of this
  command's own that is stopped when it ends. Each runs in a session of its own,
  so the terminal's Ctrl-C reaches the command, never the server it needs to record
  the interruption.
- Ctrl-C or SIGTERM: the run's jobs are stopped, its record saved as cancelled and
  notified, the flow run set Cancelled with the reason; exit 130 (143 for SIGTERM).
  A second Ctrl-C exits at once.
- The outcome: one paragraph and an exit code (``console.EXIT_CODES``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import httpx
import typer

from sagepipe.flows.config import PipelineConfig
from sagepipe.flows.console import RunView, explain, save_report
from sagepipe.flows.estimate import measured_text
from sagepipe.flows.server import down, ensure_server
from sagepipe.tasks.costs import usd
from sagepipe.tasks.errors import EndpointMissing, PipelineError

__all__ = ["PrefectApi", "prefect_api", "run_pipeline", "temporary_servers"]

TEMPORARY_DIR = "prefect-runs"  # under the state dir: one folder per --no-server command


@dataclass(frozen=True)
class PrefectApi:
    url: str
    ui_url: str | None
    how: str  # "PREFECT_API_URL", "local server (started)", "local server", "temporary"
    directory: Path | None = None  # a temporary server's folder (stopped at the end)


class NoApi(PipelineError):
    pass


def _answers(url: str) -> str | None:
    """None if the API answers (any HTTP status); else why not."""
    try:
        # a plain-HTTP URL has no TLS to verify: not loading the CA bundle saves ~70 ms of
        # every run's start-up; an https URL is verified as always
        httpx.get(f"{url.rstrip('/')}/health", timeout=5.0,
                  verify=not url.lower().startswith("http://"))
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prefect_api(config: PipelineConfig, *, temporary: bool) -> PrefectApi:
    from prefect.settings import get_current_settings

    state = Path(config.runtime.state_dir)
    if temporary:
        directory = state / TEMPORARY_DIR / str(os.getpid())
        server, _ = ensure_server(directory, port=_free_port(), ui=False)
        return PrefectApi(server.api_url, None, "temporary", directory)
    settings = get_current_settings()
    configured = os.environ.get("PREFECT_API_URL") or (
        str(settings.api.url) if settings.api.url else None)
    if configured:
        problem = _answers(configured)
        if problem:
            raise NoApi(f"No Prefect API answers at {configured} (PREFECT_API_URL): {problem}. "
                        "Start that server, or unset PREFECT_API_URL and sagepipe runs a local "
                        "one for you.")
        ui = str(settings.ui_url) if settings.ui_url else configured.removesuffix("/api")
        return PrefectApi(configured, ui, "PREFECT_API_URL")
    started = time.monotonic()
    server, new = ensure_server(state / "prefect")
    how = f"local server (started in {time.monotonic() - started:.1f} s)" if new else \
        "local server"
    return PrefectApi(server.api_url, server.ui_url, how)


@contextmanager
def project_prefect_api(config: PipelineConfig) -> Iterator[PrefectApi]:
    """The Prefect API ``sagepipe run`` uses, for a flow of your own started with
    ``python``: PREFECT_API_URL when set, else this project's kept local server (started
    if needed). Within, Prefect talks to it: the run is in the project's UI, and the local
    runtime's job events reach it. Raises NoApi if PREFECT_API_URL does not answer."""
    from prefect.settings import temporary_settings

    api = prefect_api(config, temporary=False)
    with temporary_settings(updates=_pointing_at(api)):
        yield api


def _pointing_at(api: PrefectApi) -> dict[Any, Any]:
    """The Prefect settings that make this process talk to ``api``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    updates: dict[Any, Any] = {PREFECT_API_URL: api.url}
    if api.ui_url:
        updates[PREFECT_UI_URL] = api.ui_url
    return updates


def temporary_servers(state_dir: Path) -> list[Path]:
    """The folders of --no-server servers whose command did not stop them (killed)."""
    root = Path(state_dir) / TEMPORARY_DIR
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def stop_temporary(directory: Path) -> bool:
    """Stop a temporary server and forget its folder; True if a server was stopped."""
    stopped = down(directory, grace=5) is not None
    shutil.rmtree(directory, ignore_errors=True)
    return stopped


def send_pending_to_api() -> None:
    """Send the run's last logs and events while the server still answers: left queued
    until the process exits, Prefect's workers would find a temporary server stopped and
    retry for a minute before giving up ("Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


class Interrupts:
    """SIGINT/SIGTERM become KeyboardInterrupt once; the second one exits at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            os.write(2, b"\nInterrupted again: exiting now; `sagepipe down` stops what is "
                        b"left.\n")
            os._exit(128 + signum)
        self.signal = signum
        raise KeyboardInterrupt


def _echo(text: str, *, err: bool = False, colour: str | None = None) -> None:
    typer.secho(text, err=err, fg=colour)


def run_pipeline(config: PipelineConfig, *, commit: str | None, force: bool, verbose: bool,
                 no_server: bool, debug: bool, me: str) -> int:
    """Run the flow in this process; returns the exit code."""
    from prefect.exceptions import TerminationSignal
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from sagepipe.flows.pipeline import ml_pipeline

    try:
        api = prefect_api(config, temporary=no_server)
    except PipelineError as exc:
        _echo(str(exc), err=True, colour="red")
        return 4
    if api.how != "local server":
        _echo(f"Prefect API: {api.url} ({api.how})", err=True)
    mode: Literal["live", "plain", "stream"] = "stream" if verbose else (
        "live" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else "plain")
    view = RunView(mode, debug=debug, ui_url=api.ui_url)
    updates = _pointing_at(api)
    if not _heartbeats_asked_for():
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    interrupts = Interrupts()
    record: dict[str, Any] | None = None
    failure: BaseException | None = None
    with ExitStack() as stack:
        if api.directory is not None:
            stack.callback(stop_temporary, api.directory)
        stack.enter_context(temporary_settings(updates=updates))
        if api.directory is not None:  # (callbacks run last-in first-out)
            stack.callback(send_pending_to_api)
        stack.enter_context(interrupts)
        with view.attached():
            try:
                record = ml_pipeline(config=config, commit=commit, force=force)
            except (KeyboardInterrupt, TerminationSignal) as exc:
                failure = exc
            except Exception as exc:
                failure = exc
        if isinstance(failure, KeyboardInterrupt | TerminationSignal):
            return _interrupted(config, view, api, interrupts.signal or signal.SIGINT, me)
        if failure is not None:
            return _failed(config, view, failure, debug)
    assert record is not None
    return _report(config, record, view, me)


def _heartbeats_asked_for() -> bool:
    """Whether the user set PREFECT_FLOWS_HEARTBEAT_FREQUENCY (environment or profile).

    Prefect's default (180 s) emits flow-run heartbeats from a thread that sleeps in 1 s
    steps and is joined when the run ends: half a second of every run's exit, on average
    (bench/, issue 16). Heartbeats drive zombie detection for *deployment* runs through an
    automation ("How to detect and respond to zombie flows", Prefect docs); a run of this
    command is watched by the command itself (Ctrl-C, crash hooks), so it sends them only
    when asked to. Deployment runs (a worker's flow process) keep Prefect's default."""
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "").strip():
        return True
    try:
        from prefect.settings.profiles import load_current_profile

        return any(getattr(setting, "name", str(setting)) == "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
                   for setting in load_current_profile().settings)
    except Exception:  # an unreadable profile: Prefect itself reports it
        return False


def _where(view: RunView) -> str:
    step = view.current() or next((s for s in reversed(view.steps.values())
                                   if s.state in ("failed", "crashed")), None)
    if step is None:
        return ""
    return f"step {step.label}" + (f", job {step.job}" if step.job else "")


def _failed(config: PipelineConfig, view: RunView, exc: BaseException, debug: bool) -> int:
    import traceback

    explained = explain(exc, where=_where(view), flow_run_url=view.flow_run_url)
    if debug:
        typer.echo("".join(traceback.format_exception(exc)), err=True)
    if explained is not None:
        _echo(explained.text, err=True, colour="red")
        return explained.code
    report = save_report(exc, Path(config.runtime.state_dir) / "errors")
    _echo(f"Unexpected error: {type(exc).__name__}: {exc}. The full report is in {report}"
          + (f"; the flow run: {view.flow_run_url}" if view.flow_run_url else "")
          + ". Please include it when you report this.", err=True, colour="red")
    return 70


def _interrupted(config: PipelineConfig, view: RunView, api: PrefectApi, signum: int,
                 me: str) -> int:
    """Stop the run's jobs, record and notify it as cancelled, set the flow run Cancelled."""
    from sagepipe.flows import pipeline

    what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    run_id = view.flow_run_id
    stopped: list[str] = []
    problems: list[str] = []
    if run_id:
        try:
            stopped = pipeline.stop_run_jobs(config, run_id)
        except Exception as exc:  # reported: the user must know a job may still run
            problems.append(f"could not stop the run's jobs ({exc}); `sagepipe down` or "
                            "`sagepipe status`")
    reason = (f"Interrupted from the terminal ({what})"
              + (f"; stopped {', '.join(stopped)}" if stopped else "; no job was running"))
    if run_id:
        problems += _record_cancelled(config, run_id, view, reason)
        problems += _set_cancelled(run_id, reason)
    lines = [f"Interrupted ({what}). " + (f"Stopped {', '.join(stopped)}." if stopped
                                          else "No job was running.")]
    lines += [f"Endpoint {name} is {status}: that carries on without this run (as SageMaker "
              f"goes on with a request it has taken); `{me} status` shows where "
              "it ends." for name, status in endpoints_changing(config)]
    if view.flow_run_url:
        lines.append(f"Flow run {view.flow_run_name} marked Cancelled: {view.flow_run_url}")
    lines += [f"  ! {p}" for p in problems]
    _echo("\n".join(lines), err=True, colour="yellow")
    return 128 + signum


def endpoints_changing(config: PipelineConfig) -> list[tuple[str, str]]:
    """The run's endpoints (staging, production) that are being created or updated:
    interrupting the run does not stop that. Best effort: a failed read says nothing."""
    from sagepipe.tasks.endpoints import TRANSITIONAL
    from sagepipe.tasks.runtime import get_clients

    found = []
    for name in filter(None, (config.endpoint.staging_name, config.endpoint.name)):
        try:
            status = get_clients(config.runtime).sagemaker.describe_endpoint(
                EndpointName=name)["EndpointStatus"]
        except Exception:  # no such endpoint (or unreadable): nothing changing to tell
            continue
        if status in TRANSITIONAL:
            found.append((name, status))
    return found


def _record_cancelled(config: PipelineConfig, run_id: str, view: RunView,
                      reason: str) -> list[str]:
    from sagepipe.flows.pipeline import interrupted_records
    from sagepipe.tasks.notify import publish_outcome
    from sagepipe.tasks.runtime import get_clients
    from sagepipe.tasks.storage import ensure_local_resources, save_run_record

    record = interrupted_records.pop(run_id, None) or {
        "run_id": run_id, "run_name": view.flow_run_name, "project": config.project,
        "runtime": config.runtime.kind, "steps": {}}
    for step in (record.get("steps") or {}).values():
        if step.get("status") == "running":
            step["status"] = "stopped"
    record.update(outcome="cancelled", error={"type": "Interrupted", "message": reason},
                  ended=time.time(), summary=f"cancelled: {reason}")
    if record.get("started"):
        record["seconds"] = round(record["ended"] - record["started"], 2)
    try:
        save_run_record.fn(config.runtime, config.artifacts_uri, run_id, record)
        topic = config.notifications.topic_arn
        if config.runtime.kind == "local" and not topic:
            bucket = config.artifacts_uri[5:].split("/", 1)[0]
            topic = ensure_local_resources(config.runtime, bucket, f"{config.project}-events")
        if topic:
            publish_outcome(get_clients(config.runtime), topic, "cancelled",
                            project=config.project, summary=record["summary"],
                            details={k: record.get(k) for k in ("run_id", "commit", "error")})
    except Exception as exc:
        return [f"could not save or notify the cancelled run's record: {exc}"]
    return []


def _set_cancelled(run_id: str, reason: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Cancelled(message=reason), force=True)
    except Exception as exc:
        return [f"could not mark the flow run Cancelled: {exc}"]
    return []


def _report(config: PipelineConfig, record: dict[str, Any], view: RunView, me: str) -> int:
    from sagepipe.tasks.endpoints import invoke as invoke_endpoint
    from sagepipe.tasks.runtime import get_clients
    from sagepipe.tasks.storage import latest_sample_rows

    outcome = record["outcome"]
    _echo(f"\nRun {record['run_name'] or record['run_id']}: {record['summary']}",
          colour="green" if outcome in ("deployed", "unchanged") else "red")
    problem = record.get("problem")
    if problem:
        _echo(f"Problem: {problem['type']} ({problem['source']}); to override, "
              f"{problem['override']}")
    for warning in (record.get("data_schema") or {}).get("warnings") or []:
        _echo(f"Data: {warning}", colour="yellow")
    cost = record.get("cost") or {}
    if cost.get("estimate"):
        _echo(f"Cost (estimates at list prices): up to {usd(cost['estimate']['total_usd'])} "
              f"for this run; measured {measured_text(cost.get('measured') or {})}; what it "
              f"leaves live, {usd(cost['estimate']['live_usd_per_month'])} a month")
    _echo(f"Record: {record['record_uri']}")
    if view.flow_run_url:
        _echo(f"Flow run: {view.flow_run_url}")
    endpoint = config.endpoint.name
    if outcome in ("deployed", "unchanged", "rejected"):
        sample = (record.get("endpoint") or {}).get("smoke_test")
        clients = get_clients(config.runtime)
        try:
            rows = latest_sample_rows(clients, config.artifacts_uri, config.label_column,
                                      rows=1)
            if rows is None:
                raise LookupError("no run has produced a test split yet")
            answer = invoke_endpoint(clients, endpoint, rows)
        except EndpointMissing:
            _echo(f"Endpoint {endpoint}: none yet (no model of this project has been "
                  "deployed to it)")
        except (PipelineError, LookupError) as exc:
            _echo(f"Endpoint {endpoint}: not answering ({exc})")
        else:
            _echo(f"Endpoint {endpoint} answers: {answer.strip()}" if not sample else
                  f"Endpoint {endpoint} is live; sample prediction: {answer.strip()}")
            _echo(f"Try: {me} invoke {endpoint} - <<< '{rows.splitlines()[0]}'")
    if outcome == "rejected":
        package = (record.get("model_package") or {}).get("arn", "")
        version = package.rsplit("/", 1)[-1]
        if version.isdigit():
            _echo(f"Nothing was deployed. To deploy this model anyway: {me} approve "
                  f"{version}, then {me} deploy {version}.", colour="yellow")
        else:
            _echo(f"Nothing was deployed. To deploy a model anyway: {me} approve VERSION, "
                  f"then {me} deploy VERSION (`{me} models` lists the versions).",
                  colour="yellow")
        return 5
    return 0
