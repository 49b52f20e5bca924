"""A user's own Prefect flow from sagepipe's public tasks, on the local runtime.

`sagepipe init` writes ``two_models.py`` into the project: two candidates trained in
parallel, both scored against the live model, the better one gated and deployed. The
test runs that file, from the project folder, through Prefect's real engine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from sagepipe.flows.config import load_config
from sagepipe.flows.examples import write_example
from sagepipe.flows.scaffold import init_project
from sagepipe.tasks import get_clients
from sagepipe.tasks.data import push_dataset
from sagepipe.tasks.local import teardown
from sagepipe.tasks.steps import FLOW_RUN_TAG
from sagepipe.tasks.storage import ensure_local_resources

pytestmark = [pytest.mark.flow, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]


def load_flow(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("users_two_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.two_models


def test_the_example_flow_trains_two_candidates_and_deploys_the_better(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "two-candidates"
    init_project(project)
    monkeypatch.chdir(project)
    config = load_config(overrides={"project": "two-cand", "endpoint": {"name": "two-cand"}})
    ensure_local_resources(config.runtime, "sagepipe-local", "two-cand-events")
    clients = get_clients(config.runtime)
    push_dataset(clients, write_example("breast-cancer", tmp_path), config.dataset_uri,
                 config.data_rules())
    two_models = load_flow(project / "two_models.py")
    try:
        first = two_models(config=config)
        assert first["outcome"] == "deployed", first
        assert set(first["scores"]) == {"linear", "boosted"}
        assert all(0.5 < score <= 1 for score in first["scores"].values())
        best = max(first["scores"], key=first["scores"].get)
        assert first["chosen"] == best
        jobs = clients.sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
        assert len({j["TrainingJobName"] for j in jobs}) == 2  # one job per candidate
        # tagged with the flow run, as sagepipe's own flow tags its jobs: a job's end event
        # finds the run by it and wakes the wait (untagged, each wait sat out a safety poll)
        runs = {t["Value"] for j in jobs for t in clients.sagemaker.list_tags(
            ResourceArn=j["TrainingJobArn"])["Tags"] if t["Key"] == FLOW_RUN_TAG}
        assert len(runs) == 1, runs
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(runs.pop()).name
        endpoint = clients.sagemaker.describe_endpoint(EndpointName="two-cand")
        assert endpoint["EndpointStatus"] == "InService"

        # unchanged data and code: nothing trains again, and the live model is the best one
        again = two_models(config=config)
        assert again["outcome"] == "unchanged" and again["chosen"] == best
        jobs = clients.sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
        assert len(jobs) == 2
    finally:
        teardown(Path(config.runtime.state_dir).resolve())
