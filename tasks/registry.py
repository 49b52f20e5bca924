"""The SageMaker Model Registry: one package group per model, one package per run.

The *champion* is the approved package the production endpoint serves: the
endpoint's config names a model, and that model was created from a package
(``PrimaryContainer.ModelPackageName``). A model package carries its metrics
(``evaluation.json`` in S3) and lineage (commit, data pin, images, flow run).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from pydantic import BaseModel

from .errors import RegistryError
from .runtime import Clients, RuntimeSettings, get_clients, is_not_found, retry_transient

__all__ = ["Champion", "ensure_group", "find_champion", "find_package", "get_champion",
           "list_packages", "register_model", "register_package", "set_approval",
           "update_approval"]

APPROVAL = {"approved": "Approved", "rejected": "Rejected", "pending": "PendingManualApproval"}
TASKS = {"binary": "CLASSIFICATION", "multiclass": "CLASSIFICATION", "regression": "REGRESSION"}
# CustomerMetadataProperties keys and values may hold letters, separators, digits and
# _.:/=+-@ only (CreateModelPackage: [\p{L}\p{Z}\p{N}_.:\/=+\-@]*, keys up to 128 and values
# up to 256 characters, at most 50 entries):
# https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateModelPackage.html
_METADATA_UNSAFE = re.compile(r"[^\w .:/=+\-@]")


def metadata_text(value: str, limit: int) -> str:
    """``value`` with what CustomerMetadataProperties refuses replaced, cut to ``limit``."""
    return _METADATA_UNSAFE.sub("_", value)[:limit]


class Champion(BaseModel):
    package_arn: str
    version: int
    model_data_url: str
    image: str
    endpoint_config: str


def ensure_group(clients: Clients, group: str, description: str) -> None:
    try:
        clients.sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        clients.sagemaker.create_model_package_group(ModelPackageGroupName=group,
                                                     ModelPackageGroupDescription=description)


def find_champion(clients: Clients, endpoint_name: str) -> Champion | None:
    """The package behind the endpoint, or None before the first deploy.

    Whatever the endpoint's status (Creating, Updating, SystemUpdating, RollingBack,
    UpdateRollbackFailed, OutOfService, Deleting, Failed), its EndpointConfigName is the
    model to beat: failing closed, a transitional state never lets the threshold alone
    decide and a worse model replace the live one.
    """
    try:
        endpoint = clients.sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
    config = clients.sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint["EndpointConfigName"])
    model = clients.sagemaker.describe_model(
        ModelName=config["ProductionVariants"][0]["ModelName"])
    container = model.get("PrimaryContainer") or model["Containers"][0]
    package_arn = container.get("ModelPackageName")
    if not package_arn:
        return None  # deployed outside the registry: nothing to compare against
    package = clients.sagemaker.describe_model_package(ModelPackageName=package_arn)
    spec = package["InferenceSpecification"]["Containers"][0]
    return Champion(package_arn=package_arn, version=int(package["ModelPackageVersion"]),
                    model_data_url=spec["ModelDataUrl"], image=spec["Image"],
                    endpoint_config=endpoint["EndpointConfigName"])


def model_package_request(*, group: str, idempotency_key: str, image: str,
                          model_data_url: str, evaluation_uri: str, approval: str,
                          description: str, metadata: dict[str, str],
                          instance_type: str, problem: str | None = None,
                          constraints_uri: str | None = None,
                          environment: dict[str, str] | None = None) -> dict[str, Any]:
    """The CreateModelPackage request; the ClientToken makes a retry return the same package.

    ``evaluation_uri`` is the ModelQuality statistics (evaluation.json carries the
    ``<type>_metrics`` block); ``constraints_uri`` the feature schema in Model Monitor's
    constraints format, as ModelDataQuality constraints.
    """
    metrics: dict[str, Any] = {"ModelQuality": {"Statistics": {
        "ContentType": "application/json", "S3Uri": evaluation_uri}}}
    if constraints_uri:
        metrics["ModelDataQuality"] = {"Constraints": {
            "ContentType": "application/json", "S3Uri": constraints_uri}}
    extra: dict[str, Any] = {"Task": TASKS[problem]} if problem in TASKS else {}
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": model_data_url}
    if environment:  # a framework image's inference toolkit: where the handlers are
        container["Environment"] = dict(environment)
    request: dict[str, Any] = dict(
        **extra,
        ModelPackageGroupName=group,
        ModelPackageDescription=description[:1024],
        ModelApprovalStatus=APPROVAL[approval],
        InferenceSpecification={
            "Containers": [container],
            "SupportedContentTypes": ["text/csv", "application/json"],
            "SupportedResponseMIMETypes": ["application/json", "text/csv"],
            "SupportedRealtimeInferenceInstanceTypes": [instance_type],
        },
        ModelMetrics=metrics,
        CustomerMetadataProperties={metadata_text(k, 128): metadata_text(str(v), 256)
                                    for k, v in list(metadata.items())[:50] if v},
    )
    # the token covers the whole request, decision included: a retry of this very
    # registration gets its package back, while a run that reuses the training job but
    # decides otherwise (margin, champion, a person's answer) gets a package of its own
    content = json.dumps([idempotency_key, request], sort_keys=True, default=str)
    request["ClientToken"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sagepipe:{group}:{content}"))
    return request


def register_package(clients: Clients, **request_args: Any) -> str:
    """Create the run's model package (a retry with the same key returns the same one)."""
    response = clients.sagemaker.create_model_package(**model_package_request(**request_args))
    return str(response["ModelPackageArn"])


def _exists(clients: Clients, uri: str) -> bool:
    bucket, _, key = uri[5:].partition("/")
    try:
        clients.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_not_found(exc) or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise
    return True


def set_approval(clients: Clients, package_arn: str, approval: str, reason: str) -> None:
    clients.sagemaker.update_model_package(ModelPackageArn=package_arn,
                                           ModelApprovalStatus=APPROVAL[approval],
                                           ApprovalDescription=reason[:1024])


def package_summary(clients: Clients, package_arn: str) -> dict[str, Any]:
    described: dict[str, Any] = clients.sagemaker.describe_model_package(
        ModelPackageName=package_arn)
    return described


def list_packages(clients: Clients, group: str, limit: int | None = None
                  ) -> list[dict[str, Any]]:
    """The group's package summaries, newest first ([] if the group does not exist)."""
    params: dict[str, Any] = {"ModelPackageGroupName": group, "SortBy": "CreationTime",
                              "SortOrder": "Descending", "MaxResults": 100}
    found: list[dict[str, Any]] = []
    while limit is None or len(found) < limit:
        try:
            page = clients.sagemaker.list_model_packages(**params)
        except ClientError as exc:
            if is_not_found(exc):
                return []
            raise
        found += page["ModelPackageSummaryList"]
        if not page.get("NextToken"):
            break
        params["NextToken"] = page["NextToken"]
    return found[:limit]


def find_package(clients: Clients, group: str, version: str) -> dict[str, Any]:
    """DescribeModelPackage of ``version`` (a version number or a package ARN) in ``group``.

    RegistryError names the versions there are when it is not one of them.
    """
    version = version.strip()
    if version.startswith("arn:"):
        try:
            described = package_summary(clients, version)
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            raise RegistryError(version, f"No model package {version} in the model registry "
                                f"({exc.response['Error'].get('Message', '')}). `sagepipe "
                                "models` lists this project's versions.") from exc
        if described.get("ModelPackageGroupName") != group:
            raise RegistryError(version, f"{version} belongs to the model package group "
                                f"{described.get('ModelPackageGroupName')!r}, not this "
                                f"project's {group!r}; use the settings of its project "
                                "(--env).")
        return described
    packages = list_packages(clients, group)
    wanted = version.lstrip("vV")
    for package in packages:
        if str(package["ModelPackageVersion"]) == wanted:
            return package_summary(clients, package["ModelPackageArn"])
    known = ", ".join(str(p["ModelPackageVersion"]) for p in packages[:20]) or "none yet"
    raise RegistryError(version, f"No version {version!r} in the model package group {group!r} "
                        f"(versions, newest first: {known}). Give a version number or a "
                        "package ARN; `sagepipe models` lists them.")


@task(name="find-champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def get_champion(runtime: RuntimeSettings, endpoint_name: str) -> Champion | None:
    champion = find_champion(get_clients(runtime), endpoint_name)
    log = get_run_logger()
    if champion is None:
        log.info("No live model on %s yet: this run can only be judged on the threshold",
                 endpoint_name)
    else:
        log.info("Champion: %s (config %s)", champion.package_arn, champion.endpoint_config)
    return champion


@task(name="register-model", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def register_model(runtime: RuntimeSettings, *, group: str, idempotency_key: str, image: str,
                   model_data_url: str, evaluation_uri: str, approval: str, description: str,
                   metadata: dict[str, str], instance_type: str,
                   problem: str | None = None,
                   environment: dict[str, str] | None = None) -> str:
    clients = get_clients(runtime)
    ensure_group(clients, group, f"Models of the sagepipe project {group}")
    constraints = evaluation_uri.rsplit("/", 1)[0] + "/constraints.json"
    arn = register_package(clients, group=group, idempotency_key=idempotency_key, image=image,
                           model_data_url=model_data_url, evaluation_uri=evaluation_uri,
                           approval=approval, description=description, metadata=metadata,
                           instance_type=instance_type, problem=problem,
                           constraints_uri=constraints if _exists(clients, constraints)
                           else None, environment=environment)
    get_run_logger().info("Registered %s as %s", arn, APPROVAL[approval])
    return arn


@task(name="update-approval", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def update_approval(runtime: RuntimeSettings, package_arn: str, approval: str,
                    reason: str) -> None:
    set_approval(get_clients(runtime), package_arn, approval, reason)
