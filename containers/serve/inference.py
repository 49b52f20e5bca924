"""Inference handlers for the example classifier, in the SageMaker inference toolkit's shape.

serve.py (or any server that follows the toolkit's conventions) calls
model_fn(model_dir) once, then per request input_fn -> predict_fn -> output_fn.
Request problems raise RequestError, whose `status` (4xx) the server sends back with the
message, so a caller learns what is wrong with the payload instead of getting a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

CSV = "text/csv"
JSON = "application/json"
SUPPORTED = (CSV, JSON)


class RequestError(Exception):
    """A problem with the request; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Model:
    estimator: Any
    feature_columns: list[str]
    classes: list[Any]


@dataclass(frozen=True)
class Predictions:
    labels: list[Any]
    probabilities: list[float]


def model_fn(model_dir: str) -> Model:
    """Load model.joblib and model.json (SageMaker extracts model.tar.gz into model_dir)."""
    directory = Path(model_dir)
    missing = [n for n in ("model.joblib", "model.json") if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{directory} lacks {' and '.join(missing)}; expected the training job's output."
        )
    info = json.loads((directory / "model.json").read_text())
    estimator = joblib.load(directory / "model.joblib")
    features = list(info["feature_columns"])
    # Inputs are checked for finiteness here, so sklearn need not check again per request.
    sklearn.set_config(assume_finite=True)
    model = Model(estimator, features, np.asarray(estimator.classes_).tolist())
    predict_fn(np.zeros((1, len(features))), model)  # warm up before the first request
    return model


def input_fn(request_body: bytes, content_type: str) -> np.ndarray | list[dict[str, Any]]:
    """Parse a request: a 2-D float array, or (JSON objects) a list of feature dicts."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in SUPPORTED:
        raise RequestError(
            f"Unsupported Content-Type '{content_type}'; send {' or '.join(SUPPORTED)}.", 415
        )
    if not request_body.strip():
        raise RequestError(f"Empty request body; send {media} rows of feature values.")
    return _parse_csv(request_body) if media == CSV else _parse_json(request_body)


def _parse_csv(body: bytes) -> np.ndarray:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("The CSV body is not valid UTF-8 text.") from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        # numpy's C parser takes half the time of a Python split per value (100-row
        # batches, bench/); what it refuses goes through the checks below, which accept
        # what float() accepts and say exactly what is wrong with the rest
        return np.loadtxt(lines, delimiter=",", comments=None, dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    rows = [line.split(",") for line in lines]
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise RequestError(
                f"CSV row {number} has {len(row)} values but row 1 has {width}; "
                "every row needs one value per feature."
            )
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for number, row in enumerate(rows, start=1):
        for column, value in enumerate(row, start=1):
            try:
                float(value)
            except ValueError:
                raise RequestError(
                    f"Non-numeric value '{value.strip()}' in CSV row {number}, column {column}."
                ) from None
    raise RequestError("The CSV body holds values that are not numbers.")


def _parse_json(body: bytes) -> np.ndarray | list[dict[str, Any]]:
    try:
        payload = json.loads(body)
    except ValueError as e:
        raise RequestError(f"Invalid JSON: {e}.") from None
    instances = payload.get("instances") if isinstance(payload, dict) else payload
    if not isinstance(instances, list) or not instances:
        raise RequestError(
            'JSON must be {"instances": [...]} or a list of rows, with at least one instance.'
        )
    if all(isinstance(row, dict) for row in instances):
        return instances
    for number, row in enumerate(instances, start=1):
        if not isinstance(row, list):
            raise RequestError(
                f"Instance {number} is {type(row).__name__}; each instance must be a list "
                "of feature values or an object of feature name -> value."
            )
        for column, value in enumerate(row, start=1):
            if type(value) not in (int, float):
                raise RequestError(
                    f"Non-numeric value {json.dumps(value)} in instance {number}, "
                    f"position {column}."
                )
        if len(row) != len(instances[0]):
            raise RequestError(
                f"Instance {number} has {len(row)} values but instance 1 has "
                f"{len(instances[0])}; every instance needs one value per feature."
            )
    return np.array(instances, dtype=np.float64)


def _from_dicts(instances: list[dict[str, Any]], features: list[str]) -> np.ndarray:
    rows = []
    for number, instance in enumerate(instances, start=1):
        missing = [f for f in features if f not in instance]
        if missing:
            raise RequestError(
                f"Instance {number} lacks feature(s) {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                + "."
            )
        row = [instance[f] for f in features]
        for name, value in zip(features, row, strict=True):
            if type(value) not in (int, float):
                raise RequestError(
                    f"Non-numeric value {json.dumps(value)} for '{name}' in instance {number}."
                )
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def predict_fn(data: np.ndarray | list[dict[str, Any]], model: Model) -> Predictions:
    """Probability of classes[1] and the predicted label, per row."""
    features = data if isinstance(data, np.ndarray) else _from_dicts(data, model.feature_columns)
    expected = len(model.feature_columns)
    if features.shape[1] != expected:
        raise RequestError(
            f"Expected {expected} values per row (one per feature), got {features.shape[1]}."
        )
    if not np.isfinite(features).all():
        raise RequestError("Feature values must be finite numbers (no NaN or infinity).")
    proba = model.estimator.predict_proba(features)
    labels = np.asarray(model.classes, dtype=object)[proba.argmax(axis=1)]
    return Predictions(labels.tolist(), proba[:, 1].tolist())


def output_fn(prediction: Predictions, accept: str) -> tuple[bytes, str]:
    """Serialise as JSON (the default, also for */*) or CSV lines of label,probability."""
    for option in (accept or JSON).split(","):
        media = option.split(";")[0].strip().lower()
        if media in (JSON, "application/*", "*/*", ""):
            rows = zip(prediction.labels, prediction.probabilities, strict=True)
            body = {"predictions": [{"label": lab, "probability": p} for lab, p in rows]}
            return json.dumps(body).encode(), JSON
        if media in (CSV, "text/*"):
            lines = (
                f"{lab},{p!r}\n"
                for lab, p in zip(prediction.labels, prediction.probabilities, strict=True)
            )
            return "".join(lines).encode(), CSV
    raise RequestError(f"Unsupported Accept '{accept}'; ask for {' or '.join(SUPPORTED)}.", 406)
