"""Fixtures shared by the container tests: the example data, split and trained once."""

from __future__ import annotations

from pathlib import Path

import pytest
from container_runs import PREPROCESS, TRAIN, breast_cancer, run, train_env


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dataset")
    breast_cancer().to_csv(directory / "data.csv", index=False)
    return directory


@pytest.fixture(scope="session")
def splits(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("splits")
    result = run(PREPROCESS, "--input-dir", dataset_dir, "--output-dir", out, base=out / "ml")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def model_dir(splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression trained on the splits, as model.joblib + model.json."""
    base = tmp_path_factory.mktemp("train")
    result = run(TRAIN, base=base, env=train_env(splits, SM_HPS='{"model": "linear"}'))
    assert result.returncode == 0, result.stderr
    return base / "model"
