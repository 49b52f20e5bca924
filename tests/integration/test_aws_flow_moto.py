"""The whole flow on the AWS runtime against moto (in-process ``mock_aws``).

moto completes SageMaker jobs at once and runs no containers, so the test plays
the container's part (aws_helpers.ContainerRunner): when a job is created, the
real container script runs here with the job's inputs staged from (moto's) S3,
and its outputs go back to S3 where SageMaker would put them. Every request the
flow sends is recorded through botocore's event hooks and checked against the
service model's server-side constraints too (botocore itself checks types and
required members).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_helpers import ContainerRunner, RequestRecorder, s3_uri_split, server_side_check
from moto import mock_aws
from sklearn.datasets import load_breast_cancer

import sagepipe.tasks.runtime
from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.images import content_tag
from sagepipe.tasks.runtime import Clients, get_clients
from sagepipe.tasks.stepsource import STEPS

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
PROJECT = Path(__file__).resolve().parents[2]
BUCKET = "sagepipe-moto-bucket"
REGION = "us-east-1"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ROLE = "arn:aws:iam::123456789012:role/sagepipe-sagemaker-execution"


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    sagepipe.tasks.runtime._CACHE.clear()
    with mock_aws():
        yield
    sagepipe.tasks.runtime._CACHE.clear()


def seed_account(clients: Clients) -> None:
    clients.s3.create_bucket(Bucket=BUCKET)
    clients.s3.put_bucket_versioning(Bucket=BUCKET,
                                     VersioningConfiguration={"Status": "Enabled"})
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    clients.s3.put_object(Bucket=BUCKET, Key="datasets/cancer/data.csv",
                          Body=frame.to_csv(index=False).encode())
    for step in STEPS:  # images already in ECR: this test is about the jobs, not builds
        clients.ecr.create_repository(repositoryName=f"sagepipe-{step}")
        clients.ecr.put_image(repositoryName=f"sagepipe-{step}",
                              imageTag=content_tag(PROJECT / "containers" / step),
                              imageManifest=json.dumps({"schemaVersion": 2, "step": step,
                                                         "mediaType": MANIFEST}))


def make_config(topic_arn: str, **extra: Any) -> PipelineConfig:
    return build_config({
        "project": "moto-demo",
        "runtime": {"kind": "aws", "region": REGION},
        "dataset_uri": f"s3://{BUCKET}/datasets/cancer/data.csv",
        "artifacts_uri": f"s3://{BUCKET}/pipeline",
        "jobs": {"role_arn": ROLE, "poll_first_seconds": 0.01, "poll_max_seconds": 0.05,
                 **extra.pop("jobs", {})},
        "endpoint": {"name": "moto-endpoint", "staging_name": "moto-staging",
                     "timeout_seconds": 30},
        "notifications": {"topic_arn": topic_arn},
        **extra,
    })


def test_the_whole_flow_on_the_aws_runtime(aws: None) -> None:
    settings = make_config("arn:aws:sns:us-east-1:123456789012:placeholder").runtime
    clients = get_clients(settings)
    seed_account(clients)
    topic = clients.sns.create_topic(Name="moto-demo-events")["TopicArn"]
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    clients.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    runner = ContainerRunner(boto3.client("s3", region_name=REGION))
    recorded: list[tuple[str, str]] = []
    for client in (clients.s3, clients.sagemaker, clients.sagemaker_runtime, clients.sns,
                   clients.logs, clients.ecr, clients.codebuild):
        client.meta.events.register("provide-client-params.*.*", server_side_check(recorded))
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateProcessingJob", runner.processing)
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", runner.training)

    record = ml_pipeline(config=make_config(topic), commit="f00dcafe")

    assert record["outcome"] == "deployed", record.get("error")
    assert [name.split("-")[2] for name in runner.created] == ["preprocess", "train",
                                                               "evaluate"]
    sm = clients.sagemaker
    # the pinned snapshot exists, with the source object's exact version copied
    snapshot_bucket, snapshot_prefix = s3_uri_split(record["data"]["snapshot_uri"])
    copied = clients.s3.list_objects_v2(Bucket=snapshot_bucket, Prefix=snapshot_prefix)
    assert [o["Key"].rsplit("/", 1)[-1] for o in copied["Contents"]] == ["data.csv"]
    # registry: one approved package with its metrics and lineage
    packages = sm.list_model_packages(ModelPackageGroupName="moto-demo")[
        "ModelPackageSummaryList"]
    assert [p["ModelApprovalStatus"] for p in packages] == ["Approved"]
    package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    assert package["CustomerMetadataProperties"]["commit"] == "f00dcafe"
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith(
        "evaluation.json")
    # endpoint serving a model made from that package
    endpoint = sm.describe_endpoint(EndpointName="moto-endpoint")
    assert endpoint["EndpointStatus"] == "InService"
    # staging first, with the same package, then production
    staging = sm.describe_endpoint(EndpointName="moto-staging")
    assert record["staging_endpoint"]["endpoint"] == "moto-staging"
    assert staging["CreationTime"] <= endpoint["CreationTime"]
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["ExecutionRoleArn"] == ROLE
    # the jobs carry the flow run id, so a cancelled run can find and stop them
    jobs = sm.list_training_jobs()["TrainingJobSummaries"]
    tags = sm.list_tags(ResourceArn=jobs[0]["TrainingJobArn"])["Tags"]
    assert {"Key": "sagepipe:flow-run-id", "Value": record["run_id"]} in tags
    # the notification went out
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(json.loads(messages[-1]["Body"])["Message"])
    assert body["outcome"] == "deployed"
    # every request passed the model's server-side constraints too
    operations = {op for _, op in recorded}
    assert {"CreateProcessingJob", "CreateTrainingJob", "CreateModelPackage", "CreateModel",
            "CreateEndpointConfig", "CreateEndpoint", "Publish"} <= operations

    # a worse model on the next run is registered as Rejected; the endpoint is untouched
    weak = make_config(topic, hyperparameters={"model": "random_forest", "n_estimators": 1,
                                               "max_depth": 1})
    second = ml_pipeline(config=weak)
    assert second["outcome"] == "rejected", second.get("decision")
    assert second["decision"]["champion"] is not None  # scored against the live model
    after = sm.describe_endpoint(EndpointName="moto-endpoint")
    assert after["EndpointConfigName"] == endpoint["EndpointConfigName"]
    statuses = [p["ModelApprovalStatus"] for p in sm.list_model_packages(
        ModelPackageGroupName="moto-demo", SortOrder="Ascending")["ModelPackageSummaryList"]]
    assert statuses == ["Approved", "Rejected"]


def test_a_run_over_budget_sends_nothing_but_its_record_and_notification(aws: None) -> None:
    """Refused before the first AWS call of the run: no data copy, image lookup, build, job
    or endpoint; only the failed run's record (PutObject) and its notification go out."""
    from sagepipe.tasks.errors import OverBudget

    clients = get_clients(make_config("arn:aws:sns:us-east-1:123456789012:t").runtime)
    seed_account(clients)
    topic = clients.sns.create_topic(Name="moto-demo-events")["TopicArn"]
    recorder = RequestRecorder()
    recorder.watch(clients.s3, clients.sagemaker, clients.sns, clients.logs, clients.ecr,
                   clients.codebuild)
    with pytest.raises(OverBudget) as err:
        ml_pipeline(config=make_config(topic, budget={"max_usd_per_month_live": 100}))
    # staging and production: two ml.m5.large around the clock, 167.90 USD a month
    assert "167.90 USD a month at rest" in str(err.value)
    assert recorder.operations() == {("s3", "PutObject"), ("sns", "Publish")}
    record = next(r for r in recorder.requests if r.operation == "PutObject")
    assert record.params["Key"].endswith("/record.json")


def test_an_unversioned_bucket_is_refused_before_any_job(aws: None) -> None:
    clients = get_clients(make_config("arn:aws:sns:us-east-1:123456789012:t").runtime)
    clients.s3.create_bucket(Bucket=BUCKET)
    clients.s3.put_object(Bucket=BUCKET, Key="datasets/cancer/data.csv", Body=b"a,target\n1,0\n")
    # a topic that exists: the failure's notification is sent, not retried for 10 s
    topic = clients.sns.create_topic(Name="moto-demo-events")["TopicArn"]
    from sagepipe.tasks.errors import DataError

    with pytest.raises(DataError, match="put-bucket-versioning"):
        ml_pipeline(config=make_config(topic))
    assert clients.sagemaker.list_processing_jobs()["ProcessingJobSummaries"] == []


def test_a_multiclass_run_with_text_labels_on_the_aws_runtime(aws: None) -> None:
    """Iris with its species as text, semicolon-separated: inferred multiclass, the registry
    entry says so (Task, metadata, the feature schema as data quality constraints)."""
    from sagepipe.flows.examples import iris

    topic = "arn:aws:sns:us-east-1:123456789012:placeholder"
    clients = get_clients(make_config(topic).runtime)
    seed_account(clients)
    topic = clients.sns.create_topic(Name="moto-iris-events")["TopicArn"]
    clients.s3.put_object(Bucket=BUCKET, Key="datasets/iris/iris.csv",
                          Body=iris().to_csv(index=False, sep=";").encode())
    runner = ContainerRunner(boto3.client("s3", region_name=REGION))
    recorded: list[tuple[str, str]] = []
    for client in (clients.s3, clients.sagemaker, clients.sns):
        client.meta.events.register("provide-client-params.*.*", server_side_check(recorded))
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateProcessingJob", runner.processing)
    clients.sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", runner.training)

    config = make_config(topic, project="moto-iris", label_column="species",
                         dataset_uri=f"s3://{BUCKET}/datasets/iris/iris.csv",
                         artifacts_uri=f"s3://{BUCKET}/iris",
                         endpoint={"name": "moto-iris", "timeout_seconds": 30},
                         hyperparameters={"model": "linear"})
    record = ml_pipeline(config=config)

    assert record["outcome"] == "deployed", record.get("error")
    assert record["problem"]["type"] == "multiclass"
    assert record["data"]["report"]["delimiter"] == ";"
    assert record["decision"]["metric"] == "macro_f1"
    assert record["evaluation"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert "multiclass_classification_metrics" in record["evaluation"]
    # the training job read the preprocess step's schema as a channel of its own
    job = clients.sagemaker.describe_training_job(TrainingJobName=record["steps"]["train"]["job"])
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["train", "validation",
                                                                  "schema"]
    sm = clients.sagemaker
    packages = sm.list_model_packages(ModelPackageGroupName="moto-iris")[
        "ModelPackageSummaryList"]
    package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
    assert package["CustomerMetadataProperties"]["problem_type"] == "multiclass"
    metadata = package["CustomerMetadataProperties"]
    assert metadata["macro_f1"] == f"{record['decision']['challenger']:.6f}"
    quality = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    constraints = package["ModelMetrics"]["ModelDataQuality"]["Constraints"]["S3Uri"]
    bucket, key = s3_uri_split(constraints)
    features = json.loads(clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert [f["name"] for f in features["features"]] == ["sepal_length", "sepal_width",
                                                         "petal_length", "petal_width"]
    assert quality.endswith("evaluation.json")
    assert {"CreateModelPackage", "CreateTrainingJob"} <= {op for _, op in recorded}


def test_a_framework_mode_run_ships_code_to_aws_images_and_builds_nothing(
        aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step on AWS's scikit-learn image: the code goes up as sourcedir.tar.gz, the
    requests carry what the SageMaker SDK sets (sagemaker_program, sagemaker_submit_directory,
    the code channel or input, runproc.sh, the model's SAGEMAKER_* environment); the
    stand-in plays the image, running the same code from the archive."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fit").mkdir()
    fit = (PROJECT / "containers" / "train" / "train.py").read_text()
    (tmp_path / "fit" / "fit.py").write_text(fit.replace(
        "def main() -> int:\n", "def main() -> int:\n    print('FIT-FROM-ARCHIVE')\n"))
    (tmp_path / "fit" / "hyperparameters.py").write_text(
        (PROJECT / "containers" / "train" / "hyperparameters.py").read_text())
    topic = "arn:aws:sns:us-east-1:123456789012:placeholder"
    clients = get_clients(make_config(topic).runtime)
    seed_account(clients)
    topic = clients.sns.create_topic(Name="moto-fw-events")["TopicArn"]
    runner = ContainerRunner(boto3.client("s3", region_name=REGION), clients.logs)
    recorded: list[tuple[str, str]] = []
    sent: dict[str, dict[str, Any]] = {}
    for client in (clients.s3, clients.sagemaker, clients.sns, clients.ecr, clients.codebuild):
        client.meta.events.register("provide-client-params.*.*", server_side_check(recorded))
    for operation, play in (("CreateProcessingJob", runner.processing),
                            ("CreateTrainingJob", runner.training)):
        clients.sagemaker.meta.events.register(
            f"provide-client-params.sagemaker.{operation}", play)

    def keep(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent[model.name] = params

    clients.sagemaker.meta.events.register("provide-client-params.sagemaker.*", keep)
    framework = {"image": "framework"}
    # the default steps' requirements.txt is installed when the job starts: that needs the
    # network, which isolated jobs lack (sagepipe refuses the combination)
    config = make_config(topic, project="moto-fw", artifacts_uri=f"s3://{BUCKET}/fw",
                         endpoint={"name": "moto-fw", "timeout_seconds": 30},
                         jobs={"network_isolation": False},
                         steps={"preprocess": framework, "evaluate": framework,
                                "serve": framework,
                                "train": {**framework, "source": "fit", "entry_point": "fit.py"}})
    record = ml_pipeline(config=config)

    assert record["outcome"] == "deployed", record.get("error")
    operations = {op for _, op in recorded}
    assert not operations & {"StartBuild", "DescribeImages"}  # no image is built or looked up
    # sagemaker-core's image table: the scikit-learn image of us-east-1
    image = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.9-0-cpu-py3"
    training = sent["CreateTrainingJob"]
    assert training["AlgorithmSpecification"]["TrainingImage"] == image
    hps = training["HyperParameters"]
    assert hps["sagemaker_program"] == '"fit.py"'
    assert hps["sagemaker_submit_directory"] == '"/opt/ml/input/data/code/sourcedir.tar.gz"'
    assert hps["model"] == '"hist_gradient_boosting"'  # JSON-encoded, as the SDK sends them
    code = next(c for c in training["InputDataConfig"] if c["ChannelName"] == "code")
    bucket, key = s3_uri_split(code["DataSource"]["S3DataSource"]["S3Uri"])
    archive = clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["fit.py", "hyperparameters.py"]
    streams = clients.logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")
    lines = [e["message"] for st in streams["logStreams"] for e in clients.logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=st["logStreamName"])["events"]]
    assert "FIT-FROM-ARCHIVE" in lines  # the user's script ran, from the uploaded archive
    processing = sent["CreateProcessingJob"]
    assert processing["AppSpecification"]["ContainerEntrypoint"] == [
        "/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]
    inputs = {i["InputName"]: i["S3Input"] for i in processing["ProcessingInputs"]}
    assert inputs["code"]["LocalPath"] == "/opt/ml/processing/input/code"
    assert inputs["code"]["S3Uri"].endswith("/sourcedir.tar.gz")
    assert inputs["entrypoint"]["S3Uri"].endswith("/runproc.sh")
    package = clients.sagemaker.describe_model_package(
        ModelPackageName=record["model_package"]["arn"])
    container = package["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == image
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"].startswith(f"s3://{BUCKET}/fw/")
    assert container["Environment"]["SAGEMAKER_REGION"] == REGION
