"""Measurement 4: what waiting for a SageMaker job costs in API calls, and how late it sees the end.

The project's wait (``tasks.jobs.run_job``) runs for real against a fake clock and
a fake SageMaker client whose training job is InProgress for ``duration`` simulated
seconds, then Completed. Nothing sleeps: ``sleep`` advances the clock. Beside it:

* botocore's own ``training_job_completed_or_stopped`` waiter (Delay and
  MaxAttempts read from botocore's waiter model), driven by the same fake;
* a fixed 5 s poll (``run_job`` with a flat policy);
* the same backoff with a 60 s cap, to show the trade-off the target sits on.

Per policy: DescribeTrainingJob calls per job-hour (for a one-hour job, and for a
four-hour one, where the steady rate shows), the log-stream calls made alongside,
and the worst-case completion-detection lag: the largest gap between two polls,
found by ending the job just after each poll of a long run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import botocore.session
import botocore.waiter
from botocore.exceptions import ClientError, WaiterError

from sagepipe.tasks.jobs import TRAINING, WaitPolicy, run_job
from sagepipe.tasks.runtime import Clients

__all__ = ["measure_waiting"]

HOUR = 3600.0
DURATIONS = (120.0, 600.0, HOUR, 4 * HOUR)
_QUIET = logging.getLogger("bench.waiting")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class FakeSageMaker:
    """One training job that is InProgress for ``duration`` seconds after its creation."""

    def __init__(self, clock: FakeClock, duration: float) -> None:
        self.clock, self.duration = clock, duration
        self.created: float | None = None
        self.describes: list[float] = []

    def create_training_job(self, **params: Any) -> dict[str, Any]:
        self.created = self.clock.now
        return {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:0:training-job/bench"}

    def describe_training_job(self, **params: Any) -> dict[str, Any]:
        self.describes.append(self.clock.now)
        if self.created is None:
            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": "Requested resource not found."}},
                              "DescribeTrainingJob")
        done = self.clock.now >= self.created + self.duration
        return {"TrainingJobName": params["TrainingJobName"],
                "TrainingJobStatus": "Completed" if done else "InProgress"}


class FakeLogs:
    """CloudWatch Logs with the job's one stream and nothing new in it: what a quiet
    training job looks like to the tail (one DescribeLogStreams, one GetLogEvents)."""

    def __init__(self) -> None:
        self.calls = 0

    def describe_log_streams(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        return {"logStreams": [{"logStreamName": f"{params['logStreamNamePrefix']}algo-1"}]}

    def get_log_events(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        return {"events": [], "nextForwardToken": "f/0"}


@dataclass
class FakeClock:
    now: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass(frozen=True)
class Waited:
    describes: int
    log_calls: int
    lag: float
    polls: list[float]


class FakeEvents:
    """The job's state-change event on the simulated clock: delivered the moment the job
    ends (its real delivery latency is measured on the local runtime), or lost."""

    def __init__(self, clock: FakeClock, sagemaker: FakeSageMaker, delivered: bool) -> None:
        self.clock, self.sagemaker, self.delivered = clock, sagemaker, delivered

    def wait(self, seconds: float) -> str | None:
        assert self.sagemaker.created is not None
        end = self.sagemaker.created + self.sagemaker.duration
        if self.delivered and self.clock.now < end <= self.clock.now + seconds:
            self.clock.now = end
            return "Completed"
        self.clock.now += max(0.0, seconds)
        return None

    def close(self) -> None:
        pass


def wait_with_run_job(policy: WaitPolicy, duration: float,
                      events: str | None = None) -> Waited:
    """``events``: None (poll), "delivered" or "lost" (``jobs.wait: events``)."""
    clock = FakeClock()
    sagemaker, logs = FakeSageMaker(clock, duration), FakeLogs()
    clients = Clients(s3=None, sagemaker=sagemaker, sagemaker_runtime=None, sns=None,
                      logs=logs, ecr=None, codebuild=None)
    watch = None if events is None else (
        lambda name: FakeEvents(clock, sagemaker, delivered=events == "delivered"))
    run_job(clients, TRAINING, {"TrainingJobName": "bench-job"}, policy=policy, log=_QUIET,
            clock=lambda: clock.now, sleep=clock.sleep, watch=watch)
    assert sagemaker.created is not None
    return Waited(len(sagemaker.describes), logs.calls,
                  clock.now - (sagemaker.created + duration), sagemaker.describes)


def wait_with_botocore(duration: float) -> Waited:
    """botocore's TrainingJobCompletedOrStopped waiter on the same fake job."""
    model = botocore.session.get_session().get_waiter_model("sagemaker")
    clock = FakeClock()
    sagemaker = FakeSageMaker(clock, duration)
    sagemaker.create_training_job(TrainingJobName="bench-job")
    # what client.get_waiter(...) builds, minus its docstring machinery
    waiter = botocore.waiter.Waiter(
        "TrainingJobCompletedOrStopped", model.get_waiter("TrainingJobCompletedOrStopped"),
        botocore.waiter.NormalizedOperationMethod(sagemaker.describe_training_job))
    with mock.patch.object(botocore.waiter, "time", SimpleNamespace(sleep=clock.sleep)):
        try:
            waiter.wait(TrainingJobName="bench-job")
            lag = clock.now - duration
        except WaiterError:  # MaxAttempts ran out before the job ended
            lag = float("inf")
    return Waited(len(sagemaker.describes), 0, lag, sagemaker.describes)


def botocore_waiter_config() -> dict[str, Any]:
    model = botocore.session.get_session().get_waiter_model("sagemaker")
    config = model.get_waiter("TrainingJobCompletedOrStopped")
    return {"delay": config.delay, "max_attempts": config.max_attempts,
            "gives_up_after_hours": round(config.delay * config.max_attempts / HOUR, 2)}


def _worst_lag(waiter: Any, horizon: float) -> float:
    """The largest lag over completion times in (0, horizon]: end just after each poll."""
    polls = [t for t in waiter(horizon * 2).polls if t <= horizon]
    return max(waiter(t + 1e-3).lag for t in polls)


def measure_waiting() -> dict[str, Any]:
    default = WaitPolicy()
    policies: dict[str, dict[str, Any]] = {
        "project default": {"policy": default},
        "botocore waiter": {"policy": None},
        "fixed 5 s": {"policy": WaitPolicy(first_poll=5, max_poll=5, factor=1.0)},
        "backoff, 60 s cap": {"policy": WaitPolicy(first_poll=default.first_poll,
                                                   max_poll=60.0, factor=default.factor)},
        "events": {"policy": default, "events": "delivered"},
        "events, the event lost": {"policy": default, "events": "lost"},
    }
    out: dict[str, Any] = {"botocore_waiter": botocore_waiter_config(),
                           "project_policy": {"first_poll": default.first_poll,
                                              "factor": default.factor,
                                              "max_poll": default.max_poll},
                           "policies": {}}
    for name, spec in policies.items():
        policy = spec["policy"]

        def waiter(duration: float, policy: WaitPolicy | None = policy,
                   events: str | None = spec.get("events")) -> Waited:
            if policy is None:
                return wait_with_botocore(duration)
            return wait_with_run_job(policy, duration, events)

        per_duration = {}
        for duration in DURATIONS:
            waited = waiter(duration)
            per_duration[f"{duration / 60:g} min"] = {
                "describes": waited.describes,
                "describes_per_job_hour": round(waited.describes * HOUR / duration, 1),
                "log_calls_per_job_hour": round(waited.log_calls * HOUR / duration, 1),
                "lag_seconds": round(waited.lag, 2)}
        out["policies"][name] = {
            "by_duration": per_duration,
            "describes_per_job_hour": per_duration["60 min"]["describes_per_job_hour"],
            "log_calls_per_job_hour": per_duration["60 min"]["log_calls_per_job_hour"],
            "worst_lag_seconds": round(_worst_lag(waiter, HOUR), 2),
        }
    return out


LIVE_JOB_SECONDS = 20.0


def measure_live(python_bin: Any, work: Any, env: dict[str, str],
                 job_seconds: float = LIVE_JOB_SECONDS) -> dict[str, Any]:
    """How late each wait sees a real local job's end, with a real Prefect server.

    A training job that sleeps ``job_seconds`` runs on the local runtime; its runner
    announces the end through the relay, as SageMaker's event does. The lag is from
    the job's end (the runner's TrainingEndTime) to run_job returning, for the project's
    poll policy and for ``events``; the Describe calls each made are counted too.
    """
    import shutil
    import time
    import uuid
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sagepipe.tasks.events import JobEvents
    from sagepipe.tasks.images import ensure_images
    from sagepipe.tasks.local import local_clients, teardown
    from sagepipe.tasks.runtime import RuntimeSettings, get_clients

    from .proc import prefect_server

    root = Path(work) / "waiting-live"
    folder = root / "containers" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "containers" / "train" / "Dockerfile",
                folder / "Dockerfile")
    (folder / "train.py").write_text(f"import time\ntime.sleep({job_seconds})\n")
    out: dict[str, Any] = {"job_seconds": job_seconds}
    with prefect_server(Path(python_bin), root / "prefect", env) as url, \
            temporary_settings(updates={PREFECT_API_URL: url}):
        runtime = RuntimeSettings(kind="local", state_dir=str(root / "state"))
        clients = get_clients(runtime)
        local_clients(Path(runtime.state_dir))["s3"].create_bucket(Bucket="bench")
        image = ensure_images(clients, folders={"train": folder}, repository_prefix="bench",
                              build_project="p", artifacts_bucket="bench",
                              artifacts_prefix="x", log=_QUIET)["train"]
        try:
            for mode in ("poll", "events"):
                name = f"bench-wait-{mode}-{int(time.time())}"
                counted = _Counting(clients)
                watch = (lambda job: JobEvents("training", job, api_url=url)) \
                    if mode == "events" else None
                run_job(cast(Any, counted), TRAINING, {
                    "TrainingJobName": name, "RoleArn": "arn:aws:iam::000000000000:role/x",
                    "AlgorithmSpecification": {"TrainingImage": image.uri,
                                               "TrainingInputMode": "File"},
                    "OutputDataConfig": {"S3OutputPath": "s3://bench/out"},
                    "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                                       "VolumeSizeInGB": 1},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 600},
                    # the relay announces only sagepipe's jobs: those of a flow run
                    "Tags": [{"Key": "sagepipe:flow-run-id", "Value": str(uuid.uuid4())}]},
                    policy=WaitPolicy(), log=_QUIET, watch=watch)
                returned = time.time()
                ended = clients.sagemaker.describe_training_job(
                    TrainingJobName=name)["TrainingEndTime"].timestamp()
                out[mode] = {"lag_seconds": round(returned - ended, 2),
                             "describes": counted.describes}
        finally:
            teardown(Path(runtime.state_dir))
    return out


class _Counting:
    """The clients, counting DescribeTrainingJob calls."""

    def __init__(self, clients: Any) -> None:
        self._clients = clients
        self.describes = 0
        outer = self

        class SageMaker:
            def __getattr__(self, name: str) -> Any:
                method = getattr(clients.sagemaker, name)
                if name != "describe_training_job":
                    return method

                def counted(**params: Any) -> Any:
                    outer.describes += 1
                    return method(**params)
                return counted

        self.sagemaker = SageMaker()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clients, name)


SUSPEND_JOB_SECONDS = 60.0
_SLOW_TRAIN = ("import pathlib, runpy, time\ntime.sleep({seconds})\n"
               "runpy.run_path(str(pathlib.Path(__file__).with_name('real_train.py')), "
               "run_name='__main__')\n")


def measure_suspend_live(work: Any, job_seconds: float = SUSPEND_JOB_SECONDS) -> dict[str, Any]:
    """``jobs.wait: suspend`` for real: a local Prefect server and process worker, the
    ``ml-pipeline/local`` deployment, the whole pipeline with a training job that runs
    ``job_seconds``. From the flow run's state history and the local runtime's call log:

    * flow-process seconds held while the training job ran: the worker's child processes
      (sampled every 0.1 s from /proc) alive between the job's CreationTime and its
      TrainingEndTime - a constant per job (start to suspension), so also per job-hour;
    * back to work: from the job's end to the resumed run's Running state;
    * DescribeTrainingJob and CloudWatch Logs calls the flow made for the job (the
      runner's own calls - the stand-in for SageMaker's event - are not counted).
    """
    import os
    import shutil
    import subprocess
    import sys
    import time
    from datetime import datetime
    from pathlib import Path

    import httpx
    from sklearn.datasets import load_breast_cancer

    from sagepipe.flows.config import build_config
    from sagepipe.flows.server import down, up
    from sagepipe.tasks.data import push_dataset
    from sagepipe.tasks.local import teardown
    from sagepipe.tasks.local.common import CALL_LOG_ENV
    from sagepipe.tasks.runtime import get_clients
    from sagepipe.tasks.storage import ensure_local_resources

    from .proc import free_port

    project = Path(__file__).resolve().parents[1]
    root = Path(work) / "waiting-suspend"
    shutil.rmtree(root, ignore_errors=True)
    containers = root / "containers"
    shutil.copytree(project / "containers", containers)
    script = containers / "train" / "train.py"
    script.rename(script.with_name("real_train.py"))
    script.write_text(_SLOW_TRAIN.format(seconds=job_seconds))
    trail = root / "calls.log"
    config = build_config({
        "project": "bench-suspend",
        "runtime": {"kind": "local", "state_dir": str(root / "state")},
        "dataset_uri": "s3://bench-suspend/data/data.csv",
        "artifacts_uri": "s3://bench-suspend/pipeline", "containers_dir": str(containers),
        "jobs": {"wait": "suspend"},
        "endpoint": {"name": "bench-suspend", "timeout_seconds": 120}})
    ensure_local_resources(config.runtime, "bench-suspend", "bench-suspend-events")
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame.to_csv(root / "data.csv", index=False)
    clients = get_clients(config.runtime)
    push_dataset(clients, root / "data.csv", config.dataset_uri, "target")

    before = os.environ.get(CALL_LOG_ENV)
    os.environ[CALL_LOG_ENV] = str(trail)  # the worker and its flow processes inherit it
    server = up(root / "prefect", port=free_port(), poll_seconds=0.5, ui=False)
    try:
        api = server.api_url
        deploy = subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "deploy", "--prefect-file",
             "deployments/prefect.yaml", "--name", "ml-pipeline/local", "--no-prompt"],
            env={**os.environ, "PREFECT_API_URL": api}, cwd=project, text=True,
            capture_output=True, timeout=300)
        if deploy.returncode != 0:
            raise RuntimeError(deploy.stdout[-2000:] + deploy.stderr[-2000:])
        deployment = httpx.get(f"{api}/deployments/name/ml-pipeline/local", timeout=30).json()
        run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", timeout=30,
                         json={"parameters": {"config": config.model_dump(mode="json")}}
                         ).json()
        children = _Children(server.worker_pid)
        deadline = time.monotonic() + job_seconds + 600
        while True:
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=30).json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the suspend run is still {state['name']}")
            time.sleep(1)
        if state["type"] != "COMPLETED":
            raise RuntimeError(f"the suspend run ended {state['name']}: {state['message']}")
        states = sorted(httpx.get(f"{api}/flow_run_states/", timeout=30,
                                  params={"flow_run_id": run["id"]}).json(),
                        key=lambda s: s["timestamp"])
    finally:
        if "children" in locals():
            children.stop()
        down(root / "prefect", grace=10)
        teardown(root / "state")
        if before is None:
            os.environ.pop(CALL_LOG_ENV, None)
        else:
            os.environ[CALL_LOG_ENV] = before

    [summary] = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    job = clients.sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
    created = job["CreationTime"].timestamp()
    ended = job["TrainingEndTime"].timestamp()

    def at(state: dict[str, Any]) -> float:
        return datetime.fromisoformat(state["timestamp"]).timestamp()

    # flow processes alive during the job's life (the worker's children)
    held = sum(max(0.0, min(last, ended) - max(first, created))
               for first, last in children.lives.values())
    resumed = next(at(s) for s in states if s["type"] == "RUNNING" and at(s) > ended)
    # the job's end seen: the relay resumed the run (Prefect's "Resuming" state)
    seen = next(at(s) for s in states if s["name"] == "Resuming" and at(s) > ended)
    calls = [line.split("\t") for line in trail.read_text().splitlines()]
    name = job["TrainingJobName"]
    flow_calls = [c for c in calls if c[2] != "runner.py"]
    describes = sum(1 for c in flow_calls
                    if c[4] == "DescribeTrainingJob" and c[5].startswith(name))
    log_calls = sum(1 for c in flow_calls if c[3] == "logs" and name in c[5])
    return {"job_seconds": round(ended - job["TrainingStartTime"].timestamp(), 1),
            "suspensions": sum(1 for s in states if s["name"] == "Suspended"),
            "held_seconds_during_job": round(held, 2),
            "flow_processes": len(children.lives),
            "seen_after_seconds": round(seen - ended, 2),
            "resumed_after_seconds": round(resumed - ended, 2),
            "describes": describes, "log_calls": log_calls,
            "run_seconds": round(at(states[-1]) - at(states[0]), 1)}


class _Children:
    """Samples the child processes of ``parent`` every ``every`` seconds in a thread:
    {pid: (first seen, last seen)} in epoch seconds."""

    def __init__(self, parent: int, every: float = 0.1) -> None:
        import threading

        self.parent, self.every = parent, every
        self.lives: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import os
        import time

        while not self._stop.is_set():
            now = time.time()
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:  # gone between the listing and the read
                    continue
                if int(fields[1]) == self.parent:
                    first = self.lives.get(int(entry), (now, now))[0]
                    self.lives[int(entry)] = (first, now)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
