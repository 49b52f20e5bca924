"""The run record's plots when the outputs live in S3 (the AWS runtime, against moto).

A browser cannot load ``s3://`` URIs, nor a private bucket's objects: the flow reads the
PNGs with the runtime's own S3 client and inlines them, so the Prefect UI shows the same
images as on the local runtime. The metric history goes back to S3, next to the record.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.context import get_run_context

import sagepipe.tasks.runtime
from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.flows.report import collect_plots, publish_artifacts
from sagepipe.tasks.registry import ensure_group, register_package
from sagepipe.tasks.runtime import get_clients

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

BUCKET = "sagepipe-plots-bucket"
EVALUATION = f"s3://{BUCKET}/pipeline/jobs/evaluate-k1/evaluation/evaluation.json"
IMAGE = re.compile(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


@pytest.fixture()
def config(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipelineConfig]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    sagepipe.tasks.runtime._CACHE.clear()
    with mock_aws():
        yield build_config({"project": "s3-plots", "runtime": {"kind": "aws"},
                            "dataset_uri": f"s3://{BUCKET}/datasets/data.csv",
                            "artifacts_uri": f"s3://{BUCKET}/pipeline"})
    sagepipe.tasks.runtime._CACHE.clear()


def png(width: int, height: int, colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def test_plots_stored_in_s3_reach_the_run_record_inline(config: PipelineConfig) -> None:
    clients = get_clients(config.runtime)
    clients.s3.create_bucket(Bucket=BUCKET)
    folder = EVALUATION.rsplit("/", 1)[0].removeprefix(f"s3://{BUCKET}/")
    evaluation = {"challenger": {"roc_auc": 0.97}, "champion": {"roc_auc": 0.95},
                  "plots": {"roc": "roc.png", "confusion_matrix": "confusion_matrix.png",
                            "curves": "curves.json"}, "plots_error": None}
    for key, body in ((f"{folder}/evaluation.json", json.dumps(evaluation).encode()),
                      (f"{folder}/roc.png", png(616, 506, "navy")),
                      (f"{folder}/confusion_matrix.png", png(924, 440, "teal"))):
        clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    ensure_group(clients, config.model_package_group, "test")
    arns = [register_package(clients, group=config.model_package_group, idempotency_key=key,
                             image="123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1",
                             model_data_url=f"s3://{BUCKET}/{key}/model.tar.gz",
                             evaluation_uri=EVALUATION, approval=approval, description=key,
                             metadata={"roc_auc": value}, instance_type="ml.m5.large")
            for key, approval, value in (("a", "approved", "0.95"), ("b", "approved", "0.97"))]

    @flow(name="plots-on-s3")
    def publish() -> dict[str, Any]:
        record: dict[str, Any] = {
            "run_id": str(get_run_context().flow_run.id),  # type: ignore[union-attr]
            "run_name": None, "project": config.project, "outcome": "deployed",
            "evaluation": evaluation, "steps": {"evaluate": {"outputs": {
                "evaluation": EVALUATION}}},
            "model_package": {"arn": arns[1], "approval": "approved"},
            "champion": {"package_arn": arns[0]}}
        publish_artifacts(record, collect_plots(config, record))
        return record

    record = publish()
    assert record["plots"] == {
        "roc": f"s3://{BUCKET}/{folder}/roc.png",
        "confusion_matrix": f"s3://{BUCKET}/{folder}/confusion_matrix.png",
        "metric_history": f"s3://{BUCKET}/pipeline/runs/{record['run_id']}/plots/"
                          "metric_history.png"}
    history = clients.s3.get_object(Bucket=BUCKET, Key=record["plots"]["metric_history"]
                                    .removeprefix(f"s3://{BUCKET}/"))
    assert history["ContentType"] == "image/png"
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["s3-plots-run-record"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[record["run_id"]])))[0]
    images = {alt: Image.open(io.BytesIO(base64.b64decode(data)))
              for alt, data in IMAGE.findall(str(artifact.data))}
    assert list(images) == ["ROC curves, new vs live model", "Confusion matrix",
                            "Metric history of the model versions"]
    roc, matrix = images["ROC curves, new vs live model"], images["Confusion matrix"]
    assert roc.size == (616, 506)  # small enough already
    assert matrix.size == (640, round(440 * 640 / 924))  # downscaled to the UI's width
    assert roc.convert("RGB").getpixel((10, 10)) == (0, 0, 128)  # the bytes from S3
