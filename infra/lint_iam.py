"""Lint every IAM role policy of infra/sagepipe.yaml with parliament (make infra-check).

parliament (duo-labs) checks a policy against AWS's IAM definitions: unknown actions,
resources of no type the action is authorized on, malformed or mismatched condition
keys and operators, and its community auditors (privilege escalation, credential
exposure, sensitive access). The template's intrinsic functions are resolved first,
with every parameter at its default or an example value and every option condition
on, so the statements that only exist with an option enabled are linted too.

    python infra/lint_iam.py [TEMPLATE]

Prints each finding; exits 1 on any finding not in :data:`SUPPRESSED` (each with its
reason), 0 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from cfnlint.decode import decode
from parliament import analyze_policy_string

__all__ = ["SUPPRESSED", "findings", "resolve_template"]

TEMPLATE = Path(__file__).resolve().parent / "sagepipe.yaml"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1",
          "AWS::AccountId": "123456789012", "AWS::StackName": "sagepipe"}
# Values for the parameters without a default; the options switched on
EXAMPLES = {
    "GitHubConnectionArn": "arn:aws:codeconnections:us-east-1:123456789012:connection/0f4c2b7e",
    "GitHubRepository": "example/sagepipe",
    "PrefectApiSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect-AbCdEf",
    "TriggerCodeBucket": "sagepipe-deploy", "TriggerCodeKey": "trigger/handler.zip",
    "RelayCodeBucket": "sagepipe-deploy", "RelayCodeKey": "relay/relay.zip",
    "JobsKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0f4c2b7e-3c1d-4e5f-8a9b-0c1d2e3f4a5b",
    "JobsInVpc": "true",
}
# GetAtt <resource>.Arn, by resource type (each service's ARN format)
_ARN = {
    "AWS::S3::Bucket": "arn:aws:s3:::{name}",
    "AWS::KMS::Key": "arn:aws:kms:us-east-1:123456789012:key/{name}",
    "AWS::ECR::Repository": "arn:aws:ecr:us-east-1:123456789012:repository/{name}",
    "AWS::IAM::Role": "arn:aws:iam::123456789012:role/{name}",
    "AWS::Lambda::Function": "arn:aws:lambda:us-east-1:123456789012:function:{name}",
    "AWS::SQS::Queue": "arn:aws:sqs:us-east-1:123456789012:{name}",
    "AWS::CodeBuild::Project": "arn:aws:codebuild:us-east-1:123456789012:project/{name}",
    "AWS::Events::Rule": "arn:aws:events:us-east-1:123456789012:rule/{name}",
}
_NAME = {"AWS::S3::Bucket": "BucketName", "AWS::ECR::Repository": "RepositoryName",
         "AWS::Lambda::Function": "FunctionName", "AWS::SQS::Queue": "QueueName",
         "AWS::CodeBuild::Project": "Name", "AWS::Logs::LogGroup": "LogGroupName",
         "AWS::SNS::Topic": "TopicName", "AWS::CodePipeline::Pipeline": "Name"}

# (role, Sid, parliament issue) -> why the finding stands
_PASS = ("iam:PassRole is how the flow hands SageMaker its execution role; scoped to that "
         "one role and to iam:PassedToService sagemaker.amazonaws.com")
_LOGIN = ("ecr:GetAuthorizationToken is the registry login every image pull and push "
          "needs; it has no resource-level permissions (Service Authorization Reference)")
_VPC = ("SageMaker developer guide, 'How to use SageMaker AI execution roles': for a job "
        "in a VPC 'Don't scope in the policy with any conditions or resource filters. "
        "Otherwise, the validation checks that occur during the creation of the job fail'; "
        "granted only with JobsInVpc=true")
SUPPRESSED: dict[tuple[str, str, str], str] = {
    ("FlowRole", "PassExecutionRoleToSageMaker", "PERMISSIONS_MANAGEMENT_ACTIONS"): _PASS,
    ("FlowRole", "AutoscalingServiceLinkedRole", "PERMISSIONS_MANAGEMENT_ACTIONS"): (
        "the first RegisterScalableTarget of a SageMaker variant creates Application Auto "
        "Scaling's service-linked role; scoped to that role's ARN and iam:AWSServiceName"),
    ("SageMakerExecutionRole", "RegistryLogin", "CREDENTIALS_EXPOSURE"): _LOGIN,
    ("ImageBuildRole", "RegistryLogin", "CREDENTIALS_EXPOSURE"): _LOGIN,
    ("FlowImageBuildRole", "RegistryLogin", "CREDENTIALS_EXPOSURE"): _LOGIN,
    ("SageMakerExecutionRole", "JobsKeyForVolumesAndOutputs",
     "PERMISSIONS_MANAGEMENT_ACTIONS"): (
        "kms:CreateGrant on the jobs' own key: SageMaker developer guide, 'If you specify a "
        "volume KMS key ... add kms:CreateGrant'; granted only with JobsKmsKeyArn set"),
    ("SageMakerExecutionRole", "JobNetworkInterfaces", "PERMISSIONS_MANAGEMENT_ACTIONS"): _VPC,
    ("SageMakerExecutionRole", "JobNetworkInterfaces", "RESOURCE_STAR"): _VPC,
}

_DROP = object()  # AWS::NoValue


def resolve_template(template: dict[str, Any]) -> dict[str, Any]:
    """``template`` with its intrinsic functions evaluated (see the module's docstring)."""
    parameters = {name: str(spec.get("Default", "")) for name, spec in
                  template.get("Parameters", {}).items()}
    parameters.update(EXAMPLES)
    resources = template["Resources"]

    def name_of(logical: str) -> str:
        resource = resources[logical]
        prop = _NAME.get(resource["Type"])
        value = resource.get("Properties", {}).get(prop) if prop else None
        return str(walk(value)) if value is not None else logical.lower()

    def ref(name: str) -> str:
        if name in PSEUDO:
            return PSEUDO[name]
        if name in parameters:
            return parameters[name]
        if resources[name]["Type"] == "AWS::SNS::Topic":  # Ref of a topic is its ARN
            return f"arn:aws:sns:us-east-1:123456789012:{name_of(name)}"
        return name_of(name)

    def sub(text: str, extra: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in extra:
                return str(extra[key])
            if key.endswith(".Arn"):
                return arn_of(key[:-4])
            return ref(key)
        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def arn_of(logical: str) -> str:
        kind = resources[logical]["Type"]
        if kind == "AWS::Logs::LogGroup":
            return f"arn:aws:logs:us-east-1:123456789012:log-group:{name_of(logical)}:*"
        return _ARN[kind].format(name=name_of(logical))

    def condition(name: str) -> bool:
        return bool(walk(template["Conditions"][name]))

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (walk(item) for item in node) if v is not _DROP]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref":
                return _DROP if value == "AWS::NoValue" else ref(value)
            if key == "Fn::GetAtt":
                logical, attribute = value if isinstance(value, list) else value.split(".")
                if attribute != "Arn":
                    raise ValueError(f"no stand-in for {logical}.{attribute}")
                return arn_of(logical)
            if key == "Fn::Sub":
                text, extra = (value, {}) if isinstance(value, str) else (
                    value[0], {k: walk(v) for k, v in value[1].items()})
                return sub(text, extra)
            if key == "Fn::Join":
                return value[0].join(str(walk(v)) for v in value[1])
            if key == "Fn::Select":
                return walk(value[1])[int(value[0])]
            if key == "Fn::Split":
                return str(walk(value[1])).split(value[0])
            if key == "Fn::If":
                return walk(value[1] if condition(value[0]) else value[2])
            if key == "Fn::Equals":
                return walk(value[0]) == walk(value[1])
            if key == "Fn::Not":
                return not walk(value[0])
            if key == "Condition":
                return condition(value)
        return {k: v for k, v in ((k, walk(v)) for k, v in node.items()) if v is not _DROP}

    return {"Resources": {logical: walk(resource) for logical, resource in resources.items()
                          if resource["Type"] == "AWS::IAM::Role"}}


def findings(path: Path = TEMPLATE) -> list[tuple[str, str, str, str]]:
    """(role, Sid, issue, detail) for every parliament finding on the roles' policies."""
    template, errors = decode(str(path))
    if errors or template is None:
        raise ValueError(f"{path} does not parse: {errors}")
    resolved = resolve_template(json.loads(json.dumps(template)))
    out = []
    for logical, resource in resolved["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                single = {"Version": "2012-10-17", "Statement": [statement]}
                analyzed = analyze_policy_string(json.dumps(single),
                                                 include_community_auditors=True)
                out += [(logical, statement.get("Sid", "?"), f.issue, str(f.detail))
                        for f in analyzed.findings]
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else TEMPLATE
    found = findings(path)
    open_findings = 0
    for role, sid, issue, detail in found:
        reason = SUPPRESSED.get((role, sid, issue))
        if reason:
            print(f"suppressed {role}/{sid}: {issue} ({detail}): {reason}")
        else:
            open_findings += 1
            print(f"FINDING {role}/{sid}: {issue}: {detail}")
    print(f"parliament: {open_findings} finding(s), {len(found) - open_findings} suppressed "
          f"with a reason, in the IAM roles of {path.name}")
    return 1 if open_findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
