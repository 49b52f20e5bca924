"""Local SageMaker jobs: a detached runner process per job.

``create_training_job`` / ``create_processing_job`` store the request and spawn
``python -m sagepipe.tasks.local.runner <root> <kind> <name>``. The runner stages inputs from
the object store into the job's workspace, runs the container command, streams
its output into the job's log stream, uploads outputs, and writes the final
status: InProgress -> Completed | Failed | Stopped, with FailureReason taken
from ``/opt/ml/output/failure`` as SageMaker does. Because the status lives in
the shared state database, any process can describe or stop the job.

A runner that dies without writing a status (killed, machine reboot) is noticed
by ``describe``: the job then fails with a reason saying so, and what the runner ran
is stopped. A job whose creator was killed before it could start the runner gets one
from the next ``describe``: on SageMaker a created job runs whoever created it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from .common import now, pid_alive
from .containers import container_command, job_environment, remap
from .events import API_ENV, prefect_api_url, preload_publish, publish_quietly
from .images import resolve_image
from .processes import kill_group
from .pyenv import RequirementsError, interpreter
from .s3 import LocalS3, parse_s3_uri
from .state import StateStore

__all__ = ["JOB_KINDS", "log_path", "reap_job_processes", "runner_died", "spawn_runner",
           "stop_runner"]

JOB_KINDS = {"training": "TrainingJobs", "processing": "ProcessingJobs"}
_STOP_GRACE_SECONDS = 10.0


def log_path(root: Path, group: str, stream: str) -> Path:
    return root / "logs" / group.strip("/") / f"{stream}.log"


def spawn_runner(root: Path, kind: str, name: str, *, announce: bool = True) -> int:
    """Start the detached runner for a stored job; returns its pid. ``announce``: the
    runner announces the job's end to the Prefect API (the EventBridge rule's stand-in)."""
    runner_log = root / "jobs" / name / "runner.log"
    runner_log.parent.mkdir(parents=True, exist_ok=True)
    with open(runner_log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagepipe.tasks.local.runner", str(root), kind, name],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            cwd=str(runner_log.parent), env=_runner_env(announce),
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _runner_env(announce: bool = True) -> dict[str, str]:
    """The runner's environment: this one, sagepipe importable, and the Prefect API the
    creating run talks to (where the runner announces the job's end, as EventBridge does)."""
    env = {**os.environ, "PYTHONPATH": _project_path()}
    env.pop(API_ENV, None)
    api = prefect_api_url() if announce else None
    if api:
        env[API_ENV] = api
    return env


def _project_path() -> str:
    here = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return here if not existing else f"{here}{os.pathsep}{existing}"


def runner_died(pid: int | None) -> bool:
    child = _CHILDREN.get(pid or 0)
    if child is not None and child.poll() is not None:  # reap our own zombie
        _CHILDREN.pop(child.pid, None)
        return True
    return not pid_alive(pid)


def reap_job_processes(pid: int | None) -> None:
    """A runner that died leaves its container running (same process group, no one reading
    its output): the job has ended, so that goes too, as SageMaker's instance would."""
    kill_group(pid)


def stop_runner(pid: int | None) -> None:
    """SIGTERM the runner's process group (runner and container process)."""
    if pid and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


# --------------------------------------------------------------------- runner


class _Runner:
    def __init__(self, root: Path, kind: str, name: str) -> None:
        self.root, self.kind, self.name = root, kind, name
        self.state = StateStore(root)
        doc = self.state.get(f"{kind}-job", name)
        if doc is None:
            raise SystemExit(f"no {kind} job {name} in {root}")
        self.doc = doc
        self.request: dict[str, Any] = doc["request"]
        self.s3 = LocalS3(root, self.state)
        self.workspace = root / "jobs" / name
        self.base = self.workspace / "opt" / "ml"
        self.log_file = log_path(root, doc["log_group"], doc["log_stream"])
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.preloading: threading.Thread | None = None
        self.moved: list[str] = []  # the blobs of stored outputs, their ETags pending

    def log(self, message: str) -> None:
        with open(self.log_file, "a") as fh:
            for line in message.splitlines() or [""]:
                fh.write(f"{int(time.time() * 1000)}\t{line}\n")

    def set_status(self, **fields: Any) -> None:
        def change(doc: dict[str, Any]) -> None:
            if doc["status"] == "Stopping" and fields.get("status") == "Completed":
                fields["status"] = "Stopped"  # a stop requested before the end wins
            doc.update(fields)
            doc["modified"] = now()
        self.state.update(f"{self.kind}-job", self.name, change)

    def register(self) -> bool:
        """Record this runner's pid in the job (with the status, in one transaction);
        False if the job already ended, or another runner has it (a job whose creator was
        killed before its runner started gets one from whoever looks at it next, and the
        first runner that registers runs it). A stop requested before any process knew the
        pid (the creator interrupted between creating the job and recording it) is
        honoured here: the stopper could signal no one."""
        me = os.getpid()
        taken: dict[str, int] = {}

        def claim(d: dict[str, Any]) -> None:
            if d["status"] not in ("InProgress", "Stopping"):
                return
            if d.get("pid") not in (None, me) and d.get("registered") and pid_alive(d["pid"]):
                taken["by"] = d["pid"]
                return
            d.update(pid=me, registered=now())
        doc = self.state.update(f"{self.kind}-job", self.name, claim)
        if taken:
            return False
        if doc is not None and doc["status"] == "Stopping":
            raise _Stopped()
        return doc is not None and doc["status"] == "InProgress"

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    # -- staging
    def download_prefix(self, uri: str, target: Path) -> int:
        bucket, prefix = parse_s3_uri(uri)
        count = 0
        for key in self.s3.list_keys(bucket, prefix):
            rel = key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.s3.path_of(bucket, key), dest)
            count += 1
        if count == 0:
            raise _JobError(f"ClientError: No S3 objects found under S3 URL \"{uri}\" given "
                            "in input data source. Please ensure that the bucket exists in "
                            "the selected region, that objects exist under that S3 prefix.")
        return count

    def upload_dir(self, source: Path, uri: str) -> int:
        """Store every file under ``source``; the files move into the store (the workspace
        of a completed job is deleted anyway), so big outputs are not copied."""
        bucket, prefix = parse_s3_uri(uri)
        count = 0
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(source).as_posix()}"
            self.moved.append(self.s3.move_file(str(path), bucket, key))
            count += 1
        return count

    # -- job kinds
    def prepare_training(self) -> tuple[list[str], dict[str, str]]:
        req = self.request
        hps: dict[str, str] = req.get("HyperParameters", {})
        channels = []
        for channel in req.get("InputDataConfig", []):
            ch_name = channel["ChannelName"]
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            n = self.download_prefix(uri, self.base / "input" / "data" / ch_name)
            self.log(f"Downloaded {n} object(s) for channel {ch_name} from {uri}")
            channels.append(ch_name)
        config = self.base / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(hps))
        (config / "inputdataconfig.json").write_text(json.dumps(
            {c["ChannelName"]: {"TrainingInputMode": "File"}
             for c in req.get("InputDataConfig", [])}))
        (config / "resourceconfig.json").write_text(json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"]}))
        for sub in ("model", "output/data", "checkpoints"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        folder = resolve_image(self.state, req["AlgorithmSpecification"]["TrainingImage"])
        spec = req["AlgorithmSpecification"]
        command = container_command(
            folder, self.base, mode="train", entrypoint=spec.get("ContainerEntrypoint"),
            arguments=spec.get("ContainerArguments"), hyperparameters=hps,
            python=interpreter(folder, self.root), root=self.root)
        env = {
            "SM_MODEL_DIR": str(self.base / "model"),
            "SM_OUTPUT_DATA_DIR": str(self.base / "output" / "data"),
            "SM_OUTPUT_DIR": str(self.base / "output"),
            "SM_INPUT_DIR": str(self.base / "input"),
            "SM_INPUT_CONFIG_DIR": str(config),
            "SM_CHANNELS": json.dumps(channels),
            "SM_HPS": json.dumps({k: _decode(v) for k, v in hps.items()}),
            "SM_CURRENT_HOST": "algo-1", "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_NUM_CPUS": str(os.cpu_count() or 1), "SM_NUM_GPUS": "0",
            "TRAINING_JOB_NAME": self.name,
            **{f"SM_CHANNEL_{c.upper()}": str(self.base / "input" / "data" / c)
               for c in channels},
            **req.get("Environment", {}),
        }
        return command, env

    def finish_training(self) -> dict[str, Any]:
        out = self.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        model_uri = f"{out}/{self.name}/output/model.tar.gz"
        archive = self.workspace / "model.tar.gz"
        _tar(self.base / "model", archive)
        bucket, key = parse_s3_uri(model_uri)
        self.moved.append(self.s3.move_file(str(archive), bucket, key))  # made for the store
        self.log(f"Uploaded model artifacts to {model_uri}")
        data_dir = self.base / "output" / "data"
        if any(data_dir.iterdir()):
            _tar(data_dir, self.workspace / "output.tar.gz")
            bucket, key = parse_s3_uri(f"{out}/{self.name}/output/output.tar.gz")
            self.moved.append(self.s3.move_file(str(self.workspace / "output.tar.gz"), bucket,
                                                key))
        return {"ModelArtifacts": {"S3ModelArtifacts": model_uri}}

    def prepare_processing(self) -> tuple[list[str], dict[str, str]]:
        req = self.request
        for item in req.get("ProcessingInputs", []):
            s3_input = item.get("S3Input")
            if s3_input is None:
                raise _JobError("ClientError: the local runtime supports S3Input processing "
                                f"inputs only (input {item['InputName']})")
            local = Path(remap(s3_input["LocalPath"], Path("/"), self.base))
            n = self.download_prefix(s3_input["S3Uri"], local)
            self.log(f"Downloaded {n} object(s) for input {item['InputName']}")
        for item in req.get("ProcessingOutputConfig", {}).get("Outputs", []):
            Path(remap(item["S3Output"]["LocalPath"], Path("/"), self.base)).mkdir(
                parents=True, exist_ok=True)
        config = self.base / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "processingjobconfig.json").write_text(json.dumps(req, default=str))
        spec = req["AppSpecification"]
        folder = resolve_image(self.state, spec["ImageUri"])
        command = container_command(folder, self.base, mode="process",
                                    entrypoint=spec.get("ContainerEntrypoint"),
                                    arguments=spec.get("ContainerArguments"),
                                    python=interpreter(folder, self.root), root=self.root)
        return command, {"PROCESSING_JOB_NAME": self.name, **req.get("Environment", {})}

    def finish_processing(self) -> dict[str, Any]:
        for item in self.request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            s3_output = item["S3Output"]
            local = Path(remap(s3_output["LocalPath"], Path("/"), self.base))
            n = self.upload_dir(local, s3_output["S3Uri"])
            self.log(f"Uploaded {n} file(s) of output {item['OutputName']} "
                     f"to {s3_output['S3Uri']}")
        return {}

    # -- the run
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        max_runtime = self.request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        try:
            if not self.register():
                return
            prepare = self.prepare_training if self.kind == "training" else self.prepare_processing
            try:
                command, extra_env = prepare()
            except RequirementsError as exc:  # the image cannot run: the job's input, not ours
                raise _JobError(f"ClientError: the image cannot start: {exc}") from None
            if self.stopping.is_set():
                raise _Stopped()
            self.set_status(secondary="Training" if self.kind == "training" else "InProgress",
                            started=now())
            returncode = self.execute(command, job_environment(self.base, extra_env),
                                      max_runtime)
            if self.kind == "processing":
                self.record_exit_message()
            if self.stopping.is_set():
                raise _Stopped()
            if returncode != 0:
                raise _JobError(self.failure_reason(returncode))
            finish = self.finish_training if self.kind == "training" else self.finish_processing
            outputs = finish()
            self.set_status(status="Completed", secondary="Completed", ended=now(), **outputs)
            shutil.rmtree(self.base, ignore_errors=True)
        except _Stopped as stop:
            self.log(f"Job stopped{': ' + stop.reason if stop.reason else ''}")
            fields: dict[str, Any] = {"status": "Stopped", "ended": now(),
                                      "secondary": stop.secondary}
            if stop.reason:
                fields["reason"] = stop.reason
            self.set_status(**fields)
        except _JobError as err:
            self.log(f"Job failed: {err.reason}")
            self.set_status(status="Failed", secondary="Failed", reason=err.reason, ended=now())
        except Exception as exc:  # the runner itself broke: report it, as SageMaker would
            reason = f"InternalServerError: local job runner failed: {type(exc).__name__}: {exc}"
            self.log(reason)
            self.set_status(status="Failed", secondary="Failed", reason=reason, ended=now())
            raise
        finally:
            publish_quietly(self.root, self.kind, self.name, self.preloading)
            self.fill_etags()

    def fill_etags(self) -> None:
        """The outputs' ETags (MD5s), after the job's end is announced: the waiting run
        need not wait for them. One not filled here (this runner killed first) is computed
        by whoever reads it first."""
        try:
            self.s3.fill_etags(self.moved)
        except Exception as exc:
            print(f"could not compute the outputs' ETags: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def execute(self, command: list[str], env: dict[str, str], max_runtime: int | None) -> int:
        self.log("Invoking: " + " ".join(command))
        self.child = subprocess.Popen(command, cwd=str(self.workspace), env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        self.preloading = preload_publish()  # while the container runs
        timer = None
        if max_runtime:
            timer = threading.Timer(max_runtime, self._max_runtime_exceeded)
            timer.daemon = True
            timer.start()
        assert self.child.stdout is not None
        with open(self.log_file, "a") as fh:
            for raw in self.child.stdout:
                fh.write(f"{int(time.time() * 1000)}\t"
                         f"{raw.decode(errors='replace').rstrip()}\n")
                fh.flush()
        try:
            returncode = self.child.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.child.kill()
            returncode = self.child.wait()
        if timer is not None:
            timer.cancel()
        if self.timed_out:
            raise _Stopped("MaxRuntimeExceeded",
                           f"Training job exceeded MaxRuntimeInSeconds provided ({max_runtime}s)")
        return returncode

    timed_out = False

    def _max_runtime_exceeded(self) -> None:
        self.timed_out = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def record_exit_message(self) -> None:
        """A processing container's /opt/ml/output/message: its first 1 KB becomes
        ExitMessage; text that is not UTF-8 fails the job (developer guide, "Save and Access
        Metadata Information About Your Processing Job")."""
        path = self.base / "output" / "message"
        if not path.is_file():
            return
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _JobError("ClientError: /opt/ml/output/message is not UTF-8 encoded") from None
        self.set_status(exit_message=text.encode()[:1024].decode("utf-8", errors="ignore"))

    def failure_reason(self, returncode: int) -> str:
        if self.kind == "processing":
            # AWS's own words for a processing container that exits non-zero; the
            # container's reason is its ExitMessage (see record_exit_message)
            return "AlgorithmError: See job logs for more information"
        failure = self.base / "output" / "failure"
        if failure.exists() and failure.read_text().strip():
            # SageMaker caps FailureReason at 1024 characters
            return ("AlgorithmError: " + failure.read_text().strip())[:1024]
        tail = _tail(self.log_file, 5)
        return (f"AlgorithmError: the container exited with code {returncode} and wrote no "
                f"failure file. Last log lines: {tail}")[:1024]


class _JobError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    def __init__(self, secondary: str = "Stopped", reason: str | None = None) -> None:
        super().__init__(secondary)
        self.secondary, self.reason = secondary, reason


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _tar(source: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " | ".join(line.split("\t", 1)[-1] for line in text)

