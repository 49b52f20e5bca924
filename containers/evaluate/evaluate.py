"""Score the new model and the live one on the same test split: the evaluation step.

A Processing job. The challenger (the model just trained) must score, or the step fails;
the champion (the model now serving) is optional and may be incompatible with today's
data: then it is reported, not fatal, so the gate can decide. The output also carries the
challenger's metrics in the SageMaker Model Registry "ModelQuality" format, so the
register step can attach them to the model package unchanged.

Next to evaluation.json go the pictures people look at before trusting the gate: roc.png
(the ROC curves of both models on this test split), confusion_matrix.png, and curves.json
(the numbers behind them, so a notebook can re-draw them). They are drawn with matplotlib's
Agg canvas (no display, no pyplot state). A plot that cannot be drawn is reported in
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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

PLOT_FILES = {"roc": "roc.png", "confusion_matrix": "confusion_matrix.png",
              "curves": "curves.json"}
ROLES = {"challenger": ("challenger (new)", "tab:blue"), "champion": ("champion (live)",
                                                                     "tab:orange")}
MAX_CURVE_POINTS = 2000  # curves.json stays small on big test sets


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
    positive_proba: np.ndarray  # the model's probability of classes[1], for the ROC curve
    classes: np.ndarray


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
    return Scores(metrics, labels, predicted, proba[:, 1], classes)


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


def curves(scored: dict[str, Scores]) -> dict[str, Any]:
    """ROC points and confusion matrices of each scored model: what the plots show."""
    result: dict[str, Any] = {"roc": {}, "confusion_matrix": {}}
    for role, scores in scored.items():
        positive = scores.classes[1]
        fpr, tpr, _ = roc_curve(scores.labels == positive, scores.positive_proba)
        if len(fpr) > MAX_CURVE_POINTS:
            keep = np.unique(np.linspace(0, len(fpr) - 1, MAX_CURVE_POINTS).astype(int))
            fpr, tpr = fpr[keep], tpr[keep]
        result["roc"][role] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist(),
                               "auc": scores.metrics["roc_auc"]}
        matrix = confusion_matrix(scores.labels, scores.predicted, labels=scores.classes)
        result["confusion_matrix"][role] = {"labels": [str(c) for c in scores.classes.tolist()],
                                            "counts": matrix.astype(int).tolist()}
    return result


def save_png(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure).print_png(str(path))


def roc_figure(roc: dict[str, Any], test_rows: int) -> Figure:
    figure = Figure(figsize=(5.6, 4.6), dpi=110, layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for role, curve in roc.items():
        name, color = ROLES[role]
        ax.plot(curve["fpr"], curve["tpr"], color=color, linewidth=2,
                label=f"{name}: AUC {curve['auc']:.4f}")
    # a little room past 0 and 1: a perfect model's curve runs along the axes
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel="false positive rate",
           ylabel="true positive rate", title=f"ROC on the same test split ({test_rows} rows)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return figure


def confusion_figure(matrices: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(4.2 * len(matrices), 4.0), dpi=110, layout="constrained")
    for ax, (role, matrix) in zip(np.atleast_1d(figure.subplots(1, len(matrices))),
                                  matrices.items(), strict=True):
        counts = np.asarray(matrix["counts"])
        ax.imshow(counts, cmap="Blues", vmin=0)
        labels = matrix["labels"]
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels,
               yticklabels=labels, xlabel="predicted", ylabel="actual", title=ROLES[role][0])
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=13,
                    color="white" if n > counts.max() / 2 else "black")
    figure.suptitle("Confusion matrix on the test split")
    return figure


def write_plots(scored: dict[str, Scores], test_rows: int, output_dir: Path) -> dict[str, str]:
    """roc.png, confusion_matrix.png and curves.json in output_dir; returns their names."""
    data = curves(scored)
    (output_dir / PLOT_FILES["curves"]).write_text(json.dumps(data) + "\n")
    save_png(roc_figure(data["roc"], test_rows), output_dir / PLOT_FILES["roc"])
    save_png(confusion_figure(data["confusion_matrix"]),
             output_dir / PLOT_FILES["confusion_matrix"])
    return dict(PLOT_FILES)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    test = read_test(args.test_dir)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        challenger = load_model(args.model_dir, Path(tmp), "challenger")
        challenger_scores = score(challenger, test, "challenger")
        scored = {"challenger": challenger_scores}
        champion_metrics, champion_error = None, None
        if is_empty(args.champion_dir):
            print("no champion model: scoring the challenger only", flush=True)
        else:
            try:
                champion = load_model(args.champion_dir, Path(tmp), "champion")
                scored["champion"] = score(champion, test, "champion")
                champion_metrics = scored["champion"].metrics
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
    result.update(plots={}, plots_error=None)
    try:
        result["plots"] = write_plots(scored, len(test), args.output_dir)
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
