"""The pipeline's three jobs (preprocess, train, evaluate) as plans and Prefect tasks.

A :class:`JobPlan` is the exact SageMaker request a step will send, its content
key and where its outputs will land. Planning is pure, so ``sagepipe plan`` can
show it and the cache key is known before anything runs. Output locations are
derived from the key (``<artifacts>/jobs/<step>-<key>/``), so identical inputs
always mean identical outputs, and Prefect's cache (keyed on the same content)
can skip a step without a single AWS call.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .costs import billable_seconds
from .data import DataPin
from .events import JobEvents
from .framework import PROCESSING_CODE, PROCESSING_ENTRYPOINT, training_hyperparameters
from .gate import ALL_METRICS
from .images import ImageRef
from .jobs import (
    PROCESSING,
    TRAINING,
    WaitPolicy,
    content_key,
    find_or_start,
    job_name,
    run_job,
)
from .runtime import (
    RuntimeSettings,
    get_clients,
    retry_transient,
    runtime_identity,
)
from .storage import outputs_exist

__all__ = ["JobOutcome", "JobPlan", "JobSettings", "job_request", "plan_evaluate",
           "plan_preprocess", "plan_train", "run_step"]

_PROC = "/opt/ml/processing"
DELIMITER_ARGS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


class JobSettings(BaseModel):
    """Compute and waiting for the SageMaker jobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role_arn: str = Field("arn:aws:iam::000000000000:role/sagepipe-sagemaker-execution",
                          description="SageMaker execution role the jobs run as")
    processing_instance_type: str = "ml.m5.large"
    training_instance_type: str = "ml.m5.large"
    instance_count: int = Field(1, ge=1, le=1, description="the example scripts use one node")
    volume_size_gb: int = Field(30, ge=1, le=16384)
    max_runtime_seconds: int = Field(3600, ge=60, le=28 * 24 * 3600)
    timeout_seconds: float = Field(7200, gt=0, description="give up waiting (and stop the job)")
    poll_first_seconds: float = Field(2.0, gt=0, le=300)
    poll_max_seconds: float = Field(30.0, gt=0, le=600)
    wait: Literal["poll", "events", "suspend"] = Field(
        "poll", description="how a run learns that a job ended: poll (Describe with backoff); "
        "events (the job's state-change event, relayed to Prefect; a Describe every "
        "safety_poll_seconds in case one is lost); suspend (a deployment run suspends while "
        "the job runs, releasing its worker, and the job's event resumes it; a run outside "
        "a deployment waits on events)")
    safety_poll_seconds: float = Field(360.0, ge=5, le=3600,
                                       description="wait: events - Describe this often")
    environment: dict[str, str] = Field(default_factory=dict)
    network_isolation: bool = Field(True, description="jobs get no network access")
    spot: bool = Field(False, description="managed spot training, resumed from checkpoints")
    max_wait_seconds: int | None = Field(None, ge=60, le=28 * 24 * 3600,
                                         description="spot: total wait incl. interruptions")
    # ResourceConfig.KeepAlivePeriodInSeconds: 0-21600 in botocore's model and the current
    # API reference (the developer guide still says 3600)
    keep_alive_seconds: int = Field(
        0, ge=0, le=21600,
        description="training only: keep the training instances warm this long after a job "
        "(a SageMaker managed warm pool, billed while kept) so the next training job with "
        "the same role, instance type and count, volume size and KMS key, VPC settings and "
        "network isolation starts in seconds; 0: no warm pool. Not with spot. Needs a warm "
        "pool quota for the instance type (Service Quotas; the default is 0)")
    subnets: list[str] = Field(default_factory=list, max_length=16)
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)
    kms_key_id: str | None = Field(None, description="KMS key for volumes and outputs")

    @model_validator(mode="after")
    def _consistent(self) -> JobSettings:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("jobs.subnets and jobs.security_group_ids go together: set both "
                             "to run jobs in a VPC, or neither")
        if self.max_wait_seconds is not None and not self.spot:
            raise ValueError("jobs.max_wait_seconds applies to spot training: set jobs.spot")
        if self.spot and (self.max_wait_seconds or self.max_runtime_seconds) \
                < self.max_runtime_seconds:
            raise ValueError("jobs.max_wait_seconds must be at least jobs.max_runtime_seconds")
        # "SageMaker AI managed warm pools cannot be used with spot instances" (SageMaker
        # developer guide, SageMaker AI Managed Warm Pools: Considerations)
        if self.spot and self.keep_alive_seconds:
            raise ValueError(
                "jobs.keep_alive_seconds keeps training instances in a SageMaker warm pool, "
                "and warm pools cannot be used with spot instances (jobs.spot: true). Choose "
                "one: spot (cheaper instances, interruptible) or keep_alive_seconds (faster "
                "starts for consecutive training jobs); set the other to false / 0.")
        return self

    def vpc_config(self) -> dict[str, Any] | None:
        if not self.subnets:
            return None
        return {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}

    def wait_policy(self) -> WaitPolicy:
        return WaitPolicy(first_poll=self.poll_first_seconds, max_poll=self.poll_max_seconds,
                          timeout=self.timeout_seconds, safety_poll=self.safety_poll_seconds)


class JobPlan(BaseModel):
    step: str
    kind: Literal["processing", "training"]
    key: str
    name: str
    request: dict[str, Any]
    outputs: dict[str, str]


class JobOutcome(BaseModel):
    step: str
    job_name: str
    how: str  # created | attached | reused
    outputs: dict[str, str]
    seconds: float | None
    warm_pool: str | None = None  # training with jobs.keep_alive_seconds: WarmPoolStatus
    # its ResourceRetainedBillableTimeInSeconds when the job ended (flows/pipeline.py reads
    # it again when the run ends: the pool bills while it is kept)
    warm_pool_seconds: float | None = None
    # what AWS bills (tasks/costs.billable_seconds): seconds and where they came from
    billable_seconds: float | None = None
    billing: str | None = None
    training_seconds: float | None = None  # TrainingTimeInSeconds (spot savings)


def _processing(name: str, image: ImageRef, args: list[str], inputs: dict[str, str],
                outputs: dict[str, str], settings: JobSettings) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ProcessingJobName": name,
        "RoleArn": settings.role_arn,
        "AppSpecification": {"ImageUri": image.uri, "ContainerArguments": args},
        "ProcessingInputs": [
            {"InputName": n, "S3Input": {"S3Uri": uri, "LocalPath": f"{_PROC}/input/{n}",
                                         "S3DataType": "S3Prefix", "S3InputMode": "File"}}
            for n, uri in inputs.items()],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": n, "S3Output": {"S3Uri": uri, "LocalPath": f"{_PROC}/output/{n}",
                                           "S3UploadMode": "EndOfJob"}}
            for n, uri in outputs.items()]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": settings.instance_count,
            "InstanceType": settings.processing_instance_type,
            "VolumeSizeInGB": settings.volume_size_gb}},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
        "Environment": dict(settings.environment),
        "NetworkConfig": {"EnableNetworkIsolation": settings.network_isolation},
    }
    if image.framework is not None:
        # what the SDK's FrameworkProcessor sends: the code archive and its runproc.sh as
        # inputs, runproc.sh (unpack, pip install requirements.txt, run) as the entrypoint
        for name, uri, path in (("code", image.framework.source_uri, PROCESSING_CODE),
                                ("entrypoint", image.framework.runproc_uri,
                                 PROCESSING_ENTRYPOINT)):
            request["ProcessingInputs"].append({"InputName": name, "S3Input": {
                "S3Uri": uri, "LocalPath": path, "S3DataType": "S3Prefix",
                "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}})
        request["AppSpecification"]["ContainerEntrypoint"] = [
            "/bin/bash", f"{PROCESSING_ENTRYPOINT}/runproc.sh"]
    if settings.vpc_config():
        request["NetworkConfig"]["VpcConfig"] = settings.vpc_config()
    if settings.kms_key_id:
        request["ProcessingOutputConfig"]["KmsKeyId"] = settings.kms_key_id
        request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] = settings.kms_key_id
    return request


def _finish(step: str, kind: Literal["processing", "training"], project: str,
            runtime: RuntimeSettings, artifacts_uri: str, build: Any,
            force_token: str | None) -> JobPlan:
    """Key the request on its content, then name the job and its outputs by that key.

    ``force_token`` (a forced run's id) goes into the key: new job names and new output
    locations, so nothing completed earlier is reused; outputs of earlier runs are kept.
    """
    draft_outputs_root = "{out}"
    draft = build("{name}", draft_outputs_root)
    # how long instances stay warm afterwards changes nothing the job computes: turning a
    # warm pool on must not retrain what is cached
    draft.get("ResourceConfig", {}).pop("KeepAlivePeriodInSeconds", None)
    key = content_key(runtime_identity(runtime), step, draft,
                      *([{"forced": force_token}] if force_token else []))
    name = job_name(project, step, key)
    out = f"{artifacts_uri.rstrip('/')}/jobs/{step}-{key}"
    request = build(name, out)
    outputs = request.pop("_outputs")
    return JobPlan(step=step, kind=kind, key=key, name=name, request=request, outputs=outputs)


def plan_preprocess(*, project: str, runtime: RuntimeSettings, artifacts_uri: str,
                    pin: DataPin, image: ImageRef, label_column: str,
                    validation_fraction: float, test_fraction: float, seed: int,
                    settings: JobSettings, problem: str = "auto", delimiter: str | None = None,
                    missing_values: list[str] | None = None,
                    force_token: str | None = None) -> JobPlan:
    """``problem``: binary, multiclass, regression, classification (binary or multiclass by
    the classes found) or auto; ``delimiter`` None: detected by the job."""
    def build(name: str, out: str) -> dict[str, Any]:
        outputs = {s: f"{out}/{s}" for s in ("train", "validation", "test", "schema")}
        args = ["--input-dir", f"{_PROC}/input/data", "--output-dir", f"{_PROC}/output",
                "--label-column", label_column, "--problem", problem,
                "--validation-fraction", str(validation_fraction),
                "--test-fraction", str(test_fraction), "--seed", str(seed)]
        if delimiter:
            args += ["--delimiter", DELIMITER_ARGS.get(delimiter, delimiter)]
        for value in missing_values or []:
            args.append(f"--missing-value={value}")  # one token: a value may start with -
        request = _processing(name, image, args, {"data": pin.snapshot_uri}, outputs, settings)
        return {**request, "_outputs": outputs}
    return _finish("preprocess", "processing", project, runtime, artifacts_uri, build,
                   force_token)


def plan_train(*, project: str, runtime: RuntimeSettings, artifacts_uri: str,
               splits: dict[str, str], image: ImageRef, label_column: str,
               hyperparameters: dict[str, Any], settings: JobSettings,
               force_token: str | None = None) -> JobPlan:
    """``splits``: train and validation (CSV), and schema (the preprocess step's
    schema.json: problem type, classes, column kinds) when the step wrote one."""
    # JSON-encoded, as the SageMaker SDK sends them: the training toolkit json-decodes
    # every value, so a bare string such as "null", "1e3" or "[1]" would change type
    hps = {k: json.dumps(v) for k, v in hyperparameters.items() if v is not None}
    hps["label_column"] = json.dumps(label_column)
    if image.framework is not None:  # plus the SDK's sagemaker_* entries
        hps = training_hyperparameters({**hyperparameters, "label_column": label_column},
                                       image.framework)
    types = {"train": "text/csv", "validation": "text/csv", "schema": "application/json"}

    def build(name: str, out: str) -> dict[str, Any]:
        channels = [{"ChannelName": ch, "ContentType": types[ch], "InputMode": "File",
                     "DataSource": {"S3DataSource": {
                         "S3DataType": "S3Prefix", "S3Uri": splits[ch] + "/",
                         "S3DataDistributionType": "FullyReplicated"}}}
                    for ch in types if ch in splits]
        if image.framework is not None:  # the code channel: sagemaker_submit_directory
            channels.append({"ChannelName": "code", "InputMode": "File",
                             "DataSource": {"S3DataSource": {
                                 "S3DataType": "S3Prefix", "S3Uri": image.framework.source_uri,
                                 "S3DataDistributionType": "FullyReplicated"}}})
        request: dict[str, Any] = {
            "TrainingJobName": name,
            "RoleArn": settings.role_arn,
            "AlgorithmSpecification": {
                "TrainingImage": image.uri, "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": f"validation:{m}",
                                       "Regex": f"validation:{m}=([0-9.eE+-]+);"}
                                      for m in ALL_METRICS]},
            "HyperParameters": hps,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": out},
            "ResourceConfig": {"InstanceType": settings.training_instance_type,
                               "InstanceCount": settings.instance_count,
                               "VolumeSizeInGB": settings.volume_size_gb},
            "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_seconds},
            "Environment": dict(settings.environment),
            "EnableNetworkIsolation": settings.network_isolation,
        }
        if settings.spot:
            # spot capacity can be reclaimed: SageMaker restarts the job, and a script that
            # writes /opt/ml/checkpoints (synced to this prefix) can resume from them
            request["EnableManagedSpotTraining"] = True
            request["StoppingCondition"]["MaxWaitTimeInSeconds"] = (
                settings.max_wait_seconds or settings.max_runtime_seconds)
            request["CheckpointConfig"] = {"S3Uri": f"{out}/checkpoints",
                                           "LocalPath": "/opt/ml/checkpoints"}
        if settings.vpc_config():
            request["VpcConfig"] = settings.vpc_config()
        if settings.kms_key_id:
            request["OutputDataConfig"]["KmsKeyId"] = settings.kms_key_id
            request["ResourceConfig"]["VolumeKmsKeyId"] = settings.kms_key_id
        if settings.keep_alive_seconds:  # a warm pool for the next matching training job
            request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = settings.keep_alive_seconds
        outputs = {"model": f"{out}/{name}/output/model.tar.gz"}
        return {**request, "_outputs": outputs}
    return _finish("train", "training", project, runtime, artifacts_uri, build,
                   force_token)


def plan_evaluate(*, project: str, runtime: RuntimeSettings, artifacts_uri: str,
                  model_uri: str, champion_model_uri: str | None, test_uri: str,
                  image: ImageRef, settings: JobSettings,
                  force_token: str | None = None) -> JobPlan:
    def build(name: str, out: str) -> dict[str, Any]:
        inputs = {"model": model_uri, "test": test_uri + "/"}
        args = ["--model-dir", f"{_PROC}/input/model", "--test-dir", f"{_PROC}/input/test",
                "--output-dir", f"{_PROC}/output/evaluation"]
        if champion_model_uri:
            inputs["champion"] = champion_model_uri
            args += ["--champion-dir", f"{_PROC}/input/champion"]
        outputs = {"evaluation": f"{out}/evaluation"}
        request = _processing(name, image, args, inputs, outputs, settings)
        return {**request, "_outputs": {"evaluation": f"{out}/evaluation/evaluation.json"}}
    return _finish("evaluate", "processing", project, runtime, artifacts_uri, build,
                   force_token)


def job_request(plan: JobPlan, tags: dict[str, str]) -> dict[str, Any]:
    """The request as sent: the plan's, with the run's tags plus the step and cache key."""
    tags = {**tags, "sagepipe:step": plan.step, "sagepipe:cache-key": plan.key}
    return {**plan.request, "Tags": [{"Key": k, "Value": v[:256]} for k, v in tags.items()]}


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    plan: JobPlan = parameters["plan"]
    return f"sagepipe-job-{plan.key}"


FLOW_RUN_TAG = "sagepipe:flow-run-id"  # on every job a run creates (flows/pipeline.run_tags)


class JobStart(BaseModel):
    name: str
    status: str  # InProgress, Stopping, Completed, Failed, Stopped
    how: str  # created | attached | reused
    max_runtime_seconds: int


def _outputs_still_there(clients: Any, plan: JobPlan) -> Any:
    """A completed job is reused only while its outputs exist."""
    def check(described: dict[str, Any]) -> bool:
        if plan.kind == "training":
            return outputs_exist(clients, [described["ModelArtifacts"]["S3ModelArtifacts"]])
        return outputs_exist(clients, list(plan.outputs.values()))
    return check


def job_status(runtime: RuntimeSettings, kind: str, name: str) -> str:
    """The job's status now (``kind``: training or processing)."""
    job_kind = PROCESSING if kind == "processing" else TRAINING
    described = job_kind.call(get_clients(runtime), "describe", **{job_kind.name_key: name})
    return str(described[job_kind.status_key])


@task(name="start-job", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def start_step(runtime: RuntimeSettings, plan: JobPlan, tags: dict[str, str],
               waited_for: dict[str, str] | None = None) -> JobStart:
    """Create the planned job, or find it (by its deterministic name), without waiting:
    what a run that suspends while the job runs needs to know. ``waited_for``: the jobs
    this run suspended for before (name -> how it got them); one of them that failed
    meanwhile fails the step with its reason, one that is gone fails it (JobMissing)."""
    kind = PROCESSING if plan.kind == "processing" else TRAINING
    request = job_request(plan, tags)
    clients = get_clients(runtime)
    name, how, status = find_or_start(clients, kind, request, get_run_logger(),
                                      reusable=_outputs_still_there(clients, plan),
                                      ours=waited_for)
    runtime_limit = int(request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400))
    return JobStart(name=name, status=status, how=how, max_runtime_seconds=runtime_limit)


@task(name="run-job", cache_key_fn=_cache_key, persist_result=True,
      cache_expiration=timedelta(days=365), retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def run_step(runtime: RuntimeSettings, plan: JobPlan, settings: JobSettings,
             tags: dict[str, str], started: JobStart | None = None) -> JobOutcome:
    """Run one planned job to completion (re-attaching after a retry); cached on content.
    ``started``: the job start-job found or started (``jobs.wait: suspend``)."""
    log = get_run_logger()
    kind = PROCESSING if plan.kind == "processing" else TRAINING
    request = job_request(plan, tags)
    clients = get_clients(runtime)

    watch = None
    if settings.wait in ("events", "suspend"):  # suspend: the job ended, or no deployment
        def watch(name: str) -> JobEvents:
            return JobEvents(plan.kind, name)
    final = run_job(clients, kind, request, policy=settings.wait_policy(), log=log,
                    reusable=_outputs_still_there(clients, plan), watch=watch,
                    known=(started.name, started.how) if started else None)
    prefix = "Training" if plan.kind == "training" else "Processing"
    start, end = final.get(f"{prefix}StartTime"), final.get(f"{prefix}EndTime")
    seconds = (end - start).total_seconds() if start and end else None
    outputs = dict(plan.outputs)
    if plan.kind == "training":
        outputs["model"] = final["ModelArtifacts"]["S3ModelArtifacts"]
    warm_pool = _warm_pool(final, log)
    billed, billing = billable_seconds(plan.kind, final)
    return JobOutcome(step=plan.step, job_name=final[f"{prefix}JobName"], how=final["_how"],
                      outputs=outputs, seconds=seconds, billable_seconds=billed,
                      billing=billing or None,
                      training_seconds=final.get("TrainingTimeInSeconds"), warm_pool=warm_pool,
                      warm_pool_seconds=(final.get("WarmPoolStatus") or {}).get(
                          "ResourceRetainedBillableTimeInSeconds") if warm_pool else None)


def _warm_pool(final: dict[str, Any], log: Any) -> str | None:
    """A training job's WarmPoolStatus (jobs.keep_alive_seconds), said in the log."""
    keep = (final.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds")
    if not keep:
        return None
    status: str | None = (final.get("WarmPoolStatus") or {}).get("Status")
    name, kind = final["TrainingJobName"], final["ResourceConfig"]["InstanceType"]
    if final.get("_how") == "reused":
        return status  # an earlier run's job: its pool is that run's story
    if status == "Available":
        log.info("Training job %s keeps its %s instances warm for %d s: the next training "
                 "job with the same role, instance settings, VPC and network isolation "
                 "starts on them", name, kind, keep)
    elif status == "Terminated":
        # "The default resource limit for warm pools is 0 ... a warm pool is not retained"
        # (SageMaker developer guide, warm pool resource limits)
        log.warning("Training job %s asked for a warm pool (jobs.keep_alive_seconds: %d) "
                    "and none is kept (WarmPoolStatus Terminated). The account's warm pool "
                    "quota for %s may be 0: request one in Service Quotas (search 'warm "
                    "pool'), or set jobs.keep_alive_seconds: 0.", name, keep, kind)
    return status


def job_billing(runtime: RuntimeSettings, kind: str, name: str) -> dict[str, Any]:
    """What a job that ended (a failed one too) bills: billable_seconds, billing and, for a
    training job, training_seconds; with a warm pool (jobs.keep_alive_seconds) its status
    and the seconds it has been kept so far (warm_pool, warm_pool_seconds: billed too).
    Empty if it reports none of these."""
    job_kind = PROCESSING if kind == "processing" else TRAINING
    described = job_kind.call(get_clients(runtime), "describe", **{job_kind.name_key: name})
    billed, billing = billable_seconds(kind, described)
    out: dict[str, Any] = {}
    if billed is not None:
        out.update(billable_seconds=billed, billing=billing,
                   training_seconds=described.get("TrainingTimeInSeconds"))
    pool = described.get("WarmPoolStatus")
    if pool:
        out.update(warm_pool=pool.get("Status"),
                   warm_pool_seconds=pool.get("ResourceRetainedBillableTimeInSeconds"))
    return out
