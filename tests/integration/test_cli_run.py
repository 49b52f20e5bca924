"""``sagepipe run`` as a person meets it, driven in subprocesses in a project made by
``sagepipe init``, with no PREFECT_API_URL: the local Prefect server sagepipe keeps,
the steps' view, one paragraph per failure, Ctrl-C, ``kill -9`` then ``sagepipe down``,
``--force`` and ``--no-server``.

The tests share one project and its server, in order, like a user's session; the last
fixture step is ``sagepipe down``, which must leave no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prefect_http
import pytest

from sagepipe.flows.config import load_config
from sagepipe.tasks.runtime import Clients, get_clients
from sagepipe.tasks.storage import list_run_records

pytestmark = [pytest.mark.flow, pytest.mark.slow]
BIN = Path(sys.executable).parent
SLOW_TRAIN = "import time\nprint('training slowly', flush=True)\ntime.sleep(300)\n"
CRASHING_TRAIN = "raise ValueError('the learning rate must be positive, got -1')\n"
LINK = re.compile(r"Flow run (\S+): (http://127\.0\.0\.1:\d+)/runs/flow-run/([0-9a-f-]{36})")


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def sagepipe(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "sagepipe"), *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str) -> Running:
        process = subprocess.Popen([str(BIN / "sagepipe"), *args], cwd=self.root,
                                   env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)  # a terminal's process group
        return Running(process)

    @property
    def server(self) -> dict[str, Any]:
        return dict(json.loads((self.root / ".sagepipe/prefect/server.json").read_text()))

    def train_script(self, text: str | None) -> None:
        script = self.root / "steps/train/train.py"
        backup = self.root / "train.py.orig"
        if not backup.exists():
            shutil.copy(script, backup)
        script.write_text(backup.read_text() if text is None else text)

    def clients(self) -> tuple[Clients, str]:
        """The project's local runtime (its state dir is relative to the project)."""
        with contextlib.chdir(self.root):
            config = load_config(None)
            return get_clients(config.runtime), config.artifacts_uri

    def records(self) -> list[dict[str, Any]]:
        clients, artifacts = self.clients()
        return list_run_records(clients, artifacts, limit=50)

    def job_status(self, job: str) -> str:
        sm = self.clients()[0].sagemaker
        return str(sm.describe_training_job(TrainingJobName=job)["TrainingJobStatus"])


@dataclass
class Running:
    process: subprocess.Popen[str]
    err: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.err.append(line)
        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, "".join(self.err))
            if found:
                return found
            assert self.process.poll() is None, "".join(self.err)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.err)}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int], timeout: float = 10.0) -> set[int]:
    """The pids still running (not zombies) after up to ``timeout`` seconds."""
    from sagepipe.tasks.local.common import pid_alive

    deadline = time.monotonic() + timeout
    left = {p for p in pids if pid_alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = {p for p in left if pid_alive(p)}
    return left


def flow_run_state(ui_url: str, run_id: str) -> dict[str, Any]:
    state = prefect_http.get(f"{ui_url}/api/flow_runs/{run_id}", timeout=10).json()["state"]
    return dict(state)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("cli-project") / "churn-model"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_HOME=str(root.parent / "prefect-home"))  # no profile's API URL
    made = Project(root, env)
    root.mkdir()
    assert made.sagepipe("init").returncode == 0
    pushed = made.sagepipe("data", "push", "--example")
    assert pushed.returncode == 0, pushed.stderr
    yield made
    down = made.sagepipe("down")
    print(f"timings: {made.timings}; down: {down.stdout}")
    if (root / ".sagepipe/prefect/server.json").exists():  # a failed test left it: stop it
        subprocess.run([str(BIN / "sagepipe"), "server", "down"], cwd=root, env=env,
                       timeout=120)


def test_the_first_run_starts_a_server_that_the_second_reuses(project: Project) -> None:
    started = time.monotonic()
    first = project.sagepipe("run")
    project.timings["first run"] = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert re.search(r"Prefect API: http://127\.0\.0\.1:\d+/api \(local server \(started in "
                     r"[\d.]+ s\)\)", first.stderr), first.stderr
    _, ui, run_id = LINK.search(first.stderr).groups()  # type: ignore[union-attr]
    assert f"Flow run: {ui}/runs/flow-run/{run_id}" in first.stdout  # at the end too
    assert "deployed" in first.stdout
    server = project.server
    assert server["api_url"] == f"{ui}/api"
    assert flow_run_state(ui, run_id)["type"] == "COMPLETED"  # the UI keeps it

    started = time.monotonic()
    second = project.sagepipe("run")
    project.timings["second run"] = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "Prefect API:" not in second.stderr  # no start-up: the same server
    assert project.server["server_pid"] == server["server_pid"]
    assert "unchanged" in second.stdout
    _, ui2, second_id = LINK.search(second.stderr).groups()  # type: ignore[union-attr]
    assert ui2 == ui and flow_run_state(ui, second_id)["type"] == "COMPLETED"


def test_the_steps_view_is_lines_off_a_terminal_not_prefects_log_stream(
        project: Project) -> None:
    result = project.sagepipe("run")
    assert result.returncode == 0, result.stderr
    for step, state in (("pin-data", "completed"), ("preprocess", "cached"),
                        ("train", "cached")):
        assert re.search(rf"^  \d\d:\d\d:\d\d {step} +{state}", result.stderr, re.M), \
            result.stderr
    assert "| INFO    |" not in result.stderr  # Prefect's stream is for --verbose
    verbose = project.sagepipe("run", "--verbose")
    assert verbose.returncode == 0
    assert "| INFO    | Task run 'train'" in verbose.stderr


def test_force_runs_every_job_again(project: Project) -> None:
    before = project.records()[0]
    result = project.sagepipe("run", "--force")
    assert result.returncode in (0, 5), result.stderr  # the same model may not beat itself
    forced = project.records()[0]
    assert forced["forced"] is True
    assert {s["how"] for s in forced["steps"].values()} == {"created"}
    for step in ("preprocess", "train"):
        assert forced["steps"][step]["job"] != before["steps"][step]["job"]
    assert re.search(r"^  \S+ +\S+ +\S+ +rejected \(forced\)|deployed \(forced\)",
                     project.sagepipe("status").stdout, re.M)


def test_a_failing_job_is_one_paragraph_and_exit_1(project: Project) -> None:
    project.train_script(CRASHING_TRAIN)
    try:
        result = project.sagepipe("run")
        debug = project.sagepipe("run", "--debug")
    finally:
        project.train_script(None)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert not re.search(r"^Traceback|^\s+File \"", err, re.M), err  # the user's is inline
    assert "site-packages/prefect" not in err
    paragraph = err[err.index("Run failed: training job "):]
    assert "the learning rate must be positive, got -1" in paragraph
    assert re.search(r"Where: step train, job \S+-train-[0-9a-f]{16}", paragraph)
    assert "Flow run (full logs and traceback): http://127.0.0.1:" in paragraph
    assert "Next: read the job's log with `sagepipe logs " in paragraph
    assert result.stdout == ""
    assert debug.returncode == 1
    assert re.search(r"^Traceback \(most recent call last\)", debug.stderr, re.M)


def test_ctrl_c_during_training_stops_the_job_and_cancels_the_run(project: Project) -> None:
    project.train_script(SLOW_TRAIN)
    try:
        run = project.start("run")
        job = run.wait_for(r"train +job (\S+)").group(1)
        run.wait_for("training slowly|train ")
        _, ui, run_id = LINK.search("".join(run.err)).groups()  # type: ignore[union-attr]
        tree = descendants(run.process.pid)
        assert project.job_status(job) == "InProgress"
        sent = time.monotonic()
        os.killpg(run.process.pid, signal.SIGINT)  # as the terminal sends it: to the group
        code = run.process.wait(timeout=30)
        project.timings["ctrl-c to exit"] = time.monotonic() - sent
    finally:
        project.train_script(None)
    err = "".join(run.err)
    assert code == 130, err
    assert project.timings["ctrl-c to exit"] < 10, err
    assert f"Interrupted (Ctrl-C). Stopped training job {job}." in err
    assert "Traceback" not in err
    assert project.job_status(job) in ("Stopping", "Stopped")
    state = flow_run_state(ui, run_id)
    assert state["type"] == "CANCELLED"
    assert "Interrupted from the terminal (Ctrl-C)" in state["message"]
    record = project.records()[0]
    assert record["outcome"] == "cancelled" and record["steps"]["train"]["status"] == "stopped"
    server = project.server["server_pid"]
    assert alive(tree - {server}) == set()  # the job's processes too; the server stays
    assert alive({server}, timeout=0) == {server}


def test_approve_answers_a_run_paused_on_the_server_sagepipe_keeps(project: Project) -> None:
    """No PREFECT_API_URL: `sagepipe approve` finds the paused run on the local server."""
    other = ["--set", "project=paused-demo", "--set", "endpoint.name=paused-demo"]
    run = project.start("run", *other, "--set", "gate.approval=manual",
                        "--set", "gate.approval_timeout_seconds=300")
    waiting = run.wait_for(r"Waiting up to \d+ s for approval of (\S+) .*answer with "
                           r"`sagepipe approve (\d+)`")
    package = waiting.group(1)
    assert package.endswith(f"/{waiting.group(2)}")
    said = project.sagepipe("approve", package.rsplit("/", 1)[1], "--note", "plots look right",
                            *other)
    assert said.returncode == 0, said.stderr
    assert "Answered flow run" in said.stdout
    code = run.process.wait(timeout=300)
    assert run.process.stdout is not None
    out = run.process.stdout.read()
    assert code == 0, "".join(run.err)
    assert "deployed" in out and "paused-demo" in out


def test_kill_9_then_down_leaves_no_process(project: Project) -> None:
    project.train_script(SLOW_TRAIN)
    try:
        run = project.start("run", "--no-server")
        run.wait_for(r"Prefect API: http://127\.0\.0\.1:\d+/api \(temporary\)")
        job = run.wait_for(r"train +job (\S+)").group(1)
        tree = descendants(run.process.pid)
        os.kill(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=10)
        assert alive(tree, timeout=1), "the job and the temporary server outlive the command"
        managed = project.server["server_pid"]
        down = project.sagepipe("down")
    finally:
        project.train_script(None)
    assert down.returncode == 0, down.stderr
    assert f"stopped jobs: {job}" in down.stdout
    assert "Stopped the local Prefect server at http://127.0.0.1:" in down.stdout
    assert "Stopped 1 temporary Prefect server(s)" in down.stdout
    assert alive(tree | {managed}) == set(), down.stdout
    assert not list((project.root / ".sagepipe/prefect-runs").iterdir())
    assert project.sagepipe("down").stdout.strip() == (
        "Deleted endpoints: none; stopped jobs: none.")


def test_a_second_ctrl_c_exits_at_once_and_down_stops_what_is_left(project: Project) -> None:
    project.train_script(SLOW_TRAIN)
    try:
        run = project.start("run", "--no-server")
        job = run.wait_for(r"train +job (\S+)").group(1)
        os.killpg(run.process.pid, signal.SIGINT)
        time.sleep(0.05)  # the first one's clean-up has just begun
        os.killpg(run.process.pid, signal.SIGINT)
        code = run.process.wait(timeout=30)
        down = project.sagepipe("down")
    finally:
        project.train_script(None)
    err = "".join(run.err)
    assert code == 130, err
    assert "Interrupted again: exiting now; `sagepipe down` stops what is left." in err
    assert down.returncode == 0, down.stderr
    assert project.job_status(job) in ("Stopping", "Stopped")  # by the first, or by down
    assert not list((project.root / ".sagepipe/prefect-runs").iterdir()), down.stdout


def test_the_live_view_on_a_terminal(project: Project) -> None:
    """Under a pseudo-terminal: one table redrawn in place, not a stream of lines."""
    leader, follower = pty.openpty()
    env = {**project.env, "TERM": "xterm-256color", "COLUMNS": "150"}
    process = subprocess.Popen([str(BIN / "sagepipe"), "run", "--no-server"],
                               cwd=project.root, env=env, stdin=follower, stdout=follower,
                               stderr=follower, start_new_session=True)
    os.close(follower)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            out += chunk
    finally:
        code = process.wait(timeout=120)
        os.close(leader)
    drawn = out.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # without colours and cursor moves
    assert code in (0, 5), text
    assert re.search(r"step\s+state\s+job\s+time\s+last log line", text), text
    assert "\x1b[1A\x1b[2K" in drawn  # redrawn in place: cursor up, erase line
    assert re.search(r"preprocess\s+\S*cached", text)
    assert "| INFO    |" not in text
    # the run's last logs reached its temporary server before it was stopped
    assert "Error logging to API" not in text, text[-2000:]
