"""New data, new run: a dataset version that arrives starts the pipeline on exactly it.

The relay turns S3's "Object Created" events (keys under ``datasets/`` only: the
pipeline's own writes, under ``pipeline/``, never start a run) into the Prefect event
``sagepipe.dataset.object-created``; the trigger of this flow's deployment
(``deployments/prefect.yaml``: ``sagepipe-data-arrived/<env>``) runs it for each one.
Locally, ``sagepipe data push`` announces its object through the same relay code.

For one arrival the flow

1. reads the pipeline deployment's own settings (its ``config`` parameter): the object
   must belong to its dataset, and ``triggers.on_data`` be true;
2. waits until the dataset is quiet (no new version for ``triggers.quiet_seconds``,
   at most ``triggers.max_wait_seconds``), so a multi-file upload starts one run;
3. starts the pipeline deployment with ``dataset_versions``: the exact version of each
   object it found, and an idempotency key (and run name) derived from them - the same
   versions never start two runs, however many events (or retries) announce them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.context import get_run_context

from sagepipe.flows.config import PipelineConfig
from sagepipe.tasks.data import resolve_versions
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import parse_s3_uri

__all__ = ["dataset_run_name", "sagepipe_data_arrived", "settle"]


def dataset_run_name(versions: dict[str, str]) -> str:
    """The pipeline run's name for these object versions (also its idempotency key)."""
    digest = hashlib.sha256(json.dumps(sorted(versions.items())).encode()).hexdigest()
    return f"data-{digest[:16]}"


def current_versions(config: PipelineConfig) -> dict[str, str]:
    _, objects = resolve_versions(get_clients(config.runtime), config.dataset_uri)
    return {o.key: o.version_id for o in objects}


def settle(read: Callable[[], dict[str, str]], quiet: float, limit: float, *,
           sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> dict[str, str]:
    """The versions once two looks ``quiet`` seconds apart agree (or ``limit`` passed)."""
    started = clock()
    current = read()
    while quiet > 0:
        left = limit - (clock() - started)
        if left <= 0:
            break
        sleep(min(quiet, left))
        again = read()
        if again == current:
            break
        current = again
    return current


def belongs(config: PipelineConfig, bucket: str, key: str) -> bool:
    """Whether s3://bucket/key is (part of) the config's dataset."""
    ds_bucket, ds_key = parse_s3_uri(config.dataset_uri)
    prefix = ds_key if not ds_key or ds_key.endswith("/") else ds_key + "/"
    return bucket == ds_bucket and (key == ds_key or key.startswith(prefix))


# named so that `prefect deploy --name sagepipe-data-arrived/local` finds it (the CLI
# matches a name's flow part against the entrypoint function, dashes read as underscores)
@flow(name="sagepipe-data-arrived", log_prints=True)
def sagepipe_data_arrived(bucket: str, key: str, version_id: str | None = None,
                          deployment: str = "ml-pipeline/local") -> dict[str, Any]:
    """Start ``deployment`` on the dataset's versions once the upload is quiet; returns
    {"run": id or None, "name", "versions", "reason"}."""
    log = get_run_logger()
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
    config = PipelineConfig.model_validate((target.parameters or {}).get("config") or {})
    out: dict[str, Any] = {"run": None, "name": None, "versions": None, "reason": ""}
    where = f"s3://{bucket}/{key}"
    if not belongs(config, bucket, key):
        out["reason"] = f"{where} is not part of {deployment}'s dataset {config.dataset_uri}"
        log.info("%s: nothing to start", out["reason"])
        return out
    if not config.triggers.on_data:
        out["reason"] = f"{deployment} has triggers.on_data: false"
        log.info("New version %s of %s; %s, so it waits for the next run", version_id,
                 where, out["reason"])
        return out

    def started(versions: dict[str, str]) -> Any:
        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id])),
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
                    any_=[dataset_run_name(versions)])), limit=1)
        return found[0] if found else None

    versions = current_versions(config)
    if version_id and version_id in versions.values() and (run := started(versions)):
        out.update(run=str(run.id), name=run.name, versions=versions,
                   reason="these versions already started a run")
        log.info("Version %s of %s: run %s already started on it", version_id, where, run.name)
        return out
    log.info("New version %s of %s; waiting until the dataset is quiet for %.0f s", version_id,
             where, config.triggers.quiet_seconds)
    versions = settle(lambda: current_versions(config), config.triggers.quiet_seconds,
                      config.triggers.max_wait_seconds)
    name = dataset_run_name(versions)
    out.update(name=name, versions=versions)
    if (run := started(versions)) is not None:
        out.update(run=str(run.id), reason="these versions already started a run")
        log.info("%s already started on these versions: nothing to do", run.name)
        return out
    flow_run = getattr(get_run_context(), "flow_run", None)
    trigger = {"kind": "data", "object": where, "version_id": version_id,
               "versions": versions,
               "arrivals_run": str(flow_run.id) if flow_run is not None else None}
    with get_client(sync_client=True) as client:
        # the same versions, the same key: the server returns the run it already made
        run = client.create_flow_run_from_deployment(
            target.id, parameters={"dataset_versions": versions, "trigger": trigger},
            name=name, idempotency_key=f"sagepipe-{name}", tags=["sagepipe", "data"])
    out.update(run=str(run.id), reason="started")
    log.info("Started %s on %d object version(s) of %s", run.name, len(versions),
             config.dataset_uri)
    return out
