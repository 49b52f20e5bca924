"""Train a tabular model: the training step (a SageMaker Training job).

Binary, multiclass or regression; numeric and text features, with missing values. The
feature handling (imputation, scaling, one-hot or native categorical encoding) is learned on
the train split only and saved with the model as one scikit-learn Pipeline, so evaluation
and serving apply exactly what training learned. Class labels may be text: the model learns
class indices and model.json keeps the labels, so the endpoint answers with them.

Run the way the sagemaker-training toolkit runs a script: channels come from
SM_CHANNEL_<NAME> (train, optional validation, optional schema: the preprocess step's
schema.json with the problem type, classes and column kinds), hyperparameters from SM_HPS or
input/config/hyperparameters.json (where SageMaker stores every value as a string), and the
model goes to SM_MODEL_DIR. Command-line arguments, which the toolkit also passes, are
ignored. On error the reason goes to {base}/output/failure, exit code 1.
"""

from __future__ import annotations

import json
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
from hyperparameters import PROBLEMS, HyperparameterError, decode, resolve
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, r2_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

MISSING_CATEGORY = "__missing__"  # what an empty text cell becomes before one-hot encoding
CATEGORIES_LISTED = 100  # categories per column written into model.json


class DataError(Exception):
    """An expected problem with the data or hyperparameters; its message is the failure reason."""


@dataclass(frozen=True)
class Schema:
    """What the preprocess step found: the problem, the classes, each feature's kind."""

    label: str
    problem: str
    numeric: list[str]
    categorical: list[str]
    classes: list[Any] | None
    input_columns: list[str]
    dropped: dict[str, str]
    missing_values: list[str]

    @property
    def features(self) -> list[str]:
        return [c for c in self.input_columns if c in self.numeric or c in self.categorical]


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def read_hyperparameters() -> dict[str, Any]:
    if "SM_HPS" in os.environ:
        raw = json.loads(os.environ["SM_HPS"] or "{}")
    else:
        path = base_dir() / "input" / "config" / "hyperparameters.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(raw, dict):
        raise DataError("Hyperparameters must be a JSON object of name -> value.")
    return raw


def channel_dir(name: str) -> tuple[Path, bool]:
    """The channel's directory, and whether the job configured it explicitly."""
    env = f"SM_CHANNEL_{name.upper()}"
    if env in os.environ:
        return Path(os.environ[env]), True
    return base_dir() / "input" / "data" / name, False


def csv_files(name: str) -> list[Path] | None:
    """The CSV files of a channel; None for an absent optional channel."""
    path, explicit = channel_dir(name)
    files = sorted(path.glob("*.csv")) if path.is_dir() else []
    if not files:
        if name != "train" and not explicit:
            return None
        raise DataError(
            f"The {name} channel ({path}) holds no .csv files. Check the {name} input of the job."
        )
    return files


def read_schema(label: str, hps: dict[str, Any], train_files: list[Path]) -> Schema:
    """The schema channel's schema.json, or (without one) kinds read off the train data."""
    path, _ = channel_dir("schema")
    found = sorted(path.glob("*.json")) if path.is_dir() else []
    if found:
        info = json.loads(found[0].read_text())
        kinds = {c["name"]: c["kind"] for c in info.get("columns", [])}
        features = list(info["feature_columns"])
        if info.get("label_column", label) != label:
            raise DataError(f"The schema is for label '{info['label_column']}' but the "
                            f"hyperparameters say '{label}'.")
        return Schema(label=label, problem=info["problem"],
                      numeric=[c for c in features if kinds.get(c) == "numeric"],
                      categorical=[c for c in features if kinds.get(c) != "numeric"],
                      classes=info.get("classes"), input_columns=list(info["input_columns"]),
                      dropped=dict(info.get("dropped_columns") or {}),
                      missing_values=list(info.get("missing_values") or []))
    problem = decode(hps.get("problem"))
    if problem not in PROBLEMS:
        raise DataError("No schema channel and no 'problem' hyperparameter: give the preprocess "
                        f"step's schema.json as the schema channel, or set problem to one of "
                        f"{', '.join(PROBLEMS)}.")
    head = pd.read_csv(train_files[0], nrows=1000)
    if label not in head.columns:
        raise missing_label("train", label, list(head.columns))
    columns = [str(c) for c in head.columns if c != label]
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(head[c])]
    return Schema(label=label, problem=problem, numeric=numeric,
                  categorical=[c for c in columns if c not in numeric], classes=None,
                  input_columns=columns, dropped={}, missing_values=[])


def missing_label(name: str, label: str, columns: list[str]) -> DataError:
    return DataError(f"The {name} data has no label column '{label}'. Columns found: "
                     f"{', '.join(map(str, columns))}. Set label_column to one of them.")


def read_frame(name: str, files: list[Path], schema: Schema) -> pd.DataFrame:
    """A split as a frame: numeric features float64 (NaN for missing or infinite), text
    features object (NaN for missing), the label as text."""
    try:
        frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
                           for f in files], ignore_index=True)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"Could not read the {name} channel as CSV: {e}") from None
    if schema.label not in frame.columns:
        raise missing_label(name, schema.label, list(frame.columns))
    missing = [c for c in schema.features if c not in frame.columns]
    if missing:
        raise DataError(f"The {name} data lacks feature column(s) {', '.join(missing)} that the "
                        "schema lists. All splits must share the same columns.")
    if frame.empty:
        raise DataError(f"The {name} channel has a header but no rows.")
    return to_model_frame(frame, schema)


def to_model_frame(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for column in schema.features:
        values = frame[column]
        if column in schema.numeric:
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            out[column] = numbers.where(np.isfinite(numbers))
        else:
            out[column] = values.astype(object).where(values.notna(), np.nan)
    out[schema.label] = frame[schema.label]
    return out


def classes_of(labels: pd.Series) -> list[Any]:
    """The distinct labels, numbers as numbers (1 and 1.0 are one class), sorted."""
    present = labels.dropna().astype(str).str.strip()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(numbers) and numbers.notna().all():
        return sorted({int(v) if float(v).is_integer() else float(v) for v in numbers})
    return sorted(set(present))


def encode_labels(labels: pd.Series, classes: list[Any], name: str) -> np.ndarray:
    """Class indices of the label texts ("1" and "1.0" are the same numeric class)."""
    numeric = all(isinstance(c, int | float) for c in classes)
    if numeric:
        keys = pd.to_numeric(labels, errors="coerce").astype("float64")
        index = {float(c): i for i, c in enumerate(classes)}
    else:
        keys = labels.astype(str).str.strip()
        index = {str(c): i for i, c in enumerate(classes)}
    codes = keys.map(index)
    if codes.isna().any():
        unknown = sorted({str(v) for v in labels[codes.isna()]})[:10]
        raise DataError(f"The {name} data has label value(s) {', '.join(unknown)} that are not "
                        f"among the classes {classes[:20]}.")
    return codes.to_numpy(dtype=np.int64)


def label_values(frame: pd.DataFrame, schema: Schema, name: str) -> np.ndarray:
    if schema.problem == "regression":
        values = pd.to_numeric(frame[schema.label], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.argmin(np.isfinite(values)))
            raise DataError(f"The {name} data's label '{schema.label}' is not a finite number "
                            f"on data row {row + 1} ('{frame[schema.label].iloc[row]}').")
        return values
    assert schema.classes is not None
    return encode_labels(frame[schema.label], schema.classes, name)


def one_hot(max_categories: int) -> Pipeline:
    return Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        ("encode", OneHotEncoder(handle_unknown="infrequent_if_exist",
                                 max_categories=max_categories)),
    ])


def features_step(schema: Schema, model: str, max_categories: int) -> ColumnTransformer:
    """How raw columns become model inputs, per model family."""
    numeric: Any
    categorical: Any
    if model == "hist_gradient_boosting":  # missing values and categories natively
        numeric = "passthrough"
        categorical = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                     encoded_missing_value=np.nan,
                                     max_categories=min(max_categories, 254))
    elif model == "xgboost":  # missing values natively; dense, or XGBoost reads 0 as missing
        numeric = "passthrough"
        categorical = one_hot(max_categories)
    else:
        impute = SimpleImputer(strategy="median", add_indicator=True)
        numeric = (Pipeline([("impute", impute), ("scale", StandardScaler())])
                   if model == "linear" else impute)
        categorical = one_hot(max_categories)
    parts = []
    if schema.numeric:
        parts.append(("numeric", numeric, schema.numeric))
    if schema.categorical:
        parts.append(("categorical", categorical, schema.categorical))
    return ColumnTransformer(parts, sparse_threshold=0.0 if model == "xgboost" else 0.3)


def estimator(hp: dict[str, Any], problem: str, schema: Schema) -> Any:
    classify = problem != "regression"
    seed = hp["seed"]
    model = hp["model"]
    if model == "linear":
        if classify:
            return LogisticRegression(C=hp["C"], max_iter=hp["max_iter"], random_state=seed)
        return Ridge(alpha=hp["alpha"], max_iter=hp["max_iter"], random_state=seed)
    if model == "random_forest":
        kind = RandomForestClassifier if classify else RandomForestRegressor
        return kind(n_estimators=hp["n_estimators"], max_depth=hp["max_depth"],
                    min_samples_leaf=hp["min_samples_leaf"], random_state=seed, n_jobs=-1)
    if model == "hist_gradient_boosting":
        kind = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        categorical = [False] * len(schema.numeric) + [True] * len(schema.categorical)
        return kind(max_iter=hp["max_iter"], learning_rate=hp["learning_rate"],
                    max_depth=hp["max_depth"], max_leaf_nodes=hp["max_leaf_nodes"],
                    min_samples_leaf=hp["min_samples_leaf"],
                    l2_regularization=hp["l2_regularization"],
                    categorical_features=categorical if any(categorical) else None,
                    random_state=seed)
    import xgboost

    kind = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
    return kind(n_estimators=hp["n_estimators"], max_depth=hp["max_depth"],
                learning_rate=hp["learning_rate"], subsample=hp["subsample"],
                colsample_bytree=hp["colsample_bytree"], min_child_weight=hp["min_child_weight"],
                reg_lambda=hp["reg_lambda"], tree_method="hist", random_state=seed)


def validation_metrics(model: Pipeline, frame: pd.DataFrame, y: np.ndarray,
                       schema: Schema) -> dict[str, float | None]:
    """A few metrics on the validation split (the evaluate step scores the test split)."""
    features = frame[schema.features]
    if schema.problem == "regression":
        predicted = model.predict(features)
        return {"rmse": float(np.sqrt(np.mean((predicted - y) ** 2))),
                "r2": float(r2_score(y, predicted)) if len(y) > 1 else None}
    proba = model.predict_proba(features)
    predicted = proba.argmax(axis=1)
    metrics: dict[str, float | None] = {"accuracy": float(accuracy_score(y, predicted))}
    if schema.problem == "binary":
        both = len(np.unique(y)) == 2
        metrics["roc_auc"] = float(roc_auc_score(y == 1, proba[:, 1])) if both else None
    else:
        metrics["macro_f1"] = float(f1_score(y, predicted, average="macro",
                                             labels=range(proba.shape[1])))
    return metrics


def feature_schema(model: Pipeline, schema: Schema) -> list[dict[str, Any]]:
    """Name, kind and (text columns) the categories seen in training, per feature."""
    seen: dict[str, list[str]] = {}
    transformer = model.named_steps["features"]
    if "categorical" in transformer.named_transformers_:
        encoder = transformer.named_transformers_["categorical"]
        if isinstance(encoder, Pipeline):
            encoder = encoder.named_steps["encode"]
        for column, categories in zip(schema.categorical, encoder.categories_, strict=True):
            seen[column] = [str(c) for c in categories if c == c and c != MISSING_CATEGORY]
    out = []
    for column in schema.features:
        entry: dict[str, Any] = {"name": column,
                                 "kind": "numeric" if column in schema.numeric else "categorical"}
        if column in seen:
            entry["categories"] = seen[column][:CATEGORIES_LISTED]
            entry["category_count"] = len(seen[column])
        out.append(entry)
    return out


def train() -> dict[str, Any]:
    given = read_hyperparameters()
    label = str(given.get("label_column", "target"))
    train_files = csv_files("train")
    assert train_files is not None
    schema = read_schema(label, given, train_files)
    try:
        hp = resolve(given, schema.problem)
    except HyperparameterError as e:
        raise DataError(str(e)) from None
    print(f"hyperparameters: {json.dumps(hp, sort_keys=True)}", flush=True)
    frame = read_frame("train", train_files, schema)
    if schema.problem != "regression" and schema.classes is None:
        schema = Schema(**{**schema.__dict__, "classes": classes_of(frame[schema.label])})
    y = label_values(frame, schema, "train")
    if schema.problem != "regression":
        assert schema.classes is not None
        present = np.unique(y)
        if len(present) < len(schema.classes):
            absent = [schema.classes[i] for i in range(len(schema.classes)) if i not in present]
            raise DataError(f"The train split lacks class(es) {absent[:10]}; every class needs "
                            "rows in the train split. Add rows of those classes.")
    print(f"training {hp['model']} ({schema.problem}) on {len(frame)} rows, "
          f"{len(schema.numeric)} numeric and {len(schema.categorical)} text features", flush=True)
    model = Pipeline([("features", features_step(schema, hp["model"], hp["max_categories"])),
                      ("model", estimator(hp, schema.problem, schema))])
    model.fit(frame[schema.features], y)
    if hp["model"] == "random_forest":
        model.named_steps["model"].set_params(n_jobs=None)  # serving: one request, no pool
    metrics = None
    validation_files = csv_files("validation")
    if validation_files is not None:
        validation = read_frame("validation", validation_files, schema)
        metrics = validation_metrics(model, validation,
                                     label_values(validation, schema, "validation"), schema)
        for name, value in metrics.items():
            if value is not None:
                print(f"validation:{name}={value:.4f};", flush=True)
    return write_model(model, hp, schema, metrics)


def write_model(model: Pipeline, hp: dict[str, Any], schema: Schema,
                metrics: dict[str, Any] | None) -> dict[str, Any]:
    model_dir = Path(os.environ.get("SM_MODEL_DIR", base_dir() / "model"))
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    info = {
        "problem": schema.problem,
        "label_column": schema.label,
        "classes": schema.classes,
        "feature_columns": schema.features,
        "features": feature_schema(model, schema),
        "input_columns": schema.input_columns,
        "dropped_columns": schema.dropped,
        "missing_values": schema.missing_values,
        "unseen_categories": ("a text value not seen in training is treated like a rare "
                              "category (one-hot) or as missing (hist_gradient_boosting)"),
        "model": hp["model"],
        "hyperparameters": hp,
        "validation_metrics": metrics,
        "sklearn_version": sklearn.__version__,
    }
    if hp["model"] == "xgboost":
        import xgboost

        info["xgboost_version"] = xgboost.__version__
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
