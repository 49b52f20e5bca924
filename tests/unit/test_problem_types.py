"""Every problem type through the containers: preprocess -> train (every model) -> evaluate
-> the serving handlers, on the example datasets that ship with sagepipe.

iris: multiclass with text labels; diabetes: regression; churn: binary yes/no, semicolon-
separated, with empty cells, "?", text categories, an ID, a constant and an empty column.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from container_runs import EVALUATE, PREPROCESS, SERVE, TRAIN, run, train_env

from sagepipe.flows.examples import write_example

# the session fixtures run every model on every dataset through the containers first
pytestmark = pytest.mark.slow
MODELS = ("linear", "random_forest", "hist_gradient_boosting", "xgboost")
DATASETS = {  # example -> (label, problem, gate metric, a fair bar for every model)
    "iris": ("species", "multiclass", "macro_f1", 0.8),
    "diabetes": ("progression", "regression", "r2", 0.25),
    "churn": ("churned", "binary", "roc_auc", 0.75),
}
METRICS = {"binary": {"roc_auc", "pr_auc", "accuracy", "f1", "log_loss"},
           "multiclass": {"accuracy", "macro_f1", "weighted_f1", "log_loss", "roc_auc_ovr"},
           "regression": {"rmse", "mae", "r2", "mape"}}
PLOTS = {"binary": {"roc", "confusion_matrix"},
         "multiclass": {"confusion_matrix", "per_class_f1"},
         "regression": {"predicted_vs_actual", "residuals"}}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example dataset, split by the preprocess container."""
    out = {}
    for name, (label, _, _, _) in DATASETS.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / "in").mkdir()
        write_example(name, folder / "in")
        result = run(PREPROCESS, "--input-dir", folder / "in", "--output-dir", folder / "out",
                     "--label-column", label, base=folder / "ml")
        assert result.returncode == 0, result.stdout + result.stderr
        out[name] = folder / "out"
    return out


@pytest.fixture(scope="session")
def trained(prepared: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[tuple[str, str], Path]:
    """Every model on every dataset: (dataset, model) -> model directory."""
    out = {}
    for name, (label, _, _, _) in DATASETS.items():
        for model in MODELS:
            base = tmp_path_factory.mktemp(f"{name}-{model}")
            hps = json.dumps({"model": model, "label_column": label})
            result = run(TRAIN, base=base, env=train_env(prepared[name], SM_HPS=hps))
            assert result.returncode == 0, (name, model, result.stderr)
            out[name, model] = base / "model"
    return out


def handlers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("inference_for_tests", SERVE / "inference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def predict(inference: ModuleType, model: Any, body: str, content_type: str) -> list[Any]:
    data = inference.input_fn(body.encode(), content_type)
    answer, _ = inference.output_fn(inference.predict_fn(data, model), "application/json")
    return list(json.loads(answer)["predictions"])


def test_the_problem_type_is_inferred_per_dataset(prepared: dict[str, Path]) -> None:
    for name, (_, problem, _, _) in DATASETS.items():
        schema = json.loads((prepared[name] / "schema" / "schema.json").read_text())
        assert schema["problem"] == problem, name
        assert schema["problem_source"].startswith("inferred"), name
    churn = json.loads((prepared["churn"] / "schema" / "schema.json").read_text())
    assert churn["classes"] == ["no", "yes"]
    assert churn["format"]["delimiter"] == ";"
    assert set(churn["dropped_columns"]) == {"customer_id", "country", "notes"}
    kinds = {c["name"]: c["kind"] for c in churn["columns"] if not c["dropped"]}
    assert kinds == {"plan": "categorical", "region": "categorical", "tenure_months": "numeric",
                     "monthly_charges": "numeric", "support_calls": "numeric"}
    assert churn["dropped_rows"]["empty_label"] > 0


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_evaluates_and_serves_every_problem(
    name: str, model: str, prepared: dict[str, Path], trained: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    label, problem, metric, bar = DATASETS[name]
    model_dir = trained[name, model]
    info = json.loads((model_dir / "model.json").read_text())
    assert (info["problem"], info["model"], info["label_column"]) == (problem, model, label)
    # evaluate reads the model the way training outputs it: model.tar.gz
    (tmp_path / "archive").mkdir()
    with tarfile.open(tmp_path / "archive" / "model.tar.gz", "w:gz") as tar:
        for file in ("model.joblib", "model.json"):
            tar.add(model_dir / file, arcname=file)
    result = run(EVALUATE, "--model-dir", tmp_path / "archive", "--test-dir",
                 prepared[name] / "test", "--output-dir", tmp_path / "out", base=tmp_path / "ml")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert set(report["challenger"]) == METRICS[problem]
    value = report["challenger"][metric]
    assert value >= bar, (name, model, metric, value)
    assert set(report["plots"]) == PLOTS[problem] | {"curves"} and report["plots_error"] is None
    # the registry's ModelQuality statistics: one block per problem type, each metric
    # {"value", "standard_deviation"} (docs.aws.amazon.com/sagemaker/latest/dg/
    # model-monitor-model-quality-metrics.html)
    quality_block = {"binary": "binary_classification_metrics", "regression": "regression_metrics",
                     "multiclass": "multiclass_classification_metrics"}[problem]
    assert quality_block in report
    for entry, stat in report[quality_block].items():
        assert entry == "confusion_matrix" or set(stat) == {"value", "standard_deviation"}
    # Model Monitor data quality constraints: features with name, inferred_type (Integral,
    # Fractional, String), completeness (docs.aws.amazon.com/sagemaker/latest/dg/
    # model-monitor-byoc-constraints.html)
    constraints = json.loads((tmp_path / "out" / "constraints.json").read_text())
    assert [f["name"] for f in constraints["features"]] == info["feature_columns"]
    kinds = {f["name"]: f["kind"] for f in info["features"]}
    for feature in constraints["features"]:
        assert 0 <= feature["completeness"] <= 1
        assert (feature["inferred_type"] == "String") == (kinds[feature["name"]] == "categorical")
        assert feature["inferred_type"] in ("Integral", "Fractional", "String")

    inference = handlers()
    served = inference.model_fn(str(model_dir))
    features = info["feature_columns"]
    first = (prepared[name] / "test" / "test.csv").read_text().splitlines()[1]
    record = {f: None for f in features}  # every value missing: still a prediction
    answers = predict(inference, served, json.dumps({"instances": [record]}),
                      "application/json")
    if problem == "regression":
        assert isinstance(answers[0]["value"], float)
    else:
        assert answers[0]["label"] in info["classes"]
        assert set(answers[0]["probabilities"]) == {str(c) for c in info["classes"]}
        assert sum(answers[0]["probabilities"].values()) == pytest.approx(1.0)
    # a CSV row laid out like the data (label removed) gets the same answer as its record
    columns = info["input_columns"] + [label]
    import csv

    cells = next(csv.reader([first]))
    header = (prepared[name] / "test" / "test.csv").read_text().splitlines()[0].split(",")
    row = dict(zip(header, cells, strict=True))
    csv_row = ",".join(f'"{row[c]}"' if "," in row[c] else row[c] for c in columns
                       if c != label)
    by_csv = predict(inference, served, csv_row + "\n", "text/csv")
    by_json = predict(inference, served, json.dumps({"instances": [
        {c: (row[c] if row[c] != "" else None) for c in features}]}), "application/json")
    assert by_csv == by_json


def test_text_labels_come_back_as_text_and_unseen_categories_are_handled(
        trained: dict[tuple[str, str], Path]) -> None:
    inference = handlers()
    iris = inference.model_fn(str(trained["iris", "linear"]))
    answer = predict(inference, iris, json.dumps({"instances": [
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        {"sepal_length": 6.7, "sepal_width": None, "petal_length": "5.2", "petal_width": 2.3}]}),
        "application/json")
    assert [a["label"] for a in answer] == ["setosa", "virginica"]
    for model in MODELS:
        churn = inference.model_fn(str(trained["churn", model]))
        records = [{"plan": "premium", "region": None, "tenure_months": 3,
                    "monthly_charges": "?", "support_calls": 5, "customer_id": "X1"},
                   {"plan": "platinum", "region": "mars", "tenure_months": None,
                    "monthly_charges": 20.5, "support_calls": 0}]
        answer = predict(inference, churn, json.dumps({"instances": records}),
                         "application/json")
        assert [a["label"] for a in answer] == ["yes", "no"], model
        with pytest.raises(inference.RequestError, match="Non-numeric value 'lots' for "
                           "'support_calls' in instance 1"):
            predict(inference, churn, json.dumps({"instances": [{**records[0],
                                                                 "support_calls": "lots"}]}),
                    "application/json")
