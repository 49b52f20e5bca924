"""The run's plots and the notebooks, on a real local runtime through Prefect's engine.

Two runs, like a user's first day: the first deploys (nothing to compare against), the
second trains a weaker model that is judged against the live one on the same test split
and rejected. The plots are checked where people look at them (the run record in the
Prefect API, stored outputs), then both notebooks are executed headless on these outputs.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from sklearn.datasets import load_breast_cancer

from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import parse_s3_uri, push_dataset
from sagepipe.tasks.local import teardown
from sagepipe.tasks.plots import MAX_WIDTH, model_history
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources, read_json

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
IMAGE = re.compile(r"!\[([^\]]+)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)")
WEAK = {"model": "random_forest", "n_estimators": 2, "max_depth": 1}


def settings(state: Path) -> dict[str, Any]:
    return {
        "project": "nb-demo",
        "runtime": {"kind": "local", "state_dir": str(state)},
        "dataset_uri": "s3://nb-bucket/datasets/cancer/data.csv",
        "artifacts_uri": "s3://nb-bucket/pipeline",
        "jobs": {"poll_first_seconds": 0.1, "poll_max_seconds": 0.5, "timeout_seconds": 600},
        "endpoint": {"name": "nb-endpoint", "timeout_seconds": 120},
        "gate": {"threshold": 0.9, "margin": 0.001},
    }


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("nb-state")
    yield root
    teardown(root)


@pytest.fixture(scope="module")
def config(state: Path) -> PipelineConfig:
    return build_config(settings(state))


@pytest.fixture(scope="module")
def runs(state: Path, config: PipelineConfig,
         tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two dataset versions; a first run that deploys, a second that is rejected."""
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    clients = get_clients(config.runtime)
    ensure_local_resources(config.runtime, "nb-bucket", "nb-demo-events")
    data = tmp_path_factory.mktemp("nb-data")
    frame.sample(frac=0.95, random_state=3).to_csv(data / "v1.csv", index=False)
    push_dataset(clients, data / "v1.csv", config.dataset_uri, "target")
    first = ml_pipeline(config=config, commit="c0ffee1")
    frame.to_csv(data / "v2.csv", index=False)
    push_dataset(clients, data / "v2.csv", config.dataset_uri, "target")
    weak = build_config({**settings(state), "hyperparameters": WEAK})
    second = ml_pipeline(config=weak, commit="c0ffee2")
    assert (first["outcome"], second["outcome"]) == ("deployed", "rejected"), second
    return [first, second]


def read_bytes(config: PipelineConfig, uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    return bytes(get_clients(config.runtime).s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def run_record_markdown(record: dict[str, Any]) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["nb-demo-run-record"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[record["run_id"]])))
    assert len(artifacts) == 1
    return str(artifacts[0].data)


def test_the_plots_are_stored_with_the_run(config: PipelineConfig,
                                           runs: list[dict[str, Any]]) -> None:
    second = runs[1]
    for record in runs:
        assert set(record["plots"]) == {"roc", "confusion_matrix", "metric_history"}
        assert record["plots"]["metric_history"].startswith(
            f"{config.artifacts_uri}/runs/{record['run_id']}/plots/")
        for uri in record["plots"].values():
            image = Image.open(io.BytesIO(read_bytes(config, uri)))
            assert image.format == "PNG" and image.width >= 400
    stored = read_json(get_clients(config.runtime), second["record_uri"])
    assert stored["plots"] == second["plots"]
    curves = [json.loads(read_bytes(config, r["plots"]["roc"].replace("roc.png", "curves.json")))
              for r in runs]
    assert set(curves[0]["roc"]) == {"challenger"}  # nothing live yet
    assert set(curves[1]["roc"]) == {"challenger", "champion"}  # both, on one test split
    assert curves[1]["roc"]["champion"]["auc"] == second["evaluation"]["champion"]["roc_auc"]
    matrix = curves[1]["confusion_matrix"]["challenger"]["counts"]
    assert sum(map(sum, matrix)) == second["evaluation"]["test_rows"]


def test_the_run_record_in_the_prefect_ui_carries_the_plots_inline(
        runs: list[dict[str, Any]]) -> None:
    markdown = run_record_markdown(runs[1])
    images = dict(IMAGE.findall(markdown))
    assert list(images) == ["ROC curves, new vs live model", "Confusion matrix",
                            "Metric history of the model versions"]
    for uri in images.values():
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "PNG" and 300 <= image.width <= MAX_WIDTH
    assert len(markdown) < 200_000  # downscaled: the UI loads the record quickly
    assert markdown.index("## Champion vs challenger") < markdown.index("## Plots") \
        < markdown.index("## Gate")
    assert runs[1]["plots"]["roc"] in markdown  # where the full-size picture is


def test_the_metric_history_comes_from_the_registry(config: PipelineConfig,
                                                    runs: list[dict[str, Any]]) -> None:
    points = model_history(get_clients(config.runtime), config.model_package_group, "roc_auc")
    assert [(p.version, p.approval) for p in points] == [(1, "Approved"), (2, "Rejected")]
    assert [p.arn for p in points] == [r["model_package"]["arn"] for r in runs]
    for point, record in zip(points, runs, strict=True):
        assert point.value == pytest.approx(record["evaluation"]["challenger"]["roc_auc"],
                                            abs=1e-6)


def execute(notebook: str, config: PipelineConfig, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, **env: str) -> nbformat.NotebookNode:
    """Run a Jupytext notebook in a fresh kernel, as `jupytext --execute` would."""
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setenv("SAGEPIPE_ENV", str(settings_file))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    nb = jupytext.read(NOTEBOOKS / notebook)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the notebook printed or displayed, and how many PNGs it showed."""
    text, pngs = [], 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            text.append(output.get("text", ""))
            data = output.get("data", {})
            text += [data.get("text/plain", ""), data.get("text/markdown", "")]
            pngs += "image/png" in data
    return "\n".join(map(str, text)), pngs


def test_the_run_record_notebook_redraws_the_plots(config: PipelineConfig,
                                                   runs: list[dict[str, Any]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = runs
    text, pngs = outputs(execute("run_record.py", config, tmp_path, monkeypatch))
    assert f"Run {second['run_name']}" in text and "rejected" in text  # the newest run
    assert "champion (live)" in text and "difference" in text
    assert pngs == 3 + 3  # ROC, confusion matrix, history re-drawn; the three stored ones
    text, _ = outputs(execute("run_record.py", config, tmp_path, monkeypatch,
                              SAGEPIPE_RUN_ID=first["run_id"]))
    assert f"Run {first['run_name']}" in text and "deployed" in text


def test_the_dataset_notebook_shows_both_versions(config: PipelineConfig,
                                                  runs: list[dict[str, Any]], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    text, pngs = outputs(execute("dataset_versions.py", config, tmp_path, monkeypatch))
    assert f"Dataset {config.dataset_uri}" in text
    frame = load_breast_cancer(as_frame=True).frame
    added = len(frame) - len(frame.sample(frac=0.95, random_state=3))
    assert f"{added} rows added, 0 removed" in text
    for record in runs:
        assert record["run_name"] in text  # which run trained on which version
    assert pngs == 2  # the feature shift and the label per version
