"""``sagepipe plan``: the requests a run would send, checked, without credentials.

Everything that can be known before the run is computed exactly: the image tags
(content hashes of ``containers/``), the job requests built by the same planners
the flow uses, the registry and deploy requests. What only the run can know
(the data's version digest, image digests, the champion) shows as a
``<placeholder>``; names and cache keys derived from them change accordingly at
run time. Every request is validated against botocore's service model, client
side and for the constraints AWS checks on arrival, so a request AWS would refuse
is reported here, before any money is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from sagepipe.flows.config import PipelineConfig
from sagepipe.flows.pipeline import run_tags
from sagepipe.tasks.data import DataPin, parse_s3_uri
from sagepipe.tasks.endpoints import (
    EndpointSettings,
    deploy_requests,
    deployment_config,
    serverless_environment,
)
from sagepipe.tasks.framework import (
    PROCESSING_STEPS,
    FrameworkCode,
    code_prefix,
    framework_image,
    runproc,
    source_archive,
)
from sagepipe.tasks.images import BUILDSPEC, ImageRef, build_request, content_tag
from sagepipe.tasks.local.validation import validate_request
from sagepipe.tasks.registry import model_package_request
from sagepipe.tasks.scaling import DIMENSION, NAMESPACE, resource_id, scaling_requests
from sagepipe.tasks.steps import job_request, plan_evaluate, plan_preprocess, plan_train

__all__ = ["PlannedCall", "build_plan"]


@dataclass
class PlannedCall:
    service: str
    operation: str
    params: dict[str, Any]
    when: str = "always"
    problems: list[str] = field(default_factory=list)


RUN_ID = "<flow-run-id>"


def _account(config: PipelineConfig) -> str:
    parts = config.jobs.role_arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4].isdigit() else "<account>"


def _update_and_scaling(settings: EndpointSettings,
                        endpoint_config: dict[str, Any]) -> list[PlannedCall]:
    """A later deploy's blue/green update, and endpoint.autoscaling after every deploy."""
    name = settings.name
    # a serverless variant has no instance count: nothing to look up or scale
    variants = [v["VariantName"] for v in endpoint_config["ProductionVariants"]
                if v.get("InstanceType")]
    update: dict[str, Any] = {"EndpointName": name,
                              "EndpointConfigName": endpoint_config["EndpointConfigName"],
                              "DeploymentConfig": deployment_config(settings)}
    when = "later deploys (blue/green)"
    if settings.autoscaling:
        update["RetainAllVariantProperties"] = True
        when = ("later deploys (blue/green; RetainAllVariantProperties while the variant is a "
                "scalable target: the new fleet keeps the instance count autoscaling reached)")
    calls = [
        PlannedCall("application-autoscaling", "DescribeScalableTargets", {
            "ServiceNamespace": NAMESPACE, "ScalableDimension": DIMENSION,
            "ResourceIds": [resource_id(name, v) for v in variants]},
            "later deploys: is the variant a scalable target? (one that is sagepipe's is "
            "deregistered first if the update changes its instance type)")] if variants else []
    calls.append(PlannedCall("sagemaker", "UpdateEndpoint", update, when))
    scaling = settings.autoscaling
    for variant in variants if scaling else []:
        assert scaling is not None
        register, policy = scaling_requests(name, variant, scaling)
        calls += [PlannedCall("application-autoscaling", "RegisterScalableTarget", register,
                              "after every deploy, once the smoke test passed"),
                  PlannedCall("application-autoscaling", "PutScalingPolicy", policy,
                              "after every deploy, once the smoke test passed")]
    return calls


def build_plan(config: PipelineConfig, commit: str | None = None) -> list[PlannedCall]:
    runtime = config.runtime
    data_bucket, data_key = parse_s3_uri(config.dataset_uri)
    art_bucket, art_prefix = parse_s3_uri(config.artifacts_uri)
    registry = f"{_account(config)}.dkr.ecr.{runtime.region}.amazonaws.com"
    folders = config.step_folders()
    frameworks = config.steps.framework_steps()
    images = {n: ImageRef(name=n, repository=f"{config.image_repository_prefix}-{n}",
                          tag=content_tag(folder), built=False, digest="sha256:<digest>",
                          uri=f"{registry}/{config.image_repository_prefix}-{n}@sha256:<digest>")
              for n, folder in folders.items() if n not in frameworks}
    code_calls: list[PlannedCall] = []
    for step, spec in frameworks.items():  # AWS's image; the code uploaded, no build
        scope: Any = "inference" if step == "serve" else "training"
        uri = framework_image(spec["framework"], spec["version"], runtime.region,
                              config.instance_types()[step], scope)
        archive = source_archive(folders[step])
        prefix = code_prefix(config.artifacts_uri, step, archive, spec["entry_point"])
        code = FrameworkCode(framework=spec["framework"], version=spec["version"],
                             entry_point=spec["entry_point"],
                             source_uri=f"{prefix}/sourcedir.tar.gz",
                             runproc_uri=f"{prefix}/runproc.sh", region=runtime.region)
        repository, _, tag = uri.split("/", 1)[1].partition(":")
        images[step] = ImageRef(name=step, repository=repository, tag=tag, digest="", uri=uri,
                                built=False, framework=code)
        uploads = [("sourcedir.tar.gz", len(archive))]
        if step in PROCESSING_STEPS:
            uploads.append(("runproc.sh", len(runproc(spec["entry_point"]))))
        for name, size in uploads:
            bucket, key = parse_s3_uri(f"{prefix}/{name}")
            code_calls.append(PlannedCall("s3", "PutObject", {
                "Bucket": bucket, "Key": key, "Body": f"<{size} bytes>"},
                f"{step} ({spec['framework']} {spec['version']}): only if not yet uploaded"))
    pin = DataPin(source_uri=config.dataset_uri, bucket=data_bucket, objects=[],
                  digest="<data-digest>",
                  snapshot_uri=f"s3://{art_bucket}/{art_prefix.strip('/')}/data/<data-digest>/")
    calls = [
        PlannedCall("s3", "GetBucketVersioning", {"Bucket": data_bucket}),
        PlannedCall("s3", "HeadObject", {"Bucket": data_bucket, "Key": data_key}),
        PlannedCall("s3", "CopyObject", {
            "Bucket": art_bucket, "Key": f"{art_prefix.strip('/')}/data/<data-digest>/"
            + data_key.rsplit("/", 1)[-1],
            "CopySource": f"{data_bucket}/{data_key}?versionId=<version>"}),
    ]
    built = {n: i for n, i in images.items() if i.framework is None}
    calls += code_calls
    calls += [PlannedCall("ecr", "DescribeImages", {"repositoryName": i.repository,
                                                     "imageIds": [{"imageTag": i.tag}]})
              for i in built.values()]
    if built:
        source_key, build = build_request(
            build_project=config.build_project, artifacts_bucket=art_bucket,
            artifacts_prefix=art_prefix, tags={n: i.tag for n, i in built.items()},
            repositories={n: i.repository for n, i in built.items()},
            buildspec=BUILDSPEC.read_text() if BUILDSPEC.is_file() else None,
            run_key=RUN_ID)
        build["idempotencyToken"] = "<sha256 of this request and the flow run id>"
        calls += [
            PlannedCall("s3", "PutObject", {"Bucket": art_bucket, "Key": source_key,
                                            "Body": "<zip of the folders to build>"},
                        when="only for images not yet in ECR"),
            PlannedCall("codebuild", "StartBuild", build, when="only for images not yet in ECR")]
    common: dict[str, Any] = {"project": config.project, "runtime": runtime,
                              "artifacts_uri": config.artifacts_uri, "settings": config.jobs}
    problem = config.problem if config.problem != "auto" else "<inferred from the data>"
    pre = plan_preprocess(**common, pin=pin, image=images["preprocess"],
                          label_column=config.label_column,
                          validation_fraction=config.split.validation_fraction,
                          test_fraction=config.split.test_fraction, seed=config.split.seed,
                          problem=problem, delimiter=config.data_rules().delimiter,
                          missing_values=list(config.data.missing_values))
    train = plan_train(**common, splits=pre.outputs, image=images["train"],
                       label_column=config.label_column, hyperparameters=config.hyperparameters)
    evaluate = plan_evaluate(**common, model_uri=train.outputs["model"],
                             champion_model_uri=None, test_uri=pre.outputs["test"],
                             image=images["evaluate"])
    tags = run_tags(RUN_ID, config.project, commit)
    calls += [
        PlannedCall("sagemaker", "CreateProcessingJob", job_request(pre, tags), "unless cached"),
        PlannedCall("sagemaker", "CreateTrainingJob", job_request(train, tags),
                    "unless cached"),
        PlannedCall("sagemaker", "DescribeEndpoint", {"EndpointName": config.endpoint.name}),
        PlannedCall("sagemaker", "CreateProcessingJob", job_request(evaluate, tags),
                    "unless cached; with a champion input once a model is live"),
    ]
    package = model_package_request(
        group=config.model_package_group, idempotency_key=train.name,
        image=images["serve"].uri, model_data_url=train.outputs["model"],
        evaluation_uri=evaluate.outputs["evaluation"], approval="approved",
        description="<gate decision>", instance_type=config.endpoint.instance_type,
        problem=config.problem if config.problem != "auto" else None,
        constraints_uri=evaluate.outputs["evaluation"].rsplit("/", 1)[0] + "/constraints.json",
        metadata={"commit": commit or "", "data_digest": "<data-digest>",
                  "dataset_uri": config.dataset_uri, "training_job": train.name},
        environment=images["serve"].framework.serving_environment()
        if images["serve"].framework else None)
    calls.append(PlannedCall("sagemaker", "CreateModelPackage", package,
                             "Approved if the gate passes (Rejected otherwise)"))
    package_arn = (f"arn:aws:sagemaker:{runtime.region}:{_account(config)}:model-package/"
                   f"{config.model_package_group}/1")
    endpoints = [config.endpoint.for_staging()] if config.endpoint.staging_name else []
    for settings in [*endpoints, config.endpoint]:
        name = settings.name
        tag_list = [{"Key": k, "Value": v[:256]} for k, v in tags.items()]
        serve = images["serve"].framework
        model, endpoint_config = deploy_requests(
            endpoint=name, package_arn=package_arn, role_arn=config.jobs.role_arn,
            instance_type=config.endpoint.instance_type,
            instance_count=config.endpoint.instance_count, tags=tag_list,
            serverless=settings.serverless, environment=serverless_environment(
                serve.serving_environment() if serve else None))
        calls += [
            PlannedCall("sagemaker", "CreateModel", model, "if the gate passes"),
            PlannedCall("sagemaker", "CreateEndpointConfig", endpoint_config,
                        "if the gate passes"),
            PlannedCall("sagemaker", "CreateEndpoint", {
                "EndpointName": name,
                "EndpointConfigName": endpoint_config["EndpointConfigName"],
                "Tags": tag_list}, "first deploy"),
        ]
        calls += _update_and_scaling(settings, endpoint_config)
    if config.endpoint.staging_name and not config.endpoint.staging_keep:
        staging_config = next(c.params["EndpointConfigName"] for c in calls
                              if c.operation == "CreateEndpointConfig")
        when = "once production serves the model (endpoint.staging_keep: false)"
        calls += [
            PlannedCall("sagemaker", "DeleteEndpoint",
                        {"EndpointName": config.endpoint.staging_name}, when),
            PlannedCall("sagemaker", "DeleteEndpointConfig",
                        {"EndpointConfigName": staging_config}, when)]
    if config.notifications.topic_arn:
        calls.append(PlannedCall("sns", "Publish", {
            "TopicArn": config.notifications.topic_arn,
            "Subject": f"[sagepipe] {config.project}: <outcome>", "Message": "<run summary>"}))
    for call in calls:
        try:
            validate_request(call.service, call.operation, call.params)
        except (ParamValidationError, ClientError) as exc:
            call.problems.append(str(exc))
    return calls
