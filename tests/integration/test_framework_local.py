"""``image: framework`` on the local runtime: the requests name AWS's images, the local
stand-in plays them (train from the archive's entry point, serve the handlers from
SAGEMAKER_SUBMIT_DIRECTORY), and nothing is built."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagepipe.flows.config import load_config
from sagepipe.flows.examples import write_example
from sagepipe.flows.pipeline import ml_pipeline
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    inference = (DEFAULT_CONTAINERS / "serve" / "inference.py").read_text()
    # the user's own output_fn: marks every answer, so the test sees whose code served it
    (handlers / "handlers.py").write_text(inference + '''

_default_output_fn = output_fn


def output_fn(prediction, accept):
    body, content_type = _default_output_fn(prediction, accept)
    if content_type == "application/json":
        import json as _json
        body = _json.dumps({**_json.loads(body), "served_by": "my handlers"}).encode()
    return body, content_type
''')
    yield tmp_path
    teardown(tmp_path / ".sagepipe")


def test_framework_steps_run_from_their_archives_and_nothing_is_built(project: Path) -> None:
    framework = {"image": "framework"}
    settings = {
        "project": "fw-local", "endpoint": {"name": "fw-local"},
        "artifacts_uri": "s3://sagepipe-local/fw-local",
        "steps": {"train": framework,
                  "serve": {**framework, "source": "handlers", "entry_point": "handlers.py"}}}
    # the default train step has a requirements.txt, which the image installs at start:
    # that needs the network an isolated job does not have (refused, as on AWS)
    with pytest.raises(ConfigError, match="steps train: on image: framework the job installs"):
        load_config("local", settings).check_steps()
    config = load_config("local", {**settings, "jobs": {"network_isolation": False}})
    ensure_local_resources(config.runtime, "sagepipe-local", "fw-local-events")
    clients = get_clients(config.runtime)
    push_dataset(clients, write_example("breast-cancer", project), config.dataset_uri,
                 config.data_rules())

    record = ml_pipeline(config=config)

    assert record["outcome"] == "deployed", record.get("error")
    train_image = record["images"]["train"]
    assert train_image["uri"].endswith("/sagemaker-scikit-learn:1.9-0-cpu-py3")
    assert train_image["code"].endswith("/sourcedir.tar.gz") and not train_image["built"]
    assert record["images"]["preprocess"]["uri"].split("/", 1)[1].startswith("sagepipe-")
    # only the build-mode steps became images in the local registry
    repositories = {r["repositoryName"] for r in clients.ecr.describe_repositories()[
        "repositories"]}
    assert repositories == {"sagepipe-preprocess", "sagepipe-evaluate"}
    job = record["steps"]["train"]["job"]
    sent = clients.sagemaker.describe_training_job(TrainingJobName=job)["HyperParameters"]
    assert sent["sagemaker_program"] == '"train.py"'
    answer = json.loads(invoke(clients, "fw-local", json.dumps({"instances": [
        dict.fromkeys(record["data_schema"]["feature_columns"], 1.0)]}),
        content_type="application/json"))
    assert answer["served_by"] == "my handlers" and len(answer["predictions"]) == 1
