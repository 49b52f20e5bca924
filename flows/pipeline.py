"""The ml-pipeline flow: it reads like the diagram in DESIGN.md.

    pin data -> images -> preprocess -> train -> evaluate -> gate -> register -> deploy -> notify

Every AWS call lives in ``tasks/``; this module decides what runs and records
why. A run ends in one of: deployed, rejected (registered as Rejected, live
endpoint untouched), unchanged (the trained model is already the live one), or
failed (the reason reaches the flow's error, the run record and the
notification; nothing is deployed).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.context import get_run_context
from prefect.exceptions import Pause
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.utilities.urls import url_for

from sagepipe.flows.config import PipelineConfig
from sagepipe.flows.estimate import budget_check, measured_cost, run_estimate
from sagepipe.flows.provenance import running_code
from sagepipe.flows.report import collect_plots, publish_artifacts
from sagepipe.flows.trigger import publish_outcome
from sagepipe.tasks.costs import usd
from sagepipe.tasks.data import DataPin, pin_data
from sagepipe.tasks.endpoints import (
    check_endpoint_in_service,
    check_endpoint_kind,
    deploy_model,
    retire_staging_endpoint,
    settle_endpoint,
)
from sagepipe.tasks.errors import DataError, DeployRolledBack, JobFailed, PipelineError
from sagepipe.tasks.gate import GateDecision, decide
from sagepipe.tasks.images import build_images
from sagepipe.tasks.jobs import PROCESSING, TRAINING, stop_job
from sagepipe.tasks.notify import console_links, notify
from sagepipe.tasks.plots import warm_up as plots_warm_up
from sagepipe.tasks.registry import get_champion, register_model, update_approval
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.steps import (
    FLOW_RUN_TAG,
    job_billing,
    job_status,
    plan_evaluate,
    plan_preprocess,
    plan_train,
    run_step,
    start_step,
)
from sagepipe.tasks.storage import (
    ensure_local_resources,
    outputs_exist,
    read_json,
    read_json_if_any,
    sample_rows,
    save_run_record,
)

__all__ = ["interrupted_records", "ml_pipeline", "run_jobs", "run_tags", "stop_run_jobs"]



class Approval(RunInput):
    approve: bool
    note: str = ""


def run_jobs(config: PipelineConfig, flow_run_id: str,
             statuses: tuple[str, ...]) -> list[tuple[Any, str, str]]:
    """(kind, name, status) of the jobs the flow run ``flow_run_id`` started that are in
    one of ``statuses`` now (found by the flow-run tag every job carries)."""
    clients = get_clients(config.runtime)
    found: list[tuple[Any, str, str]] = []
    for kind, lister in ((TRAINING, clients.sagemaker.list_training_jobs),
                         (PROCESSING, clients.sagemaker.list_processing_jobs)):
        for status in statuses:
            # only this project's jobs: ListTags on other projects' jobs is not granted
            params: dict[str, Any] = {"StatusEquals": status, "MaxResults": 100,
                                      "NameContains": config.project}
            while True:
                page = lister(**params)
                for summary in page[f"{kind.noun}JobSummaries"]:
                    arn = summary[f"{kind.noun}JobArn"]
                    tags = clients.sagemaker.list_tags(ResourceArn=arn)["Tags"]
                    if {"Key": FLOW_RUN_TAG, "Value": flow_run_id} in tags:
                        found.append((kind, summary[f"{kind.noun}JobName"], status))
                if not page.get("NextToken"):
                    break
                params["NextToken"] = page["NextToken"]
    return found


def stop_run_jobs(config: PipelineConfig, flow_run_id: str) -> list[str]:
    """Stop the SageMaker jobs the flow run ``flow_run_id`` started that still run; returns
    every job of the run that is stopped or stopping now (``training job NAME``), whoever
    stopped it (this, the run's own interrupted wait, or an on_cancellation hook)."""
    clients = get_clients(config.runtime)
    stopped = [f"{kind.noun.lower()} job {name}" for kind, name, status in run_jobs(
        config, flow_run_id, ("InProgress", "Stopping", "Stopped"))
        if status != "InProgress" or stop_job(clients, kind, name)]
    return list(dict.fromkeys(stopped))


def _stop_jobs_of_run(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed hook: stop the SageMaker jobs this run started."""
    config = PipelineConfig.model_validate(flow_run.parameters.get("config") or {})
    stopped = stop_run_jobs(config, str(flow_run.id))
    if stopped:
        logging.getLogger("sagepipe.pipeline").warning("Stopped %s", ", ".join(stopped))


# by flow run id, in this process: the record of a run stopped by an interrupt (Ctrl-C,
# SIGTERM), which the CLI that ran it saves with what was stopped
interrupted_records: dict[str, dict[str, Any]] = {}


def run_tags(run_id: str, project: str, commit: str | None) -> dict[str, str]:
    """The tags of everything a run creates: jobs, models, endpoint configs, endpoints."""
    return {FLOW_RUN_TAG: run_id, "sagepipe:project": project,
            **({"sagepipe:commit": commit} if commit else {})}


def _in_deployment() -> bool:
    flow_run = getattr(get_run_context(), "flow_run", None)
    return flow_run is not None and flow_run.deployment_id is not None


def _run_id() -> tuple[str, str | None, str | None]:
    """(id, name, UI link) of the current flow run."""
    context = get_run_context()
    flow_run = getattr(context, "flow_run", None)
    if flow_run is None:
        return f"adhoc-{int(time.time())}", None, None
    return str(flow_run.id), flow_run.name, url_for(flow_run)


@flow(name="ml-pipeline", on_cancellation=[_stop_jobs_of_run], on_crashed=[_stop_jobs_of_run],
      log_prints=True)
def ml_pipeline(config: PipelineConfig = PipelineConfig(),
                commit: str | None = None, force: bool = False,
                dataset_versions: dict[str, str] | None = None,
                trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, judge and (maybe) deploy a model; returns the run record.

    ``dataset_versions`` ({key: S3 version id}): pin exactly these objects of the dataset
    (a run started by new data), not the latest. ``trigger``: what started the run
    (``{"kind": "data", ...}`` from sagepipe-data-arrived); else a commit means a push."""
    log = get_run_logger()
    run_id, run_name, run_url = _run_id()
    if config.jobs.wait == "suspend" and not _in_deployment():
        log.info("jobs.wait: suspend needs a deployment run (a worker resumes it); this run "
                 "waits on the jobs' events instead")
        config = config.model_copy(update={"jobs": config.jobs.model_copy(
            update={"wait": "events"})})
    runtime = config.runtime
    record: dict[str, Any] = {"run_id": run_id, "run_name": run_name, "commit": commit,
                              "project": config.project, "runtime": runtime.kind,
                              "flow_run_url": run_url, "started": time.time(), "steps": {},
                              "outcome": "running", "forced": force,
                              "trigger": trigger or ({"kind": "push", "commit": commit}
                                                     if commit else {"kind": "hand"})}
    topic = config.notifications.topic_arn
    try:
        if runtime.kind == "local":
            bucket = config.artifacts_uri[5:].split("/", 1)[0]
            topic = topic or ensure_local_resources(runtime, bucket, f"{config.project}-events")
        # the image this run runs in, checked against its commit before anything is spent
        record["code"] = running_code(commit, trigger)
        # the cost: estimated from the settings; over budget, nothing is created
        estimate = run_estimate(config)
        record["cost"] = {"estimate": estimate.as_dict()}
        log.info("Estimated cost on AWS (list prices): up to %s for this run; what it leaves "
                 "live, %s a month", usd(estimate.total), usd(estimate.live_total))
        budget_check(config, estimate)
        tags = run_tags(run_id, config.project, commit)
        # endpoint.serverless on an instance-based endpoint: refused before any job runs
        for name in filter(None, (config.endpoint.staging_name, config.endpoint.name)):
            check_endpoint_kind(get_clients(runtime), name, config.endpoint.serverless)
            check_endpoint_in_service(get_clients(runtime), name)  # down: `sagepipe up`

        pin = pin_data(runtime, config.dataset_uri, config.artifacts_uri, config.data_rules(),
                       dataset_versions)
        record["data"] = pin.model_dump()
        sampled = pin.report.problem if pin.report else "auto"
        if config.problem == "auto" and sampled != "auto":  # the settings must fit the data
            config.settings_for(sampled, exact=False)
        folders = {step: str(folder) for step, folder in config.step_folders().items()}
        images = build_images(runtime, folders, config.image_repository_prefix,
                              config.build_project, config.artifacts_uri,
                              frameworks=config.steps.framework_steps(),
                              instance_types=config.instance_types())
        record["images"] = {n: {"uri": i.uri, "built": i.built,
                                **({"code": i.framework.source_uri} if i.framework else {}),
                                **({"build_seconds": i.build_seconds}
                                   if i.build_seconds is not None else {})}
                            for n, i in images.items()}

        # forced: every job is keyed on this run too, so each one runs again (new names)
        common: dict[str, Any] = {"project": config.project, "runtime": runtime,
                                  "artifacts_uri": config.artifacts_uri,
                                  "settings": config.jobs,
                                  "force_token": run_id if force else None}
        pre_plan = plan_preprocess(**common, pin=pin, image=images["preprocess"],
                                   label_column=config.label_column,
                                   validation_fraction=config.split.validation_fraction,
                                   test_fraction=config.split.test_fraction,
                                   seed=config.split.seed, problem=_problem_arg(config, pin),
                                   delimiter=config.data_rules().delimiter,
                                   missing_values=list(config.data.missing_values))
        pre = _step(record, "preprocess", _runner("preprocess", force),
                    runtime, pre_plan, config, tags)
        problem = _read_schema(config, record, pre.outputs["schema"], pin)
        metric, threshold = config.settings_for(problem, exact=True)
        train_plan = plan_train(**common, splits=pre.outputs, image=images["train"],
                                label_column=config.label_column,
                                hyperparameters=config.hyperparameters)
        trained = _step(record, "train", _runner("train", force),
                        runtime, train_plan, config, tags)
        model_uri = trained.outputs["model"]

        champion = get_champion(runtime, config.endpoint.name)
        if champion is not None and champion.model_data_url == model_uri and settle_endpoint(
                get_clients(runtime), config.endpoint, log=log):
            # the endpoint named this model while a deploy was still under way (one carried
            # on after its run was killed): "unchanged" only if that deploy took
            champion = get_champion(runtime, config.endpoint.name)
        record["champion"] = champion.model_dump() if champion else None
        if champion is not None and champion.model_data_url == model_uri:
            record.update(outcome="unchanged", decision={
                "passed": None, "reasons": ["the trained model is the one already live; "
                                            "nothing to evaluate or deploy"]})
            log.info("The trained model is already live on %s: nothing to do",
                     config.endpoint.name)
            return _finish(config, record, topic, "unchanged")

        eval_plan = plan_evaluate(**common, model_uri=model_uri,
                                  champion_model_uri=champion.model_data_url if champion
                                  else None,
                                  test_uri=pre.outputs["test"], image=images["evaluate"])
        plots_warm_up()  # the plots' imports, beside the evaluate job (tasks/plots.py)
        evaluated = _step(record, "evaluate", _runner("evaluate", force),
                          runtime, eval_plan, config, tags)
        evaluation_uri = evaluated.outputs["evaluation"]
        evaluation = read_json(get_clients(runtime), evaluation_uri)
        record["evaluation"] = evaluation
        decision = decide(evaluation, metric=metric, threshold=threshold,
                          margin=config.gate.margin, has_champion=champion is not None,
                          on_schema_change=config.gate.on_schema_change)
        record["decision"] = decision.model_dump() | {"summary": decision.summary}
        log.info("Gate: %s", decision.summary)

        approval = "approved" if decision.passed else "rejected"
        if decision.passed and config.gate.approval == "manual":
            approval = "pending"
        package_arn = register_model(
            runtime, group=config.model_package_group, idempotency_key=trained.job_name,
            image=images["serve"].uri, model_data_url=model_uri, evaluation_uri=evaluation_uri,
            approval=approval, description=decision.summary, problem=problem,
            metadata={"commit": commit or "", "data_digest": pin.digest,
                      "dataset_uri": pin.source_uri, "flow_run_id": run_id,
                      "training_job": trained.job_name, "problem_type": problem,
                      "label_column": config.label_column,
                      "feature_count": str(len(record["data_schema"].get("feature_columns")
                                               or [])),
                      **({decision.metric: f"{decision.challenger:.6f}"}
                         if decision.challenger is not None else {})},
            instance_type=config.endpoint.instance_type,
            environment=images["serve"].framework.serving_environment()
            if images["serve"].framework else None)
        record["model_package"] = {"arn": package_arn, "approval": approval}
        if approval == "pending":
            approval = _ask_for_approval(config, decision, package_arn)
            record["model_package"]["approval"] = approval
        if approval != "approved":
            record["outcome"] = "rejected"
            return _finish(config, record, topic, "rejected")

        payload = sample_rows(get_clients(runtime), pre.outputs["test"], config.label_column)
        if config.endpoint.staging_name:  # staging first: production only if it serves there
            staging = deploy_model.with_options(task_run_name="deploy-staging")(
                runtime, config.endpoint.for_staging(), package_arn, config.jobs.role_arn,
                payload, tags)
            record["staging_endpoint"] = staging.model_dump()
        deployed = deploy_model(runtime, config.endpoint, package_arn, config.jobs.role_arn,
                                payload, tags)
        record["endpoint"] = deployed.model_dump()
        if config.endpoint.staging_name and not config.endpoint.staging_keep:
            # production serves the model staging was tested with: staging costs nothing more
            record["staging_endpoint"]["retired"] = retire_staging_endpoint(
                runtime, config.endpoint.staging_name, staging.endpoint_config).model_dump()
        record["outcome"] = "deployed"
        return _finish(config, record, topic, "deployed")
    except Pause:  # suspended while a job runs: the run goes on when it is resumed
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception):  # interrupted: whoever interrupted records it
            record.update(outcome="cancelled")
            interrupted_records[run_id] = record
            raise
        outcome = "rolled_back" if isinstance(exc, DeployRolledBack) else "failed"
        record.update(outcome=outcome, error={"type": type(exc).__name__, "message": str(exc)})
        try:
            _finish(config, record, topic, outcome)
        except Exception:  # the original error matters more than the bookkeeping
            log.exception("Could not record or notify the failure")
        raise


def _problem_arg(config: PipelineConfig, pin: DataPin) -> str:
    """What the preprocess job is told: the configured problem, or the family the first
    rows suggest (the job counts the classes of the whole dataset)."""
    if config.problem != "auto":
        return config.problem
    sampled = pin.report.problem if pin.report else "auto"
    return {"binary": "classification", "multiclass": "classification"}.get(sampled, sampled)


def _read_schema(config: PipelineConfig, record: dict[str, Any], schema_uri: str,
                 pin: DataPin) -> str:
    """The preprocess job's findings into the record; returns the problem type."""
    log = get_run_logger()
    uri = schema_uri.rstrip("/") + "/schema.json"
    # a preprocess step of the user's own may write none
    schema = read_json_if_any(get_clients(config.runtime), uri) or {}
    problem = str(schema.get("problem") or (config.problem if config.problem != "auto" else ""))
    if problem not in ("binary", "multiclass", "regression"):
        raise DataError(f"The preprocess step wrote no problem type to {uri}; set problem: "
                        "binary, multiclass or regression in the settings, or have the step "
                        "write schema.json with a \"problem\" entry.")
    source = str(schema.get("problem_source") or "")
    if config.problem == "auto" and not source.startswith("inferred") and pin.report:
        source = pin.report.problem_source  # the job was told the family the sample showed
    record["problem"] = {
        "type": problem, "source": source,
        "override": "set problem: binary, multiclass or regression (--set problem=...)"}
    record["data_schema"] = {k: schema.get(k) for k in (
        "problem", "classes", "class_rows", "label_stats", "feature_columns", "input_columns",
        "dropped_columns", "dropped_rows", "rows", "input_rows", "format", "warnings",
        "columns")}
    log.info("Problem: %s (%s); override with problem: binary, multiclass or regression",
             problem, source)
    for warning in schema.get("warnings") or []:
        log.warning("Data: %s", warning)
    return problem


def _runner(step: str, force: bool) -> Any:
    return run_step.with_options(task_run_name=step, refresh_cache=force)


def _step(record: dict[str, Any], step: str, runner: Any, runtime: Any, plan: Any,
          config: PipelineConfig, tags: dict[str, str]) -> Any:
    record["steps"][step] = {"job": plan.name, "key": plan.key, "status": "running"}
    started = None
    if config.jobs.wait == "suspend":  # returns only once the job has ended
        started = _suspend_while_running(step, runtime, plan, tags)
    state = runner(runtime, plan, config.jobs, tags, started, return_state=True)
    try:
        outcome = state.result()
        if state.name == "Cached" and not outputs_exist(get_clients(runtime),
                                                        list(outcome.outputs.values())):
            # the cache remembers outputs that were deleted since: do the work again
            get_run_logger().warning("Cached %s outputs are gone; running the step again",
                                     step)
            state = runner.with_options(refresh_cache=True)(runtime, plan, config.jobs, tags,
                                                            return_state=True)
            outcome = state.result()
    except PipelineError as exc:
        record["steps"][step].update(status="failed", reason=str(exc))
        if isinstance(exc, JobFailed):  # a failed job bills too: what it ran is the cost
            try:
                record["steps"][step].update(job=exc.job, how="failed",
                                             **job_billing(runtime, plan.kind, exc.job))
            except Exception as lookup:  # bookkeeping must not hide the job's failure
                get_run_logger().warning("No billable time for %s: %s", exc.job, lookup)
        raise
    # a cache hit returns the outcome stored by the run that did the work
    how = "cached" if state.name == "Cached" else outcome.how
    record["steps"][step].update(status="completed", job=outcome.job_name, how=how,
                                 seconds=outcome.seconds, outputs=outcome.outputs,
                                 **{k: v for k, v in (("billable_seconds",
                                                       outcome.billable_seconds),
                                                      ("billing", outcome.billing),
                                                      ("training_seconds",
                                                       outcome.training_seconds))
                                    if v is not None})
    if getattr(outcome, "warm_pool", None) and how != "cached":  # jobs.keep_alive_seconds
        record["steps"][step].update(warm_pool=outcome.warm_pool,
                                     warm_pool_seconds=outcome.warm_pool_seconds)
    return outcome


_SUSPEND_MARGIN_SECONDS = 900  # past the job's own limit: time for its end to be relayed


def _suspend_while_running(step: str, runtime: Any, plan: Any, tags: dict[str, str]) -> Any:
    """``jobs.wait: suspend``: start the step's job and, while it runs, suspend this flow
    run (its process exits; the worker's infrastructure is released). The job's end,
    relayed as an event, resumes the run: it re-enters from the top, every finished step
    a cache hit, this one re-found by its deterministic name. A job that failed in the
    meantime fails the step with its reason; nothing is created twice."""
    log = get_run_logger()
    started = start_step.with_options(task_run_name=f"start-{step}")(
        runtime, plan, tags, waited_for=_waited_for())
    if started.status not in ("InProgress", "Stopping"):
        return started  # ended (or reused): the step's wait returns at once
    log.info("Suspending while %s job %s runs (%s); its end resumes this run", step,
             started.name, started.how)
    # a new key each time: a run resumed while the job still runs suspends again
    try:
        suspend_flow_run(timeout=started.max_runtime_seconds + _SUSPEND_MARGIN_SECONDS,
                         key=f"{started.name}@{started.how}@{time.time():.0f}")
    except Pause:
        # the job may have ended between the look and the suspension, its event relayed
        # while this run still ran (and so not resumed): look once more, now suspended
        if job_status(runtime, plan.kind, started.name) not in ("InProgress", "Stopping"):
            flow_run = getattr(get_run_context(), "flow_run", None)
            if flow_run is not None:
                resume_flow_run(flow_run.id)
                log.info("%s job %s ended while this run suspended: resumed at once", step,
                         started.name)
        raise


def _waited_for() -> dict[str, str]:
    """The jobs this flow run suspended for before now, and how it got each (created,
    attached): from its pause keys, ``<job>@<how>@<time>`` (job names have no @)."""
    flow_run = getattr(get_run_context(), "flow_run", None)
    if flow_run is None:
        return {}
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run.id)
    keys = [(state.state_details.pause_key or "").split("@") for state in states]
    return {key[0]: key[1] for key in keys if len(key) == 3}


def _ask_for_approval(config: PipelineConfig, decision: GateDecision, package_arn: str) -> str:
    log = get_run_logger()
    version = package_arn.rsplit("/", 1)[-1]
    log.info("Waiting up to %d s for approval of %s (%s); answer with `sagepipe approve %s` "
             "or `sagepipe reject %s` (--note says why), or in the Prefect UI",
             config.gate.approval_timeout_seconds, package_arn, decision.summary, version,
             version)
    answer = pause_flow_run(wait_for_input=Approval,
                            timeout=config.gate.approval_timeout_seconds, poll_interval=2)
    approval = "approved" if answer.approve else "rejected"
    update_approval(config.runtime, package_arn, approval,
                    f"{'Approved' if answer.approve else 'Rejected'} by a person: {answer.note}")
    return approval


def _finish(config: PipelineConfig, record: dict[str, Any], topic: str | None,
            outcome: str) -> dict[str, Any]:
    record["ended"] = time.time()
    record["seconds"] = round(record["ended"] - record["started"], 2)
    if "cost" in record:  # what the run's jobs billed, at list prices
        try:
            _warm_pools_now(config, record)
            record["cost"]["measured"] = measured_cost(config, record)
        except Exception as exc:  # bookkeeping never fails a run
            get_run_logger().warning("Could not price the run: %s: %s", type(exc).__name__,
                                     exc)
    record["links"] = console_links(config.runtime.region,
                                    endpoint=config.endpoint.name if outcome == "deployed"
                                    else None, group=config.model_package_group,
                                    flow_run_url=record.get("flow_run_url"))
    images = collect_plots(config, record)  # also puts the plots' URIs into the record
    record["record_uri"] = save_run_record(config.runtime, config.artifacts_uri,
                                           record["run_id"], record)
    publish_artifacts(record, images)
    summary = _summary(record)
    record["summary"] = summary
    publish_outcome(record, config.endpoint.name)  # what CI reads: sagepipe trigger, the Lambda
    notify(config.runtime, topic, outcome, project=config.project, summary=summary,
           details={**{k: record.get(k) for k in ("run_id", "commit", "trigger", "decision",
                                                  "model_package", "endpoint", "error",
                                                  "links")},
                    "dataset": _dataset_versions(record)})
    return record


def _warm_pools_now(config: PipelineConfig, record: dict[str, Any]) -> None:
    """A warm pool this run's training job left bills while it is kept: read its status and
    ResourceRetainedBillableTimeInSeconds again as the run ends (one describe)."""
    for info in (record.get("steps") or {}).values():
        if info.get("warm_pool") and info.get("job") \
                and info.get("how") not in ("cached", "reused"):
            try:
                info.update(job_billing(config.runtime, "training", info["job"]))
            except Exception as exc:  # the time read when the job ended stands
                get_run_logger().warning("Could not read the warm pool of %s: %s",
                                         info["job"], exc)


def _dataset_versions(record: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset the run pinned: its URI, digest and each object's version."""
    data = record.get("data")
    if not data:
        return None
    return {"uri": data.get("source_uri"), "digest": data.get("digest"),
            "versions": {o["key"]: o["version_id"] for o in data.get("objects") or []}}


def _summary(record: dict[str, Any]) -> str:
    outcome = record["outcome"]
    if outcome == "deployed":
        return (f"deployed {record['model_package']['arn']} to "
                f"{record['endpoint']['endpoint']}")
    if outcome == "rejected":
        return f"rejected: {record['decision']['summary']}"
    if outcome == "unchanged":
        return "unchanged: the trained model is already live"
    return f"{outcome}: {record.get('error', {}).get('message', '')}"
