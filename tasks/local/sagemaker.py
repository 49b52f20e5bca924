"""The local SageMaker client: jobs, models, endpoints and the model registry.

Method names, arguments and response shapes are boto3's; every request is
validated against botocore's ``sagemaker`` model first. Jobs run for real as
detached processes (:mod:`.jobs`); endpoints are local HTTP servers
(:mod:`.endpoints`). All state lives in the shared :class:`StateStore`, so any
process of the project sees the same resources.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .common import LocalClient, arn, log_call, metadata, now, to_datetime
from .endpoints import EndpointManager
from .jobs import JOB_KINDS, reap_job_processes, runner_died, spawn_runner, stop_runner
from .s3 import LocalS3
from .state import StateStore
from .validation import check_endpoint_config, client_error
from .warmpools import check_request, claim_pool, warm_pool_status

__all__ = ["LocalSageMaker"]

_TERMINAL = ("Completed", "Failed", "Stopped")
# a job stopped before its runner registered: Stopped if no runner registers by then
_UNREGISTERED_STOP_SECONDS = 10.0
# a job whose creator was killed before it started the runner: a runner is started for it
# by whoever looks once it has had this long to appear (a second one would find the job
# taken and exit)
_UNSTARTED_SECONDS = 15.0


class LocalSageMaker(LocalClient):
    service = "sagemaker"

    def __init__(self, root: Path, state: StateStore, s3: LocalS3, *, region: str,
                 job_events: bool = True) -> None:
        super().__init__(region=region)
        self.root, self.state, self.s3 = root, state, s3
        self.job_events = job_events  # the EventBridge rule's stand-in: announce job ends
        self.endpoints = EndpointManager(root, state, s3, region=region)

    # ------------------------------------------------------------------ jobs
    def create_training_job(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateTrainingJob", params)
        check_request(params)  # warm pool rules (tasks/local/warmpools.py)
        arn_ = self._create_job("training", params["TrainingJobName"], params)
        claim_pool(self.state, params["TrainingJobName"], params, now())
        return {"TrainingJobArn": arn_, **metadata()}

    def create_processing_job(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateProcessingJob", params)
        arn_ = self._create_job("processing", params["ProcessingJobName"], params)
        return {"ProcessingJobArn": arn_, **metadata()}

    def _create_job(self, kind: str, name: str, params: dict[str, Any]) -> str:
        job_arn = arn(self.region, "sagemaker", f"{kind}-job/{name.lower()}")
        created = now()
        doc = {"name": name, "arn": job_arn, "request": params, "status": "InProgress",
               "secondary": "Starting", "created": created, "modified": created,
               "tags": params.get("Tags", []), "pid": None,
               "log_group": f"/aws/sagemaker/{JOB_KINDS[kind]}",
               "log_stream": f"{name}/algo-1-{int(created)}"}
        if not self.state.create(f"{kind}-job", name, doc):
            raise client_error(
                f"Create{kind.title()}Job", "ResourceInUse",
                f"{kind.title()} job names must be unique within an AWS account and region, "
                f"and a {kind} job with this name already exists ({job_arn})")
        pid = spawn_runner(self.root, kind, name, announce=self.job_events)
        self.state.update(f"{kind}-job", name, lambda d: d.update(pid=pid))
        return job_arn

    def _job(self, kind: str, name: str, operation: str) -> dict[str, Any]:
        doc = self.state.get(f"{kind}-job", name)
        if doc is None:
            raise client_error(operation, "ValidationException", "Requested resource not found.")
        if doc["status"] == "Stopping" and not doc["pid"] and \
                now() - doc.get("stop_requested", now()) > _UNREGISTERED_STOP_SECONDS:
            # stopped before any runner registered, and none did since: nothing runs it
            doc = self.state.update(f"{kind}-job", name, lambda d: d.update(
                status="Stopped", secondary="Stopped", ended=now())
                if d["status"] == "Stopping" and not d["pid"] else None) or doc
        if doc["status"] == "InProgress" and not doc["pid"] and \
                now() - doc["created"] > _UNSTARTED_SECONDS:
            doc = self.state.update(f"{kind}-job", name, lambda d: d.update(
                pid=spawn_runner(self.root, kind, name, announce=self.job_events),
                respawned=now()) if d["status"] == "InProgress" and not d["pid"] else None
            ) or doc
        if doc["status"] in ("InProgress", "Stopping") and doc["pid"] and runner_died(doc["pid"]):
            reap_job_processes(doc["pid"])  # its container, if it outlived the runner
            # the runner may have written its final status just before exiting
            doc = self.state.get(f"{kind}-job", name) or doc
            if doc["status"] in ("InProgress", "Stopping"):
                final = "Stopped" if doc["status"] == "Stopping" else "Failed"
                reason = (None if final == "Stopped" else
                          f"InternalServerError: the local job runner (pid {doc['pid']}) exited "
                          f"without reporting a result; see {self.root / 'jobs' / name}")
                doc = self.state.update(f"{kind}-job", name, lambda d: d.update(
                    status=final, secondary=final, reason=reason, ended=now())) or doc
        return doc

    def describe_training_job(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeTrainingJob", params)
        return self.job_description("training", params["TrainingJobName"])

    def describe_processing_job(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeProcessingJob", params)
        return self.job_description("processing", params["ProcessingJobName"])

    def job_description(self, kind: str, name: str) -> dict[str, Any]:
        """Local extra: Describe{Training,Processing}Job's answer without a request, for the
        local runtime's own use: what SageMaker puts in the job's state-change event, which
        the job's runner announces (:mod:`.events`). Not an API entry point: no request to
        check (the runner loads no botocore), nothing in the call log."""
        noun = "Training" if kind == "training" else "Processing"
        doc = self._job(kind, name, f"Describe{noun}Job")
        return self._training(doc) if kind == "training" else self._processing(doc)

    def _training(self, doc: dict[str, Any]) -> dict[str, Any]:
        req = doc["request"]
        out: dict[str, Any] = {
            "TrainingJobName": doc["name"], "TrainingJobArn": doc["arn"],
            "TrainingJobStatus": doc["status"], "SecondaryStatus": doc["secondary"],
            "HyperParameters": req.get("HyperParameters", {}),
            "AlgorithmSpecification": req["AlgorithmSpecification"], "RoleArn": req["RoleArn"],
            "InputDataConfig": req.get("InputDataConfig", []),
            "OutputDataConfig": req["OutputDataConfig"],
            "ResourceConfig": req["ResourceConfig"],
            "StoppingCondition": req["StoppingCondition"],
            "Environment": req.get("Environment", {}),
            "ModelArtifacts": doc.get("ModelArtifacts", {"S3ModelArtifacts": ""}),
            "CreationTime": to_datetime(doc["created"]),
            "LastModifiedTime": to_datetime(doc["modified"]),
        }
        if doc.get("started") and doc.get("ended"):
            # "Billable time refers to the absolute wall-clock time" (DescribeTrainingJob);
            # whole seconds, as AWS reports them. No spot here: billable = training time.
            seconds = max(1, math.ceil(doc["ended"] - doc["started"]))
            out.update(TrainingTimeInSeconds=seconds, BillableTimeInSeconds=seconds)
        pool = warm_pool_status(doc, now())
        if pool is not None:
            out["WarmPoolStatus"] = pool
        return self._job_times(doc, out, "Training")

    def _processing(self, doc: dict[str, Any]) -> dict[str, Any]:
        req = doc["request"]
        out: dict[str, Any] = {
            "ProcessingJobName": doc["name"], "ProcessingJobArn": doc["arn"],
            "ProcessingJobStatus": doc["status"],
            "ProcessingInputs": req.get("ProcessingInputs", []),
            "ProcessingResources": req["ProcessingResources"],
            "StoppingCondition": req.get("StoppingCondition", {}),
            "AppSpecification": req["AppSpecification"], "RoleArn": req["RoleArn"],
            "Environment": req.get("Environment", {}),
            "CreationTime": to_datetime(doc["created"]),
            "LastModifiedTime": to_datetime(doc["modified"]),
        }
        if "ProcessingOutputConfig" in req:
            out["ProcessingOutputConfig"] = req["ProcessingOutputConfig"]
        if doc.get("exit_message") is not None:
            out["ExitMessage"] = doc["exit_message"]
        return self._job_times(doc, out, "Processing")

    @staticmethod
    def _job_times(doc: dict[str, Any], out: dict[str, Any], prefix: str) -> dict[str, Any]:
        if doc.get("started"):
            out[f"{prefix}StartTime"] = to_datetime(doc["started"])
        if doc.get("ended"):
            out[f"{prefix}EndTime"] = to_datetime(doc["ended"])
        if doc.get("reason"):
            out["FailureReason"] = doc["reason"]
        out.update(metadata())
        return out

    def stop_training_job(self, **params: Any) -> dict[str, Any]:
        self._validate("StopTrainingJob", params)
        self._stop("training", params["TrainingJobName"], "StopTrainingJob")
        return metadata()

    def stop_processing_job(self, **params: Any) -> dict[str, Any]:
        self._validate("StopProcessingJob", params)
        self._stop("processing", params["ProcessingJobName"], "StopProcessingJob")
        return metadata()

    def _stop(self, kind: str, name: str, operation: str) -> None:
        doc = self._job(kind, name, operation)
        if doc["status"] != "InProgress":
            raise client_error(operation, "ValidationException",
                               f"The request was rejected because the {kind} job is in "
                               f"status {doc['status']}.")
        stopping = self.state.update(f"{kind}-job", name, lambda d: d.update(
            status="Stopping", secondary="Stopping", stop_requested=now()))
        # the pid as stored with the stop: one the runner recorded in the meantime counts.
        # None: no runner has registered yet (its creator was interrupted between creating
        # the job and recording the pid); the runner stops at registration (jobs._Runner)
        stop_runner((stopping or doc)["pid"])

    def delete_training_job(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteTrainingJob", params)
        self._delete_job("training", params["TrainingJobName"], "DeleteTrainingJob")
        return metadata()

    def delete_processing_job(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteProcessingJob", params)
        self._delete_job("processing", params["ProcessingJobName"], "DeleteProcessingJob")
        return metadata()

    def _delete_job(self, kind: str, name: str, operation: str) -> None:
        # API reference (DeleteTrainingJob, DeleteProcessingJob): only a job in a terminal
        # state (Stopped, Failed, Completed) can be deleted; all its metadata is lost and
        # the name can be used again
        doc = self._job(kind, name, operation)
        if doc["status"] not in _TERMINAL:
            raise client_error(operation, "ValidationException",
                               f"The {kind} job {name} is in status {doc['status']}; only a "
                               "job that is Stopped, Failed or Completed can be deleted.")
        self.state.delete(f"{kind}-job", name)

    def list_training_jobs(self, **params: Any) -> dict[str, Any]:
        self._validate("ListTrainingJobs", params)
        return self._list_jobs("training", params)

    def list_processing_jobs(self, **params: Any) -> dict[str, Any]:
        self._validate("ListProcessingJobs", params)
        return self._list_jobs("processing", params)

    def _list_jobs(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        prefix = "Training" if kind == "training" else "Processing"
        docs = [self._job(kind, d["name"], f"List{prefix}Jobs")
                for d in self.state.list(f"{kind}-job")]
        if "NameContains" in params:
            docs = [d for d in docs if params["NameContains"].lower() in d["name"].lower()]
        if "StatusEquals" in params:
            docs = [d for d in docs if d["status"] == params["StatusEquals"]]
        summaries = [{f"{prefix}JobName": d["name"], f"{prefix}JobArn": d["arn"],
                      f"{prefix}JobStatus": d["status"],
                      "CreationTime": to_datetime(d["created"]),
                      "LastModifiedTime": to_datetime(d["modified"]),
                      **({f"{prefix}EndTime": to_datetime(d["ended"])} if d.get("ended") else {}),
                      **({"FailureReason": d["reason"]} if d.get("reason") else {})}
                     for d in docs]
        page, token = _page(_sorted(summaries, params, "CreationTime"), params)
        return {f"{prefix}JobSummaries": page, **token, **metadata()}

    # --------------------------------------------------------- models, configs
    def create_model(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateModel", params)
        name = params["ModelName"]
        containers = params.get("Containers") or (
            [params["PrimaryContainer"]] if "PrimaryContainer" in params else [])
        if not containers:
            raise client_error("CreateModel", "ValidationException",
                               "Either PrimaryContainer or Containers must be specified.")
        containers = [self._resolve_container(c) for c in containers]
        model_arn = arn(self.region, "sagemaker", f"model/{name.lower()}")
        doc: dict[str, Any] = {
            "ModelName": name, "ModelArn": model_arn, "PrimaryContainer": containers[0],
            "ExecutionRoleArn": params.get("ExecutionRoleArn"), "created": now(),
            "tags": params.get("Tags", [])}
        # what a serverless endpoint cannot host (validation.check_endpoint_config)
        doc.update({k: params[k] for k in ("EnableNetworkIsolation", "VpcConfig") if k in params})
        if not self.state.create("model", name, doc):
            raise client_error("CreateModel", "ValidationException",
                               f'Cannot create already existing model "{model_arn}".')
        return {"ModelArn": model_arn, **metadata()}

    def _resolve_container(self, container: dict[str, Any]) -> dict[str, Any]:
        """A container given by ModelPackageName takes the package's image and artifact."""
        package_name = container.get("ModelPackageName")
        if not package_name:
            return container
        package = self._package(package_name, "CreateModel")
        spec = package["InferenceSpecification"]["Containers"][0]
        return {**{k: v for k, v in container.items() if k != "ModelPackageName"},
                "Image": spec["Image"], "ModelDataUrl": spec.get("ModelDataUrl"),
                "Environment": {**spec.get("Environment", {}),
                                **container.get("Environment", {})},
                "ModelPackageName": package["ModelPackageArn"]}

    def describe_model(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeModel", params)
        doc = self._get("model", params["ModelName"], "DescribeModel", "model")
        out = {"ModelName": doc["ModelName"], "ModelArn": doc["ModelArn"],
               "PrimaryContainer": doc["PrimaryContainer"],
               "CreationTime": to_datetime(doc["created"]), **metadata()}
        if doc.get("ExecutionRoleArn"):
            out["ExecutionRoleArn"] = doc["ExecutionRoleArn"]
        return out

    def delete_model(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteModel", params)
        self._get("model", params["ModelName"], "DeleteModel", "model")
        self.state.delete("model", params["ModelName"])
        return metadata()

    def create_endpoint_config(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateEndpointConfig", params)
        name = params["EndpointConfigName"]
        models = {variant["ModelName"]: self._get("model", variant["ModelName"],
                                                  "CreateEndpointConfig", "model")
                  for variant in params["ProductionVariants"]}
        check_endpoint_config(params, models)
        config_arn = arn(self.region, "sagemaker", f"endpoint-config/{name.lower()}")
        doc = {"EndpointConfigName": name, "EndpointConfigArn": config_arn,
               "ProductionVariants": params["ProductionVariants"], "created": now(),
               "tags": params.get("Tags", [])}
        if not self.state.create("endpoint-config", name, doc):
            raise client_error("CreateEndpointConfig", "ValidationException",
                               f'Cannot create already existing endpoint configuration '
                               f'"{config_arn}".')
        return {"EndpointConfigArn": config_arn, **metadata()}

    def describe_endpoint_config(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeEndpointConfig", params)
        doc = self._get("endpoint-config", params["EndpointConfigName"],
                        "DescribeEndpointConfig", "endpoint configuration")
        return {"EndpointConfigName": doc["EndpointConfigName"],
                "EndpointConfigArn": doc["EndpointConfigArn"],
                "ProductionVariants": doc["ProductionVariants"],
                "CreationTime": to_datetime(doc["created"]), **metadata()}

    def delete_endpoint_config(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteEndpointConfig", params)
        self._get("endpoint-config", params["EndpointConfigName"], "DeleteEndpointConfig",
                  "endpoint configuration")
        self.state.delete("endpoint-config", params["EndpointConfigName"])
        return metadata()

    # ------------------------------------------------------------- endpoints
    def create_endpoint(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateEndpoint", params)
        return {"EndpointArn": self.endpoints.create(params), **metadata()}

    def update_endpoint(self, **params: Any) -> dict[str, Any]:
        self._validate("UpdateEndpoint", params)
        return {"EndpointArn": self.endpoints.update(params), **metadata()}

    def describe_endpoint(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeEndpoint", params)
        return {**self.endpoints.describe(params["EndpointName"]), **metadata()}

    def delete_endpoint(self, **params: Any) -> dict[str, Any]:
        self._validate("DeleteEndpoint", params)
        self.endpoints.delete(params["EndpointName"])
        return metadata()

    def list_endpoints(self, **params: Any) -> dict[str, Any]:
        self._validate("ListEndpoints", params)
        summaries = []
        for doc in self.state.list("endpoint"):
            if params.get("NameContains", "").lower() not in doc["EndpointName"].lower():
                continue
            described = self.endpoints.describe(doc["EndpointName"])
            if "StatusEquals" in params and described["EndpointStatus"] != params["StatusEquals"]:
                continue
            summaries.append({k: described[k] for k in (
                "EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime",
                "EndpointStatus")})
        page, token = _page(_sorted(summaries, params, "CreationTime"), params)
        return {"Endpoints": page, **token, **metadata()}

    # -------------------------------------------------------------- registry
    def create_model_package_group(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateModelPackageGroup", params)
        name = params["ModelPackageGroupName"]
        group_arn = arn(self.region, "sagemaker", f"model-package-group/{name.lower()}")
        doc = {"ModelPackageGroupName": name, "ModelPackageGroupArn": group_arn,
               "ModelPackageGroupDescription": params.get("ModelPackageGroupDescription", ""),
               "created": now(), "tags": params.get("Tags", [])}
        if not self.state.create("model-package-group", name, doc):
            raise client_error("CreateModelPackageGroup", "ValidationException",
                               f"Model Package Group already exists: {group_arn}")
        return {"ModelPackageGroupArn": group_arn, **metadata()}

    def describe_model_package_group(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeModelPackageGroup", params)
        name = params["ModelPackageGroupName"].rsplit("/", 1)[-1]
        doc = self.state.get("model-package-group", name)
        if doc is None:
            raise client_error("DescribeModelPackageGroup", "ValidationException",
                               f"ModelPackageGroup {name} does not exist.")
        return {"ModelPackageGroupName": doc["ModelPackageGroupName"],
                "ModelPackageGroupArn": doc["ModelPackageGroupArn"],
                "ModelPackageGroupDescription": doc["ModelPackageGroupDescription"],
                "CreationTime": to_datetime(doc["created"]),
                "ModelPackageGroupStatus": "Completed", **metadata()}

    def list_model_package_groups(self, **params: Any) -> dict[str, Any]:
        self._validate("ListModelPackageGroups", params)
        items = [{"ModelPackageGroupName": d["ModelPackageGroupName"],
                  "ModelPackageGroupArn": d["ModelPackageGroupArn"],
                  "CreationTime": to_datetime(d["created"]),
                  "ModelPackageGroupStatus": "Completed"}
                 for d in self.state.list("model-package-group")
                 if params.get("NameContains", "").lower()
                 in d["ModelPackageGroupName"].lower()]
        page, token = _page(_sorted(items, params, "CreationTime"), params)
        return {"ModelPackageGroupSummaryList": page, **token, **metadata()}

    def create_model_package(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateModelPackage", params)
        group = params.get("ModelPackageGroupName")
        if not group:
            raise client_error("CreateModelPackage", "ValidationException",
                               "The local registry supports versioned model packages only: "
                               "set ModelPackageGroupName.")
        group = group.rsplit("/", 1)[-1]
        if self.state.get("model-package-group", group) is None:
            raise client_error("CreateModelPackage", "ValidationException",
                               f"ModelPackageGroup {group} does not exist.")
        token = params.get("ClientToken")
        if token:  # idempotent retry: same token, same package
            for doc in self.state.list("model-package"):
                if doc.get("ClientToken") == token and doc["ModelPackageGroupName"] == group:
                    return {"ModelPackageArn": doc["ModelPackageArn"], **metadata()}
        version = self.state.next_value(f"model-package:{group}")
        package_arn = arn(self.region, "sagemaker", f"model-package/{group.lower()}/{version}")
        created = now()
        doc = {k: v for k, v in params.items() if k not in ("Tags",)}
        doc.update({"ModelPackageGroupName": group, "ModelPackageVersion": version,
                    "ModelPackageArn": package_arn, "ModelPackageStatus": "Completed",
                    "ModelApprovalStatus": params.get("ModelApprovalStatus",
                                                      "PendingManualApproval"),
                    "created": created, "modified": created, "tags": params.get("Tags", [])})
        self.state.put("model-package", package_arn, doc)
        return {"ModelPackageArn": package_arn, **metadata()}

    def _package(self, name_or_arn: str, operation: str) -> dict[str, Any]:
        doc = self.state.get("model-package", name_or_arn)
        if doc is None:
            raise client_error(operation, "ValidationException",
                               f"ModelPackage {name_or_arn} does not exist.")
        return doc

    def describe_model_package(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeModelPackage", params)
        doc = self._package(params["ModelPackageName"], "DescribeModelPackage")
        out = {k: v for k, v in doc.items()
               if k not in ("created", "modified", "tags", "ClientToken")}
        out["CreationTime"] = to_datetime(doc["created"])
        out["LastModifiedTime"] = to_datetime(doc["modified"])
        return {**out, **metadata()}

    def update_model_package(self, **params: Any) -> dict[str, Any]:
        self._validate("UpdateModelPackage", params)
        package_arn = params["ModelPackageArn"]
        self._package(package_arn, "UpdateModelPackage")

        def change(doc: dict[str, Any]) -> None:
            for key in ("ModelApprovalStatus", "ApprovalDescription"):
                if key in params:
                    doc[key] = params[key]
            if "CustomerMetadataProperties" in params:
                doc.setdefault("CustomerMetadataProperties", {}).update(
                    params["CustomerMetadataProperties"])
            doc["modified"] = now()
        self.state.update("model-package", package_arn, change)
        return {"ModelPackageArn": package_arn, **metadata()}

    def list_model_packages(self, **params: Any) -> dict[str, Any]:
        self._validate("ListModelPackages", params)
        group = params.get("ModelPackageGroupName", "").rsplit("/", 1)[-1]
        items = [{"ModelPackageGroupName": d["ModelPackageGroupName"],
                  "ModelPackageVersion": d["ModelPackageVersion"],
                  "ModelPackageArn": d["ModelPackageArn"],
                  "ModelPackageDescription": d.get("ModelPackageDescription", ""),
                  "CreationTime": to_datetime(d["created"]),
                  "ModelPackageStatus": d["ModelPackageStatus"],
                  "ModelApprovalStatus": d["ModelApprovalStatus"]}
                 for d in self.state.list("model-package")
                 if (not group or d["ModelPackageGroupName"] == group)
                 and params.get("ModelApprovalStatus", d["ModelApprovalStatus"])
                 == d["ModelApprovalStatus"]]
        page, token = _page(_sorted(items, params, "CreationTime"), params)
        return {"ModelPackageSummaryList": page, **token, **metadata()}

    # ------------------------------------------------------------------ tags
    def add_tags(self, **params: Any) -> dict[str, Any]:
        self._validate("AddTags", params)
        kind, name = self._arn_resource(params["ResourceArn"], "AddTags")

        def change(doc: dict[str, Any]) -> None:
            tags = {t["Key"]: t["Value"] for t in doc.get("tags", [])}
            tags.update({t["Key"]: t.get("Value", "") for t in params["Tags"]})
            doc["tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
        self.state.update(kind, name, change)
        return {"Tags": params["Tags"], **metadata()}

    def list_tags(self, **params: Any) -> dict[str, Any]:
        self._validate("ListTags", params)
        return {"Tags": self._tags(params["ResourceArn"]), **metadata()}

    def tags_of(self, resource_arn: str) -> list[dict[str, str]]:
        """Local extra: ListTags' answer for an ARN the local runtime made itself (the
        relay's ListTags, run by a job's runner for its own job): no request check, in the
        call log as ListTags (on AWS the relay's Lambda makes that call)."""
        log_call(self.service, "ListTags", {"ResourceArn": resource_arn})
        return self._tags(resource_arn)

    def _tags(self, resource_arn: str) -> list[dict[str, str]]:
        kind, name = self._arn_resource(resource_arn, "ListTags")
        doc = self.state.get(kind, name) or {}
        return list(doc.get("tags", []))

    def _arn_resource(self, resource_arn: str, operation: str) -> tuple[str, str]:
        resource = resource_arn.split(":", 5)[-1]
        kind = resource.partition("/")[0]
        if kind == "model-package":
            if self.state.get(kind, resource_arn):
                return kind, resource_arn
        else:
            for doc in self.state.list(kind):
                if _arn_of(doc) == resource_arn:
                    return kind, _name_of(kind, doc)
        raise client_error(operation, "ValidationException",
                           f"Resource {resource_arn} does not exist.")

    def _get(self, kind: str, name: str, operation: str, noun: str) -> dict[str, Any]:
        doc = self.state.get(kind, name)
        if doc is None:
            resource_arn = arn(self.region, "sagemaker", f"{kind}/{name.lower()}")
            raise client_error(operation, "ValidationException",
                               f'Could not find {noun} "{resource_arn}".')
        return doc


def _arn_of(doc: dict[str, Any]) -> str | None:
    for key in ("arn", "ModelArn", "EndpointArn", "EndpointConfigArn", "ModelPackageGroupArn"):
        if key in doc:
            return str(doc[key])
    return None


def _name_of(kind: str, doc: dict[str, Any]) -> str:
    for key in ("name", "ModelName", "EndpointName", "EndpointConfigName",
                "ModelPackageGroupName"):
        if key in doc:
            return str(doc[key])
    raise KeyError(kind)


def _sorted(items: list[dict[str, Any]], params: dict[str, Any],
            default_key: str) -> list[dict[str, Any]]:
    key = params.get("SortBy", default_key)
    key = {"Name": next((k for k in (items[0] if items else {}) if k.endswith("Name")), key),
           "Status": next((k for k in (items[0] if items else {}) if k.endswith("Status")),
                          key)}.get(key, key)
    return sorted(items, key=lambda i: i.get(key) or 0,
                  reverse=params.get("SortOrder", "Descending") == "Descending")


def _page(items: list[dict[str, Any]],
          params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    start = int(params.get("NextToken") or 0)
    size = int(params.get("MaxResults", 100))
    page = items[start:start + size]
    token = {"NextToken": str(start + size)} if start + size < len(items) else {}
    return page, token
