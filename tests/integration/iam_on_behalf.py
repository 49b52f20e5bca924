"""What a service does on the caller's behalf: the hand-stated part of the proof.

No database holds what SageMaker does with the execution role it is passed, what
CodeBuild and CodePipeline do with their service roles, what Lambda does with a
function's role, or what Application Auto Scaling checks with the caller's. Each need
here names the action AWS's page states and cites that page (the constants in
iam_model.py); its resource is built from the Service Authorization Reference's ARN
format for the action (iam_model.authorize), and its action is checked to exist there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aws_helpers import Request
from iam_model import (
    CODEBUILD_ROLE_DOC,
    ECR_LOGIN_DOC,
    ECR_PUSH_DOC,
    GUARDRAILS_DOC,
    HAND,
    LAMBDA_DLQ_DOC,
    LAMBDA_LOG_DOC,
    PIPELINE_ACTION_DOC,
    PIPELINE_ROLE_DOC,
    S3_KMS_DOC,
    SAGEMAKER_ROLES_DOC,
    SCALING_DOC,
    SCALING_SLR_DOC,
    Env,
    Need,
    authorize,
    request_needs,
)

__all__ = ["autoscaling_checks_needs", "buildspec_commands", "execution_role_needs",
           "image_build_needs", "lambda_dead_letter_needs", "lambda_log_needs",
           "pipeline_role_needs", "pipeline_tests_needs"]


def _uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


_SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"


def autoscaling_checks_needs(requests: list[Request], env: Env) -> list[Need]:
    """What Application Auto Scaling checks with the caller's permissions for the recorded
    requests (hand, :data:`SCALING_DOC`): "Application Auto Scaling validates permissions
    for requests associated with both the target service and CloudWatch before
    proceeding"; for SageMaker endpoints those are sagemaker:DescribeEndpoint,
    DescribeEndpointConfig and UpdateEndpointWeightsAndCapacities and
    cloudwatch:DescribeAlarms, PutMetricAlarm and DeleteAlarms. The first registration in
    an account creates the service-linked role with iam:CreateServiceLinkedRole, for which
    :data:`SCALING_SLR_DOC` gives the role's ARN and the iam:AWSServiceName condition."""
    needs: list[Need] = []
    configs: dict[str, str] = {}  # endpoint -> the config it serves (or is moving to)

    def hand(action: str, because: str, doc: str = SCALING_DOC, **kwargs: Any) -> list[Need]:
        return authorize(action, {}, env, because, source=HAND, doc=doc, **kwargs)

    for r in requests:
        p = r.params
        if r.service == "sagemaker" and r.operation in ("CreateEndpoint", "UpdateEndpoint"):
            configs[p["EndpointName"]] = p["EndpointConfigName"]
        if r.service != "application-autoscaling" or "ResourceId" not in p:
            continue
        endpoint = p["ResourceId"].split("/")[1].lower()
        because = f"Application Auto Scaling checks {r.operation} ({p['ResourceId']})"
        alarms = [f"TargetTracking-{p['ResourceId']}-Alarm{side}-"
                  "01234567-89ab-cdef-0123-456789abcdef" for side in ("High", "Low")]
        if r.operation == "RegisterScalableTarget":
            needs += [
                *hand("sagemaker:DescribeEndpoint", because, values={"EndpointName": endpoint}),
                *hand("sagemaker:DescribeEndpointConfig", because,
                      values={"EndpointConfigName": configs[p["ResourceId"].split("/")[1]]
                              .lower()}),
                *hand("sagemaker:UpdateEndpointWeightsAndCapacities", because,
                      values={"EndpointName": endpoint}),
                *hand("iam:CreateServiceLinkedRole",
                      because + " (the first time in the account)", doc=SCALING_SLR_DOC,
                      values={"RoleNameWithPath": f"aws-service-role/{_SCALING_SERVICE}/"
                              "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"},
                      context=(("iam:AWSServiceName", _SCALING_SERVICE),))]
        elif r.operation == "PutScalingPolicy":
            needs += [n for alarm in alarms
                      for action in ("cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm")
                      for n in hand(action, because + " (target-tracking alarms)",
                                    values={"AlarmName": alarm})]
        elif r.operation in ("DeleteScalingPolicy", "DeregisterScalableTarget"):
            needs += [n for alarm in alarms
                      for n in hand("cloudwatch:DeleteAlarms", because + " (its alarms go)",
                                    values={"AlarmName": alarm})]
    return needs


# ---------------------------------------------------------------- SageMaker's side
# What SageMaker does with the execution role (hand, SAGEMAKER_ROLES_DOC: "CreateTrainingJob
# / CreateProcessingJob / CreateModel API: Execution Role Permissions"), resources from
# the reference's ARN formats.


def _hand(action: str, env: Env, because: str, doc: str = SAGEMAKER_ROLES_DOC,
          **kwargs: Any) -> list[Need]:
    return authorize(action, {}, env, because, source=HAND, doc=doc, **kwargs)


def _reads(uri: str, data_type: str, env: Env, because: str) -> list[Need]:
    bucket, key = _uri(uri)
    values = {"BucketName": bucket, "ObjectName": key}
    needs = [*_hand("s3:GetObject", env, because, kind="object", values=values),
             *_hand("kms:Decrypt", env, because + " (SSE-KMS)", doc=S3_KMS_DOC,
                    resource=env.key_of(bucket, key), context=env.via("s3"))]
    if data_type == "S3Prefix":  # SageMaker lists the prefix to find the objects
        needs += _hand("s3:ListBucket", env, because, kind="bucket", values=values,
                       context=(("s3:prefix", key),))
    return needs


def _writes(uri: str, env: Env, because: str, key_id: str | None) -> list[Need]:
    """Outputs under ``uri``; with ``key_id`` (the request's output KmsKeyId) SageMaker
    encrypts them with that key: kms:Encrypt (SAGEMAKER_ROLES_DOC, "If you specify a KMS
    key in the output configuration") and, as any SSE-KMS write, kms:GenerateDataKey."""
    bucket, key = _uri(uri)
    key_arn = env.key(key_id) if key_id else env.key_of(bucket, key)
    needs = [*_hand("s3:PutObject", env, because, kind="object",
                    values={"BucketName": bucket, "ObjectName": key.rstrip("/") + "/"}),
             *_hand("kms:GenerateDataKey", env, because + " (SSE-KMS)", doc=S3_KMS_DOC,
                    resource=key_arn, context=env.via("s3"))]
    if key_id:
        needs += _hand("kms:Encrypt", env, because + " (output KmsKeyId)", resource=key_arn)
    return needs


_VPC_ACTIONS = ("ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups")


def _options(p: dict[str, Any], volume_key: str | None, env: Env,
             because: str) -> list[Need]:
    """VPC and volume encryption (SAGEMAKER_ROLES_DOC: "If you specify a private VPC ...
    add the following permissions. Don't scope in the policy with any conditions or
    resource filters. Otherwise, the validation checks that occur during the creation of
    the processing job fail"; "If you specify a volume KMS key ...: kms:CreateGrant")."""
    needs: list[Need] = []
    if p.get("VpcConfig") or (p.get("NetworkConfig") or {}).get("VpcConfig"):
        needs += [Need(action, "*", because + " (VPC)", source=HAND, doc=SAGEMAKER_ROLES_DOC)
                  for action in _VPC_ACTIONS]
    if volume_key:
        needs += _hand("kms:CreateGrant", env, because + " (volume KmsKeyId)",
                       resource=env.key(volume_key))
    return needs


def _runs(image: str, group: str, stream: str, namespace: str, env: Env,
          because: str) -> list[Need]:
    """Pull the image; write the log stream and metrics SageMaker keeps for it."""
    registry, _, path = image.partition("/")
    name = path.split("@")[0].split(":")[0]
    account, region = registry.split(".")[0], registry.split(".")[3]
    # the image's own registry: ours, or AWS's account for a framework image
    repository = Env(region, account, env.key_arn)
    log_group = {"LogGroupName": group}
    return [*_hand("ecr:GetAuthorizationToken", env, because + " (pull)"),
            *(n for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                               "ecr:BatchCheckLayerAvailability")
              for n in _hand(action, repository, because + " (pull)",
                             values={"RepositoryName": name})),
            *(replace(n, resource=n.resource + ":*") for action in (
                "logs:CreateLogGroup", "logs:DescribeLogStreams")
              for n in _hand(action, env, because + " (log)", values=log_group)),
            *(n for action in ("logs:CreateLogStream", "logs:PutLogEvents")
              for n in _hand(action, env, because + " (log)",
                             values={**log_group, "LogStreamName": stream})),
            *_hand("cloudwatch:PutMetricData", env, because + " (metrics)",
                   context=(("cloudwatch:namespace", namespace),))]


def execution_role_needs(requests: list[Request], env: Env,
                         package: Callable[[str], dict[str, Any]]) -> list[Need]:
    """What SageMaker does as the execution role for the recorded requests.

    ``package`` describes a model package (its image and model data), for endpoints
    whose model was created from one.
    """
    env = env.with_job_outputs(requests)
    needs: list[Need] = []
    configs = {r.params["EndpointConfigName"]: r.params for r in requests
               if r.operation == "CreateEndpointConfig"}
    models = {r.params["ModelName"]: r.params for r in requests if r.operation == "CreateModel"}
    for r in requests:
        p = r.params
        if r.operation == "CreateProcessingJob":
            job, because = p["ProcessingJobName"], f"SageMaker runs {p['ProcessingJobName']}"
            for item in p["ProcessingInputs"]:
                needs += _reads(item["S3Input"]["S3Uri"], item["S3Input"]["S3DataType"], env,
                                because + f" (input {item['InputName']})")
            output = p["ProcessingOutputConfig"]
            for item in output["Outputs"]:
                needs += _writes(item["S3Output"]["S3Uri"], env,
                                 because + f" (output {item['OutputName']})",
                                 output.get("KmsKeyId"))
            needs += _options(p, p["ProcessingResources"]["ClusterConfig"].get(
                "VolumeKmsKeyId"), env, because)
            needs += _runs(p["AppSpecification"]["ImageUri"], "/aws/sagemaker/ProcessingJobs",
                           f"{job}/algo-1-1", "/aws/sagemaker/ProcessingJobs", env, because)
        elif r.operation == "CreateTrainingJob":
            job, because = p["TrainingJobName"], f"SageMaker runs {p['TrainingJobName']}"
            for channel in p["InputDataConfig"]:
                source = channel["DataSource"]["S3DataSource"]
                needs += _reads(source["S3Uri"], source["S3DataType"], env,
                                because + f" (channel {channel['ChannelName']})")
            key_id = p["OutputDataConfig"].get("KmsKeyId")
            needs += _writes(f"{p['OutputDataConfig']['S3OutputPath']}/{job}/output", env,
                             because + " (model)", key_id)
            if p.get("CheckpointConfig"):
                uri = p["CheckpointConfig"]["S3Uri"]
                needs += _reads(uri, "S3Prefix", env, because + " (checkpoints)")
                needs += _writes(uri, env, because + " (checkpoints)", key_id)
            needs += _options(p, p["ResourceConfig"].get("VolumeKmsKeyId"), env, because)
            needs += _runs(p["AlgorithmSpecification"]["TrainingImage"],
                           "/aws/sagemaker/TrainingJobs", f"{job}/algo-1-1",
                           "/aws/sagemaker/TrainingJobs", env, because)
        elif r.operation in ("CreateEndpoint", "UpdateEndpoint"):
            endpoint = p["EndpointName"]
            # deployment guardrails: "Ensure that your IAM execution role has permission to
            # perform the cloudwatch:DescribeAlarms action on your auto-rollback alarms"
            rollback = (p.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}
            for alarm in rollback.get("Alarms", []):
                needs += _hand("cloudwatch:DescribeAlarms", env,
                               f"SageMaker watches {alarm['AlarmName']} while it deploys "
                               f"to {endpoint} (auto-rollback)", doc=GUARDRAILS_DOC,
                               values={"AlarmName": alarm["AlarmName"]})
            for variant in configs[p["EndpointConfigName"]]["ProductionVariants"]:
                model = models[variant["ModelName"]]
                container = package(model["PrimaryContainer"]["ModelPackageName"])
                because = (f"SageMaker hosts {variant['ModelName']} on {endpoint} "
                           f"({r.operation})")
                needs += _reads(container["ModelDataUrl"], "S3Object", env, because)
                code = (container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY")
                if code and code.startswith("s3://"):  # a framework image fetches the code
                    needs += _reads(code, "S3Object", env, because + " (code)")
                needs += _options(model, None, env, because)
                needs += _runs(container["Image"], f"/aws/sagemaker/Endpoints/{endpoint}",
                               f"{variant['VariantName']}/i-0123456789abcdef0",
                               "/aws/sagemaker/Endpoints", env, because)
    return needs


# ---------------------------------------------------------------- CodeBuild's side

_AWS_COMMAND = re.compile(r"\baws\s+([a-z0-9-]+)\s+([a-z0-9-]+)")
# CLI commands that are not an API operation of their name
_CLI_OPERATION = {("ecr", "get-login-password"): ("GetAuthorizationToken", ECR_LOGIN_DOC)}


def buildspec_commands(text: str) -> set[tuple[str, str]]:
    """The ``aws <service> <command>`` calls a buildspec makes."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return set(_AWS_COMMAND.findall("\n".join(lines)))


def _build_log_needs(env: Env, group: str, because: str) -> list[Need]:
    """CodeBuild writes the build's log into the project's log group, as the service role
    (:data:`CODEBUILD_ROLE_DOC`); the stream is named after the build id's UUID."""
    values = {"LogGroupName": group, "LogStreamName": "0123abcd-4567-89ab-cdef-0123456789ab"}
    return [n for action in ("logs:CreateLogStream", "logs:PutLogEvents")
            for n in _hand(action, env, because + " (build log)", doc=CODEBUILD_ROLE_DOC,
                           values=values)]


def _source_needs(env: Env, bucket: str, key: str, because: str) -> list[Need]:
    """CodeBuild downloads an S3 source: s3:GetObject, s3:GetObjectVersion,
    s3:GetBucketAcl, s3:GetBucketLocation (:data:`CODEBUILD_ROLE_DOC`), and decrypts it
    (SSE-KMS, :data:`S3_KMS_DOC`)."""
    values = {"BucketName": bucket, "ObjectName": key}
    return [*(n for action in ("s3:GetObject", "s3:GetObjectVersion")
              for n in _hand(action, env, because, doc=CODEBUILD_ROLE_DOC, kind="object",
                             values=values)),
            *(n for action in ("s3:GetBucketAcl", "s3:GetBucketLocation")
              for n in _hand(action, env, because, doc=CODEBUILD_ROLE_DOC, kind="bucket",
                             values=values)),
            *_hand("kms:Decrypt", env, because + " (SSE-KMS)", doc=S3_KMS_DOC,
                   resource=env.key_of(bucket, key), context=env.via("s3"))]


def image_build_needs(requests: list[Request], env: Env, buildspec: str,
                      log_group: str) -> list[Need]:
    """What an image build does as the image build project's role, for each recorded
    StartBuild: CodeBuild's own work (source, log) and the buildspec's: its ``aws``
    commands (API operations: derived) and ``docker push`` to the requested repositories
    (:data:`ECR_PUSH_DOC`)."""
    commands = buildspec_commands(buildspec)
    assert commands == {("sts", "get-caller-identity"), ("ecr", "get-login-password"),
                        ("ecr", "describe-images")}, \
        f"the buildspec's aws commands changed ({sorted(commands)}): map them here"
    needs: list[Need] = []
    for r in requests:
        if r.operation != "StartBuild":
            continue
        p, because = r.params, f"CodeBuild runs {r.params['projectName']}"
        bucket, _, key = p["sourceLocationOverride"].partition("/")
        needs += _source_needs(env, bucket, key, because + " (source)")
        needs += _build_log_needs(env, log_group, because)
        images = next(v["value"] for v in p["environmentVariablesOverride"]
                      if v["name"] == "IMAGES")
        repositories = {pair.split("=", 1)[1].rsplit(":", 1)[0] for pair in images.split()}
        for service, command in sorted(commands):
            if (service, command) == ("sts", "get-caller-identity"):
                # only when AWS_ACCOUNT_ID is unset (the project sets it), and
                # "No permissions are required to perform this operation" (STS_DOC)
                continue
            operation, doc = _CLI_OPERATION.get((service, command), (
                "".join(w.capitalize() for w in command.split("-")), ""))
            for repository in sorted(repositories):
                needs += request_needs(
                    Request(service, operation, {"repositoryName": repository}), env,
                    because=f"buildspec: aws {service} {command}",
                    **({"source": HAND, "doc": doc} if doc else {}))
        for repository in sorted(repositories):
            needs += [n for action in ("ecr:BatchCheckLayerAvailability",
                                       "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                                       "ecr:CompleteLayerUpload", "ecr:PutImage")
                      for n in _hand(action, env, "buildspec: docker push", doc=ECR_PUSH_DOC,
                                     values={"RepositoryName": repository})]
    return needs


def pipeline_tests_needs(env: Env, *, bucket: str, pipeline_name: str, buildspec: str,
                      log_group: str, project: str) -> list[Need]:
    """What the tests build does as its role: CodeBuild reads the Build action's input
    artifact from the pipeline's artifact store (under the first 20 characters of the
    pipeline's name, :data:`PIPELINE_ROLE_DOC`) and writes its log; the buildspec calls
    no AWS API."""
    assert not buildspec_commands(buildspec), "the tests buildspec calls AWS: map it here"
    because = f"CodeBuild runs {project} (the pipeline's Build stage)"
    key = f"{pipeline_name[:20]}/SourceCode/0123abc.zip"
    source = [n for n in _source_needs(env, bucket, key, because + " (input artifact)")
              if not n.action.startswith("s3:GetBucket")]  # CODEPIPELINE source: no ACL check
    return source + _build_log_needs(env, log_group, because)


# ---------------------------------------------------------------- CodePipeline's side


def pipeline_role_needs(pipeline: dict[str, Any], env: Env, *, bucket: str,
                        resolve: Callable[[Any], str]) -> list[Need]:
    """What CodePipeline does as its service role for the pipeline's actions (the action
    references, :data:`PIPELINE_ACTION_DOC`): a source action writes its output artifact,
    a Lambda action's function reads its input artifacts with the artifact credentials
    CodePipeline passes it (the service role's), each provider is called with the
    service role. Artifacts are objects under the pipeline name's first 20
    characters, encrypted with the artifact store's key (:data:`PIPELINE_ROLE_DOC`).
    ``resolve`` turns a template value (``!Ref``) into the deployed one."""
    needs: list[Need] = []
    name = resolve(pipeline["Name"])
    key = resolve(pipeline["ArtifactStore"]["EncryptionKey"]["Id"])
    for stage in pipeline["Stages"]:
        for action in stage["Actions"]:
            provider = action["ActionTypeId"]["Provider"]
            doc = PIPELINE_ACTION_DOC[provider]
            because = f"CodePipeline runs {stage['Name']}/{action['Name']} ({provider})"
            for artifact in action.get("OutputArtifacts", []):
                values = {"BucketName": bucket,
                          "ObjectName": f"{name[:20]}/{artifact['Name']}/0123abc.zip"}
                needs += _hand("s3:PutObject", env, because + " (output artifact)",
                               doc=PIPELINE_ROLE_DOC, kind="object", values=values)
                needs += _hand("kms:GenerateDataKey", env, because + " (artifact SSE-KMS)",
                               doc=PIPELINE_ROLE_DOC, resource=key, context=env.via("s3"))
            # a job worker (the Lambda) reads its input artifacts with the artifact
            # credentials CodePipeline hands it, which are the pipeline role's; CodeBuild
            # reads them with its own role (pipeline_tests_needs)
            for artifact in action.get("InputArtifacts", []) if provider == "Lambda" else []:
                values = {"BucketName": bucket,
                          "ObjectName": f"{name[:20]}/{artifact['Name']}/0123abc.zip"}
                needs += [n for a in ("s3:GetObject", "s3:GetObjectVersion")
                          for n in _hand(a, env, because + " (input artifact)",
                                         doc=PIPELINE_ROLE_DOC, kind="object",
                                         values=values)]
                needs += _hand("kms:Decrypt", env, because + " (artifact SSE-KMS)",
                               doc=PIPELINE_ROLE_DOC, resource=key, context=env.via("s3"))
            config = action["Configuration"]
            if provider == "CodeStarSourceConnection":
                connection = resolve(config["ConnectionArn"])
                # hand: the action's prefix is the connection's service (CodeStar
                # Connections was renamed CodeConnections; each ARN keeps its prefix)
                prefix = connection.split(":")[2]
                needs += _hand(f"{prefix}:UseConnection", env, because, doc=doc,
                               resource=connection)
            elif provider == "CodeBuild":
                project = resolve(config["ProjectName"])
                needs += [n for a in ("codebuild:StartBuild", "codebuild:BatchGetBuilds")
                          for n in _hand(a, env, because, doc=doc,
                                         values={"ProjectName": project})]
            elif provider == "Lambda":
                needs += _hand("lambda:InvokeFunction", env, because, doc=doc,
                               values={"FunctionName": resolve(config["FunctionName"])})
            else:
                raise AssertionError(f"no IAM mapping for a {provider} pipeline action")
    return needs


def lambda_dead_letter_needs(queue_arn: str, env: Env) -> list[Need]:
    """Lambda sends the event of an invocation that failed after its retries to the
    function's dead-letter queue, with the function's role (:data:`LAMBDA_DLQ_DOC`)."""
    return _hand("sqs:SendMessage", env, "Lambda sends a failed event to the DLQ",
                 doc=LAMBDA_DLQ_DOC, resource=queue_arn)


def lambda_log_needs(env: Env, function: str) -> list[Need]:
    """The Lambda runtime writes the function's log to /aws/lambda/<function>
    (:data:`LAMBDA_LOG_DOC`)."""
    values = {"LogGroupName": f"/aws/lambda/{function}",
              "LogStreamName": "2030/01/01/[$LATEST]0123456789abcdef"}
    return [n for action in ("logs:CreateLogStream", "logs:PutLogEvents")
            for n in _hand(action, env, "Lambda writes the function's log", doc=LAMBDA_LOG_DOC,
                           values=values)]


