"""A user's own Prefect flow from sagepipe's public tasks, on the local runtime.

`sagepipe init` writes ``two_models.py`` into the project: two candidates trained in
parallel, both scored against the live model, the better one gated and deployed. The
test runs that file, from the project folder, through Prefect's real engine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client

from sagepipe.flows.config import load_config
from sagepipe.flows.examples import write_example
from sagepipe.flows.scaffold import init_project
from sagepipe.flows.server import down, running
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


def _without_prefect_api(tmp_path: Path) -> dict[str, str]:
    """A terminal's environment: no PREFECT_API_URL (the session's test server), a
    Prefect home of its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_PROFILES_PATH")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), SAGEPIPE_WARM="off",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def test_python_two_models_runs_on_the_projects_server_and_job_events_wake_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python two_models.py` as the README says: on the project's kept server (the one
    `sagepipe run` uses, so the run is in its UI), and a job's end wakes the wait. With
    jobs.safety_poll_seconds at an hour, a wait no event woke would not end in time (it
    took a temporary server, which the jobs' events never reached: 30 s a job)."""
    project = tmp_path / "own-flow"
    init_project(project)
    settings = project / "sagepipe.yaml"
    settings.write_text(settings.read_text().replace(
        "safety_poll_seconds: 30", "safety_poll_seconds: 3600"))
    monkeypatch.chdir(project)
    config = load_config(str(settings))
    assert config.jobs.safety_poll_seconds == 3600
    ensure_local_resources(config.runtime, "sagepipe-local", f"{config.project}-events")
    push_dataset(get_clients(config.runtime), write_example("breast-cancer", tmp_path),
                 config.dataset_uri, config.data_rules())
    state = (project / config.runtime.state_dir).resolve()
    try:
        done = subprocess.run([sys.executable, "two_models.py"], cwd=project,
                              env=_without_prefect_api(tmp_path), capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "'outcome': 'deployed'" in done.stdout, done.stdout
        server = running(state / "prefect")  # the project's kept server, as `sagepipe run`
        assert server is not None
        assert f"Prefect UI: {server.ui_url}" in done.stderr
        runs = httpx.post(f"{server.api_url}/flow_runs/filter", timeout=30, json={
            "flows": {"name": {"any_": ["two-models"]}}}).json()
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"]
    finally:
        down(state / "prefect", grace=10)
        teardown(state)


def test_job_events_reach_a_flow_run_on_prefects_temporary_server(tmp_path: Path) -> None:
    """A flow of one's own run with plain `python` and no PREFECT_API_URL: Prefect starts
    a temporary server in the process, and the local runtime's job runners are told its
    address (the settings have none), so the jobs' events reach the run."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import httpx\n"
        "from prefect import flow\n"
        "from sagepipe.tasks.local.events import prefect_api_url\n"
        "@flow\n"
        "def probe():\n"
        "    url = prefect_api_url()\n"
        "    print(url, httpx.get(f'{url}/health', timeout=10).status_code)\n"
        "probe()\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                          env=_without_prefect_api(tmp_path), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^http://127\.0\.0\.1:\d+/api 200$", done.stdout, re.M), done.stdout
