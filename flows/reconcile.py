"""The reconciler: what a lost event would leave undone, done every few minutes.

A run with ``jobs.wait: suspend`` is resumed by its job's state-change event (the
relay). EventBridge delivers at least once but an event can still be lost (a relay
that failed past its retries, a Prefect API that was down): this flow, deployed on a
schedule (``deployments/prefect.yaml``: ``sagepipe-reconcile/local``), resumes every
suspended ``ml-pipeline`` run none of whose jobs still runs, and stops the jobs of
runs cancelled while suspended (no process was left to run their on_cancellation
hook).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from sagepipe.flows.config import PipelineConfig
from sagepipe.flows.pipeline import run_jobs, stop_run_jobs

__all__ = ["sagepipe_reconcile"]

PIPELINE = "ml-pipeline"
RUNNING = ("InProgress", "Stopping")


def _runs(state: FlowRunFilterState, since: dt.datetime | None = None,
          limit: int = 200) -> list[Any]:
    flow_run_filter = FlowRunFilter(state=state)
    if since is not None:
        flow_run_filter.expected_start_time = FlowRunFilterExpectedStartTime(after_=since)
    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[PIPELINE])),
            flow_run_filter=flow_run_filter, limit=limit))


# named so that `prefect deploy --name sagepipe-reconcile/local` finds it (the CLI matches
# the flow part of a name against the entrypoint function, dashes read as underscores)
@flow(name="sagepipe-reconcile", log_prints=True)
def sagepipe_reconcile(cancelled_within_hours: float = 48.0,
              flow_run_id: str | None = None) -> dict[str, list[str]]:
    """Resume suspended pipeline runs whose jobs have all ended; stop the jobs of
    pipeline runs cancelled while suspended. Returns what it did, by flow run id.

    ``flow_run_id`` (a run id or its event resource id, ``prefect.flow-run.<id>``): only
    stop that cancelled run's jobs - what the deployment's trigger on a pipeline run's
    Cancelled event asks, so a run cancelled while suspended stops its job in seconds."""
    log = get_run_logger()
    done: dict[str, list[str]] = {"resumed": [], "stopped": [], "skipped": []}
    if flow_run_id:
        return _stop_cancelled(flow_run_id.removeprefix("prefect.flow-run."), done)
    for run in _runs(FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"]))):
        config = _config_of(run)
        if config is None:
            done["skipped"].append(str(run.id))
            continue
        running = run_jobs(config, str(run.id), RUNNING)
        if running:
            continue  # its job's event will resume it (or this flow, next time)
        resume_flow_run(run.id)
        log.info("Resumed %s (%s): none of its jobs runs any more", run.name, run.id)
        done["resumed"].append(str(run.id))
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=cancelled_within_hours)
    for run in _runs(FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.CANCELLED])), since=since):
        config = _config_of(run)
        if config is None or not run_jobs(config, str(run.id), ("InProgress",)):
            continue
        stopped = stop_run_jobs(config, str(run.id))
        log.info("Stopped %s of cancelled run %s (%s)", ", ".join(stopped), run.name, run.id)
        done["stopped"] += stopped
    return done


def _stop_cancelled(run_id: str, done: dict[str, list[str]]) -> dict[str, list[str]]:
    log = get_run_logger()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    config = _config_of(run)
    if config is None or run.state is None or run.state.type != StateType.CANCELLED:
        done["skipped"].append(run_id)
        return done
    if run_jobs(config, run_id, ("InProgress",)):
        stopped = stop_run_jobs(config, run_id)
        log.info("Stopped %s of cancelled run %s (%s)", ", ".join(stopped), run.name, run_id)
        done["stopped"] += stopped
    return done


def _config_of(run: Any) -> PipelineConfig | None:
    try:
        return PipelineConfig.model_validate((run.parameters or {}).get("config") or {})
    except ValueError:  # a run of someone's own flow named ml-pipeline: not ours to judge
        return None
