"""The preprocess, train and evaluate scripts, run as SageMaker runs them: as processes.

Each script gets SAGEMAKER_BASE_DIR in tmp_path (the local runtime's /opt/ml remap) and
its paths on the command line or in SM_* variables, exactly like a job would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"
PREPROCESS = CONTAINERS / "preprocess" / "preprocess.py"
TRAIN = CONTAINERS / "train" / "train.py"
EVALUATE = CONTAINERS / "evaluate" / "evaluate.py"
SPLITS = ("train", "validation", "test")


def breast_cancer() -> pd.DataFrame:
    """sklearn's breast cancer data with snake_case feature names and a 'target' label."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def run(
    script: Path, *args: object, base: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a container script with a clean SageMaker environment rooted at `base`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    clean.update({"SAGEMAKER_BASE_DIR": str(base), **(env or {})})
    cmd = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=120)


def failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


def assert_clean_failure(result: subprocess.CompletedProcess[str], base: Path) -> str:
    """Exit 1 with a short, traceback-free reason in the failure file."""
    assert result.returncode == 1, result.stdout + result.stderr
    reason = failure(base)
    assert "Traceback" not in reason
    assert 0 < len(reason.strip().splitlines()) <= 2
    return reason


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dataset")
    breast_cancer().to_csv(directory / "data.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def splits(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("splits")
    result = run(PREPROCESS, "--input-dir", dataset_dir, "--output-dir", out, base=out / "ml")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def model_dir(splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression trained on the splits, as model.joblib + model.json."""
    base = tmp_path_factory.mktemp("train")
    env = {"SM_CHANNEL_TRAIN": str(splits / "train"), "SM_HPS": "{}"}
    result = run(TRAIN, base=base, env=env)
    assert result.returncode == 0, result.stderr
    return base / "model"


# --- preprocess ---------------------------------------------------------------------------


def preprocess(tmp: Path, input_dir: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    args = ["--input-dir", input_dir, "--output-dir", tmp / "out", *extra]
    return run(PREPROCESS, *args, base=tmp / "ml")


def split_bytes(out: Path) -> dict[str, bytes]:
    return {s: (out / s / f"{s}.csv").read_bytes() for s in SPLITS}


def test_preprocess_writes_splits_with_header_and_schema(dataset_dir: Path, splits: Path) -> None:
    source = (dataset_dir / "data.csv").read_text().splitlines()
    parts = {s: (splits / s / f"{s}.csv").read_text().splitlines() for s in SPLITS}
    assert all(lines[0] == source[0] for lines in parts.values())
    # every input row lands in exactly one split, unchanged
    assert sorted(row for lines in parts.values() for row in lines[1:]) == sorted(source[1:])
    schema = json.loads((splits / "schema" / "schema.json").read_text())
    assert schema["label_column"] == "target"
    assert schema["feature_columns"] == source[0].split(",")[:-1]
    assert schema["classes"] == [0, 1]
    assert schema["input_rows"] == 569
    assert schema["rows"] == {s: len(parts[s]) - 1 for s in SPLITS}
    assert pd.read_csv(splits / "test" / "test.csv")["target"].dtype.kind == "i"


def test_preprocess_honours_fractions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20_000, 3)), columns=["a", "b", "c"])
    frame["target"] = rng.integers(0, 2, len(frame))
    (tmp_path / "in").mkdir()
    frame.to_csv(tmp_path / "in" / "data.csv", index=False)
    result = preprocess(
        tmp_path, tmp_path / "in", "--validation-fraction", 0.2, "--test-fraction", 0.1
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "schema" / "schema.json").read_text())["rows"]
    assert abs(rows["validation"] / 20_000 - 0.2) < 0.02
    assert abs(rows["test"] / 20_000 - 0.1) < 0.02
    assert sum(rows.values()) == 20_000


def test_preprocess_split_is_deterministic_and_independent_of_blocks_and_files(
    dataset_dir: Path, splits: Path, tmp_path: Path
) -> None:
    reference = split_bytes(splits)
    # tiny blocks: dozens of chunks, parsed by several threads
    assert preprocess(tmp_path / "small", dataset_dir, "--block-size", 2048).returncode == 0
    assert split_bytes(tmp_path / "small" / "out") == reference
    # the same rows spread over two files (read in sorted order) split the same way
    lines = (dataset_dir / "data.csv").read_text().splitlines(keepends=True)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "part-1.csv").write_text("".join(lines[:300]))
    (tmp_path / "two" / "part-2.csv").write_text(lines[0] + "".join(lines[300:]))
    assert preprocess(tmp_path / "files", tmp_path / "two").returncode == 0
    assert split_bytes(tmp_path / "files" / "out") == reference
    # another seed, another split
    assert preprocess(tmp_path / "seed", dataset_dir, "--seed", 7).returncode == 0
    assert split_bytes(tmp_path / "seed" / "out")["test"] != reference["test"]


def test_preprocess_names_column_value_and_line_of_a_non_numeric_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(5_000, 2)).round(4), columns=["a", "b"])
    frame["target"] = rng.integers(0, 2, len(frame))
    frame["b"] = frame["b"].astype(object)
    frame.loc[4_321, "b"] = "oops"  # data row 4322 = file line 4323, far past the first block
    (tmp_path / "in").mkdir()
    frame.to_csv(tmp_path / "in" / "data.csv", index=False)
    result = preprocess(tmp_path, tmp_path / "in", "--block-size", 4096)
    reason = assert_clean_failure(result, tmp_path / "ml")
    assert "Column 'b'" in reason and "'oops'" in reason and "line 4323 of data.csv" in reason


HEADER = "mean_radius,mean_texture,target\n"
ROW_LIST = [f"{10 + i},{20 - i},{i % 2}\n" for i in range(40)]
ROWS = "".join(ROW_LIST)


@pytest.mark.parametrize(
    ("files", "extra", "expected"),
    [
        ({"d.csv": HEADER + ROWS}, ["--label-column", "label"],
         ["no label column 'label'", "mean_radius, mean_texture, target", "label_column"]),
        ({"d.csv": ""}, [], ["d.csv is empty"]),
        ({"d.csv": HEADER}, [], ["header but no data rows"]),
        ({"d.csv": HEADER + ROWS + "1.5,abc,0\n"}, [],
         ["Column 'mean_texture'", "non-numeric value 'abc'", "line 42"]),
        ({"d.csv": HEADER + "1,,0\n" + ROWS}, [], ["Column 'mean_texture'", "missing value"]),
        ({"d.csv": HEADER + ROWS + "1,2,2\n"}, [], ["more than two distinct values"]),
        ({"d.csv": HEADER + "1,2,1\n" * 40}, [], ["only one value"]),
        ({"d.csv": HEADER + ROWS}, ["--test-fraction", "1.5"], ["test_fraction is 1.5"]),
        ({"d.csv": HEADER + ROWS}, ["--test-fraction", "0.6", "--validation-fraction", "0.5"],
         ["must be below 1"]),
        ({"d.csv": HEADER + "".join(ROW_LIST[:3])}, [],
         ["split got no rows out of 3", "at least about"]),
        ({"d.txt": HEADER + ROWS}, [], ["No .csv files", "d.txt"]),
        ({"a.csv": HEADER + ROWS, "b.csv": "x,y,target\n1,2,0\n"}, [],
         ["b.csv has a different header"]),
    ],
    ids=["missing-label", "empty-file", "header-only", "non-numeric", "missing-value",
         "three-classes", "one-class", "fraction-range", "fraction-sum", "empty-split",
         "no-csv", "header-mismatch"],
)  # fmt: skip
def test_preprocess_rejects_bad_input_with_a_clear_reason(
    tmp_path: Path, files: dict[str, str], extra: list[str], expected: list[str]
) -> None:
    (tmp_path / "in").mkdir()
    for name, text in files.items():
        (tmp_path / "in" / name).write_text(text)
    reason = assert_clean_failure(preprocess(tmp_path, tmp_path / "in", *extra), tmp_path / "ml")
    for part in expected:
        assert part in reason


# --- train --------------------------------------------------------------------------------


def test_train_reads_sm_hps_strings_and_channels_from_env(splits: Path, tmp_path: Path) -> None:
    hps = {"model": "random_forest", "n_estimators": "20", "max_depth": "4", "seed": "7"}
    hps["sagemaker_program"] = "train.py"  # the toolkit's own entries are not ours to check
    env = {
        "SM_HPS": json.dumps(hps),
        "SM_CHANNEL_TRAIN": str(splits / "train"),
        "SM_CHANNEL_VALIDATION": str(splits / "validation"),
        "SM_MODEL_DIR": str(tmp_path / "model"),
    }
    result = run(TRAIN, "--n_estimators", "999", base=tmp_path / "ml", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["model"] == "random_forest" and info["classes"] == [0, 1]
    assert info["hyperparameters"]["n_estimators"] == 20  # an int, from "20"; CLI ignored
    assert info["hyperparameters"]["max_depth"] == 4
    assert info["feature_columns"] == list(breast_cancer().columns[:-1])
    assert info["validation_metrics"]["roc_auc"] > 0.9
    assert info["sklearn_version"]
    assert re.search(r"^validation:roc_auc=0\.\d{4};$", result.stdout, re.MULTILINE)
    estimator = joblib.load(tmp_path / "model" / "model.joblib")
    assert len(estimator.estimators_) == 20 and estimator.max_depth == 4


def test_train_reads_hyperparameters_json_and_default_paths(splits: Path, tmp_path: Path) -> None:
    base = tmp_path / "ml"
    shutil.copytree(splits / "train", base / "input" / "data" / "train")
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({"C": "0.5", "max_iter": "200"}))
    result = run(TRAIN, base=base)
    assert result.returncode == 0, result.stderr
    info = json.loads((base / "model" / "model.json").read_text())
    assert info["hyperparameters"]["C"] == 0.5 and info["hyperparameters"]["max_iter"] == 200
    assert info["model"] == "logistic_regression"
    assert info["validation_metrics"] is None  # no validation channel: optional
    pipeline = joblib.load(base / "model" / "model.joblib")
    assert pipeline.named_steps["model"].C == 0.5
    assert [name for name, _ in pipeline.steps] == ["scale", "model"]


@pytest.mark.parametrize(
    ("hps", "expected"),
    [
        ({"learning_rat": "0.1"}, ["learning_rat", "Allowed:", "learning_rate", "n_estimators"]),
        ({"C": "-1"}, ["Hyperparameter C", "greater than 0", "-1"]),
        ({"model": "svm"}, ["'svm'", "logistic_regression, random_forest, gradient_boosting"]),
        ({"label_column": "diagnosis"}, ["no label column 'diagnosis'", "mean_radius"]),
    ],
    ids=["unknown", "negative-C", "unknown-model", "missing-label"],
)
def test_train_fails_clearly_on_bad_hyperparameters(
    splits: Path, tmp_path: Path, hps: dict[str, str], expected: list[str]
) -> None:
    env = {"SM_HPS": json.dumps(hps), "SM_CHANNEL_TRAIN": str(splits / "train")}
    result = run(TRAIN, base=tmp_path, env=env)
    reason = assert_clean_failure(result, tmp_path)
    for part in expected:
        assert part in reason
    assert not (tmp_path / "model" / "model.joblib").exists()


# --- evaluate -----------------------------------------------------------------------------


def as_archive(model: Path, directory: Path) -> Path:
    """The model packed the way a SageMaker training job outputs it."""
    directory.mkdir(parents=True)
    with tarfile.open(directory / "model.tar.gz", "w:gz") as tar:
        for name in ("model.joblib", "model.json"):
            tar.add(model / name, arcname=name)
    return directory


def evaluate(tmp: Path, model: Path, test: Path, champion: Path | None = None) -> dict:
    args = ["--model-dir", model, "--test-dir", test, "--output-dir", tmp / "out"]
    if champion is not None:
        args += ["--champion-dir", champion]
    result = run(EVALUATE, *args, base=tmp / "ml")
    assert result.returncode == 0, result.stderr
    return json.loads((tmp / "out" / "evaluation.json").read_text())


def test_evaluate_scores_challenger_from_archive_without_champion(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    archive = as_archive(model_dir, tmp_path / "archive")
    report = evaluate(tmp_path, archive, splits / "test", champion=tmp_path / "empty")
    test = pd.read_csv(splits / "test" / "test.csv")
    assert report["label_column"] == "target" and report["test_rows"] == len(test)
    assert report["champion"] is None and report["champion_error"] is None
    assert set(report["challenger"]) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert report["challenger"]["roc_auc"] > 0.9
    quality = report["binary_classification_metrics"]
    assert quality["auc"] == {"value": report["challenger"]["roc_auc"], "standard_deviation": "NaN"}
    assert {"accuracy", "f1", "precision", "recall"} <= set(quality)
    matrix = quality["confusion_matrix"]
    assert sum(n for row in matrix.values() for n in row.values()) == len(test)
    assert sum(matrix["1"].values()) == int((test["target"] == 1).sum())  # keyed by actual


def test_evaluate_scores_champion_on_the_same_split(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    report = evaluate(tmp_path, model_dir, splits / "test", champion=model_dir)
    assert report["champion"] == report["challenger"]
    assert report["champion_error"] is None


def test_evaluate_reports_an_incompatible_champion_without_failing(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    champion = tmp_path / "champion"
    shutil.copytree(model_dir, champion)
    info = json.loads((champion / "model.json").read_text())
    info["feature_columns"].append("tumour_colour")
    (champion / "model.json").write_text(json.dumps(info))
    report = evaluate(
        tmp_path, model_dir, splits / "test", champion=as_archive(champion, tmp_path / "c")
    )
    assert report["champion"] is None
    assert "tumour_colour" in report["champion_error"]
    assert report["challenger"]["roc_auc"] > 0.9


def test_evaluate_fails_on_a_broken_challenger_or_missing_test_data(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    (tmp_path / "nomodel").mkdir()
    args = ["--test-dir", splits / "test", "--output-dir", tmp_path / "out"]
    result = run(EVALUATE, "--model-dir", tmp_path / "nomodel", *args, base=tmp_path / "a")
    assert "lacks model.joblib and model.json" in assert_clean_failure(result, tmp_path / "a")
    args = ["--model-dir", model_dir, "--test-dir", tmp_path / "nomodel"]
    result = run(EVALUATE, *args, "--output-dir", tmp_path / "out", base=tmp_path / "b")
    assert "No .csv test data" in assert_clean_failure(result, tmp_path / "b")
    assert not (tmp_path / "out" / "evaluation.json").exists()


EVALUATION_KEYS = {"label_column", "test_rows", "challenger", "champion", "champion_error",
                   "binary_classification_metrics"}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_evaluate_draws_roc_and_confusion_matrix_of_both_models(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    report = evaluate(tmp_path, model_dir, splits / "test", champion=model_dir)
    assert set(report) == EVALUATION_KEYS | {"plots", "plots_error"}  # the old keys, unchanged
    assert report["plots"] == {"roc": "roc.png", "confusion_matrix": "confusion_matrix.png",
                               "curves": "curves.json"}
    assert report["plots_error"] is None
    out = tmp_path / "out"
    roc_width, _ = png_size(out / "roc.png")
    matrix_width, _ = png_size(out / "confusion_matrix.png")
    assert roc_width >= 500 and matrix_width >= 2 * 400  # two matrices side by side
    curves = json.loads((out / "curves.json").read_text())
    assert set(curves["roc"]) == set(curves["confusion_matrix"]) == {"challenger", "champion"}
    roc = curves["roc"]["challenger"]
    assert roc["auc"] == report["challenger"]["roc_auc"]
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(roc["fpr"]) >= 0)
    # the ROC points give back the AUC the gate uses
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(roc["auc"], abs=1e-4)
    matrix = curves["confusion_matrix"]["challenger"]
    expected = report["binary_classification_metrics"]["confusion_matrix"]
    assert matrix["counts"] == [[expected[a][p] for p in matrix["labels"]]
                                for a in matrix["labels"]]


def test_evaluate_without_champion_draws_the_challenger_alone(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    report = evaluate(tmp_path, model_dir, splits / "test")
    curves = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert set(curves["roc"]) == {"challenger"} and report["champion"] is None
    assert png_size(tmp_path / "out" / "confusion_matrix.png")[0] < 600  # one matrix


def test_a_plot_that_cannot_be_drawn_does_not_fail_the_evaluation(
    model_dir: Path, splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)

    def broken(*args: object) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(script, "roc_figure", broken)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    args = ["--model-dir", model_dir, "--test-dir", splits / "test", "--output-dir",
            tmp_path / "out"]
    assert script.main([str(a) for a in args]) == 0
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["plots"] == {} and report["plots_error"] == "RuntimeError: no fonts"
    assert report["challenger"]["roc_auc"] > 0.9
    assert not (tmp_path / "ml" / "output" / "failure").exists()
