"""infra/sagepipe.yaml deployed into moto's CloudFormation, and read back.

moto creates the bucket, KMS key and alias, repositories, log groups, topic, event
rules, roles and the Lambda. It does not create, and these tests check in the
template instead, where each case says so:

* CodeBuild projects, the CodePipeline, CloudWatch alarms, the bucket and topic
  policies: moto's CloudFormation skips those types (aws_helpers.MOTO_SKIPS);
* Secrets Manager: the stack creates no secret; it takes the secret's ARN;
* bucket versioning, public access block, lifecycle and ownership controls, and the
  repositories' scanning, encryption and lifecycle settings: moto's CloudFormation
  ignores those properties (the resources exist, the settings do not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from aws_helpers import (
    MOTO_SKIPS,
    PROJECT,
    REGION,
    DeployedStack,
    deploy_stack,
    load_template,
)
from lambda_fakes import handler
from moto import mock_aws

from sagepipe.tasks.stepsource import STEPS

SERVICE_OF_ROLE = {"FlowRole": "ecs-tasks.amazonaws.com",
                   "SageMakerExecutionRole": "sagemaker.amazonaws.com",
                   "ImageBuildRole": "codebuild.amazonaws.com",
                   "TestsBuildRole": "codebuild.amazonaws.com",
                   "FlowImageBuildRole": "codebuild.amazonaws.com",
                   "PipelineRole": "codepipeline.amazonaws.com",
                   "TriggerRole": "lambda.amazonaws.com",
                   "RelayRole": "lambda.amazonaws.com"}
# Actions that support no resource-level permissions: the only ones allowed on "*".
RESOURCELESS = {"sagemaker:ListTrainingJobs", "sagemaker:ListProcessingJobs",
                "sagemaker:ListModelPackages", "ecr:GetAuthorizationToken",
                "cloudwatch:PutMetricData", "codepipeline:PutJobSuccessResult",
                "codepipeline:PutJobFailureResult",
                # Service Authorization Reference: Application Auto Scaling's Describe actions
                # list no resource type (its writes are on scalable-target/<id>)
                "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:DescribeScalingPolicies"}


@pytest.fixture(scope="module")
def stack() -> Iterator[DeployedStack]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
            patch.setenv(key, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield deploy_stack()


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def client(name: str) -> Any:
    return boto3.client(name, region_name=REGION)


def props(template: dict[str, Any], logical: str) -> dict[str, Any]:
    return dict(template["Resources"][logical]["Properties"])


def test_every_resource_is_created_by_moto_or_named_as_skipped(
        stack: DeployedStack, template: dict[str, Any]) -> None:
    for logical, resource in template["Resources"].items():
        if resource["Type"] in MOTO_SKIPS:
            assert logical not in stack.resources
        else:
            assert logical in stack.resources, f"moto did not create {logical}"


def test_outputs_fill_every_change_me_value_of_the_aws_settings(
        stack: DeployedStack) -> None:
    settings = yaml.safe_load((PROJECT / "deployments" / "settings" / "aws.yaml").read_text())
    out = stack.outputs
    # the values aws.yaml leaves to the stack
    assert "change-me" in settings["dataset_uri"] and out["DatasetUri"].startswith(
        f"s3://{out['BucketName']}/datasets/")
    assert "change-me" in settings["artifacts_uri"]
    assert out["ArtifactsUri"] == f"s3://{out['BucketName']}/pipeline"
    assert "change-me" in settings["jobs"]["role_arn"]
    assert out["SageMakerExecutionRoleArn"].startswith("arn:aws:iam::")
    assert "change-me" in settings["notifications"]["topic_arn"]
    assert out["TopicArn"].endswith(":sagepipe-demo-events")
    # and the names aws.yaml already uses are the stack's defaults
    assert out["BuildProject"] == settings["build_project"]
    assert out["ImageRepositoryPrefix"] == settings["image_repository_prefix"]
    assert out["EndpointName"] == settings["endpoint"]["name"] == settings["project"]
    assert out["EndpointAlarms"].split(",") == ["sagepipe-demo-endpoint-5xx",
                                                "sagepipe-demo-endpoint-latency"]


def test_bucket_is_encrypted_with_the_stack_key_and_kept(stack: DeployedStack,
                                                         template: dict[str, Any]) -> None:
    rules = client("s3").get_bucket_encryption(Bucket=stack.outputs["BucketName"])[
        "ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": stack.outputs["KmsKeyArn"]}
    key = client("kms")
    assert key.get_key_rotation_status(KeyId=stack.outputs["KmsKeyArn"])["KeyRotationEnabled"]
    # deleting the stack keeps the data, and the key that decrypts it
    for logical in ("ArtifactBucket", "EncryptionKey"):
        assert template["Resources"][logical]["DeletionPolicy"] == "Retain"
        assert template["Resources"][logical]["UpdateReplacePolicy"] == "Retain"
    # moto's CloudFormation ignores these properties: checked in the template
    bucket = props(template, "ArtifactBucket")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    noncurrent = bucket["LifecycleConfiguration"]["Rules"][0]
    assert noncurrent["Status"] == "Enabled"
    assert noncurrent["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": {"Ref": "NoncurrentVersionDays"}}


def test_bucket_policy_refuses_plain_http(template: dict[str, Any]) -> None:
    # AWS::S3::BucketPolicy: skipped by moto's CloudFormation
    policy = props(template, "ArtifactBucketPolicy")
    assert policy["Bucket"] == {"Ref": "ArtifactBucket"}
    [deny] = policy["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": ["ArtifactBucket", "Arn"]},
                                {"Fn::Sub": "${ArtifactBucket.Arn}/*"}]


def test_one_immutable_repository_per_step_and_one_for_the_flow_image(
        stack: DeployedStack, template: dict[str, Any]) -> None:
    repositories = client("ecr").describe_repositories()["repositories"]
    assert sorted(r["repositoryName"] for r in repositories) == sorted(
        [f"sagepipe-{step}" for step in STEPS] + ["sagepipe-flow"])
    assert {r["imageTagMutability"] for r in repositories} == {"IMMUTABLE"}
    flow = next(r for r in repositories if r["repositoryName"] == "sagepipe-flow")
    assert stack.outputs["FlowImageRepositoryUri"] == flow["repositoryUri"]
    # moto's CloudFormation ignores scanning, encryption and lifecycle: the template
    for logical in ("PreprocessRepository", "TrainRepository", "EvaluateRepository",
                    "ServeRepository", "FlowImageRepository"):
        repository = props(template, logical)
        assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert repository["EncryptionConfiguration"]["EncryptionType"] == "KMS"
        rules = json.loads(repository["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"]
                           .replace("${ImagesToKeep}", "30"))["rules"]
        assert rules[0]["selection"]["countNumber"] == 30


def test_log_groups_are_encrypted_and_expire(stack: DeployedStack,
                                             template: dict[str, Any]) -> None:
    groups = {g["logGroupName"]: g for g in client("logs").describe_log_groups()["logGroups"]}
    key_arn = stack.outputs["KmsKeyArn"]
    key_policy = client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"]
    key_policy = json.loads(key_policy) if isinstance(key_policy, str) else key_policy
    logs_may_use = next(s for s in key_policy["Statement"]
                        if s["Sid"] == "LogsEncryptsTheStackLogGroups")["Condition"][
        "ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    for logical in ("ImageBuildLogGroup", "TestsBuildLogGroup", "FlowImageBuildLogGroup",
                    "TriggerLogGroup", "RelayLogGroup"):
        group = groups[stack.physical(logical)]
        assert group["retentionInDays"] == 365
        # moto's CloudFormation drops KmsKeyId (the group it creates has none): the
        # template must ask for the stack's key, and moto's answer, if any, must be it
        assert props(template, logical).get("KmsKeyId") == {
            "Fn::GetAtt": ["EncryptionKey", "Arn"]}, f"{logical} is not encrypted"
        if "kmsKeyId" in group:
            assert group["kmsKeyId"] == key_arn
        # CloudWatch Logs can use the key only for groups its policy names
        arn = f"arn:aws:logs:{REGION}:123456789012:log-group:{stack.physical(logical)}"
        assert arn in logs_may_use, f"the key policy does not let Logs encrypt {logical}"


def test_job_state_changes_reach_the_encrypted_topic(stack: DeployedStack,
                                                     template: dict[str, Any]) -> None:
    events = client("events")
    for logical, kind in (("TrainingJobEventsRule", "Training"),
                          ("ProcessingJobEventsRule", "Processing")):
        name = stack.physical(logical)
        rule = events.describe_rule(Name=name)
        pattern = json.loads(rule["EventPattern"])
        assert pattern["detail-type"] == [f"SageMaker {kind} Job State Change"]
        assert pattern["detail"][f"{kind}JobName"] == [{"prefix": "sagepipe-demo-"}]
        assert rule["State"] == "ENABLED"
        targets = events.list_targets_by_rule(Rule=name)["Targets"]
        assert [t["Arn"] for t in targets] == [stack.outputs["TopicArn"]]
    assert props(template, "EventsTopic")["KmsMasterKeyId"] == {
        "Fn::GetAtt": ["EncryptionKey", "Arn"]}
    # AWS::SNS::TopicPolicy: skipped by moto. EventBridge may publish only from these
    # rules, the alarms only from this project's alarms.
    statements = props(template, "EventsTopicPolicy")["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["JobStateChangesFromEventBridge"]["Condition"]["ArnEquals"][
        "aws:SourceArn"] == [{"Fn::GetAtt": ["TrainingJobEventsRule", "Arn"]},
                             {"Fn::GetAtt": ["ProcessingJobEventsRule", "Arn"]}]
    # the key lets those two services use it for the topic
    key_policy = client("kms").get_key_policy(KeyId=stack.outputs["KmsKeyArn"],
                                              PolicyName="default")["Policy"]
    key_policy = json.loads(key_policy) if isinstance(key_policy, str) else key_policy
    services = next(s for s in key_policy["Statement"]
                    if s["Sid"] == "EventsAndAlarmsPublishToTheEncryptedTopic")
    assert sorted(services["Principal"]["Service"]) == ["cloudwatch.amazonaws.com",
                                                        "events.amazonaws.com"]


def test_endpoint_alarms_watch_errors_and_latency(template: dict[str, Any]) -> None:
    # AWS::CloudWatch::Alarm: skipped by moto's CloudFormation
    metrics = {}
    for logical in ("Endpoint5xxAlarm", "EndpointLatencyAlarm"):
        alarm = props(template, logical)
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": {"Ref": "ProjectName"}},
                                       {"Name": "VariantName", "Value": "AllTraffic"}]
        assert alarm["AlarmActions"] == [{"Ref": "EventsTopic"}]
        metrics[alarm["MetricName"]] = alarm["TreatMissingData"]
    assert metrics == {"Invocation5XXErrors": "notBreaching", "ModelLatency": "notBreaching"}


def test_roles_trust_one_service_of_this_account_and_scope_their_grants(
        stack: DeployedStack) -> None:
    iam = client("iam")
    for logical, service in SERVICE_OF_ROLE.items():
        trust = iam.get_role(RoleName=stack.physical(logical))["Role"][
            "AssumeRolePolicyDocument"]
        [statement] = trust["Statement"]
        assert statement["Principal"] == {"Service": service}
        assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
        for grant in stack.role_statements(logical):
            actions = [grant["Action"]] if isinstance(grant["Action"], str) else grant["Action"]
            assert all("*" not in action for action in actions), (logical, grant["Sid"])
            if grant["Resource"] == "*":
                assert set(actions) <= RESOURCELESS, (logical, grant["Sid"])


def test_trigger_gets_the_secret_by_reference(stack: DeployedStack,
                                              template: dict[str, Any]) -> None:
    function = client("lambda").get_function_configuration(
        FunctionName=stack.outputs["TriggerFunctionName"])
    assert (function["Runtime"], function["Handler"]) == ("python3.12", "handler.handler")
    assert function["Role"].endswith(stack.physical("TriggerRole"))
    # the environment names the secret; the API key itself never enters the stack
    assert function["Environment"]["Variables"] == {
        "PREFECT_API_SECRET_ARN": stack.parameters["PrefectApiSecretArn"],
        "HTTP_TIMEOUT_SECONDS": "20"}
    assert client("lambda").get_function_concurrency(
        FunctionName=stack.outputs["TriggerFunctionName"])["ReservedConcurrentExecutions"] == 2
    assert template["Parameters"]["PrefectApiSecretArn"]["AllowedPattern"].startswith(
        "^arn:aws[a-z-]*:secretsmanager:")
    assert props(template, "TriggerFunction")["LoggingConfig"] == {
        "LogGroup": {"Ref": "TriggerLogGroup"}}


def test_pipeline_runs_source_tests_flow_image_and_the_trigger(
        template: dict[str, Any]) -> None:
    # AWS::CodePipeline::Pipeline and AWS::CodeBuild::Project: skipped by moto
    pipeline = props(template, "Pipeline")
    stages = {s["Name"]: {a["Name"]: a for a in s["Actions"]} for s in pipeline["Stages"]}
    assert list(stages) == ["Source", "Build", "Orchestrate"]
    assert stages["Source"]["GitHub"]["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    tests, image = stages["Build"]["Tests"], stages["Build"]["FlowImage"]
    assert tests["Configuration"]["ProjectName"] == {"Ref": "TestsBuildProject"}
    assert image["Configuration"]["ProjectName"] == {"Ref": "FlowImageBuildProject"}
    # the flow image is built once the tests passed (a lower RunOrder runs first)
    assert tests["RunOrder"] < image["RunOrder"]
    assert image["InputArtifacts"] == [{"Name": "SourceCode"}]
    orchestrate = stages["Orchestrate"]["PrefectFlowRun"]
    assert orchestrate["ActionTypeId"]["Provider"] == "Lambda"
    assert orchestrate["Configuration"]["FunctionName"] == {"Ref": "TriggerFunction"}
    # the commit reaches the trigger as the input artifact's revision
    assert orchestrate["InputArtifacts"] == [{"Name": "SourceCode"}]
    user_parameters = orchestrate["Configuration"]["UserParameters"]["Fn::Sub"].replace(
        "${PrefectDeploymentName}", template["Parameters"]["PrefectDeploymentName"]["Default"])
    # CodePipeline: action configuration fields hold at most 1000 characters, variable
    # syntax included (CodePipeline user guide, "Variables reference")
    assert len(user_parameters) <= 1000
    parameters = json.loads(user_parameters)
    prefect = yaml.safe_load((PROJECT / "deployments" / "prefect.yaml").read_text())
    names = {f"ml-pipeline/{d['name']}" for d in prefect["deployments"]}
    assert parameters == {"deployment": "ml-pipeline/production",
                          "image": "#{Build.FLOW_IMAGE}", "code_hash": "#{Build.FLOW_CODE_HASH}"}
    assert parameters["deployment"] in names

    # every #{Build.X} is a variable the action with the namespace Build exports: its
    # project's buildspec lists X under env/exported-variables (a CodeBuild action's output
    # variables are its exported environment variables)
    assert image["Namespace"] == "Build"
    flow_project = props(template, "FlowImageBuildProject")
    buildspec = yaml.safe_load((PROJECT / flow_project["Source"]["BuildSpec"]).read_text())
    exported = set(buildspec["env"]["exported-variables"])
    referenced = set(re.findall(r"#\{Build\.(\w+)\}", user_parameters))
    assert referenced == {"FLOW_IMAGE", "FLOW_CODE_HASH"} and referenced <= exported
    # and the trigger takes what they resolve to
    resolved = user_parameters.replace("#{Build.FLOW_IMAGE}", "123456789012.dkr.ecr.us-east-1."
                                       "amazonaws.com/sagepipe-flow@sha256:" + "ab" * 32
                                       ).replace("#{Build.FLOW_CODE_HASH}", "c-" + "0" * 20)
    asked = handler.parse_user_parameters(
        {"actionConfiguration": {"configuration": {"UserParameters": resolved}}})
    assert asked.image.endswith("@sha256:" + "ab" * 32) and asked.code_hash == "c-" + "0" * 20

    tests_project = props(template, "TestsBuildProject")
    assert (PROJECT / tests_project["Source"]["BuildSpec"]).is_file()
    # the flow image: docker build in CodeBuild needs privileged mode; the commit's source
    assert flow_project["Environment"]["PrivilegedMode"] is True
    assert flow_project["Source"]["Type"] == "CODEPIPELINE"
    assert flow_project["LogsConfig"]["CloudWatchLogs"]["GroupName"] == {
        "Ref": "FlowImageBuildLogGroup"}
    # the pipeline may start both Build actions' projects
    run_tests = next(s for s in props(template, "PipelineRole")["Policies"][0][
        "PolicyDocument"]["Statement"] if s["Sid"] == "RunTests")
    assert run_tests["Resource"] == [{"Fn::GetAtt": ["TestsBuildProject", "Arn"]},
                                     {"Fn::GetAtt": ["FlowImageBuildProject", "Arn"]}]
    images = props(template, "ImageBuildProject")
    assert images["Source"]["Type"] == "S3"  # the flow sends an S3 zip (tasks/images.py)
    assert images["Environment"]["PrivilegedMode"] is True  # docker build needs the daemon
    assert images["LogsConfig"]["CloudWatchLogs"]["GroupName"] == {"Ref": "ImageBuildLogGroup"}


def test_the_relay_gets_every_state_change_of_the_projects_jobs_and_endpoints(
        stack: DeployedStack, template: dict[str, Any]) -> None:
    events = client("events")
    name = stack.physical("RelayRule")
    rule = events.describe_rule(Name=name)
    assert rule["State"] == "ENABLED"
    pattern = json.loads(rule["EventPattern"])
    assert pattern["source"] == ["aws.sagemaker"]
    assert sorted(pattern["detail-type"]) == [
        "SageMaker Endpoint State Change", "SageMaker Processing Job State Change",
        "SageMaker Training Job State Change"]
    # no status filter (InProgress shows in the run's feed); this project's names only
    assert pattern["detail"] == {"$or": [
        {"TrainingJobName": [{"prefix": "sagepipe-demo-"}]},
        {"ProcessingJobName": [{"prefix": "sagepipe-demo-"}]},
        {"EndpointName": ["sagepipe-demo", {"prefix": "sagepipe-demo-"}]}]}
    [target] = events.list_targets_by_rule(Rule=name)["Targets"]
    function = client("lambda").get_function_configuration(
        FunctionName=stack.outputs["RelayFunctionName"])
    assert target["Arn"] == function["FunctionArn"]
    # EventBridge: bounded retries, then the dead-letter queue; Lambda: the same queue
    # for an invocation that failed after its own retries
    queue_arn = client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["RelayDeadLetterQueueUrl"], AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 3600,
                                     "MaximumRetryAttempts": 20}
    assert target["DeadLetterConfig"] == {"Arn": queue_arn}
    # moto's CloudFormation drops the function's DeadLetterConfig: the template
    assert props(template, "RelayFunction")["DeadLetterConfig"] == {
        "TargetArn": {"Fn::GetAtt": ["RelayDeadLetterQueue", "Arn"]}}
    assert (function["Runtime"], function["Handler"], function["Timeout"]) == (
        "python3.12", "relay.handler", 30)
    assert function["Environment"]["Variables"]["PREFECT_API_SECRET_ARN"] == \
        stack.parameters["PrefectApiSecretArn"]
    assert props(template, "RelayFunction")["LoggingConfig"] == {
        "LogGroup": {"Ref": "RelayLogGroup"}}
    assert client("lambda").get_function_concurrency(
        FunctionName=stack.outputs["RelayFunctionName"])["ReservedConcurrentExecutions"] == 2
    # only this rule may invoke the function
    permission = props(template, "RelayInvokePermission")
    assert (permission["Principal"], permission["SourceArn"]) == (
        "events.amazonaws.com", {"Fn::GetAtt": ["RelayRule", "Arn"]})
    # AWS::SQS::QueuePolicy: skipped by moto. EventBridge may send only from this rule.
    queue = props(template, "RelayDeadLetterQueue")
    assert queue["SqsManagedSseEnabled"] is True
    statements = {s["Sid"]: s for s in props(template, "RelayDeadLetterQueuePolicy")[
        "PolicyDocument"]["Statement"]}
    allow = statements["UndeliveredEventsFromTheRelayRule"]
    assert (allow["Principal"], allow["Action"]) == ({"Service": "events.amazonaws.com"},
                                                     "sqs:SendMessage")
    assert allow["Condition"] == {"ArnEquals": {"aws:SourceArn": [
        {"Fn::GetAtt": ["RelayRule", "Arn"]}, {"Fn::GetAtt": ["DatasetRule", "Arn"]}]}}
    assert statements["DenyPlainHttp"]["Effect"] == "Deny"


def s3_object_created(bucket: str, key: str) -> dict[str, Any]:
    """AWS's example "Object Created" event (S3 user guide, "EventBridge event message
    structure") for ``bucket``/``key``."""
    return {"version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": "Object Created", "source": "aws.s3", "account": "111122223333",
            "time": "2021-11-12T00:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket},
                       "object": {"key": key, "size": 5,
                                  "etag": "b1946ac92492d2347c6235b4d2611184",
                                  "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                                  "sequencer": "617f08299329d189"},
                       "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012",
                       "source-ip-address": "1.2.3.4", "reason": "PutObject"}}


def test_new_dataset_versions_and_only_those_reach_the_relay(
        stack: DeployedStack, template: dict[str, Any]) -> None:
    """S3 sends its events to EventBridge only when the bucket says so (S3 user guide,
    "Using EventBridge": EventBridgeConfiguration); the rule passes "Object Created" under
    datasets/ of this bucket, never the pipeline's own writes under pipeline/ (a run must
    not start itself) nor another bucket's objects."""
    bucket = props(template, "ArtifactBucket")
    assert bucket["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    events = client("events")
    rule = events.describe_rule(Name=stack.physical("DatasetRule"))
    assert rule["State"] == "ENABLED"
    pattern = rule["EventPattern"]
    name = stack.outputs["BucketName"]

    # EventBridge's TestEventPattern is not in moto 5.2.5: its rule matcher (the one its
    # PutEvents routing uses) evaluates the deployed pattern instead
    from moto.events.models import EventPattern, EventPatternParser

    def check(event: dict[str, Any]) -> bool:
        return EventPattern(pattern, EventPatternParser(pattern).parse()).matches_event(event)

    def matches(bucket_name: str, key: str) -> bool:
        return check(s3_object_created(bucket_name, key))

    assert matches(name, "datasets/breast-cancer/data.csv")
    assert not matches(name, "pipeline/data/0123/data.csv")  # the pipeline's snapshot
    assert not matches(name, "pipeline/runs/x/record.json")
    assert not matches("someone-elses-bucket", "datasets/breast-cancer/data.csv")
    deleted = s3_object_created(name, "datasets/breast-cancer/data.csv")
    deleted["detail-type"] = "Object Deleted"
    assert not check(deleted)
    [target] = events.list_targets_by_rule(Rule=stack.physical("DatasetRule"))["Targets"]
    function = client("lambda").get_function_configuration(
        FunctionName=stack.outputs["RelayFunctionName"])
    assert target["Arn"] == function["FunctionArn"]
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 3600,
                                     "MaximumRetryAttempts": 20}
    assert "DeadLetterConfig" in target
    permission = props(template, "DatasetInvokePermission")
    assert (permission["Principal"], permission["SourceArn"]) == (
        "events.amazonaws.com", {"Fn::GetAtt": ["DatasetRule", "Arn"]})
