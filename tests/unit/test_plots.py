"""The run's pictures: the registry history, the inline images, the run record's Plots section."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sagepipe.flows.config import build_config
from sagepipe.flows.report import collect_plots, record_markdown
from sagepipe.tasks.local import local_clients, teardown
from sagepipe.tasks.plots import (
    VersionPoint,
    data_uri,
    history_figure,
    history_png,
    model_history,
)
from sagepipe.tasks.registry import ensure_group, register_package
from sagepipe.tasks.runtime import Clients

GROUP = "plots-demo"


@pytest.fixture()
def clients(tmp_path: Path) -> Iterator[Clients]:
    made = local_clients(tmp_path / "state")
    yield Clients(s3=made["s3"], sagemaker=made["sagemaker"],
                  sagemaker_runtime=made["sagemaker-runtime"], sns=made["sns"],
                  logs=made["logs"], ecr=made["ecr"], codebuild=made["codebuild"])
    teardown(tmp_path / "state")


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    return out.getvalue()


def decoded(uri: str) -> Image.Image:
    prefix, _, payload = uri.partition(",")
    assert prefix == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def register(clients: Clients, key: str, approval: str, metadata: dict[str, str],
             evaluation_uri: str = "s3://bkt/eval/evaluation.json") -> str:
    return register_package(clients, group=GROUP, idempotency_key=key, image="img",
                            model_data_url=f"s3://bkt/{key}/model.tar.gz",
                            evaluation_uri=evaluation_uri, approval=approval,
                            description=key, metadata=metadata, instance_type="ml.m5.large")


def test_data_uri_downscales_wide_plots_and_keeps_small_ones() -> None:
    wide = decoded(data_uri(png(1200, 900), max_width=640))
    assert (wide.format, wide.size) == ("PNG", (640, 480))
    assert decoded(data_uri(png(300, 200), max_width=640)).size == (300, 200)


def test_model_history_reads_versions_in_order_with_their_metric(clients: Clients) -> None:
    assert model_history(clients, GROUP, "roc_auc") == []  # no group yet: no history
    ensure_group(clients, GROUP, "test")
    clients.s3.create_bucket(Bucket="bkt")
    clients.s3.put_object(Bucket="bkt", Key="old/evaluation.json",
                          Body=json.dumps({"challenger": {"roc_auc": 0.91, "f1": 0.8}}))
    first = register(clients, "a", "approved", {"f1": "0.8"},  # gated on f1 back then
                     evaluation_uri="s3://bkt/old/evaluation.json")
    second = register(clients, "b", "rejected", {"roc_auc": "0.95"})
    third = register(clients, "c", "approved", {"roc_auc": "0.97"})
    points = model_history(clients, GROUP, "roc_auc")
    assert [(p.version, p.arn, p.approval, p.value) for p in points] == [
        (1, first, "Approved", 0.91), (2, second, "Rejected", 0.95),
        (3, third, "Approved", 0.97)]
    assert [p.version for p in model_history(clients, GROUP, "roc_auc", limit=2)] == [2, 3]
    unknown = model_history(clients, GROUP, "log_loss")  # neither in metadata nor stored
    assert [p.value for p in unknown] == [None, None, None]


def test_history_png_draws_every_kind_of_version() -> None:
    points = [VersionPoint(version=v, arn=f"arn:{v}", approval=a, value=x) for v, a, x in
              ((1, "Approved", 0.95), (2, "Rejected", 0.93), (3, "Approved", None),
               (4, "PendingManualApproval", 0.97), (5, "Approved", 0.96))]
    kwargs: dict[str, Any] = {"metric": "roc_auc", "threshold": 0.9, "live_arn": "arn:1",
                              "current_arn": "arn:4"}
    [ax] = history_figure(points, **kwargs).axes
    drawn: dict[str, list[tuple[float, float]]] = {}
    for line in ax.get_lines():
        drawn[str(line.get_label())] = [(float(x), float(y)) for x, y in line.get_xydata()]
    for collection in ax.collections:
        drawn[str(collection.get_label())] = [(float(x), float(y))
                                              for x, y in collection.get_offsets()]
    # each kind where it belongs; version 3 has no value and is not drawn
    assert drawn["approved (deployed)"] == [(1, 0.95), (5, 0.96)]
    assert drawn["rejected / pending"] == [(2, 0.93), (4, 0.97)]
    assert drawn["this run"] == [(4, 0.97)]
    assert drawn["live now"] == [(1, 0.95)]
    assert {y for _, y in drawn["gate threshold 0.9"]} == {0.9}
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == sorted(drawn)
    assert ax.get_ylabel() == "roc_auc"
    image = Image.open(io.BytesIO(history_png(points, **kwargs)))
    assert image.format == "PNG" and image.width > 500


RECORD: dict[str, Any] = {
    "run_id": "r1", "run_name": "brave-owl", "project": "demo", "outcome": "rejected",
    "evaluation": {"challenger": {"roc_auc": 0.95}, "champion": {"roc_auc": 0.97}},
    "decision": {"reasons": ["does not beat the live model"]},
    "plots": {"roc": "s3://bkt/eval/roc.png"},
}


def test_the_run_record_shows_the_plots_between_the_metrics_and_the_gate() -> None:
    image = data_uri(png(100, 80))
    markdown = record_markdown(RECORD, {"roc": image, "metric_history": image})
    assert f"![ROC curves, new vs live model]({image})" in markdown
    assert f"![Metric history of the model versions]({image})" in markdown
    assert "Full size: `s3://bkt/eval/roc.png`" in markdown
    assert markdown.index("## Champion vs challenger") < markdown.index("## Plots") \
        < markdown.index("## Gate")
    assert "## Plots" not in record_markdown(RECORD)
    assert "base64" not in markdown.split("<details>")[1]  # the JSON dump stays small


def test_runs_that_evaluated_nothing_have_no_plots(tmp_path: Path) -> None:
    config = build_config({"runtime": {"kind": "local", "state_dir": str(tmp_path)}})
    unchanged = {**RECORD, "outcome": "unchanged", "evaluation": None, "steps": {}}
    assert collect_plots(config, unchanged) == {}
