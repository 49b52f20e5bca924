"""Train the example binary classifier: the training step (a SageMaker Training job).

Run the way the sagemaker-training toolkit runs a script: channels come from
SM_CHANNEL_<NAME>, hyperparameters from SM_HPS or input/config/hyperparameters.json
(where SageMaker stores every value as a string), and the model goes to SM_MODEL_DIR.
Command-line arguments, which the toolkit also passes, are ignored: the environment is
the one source of truth. On error the reason goes to {base}/output/failure, exit code 1.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODELS = ("logistic_regression", "random_forest", "gradient_boosting")
DEFAULTS: dict[str, Any] = {
    "label_column": "target",
    "model": "logistic_regression",
    "C": 1.0,
    "max_iter": 1000,
    "n_estimators": 100,
    "max_depth": None,
    "learning_rate": 0.1,
    "seed": 42,
}


class DataError(Exception):
    """An expected problem with the data or hyperparameters; its message is the failure reason."""


@dataclass(frozen=True)
class Dataset:
    features: np.ndarray
    labels: np.ndarray
    rows: int


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def decode(value: Any) -> Any:
    """A hyperparameter as SageMaker stores it ("1.0", "100", "true", '"x"') -> a Python value."""
    if not isinstance(value, str):
        return value
    if value in ("True", "False"):
        return value == "True"
    try:
        return json.loads(value)
    except ValueError:
        return value


def read_hyperparameters() -> dict[str, Any]:
    if "SM_HPS" in os.environ:
        raw = json.loads(os.environ["SM_HPS"] or "{}")
    else:
        path = base_dir() / "input" / "config" / "hyperparameters.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(raw, dict):
        raise DataError("Hyperparameters must be a JSON object of name -> value.")
    return {k: decode(v) for k, v in raw.items() if not k.startswith("sagemaker_")}


def _number(name: str, value: Any, kind: type) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
        value = int(value) if ok else value
    if not ok or value <= 0:
        what = "a whole number" if kind is int else "a number"
        raise DataError(f"Hyperparameter {name} must be {what} greater than 0; got {value!r}.")
    return kind(value)


def resolve_hyperparameters(given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given values, each checked; unknown names are errors."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise DataError(
            f"Unknown hyperparameter(s): {', '.join(unknown)}. "
            f"Allowed: {', '.join(sorted(DEFAULTS, key=str.lower))}."
        )
    hp = {**DEFAULTS, **given}
    if hp["model"] not in MODELS:
        raise DataError(f"Hyperparameter model is {hp['model']!r}; allowed: {', '.join(MODELS)}.")
    if not isinstance(hp["label_column"], str | int) or isinstance(hp["label_column"], bool):
        raise DataError(
            f"Hyperparameter label_column must be a column name; got {hp['label_column']!r}."
        )
    hp["label_column"] = str(hp["label_column"])
    for name in ("C", "learning_rate"):
        hp[name] = _number(name, hp[name], float)
    for name in ("max_iter", "n_estimators"):
        hp[name] = _number(name, hp[name], int)
    if hp["max_depth"] not in (None, "", "None", "none"):
        hp["max_depth"] = _number("max_depth", hp["max_depth"], int)
    else:
        hp["max_depth"] = None
    seed = hp["seed"]
    number = isinstance(seed, int | float) and not isinstance(seed, bool) and math.isfinite(seed)
    whole = number and float(seed).is_integer()
    if not whole or not 0 <= seed < 2**32:
        raise DataError(f"Hyperparameter seed must be a whole number in [0, 2**32); got {seed!r}.")
    hp["seed"] = int(seed)
    return hp


def channel_dir(name: str) -> tuple[Path, bool]:
    """The channel's directory, and whether the job configured it explicitly."""
    env = f"SM_CHANNEL_{name.upper()}"
    if env in os.environ:
        return Path(os.environ[env]), True
    return base_dir() / "input" / "data" / name, False


def read_channel(name: str, label: str, features: list[str] | None = None) -> pd.DataFrame | None:
    """All CSV files of a channel as one frame; None for an absent optional channel."""
    path, explicit = channel_dir(name)
    files = sorted(path.glob("*.csv")) if path.is_dir() else []
    if not files:
        if name != "train" and not explicit:
            return None
        raise DataError(
            f"The {name} channel ({path}) holds no .csv files. Check the {name} input of the job."
        )
    try:
        frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"Could not read the {name} channel as CSV: {e}") from None
    if label not in frame.columns:
        raise DataError(
            f"The {name} data has no label column '{label}'. Columns found: "
            f"{', '.join(map(str, frame.columns))}. Set label_column to one of them."
        )
    wanted = features if features is not None else [c for c in frame.columns if c != label]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(
            f"The {name} data lacks feature column(s) {', '.join(missing)} that the train "
            "data has. All splits must share the same columns."
        )
    if not wanted:
        raise DataError(f"The {name} data has only the label column '{label}'; no features.")
    if frame.empty:
        raise DataError(f"The {name} channel has a header but no rows.")
    for column in [*wanted, label]:
        if frame[column].isna().any():
            row = int(frame[column].isna().to_numpy().argmax())
            raise DataError(
                f"Column '{column}' of the {name} data has a missing value (data row {row + 1})."
            )
    for column in wanted:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            bad = pd.to_numeric(frame[column], errors="coerce").isna().to_numpy()
            row = int(bad.argmax())
            raise DataError(
                f"Column '{column}' of the {name} data has a non-numeric value "
                f"'{frame[column].iloc[row]}' (data row {row + 1}). Features must be numbers."
            )
    return frame[[*wanted, label]]


def to_dataset(frame: pd.DataFrame, label: str) -> Dataset:
    features = frame.drop(columns=[label]).to_numpy(dtype=np.float64)
    if not np.isfinite(features).all():
        raise DataError("The data holds infinite feature values; replace or drop them.")
    return Dataset(features, frame[label].to_numpy(), len(frame))


def build_model(hp: dict[str, Any]) -> ClassifierMixin:
    if hp["model"] == "random_forest":
        return RandomForestClassifier(
            n_estimators=hp["n_estimators"],
            max_depth=hp["max_depth"],
            random_state=hp["seed"],
            n_jobs=-1,
        )
    if hp["model"] == "gradient_boosting":
        return GradientBoostingClassifier(
            n_estimators=hp["n_estimators"],
            learning_rate=hp["learning_rate"],
            max_depth=hp["max_depth"] or 3,
            random_state=hp["seed"],
        )
    logistic = LogisticRegression(C=hp["C"], max_iter=hp["max_iter"], random_state=hp["seed"])
    return Pipeline([("scale", StandardScaler()), ("model", logistic)])


def score(model: Any, data: Dataset) -> dict[str, float | None]:
    """Binary metrics with classes_[1] as the positive class."""
    classes = model.classes_
    proba = model.predict_proba(data.features)
    predicted = classes[proba.argmax(axis=1)]
    both = len(np.unique(data.labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(data.labels == classes[1], proba[:, 1])) if both else None,
        "accuracy": float(accuracy_score(data.labels, predicted)),
        "f1": float(f1_score(data.labels, predicted, pos_label=classes[1])),
        "log_loss": float(log_loss(data.labels, proba, labels=classes)),
    }


def train() -> dict[str, Any]:
    hp = resolve_hyperparameters(read_hyperparameters())
    label = hp["label_column"]
    print(f"hyperparameters: {json.dumps(hp, sort_keys=True)}", flush=True)
    train_frame = read_channel("train", label)
    assert train_frame is not None
    features = [str(c) for c in train_frame.columns if c != label]
    train_data = to_dataset(train_frame, label)
    classes = np.unique(train_data.labels)
    if len(classes) != 2:
        raise DataError(
            f"Label column '{label}' of the train data has {len(classes)} distinct value(s) "
            f"({', '.join(map(str, classes[:10]))}); a binary classifier needs exactly two."
        )
    validation_frame = read_channel("validation", label, features)
    print(f"training {hp['model']} on {train_data.rows} rows, {len(features)} features", flush=True)
    model = build_model(hp)
    model.fit(train_data.features, train_data.labels)
    if hp["model"] == "random_forest":
        model.set_params(n_jobs=None)  # one request at a time when serving: no thread pool
    print(f"train:accuracy={score(model, train_data)['accuracy']:.4f};", flush=True)
    metrics = None
    if validation_frame is not None:
        validation = to_dataset(validation_frame, label)
        unseen = set(np.unique(validation.labels)) - set(classes)
        if unseen:
            raise DataError(
                f"The validation data has label value(s) {sorted(map(str, unseen))} "
                "that the train data lacks."
            )
        metrics = score(model, validation)
        for name, value in metrics.items():
            if value is not None:
                print(f"validation:{name}={value:.4f};", flush=True)
    return write_model(model, hp, features, metrics)


def write_model(
    model: Any, hp: dict[str, Any], features: list[str], metrics: dict[str, Any] | None
) -> dict[str, Any]:
    model_dir = Path(os.environ.get("SM_MODEL_DIR", base_dir() / "model"))
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    info = {
        "feature_columns": features,
        "label_column": hp["label_column"],
        "classes": model.classes_.tolist(),
        "model": hp["model"],
        "hyperparameters": hp,
        "validation_metrics": metrics,
        "sklearn_version": sklearn.__version__,
    }
    (model_dir / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"model written to {model_dir}", flush=True)
    return info


def write_failure(reason: str) -> None:
    output = base_dir() / "output"
    output.mkdir(parents=True, exist_ok=True)
    (output / "failure").write_text(reason + "\n", encoding="utf-8")


def main() -> int:
    try:
        train()
    except DataError as e:
        reason = str(e)
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    else:
        return 0
    write_failure(reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
