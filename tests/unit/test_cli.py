"""``sagepipe`` refuses bad input with a clear message, and loses or changes nothing.

Every test drives ``flows.cli.app`` through typer's CliRunner with its own settings
file (a copy of deployments/settings/local.yaml pointing at a state dir under
tmp_path). The endpoint tests start the real serve container on the local runtime
with a model trained by the real train.py; the pipeline flow itself is not run here.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml
from restarts import simulate_machine_restart
from sklearn.datasets import load_breast_cancer
from typer.testing import CliRunner, Result

from sagepipe.flows.cli import app
from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.tasks.data import parse_s3_uri
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import EndpointError
from sagepipe.tasks.local import teardown
from sagepipe.tasks.local.common import pid_alive
from sagepipe.tasks.local.images import registry_host
from sagepipe.tasks.runtime import Clients, get_clients

PROJECT = Path(__file__).resolve().parents[2]
LOCAL_SETTINGS = PROJECT / "deployments" / "settings" / "local.yaml"
CONTAINERS = PROJECT / "containers"
ROLE = "arn:aws:iam::000000000000:role/sagepipe-test"
LIMIT_MB = "0.01"  # the endpoint's payload limit: 10485 bytes
# enough rows per class for every split (8 at the default 15% shares)
GOOD_CSV = "a,b,target\n" + "".join(f"{i}.0,{i % 7}.5,{i % 2}\n" for i in range(24))

runner = CliRunner()


@dataclass
class Env:
    """One isolated sagepipe environment: a settings file and the state dir it names."""

    settings: Path
    state: Path
    endpoint: str

    def cli(self, *args: str, input: str | bytes | None = None) -> Result:
        return runner.invoke(app, [*args, "--env", str(self.settings)], input=input)

    @property
    def config(self) -> PipelineConfig:
        return load_config(str(self.settings))

    @property
    def clients(self) -> Clients:
        return get_clients(self.config.runtime)


def make_env(directory: Path, **top_level: Any) -> Env:
    data = yaml.safe_load(LOCAL_SETTINGS.read_text())
    endpoint = f"cli-{uuid.uuid4().hex[:10]}"
    data["runtime"]["state_dir"] = str(directory / "state")
    data["endpoint"]["name"] = endpoint
    data.update(top_level)
    settings = directory / "settings.yaml"
    settings.write_text(yaml.safe_dump(data))
    return Env(settings, directory / "state", endpoint)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    made = make_env(tmp_path)
    yield made
    if made.state.exists():
        teardown(made.state.resolve())


# -- data push ---------------------------------------------------------------------------


def stored_versions(env: Env) -> list[dict[str, Any]]:
    bucket, key = parse_s3_uri(env.config.dataset_uri)
    listing = env.clients.s3.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in listing.get("Versions", []) if v["Key"] == key]


def stored_body(env: Env) -> bytes:
    bucket, key = parse_s3_uri(env.config.dataset_uri)
    return bytes(env.clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def pushed_version(env: Env, result: Result) -> str:
    assert result.exit_code == 0, result.output
    prefix = f"Stored {env.config.dataset_uri} version "
    first, *rest = result.stdout.splitlines()
    assert first.startswith(prefix), result.stdout
    assert rest[0].startswith("Data: CSV") and "problem binary (inferred: " in rest[0]
    return first[len(prefix):].strip()


def versions_table(env: Env) -> list[list[str]]:
    """`sagepipe data versions` rows (key, version, latest, bytes, ...) under its header."""
    result = env.cli("data", "versions")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["key", "version", "latest", "bytes"]
    return [line.split() for line in lines[1:]]


BAD_DATA = [
    pytest.param("a,b\n1,2\n3,4\n",
                 ["has no label column 'target'", "Columns found (comma-separated CSV): a, b.",
                  "Set label_column to one of them, or add the column."],
                 id="no-label-column"),
    pytest.param("", ["is empty. Push a table with a header row and data rows."], id="empty"),
    pytest.param("a,b,target\n", ["has a header but no data rows. Push data rows too."],
                 id="header-only"),
    pytest.param("a,b,target\n1,2,0\n3,4\n",
                 ["line 3 has 2 fields; the header has 3."], id="field-count"),
    pytest.param("PK\x03\x04\x00\x00", ["looks like a ZIP archive (an Excel .xlsx workbook is "
                                        "one), not a data table"], id="excel"),
    pytest.param("a,b,target\n" + "".join(f"{i},2,{int(i >= 30)}\n" for i in range(33)),
                 ["classes with fewer than 8 rows (1: 3)"], id="small-class"),
]


@pytest.mark.parametrize(("content", "message"), BAD_DATA)
def test_data_push_refuses_bad_data_and_keeps_the_stored_version(
        env: Env, tmp_path: Path, content: str, message: list[str]) -> None:
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    version = pushed_version(env, env.cli("data", "push", str(good)))
    bad = tmp_path / "bad.csv"
    bad.write_text(content)

    result = env.cli("data", "push", str(bad))

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Refused: ")
    assert str(bad) in result.stderr  # says which file
    for part in message:
        assert part in result.stderr
    assert "Traceback" not in result.output
    assert [(v["VersionId"], v["IsLatest"]) for v in stored_versions(env)] == [(version, True)]
    rows = versions_table(env)
    assert len(rows) == 1
    assert rows[0][:4] == [parse_s3_uri(env.config.dataset_uri)[1], version, "True",
                           str(len(GOOD_CSV))]
    assert stored_body(env) == GOOD_CSV.encode()


def test_data_push_of_a_missing_file_is_refused(env: Env, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    version = pushed_version(env, env.cli("data", "push", str(good)))
    missing = tmp_path / "nowhere" / "data.csv"

    result = env.cli("data", "push", str(missing))

    assert result.exit_code == 2, result.output
    assert result.stderr == f"No file {missing}.\n"
    assert [(v["VersionId"], v["IsLatest"]) for v in stored_versions(env)] == [(version, True)]
    assert [row[1:3] for row in versions_table(env)] == [[version, "True"]]


def test_data_push_needs_exactly_one_of_a_file_and_example(env: Env, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    for args in ([], [str(good), "--example"]):
        result = env.cli("data", "push", *args)
        assert result.exit_code == 2, result.output
        assert result.stderr == "Give a CSV file or --example (one of them).\n"
    assert stored_versions(env) == []
    assert env.cli("data", "versions").stdout == "  no versions\n"


def test_data_push_example_then_if_missing_does_nothing(env: Env) -> None:
    version = pushed_version(env, env.cli("data", "push", "--example"))
    stored = stored_versions(env)
    assert [(v["VersionId"], v["IsLatest"]) for v in stored] == [(version, True)]
    body = stored_body(env).decode()
    assert body.splitlines()[0].split(",")[-1] == "target"
    assert len(body.splitlines()) == 570  # header + 569 rows of the breast cancer data

    again = env.cli("data", "push", "--example", "--if-missing")

    assert again.exit_code == 0, again.output
    assert again.stdout == f"{env.config.dataset_uri} already has data; not pushing.\n"
    assert stored_versions(env) == stored
    assert [row[1:3] for row in versions_table(env)] == [[version, "True"]]


def test_data_push_if_missing_pushes_into_an_empty_store(env: Env) -> None:
    version = pushed_version(env, env.cli("data", "push", "--example", "--if-missing"))
    assert [v["VersionId"] for v in stored_versions(env)] == [version]


# -- config refused before anything runs ---------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    pytest.param(["--set", "gate.treshold=0.8"],
                 ["- unknown key 'gate.treshold'. Did you mean 'threshold'? Known keys here: "
                  "metric, threshold, margin, approval, approval_timeout_seconds"],
                 id="unknown-key"),
    pytest.param(["--set", "gate.threshold=1.5"],
                 ["- gate: ", "gate.threshold 1.5 is out of range for roc_auc, which lies in "
                  "[0, 1]"], id="out-of-range"),
    pytest.param(["--set", "gate.margin=-0.1"],
                 ["- gate.margin: Input should be greater than or equal to 0 (got -0.1)"],
                 id="negative-margin"),
])
def test_run_refuses_bad_overrides_before_anything_runs(
        env: Env, overrides: list[str], message: list[str]) -> None:
    result = env.cli("run", *overrides)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"Invalid pipeline config in {env.settings}:\n")
    for part in message:
        assert part in result.stderr
    assert "Run failed" not in result.output
    assert not env.state.exists()  # no client was made: no job, no bucket, no state at all


@pytest.mark.parametrize(("overrides", "message", "needs_data"), [
    pytest.param(["--set", "hyperparameters.learning_rat=0.1"],
                 "Invalid hyperparameters: learning_rat is not a parameter of linear (did you "
                 "mean 'learning_rate'? that is a parameter of hist_gradient_boosting, "
                 "xgboost); linear takes C, alpha, max_iter", False, id="typo"),
    pytest.param(["--set", "hyperparameters.model=xgboost", "--set",
                  "hyperparameters.max_depth=500"],
                 "max_depth must be a whole number >= 1 and <= 100; got 500", False, id="range"),
    pytest.param(["--set", "gate.metric=r2"],
                 "The settings do not fit this binary problem (inferred from the data): "
                 "gate.metric r2 is a metric of regression problems", True, id="metric-vs-data"),
    pytest.param(["--set", "hyperparameters.alpha=2"],
                 "alpha does not apply to linear for a binary problem (it is for regression)",
                 True, id="parameter-vs-data"),
])
def test_run_checks_settings_against_the_data_before_any_job(
        env: Env, tmp_path: Path, overrides: list[str], message: str, needs_data: bool) -> None:
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    pushed_version(env, env.cli("data", "push", str(good)))

    result = env.cli("run", *overrides)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.output
    sm = env.clients.sagemaker
    assert sm.list_processing_jobs()["ProcessingJobSummaries"] == []
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
    plan = env.cli("plan", *overrides)  # no data, no credentials: what the settings say
    assert plan.exit_code == (0 if needs_data else 2), plan.output
    assert needs_data or message in plan.stderr


def test_a_run_over_budget_is_refused_before_prefect_starts(env: Env) -> None:
    result = env.cli("run", "--set", "budget.max_usd_per_run=0.2")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "more than budget.max_usd_per_run 0.2000 USD" in result.stderr
    assert "  - train job: " in result.stderr and "To fit:" in result.stderr
    assert "Traceback" not in result.output
    sm = env.clients.sagemaker
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
    assert sm.list_processing_jobs()["ProcessingJobSummaries"] == []


def test_run_without_data_is_refused_before_prefect_starts(env: Env) -> None:
    result = env.cli("run")
    assert result.exit_code == 2, result.output
    assert "Bucket sagepipe-local does not exist" in result.stderr or "No dataset at" in \
        result.stderr
    assert "sagepipe data push" in result.stderr


def test_run_refuses_a_settings_file_with_an_unknown_top_level_key(tmp_path: Path) -> None:
    env = make_env(tmp_path, projekt="typo")

    result = env.cli("run")

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Invalid pipeline config in {env.settings}:\n")
    assert "- unknown key 'projekt'. Did you mean 'project'? Known keys here: project, " \
        in result.stderr
    assert not env.state.exists()
    config = env.cli("config")
    assert config.exit_code == 2
    assert "unknown key 'projekt'" in config.stderr


def test_a_set_without_equals_is_a_usage_error(env: Env) -> None:
    result = env.cli("run", "--set", "gate.margin")
    assert result.exit_code == 2, result.output
    assert "'gate.margin': use key=value, e.g. gate.margin=0.01" in result.stderr
    assert not env.state.exists()


def test_config_prints_the_effective_config_with_overrides(env: Env) -> None:
    result = env.cli("config", "--set", "gate.margin=0.05")

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["gate"]["margin"] == 0.05
    assert printed["gate"]["approval"] == "auto"  # the rest of gate is the settings file's
    assert printed["runtime"]["state_dir"] == str(env.state)
    assert printed["endpoint"]["name"] == env.endpoint
    assert json.loads(env.cli("config").stdout)["gate"]["margin"] == 0.001


# -- status and down on a fresh state ---------------------------------------------------


def test_status_on_a_fresh_state_shows_three_empty_sections(env: Env) -> None:
    result = env.cli("status")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Runs (newest first)\n  no runs yet: sagepipe run\n\n"
        "Model versions (sagepipe-demo)\n  no model registered yet\n\n"
        "Endpoints\n  no endpoints\n")


def test_down_on_a_fresh_state_says_nothing_is_running(env: Env) -> None:
    result = env.cli("down")

    assert result.exit_code == 0, result.output
    assert result.stdout == "Nothing is running.\n"
    assert not env.state.exists()


def test_invoke_of_an_unknown_endpoint_points_to_status(env: Env) -> None:
    result = env.cli("invoke", "no-such-endpoint", "-", input="1,2,3\n")

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr == ("No endpoint named 'no-such-endpoint'. `sagepipe status` lists the "
                             "endpoints.\n")


def test_invoke_of_a_missing_payload_file_is_a_usage_error(env: Env, tmp_path: Path) -> None:
    result = env.cli("invoke", "no-such-endpoint", str(tmp_path / "row.csv"))
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"No file {tmp_path / 'row.csv'}; give a payload file or - to read "
                             "standard input.\n")


# -- a real endpoint: the serve container with a model from train.py ---------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by containers/train/train.py on the breast cancer data."""
    base = tmp_path_factory.mktemp("train")
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True)
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    frame.to_csv(channel / "train.csv", index=False)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    clean.update(SAGEMAKER_BASE_DIR=str(base), SM_CHANNEL_TRAIN=str(channel),
                 SM_MODEL_DIR=str(base / "model"),
                 SM_HPS=json.dumps({"problem": "binary", "model": "linear"}))
    done = subprocess.run([sys.executable, str(CONTAINERS / "train" / "train.py")], env=clean,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return base / "model"


@pytest.fixture(scope="module")
def sample_row() -> str:
    """The first breast cancer row's 30 features, as one CSV line."""
    frame = load_breast_cancer(as_frame=True).frame
    return ",".join(repr(float(v)) for v in frame.drop(columns="target").iloc[0]) + "\n"


def model_tar(model: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("model.joblib", "model.json"):
            tar.add(model / name, arcname=name)
    return buffer.getvalue()


def start_endpoint(env: Env, model: Path, **environment: str) -> dict[str, Any]:
    """Serve ``model`` with the real containers/serve on ``env.endpoint``; wait for InService."""
    clients, root = env.clients, env.state.resolve()
    clients.s3.create_bucket(Bucket="cli-models")
    clients.s3.put_object(Bucket="cli-models", Key="model.tar.gz", Body=model_tar(model))
    digest = clients.ecr.push("sagepipe-serve", "cli-test", CONTAINERS / "serve", root)
    sm, name = clients.sagemaker, env.endpoint
    sm.create_model(ModelName=f"{name}-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": f"{registry_host('us-east-1')}/sagepipe-serve@{digest}",
        "ModelDataUrl": "s3://cli-models/model.tar.gz", "Environment": environment})
    sm.create_endpoint_config(EndpointConfigName=f"{name}-cfg", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"{name}-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large", "ContainerStartupHealthCheckTimeoutInSeconds": 60}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    deadline = time.monotonic() + 60
    while (described := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline, "endpoint did not leave Creating"
        time.sleep(0.1)
    assert described["EndpointStatus"] == "InService", described.get("FailureReason")
    return {"config": described["EndpointConfigName"],
            "pid": sm.state.get("endpoint", name)["current"]["pid"]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Env]:
    """An InService endpoint with a small payload limit, shared by the invoke tests."""
    env = make_env(tmp_path_factory.mktemp("live"))
    try:
        start_endpoint(env, model_dir, SAGEMAKER_MAX_PAYLOAD_IN_MB=LIMIT_MB)
        yield env
    finally:
        teardown(env.state.resolve())


def expected_prediction(model: Path, row: str) -> dict[str, Any]:
    """The label and the probability of class 1, from the trained pipeline in-process."""
    pipeline = joblib.load(model / "model.joblib")
    features = json.loads((model / "model.json").read_text())["feature_columns"]
    frame = pd.DataFrame([[float(v) for v in row.split(",")]], columns=features)
    proba = float(pipeline.predict_proba(frame)[0, 1])
    return {"label": int(proba >= 0.5), "p1": proba}


def assert_prediction(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    assert answer["label"] == expected["label"]
    assert answer["probabilities"]["1"] == pytest.approx(expected["p1"], abs=1e-9)
    assert answer["probability"] == pytest.approx(max(expected["p1"], 1 - expected["p1"]),
                                                  abs=1e-9)


def assert_answers(env: Env, model: Path, row: str, tmp_path: Path) -> None:
    payload = tmp_path / "row.csv"
    payload.write_text(row)
    result = env.cli("invoke", env.endpoint, str(payload))
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    assert len(predictions) == 1
    assert_prediction(predictions[0], expected_prediction(model, row))


def test_invoke_prints_predictions_from_a_file_and_stdin(
        live: Env, model_dir: Path, sample_row: str, tmp_path: Path) -> None:
    assert_answers(live, model_dir, sample_row, tmp_path)
    piped = live.cli("invoke", live.endpoint, "-", input=sample_row + sample_row)
    assert piped.exit_code == 0, piped.output
    assert len(json.loads(piped.stdout)["predictions"]) == 2
    as_csv = live.cli("invoke", live.endpoint, "-", "--accept", "text/csv", input=sample_row)
    assert as_csv.exit_code == 0, as_csv.output
    label, probability = as_csv.stdout.strip().split(",")
    assert int(label) == expected_prediction(model_dir, sample_row)["label"]
    assert 0.5 <= float(probability) <= 1.0


def oversized(row: str) -> str:
    body = row * (20_000 // len(row) + 1)
    assert len(body) > 10485 * 1.5
    return body


BAD_REQUESTS = [
    pytest.param(lambda row: "1,2,3\n", "text/csv", 400,
                 "Expected 30 values per row, got 3 in row 1.", id="columns"),
    pytest.param(lambda row: row + "1,2\n", "text/csv", 400,
                 "CSV row 2 has 2 values but row 1 has 30; every row needs one value per "
                 "feature.", id="ragged"),
    pytest.param(lambda row: "abc," + row.split(",", 1)[1], "text/csv", 400,
                 "Non-numeric value 'abc' for 'mean_radius' in row 1; send a number, or null "
                 "(an empty CSV cell) for a missing value.", id="text"),
    pytest.param(lambda row: row, "text/plain", 415,
                 "Unsupported Content-Type 'text/plain'; send text/csv or application/json.",
                 id="content-type"),
    pytest.param(lambda row: '{"instances": [[1, 2', "application/json", 400, "Invalid JSON: ",
                 id="bad-json"),
    pytest.param(oversized, "text/csv", 413,
                 "exceeds the 10485 byte limit; send smaller batches.", id="too-large"),
]


@pytest.mark.parametrize(("make", "content_type", "status", "message"), BAD_REQUESTS)
def test_invoke_shows_the_containers_refusal_and_the_endpoint_keeps_serving(
        live: Env, model_dir: Path, sample_row: str, tmp_path: Path, make: Any,
        content_type: str, status: int, message: str) -> None:
    before = live.clients.sagemaker.state.get("endpoint", live.endpoint)["current"]
    payload = tmp_path / "payload"
    payload.write_text(make(sample_row))

    result = live.cli("invoke", live.endpoint, str(payload), "-t", content_type)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"{live.endpoint} refused the request ({status}): ")
    assert message in result.stderr
    assert "Traceback" not in result.output
    described = live.clients.sagemaker.describe_endpoint(EndpointName=live.endpoint)
    assert described["EndpointStatus"] == "InService"
    assert "FailureReason" not in described
    after = live.clients.sagemaker.state.get("endpoint", live.endpoint)["current"]
    assert (after["pid"], after["config"]) == (before["pid"], before["config"])
    assert pid_alive(after["pid"])
    assert_answers(live, model_dir, sample_row, tmp_path)


def test_json_sent_as_csv_is_told_to_add_the_content_type(live: Env, sample_row: str,
                                                         tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"instances": [sample_row.strip().split(",")]}))
    result = live.cli("invoke", live.endpoint, str(payload))  # -t defaults to text/csv
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"{live.endpoint} refused the request (400): ")
    assert "looks like JSON but was sent as text/csv (the default): add -t " \
        "application/json." in " ".join(result.stderr.split())
    as_json = live.cli("invoke", live.endpoint, str(payload), "-t", "application/json")
    assert as_json.exit_code == 0, as_json.output


@pytest.mark.parametrize(("make", "content_type", "status", "message"), BAD_REQUESTS)
def test_invoke_task_raises_endpoint_error_with_the_status(
        live: Env, model_dir: Path, sample_row: str, make: Any, content_type: str,
        status: int, message: str) -> None:
    with pytest.raises(EndpointError) as err:
        invoke(live.clients, live.endpoint, make(sample_row).encode(), content_type=content_type)
    assert err.value.status == status
    assert err.value.endpoint == live.endpoint
    assert str(err.value).startswith(f"{live.endpoint} refused the request ({status}): ")
    assert message in str(err.value)
    answer = json.loads(invoke(live.clients, live.endpoint, sample_row))
    assert len(answer["predictions"]) == 1
    assert_prediction(answer["predictions"][0], expected_prediction(model_dir, sample_row))


def test_invoke_task_on_an_unknown_endpoint_has_no_status(live: Env) -> None:
    with pytest.raises(EndpointError) as err:
        invoke(live.clients, "no-such-endpoint", "1,2\n")
    assert err.value.status is None
    assert str(err.value) == ("No endpoint named 'no-such-endpoint'. `sagepipe status` lists "
                              "the endpoints.")


def test_status_lists_the_live_endpoint(live: Env) -> None:
    result = live.cli("status")
    assert result.exit_code == 0, result.output
    section = result.stdout.split("Endpoints\n", 1)[1].splitlines()
    assert section[0].split() == ["endpoint", "status", "config", "updated", "failure"]
    assert section[1].split()[:3] == [live.endpoint, "InService", f"{live.endpoint}-cfg"]


# -- down ----------------------------------------------------------------------------------


def test_down_deletes_the_endpoint_and_stops_its_server(
        env: Env, model_dir: Path, sample_row: str) -> None:
    started = start_endpoint(env, model_dir)
    assert pid_alive(started["pid"])
    assert env.cli("invoke", env.endpoint, "-", input=sample_row).exit_code == 0

    result = env.cli("down")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"Deleted endpoints: {env.endpoint}; stopped jobs: none.\n"
    assert not pid_alive(started["pid"])
    assert env.clients.sagemaker.list_endpoints()["Endpoints"] == []
    gone = env.cli("invoke", env.endpoint, "-", input=sample_row)
    assert gone.exit_code == 1
    assert f"No endpoint named '{env.endpoint}'" in gone.stderr
    # data, models and records are kept: only processes go
    env.clients.s3.head_object(Bucket="cli-models", Key="model.tar.gz")
    assert env.clients.sagemaker.describe_model(ModelName=f"{env.endpoint}-model")
    again = env.cli("down")
    assert again.stdout == "Deleted endpoints: none; stopped jobs: none.\n"


def test_status_names_an_endpoint_down_after_a_restart_and_up_brings_it_back(
        env: Env, model_dir: Path, sample_row: str) -> None:
    """Issue 19: after a machine restart `sagepipe status` says which endpoints are down,
    and one command, `sagepipe up`, brings them back on the config they served."""
    start_endpoint(env, model_dir)
    simulate_machine_restart(env.state.resolve())

    status = env.cli("status")

    assert status.exit_code == 0, status.output
    row = status.stdout.split("Endpoints\n", 1)[1].splitlines()[1].split()
    assert row[:3] == [env.endpoint, "OutOfService", f"{env.endpoint}-cfg"]
    assert f"Down (their processes are gone, e.g. after a machine restart): {env.endpoint}. " \
        in status.stdout
    assert "up` starts them again." in status.stdout
    refused = env.cli("invoke", env.endpoint, "-", input=sample_row)
    assert refused.exit_code == 1
    assert "status OutOfService" in refused.stderr and "sagepipe up" in refused.stderr

    up = env.cli("up")

    assert up.exit_code == 0, up.output
    assert up.stdout == f"{env.endpoint}: OutOfService -> InService on {env.endpoint}-cfg\n"
    assert env.cli("invoke", env.endpoint, "-", input=sample_row).exit_code == 0
    again = env.cli("up")
    assert again.stdout == f"{env.endpoint}: InService (was running)\n"


def test_up_with_no_local_state_has_nothing_to_start(env: Env) -> None:
    result = env.cli("up")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("No local endpoints here")


def test_run_with_a_prefect_api_that_does_not_answer_exits_4_before_any_job(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    pushed_version(env, env.cli("data", "push", str(good)))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there

    result = env.cli("run")

    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("No Prefect API answers at http://127.0.0.1:9/api "
                                    "(PREFECT_API_URL): ConnectError")
    assert "unset PREFECT_API_URL and sagepipe runs a local one" in result.stderr
    assert "Traceback" not in result.output
    assert env.clients.sagemaker.list_processing_jobs()["ProcessingJobSummaries"] == []
    assert not (env.state / "prefect").exists()  # no server of ours was started instead


def test_every_command_that_reads_settings_takes_env_and_set_alike(env: Env) -> None:
    from typer.main import get_command

    def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, (*path, name))
            else:
                yield " ".join((*path, name)), command

    readers = set()
    for name, command in commands(get_command(app)):
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        # trigger: --set changes the deployment's own config; its settings live there
        if options & {"--env", "--set"} and name != "trigger":
            assert {"--env", "--set"} <= options, name
            readers.add(name)
    assert readers >= {"run", "status", "logs", "invoke", "up", "down", "plan", "config",
                       "models",
                       "approve", "reject", "deploy", "promote", "data push",
                       "data versions", "data list"}
    # and --set means the same everywhere: here, another project's registry
    result = env.cli("status", "--set", "project=elsewhere")
    assert result.exit_code == 0, result.output
    assert "Model versions (elsewhere)" in result.stdout


def test_heartbeats_are_sent_by_a_cli_run_only_when_the_user_asks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Prefect's default heartbeat thread costs ~0.5 s at every run's exit (joined in 1 s
    sleeps); set by the user (environment or profile), it is honoured."""
    from sagepipe.flows.runner import _heartbeats_asked_for

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    assert not _heartbeats_asked_for()
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    assert _heartbeats_asked_for()
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    import prefect.context

    active = prefect.context.get_settings_context().profile.name  # the one this process uses
    (tmp_path / "profiles.toml").write_text(
        f'active = "{active}"\n[profiles.{active}]\nPREFECT_FLOWS_HEARTBEAT_FREQUENCY = "90"\n')
    from prefect.settings import PREFECT_PROFILES_PATH, temporary_settings

    with temporary_settings(updates={PREFECT_PROFILES_PATH: tmp_path / "profiles.toml"}):
        assert _heartbeats_asked_for()


@pytest.mark.parametrize(("argv0", "cwd", "shown"), [
    ("/opt/p/.venv/bin/sagepipe", "/opt/p", ".venv/bin/sagepipe"),  # from the project
    ("/opt/p/.venv/bin/sagepipe", "/tmp/x/y/z", "/opt/p/.venv/bin/sagepipe"),  # not ../../..
    ("bin/sagepipe", "/opt/p", "bin/sagepipe"),
])
def test_the_command_to_call_again_is_the_shorter_path_when_not_on_path(
        monkeypatch: pytest.MonkeyPatch, argv0: str, cwd: str, shown: str) -> None:
    from sagepipe.flows import cli

    monkeypatch.setattr(sys, "argv", [argv0, "run"])
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(os, "getcwd", lambda: cwd)
    assert cli._me() == shown


def test_a_rejected_first_run_says_there_is_no_endpoint_yet_not_that_it_is_not_answering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The first run of a project, rejected by the gate: nothing was ever deployed."""
    from sagepipe.flows import runner
    from sagepipe.flows.console import RunView
    from sagepipe.tasks import storage

    config = load_config("local", overrides={"runtime": {"state_dir": str(tmp_path / "s")},
                                             "endpoint": {"name": "never-deployed"}})
    monkeypatch.setattr(storage, "latest_sample_rows", lambda *a, **k: "1.0,2.0\n")
    record = {"outcome": "rejected", "run_name": "first", "run_id": "r1",
              "summary": "reject: roc_auc 0.71 misses the threshold (at least 0.9)",
              "record_uri": "s3://sagepipe-local/pipeline/runs/r1/record.json",
              "model_package": {"arn": "arn:aws:sagemaker:us-east-1:0:model-package/p/1"}}
    try:
        code = runner._report(config, record, RunView("plain"), "sagepipe")
    finally:
        teardown(tmp_path / "s")
    out = capsys.readouterr().out
    assert code == 5
    assert "Endpoint never-deployed: none yet (no model of this project has been deployed" \
        in out
    assert "not answering" not in out
    assert "sagepipe approve 1, then sagepipe deploy 1." in out
