"""A model's life from the CLI, as a user drives it: `sagepipe models`, `approve`,
`reject`, `deploy` (an older version: the rollback) and `promote`, each a real
``sagepipe`` process on the local runtime.

One module-scoped project runs the pipeline twice: version 1 is deployed to staging and
production, version 2 (a weak model) is rejected by the gate. The tests then run in
order, like a person's session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.settings import get_current_settings

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import Clients, get_clients

pytestmark = [pytest.mark.flow, pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "deployments" / "settings" / "local.yaml"
PROD, STAGING = "life-prod", "life-staging"
USER = "life-tester"
WEAK = ["--set", "hyperparameters.model=random_forest", "--set", "hyperparameters.n_estimators=1",
        "--set", "hyperparameters.max_depth=1"]


@dataclass
class Project:
    """A settings file, its local state, and the `sagepipe` command run against them."""

    settings: Path
    state: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*sagepipe_command(), *args, "--env", str(self.settings)],
                              cwd=self.settings.parent, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*sagepipe_command(), *args, "--env", str(self.settings)],
                                cwd=self.settings.parent, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @property
    def config(self) -> PipelineConfig:
        return load_config(str(self.settings))

    @property
    def clients(self) -> Clients:
        return get_clients(self.config.runtime)


def sagepipe_command() -> list[str]:
    script = Path(sys.executable).parent / "sagepipe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sagepipe.flows.cli"]


def make_project(root: Path, project: str, **endpoint: Any) -> Project:
    data = yaml.safe_load(SETTINGS.read_text())
    data.update(project=project, dataset_uri=f"s3://{project}-bucket/data/data.csv",
                artifacts_uri=f"s3://{project}-bucket/pipeline")
    data["runtime"]["state_dir"] = str(root / "state")
    data["endpoint"].update(endpoint)
    settings = root / "settings.yaml"
    settings.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "LOGNAME": USER, "USER": USER}
    made = Project(settings, root / "state", env)
    pushed = made("data", "push", "--example")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    return made


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int, *texts: str) -> None:
    """Exit ``code``, no traceback, and each text in the message (one paragraph)."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    message = " ".join(result.stderr.split())
    for text in texts:
        assert text in message, message


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of a `_table` (columns start where their header starts)."""
    lines = [line for line in stdout.splitlines() if line.startswith("  ")]
    header = lines[0]
    names = header.split()
    starts = [header.index(f" {name}") + 1 if i else header.index(name)
              for i, name in enumerate(names)]
    bounds = [*starts[1:], None]
    return [{name: line[start:end].strip() for name, start, end in zip(names, starts, bounds,
                                                                         strict=True)}
            for line in lines[1:]]


def live(project: Project) -> dict[str, str]:
    """{version: where it is live} from `sagepipe models`."""
    return {row["version"]: row["live"] for row in table(ok(project("models")))}


def serving_version(project: Project, endpoint: str) -> str:
    """The version whose model the endpoint's config serves (the config is named after it)."""
    described = project.clients.sagemaker.describe_endpoint(EndpointName=endpoint)
    assert described["EndpointStatus"] == "InService", described
    return str(described["EndpointConfigName"]).split(f"{endpoint}-v", 1)[1].split("-", 1)[0]


def last_message(project: Project) -> dict[str, Any]:
    sns = project.clients.sns
    topic = sns.create_topic(Name=f"{project.config.project}-events")["TopicArn"]
    return dict(json.loads(sns.messages(topic)[-1]["Message"]))


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("life")
    project = make_project(root, "life-demo", name=PROD, staging_name=STAGING)
    try:
        assert "deployed" in ok(project("run", "--commit", "aaa111"))
        rejected = project("run", "--commit", "bbb222", *WEAK)
        assert rejected.returncode == 5, rejected.stderr  # rejected by the gate
        assert "rejected" in rejected.stdout
        # the commands that put it live anyway, with its version (2)
        assert " approve 2, then " in rejected.stdout and " deploy 2." in rejected.stdout
        yield project
    finally:
        teardown(project.state.resolve())


def test_models_lists_the_versions_and_where_each_is_live(life: Project) -> None:
    rows = table(ok(life("models")))
    assert [r["version"] for r in rows] == ["2", "1"]  # newest first
    latest, first = rows
    assert (first["approval"], first["live"]) == ("Approved", f"{PROD}, {STAGING}")
    assert (latest["approval"], latest["live"]) == ("Rejected", "")
    assert (first["commit"], latest["commit"]) == ("aaa111", "bbb222")
    for row in rows:
        assert row["metric"].startswith("roc_auc=0."), row
        assert len(row["data"]) == 12 and row["created"].startswith("20"), row
    assert float(first["metric"].split("=")[1]) > float(latest["metric"].split("=")[1])


def test_bad_versions_and_endpoints_are_refused_without_a_traceback(life: Project) -> None:
    refused(life("deploy", "9"), 2, "No version '9' in the model package group 'life-demo'",
            "versions, newest first: 2, 1")
    refused(life("approve", "9"), 2, "No version '9'")
    refused(life("deploy", "2"), 2, "Version 2 of life-demo is Rejected",
            "only Approved versions are deployed", "sagepipe approve 2")
    refused(life("deploy", "1", "--endpoint", "no-such-endpoint"), 2,
            "No endpoint named 'no-such-endpoint'", f"({PROD}, {STAGING})")
    refused(life("promote", "--set", "endpoint.staging_name=null"), 2,
            "No staging endpoint is configured")
    assert life.clients.sagemaker.list_endpoints()["Endpoints"].__len__() == 2
    assert serving_version(life, PROD) == "1"


def test_approve_then_deploy_puts_the_rejected_version_live(life: Project) -> None:
    said = ok(life("approve", "2", "--note", "fine for the pilot"))
    assert "No Prefect API" not in said
    sm = life.clients.sagemaker
    arn = next(p["ModelPackageArn"] for p in sm.list_model_packages(
        ModelPackageGroupName="life-demo")["ModelPackageSummaryList"]
        if p["ModelPackageVersion"] == 2)
    package = sm.describe_model_package(ModelPackageName=arn)
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["ApprovalDescription"] == (
        f"Approved from the CLI by {USER}: fine for the pilot")

    out = ok(life("deploy", "2"))
    assert f"Version 2 is live on {PROD} (updated; was version 1)" in out
    assert serving_version(life, PROD) == "2"
    assert live(life) == {"2": PROD, "1": STAGING}
    answer = json.loads(invoke(life.clients, PROD, ",".join(["1.0"] * 30) + "\n"))
    assert len(answer["predictions"]) == 1
    message = last_message(life)
    assert (message["outcome"], message["model_package"]["version"]) == ("deployed", 2)
    assert message["by"] == USER and message["previous"]["version"] == 1
    runs = table(ok(life("status")).split("Model versions")[0])
    assert (runs[0]["run"], runs[0]["outcome"]) == (f"deploy v2 to {PROD}", "deployed")


def test_deploying_the_older_version_is_the_rollback(life: Project) -> None:
    out = ok(life("deploy", "v1"))
    assert f"Version 1 is live on {PROD} (updated; rolled back from version 2)" in out
    assert serving_version(life, PROD) == "1"
    assert live(life) == {"2": "", "1": f"{PROD}, {STAGING}"}
    assert "rolled back from version 2" in last_message(life)["summary"]


def test_promote_deploys_stagings_version_to_production(life: Project) -> None:
    ok(life("deploy", "2", "--endpoint", STAGING))
    assert live(life) == {"2": STAGING, "1": PROD}
    out = ok(life("promote"))
    assert f"Version 2 is live on {PROD}" in out
    assert serving_version(life, PROD) == "2"
    assert live(life) == {"2": f"{PROD}, {STAGING}", "1": ""}
    assert last_message(life)["action"] == "promote"


def test_a_rejected_version_cannot_be_deployed_again(life: Project) -> None:
    ok(life("reject", "1", "--note", "leaks the label"))
    refused(life("deploy", "1"), 2, "Version 1 of life-demo is Rejected", "sagepipe approve 1")
    rows = {r["version"]: r for r in table(ok(life("models")))}
    assert rows["1"]["approval"] == "Rejected"
    assert serving_version(life, PROD) == "2"


def wait_paused(project: str, run: subprocess.Popen[str]) -> None:
    """Until a flow run of ml-pipeline for ``project`` is paused for input."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert run.poll() is None, run.stdout.read() if run.stdout else ""
            for flow_run in client.read_flow_runs():
                config = (flow_run.parameters or {}).get("config") or {}
                if config.get("project") == project and flow_run.state and \
                        flow_run.state.is_paused():
                    return
            time.sleep(0.5)
    raise AssertionError(f"no flow run of {project} paused for approval")


def test_approve_answers_the_flow_run_paused_for_the_version(tmp_path: Path) -> None:
    project = make_project(tmp_path, "life-manual", name="life-manual")
    run = project.popen("run", "--set", "gate.approval=manual",
                        "--set", "gate.approval_timeout_seconds=300")
    try:
        wait_paused("life-manual", run)
        sm = project.clients.sagemaker
        packages = sm.list_model_packages(ModelPackageGroupName="life-manual")[
            "ModelPackageSummaryList"]
        assert [p["ModelApprovalStatus"] for p in packages] == ["PendingManualApproval"]
        said = ok(project("approve", "1", "--note", "checked the plots"))
        assert "Answered flow run" in said and "deploys the version" in said
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0 and "deployed" in output, output[-3000:]
        package = sm.describe_model_package(ModelPackageName=packages[0]["ModelPackageArn"])
        assert package["ModelApprovalStatus"] == "Approved"
        assert f"from the CLI by {USER}: checked the plots" in package["ApprovalDescription"]
        assert live(project) == {"1": "life-manual"}
    finally:
        if run.poll() is None:
            run.kill()
        teardown(project.state.resolve())
