"""The local SageMaker jobs: status machine, stop, failure reason, outputs, validation."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
import textwrap
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from sagepipe.tasks.local import local_clients
from sagepipe.tasks.local.common import pid_alive


@pytest.fixture()
def env(fake_runtime: dict[str, Any]) -> dict[str, Any]:
    return fake_runtime


def training_request(env: dict[str, Any], name: str, **hps: str) -> dict[str, Any]:
    return dict(env["training_request"](name, **hps))


def wait(sm: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sm.describe_training_job(TrainingJobName=name)
        if described["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return described
        time.sleep(0.1)
    raise AssertionError(f"{name} did not finish")


def test_the_runner_loads_the_jobs_module_once(env: dict[str, Any]) -> None:
    """Run as ``-m sagepipe.tasks.local.jobs`` the module was loaded twice (runpy's
    RuntimeWarning in every runner log); the runner has a module of its own."""
    env["sm"].create_training_job(**training_request(env, "once-1"))
    assert wait(env["sm"], "once-1")["TrainingJobStatus"] == "Completed"
    log = (env["root"] / "jobs" / "once-1" / "runner.log").read_text()
    assert "RuntimeWarning" not in log, log


def _imported(profile: str) -> list[str]:
    """The modules in a ``-X importtime`` profile (PYTHONPROFILEIMPORTTIME) of a process."""
    return [line.rsplit("|", 1)[-1].strip() for line in profile.splitlines()
            if line.startswith("import time:") and not line.endswith("| package")]


def test_the_runner_starts_and_announces_without_botocore(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner serves no requests (its job's were checked when the job was created): it
    stages and stores through the store's local extras and announces the job's end from
    SageMaker's own view of it, loading no botocore or boto3: ~0.13 s of each job's start,
    and ~0.1 s between its end and the waiting run's wake (issue 16). The real runner
    process's own import profile (Python's PYTHONPROFILEIMPORTTIME, inherited into
    runner.log) says what it loaded."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    # the API the creating process would pass on: the runner announces the end (the job
    # has no flow-run tag, so the relay posts nothing: no server is needed)
    monkeypatch.setattr("sagepipe.tasks.local.jobs.prefect_api_url",
                        lambda: "http://127.0.0.1:9/api")
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "lean-1"))
    final = wait(sm, "lean-1")
    assert final["TrainingJobStatus"] == "Completed", final.get("FailureReason")
    deadline = time.monotonic() + 30
    log = env["root"] / "jobs" / "lean-1" / "runner.log"
    while "announced:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert "announced: {'relayed': False" in text, text[-2000:]
    loaded = _imported(text)
    assert "sagepipe.tasks.local.jobs" in loaded  # the profile is there
    assert "sagepipe.deployments.relay.relay" in loaded  # and the announcement's part
    assert [m for m in loaded if m.split(".")[0] in ("botocore", "boto3")] == []
    # what it stored is what S3 returns: the model archive, moved into the store (not
    # copied); its ETag (MD5) is computed by the runner after the announcement, before
    # anything here reads it
    key = "models/lean-1/output/model.tar.gz"
    assert not (env["root"] / "jobs" / "lean-1" / "model.tar.gz").exists()
    pid = sm.state.get("training-job", "lean-1")["pid"]
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with sm.state.transaction() as conn:
        etag = conn.execute("SELECT etag FROM s3_versions WHERE key=?", (key,)).fetchone()[0]
    got = env["s3"].get_object(Bucket="bkt", Key=key)
    assert got["ETag"] == etag == f'"{hashlib.md5(got["Body"].read()).hexdigest()}"'
    # the announcement's Describe is the API's, field for field
    described = sm.job_description("training", "lean-1")
    assert {k: v for k, v in described.items() if k != "ResponseMetadata"} == {
        k: v for k, v in final.items() if k != "ResponseMetadata"}


def test_announcing_a_jobs_end_is_imported_while_its_container_runs(tmp_path: Any) -> None:
    """The flow run waiting for a job wakes on the runner's announcement: what announcing
    needs (the local clients, the relay; no botocore) is imported in the background while
    the container runs, not after it ends; nothing when there is no API to announce to."""
    probe = textwrap.dedent("""
        import os, sys
        from sagepipe.tasks.local.events import API_ENV, preload_publish
        wanted = ("sagepipe.tasks.local.sagemaker", "sagepipe.deployments.relay.relay")
        os.environ.pop(API_ENV, None)
        assert preload_publish() is None
        assert not [m for m in wanted if m in sys.modules], "imported without an API"
        os.environ[API_ENV] = "http://127.0.0.1:9/api"
        preload_publish().join(60)
        print([m for m in wanted if m in sys.modules], "botocore" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("['sagepipe.tasks.local.sagemaker', "
                                   "'sagepipe.deployments.relay.relay'] False")


def test_training_job_runs_to_completion_and_uploads_the_model(env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "ok-1", C="0.5"))
    first = sm.describe_training_job(TrainingJobName="ok-1")
    assert first["TrainingJobStatus"] in ("InProgress", "Completed")
    final = wait(sm, "ok-1")
    assert final["TrainingJobStatus"] == "Completed", final.get("FailureReason")
    uri = final["ModelArtifacts"]["S3ModelArtifacts"]
    assert uri == "s3://bkt/models/ok-1/output/model.tar.gz"
    blob = env["s3"].get_object(Bucket="bkt", Key="models/ok-1/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        model = json.loads(tar.extractfile("model.json").read())  # type: ignore[union-attr]
    assert model == {"rows": 2, "hps": {"C": 0.5}}
    assert final["TrainingEndTime"] >= final["TrainingStartTime"]
    # what AWS bills: whole seconds of wall-clock time (no spot here: all of it)
    ran = (final["TrainingEndTime"] - final["TrainingStartTime"]).total_seconds()
    assert final["BillableTimeInSeconds"] == final["TrainingTimeInSeconds"] == max(
        1, math.ceil(ran))
    # the job's log stream holds the container's output; secrets never reach the container
    logs = env["clients"]["logs"]
    stream = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                       logStreamNamePrefix="ok-1/")["logStreams"][0]
    events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                                 logStreamName=stream["logStreamName"])["events"]
    messages = [e["message"] for e in events]
    assert "training with ['C']" in messages
    assert "secret visible: False" in messages


def test_failure_reason_comes_from_the_failure_file(env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "crash-1", crash="1"))
    final = wait(sm, "crash-1")
    assert final["TrainingJobStatus"] == "Failed"
    assert final["FailureReason"] == "AlgorithmError: ValueError: C must be positive, got -1"


def test_exit_without_failure_file_reports_exit_code_and_log_tail(env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "die-1", die="1"))
    final = wait(sm, "die-1")
    assert final["TrainingJobStatus"] == "Failed"
    assert "exited with code 3" in final["FailureReason"]
    assert "training with" in final["FailureReason"]


def test_stop_moves_a_running_job_to_stopped_and_kills_it(env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "slow-1", sleep="60"))
    deadline = time.monotonic() + 20
    while sm.describe_training_job(TrainingJobName="slow-1")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sm.stop_training_job(TrainingJobName="slow-1")
    assert sm.describe_training_job(TrainingJobName="slow-1")["TrainingJobStatus"] in (
        "Stopping", "Stopped")
    final = wait(sm, "slow-1", timeout=20)
    assert final["TrainingJobStatus"] == "Stopped"
    with pytest.raises(ClientError) as err:  # stopping a finished job is refused, as on AWS
        sm.stop_training_job(TrainingJobName="slow-1")
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_a_stop_before_the_runner_was_recorded_still_stops_it(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The creating process interrupted between starting the runner and recording its pid
    (a flow run cancelled at that moment): no pid to signal, so the runner honours the
    stop when it registers, and nothing is left running."""
    import sagepipe.tasks.local.sagemaker as local_sagemaker
    from sagepipe.tasks.local.common import pid_alive
    from sagepipe.tasks.local.jobs import spawn_runner

    started: list[int] = []

    def interrupted(root: Any, kind: str, name: str, **spawn: Any) -> int:
        started.append(spawn_runner(root, kind, name, **spawn))
        raise KeyboardInterrupt  # before the pid is stored

    monkeypatch.setattr(local_sagemaker, "spawn_runner", interrupted)
    sm = env["sm"]
    with pytest.raises(KeyboardInterrupt):
        sm.create_training_job(**training_request(env, "early-1", sleep="60"))
    sm.stop_training_job(TrainingJobName="early-1")
    assert wait(sm, "early-1", timeout=30)["TrainingJobStatus"] == "Stopped"
    deadline = time.monotonic() + 10
    while pid_alive(started[0]):
        assert time.monotonic() < deadline, "the runner outlived its stopped job"
        time.sleep(0.1)


def test_a_stopped_job_whose_runner_never_started_ends_stopped(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import sagepipe.tasks.local.sagemaker as local_sagemaker

    def interrupted(root: Any, kind: str, name: str, **spawn: Any) -> int:
        raise KeyboardInterrupt  # after the job was stored, before any runner

    monkeypatch.setattr(local_sagemaker, "spawn_runner", interrupted)
    monkeypatch.setattr(local_sagemaker, "_UNREGISTERED_STOP_SECONDS", 0.5)
    sm = env["sm"]
    with pytest.raises(KeyboardInterrupt):
        sm.create_training_job(**training_request(env, "never-1"))
    sm.stop_training_job(TrainingJobName="never-1")
    assert sm.describe_training_job(TrainingJobName="never-1")["TrainingJobStatus"] == (
        "Stopping")  # a runner may still register and stop itself
    final = wait(sm, "never-1", timeout=10)
    assert (final["TrainingJobStatus"], final["SecondaryStatus"]) == ("Stopped", "Stopped")


def test_max_runtime_stops_the_job(env: dict[str, Any]) -> None:
    sm = env["sm"]
    request = training_request(env, "late-1", sleep="30")
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 1}
    sm.create_training_job(**request)
    final = wait(sm, "late-1", timeout=30)
    assert final["TrainingJobStatus"] == "Stopped"
    assert final["SecondaryStatus"] == "MaxRuntimeExceeded"


def test_a_dead_runner_fails_the_job_instead_of_hanging(env: dict[str, Any]) -> None:
    import os
    import signal

    sm = env["sm"]
    sm.create_training_job(**training_request(env, "orphan-1", sleep="60"))
    doc = sm.state.get("training-job", "orphan-1")
    os.killpg(doc["pid"], signal.SIGKILL)
    final = wait(sm, "orphan-1", timeout=20)
    assert final["TrainingJobStatus"] == "Failed"
    assert "exited without reporting a result" in final["FailureReason"]


def test_names_are_unique_and_describe_of_unknown_job_is_a_validation_error(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_training_job(**training_request(env, "dup-1"))
    with pytest.raises(ClientError) as err:
        sm.create_training_job(**training_request(env, "dup-1"))
    assert err.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as err:
        sm.describe_training_job(TrainingJobName="nope")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    wait(sm, "dup-1")


def test_requests_botocore_rejects_are_rejected_before_anything_runs(
        env: dict[str, Any]) -> None:
    sm = env["sm"]
    request = training_request(env, "bad-1")
    del request["RoleArn"]
    with pytest.raises(ParamValidationError, match="RoleArn"):
        sm.create_training_job(**request)
    # server-side constraint (pattern) from the service model: underscores are not allowed
    with pytest.raises(ClientError) as err:
        sm.create_training_job(**training_request(env, "bad_name"))
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "regular expression" in err.value.response["Error"]["Message"]
    request = training_request(env, "bad-2")
    request["ResourceConfig"]["InstanceType"] = "ml.banana.huge"
    with pytest.raises(ClientError, match="enum"):
        sm.create_training_job(**request)
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []


def test_processing_job_stages_inputs_and_uploads_outputs(env: dict[str, Any]) -> None:
    sm = env["sm"]
    sm.create_processing_job(
        ProcessingJobName="proc-1", RoleArn="arn:aws:iam::000000000000:role/sm",
        AppSpecification={"ImageUri": env["images"]["process"], "ContainerArguments": [
            "--input", "/opt/ml/processing/input/data",
            "--output", "/opt/ml/processing/output/upper"]},
        ProcessingInputs=[{"InputName": "data", "S3Input": {
            "S3Uri": "s3://bkt/in/", "LocalPath": "/opt/ml/processing/input/data",
            "S3DataType": "S3Prefix", "S3InputMode": "File"}}],
        ProcessingOutputConfig={"Outputs": [{"OutputName": "upper", "S3Output": {
            "S3Uri": "s3://bkt/out/upper", "LocalPath": "/opt/ml/processing/output/upper",
            "S3UploadMode": "EndOfJob"}}]},
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1,
                                               "InstanceType": "ml.m5.large",
                                               "VolumeSizeInGB": 1}})
    deadline = time.monotonic() + 60
    while (status := sm.describe_processing_job(ProcessingJobName="proc-1")[
            "ProcessingJobStatus"]) == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == "Completed"
    body = env["s3"].get_object(Bucket="bkt", Key="out/upper/upper.csv")["Body"].read()
    assert body == b"A,B\n1,2\n3,4\n"
    summaries = sm.list_processing_jobs(StatusEquals="Completed")["ProcessingJobSummaries"]
    assert [s["ProcessingJobName"] for s in summaries] == ["proc-1"]


def test_a_second_client_on_the_same_root_sees_the_same_jobs(env: dict[str, Any]) -> None:
    env["sm"].create_training_job(**training_request(env, "shared-1"))
    other = local_clients(env["root"])["sagemaker"]
    assert wait(other, "shared-1")["TrainingJobStatus"] == "Completed"


FAILING_PROCESS = r'''
import os, pathlib, sys
out = pathlib.Path(os.environ["SAGEMAKER_BASE_DIR"]) / "output"
out.mkdir(parents=True, exist_ok=True)
how = sys.argv[-1]
if how == "latin1":
    (out / "message").write_bytes("caf\xe9".encode("latin-1"))
else:
    (out / "message").write_text("ValueError: label column 'target' not in the data" + "!" * 2000)
print("about to fail", flush=True)
sys.exit(1)
'''


@pytest.mark.parametrize(("how", "reason", "exit_message"), [
    ("utf8", "AlgorithmError: See job logs for more information",
     "ValueError: label column 'target' not in the data"),
    ("latin1", "ClientError: /opt/ml/output/message is not UTF-8 encoded", None),
])
def test_a_failed_processing_job_reports_as_aws_does(env: dict[str, Any], tmp_path: Any,
                                                     how: str, reason: str,
                                                     exit_message: str | None) -> None:
    """Developer guide, "Save and Access Metadata Information About Your Processing Job":
    /opt/ml/output/message becomes ExitMessage (its first 1 KB); text that is not UTF-8
    fails the job with a ClientError. FailureReason itself is AWS's generic one."""
    from sagepipe.tasks.local.images import registry_host

    folder = tmp_path / "failing"
    folder.mkdir()
    (folder / "Dockerfile").write_text('ENTRYPOINT ["python3", "/opt/ml/code/fail.py"]\n')
    (folder / "fail.py").write_text(FAILING_PROCESS)
    digest = env["clients"]["ecr"].push("t-failing", "v1", folder, env["root"])
    sm, name = env["sm"], f"fail-{how}"
    sm.create_processing_job(
        ProcessingJobName=name, RoleArn="arn:aws:iam::000000000000:role/sm",
        AppSpecification={"ImageUri": f"{registry_host('us-east-1')}/t-failing@{digest}",
                          "ContainerArguments": [how]},
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1,
                                               "InstanceType": "ml.m5.large",
                                               "VolumeSizeInGB": 1}})
    deadline = time.monotonic() + 60
    while (described := sm.describe_processing_job(ProcessingJobName=name))[
            "ProcessingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert described["ProcessingJobStatus"] == "Failed"
    assert described["FailureReason"] == reason
    if exit_message is None:
        assert "ExitMessage" not in described
    else:
        assert described["ExitMessage"].startswith(exit_message)
        assert len(described["ExitMessage"].encode()) == 1024  # the first 1 KB only


def test_a_job_whose_caller_was_killed_before_its_runner_started_still_runs(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """SageMaker runs a job it accepted whoever asked for it. The creator killed between
    storing the job and starting its runner: the next look starts one."""
    import sagepipe.tasks.local.sagemaker as local_sagemaker
    from sagepipe.tasks.local.jobs import spawn_runner

    calls: list[str] = []

    def first_call_interrupted(root: Any, kind: str, name: str, **spawn: Any) -> int:
        calls.append(name)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the job is stored, no runner started
        return spawn_runner(root, kind, name, **spawn)

    monkeypatch.setattr(local_sagemaker, "spawn_runner", first_call_interrupted)
    monkeypatch.setattr(local_sagemaker, "_UNSTARTED_SECONDS", 0.5)
    sm = env["sm"]
    with pytest.raises(KeyboardInterrupt):
        sm.create_training_job(**training_request(env, "unstarted-1"))
    assert sm.describe_training_job(TrainingJobName="unstarted-1")["TrainingJobStatus"] == (
        "InProgress")
    time.sleep(0.6)
    assert wait(sm, "unstarted-1")["TrainingJobStatus"] == "Completed"
    assert calls == ["unstarted-1", "unstarted-1"]  # one runner started by the look, once


def test_a_second_runner_for_a_job_leaves_it_to_the_first(env: dict[str, Any]) -> None:
    from sagepipe.tasks.local.common import pid_alive
    from sagepipe.tasks.local.jobs import spawn_runner

    sm = env["sm"]
    sm.create_training_job(**training_request(env, "twice-1", sleep="2"))
    deadline = time.monotonic() + 20
    while not sm.state.get("training-job", "twice-1").get("registered"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = sm.state.get("training-job", "twice-1")["pid"]
    second = spawn_runner(env["root"], "training", "twice-1")
    assert wait(sm, "twice-1")["TrainingJobStatus"] == "Completed"
    assert sm.state.get("training-job", "twice-1")["pid"] == first
    logs = (env["root"] / "logs" / "aws" / "sagemaker" / "TrainingJobs").rglob("*.log")
    assert sum(p.read_text().count("Invoking: ") for p in logs) == 1  # the job ran once
    deadline = time.monotonic() + 10
    while pid_alive(second):
        assert time.monotonic() < deadline, "the second runner did not exit"
        time.sleep(0.05)


def test_a_killed_runner_takes_its_container_with_it(env: dict[str, Any]) -> None:
    """The runner SIGKILLed alone (not its group): the job fails, and the container it was
    running does not go on as an orphan (SageMaker's instance would be gone too)."""
    import os
    import signal
    from pathlib import Path

    from sagepipe.tasks.local.common import pid_alive

    sm = env["sm"]
    sm.create_training_job(**training_request(env, "orphan-2", sleep="60"))
    deadline = time.monotonic() + 20
    while sm.describe_training_job(TrainingJobName="orphan-2")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner = sm.state.get("training-job", "orphan-2")["pid"]
    container = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                 and p.name != str(runner) and _pgrp(int(p.name)) == runner]
    assert container, "the container is in the runner's process group"
    os.kill(runner, signal.SIGKILL)
    final = wait(sm, "orphan-2", timeout=20)
    assert final["TrainingJobStatus"] == "Failed"
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in container):
        assert time.monotonic() < deadline, "the container outlived its runner"
        time.sleep(0.05)


def _pgrp(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None
