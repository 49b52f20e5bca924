"""The user's data, end to end through Prefect's engine on the local runtime.

Each example that ships with sagepipe (``sagepipe data example NAME``, settings
``deployments/settings/NAME.yaml``) is pushed as a user would push it and run to a
deployed endpoint, which then answers JSON records holding a category string and a null.
Then what happens when the data changes under a live model: new columns, or a changed
problem type, decided by ``gate.on_schema_change``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.flows.examples import churn, write_example
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("your-data")
    yield root
    teardown(root)


def example_config(name: str, state: Path, **overrides: Any) -> PipelineConfig:
    """The example's own settings file, with the state under the test's folder."""
    return load_config(name, {"runtime": {"state_dir": str(state)},
                              "jobs": {"poll_first_seconds": 0.05, "poll_max_seconds": 0.2},
                              **overrides})


def push(config: PipelineConfig, path: Path) -> None:
    bucket = config.dataset_uri[5:].split("/", 1)[0]
    ensure_local_resources(config.runtime, bucket, f"{config.project}-events")
    push_dataset(get_clients(config.runtime), path, config.dataset_uri, config.data_rules())


def answer(config: PipelineConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = json.dumps({"instances": records})
    reply = invoke(get_clients(config.runtime), config.endpoint.name, body,
                   content_type="application/json")
    return list(json.loads(reply)["predictions"])


EXAMPLES = {
    # example: (problem, a JSON record with a category string and a null, check of the answer)
    "iris": ("multiclass", {"sepal_length": 6.7, "sepal_width": None, "petal_length": "5.2",
                            "petal_width": 2.3},
             lambda a: a["label"] in ("setosa", "versicolor", "virginica")),
    "diabetes": ("regression", {"age": 50, "sex": 2, "bmi": None, "bp": 90, "s1": 180,
                                "s2": 100, "s3": 45, "s4": "4", "s5": 4.6, "s6": 90},
                 lambda a: isinstance(a["value"], float) and 25 < a["value"] < 350),
    "churn": ("binary", {"plan": "premium", "region": None, "tenure_months": 3,
                         "monthly_charges": "?", "support_calls": 5},
              lambda a: a["label"] in ("yes", "no") and set(a["probabilities"]) == {"yes",
                                                                                     "no"}),
    "churn-parquet": ("binary", {"plan": "basic", "region": "north", "tenure_months": None,
                                 "monthly_charges": 25.0, "support_calls": 0},
                      lambda a: a["label"] in ("yes", "no")),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_runs_to_a_live_endpoint(name: str, state: Path, tmp_path: Path) -> None:
    problem, record, check = EXAMPLES[name]
    config = example_config(name, state)
    push(config, write_example(name, tmp_path))
    result = ml_pipeline(config=config)
    assert result["outcome"] == "deployed", (result.get("error"), result.get("decision"))
    assert result["problem"]["type"] == problem
    assert result["problem"]["source"].startswith("inferred: ")
    decision = result["decision"]
    assert decision["passed"] and decision["challenger"] >= decision["threshold"]
    predictions = answer(config, [record])
    assert len(predictions) == 1 and check(predictions[0]), predictions
    if name.startswith("churn"):
        schema = result["data_schema"]
        assert set(schema["dropped_columns"]) == {"customer_id", "country", "notes"}
        assert schema["dropped_rows"]["empty_label"] > 0
        assert schema["format"]["format"] == ("parquet" if name == "churn-parquet" else "csv")
        # the feature schema is part of the registry entry
        sm = get_clients(config.runtime).sagemaker
        package = sm.describe_model_package(ModelPackageName=result["model_package"]["arn"])
        assert package["CustomerMetadataProperties"]["problem_type"] == "binary"
        assert package["Task"] == "CLASSIFICATION"
        constraints = package["ModelMetrics"]["ModelDataQuality"]["Constraints"]["S3Uri"]
        assert constraints.endswith("/constraints.json")
    assert set(result["plots"]) >= {"metric_history"}


def test_settings_that_do_not_fit_the_data_are_refused_before_any_job(state: Path,
                                                                      tmp_path: Path) -> None:
    config = example_config("iris", state, project="iris-misfit",
                            dataset_uri="s3://sagepipe-local/datasets/iris-misfit/iris.csv",
                            gate={"metric": "roc_auc", "threshold": 0.8})
    push(config, write_example("iris", tmp_path))
    sm = get_clients(config.runtime).sagemaker
    jobs_before = len(sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"])
    with pytest.raises(ConfigError) as err:
        ml_pipeline(config=config)
    message = str(err.value)
    assert "gate.metric roc_auc is a metric of binary problems" in message
    assert "accuracy, macro_f1, weighted_f1, log_loss, roc_auc_ovr" in message
    assert "set problem: binary, multiclass or regression" in message
    assert len(sm.list_processing_jobs(MaxResults=100)["ProcessingJobSummaries"]) == jobs_before


def test_a_schema_change_rejects_unless_the_threshold_alone_is_allowed(
        state: Path, tmp_path: Path) -> None:
    """The live churn model reads 'plan'; new data without that column cannot score it."""
    config = example_config("churn", state)
    live = get_clients(config.runtime).sagemaker.describe_endpoint(
        EndpointName=config.endpoint.name)["EndpointConfigName"]
    path = tmp_path / "churn-v2.csv"
    churn().drop(columns="plan").to_csv(path, sep=";", index=False)
    push(config, path)
    rejected = ml_pipeline(config=config)
    assert rejected["outcome"] == "rejected", rejected.get("error")
    change = rejected["evaluation"]["schema_change"]
    assert change["removed"] == ["plan"] and not change["comparable"]
    summary = rejected["decision"]["summary"]
    assert "columns the live model uses are gone or dropped: plan" in summary
    assert "gate.on_schema_change: threshold_only" in summary
    endpoint = get_clients(config.runtime).sagemaker.describe_endpoint(
        EndpointName=config.endpoint.name)
    assert endpoint["EndpointConfigName"] == live  # nothing deployed, nothing lost

    allowed = ml_pipeline(config=example_config("churn", state,
                                                gate={"on_schema_change": "threshold_only"}))
    assert allowed["outcome"] == "deployed", allowed.get("decision")
    assert "judged on the threshold alone" in allowed["decision"]["summary"]
    predictions = answer(config, [{"region": "south", "tenure_months": 2,
                                   "monthly_charges": None, "support_calls": 4}])
    assert predictions[0]["label"] in ("yes", "no")


def test_the_record_says_how_to_override_the_inferred_problem(state: Path) -> None:
    config = example_config("diabetes", state)
    from sagepipe.tasks.storage import list_run_records

    record = list_run_records(get_clients(config.runtime), config.artifacts_uri, limit=1)[0]
    assert record["problem"]["type"] == "regression"
    assert "problem: binary, multiclass or regression" in record["problem"]["override"]
    assert {row for row in record["evaluation"]["challenger"]} == {"rmse", "mae", "r2", "mape"}
    frame = pd.DataFrame(record["data_schema"]["columns"])
    assert set(frame["kind"]) == {"numeric"}
