"""Score the new model and the live one on the same test split: the evaluation step.

A Processing job. The challenger (the model just trained) must score, or the step fails;
the champion (the model now serving) is optional and may not fit today's data: when its
columns, label, problem type or classes differ from the challenger's, the difference is
reported (``schema_change``) and the champion is not scored, so the gate can decide. A
champion that fails for another reason is reported too, never fatal.

Metrics by problem type (model.json says which): binary roc_auc, pr_auc, accuracy, f1,
log_loss; multiclass accuracy, macro_f1, weighted_f1, log_loss, roc_auc_ovr; regression rmse,
mae, r2, mape. evaluation.json also carries the challenger's metrics in the SageMaker Model
Registry "ModelQuality" format (the ``<type>_metrics`` block), so the register step can attach
the file unchanged; constraints.json describes the model's features in Model Monitor's data
quality constraints format (name, type, completeness, categories), for the registry too.

Next to them go the plots (see plots.py). A plot that cannot be drawn is reported in
evaluation.json ("plots_error"), not fatal: the gate needs the numbers, not the pictures.

Failures go to {SAGEMAKER_BASE_DIR}/output/failure (and output/message, which Processing
jobs report as ExitMessage), exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from plots import write_plots
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_absolute_percentage_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

CATEGORY_DOMAIN = 100  # categories listed per text feature in constraints.json


class DataError(Exception):
    """An expected problem with a model or the test data; its message is the reason."""


@dataclass(frozen=True)
class Model:
    estimator: Any
    problem: str
    label_column: str
    classes: list[Any] | None
    features: list[dict[str, Any]]  # name, kind (numeric | categorical), categories

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.features]

    def kind(self, name: str) -> str | None:
        return next((f["kind"] for f in self.features if f["name"] == name), None)


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float | None]
    labels: np.ndarray  # class indices, or values (regression)
    predicted: np.ndarray
    proba: np.ndarray | None  # per class (classification)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--champion-dir", type=Path, default=None)
    parser.add_argument("--test-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    return parser.parse_args(argv)


def is_empty(directory: Path | None) -> bool:
    return directory is None or not directory.is_dir() or not any(directory.iterdir())


def load_model(directory: Path, scratch: Path, role: str) -> Model:
    """Load model.joblib + model.json, from model.tar.gz (as training outputs it) if present."""
    archive = directory / "model.tar.gz"
    if archive.is_file():
        target = scratch / role
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"The {role} archive {archive} cannot be extracted: {e}") from None
        directory = next((p.parent for p in sorted(target.rglob("model.joblib"))), target)
    missing = [n for n in ("model.joblib", "model.json") if not (directory / n).is_file()]
    if missing:
        raise DataError(
            f"The {role} model in {directory} lacks {' and '.join(missing)}; expected the "
            "training job's output (model.tar.gz, or model.joblib with model.json)."
        )
    info = json.loads((directory / "model.json").read_text())
    try:
        # models trained before sagepipe knew problem types: binary, numeric features
        features = info.get("features") or [{"name": c, "kind": "numeric"}
                                            for c in info["feature_columns"]]
        return Model(estimator=joblib.load(directory / "model.joblib"),
                     problem=info.get("problem", "binary"),
                     label_column=str(info["label_column"]), classes=info.get("classes"),
                     features=features)
    except KeyError as e:
        raise DataError(f"The {role} model.json has no {e.args[0]!r} entry.") from None


def read_test(directory: Path) -> pd.DataFrame:
    """The test split, every cell as text (NaN for empty)."""
    files = sorted(directory.glob("*.csv")) if directory.is_dir() else []
    if not files:
        raise DataError(f"No .csv test data in {directory}. Check the test input of the job.")
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
                       for f in files], ignore_index=True)
    if frame.empty:
        raise DataError(f"The test data in {directory} has a header but no rows.")
    return frame


def model_inputs(model: Model, test: pd.DataFrame) -> pd.DataFrame:
    """The test split as the model's training saw its data: numbers float64, text object."""
    out = pd.DataFrame(index=test.index)
    for feature in model.features:
        values = test[feature["name"]]
        if feature["kind"] == "numeric":
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            out[feature["name"]] = numbers.where(np.isfinite(numbers))
        else:
            out[feature["name"]] = values.astype(object).where(values.notna(), np.nan)
    return out


def targets(model: Model, test: pd.DataFrame, role: str) -> np.ndarray:
    """Class indices (classification) or values (regression) of the test labels."""
    raw = test[model.label_column]
    if model.problem == "regression":
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"The test labels '{model.label_column}' hold values that are not "
                            "numbers; a regression model cannot be scored on them.")
        return values
    classes = model.classes or []
    numeric = all(isinstance(c, int | float) for c in classes)
    if numeric:
        keys = pd.to_numeric(raw, errors="coerce").astype("float64")
        index: dict[Any, int] = {float(c): i for i, c in enumerate(classes)}
    else:
        keys = raw.astype(str).str.strip()
        index = {str(c): i for i, c in enumerate(classes)}
    codes = keys.map(index)
    if codes.isna().any():
        unknown = sorted({str(v) for v in raw[codes.isna()]})[:10]
        raise DataError(f"The test labels {', '.join(unknown)} are not among the {role}'s "
                        f"classes {classes[:20]}.")
    return codes.to_numpy(dtype=np.int64)


def metrics_of(problem: str, y: np.ndarray, predicted: np.ndarray,
               proba: np.ndarray | None) -> dict[str, float | None]:
    if problem == "regression":
        return {"rmse": float(np.sqrt(np.mean((predicted - y) ** 2))),
                "mae": float(mean_absolute_error(y, predicted)),
                "r2": float(r2_score(y, predicted)),
                "mape": float(mean_absolute_percentage_error(y, predicted))}
    assert proba is not None
    labels = list(range(proba.shape[1]))
    if problem == "binary":
        return {"roc_auc": float(roc_auc_score(y == 1, proba[:, 1])),
                "pr_auc": float(average_precision_score(y == 1, proba[:, 1])),
                "accuracy": float(accuracy_score(y, predicted)),
                "f1": float(f1_score(y, predicted, pos_label=1, zero_division=0)),
                "log_loss": float(log_loss(y, proba, labels=labels))}
    every_class = len(np.unique(y)) == len(labels)
    return {"accuracy": float(accuracy_score(y, predicted)),
            "macro_f1": float(f1_score(y, predicted, average="macro", labels=labels,
                                       zero_division=0)),
            "weighted_f1": float(f1_score(y, predicted, average="weighted", labels=labels,
                                          zero_division=0)),
            "log_loss": float(log_loss(y, proba, labels=labels)),
            # one-vs-rest AUC needs every class in the test split
            "roc_auc_ovr": float(roc_auc_score(y, proba, multi_class="ovr", labels=labels))
            if every_class else None}


def score(model: Model, test: pd.DataFrame, role: str) -> Scores:
    if model.label_column not in test.columns:
        raise DataError(
            f"The {role} predicts '{model.label_column}', which the test split lacks "
            f"(columns: {', '.join(map(str, test.columns))})."
        )
    missing = [c for c in model.names if c not in test.columns]
    if missing:
        raise DataError(
            f"The {role} expects features {', '.join(missing[:10])} that the test split lacks."
        )
    y = targets(model, test, role)
    if model.problem == "binary" and len(np.unique(y)) < 2:
        raise DataError(
            "The test split holds one class only; ROC AUC is undefined. Use more data or a "
            "larger test_fraction."
        )
    inputs = model_inputs(model, test)
    if model.problem == "regression":
        predicted = np.asarray(model.estimator.predict(inputs), dtype=np.float64)
        return Scores(metrics_of("regression", y, predicted, None), y, predicted, None)
    proba = np.asarray(model.estimator.predict_proba(inputs), dtype=np.float64)
    predicted = proba.argmax(axis=1)
    return Scores(metrics_of(model.problem, y, predicted, proba), y, predicted, proba)


def schema_change(champion: Model, challenger: Model, test: pd.DataFrame) -> dict[str, Any] | None:
    """How the live model's inputs and outputs differ from the new one's; None if they agree.

    ``comparable`` says whether the champion can still be scored fairly on the new test
    split: same label, problem and classes, and every column it reads present with the kind
    it was trained on.
    """
    new_names, old_names = set(challenger.names), set(champion.names)
    change: dict[str, Any] = {
        "added": sorted(new_names - old_names),
        "removed": sorted(old_names - new_names),
        "kind_changed": sorted(n for n in old_names & new_names
                               if champion.kind(n) != challenger.kind(n)),
        "label": None if champion.label_column == challenger.label_column
        else [champion.label_column, challenger.label_column],
        "problem": None if champion.problem == challenger.problem
        else [champion.problem, challenger.problem],
        "classes_added": [], "classes_removed": []}
    if champion.problem != "regression" and challenger.problem != "regression":
        old, new = [str(c) for c in champion.classes or []], [str(c) for c in
                                                                challenger.classes or []]
        change["classes_added"] = [c for c in new if c not in old]
        change["classes_removed"] = [c for c in old if c not in new]
    if not any(change.values()):
        return None
    unreadable = [n for n in change["removed"] if n not in test.columns]
    change["comparable"] = not (unreadable or change["kind_changed"] or change["label"]
                                or change["problem"] or change["classes_added"]
                                or change["classes_removed"])
    parts = []
    if change["removed"]:
        parts.append(f"columns the live model uses are gone or dropped: "
                     f"{', '.join(change['removed'][:10])}")
    if change["added"]:
        parts.append(f"new columns: {', '.join(change['added'][:10])}")
    if change["kind_changed"]:
        parts.append("columns that changed between number and text: "
                     + ", ".join(change["kind_changed"][:10]))
    if change["label"]:
        parts.append(f"label was '{change['label'][0]}', now '{change['label'][1]}'")
    if change["problem"]:
        parts.append(f"problem was {change['problem'][0]}, now {change['problem'][1]}")
    if change["classes_added"] or change["classes_removed"]:
        parts.append(f"classes added {change['classes_added'][:10]}, removed "
                     f"{change['classes_removed'][:10]}")
    change["summary"] = "; ".join(parts)
    return change


def model_quality(model: Model, scores: Scores) -> dict[str, Any]:
    """The challenger's block of SageMaker's ModelQuality statistics, by problem type.

    Shapes from https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-model-quality-metrics.html
    (each metric {"value", "standard_deviation"}; a confusion matrix as nested counts).
    """
    def stat(value: float | None) -> dict[str, Any]:
        return {"value": value, "standard_deviation": "NaN"}

    m = scores.metrics
    if model.problem == "regression":
        return {"regression_metrics": {
            "mae": stat(m["mae"]), "mse": stat(m["rmse"] ** 2 if m["rmse"] is not None else None),
            "rmse": stat(m["rmse"]), "r2": stat(m["r2"])}}
    names = [str(c) for c in model.classes or []]
    matrix = confusion_matrix(scores.labels, scores.predicted, labels=range(len(names)))
    counts = {actual: {pred: int(matrix[i, j]) for j, pred in enumerate(names)}
              for i, actual in enumerate(names)}
    if model.problem == "binary":
        precision = precision_score(scores.labels, scores.predicted, pos_label=1, zero_division=0)
        return {"binary_classification_metrics": {
            "confusion_matrix": counts, "auc": stat(m["roc_auc"]),
            "accuracy": stat(m["accuracy"]), "f1": stat(m["f1"]),
            "precision": stat(float(precision)),
            "recall": stat(float(recall_score(scores.labels, scores.predicted, pos_label=1,
                                              zero_division=0)))}}
    weighted = {name: float(fn(scores.labels, scores.predicted, average="weighted",
                               labels=range(len(names)), zero_division=0))
                for name, fn in (("weighted_precision", precision_score),
                                 ("weighted_recall", recall_score))}
    return {"multiclass_classification_metrics": {
        "confusion_matrix": counts, "accuracy": stat(m["accuracy"]),
        "weighted_f1": stat(m["weighted_f1"]),
        **{name: stat(value) for name, value in weighted.items()}}}


def constraints(model: Model, inputs: pd.DataFrame) -> dict[str, Any]:
    """The model's features in Model Monitor's data quality constraints format.

    https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-byoc-constraints.html
    """
    features = []
    for feature in model.features:
        values = inputs[feature["name"]]
        entry: dict[str, Any] = {"name": feature["name"],
                                 "completeness": float(values.notna().mean())}
        if feature["kind"] == "numeric":
            present = values.dropna()
            whole = bool(len(present)) and bool((present == present.round()).all())
            entry["inferred_type"] = "Integral" if whole else "Fractional"
            entry["num_constraints"] = {"is_non_negative": bool((present >= 0).all())}
        else:
            entry["inferred_type"] = "String"
            categories = feature.get("categories") or []
            if 0 < len(categories) <= CATEGORY_DOMAIN:
                entry["string_constraints"] = {"domains": categories}
        features.append(entry)
    return {"version": 0, "features": features, "monitoring_config": {
        "evaluate_constraints": "Enabled", "emit_metrics": "Enabled",
        "datatype_check_threshold": 1.0, "domain_content_threshold": 1.0,
        "distribution_constraints": {"perform_comparison": "Enabled",
                                     "comparison_threshold": 0.1,
                                     "comparison_method": "Robust"}}}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    test = read_test(args.test_dir)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        challenger = load_model(args.model_dir, Path(tmp), "challenger")
        challenger_scores = score(challenger, test, "challenger")
        scored = {"challenger": challenger_scores}
        champion_metrics, champion_error, change = None, None, None
        if is_empty(args.champion_dir):
            print("no champion model: scoring the challenger only", flush=True)
        else:
            try:
                champion = load_model(args.champion_dir, Path(tmp), "champion")
                change = schema_change(champion, challenger, test)
                if change and not change["comparable"]:
                    raise DataError(f"the data's schema changed: {change['summary']}")
                scored["champion"] = score(champion, test, "champion")
                champion_metrics = scored["champion"].metrics
            except Exception as e:  # a champion that cannot score is a finding, not a crash
                champion_error = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
                print(f"champion not scored: {champion_error}", flush=True)
    result: dict[str, Any] = {
        "problem": challenger.problem,
        "label_column": challenger.label_column,
        "classes": challenger.classes,
        "test_rows": len(test),
        "challenger": challenger_scores.metrics,
        "champion": champion_metrics,
        "champion_error": champion_error,
        "schema_change": change,
        **model_quality(challenger, challenger_scores),
    }
    for role in ("challenger", "champion"):
        for name, value in (result[role] or {}).items():
            if value is not None:
                print(f"{role}:{name}={value:.4f};", flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "constraints.json").write_text(
        json.dumps(constraints(challenger, model_inputs(challenger, test)), indent=2) + "\n")
    result.update(plots={}, plots_error=None)
    try:
        classes = [str(c) for c in challenger.classes or []]
        result["plots"] = write_plots(challenger.problem, scored, classes, len(test),
                                      args.output_dir)
    except Exception as e:  # pictures are for people; the gate needs only the numbers
        result["plots_error"] = f"{type(e).__name__}: {e}"
        print(f"plots not drawn: {result['plots_error']}", flush=True)
    (args.output_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def write_failure(reason: str) -> None:
    """Leave the reason where SageMaker reports it (failure; message for Processing jobs)."""
    output = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "output"
    output.mkdir(parents=True, exist_ok=True)
    for name in ("failure", "message"):
        (output / name).write_text(reason + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        evaluate(args)
    except DataError as e:
        reason = str(e)
        print(f"evaluation failed: {reason}", file=sys.stderr, flush=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    else:
        return 0
    write_failure(reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
