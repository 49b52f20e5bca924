"""The whole ml-pipeline flow through Prefect's engine on the local runtime.

The tests share one local runtime and run in order, like a user's sessions:
first run, unchanged re-run, a worse model, new data, a crashing script, bad data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import ConfigError, DataError, JobFailed, OverBudget
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]
PROJECT = Path(__file__).resolve().parents[2]
CRASHING_TRAIN = """import json, os, pathlib, sys
hps = json.loads(os.environ.get("SM_HPS") or "{}")
base = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"])
(base / "output").mkdir(parents=True, exist_ok=True)
(base / "output" / "failure").write_text(f"ValueError: C must be positive, got {hps['C']}")
sys.exit(1)
"""

ENDPOINT = "it-endpoint"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sagepipe-state")
    yield root
    teardown(root)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def config(state: Path, **overrides: Any) -> PipelineConfig:
    base: dict[str, Any] = {
        "project": "it-demo",
        "runtime": {"kind": "local", "state_dir": str(state)},
        "dataset_uri": "s3://it-bucket/datasets/cancer/data.csv",
        "artifacts_uri": "s3://it-bucket/pipeline",
        "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.5, "timeout_seconds": 600},
        "endpoint": {"name": ENDPOINT, "timeout_seconds": 120},
        "gate": {"threshold": 0.9, "margin": 0.001},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(base)


def push(state: Path, frame: pd.DataFrame, tmp: Path, name: str = "data.csv") -> str:
    cfg = config(state)
    clients = get_clients(cfg.runtime)
    from sagepipe.tasks.storage import ensure_local_resources

    ensure_local_resources(cfg.runtime, "it-bucket", "it-demo-events")
    path = tmp / name
    frame.to_csv(path, index=False)
    return push_dataset(clients, path, cfg.dataset_uri, "target")


def jobs_started(state: Path) -> int:
    sm = get_clients(config(state).runtime).sagemaker
    return (len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
            + len(sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]))


def live_config(state: Path) -> str:
    sm = get_clients(config(state).runtime).sagemaker
    return str(sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"])


def predict(state: Path, frame: pd.DataFrame) -> list[dict[str, Any]]:
    row = ",".join(str(v) for v in frame.drop(columns="target").iloc[0].tolist())
    answer = invoke(get_clients(config(state).runtime), ENDPOINT, row + "\n")
    return list(json.loads(answer)["predictions"])


def latest_artifacts() -> tuple[str, list[dict[str, Any]]]:
    """The run record's markdown and the metrics table, as the Prefect API serves them."""
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(
                any_=["it-demo-run-record", "it-demo-metrics"])))}
    table = found["it-demo-metrics"].data
    return str(found["it-demo-run-record"].data), json.loads(table) if isinstance(
        table, str) else table


def test_first_run_deploys_and_the_endpoint_answers(state: Path, dataset: pd.DataFrame,
                                                    tmp_path: Path) -> None:
    push(state, dataset, tmp_path)
    record = ml_pipeline(config=config(state), commit="abc123")
    assert record["outcome"] == "deployed", record.get("error")
    assert record["decision"]["passed"] is True
    assert {s["how"] for s in record["steps"].values()} == {"created"}
    assert record["model_package"]["approval"] == "approved"
    assert record["endpoint"]["action"] == "created"
    predictions = predict(state, dataset)
    assert predictions[0]["label"] in (0, 1)
    assert 0.0 <= predictions[0]["probability"] <= 1.0
    markdown, table = latest_artifacts()
    assert "**deployed**" in markdown
    for part in ("## Data", "## Images", "## Jobs", "## Champion vs challenger", "## Gate",
                 "## Registry", "## Endpoint"):
        assert part in markdown
    assert {row["metric"] for row in table} == {"roc_auc", "pr_auc", "accuracy", "f1",
                                                "log_loss"}
    assert record["problem"]["type"] == "binary"
    assert record["problem"]["source"].startswith("inferred: label 'target' holds 2 distinct")
    # the cost: the estimate made before anything ran, and what the jobs billed
    estimate, measured = record["cost"]["estimate"], record["cost"]["measured"]
    assert estimate["label"] == "estimate" and estimate["total_usd"] > 0
    jobs = {job["step"]: job for job in measured["jobs"]}
    assert set(jobs) == {"preprocess", "train", "evaluate"}
    assert jobs["train"]["how"] == "BillableTimeInSeconds"  # as DescribeTrainingJob says
    assert jobs["train"]["billable_seconds"] >= 1
    assert jobs["preprocess"]["how"] == "ProcessingEndTime - ProcessingStartTime"
    assert all(0 < job["usd"] < estimate["total_usd"] for job in jobs.values())
    assert measured["build"]["minutes"] == 1  # the local build: seconds, a billed minute
    assert "## Cost" in markdown and "BillableTimeInSeconds" in markdown
    assert "## Problem" in markdown and "**binary**" in markdown
    sns = get_clients(config(state).runtime).sns
    messages = sns.messages(sns.create_topic(Name="it-demo-events")["TopicArn"])
    assert json.loads(messages[-1]["Message"])["outcome"] == "deployed"
    assert "abc123" in messages[-1]["Message"]


def test_an_unchanged_rerun_starts_no_job(state: Path) -> None:
    before = jobs_started(state)
    endpoint_before = live_config(state)
    record = ml_pipeline(config=config(state))
    assert record["outcome"] == "unchanged"
    assert {s["how"] for s in record["steps"].values()} == {"cached"}
    assert record["cost"]["measured"]["total_usd"] == 0.0  # nothing ran, nothing was built
    assert jobs_started(state) == before
    assert live_config(state) == endpoint_before


def test_a_cached_step_whose_outputs_were_deleted_runs_again(state: Path) -> None:
    clients = get_clients(config(state).runtime)
    last = ml_pipeline(config=config(state))
    test_split = last["steps"]["preprocess"]["outputs"]["test"]
    bucket, prefix = test_split[5:].split("/", 1)
    for item in clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        clients.s3.delete_object(Bucket=bucket, Key=item["Key"])
    record = ml_pipeline(config=config(state))
    assert record["steps"]["preprocess"]["how"] == "created"
    assert record["steps"]["preprocess"]["job"].endswith("-r2")
    assert clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] == 1
    assert record["steps"]["train"]["how"] == "cached"
    assert record["outcome"] == "unchanged"


def test_a_worse_model_is_rejected_and_the_old_endpoint_keeps_answering(
        state: Path, dataset: pd.DataFrame) -> None:
    endpoint_before = live_config(state)
    weak = {"model": "random_forest", "n_estimators": 1, "max_depth": 1}
    record = ml_pipeline(config=config(state, hyperparameters=weak))
    assert record["outcome"] == "rejected", record.get("decision")
    assert record["decision"]["passed"] is False
    assert "does not beat the live model" in record["decision"]["summary"]
    sm = get_clients(config(state).runtime).sagemaker
    package = sm.describe_model_package(ModelPackageName=record["model_package"]["arn"])
    assert package["ModelApprovalStatus"] == "Rejected"
    assert live_config(state) == endpoint_before
    assert predict(state, dataset)[0]["label"] in (0, 1)


def test_a_new_data_version_retrains(state: Path, dataset: pd.DataFrame,
                                     tmp_path: Path) -> None:
    first_pin = ml_pipeline(config=config(state))["data"]["digest"]
    push(state, dataset.sample(frac=0.9, random_state=1), tmp_path, "v2.csv")
    record = ml_pipeline(config=config(state))
    assert record["data"]["digest"] != first_pin
    assert record["steps"]["preprocess"]["how"] == "created"
    assert record["steps"]["train"]["how"] == "created"
    assert record["outcome"] in ("deployed", "rejected")


def test_bad_hyperparameters_are_refused_before_any_job(state: Path) -> None:
    before = jobs_started(state)
    with pytest.raises(ConfigError, match="C must be a number > 0; got -1"):
        config(state, hyperparameters={"model": "logistic_regression", "C": -1})
    # the problem type is known only from the data: refused after pinning, before jobs
    with pytest.raises(ConfigError, match="alpha does not apply to linear for a binary"):
        ml_pipeline(config=config(state, hyperparameters={"model": "linear", "alpha": 2}))
    assert jobs_started(state) == before


def test_a_crashing_training_script_fails_the_run_with_its_reason(state: Path,
                                                                   tmp_path: Path) -> None:
    """A user's own train step (no hyperparameters.py: only the job checks) that raises."""
    containers = tmp_path / "containers"
    shutil.copytree(PROJECT / "containers", containers)
    (containers / "train" / "hyperparameters.py").unlink()
    (containers / "train" / "train.py").write_text(CRASHING_TRAIN)
    endpoint_before = live_config(state)
    before = jobs_started(state)
    with pytest.raises(JobFailed) as err:
        ml_pipeline(config=config(state, containers_dir=str(containers),
                                  hyperparameters={"C": -1}))
    assert err.value.status == "Failed"
    assert "C must be positive, got -1" in (err.value.reason or "")
    assert jobs_started(state) == before + 1  # the one failed training job, not retried
    clients = get_clients(config(state).runtime)
    from sagepipe.tasks.storage import list_run_records

    failed = list_run_records(clients, config(state).artifacts_uri, limit=1)[0]
    assert failed["outcome"] == "failed"
    # the failed job billed its seconds: they are in the record and its measured cost
    assert failed["steps"]["train"]["billable_seconds"] >= 1
    train = next(j for j in failed["cost"]["measured"]["jobs"] if j["step"] == "train")
    assert train["usd"] > 0 and train["how"] == "BillableTimeInSeconds"
    assert err.value.reason in failed["error"]["message"]
    assert live_config(state) == endpoint_before


def test_a_run_over_budget_is_refused_before_anything_is_created(state: Path) -> None:
    sm = get_clients(config(state).runtime).sagemaker
    before = jobs_started(state)
    endpoint_before = live_config(state)
    packages = len(sm.list_model_packages(ModelPackageGroupName="it-demo")[
        "ModelPackageSummaryList"])
    with pytest.raises(OverBudget, match=r"more than budget\.max_usd_per_run 0\.0500 USD"):
        # forced: every job would be new, so only the budget stops it
        ml_pipeline(config=config(state, budget={"max_usd_per_run": 0.05}), force=True)
    assert jobs_started(state) == before
    assert live_config(state) == endpoint_before
    assert len(sm.list_model_packages(ModelPackageGroupName="it-demo")[
        "ModelPackageSummaryList"]) == packages


def test_bad_data_is_refused_before_any_job(state: Path, dataset: pd.DataFrame,
                                            tmp_path: Path) -> None:
    before = jobs_started(state)
    bad = config(state, dataset_uri="s3://it-bucket/datasets/nolabel/data.csv")
    path = tmp_path / "nolabel.csv"
    dataset.drop(columns="target").to_csv(path, index=False)
    clients = get_clients(bad.runtime)
    clients.s3.upload_file(str(path), "it-bucket", "datasets/nolabel/data.csv")
    with pytest.raises(DataError, match="no label column 'target'"):
        ml_pipeline(config=bad)
    assert jobs_started(state) == before
