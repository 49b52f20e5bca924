"""Inference handlers for the tabular model, in the SageMaker inference toolkit's shape.

serve.py (or any server that follows the toolkit's conventions) calls model_fn(model_dir)
once, then per request input_fn -> predict_fn -> output_fn.

Requests: text/csv rows (one value per feature, or per column of the training data without
the label, in the data's order; an empty cell is a missing value) or application/json
(``{"instances": [...]}`` or a bare list) of objects ``{column: value}`` (null for missing;
extra keys, such as an ID or the label, are ignored) or of positional lists. A text value
not seen in training is handled the way the model learned to (a rare category, or missing),
never an error. Answers: classification ``{"label", "probability" (of that label),
"probabilities" (per class)}``, regression ``{"value"}``; CSV: ``label,probability`` or
``value`` per row.

Request problems raise RequestError, whose `status` (4xx) the server sends back with the
message, so a caller learns what is wrong with the payload instead of getting a 500.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
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
    problem: str  # binary | multiclass | regression
    classes: list[Any]
    features: list[str]
    numeric: list[bool]  # per feature
    input_columns: list[str]  # every column of the training data but the label
    positions: list[int]  # where each feature sits among input_columns
    missing: frozenset[str]
    booleans: dict[str, dict[str, str]]  # text feature -> {"true": "True", ...} as trained


class CsvRows(list):  # type: ignore[type-arg]
    """Rows of a CSV body, each a list of cells as text: errors name a 'row', not an
    'instance' as for JSON."""


@dataclass(frozen=True)
class Predictions:
    labels: list[Any] | None = None
    probabilities: np.ndarray | None = None  # rows x classes
    classes: list[Any] | None = None  # the probabilities' columns
    values: list[float] | None = None


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
    # models trained before sagepipe knew problem types: binary, numeric features
    features = info.get("features") or [{"name": c, "kind": "numeric"}
                                        for c in info["feature_columns"]]
    names = [f["name"] for f in features]
    inputs = info.get("input_columns") or names
    booleans = {}
    for feature in features:
        seen = {str(c).lower(): str(c) for c in feature.get("categories") or []}
        if "true" in seen or "false" in seen:
            booleans[feature["name"]] = seen
    problem = info.get("problem", "binary")
    classes = [] if problem == "regression" else (info.get("classes") or
                                                  np.asarray(estimator.classes_).tolist())
    model = Model(estimator, problem, classes, names,
                  [f["kind"] == "numeric" for f in features], list(inputs),
                  [inputs.index(n) for n in names],
                  frozenset(info.get("missing_values") or ("",)), booleans)
    predict_fn([[None] * len(names)], model)  # warm up before the first request
    return model


def input_fn(request_body: bytes, content_type: str) -> np.ndarray | list[Any]:
    """Parse a request: rows (a float array, or lists of cells) or a list of objects."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in SUPPORTED:
        raise RequestError(
            f"Unsupported Content-Type '{content_type}'; send {' or '.join(SUPPORTED)}.", 415
        )
    if not request_body.strip():
        raise RequestError(f"Empty request body; send {media} rows of feature values.")
    return _parse_csv(request_body) if media == CSV else _parse_json(request_body)


def _parse_csv(body: bytes) -> np.ndarray | CsvRows:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("The CSV body is not valid UTF-8 text.") from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        # numpy's C parser takes half the time of a Python split per value (100-row
        # batches, bench/); what it refuses (text, empty cells, quotes) goes the long way
        return np.loadtxt(lines, delimiter=",", comments=None, dtype=np.float64, ndmin=2)
    except ValueError:
        pass
    rows = CsvRows(csv.reader(lines))
    for number, row in enumerate(rows, start=1):
        if len(row) != len(rows[0]):
            raise RequestError(
                f"CSV row {number} has {len(row)} values but row 1 has {len(rows[0])}; "
                "every row needs one value per feature."
            )
    return rows


def _parse_json(body: bytes) -> list[Any]:
    try:
        payload = json.loads(body)
    except ValueError as e:
        raise RequestError(f"Invalid JSON: {e}.") from None
    instances = payload.get("instances") if isinstance(payload, dict) else payload
    if not isinstance(instances, list) or not instances:
        raise RequestError(
            'JSON must be {"instances": [...]} or a list of rows, with at least one instance.'
        )
    for number, row in enumerate(instances, start=1):
        if not isinstance(row, list | dict):
            raise RequestError(
                f"Instance {number} is {type(row).__name__}; each instance must be an object "
                "of column name -> value or a list of feature values."
            )
    return instances


def _number(value: Any, model: Model, name: str, where: str) -> float:
    if value is None or (isinstance(value, str) and (value in model.missing or not value.strip())):
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"Value {json.dumps(value)} for '{name}' in {where} is not a number; "
                           "send a number, or null for a missing value.")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"Non-numeric value '{value}' for '{name}' in {where}; send a "
                           "number, or null (an empty CSV cell) for a missing value.") from None
    return number if math.isfinite(number) else math.nan


def _text(value: Any, model: Model, name: str, where: str) -> Any:
    if value is None or (isinstance(value, str) and (value in model.missing or not value.strip())):
        return np.nan
    if isinstance(value, bool):
        return model.booleans.get(name, {}).get(str(value).lower(), str(value).lower())
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a JSON 3.0 means the category "3"
    if isinstance(value, list | dict):
        raise RequestError(f"Value {json.dumps(value)[:40]} for '{name}' in {where} is "
                           f"{type(value).__name__}; send text, a number or null.")
    return str(value)


def _row_cells(row: Any, number: int, model: Model) -> list[Any]:
    """One instance's values, in feature order."""
    if isinstance(row, dict):
        lacking = [n for n in model.features if n not in row]
        if lacking:
            raise RequestError(
                f"Instance {number} lacks feature(s) {', '.join(lacking[:5])}"
                + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
                + "; send null for a missing value.")
        return [row[n] for n in model.features]
    if len(row) == len(model.features):
        return list(row)
    if len(row) == len(model.input_columns):
        return [row[i] for i in model.positions]
    expected = str(len(model.features))
    if len(model.input_columns) != len(model.features):
        expected += f" (one per feature) or {len(model.input_columns)} (one per data column)"
    raise RequestError(f"Expected {expected} values per row, got {len(row)} in row {number}.")


def _frame(data: np.ndarray | list[Any], model: Model) -> pd.DataFrame:
    """The request as the frame the model's pipeline was trained on."""
    if isinstance(data, np.ndarray) and all(model.numeric):
        width = data.shape[1]
        if width == len(model.input_columns) and width != len(model.features):
            data = data[:, model.positions]
        elif width != len(model.features):
            _row_cells([0] * width, 1, model)  # raises with the expected counts
        return pd.DataFrame(np.where(np.isfinite(data), data, np.nan), columns=model.features)
    rows = data.tolist() if isinstance(data, np.ndarray) else data
    columns: list[list[Any]] = [[] for _ in model.features]
    for number, row in enumerate(rows, start=1):
        cells = _row_cells(row, number, model)
        where = f"row {number}" if isinstance(data, np.ndarray | CsvRows) else f"instance {number}"
        for i, (name, value) in enumerate(zip(model.features, cells, strict=True)):
            convert = _number if model.numeric[i] else _text
            columns[i].append(convert(value, model, name, where))
    return pd.DataFrame({name: pd.Series(values, dtype="float64" if model.numeric[i]
                                         else object)
                         for i, (name, values) in enumerate(zip(model.features, columns,
                                                                strict=True))})


def predict_fn(data: np.ndarray | list[Any], model: Model) -> Predictions:
    """Per row: the label and class probabilities, or the predicted value."""
    frame = _frame(data, model)
    # inputs are converted (infinities made missing) by _frame: sklearn need not check again.
    # Its config is thread-local, and every request runs in a thread of its own.
    with sklearn.config_context(assume_finite=True):
        if model.problem == "regression":
            return Predictions(values=np.asarray(model.estimator.predict(frame),
                                                 dtype=np.float64).tolist())
        proba = np.asarray(model.estimator.predict_proba(frame), dtype=np.float64)
    labels = [model.classes[i] for i in proba.argmax(axis=1)]
    return Predictions(labels=labels, probabilities=proba, classes=model.classes)


def output_fn(prediction: Predictions, accept: str) -> tuple[bytes, str]:
    """Serialise as JSON (the default, also for */*) or CSV lines."""
    for option in (accept or JSON).split(","):
        media = option.split(";")[0].strip().lower()
        if media in (JSON, "application/*", "*/*", ""):
            return json.dumps({"predictions": _records(prediction)}).encode(), JSON
        if media in (CSV, "text/*"):
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            if prediction.values is not None:
                writer.writerows([v] for v in prediction.values)
            else:
                assert prediction.labels is not None and prediction.probabilities is not None
                writer.writerows(zip(prediction.labels,
                                     prediction.probabilities.max(axis=1).tolist(), strict=True))
            return out.getvalue().encode(), CSV
    raise RequestError(f"Unsupported Accept '{accept}'; ask for {' or '.join(SUPPORTED)}.", 406)


def _records(prediction: Predictions) -> list[dict[str, Any]]:
    if prediction.values is not None:
        return [{"value": v} for v in prediction.values]
    assert prediction.labels is not None and prediction.probabilities is not None
    names = [str(c) for c in prediction.classes or []]
    return [{"label": label, "probability": max(row),
             "probabilities": dict(zip(names, row, strict=True))}
            for label, row in zip(prediction.labels, prediction.probabilities.tolist(),
                                  strict=True)]
