"""What ``sagepipe run`` prints: the exit code and paragraph per failure, the steps view
read from run-logger records, and tracebacks kept off the terminal."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from sagepipe.flows.console import EXIT_CODES, RunView, explain
from sagepipe.tasks.errors import (
    ConfigError,
    DataError,
    DeployFailed,
    DeployRolledBack,
    JobFailed,
    PipelineError,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_exit_code_as_the_cli_means_it() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", README.read_text(), re.M))
    assert {int(c) for c in rows} == set(EXIT_CODES)


def denied() -> ClientError:
    return ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                       "CreateTrainingJob")


@pytest.mark.parametrize(("exc", "code", "text"), [
    (ConfigError("gate.metric r2 does not fit"), 2, "gate.metric r2 does not fit"),
    (DataError("no label column 'target'"), 2, "no label column"),
    (JobFailed("p-train-1", "Failed", "ValueError: boom", kind="training"), 1,
     "Run failed: training job p-train-1 ended Failed: ValueError: boom"),
    (DeployRolledBack("ep", "the new config failed its smoke test"), 6,
     "the model that was live still serves"),
    (DeployFailed("ep", "never InService"), 1, "Deploy failed: never InService"),
    (PipelineError("other"), 1, "Run failed: other"),
    (denied(), 7, "AWS refused CreateTrainingJob: AccessDeniedException: no"),
    (NoCredentialsError(), 7, "No AWS credentials were found"),
    (httpx.ConnectError("refused"), 4, "Lost the Prefect API"),
])
def test_each_expected_failure_has_its_code_and_paragraph(exc: BaseException, code: int,
                                                          text: str) -> None:
    explained = explain(exc, where="step train", flow_run_url="http://127.0.0.1:4200/x")
    assert explained is not None
    assert explained.code == code
    assert text in explained.text
    assert "  Where: step train" in explained.text
    assert "  Flow run (full logs and traceback): http://127.0.0.1:4200/x" in explained.text


def test_an_aws_refusal_wrapped_in_a_sagepipe_error_is_still_a_refusal() -> None:
    try:
        try:
            raise denied()
        except ClientError as inner:
            raise PipelineError("could not start the job") from inner
    except PipelineError as outer:
        explained = explain(outer)
    assert explained is not None and explained.code == 7


def test_a_bug_is_not_explained() -> None:
    assert explain(TypeError("unsupported operand")) is None


def record(message: str, *, task: str | None = None, task_name: str = "",
           level: int = logging.INFO, exc: BaseException | None = None) -> logging.LogRecord:
    made = logging.LogRecord("prefect.task_runs" if task else "prefect.flow_runs", level,
                             __file__, 1, message, (), (type(exc), exc, None) if exc else None)
    made.flow_run_id = "0f2c"
    made.flow_run_name = "able-heron"
    if task:
        made.task_run_name = task
        made.task_name = task_name
    return made


def test_the_view_follows_steps_jobs_and_states_from_the_records() -> None:
    out = io.StringIO()
    view = RunView("plain", ui_url="http://127.0.0.1:4200", out=out)
    for item in (record("Beginning flow run 'able-heron' for flow 'ml-pipeline'"),
                 record("Pinned 1 object(s)", task="pin-data-x7k", task_name="pin-data"),
                 record("Finished in state Completed()", task="pin-data-x7k",
                        task_name="pin-data"),
                 record("Started training job p-train-81ab", task="train",
                        task_name="run-job"),
                 record("[p-train-81ab] epoch 1", task="train", task_name="run-job"),
                 record("Gate: deploy: roc_auc 0.99"),
                 record("Data: 3 rows dropped", task="train", task_name="run-job",
                        level=logging.WARNING),
                 record("Finished in state Failed('boom')", task="train", task_name="run-job")):
        view.handle(item)
    assert view.flow_run_url == "http://127.0.0.1:4200/runs/flow-run/0f2c"
    assert list(view.steps) == ["pin-data", "train"]  # Prefect's suffix dropped
    train = view.steps["train"]
    assert (train.state, train.job, train.last) == ("failed", "p-train-81ab",
                                                    "Data: 3 rows dropped")
    text = out.getvalue()
    assert text.startswith("Flow run able-heron: http://127.0.0.1:4200/runs/flow-run/0f2c\n")
    assert "Beginning flow run" not in text  # the engine's own lines are left out
    assert "Gate: deploy: roc_auc 0.99" in text
    assert "Warning: train: Data: 3 rows dropped" in text
    assert re.search(r"train +job p-train-81ab", text)
    assert re.search(r"train +failed \(", text)


def test_no_traceback_of_an_expected_error_reaches_the_terminal_handler() -> None:
    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(console)
    try:
        for mode, debug in (("stream", False), ("stream", True)):
            view = RunView(mode, debug=debug)  # type: ignore[arg-type]
            with view.attached():
                try:
                    raise JobFailed("p-train-1", "Failed", "boom")
                except JobFailed as exc:
                    logging.getLogger("prefect.engine").error("Encountered %r", exc,
                                                              exc_info=True)
                try:
                    raise TypeError("a bug")
                except TypeError:
                    logging.getLogger("prefect.engine").error("Encountered", exc_info=True)
            text, _ = stream.getvalue(), stream.truncate(0)
            stream.seek(0)
            traces = text.count("Traceback (most recent call last)")
            # a bug's traceback stays in --verbose; a sagepipe error's only with --debug
            assert traces == (2 if debug else 1), text
    finally:
        root.removeHandler(console)
    assert console.formatter is None  # restored when the view is detached


def test_a_push_reports_its_progress_in_bytes(tmp_path: Path) -> None:
    """The CLI's progress bar is fed by boto3's transfer Callback; the local store calls it
    as boto3 does, with the bytes sent."""
    from sagepipe.tasks.data import push_dataset
    from sagepipe.tasks.runtime import RuntimeSettings, get_clients
    from sagepipe.tasks.storage import ensure_local_resources

    runtime = RuntimeSettings(kind="local", state_dir=str(tmp_path / "state"))
    ensure_local_resources(runtime, "bucket", "events")
    data = tmp_path / "data.csv"
    data.write_text("a,b,target\n" + "".join(f"{i}.0,{i % 7}.5,{i % 2}\n" for i in range(500)))
    sent: list[int] = []
    push_dataset(get_clients(runtime), data, "s3://bucket/d/data.csv", "target",
                 progress=sent.append)
    assert sum(sent) == data.stat().st_size
