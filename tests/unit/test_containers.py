"""The train and evaluate scripts, run as SageMaker runs them: as processes.

Each script gets SAGEMAKER_BASE_DIR in tmp_path (the local runtime's /opt/ml remap) and
its paths on the command line or in SM_* variables, exactly like a job would. The
preprocess script has its own module (test_preprocess.py); every problem type end to end
through the three scripts and the serving handlers is in test_problem_types.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from container_runs import (
    EVALUATE,
    PREPROCESS,
    TRAIN,
    assert_clean_failure,
    breast_cancer,
    run,
    train_env,
)

# --- train --------------------------------------------------------------------------------


def test_train_reads_sm_hps_strings_and_channels_from_env(splits: Path, tmp_path: Path) -> None:
    hps = {"model": "random_forest", "n_estimators": "20", "max_depth": "4", "seed": "7"}
    hps["sagemaker_program"] = "train.py"  # the toolkit's own entries are not ours to check
    env = train_env(splits, SM_HPS=json.dumps(hps), SM_MODEL_DIR=str(tmp_path / "model"))
    result = run(TRAIN, "--n_estimators", "999", base=tmp_path / "ml", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "model" / "model.json").read_text())
    assert info["model"] == "random_forest" and info["classes"] == [0, 1]
    assert info["problem"] == "binary"
    assert info["hyperparameters"]["n_estimators"] == 20  # an int, from "20"; CLI ignored
    assert info["hyperparameters"]["max_depth"] == 4
    assert info["feature_columns"] == list(breast_cancer().columns[:-1])
    assert {f["kind"] for f in info["features"]} == {"numeric"}
    assert info["validation_metrics"]["roc_auc"] > 0.9
    assert info["sklearn_version"]
    assert re.search(r"^validation:roc_auc=0\.\d{4};$", result.stdout, re.MULTILINE)
    pipeline = joblib.load(tmp_path / "model" / "model.joblib")
    forest = pipeline.named_steps["model"]
    assert len(forest.estimators_) == 20 and forest.max_depth == 4


def test_train_reads_hyperparameters_json_and_default_paths(splits: Path, tmp_path: Path) -> None:
    base = tmp_path / "ml"
    for channel in ("train", "schema"):
        shutil.copytree(splits / channel, base / "input" / "data" / channel)
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(
        {"model": "logistic_regression", "C": "0.5", "max_iter": "200"}))
    result = run(TRAIN, base=base)
    assert result.returncode == 0, result.stderr
    info = json.loads((base / "model" / "model.json").read_text())
    assert info["hyperparameters"]["C"] == 0.5 and info["hyperparameters"]["max_iter"] == 200
    assert info["model"] == "linear"  # logistic_regression is its old name
    assert info["validation_metrics"] is None  # no validation channel: optional
    pipeline = joblib.load(base / "model" / "model.joblib")
    assert pipeline.named_steps["model"].C == 0.5
    assert [name for name, _ in pipeline.steps] == ["features", "model"]


def test_train_without_a_schema_channel_needs_the_problem(splits: Path, tmp_path: Path) -> None:
    env = {"SM_CHANNEL_TRAIN": str(splits / "train"), "SM_HPS": "{}"}
    reason = assert_clean_failure(run(TRAIN, base=tmp_path, env=env), tmp_path)
    assert "No schema channel and no 'problem' hyperparameter" in reason
    env["SM_HPS"] = json.dumps({"problem": "binary", "model": "linear"})
    result = run(TRAIN, base=tmp_path / "ok", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "ok" / "model" / "model.json").read_text())
    assert info["problem"] == "binary" and len(info["features"]) == 30


@pytest.mark.parametrize(
    ("hps", "expected"),
    [
        ({"learning_rat": "0.1"}, ["learning_rat is not a parameter of hist_gradient_boosting",
                                   "did you mean 'learning_rate'?", "max_iter"]),
        ({"model": "linear", "learning_rat": "0.1"},
         ["learning_rat is not a parameter of linear", "did you mean 'learning_rate'? that is "
          "a parameter of hist_gradient_boosting, xgboost)", "linear takes C"]),
        ({"model": "linear", "max_itr": "5"}, ["did you mean 'max_iter'?)"]),
        ({"model": "linear", "C": "-1"}, ["C must be a number > 0", "-1"]),
        ({"model": "linear", "alpha": "1"}, ["alpha does not apply to linear for a binary "
                                             "problem", "use C, max_iter"]),
        ({"model": "svm"}, ["'svm'", "linear, random_forest, hist_gradient_boosting, xgboost"]),
        ({"model": "random_forest", "learning_rate": "0.1"},
         ["learning_rate is not a parameter of random_forest", "belongs to",
          "hist_gradient_boosting, xgboost"]),
        ({"label_column": "diagnosis"}, ["schema is for label 'target'", "'diagnosis'"]),
    ],
    ids=["unknown", "unknown-elsewhere", "unknown-here", "negative-C", "wrong-problem",
         "unknown-model", "other-models-param", "missing-label"],
)
def test_train_fails_clearly_on_bad_hyperparameters(
    splits: Path, tmp_path: Path, hps: dict[str, str], expected: list[str]
) -> None:
    result = run(TRAIN, base=tmp_path, env=train_env(splits, SM_HPS=json.dumps(hps)))
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
    assert set(report["challenger"]) == {"roc_auc", "pr_auc", "accuracy", "f1", "log_loss"}
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
    info["features"].append({"name": "tumour_colour", "kind": "categorical"})
    info["features"][0]["kind"] = "categorical"
    (champion / "model.json").write_text(json.dumps(info))
    report = evaluate(
        tmp_path, model_dir, splits / "test", champion=as_archive(champion, tmp_path / "c")
    )
    assert report["champion"] is None
    assert "tumour_colour" in report["champion_error"]
    change = report["schema_change"]
    assert change["removed"] == ["tumour_colour"] and not change["comparable"]
    assert change["kind_changed"] == ["mean_radius"]
    assert "changed between number and text: mean_radius" in change["summary"]
    assert report["challenger"]["roc_auc"] > 0.9


def test_a_champion_that_lacks_only_new_columns_is_still_scored(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    # the live model was trained before the last column existed
    (tmp_path / "old").mkdir()
    breast_cancer().drop(columns="worst_fractal_dimension").to_csv(tmp_path / "old" / "d.csv",
                                                                   index=False)
    old = tmp_path / "old-splits"
    assert run(PREPROCESS, "--input-dir", tmp_path / "old", "--output-dir", old,
               base=tmp_path / "p").returncode == 0
    trained = run(TRAIN, base=tmp_path / "t", env=train_env(old, SM_HPS='{"model": "linear"}'))
    assert trained.returncode == 0, trained.stderr
    report = evaluate(tmp_path, model_dir, splits / "test", champion=tmp_path / "t" / "model")
    assert report["schema_change"]["added"] == ["worst_fractal_dimension"]
    assert report["schema_change"]["comparable"] and report["champion"] is not None


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
                   "binary_classification_metrics", "problem", "classes", "schema_change"}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_evaluate_draws_roc_and_confusion_matrix_of_both_models(
    model_dir: Path, splits: Path, tmp_path: Path
) -> None:
    report = evaluate(tmp_path, model_dir, splits / "test", champion=model_dir)
    assert set(report) == EVALUATION_KEYS | {"plots", "plots_error"}  # the old keys, and more
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
    monkeypatch.syspath_prepend(str(EVALUATE.parent))  # evaluate.py imports plots.py
    spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    plots = sys.modules["plots"]

    def broken(*args: object) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "roc_figure", broken)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    args = ["--model-dir", model_dir, "--test-dir", splits / "test", "--output-dir",
            tmp_path / "out"]
    assert script.main([str(a) for a in args]) == 0
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["plots"] == {} and report["plots_error"] == "RuntimeError: no fonts"
    assert report["challenger"]["roc_auc"] > 0.9
    assert not (tmp_path / "ml" / "output" / "failure").exists()


def test_default_images_start_from_a_registry_codebuild_is_not_rate_limited_on() -> None:
    """Docker Hub limits anonymous pulls, and CodeBuild's addresses are shared; ECR Public
    serves Docker's official images (public.ecr.aws/docker/library/...)."""
    from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS, STEPS

    for step in STEPS:
        bases = [line.split()[1] for line in
                 (DEFAULT_CONTAINERS / step / "Dockerfile").read_text().splitlines()
                 if line.startswith("FROM ")]
        assert bases == ["public.ecr.aws/docker/library/python:3.11-slim"], step
