"""Score the new model and the live one on the same test split: the evaluation step.

A Processing job. The challenger (the model just trained) must score, or the step fails;
the champion (the model now serving) is optional and may be incompatible with today's
data: then it is reported, not fatal, so the gate can decide. The output also carries the
challenger's metrics in the SageMaker Model Registry "ModelQuality" format, so the
register step can attach them to the model package unchanged.

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
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)


class DataError(Exception):
    """An expected problem with a model or the test data; its message is the reason."""


@dataclass(frozen=True)
class Model:
    estimator: Any
    feature_columns: list[str]
    label_column: str
    classes: list[Any]


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float]
    labels: np.ndarray
    predicted: np.ndarray


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
        return Model(
            estimator=joblib.load(directory / "model.joblib"),
            feature_columns=list(info["feature_columns"]),
            label_column=str(info["label_column"]),
            classes=list(info["classes"]),
        )
    except KeyError as e:
        raise DataError(f"The {role} model.json has no {e.args[0]!r} entry.") from None


def read_test(directory: Path) -> pd.DataFrame:
    files = sorted(directory.glob("*.csv")) if directory.is_dir() else []
    if not files:
        raise DataError(f"No .csv test data in {directory}. Check the test input of the job.")
    frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    if frame.empty:
        raise DataError(f"The test data in {directory} has a header but no rows.")
    return frame


def score(model: Model, test: pd.DataFrame, role: str) -> Scores:
    """roc_auc, accuracy, f1, log_loss with classes[1] as the positive class."""
    if model.label_column not in test.columns:
        raise DataError(
            f"The {role} predicts '{model.label_column}', which the test split lacks "
            f"(columns: {', '.join(map(str, test.columns))})."
        )
    missing = [c for c in model.feature_columns if c not in test.columns]
    if missing:
        raise DataError(
            f"The {role} expects features {', '.join(missing[:10])} that the test split lacks."
        )
    labels = test[model.label_column].to_numpy()
    unknown = sorted(map(str, set(labels.tolist()) - set(model.classes)))
    if unknown:
        raise DataError(
            f"The test labels {', '.join(unknown[:10])} are not among the {role}'s classes "
            f"{model.classes}."
        )
    if len(set(labels.tolist())) < 2:
        raise DataError(
            f"The test split holds one class only ({labels[0]}); ROC AUC is undefined. "
            "Use more data or a larger test_fraction."
        )
    try:
        features = test[model.feature_columns].to_numpy(dtype=np.float64)
    except ValueError as e:
        raise DataError(f"The test split has non-numeric feature values: {e}") from None
    proba = model.estimator.predict_proba(features)
    classes = np.asarray(model.estimator.classes_)
    positive = classes[1]
    predicted = classes[proba.argmax(axis=1)]
    metrics = {
        "roc_auc": float(roc_auc_score(labels == positive, proba[:, 1])),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, pos_label=positive)),
        "log_loss": float(log_loss(labels, proba, labels=classes)),
    }
    return Scores(metrics, labels, predicted)


def model_quality(model: Model, scores: Scores) -> dict[str, Any]:
    """The binary_classification_metrics block of SageMaker's ModelQuality statistics."""
    classes = np.asarray(model.estimator.classes_)
    positive = classes[1]

    def stat(value: float) -> dict[str, Any]:
        return {"value": value, "standard_deviation": "NaN"}

    matrix = confusion_matrix(scores.labels, scores.predicted, labels=classes)
    names = [str(c) for c in classes.tolist()]
    return {
        "confusion_matrix": {
            actual: {pred: int(matrix[i, j]) for j, pred in enumerate(names)}
            for i, actual in enumerate(names)
        },
        "auc": stat(scores.metrics["roc_auc"]),
        "accuracy": stat(scores.metrics["accuracy"]),
        "f1": stat(scores.metrics["f1"]),
        "precision": stat(
            float(precision_score(scores.labels, scores.predicted, pos_label=positive))
        ),
        "recall": stat(float(recall_score(scores.labels, scores.predicted, pos_label=positive))),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    test = read_test(args.test_dir)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        challenger = load_model(args.model_dir, Path(tmp), "challenger")
        challenger_scores = score(challenger, test, "challenger")
        champion_metrics, champion_error = None, None
        if is_empty(args.champion_dir):
            print("no champion model: scoring the challenger only", flush=True)
        else:
            try:
                champion = load_model(args.champion_dir, Path(tmp), "champion")
                champion_metrics = score(champion, test, "champion").metrics
            except Exception as e:  # a champion that cannot score is a finding, not a crash
                champion_error = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
                print(f"champion not scored: {champion_error}", flush=True)
    result = {
        "label_column": challenger.label_column,
        "test_rows": len(test),
        "challenger": challenger_scores.metrics,
        "champion": champion_metrics,
        "champion_error": champion_error,
        "binary_classification_metrics": model_quality(challenger, challenger_scores),
    }
    for role in ("challenger", "champion"):
        for name, value in (result[role] or {}).items():
            print(f"{role}:{name}={value:.4f};", flush=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
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
