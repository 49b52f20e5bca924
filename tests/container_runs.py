"""Running the container scripts as SageMaker runs them: as processes, in a clean env.

Each script gets SAGEMAKER_BASE_DIR (the local runtime's /opt/ml remap) and its paths on
the command line or in SM_* variables, exactly like a job would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer

CONTAINERS = Path(__file__).resolve().parents[1] / "containers"
PREPROCESS = CONTAINERS / "preprocess" / "preprocess.py"
TRAIN = CONTAINERS / "train" / "train.py"
EVALUATE = CONTAINERS / "evaluate" / "evaluate.py"
SERVE = CONTAINERS / "serve"
SPLITS = ("train", "validation", "test")


def breast_cancer() -> pd.DataFrame:
    """sklearn's breast cancer data with snake_case feature names and a 'target' label."""
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def run(script: Path, *args: object, base: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a container script with a clean SageMaker environment rooted at `base`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    clean.update({"SAGEMAKER_BASE_DIR": str(base), **(env or {})})
    cmd = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=180)


def failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


def assert_clean_failure(result: subprocess.CompletedProcess[str], base: Path) -> str:
    """Exit 1 with a short, traceback-free reason in the failure file."""
    assert result.returncode == 1, result.stdout + result.stderr
    reason = failure(base)
    assert "Traceback" not in reason
    assert 0 < len(reason.strip().splitlines()) <= 2
    return reason


def train_env(splits: Path, **extra: str) -> dict[str, str]:
    """SM_* variables of a training job reading the preprocess step's outputs."""
    return {"SM_CHANNEL_TRAIN": str(splits / "train"),
            "SM_CHANNEL_VALIDATION": str(splits / "validation"),
            "SM_CHANNEL_SCHEMA": str(splits / "schema"), **extra}
