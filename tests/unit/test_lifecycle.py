"""flows.lifecycle on the local runtime's registry, without a pipeline run or an endpoint:
which version a VERSION names, who answers an approval, what a deploy refuses first, and
what a deploy the endpoint did not take leaves behind (deploy_package faked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from sagepipe.flows import lifecycle
from sagepipe.flows.cli import app
from sagepipe.flows.config import PipelineConfig, build_config
from sagepipe.tasks.errors import (
    ConfigError,
    DataError,
    DeployRolledBack,
    EndpointError,
    RegistryError,
)
from sagepipe.tasks.local import teardown
from sagepipe.tasks.registry import ensure_group, find_package, register_package
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import ensure_local_resources, list_run_records, write_run_record

RUN_ID = "5f0e7c2a-9d7e-4a43-9a55-0d6f3f1b2c3d"


@pytest.fixture()
def config(tmp_path: Path) -> Iterator[PipelineConfig]:
    made = build_config({"project": "unit-life",
                         "runtime": {"kind": "local", "state_dir": str(tmp_path / "state")},
                         "artifacts_uri": "s3://unit-life/pipeline",
                         "endpoint": {"name": "unit-prod"}})
    yield made
    teardown((tmp_path / "state").resolve())


def register(config: PipelineConfig, approval: str, key: str, **metadata: str) -> str:
    clients = get_clients(config.runtime)
    ensure_group(clients, config.model_package_group, "unit")
    return register_package(
        clients, group=config.model_package_group, idempotency_key=key,
        image="000000000000.dkr.ecr.us-east-1.amazonaws.com/serve@sha256:" + "0" * 64,
        model_data_url=f"s3://unit-life/models/{key}/model.tar.gz",
        evaluation_uri=f"s3://unit-life/eval/{key}/evaluation.json", approval=approval,
        description="test", metadata={"commit": "c0ffee", **metadata},
        instance_type="ml.m5.large")


def package(config: PipelineConfig, arn: str) -> dict[str, Any]:
    return dict(get_clients(config.runtime).sagemaker.describe_model_package(
        ModelPackageName=arn))


def test_a_version_is_named_by_number_v_number_or_arn(config: PipelineConfig) -> None:
    first = register(config, "approved", "a")
    second = register(config, "rejected", "b")
    clients = get_clients(config.runtime)
    assert find_package(clients, "unit-life", "2")["ModelPackageArn"] == second
    assert find_package(clients, "unit-life", "v1")["ModelPackageArn"] == first
    assert find_package(clients, "unit-life", first)["ModelPackageVersion"] == 1
    with pytest.raises(RegistryError, match=r"No version '7' .* newest first: 2, 1\)"):
        find_package(clients, "unit-life", "7")
    with pytest.raises(RegistryError, match="belongs to the model package group 'unit-life'"):
        find_package(clients, "other-project", first)
    with pytest.raises(RegistryError, match="No model package arn:"):
        find_package(clients, "unit-life", first[:-1] + "9")


def test_without_a_prefect_api_the_registry_alone_is_updated(
        config: PipelineConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = register(config, "pending", "a", flow_run_id=RUN_ID)

    def unreachable(project: str, flow_run_id: str) -> None:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(lifecycle, "_paused_run", unreachable)
    monkeypatch.setattr(lifecycle, "_apis", lambda config: [None])  # PREFECT_API_URL set
    answered = lifecycle.decide(config, "1", approve=True, note="ok", by="ana")
    assert answered.flow_run is None and "connection refused" in (answered.api_problem or "")
    described = package(config, arn)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == "Approved from the CLI by ana: ok"


def test_with_no_api_and_no_server_of_ours_the_registry_alone_is_updated(
        config: PipelineConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    register(config, "pending", "a", flow_run_id=RUN_ID)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(lifecycle, "_paused_run", lambda *_: pytest.fail("no API to ask"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        answered = lifecycle.decide(config, "1", approve=False, note="no", by="ana")
    assert answered.approval == "rejected"
    assert "no Prefect server sagepipe started is running here" in (answered.api_problem or "")
    sns = get_clients(config.runtime).sns
    topic = sns.create_topic(Name=f"{config.project}-events")["TopicArn"]
    assert '"outcome": "rejected"' in sns.messages(topic)[-1]["Message"]  # announced


def test_a_paused_run_gets_the_answer_and_records_it_itself(
        config: PipelineConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = register(config, "pending", "a", flow_run_id=RUN_ID)
    asked: list[str] = []
    resumed: list[tuple[Any, dict[str, Any]]] = []
    run = SimpleNamespace(id=RUN_ID, name="able-heron")

    def paused(project: str, flow_run_id: str) -> Any:
        asked.append(f"{project} {flow_run_id}")
        return run

    monkeypatch.setattr(lifecycle, "_paused_run", paused)
    monkeypatch.setattr(lifecycle, "_resume", lambda i, answer: resumed.append((i, answer)))
    monkeypatch.setattr(lifecycle, "_apis", lambda config: [None])  # PREFECT_API_URL set
    answered = lifecycle.decide(config, "1", approve=False, note="too slow", by="ana")
    assert asked == [f"unit-life {RUN_ID}"]
    assert resumed == [(RUN_ID, {"approve": False, "note": "from the CLI by ana: too slow"})]
    assert answered.flow_run is run
    assert package(config, arn)["ModelApprovalStatus"] == "PendingManualApproval"


def test_a_version_not_pending_is_set_without_asking_prefect(
        config: PipelineConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = register(config, "rejected", "a", flow_run_id=RUN_ID)

    def never(project: str, flow_run_id: str) -> None:
        raise AssertionError("no paused run can wait for a version that is not pending")

    monkeypatch.setattr(lifecycle, "_paused_run", never)
    lifecycle.decide(config, "1", approve=True, by="ana")
    assert package(config, arn)["ApprovalDescription"] == "Approved from the CLI by ana"


def test_a_deploy_refuses_before_touching_any_endpoint(config: PipelineConfig) -> None:
    register(config, "pending", "a")
    register(config, "approved", "b", flow_run_id=RUN_ID)  # no bucket, no record of its run
    with pytest.raises(RegistryError, match=r"PendingManualApproval .* sagepipe approve 1"):
        lifecycle.deploy_version(config, "1")
    with pytest.raises(EndpointError, match="No endpoint named 'typo-prod'"):
        lifecycle.deploy_version(config, "2", endpoint="typo-prod")
    with pytest.raises(DataError, match="recorded a test split"):
        lifecycle.deploy_version(config, "2")
    sm = get_clients(config.runtime).sagemaker
    assert sm.list_endpoints()["Endpoints"] == []


def test_promote_needs_a_staging_endpoint_with_a_model(config: PipelineConfig) -> None:
    with pytest.raises(ConfigError, match="No staging endpoint is configured"):
        lifecycle.promote(config)
    staged = config.model_copy(update={"endpoint": config.endpoint.model_copy(
        update={"staging_name": "unit-staging"})})
    with pytest.raises(EndpointError, match="No registered model is live on the staging"):
        lifecycle.promote(staged)


def test_a_deploy_the_endpoint_did_not_take_exits_1_recorded_and_notified(
        config: PipelineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clients = get_clients(config.runtime)
    topic = ensure_local_resources(config.runtime, "unit-life", "unit-life-events")
    clients.s3.put_object(Bucket="unit-life", Key="pipeline/split/test/test.csv",
                          Body=b"a,b,target\n1.5,2.5,1\n3.5,4.5,0\n")
    write_run_record(clients, config.artifacts_uri, RUN_ID, {
        "run_id": RUN_ID, "outcome": "deployed", "steps": {"preprocess": {"outputs": {
            "test": "s3://unit-life/pipeline/split/test"}}}})
    register(config, "approved", "a", flow_run_id=RUN_ID)
    sent: list[str] = []

    def rolled_back(clients: Any, **request: Any) -> None:
        sent.append(request["smoke_payload"])
        raise DeployRolledBack(request["endpoint"], "Smoke test of unit-prod failed (model "
                               "error); rolled back to unit-prod-v0-cfg.")

    monkeypatch.setattr(lifecycle, "deploy_package", rolled_back)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(config.model_dump()))
    result = CliRunner().invoke(app, ["deploy", "1", "--env", str(settings)])
    assert result.exit_code == 1, result.output
    progress, message = result.stderr.splitlines()
    assert progress == ("  Deploying version 1 (arn:aws:sagemaker:us-east-1:000000000000:"
                        "model-package/unit-life/1) to unit-prod")
    assert message.startswith("Smoke test of unit-prod failed (model error); rolled back")
    assert sent == ["1.5,2.5\n3.5,4.5\n"]  # the version's own test split, label dropped
    record = list_run_records(clients, config.artifacts_uri, limit=1)[0]
    assert (record["outcome"], record["action"]) == ("rolled_back", "deploy")
    assert record["run_id"].startswith("cli-") and record["model_package"]["version"] == 1
    message = clients.sns.messages(topic)[-1]
    assert '"outcome": "rolled_back"' in message["Message"]
