"""From recorded requests to the IAM permissions they need, and a check of a policy.

A :class:`Need` is one (action, resource, request context) that IAM must allow for a
request to succeed. Two sources:

* **recorded**: each request the flow (or the trigger) sent maps to the actions IAM
  checks for it (``flow_needs``). Some operations need more than their namesake:
  CopyObject reads the source version and writes the target, a create with ``Tags``
  also needs ``sagemaker:AddTags``, a job or model request passes the execution role
  (``iam:PassRole``), and the bucket and topic are encrypted with the stack's KMS key,
  so S3 reads need ``kms:Decrypt`` and writes ``kms:GenerateDataKey`` (through S3),
  and publishing to the topic both (through SNS).
* **deduced**: what SageMaker itself does as the execution role for a recorded request
  (``execution_role_needs``): read the job's inputs and the endpoint's model, write
  the outputs, pull the images, write the logs and metrics. The requests say exactly
  which objects, repositories and log groups.

:func:`compare` then proves both directions against a role's statements: every need
is allowed (nothing would fail with AccessDenied in production) and every action and
every resource pattern of every statement is used by some need (nothing granted that
the code never uses). The matching follows IAM: case-insensitive actions, ``*`` and
``?`` wildcards in ARNs, and a condition key that the request does not carry fails
the condition.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aws_helpers import Request

__all__ = ["Env", "Need", "Verdict", "autoscaling_checks_needs", "compare",
           "execution_role_needs", "flow_needs",
           "format_table", "lambda_dead_letter_needs", "lambda_log_needs", "relay_needs",
           "trigger_needs"]


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    because: str  # "s3 PutObject" (recorded) or "SageMaker: ..." (deduced)
    context: tuple[tuple[str, str], ...] = ()
    deduced: bool = False


@dataclass(frozen=True)
class Env:
    region: str
    account: str
    key_arn: str  # the stack's KMS key: bucket and topic encryption

    def arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.region}:{self.account}:{resource}"

    def via(self, service: str) -> tuple[tuple[str, str], ...]:
        return (("kms:ViaService", f"{service}.{self.region}.amazonaws.com"),)


def _s3(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def _uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# SageMaker operations named after one resource: (ARN resource type, the name parameter).
# SageMaker puts names into ARNs in lower case.
_SAGEMAKER_NAMED = {
    "CreateProcessingJob": ("processing-job", "ProcessingJobName"),
    "DescribeProcessingJob": ("processing-job", "ProcessingJobName"),
    "StopProcessingJob": ("processing-job", "ProcessingJobName"),
    "CreateTrainingJob": ("training-job", "TrainingJobName"),
    "DescribeTrainingJob": ("training-job", "TrainingJobName"),
    "StopTrainingJob": ("training-job", "TrainingJobName"),
    "DescribeModelPackageGroup": ("model-package-group", "ModelPackageGroupName"),
    "CreateModelPackageGroup": ("model-package-group", "ModelPackageGroupName"),
    "CreateModel": ("model", "ModelName"),
    "DescribeModel": ("model", "ModelName"),
    "CreateEndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "DescribeEndpointConfig": ("endpoint-config", "EndpointConfigName"),
    "CreateEndpoint": ("endpoint", "EndpointName"),
    "DescribeEndpoint": ("endpoint", "EndpointName"),
    "UpdateEndpoint": ("endpoint", "EndpointName"),
    "DeleteEndpoint": ("endpoint", "EndpointName"),
    "DeleteEndpointConfig": ("endpoint-config", "EndpointConfigName"),
}
_ROLE_PARAM = {"CreateProcessingJob": "RoleArn", "CreateTrainingJob": "RoleArn",
               "CreateModel": "ExecutionRoleArn"}
_PASSED_TO_SAGEMAKER = (("iam:PassedToService", "sagemaker.amazonaws.com"),)


def _s3_needs(op: str, p: dict[str, Any], env: Env, because: str) -> list[Need]:
    via = env.via("s3")
    if op == "GetBucketVersioning":
        return [Need("s3:GetBucketVersioning", _s3(p["Bucket"]), because)]
    if op == "ListObjectsV2":
        return [Need("s3:ListBucket", _s3(p["Bucket"]), because,
                     (("s3:prefix", p.get("Prefix", "")),))]
    if op == "ListObjectVersions":
        return [Need("s3:ListBucketVersions", _s3(p["Bucket"]), because,
                     (("s3:prefix", p.get("Prefix", "")),))]
    read = "s3:GetObjectVersion" if p.get("VersionId") else "s3:GetObject"
    if op == "HeadObject":
        # a HEAD of a missing key answers 404 (which the code relies on) only to a
        # caller that may also list the bucket; AWS answers 403 otherwise
        return [Need(read, _s3(p["Bucket"], p["Key"]), because),
                Need("s3:ListBucket", _s3(p["Bucket"]), because + " (404 for a missing key)")]
    if op == "GetObject":
        return [Need(read, _s3(p["Bucket"], p["Key"]), because),
                Need("kms:Decrypt", env.key_arn, because + " (SSE-KMS)", via)]
    if op == "PutObject":
        return [Need("s3:PutObject", _s3(p["Bucket"], p["Key"]), because),
                Need("kms:GenerateDataKey", env.key_arn, because + " (SSE-KMS)", via)]
    if op == "CopyObject":
        source = p["CopySource"]
        assert isinstance(source, dict), "the code passes CopySource as a dict"
        source_read = "s3:GetObjectVersion" if source.get("VersionId") else "s3:GetObject"
        return [Need("s3:PutObject", _s3(p["Bucket"], p["Key"]), because),
                Need(source_read, _s3(source["Bucket"], source["Key"]), because + " (source)"),
                Need("kms:Decrypt", env.key_arn, because + " (SSE-KMS source)", via),
                Need("kms:GenerateDataKey", env.key_arn, because + " (SSE-KMS target)", via)]
    raise AssertionError(f"no IAM mapping for s3 {op}: add it to iam_model.py")


def _sagemaker_needs(op: str, p: dict[str, Any], env: Env, because: str) -> list[Need]:
    if op in _SAGEMAKER_NAMED:
        kind, param = _SAGEMAKER_NAMED[op]
        resource = env.arn("sagemaker", f"{kind}/{p[param].lower()}")
    elif op == "CreateModelPackage":
        resource = env.arn("sagemaker",
                           f"model-package/{p['ModelPackageGroupName'].lower()}/*")
    elif op in ("DescribeModelPackage", "UpdateModelPackage"):
        resource = p.get("ModelPackageName") or p["ModelPackageArn"]
    elif op == "ListTags":
        resource = p["ResourceArn"]
    elif op in ("ListTrainingJobs", "ListProcessingJobs", "ListModelPackages"):
        resource = "*"  # list actions have no resource-level permissions
    else:
        raise AssertionError(f"no IAM mapping for sagemaker {op}: add it to iam_model.py")
    needs = [Need(f"sagemaker:{op}", resource, because)]
    if p.get("Tags"):
        needs.append(Need("sagemaker:AddTags", resource, because + " (Tags on create)"))
    if op in _ROLE_PARAM:
        needs.append(Need("iam:PassRole", p[_ROLE_PARAM[op]], because, _PASSED_TO_SAGEMAKER))
    return needs


def flow_needs(request: Request, env: Env) -> list[Need]:
    """What IAM checks for one request the flow sent."""
    op, p = request.operation, request.params
    because = f"{request.service} {op}"
    if request.service == "s3":
        return _s3_needs(op, p, env, because)
    if request.service == "sagemaker":
        return _sagemaker_needs(op, p, env, because)
    if request.service == "sagemaker-runtime" and op == "InvokeEndpoint":
        return [Need("sagemaker:InvokeEndpoint",
                     env.arn("sagemaker", f"endpoint/{p['EndpointName'].lower()}"), because)]
    if request.service == "ecr" and op == "DescribeImages":
        return [Need("ecr:DescribeImages",
                     env.arn("ecr", f"repository/{p['repositoryName']}"), because)]
    if request.service == "ecr" and op == "DescribeRepositories":
        return [Need("ecr:DescribeRepositories", env.arn("ecr", f"repository/{name}"), because)
                for name in p["repositoryNames"]]
    if request.service == "codebuild" and op == "StartBuild":
        return [Need("codebuild:StartBuild", env.arn("codebuild", f"project/{p['projectName']}"),
                     because)]
    if request.service == "codebuild" and op in ("BatchGetBuilds", "StopBuild"):
        ids = p["ids"] if op == "BatchGetBuilds" else [p["id"]]
        return [Need(f"codebuild:{op}",
                     env.arn("codebuild", f"project/{build.split(':', 1)[0]}"), because)
                for build in ids]
    if request.service == "logs" and op == "DescribeLogStreams":
        # CloudWatch Logs evaluates this against "<log group ARN>:*"
        return [Need("logs:DescribeLogStreams",
                     env.arn("logs", f"log-group:{p['logGroupName']}:*"), because)]
    if request.service == "logs" and op == "GetLogEvents":
        return [Need("logs:GetLogEvents", env.arn(
            "logs", f"log-group:{p['logGroupName']}:log-stream:{p['logStreamName']}"), because)]
    if request.service == "application-autoscaling":
        return _autoscaling_needs(op, p, env, because)
    if request.service == "sns" and op == "Publish":
        via = env.via("sns")
        return [Need("sns:Publish", p["TopicArn"], because),
                Need("kms:GenerateDataKey", env.key_arn, because + " (encrypted topic)", via),
                Need("kms:Decrypt", env.key_arn, because + " (encrypted topic)", via)]
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


# The id Application Auto Scaling gives a scalable target (its ARN ends in it): unknown
# before the target exists, so a policy can name only scalable-target/*
_SCALABLE_TARGET = "scalable-target/0123456789abcdef0123456789abcdef0123"
_SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"


def _autoscaling_needs(op: str, p: dict[str, Any], env: Env, because: str) -> list[Need]:
    if op in ("DescribeScalableTargets", "DescribeScalingPolicies"):
        # the Service Authorization Reference lists no resource type for Describe actions
        return [Need(f"application-autoscaling:{op}", "*", because)]
    if op in ("RegisterScalableTarget", "PutScalingPolicy", "DeleteScalingPolicy",
              "DeregisterScalableTarget"):
        # authorized on the scalable target, with the service's condition keys
        # application-autoscaling:service-namespace and :scalable-dimension
        return [Need(f"application-autoscaling:{op}", env.arn("application-autoscaling",
                                                                _SCALABLE_TARGET), because,
                     (("application-autoscaling:service-namespace", p["ServiceNamespace"]),
                      ("application-autoscaling:scalable-dimension", p["ScalableDimension"])))]
    raise AssertionError(f"no IAM mapping for application-autoscaling {op}: add it")


def autoscaling_checks_needs(requests: list[Request], env: Env) -> list[Need]:
    """What Application Auto Scaling does with the caller's permissions for the recorded
    requests (deduced): "Application Auto Scaling validates permissions for requests
    associated with both the target service and CloudWatch before proceeding" (Application
    Auto Scaling user guide, Permissions validation); for SageMaker endpoints those are
    sagemaker:DescribeEndpoint, DescribeEndpointConfig and UpdateEndpointWeightsAndCapacities
    and cloudwatch:DescribeAlarms, PutMetricAlarm and DeleteAlarms (identity-based policy
    examples, "Permissions required for API actions on target services and CloudWatch").
    The first registration in an account creates the service-linked role with
    iam:CreateServiceLinkedRole, for which the SageMaker developer guide (Auto scaling
    prerequisites) gives the role's ARN and the iam:AWSServiceName condition."""
    needs: list[Need] = []
    configs: dict[str, str] = {}  # endpoint -> the config it serves (or is moving to)
    for r in requests:
        p = r.params
        if r.service == "sagemaker" and r.operation in ("CreateEndpoint", "UpdateEndpoint"):
            configs[p["EndpointName"]] = p["EndpointConfigName"]
        if r.service != "application-autoscaling" or "ResourceId" not in p:
            continue
        endpoint = p["ResourceId"].split("/")[1]
        because = f"Application Auto Scaling checks {r.operation} ({p['ResourceId']})"
        alarms = [env.arn("cloudwatch", f"alarm:TargetTracking-{p['ResourceId']}-Alarm{side}-"
                                        "01234567-89ab-cdef-0123-456789abcdef")
                  for side in ("High", "Low")]
        if r.operation == "RegisterScalableTarget":
            endpoint_arn = env.arn("sagemaker", f"endpoint/{endpoint.lower()}")
            needs += [
                Need("sagemaker:DescribeEndpoint", endpoint_arn, because, deduced=True),
                Need("sagemaker:DescribeEndpointConfig", env.arn(
                    "sagemaker", f"endpoint-config/{configs[endpoint].lower()}"), because,
                    deduced=True),
                Need("sagemaker:UpdateEndpointWeightsAndCapacities", endpoint_arn, because,
                     deduced=True),
                Need("iam:CreateServiceLinkedRole",
                     f"arn:aws:iam::{env.account}:role/aws-service-role/{_SCALING_SERVICE}/"
                     "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
                     because + " (the first time in the account)",
                     (("iam:AWSServiceName", _SCALING_SERVICE),), deduced=True)]
        elif r.operation == "PutScalingPolicy":
            needs += [Need(action, alarm, because + " (target-tracking alarms)", deduced=True)
                      for alarm in alarms
                      for action in ("cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm")]
        elif r.operation in ("DeleteScalingPolicy", "DeregisterScalableTarget"):
            needs += [Need("cloudwatch:DeleteAlarms", alarm, because + " (its alarms go)",
                           deduced=True) for alarm in alarms]
    return needs


# ---------------------------------------------------------------- SageMaker's side


def _reads(uri: str, data_type: str, env: Env, because: str) -> list[Need]:
    bucket, key = _uri(uri)
    needs = [Need("s3:GetObject", _s3(bucket, key), because, deduced=True),
             Need("kms:Decrypt", env.key_arn, because + " (SSE-KMS)", env.via("s3"),
                  deduced=True)]
    if data_type == "S3Prefix":  # SageMaker lists the prefix to find the objects
        needs.append(Need("s3:ListBucket", _s3(bucket), because, (("s3:prefix", key),),
                          deduced=True))
    return needs


def _writes(uri: str, env: Env, because: str) -> list[Need]:
    bucket, key = _uri(uri)
    return [Need("s3:PutObject", _s3(bucket, key.rstrip("/") + "/"), because, deduced=True),
            Need("kms:GenerateDataKey", env.key_arn, because + " (SSE-KMS)", env.via("s3"),
                 deduced=True)]


def _runs(image: str, group: str, stream: str, namespace: str, env: Env,
          because: str) -> list[Need]:
    """Pull the image; write the log stream and metrics SageMaker keeps for it."""
    registry, _, path = image.partition("/")
    name = path.split("@")[0].split(":")[0]
    account, region = registry.split(".")[0], registry.split(".")[3]
    # the image's own registry: ours, or AWS's account for a framework image
    repository = f"arn:aws:ecr:{region}:{account}:repository/{name}"
    group_arn = env.arn("logs", f"log-group:{group}")
    return [Need("ecr:GetAuthorizationToken", "*", because + " (pull)", deduced=True),
            *(Need(action, repository, because + " (pull)", deduced=True)
              for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                             "ecr:BatchCheckLayerAvailability")),
            Need("logs:CreateLogGroup", f"{group_arn}:*", because + " (log)", deduced=True),
            Need("logs:DescribeLogStreams", f"{group_arn}:*", because + " (log)",
                 deduced=True),
            Need("logs:CreateLogStream", f"{group_arn}:log-stream:{stream}", because + " (log)",
                 deduced=True),
            Need("logs:PutLogEvents", f"{group_arn}:log-stream:{stream}", because + " (log)",
                 deduced=True),
            Need("cloudwatch:PutMetricData", "*", because + " (metrics)",
                 (("cloudwatch:namespace", namespace),), deduced=True)]


def execution_role_needs(requests: list[Request], env: Env,
                         package: Callable[[str], dict[str, Any]]) -> list[Need]:
    """What SageMaker does as the execution role for the recorded requests.

    ``package`` describes a model package (its image and model data), for endpoints
    whose model was created from one.
    """
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
            for item in p["ProcessingOutputConfig"]["Outputs"]:
                needs += _writes(item["S3Output"]["S3Uri"], env,
                                 because + f" (output {item['OutputName']})")
            needs += _runs(p["AppSpecification"]["ImageUri"], "/aws/sagemaker/ProcessingJobs",
                           f"{job}/algo-1-1", "/aws/sagemaker/ProcessingJobs", env, because)
        elif r.operation == "CreateTrainingJob":
            job, because = p["TrainingJobName"], f"SageMaker runs {p['TrainingJobName']}"
            for channel in p["InputDataConfig"]:
                source = channel["DataSource"]["S3DataSource"]
                needs += _reads(source["S3Uri"], source["S3DataType"], env,
                                because + f" (channel {channel['ChannelName']})")
            needs += _writes(f"{p['OutputDataConfig']['S3OutputPath']}/{job}/output", env,
                             because + " (model)")
            if p.get("CheckpointConfig"):
                uri = p["CheckpointConfig"]["S3Uri"]
                needs += _reads(uri, "S3Prefix", env, because + " (checkpoints)")
                needs += _writes(uri, env, because + " (checkpoints)")
            needs += _runs(p["AlgorithmSpecification"]["TrainingImage"],
                           "/aws/sagemaker/TrainingJobs", f"{job}/algo-1-1",
                           "/aws/sagemaker/TrainingJobs", env, because)
        elif r.operation in ("CreateEndpoint", "UpdateEndpoint"):
            endpoint = p["EndpointName"]
            # deployment guardrails (SageMaker developer guide, "Auto-Rollback Configuration
            # and Monitoring"): the execution role must be allowed cloudwatch:DescribeAlarms
            # on the auto-rollback alarms
            rollback = (p.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}
            for alarm in rollback.get("Alarms", []):
                needs.append(Need("cloudwatch:DescribeAlarms",
                                  env.arn("cloudwatch", f"alarm:{alarm['AlarmName']}"),
                                  f"SageMaker watches {alarm['AlarmName']} while it deploys "
                                  f"to {endpoint} (auto-rollback)", deduced=True))
            for variant in configs[p["EndpointConfigName"]]["ProductionVariants"]:
                model = models[variant["ModelName"]]
                container = package(model["PrimaryContainer"]["ModelPackageName"])
                because = (f"SageMaker hosts {variant['ModelName']} on {endpoint} "
                           f"({r.operation})")
                needs += _reads(container["ModelDataUrl"], "S3Object", env, because)
                code = (container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY")
                if code and code.startswith("s3://"):  # a framework image fetches the code
                    needs += _reads(code, "S3Object", env, because + " (code)")
                needs += _runs(container["Image"], f"/aws/sagemaker/Endpoints/{endpoint}",
                               f"{variant['VariantName']}/i-0123456789abcdef0",
                               "/aws/sagemaker/Endpoints", env, because)
    return needs


# ---------------------------------------------------------------- the trigger Lambda


def trigger_needs(request: Request) -> list[Need]:
    op, p = request.operation, request.params
    because = f"{request.service} {op}"
    if request.service == "secretsmanager" and op == "GetSecretValue":
        return [Need("secretsmanager:GetSecretValue", p["SecretId"], because)]
    if request.service == "codepipeline" and op in ("PutJobSuccessResult",
                                                   "PutJobFailureResult"):
        return [Need(f"codepipeline:{op}", "*", because)]  # no resource-level permissions
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


# ---------------------------------------------------------------- the relay Lambda


def relay_needs(request: Request) -> list[Need]:
    op, p = request.operation, request.params
    because = f"{request.service} {op}"
    if request.service == "secretsmanager" and op == "GetSecretValue":
        return [Need("secretsmanager:GetSecretValue", p["SecretId"], because)]
    if request.service == "sagemaker" and op == "ListTags":
        # the Service Authorization Reference: ListTags is authorized on the tagged
        # resource's ARN (training-job, processing-job, endpoint, ...)
        return [Need("sagemaker:ListTags", p["ResourceArn"], because)]
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


def lambda_dead_letter_needs(queue_arn: str) -> list[Need]:
    """Lambda sends the event of an invocation that failed after its retries to the
    function's dead-letter queue, with the function's role (sqs:SendMessage)."""
    return [Need("sqs:SendMessage", queue_arn, "Lambda sends a failed event to the DLQ",
                 deduced=True)]


def lambda_log_needs(env: Env, function: str) -> list[Need]:
    """The Lambda runtime writes the function's log to /aws/lambda/<function>."""
    stream = env.arn("logs", f"log-group:/aws/lambda/{function}:log-stream:"
                             "2030/01/01/[$LATEST]0123456789abcdef")
    return [Need("logs:CreateLogStream", stream, "Lambda writes the function's log",
                 deduced=True),
            Need("logs:PutLogEvents", stream, "Lambda writes the function's log",
                 deduced=True)]


# ---------------------------------------------------------------- the check


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    pattern = pattern.replace("[", "[[]")
    return (fnmatch.fnmatchcase(value, pattern) if case
            else fnmatch.fnmatchcase(value.lower(), pattern.lower()))


def _conditions_hold(statement: dict[str, Any], need: Need) -> bool:
    context = dict(need.context)
    for operator, tests in statement.get("Condition", {}).items():
        for key, expected in tests.items():
            if key not in context:
                return False  # a key the request does not carry fails the condition
            actual, allowed = context[key], _listed(expected)
            if operator in ("StringEquals", "ArnEquals", "Bool"):
                ok = actual in allowed
            elif operator in ("StringLike", "ArnLike"):
                ok = any(_matches(a, actual) for a in allowed)
            else:
                raise AssertionError(f"condition operator {operator} is not modelled")
            if not ok:
                return False
    return True


def _allows(statement: dict[str, Any], need: Need) -> str | None:
    """The resource pattern through which ``statement`` allows ``need``, if it does."""
    assert statement["Effect"] == "Allow", "the roles use Allow statements only"
    assert "NotAction" not in statement and "NotResource" not in statement
    if not any(_matches(a, need.action, case=False) for a in _listed(statement["Action"])):
        return None
    if not _conditions_hold(statement, need):
        return None
    return next((r for r in _listed(statement["Resource"]) if _matches(r, need.resource)),
                None)


@dataclass
class Row:
    action: str
    sid: str
    resources: list[str]
    used_by: dict[str, int] = field(default_factory=dict)
    deduced: bool = False


@dataclass
class Verdict:
    missing: list[Need]  # needs no statement allows
    unused_actions: list[tuple[str, str]]  # (Sid, action) that no need uses
    unused_resources: list[tuple[str, str]]  # (Sid, resource pattern) that no need uses
    rows: list[Row]


def compare(statements: list[dict[str, Any]], needs: Iterable[Need]) -> Verdict:
    needs = list(needs)
    missing: list[Need] = []
    used_actions: dict[str, set[str]] = defaultdict(set)
    used_resources: dict[str, set[str]] = defaultdict(set)
    rows: dict[tuple[str, str], Row] = {}
    for statement in statements:
        for action in _listed(statement["Action"]):
            rows[(statement["Sid"], action.lower())] = Row(
                action, statement["Sid"], _listed(statement["Resource"]))
    for need in needs:
        allowed = False
        for statement in statements:
            pattern = _allows(statement, need)
            if pattern is None:
                continue
            allowed = True
            sid = statement["Sid"]
            action = next(a for a in _listed(statement["Action"])
                          if _matches(a, need.action, case=False))
            used_actions[sid].add(action.lower())
            used_resources[sid].add(pattern)
            row = rows[(sid, action.lower())]
            row.used_by[need.because] = row.used_by.get(need.because, 0) + 1
            row.deduced = row.deduced or need.deduced
        if not allowed:
            missing.append(need)
    unused_actions = [(s["Sid"], a) for s in statements for a in _listed(s["Action"])
                      if a.lower() not in used_actions[s["Sid"]]]
    unused_resources = [(s["Sid"], r) for s in statements for r in _listed(s["Resource"])
                        if r not in used_resources[s["Sid"]]]
    return Verdict(missing, unused_actions, unused_resources, list(rows.values()))


def _short(arn: str) -> str:
    """An ARN without partition, region and account, for the table."""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn":
        return f"{parts[2]}:{parts[5]}" if parts[2] != "s3" else parts[5]
    return arn


def _operation(because: str) -> str:
    """The request or service activity behind a need, without the object it names."""
    return because.split(" (")[0] if not because.startswith("SageMaker") else (
        "SageMaker " + ("runs a job" if "runs" in because else "hosts a model")
        + (f" ({because.rsplit('(', 1)[1]}" if "(" in because else ""))


def format_table(role: str, verdict: Verdict) -> str:
    """Operations vs grants, one line per granted action."""
    lines = [f"{role}", f"{'action':<34} {'statement':<26} {'source':<8} "
             f"{'granted on':<60} used by"]
    for row in verdict.rows:
        ops: dict[str, int] = defaultdict(int)
        for because, count in row.used_by.items():
            ops[_operation(because)] += count
        used = "; ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "UNUSED"
        resources = ", ".join(_short(r) for r in row.resources)
        lines.append(f"{row.action:<34} {row.sid:<26} "
                     f"{'deduced' if row.deduced else 'recorded':<8} {resources:<60} {used}")
    for need in verdict.missing:
        lines.append(f"MISSING {need.action} on {need.resource} for {need.because}")
    return "\n".join(lines)
