"""``make faults``: kill sagepipe anywhere, run again, check that nothing broke (issue 19).

    python tests/faults/fault_suite.py [--points 30] [--seed 19] [--ci] [--out FILE] [--keep]

1. Calibrate: on a fresh local state (the example data pushed), one run that creates the
   endpoint, one that updates it (blue/green, a new data version) and one ``data push``,
   none killed, each with the local runtime's call trail: their boundaries and spans
   (``fault_plan``).
2. Plan: the points the issue names, then seeded ones up to ``--points`` (``--ci``: the
   first eight named ones), in *lanes*: one local state each, its points one after
   another (the first creates the endpoint, each later one pushes a new data version and
   updates it).
3. Each point: start the command (``sagepipe run``, or ``sagepipe data push`` for a push
   point), SIGKILL its target at the point (the CLI, the job runner at work, the
   endpoint's newest server, its supervisor, or every process of the state for a machine
   restart, after which ``sagepipe status`` must say the endpoint is down and ``sagepipe
   up`` must bring it back), look at the endpoint, run ``sagepipe run`` again, check the
   invariants (``fault_checks``). At a lane's end ``sagepipe down`` must leave no process.
4. Print the table (kill point -> invariants), write the JSON (default
   ``bench/results/faults.json``, ``faults-ci.json`` with ``--ci``); exit 1 if any
   invariant failed.

All commands talk to one Prefect server of the suite's own (``PREFECT_API_URL``) and keep
Prefect's results under the suite's folder; the suite's folder is a temporary one,
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: restarts.py

import fault_checks as checks
from fault_kill import Killed, Trigger, kill_all, processes_of
from fault_plan import Boundary, Call, KillPoint, Lane, boundaries, parse_trail, plan
from restarts import simulate_machine_restart

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.flows.server import down as server_down
from sagepipe.flows.server import ensure_server
from sagepipe.tasks.data import parse_s3_uri, push_dataset
from sagepipe.tasks.local.common import CALL_LOG_ENV
from sagepipe.tasks.runtime import Clients, get_clients
from sagepipe.tasks.storage import ensure_local_resources

PROJECT = Path(__file__).resolve().parents[2]
SAGEPIPE = str(Path(sys.executable).with_name("sagepipe"))
# every run of a lane: a data version whose columns differ from the live model's is judged
# on the threshold alone, so each update deploys whatever its metric (a deterministic lane);
# a job whose runner was killed announces no end, so its run learns of it at the next
# safety poll: 5 s (the least allowed) instead of the example's 30 s keeps the suite short
RUN_ARGS = ["--set", "gate.on_schema_change=threshold_only",
            "--set", "jobs.safety_poll_seconds=5"]
RUN_TIMEOUT = 400.0  # the bug of issue 19: a re-run that waits 120 s on a dead endpoint
INVARIANTS = ("rerun", "one_job_per_key", "artifacts", "endpoint", "registry", "truthful",
              "processes")
BIG_PUSH_COPIES = 200  # the push points' file: the example's rows this many times (~25 MB)


@dataclass
class Outcome:
    point: KillPoint
    killed: Killed = field(default_factory=Killed)
    after_kill: str = ""
    checks: dict[str, checks.Check] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.killed.fired and all(ok for ok, _ in self.checks.values())


class Suite:
    def __init__(self, work: Path, *, seed: int) -> None:
        self.work, self.seed = work, seed
        self.verified: dict[str, int] = {}
        self.data = work / "data"
        self.data.mkdir(parents=True)
        server, _ = ensure_server(work / "prefect", port=_free_port(), ui=False)
        self.api = server.api_url
        self.env = {**os.environ, "PREFECT_API_URL": self.api,
                    "PREFECT_HOME": str(work / "prefect-home"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "NO_COLOR": "1",
                    "PYTHONUNBUFFERED": "1",
                    # the CLI is the process killed: no warm process in between (a killed
                    # warm client takes its run with it: tests/unit/test_warm.py)
                    "SAGEPIPE_WARM": "off"}
        self.env.pop("SAGEPIPE_PREFECT_SERVER", None)
        self.example = self._example()
        self.big = self._big_variant()
        self.baseline = work / "baseline"
        self._push(self.baseline, self.example)
        (self.baseline / ".sagepipe" / "instance-id").unlink(missing_ok=True)

    # ------------------------------------------------------------------ data
    def _example(self) -> Path:
        from sagepipe.flows.examples import write_example

        return write_example("breast-cancer", self.data)

    def variant(self, step: int) -> Path:
        """The example without its ``step``-th feature column: a new data version whose
        schema differs from the live model's (so the threshold alone decides)."""
        path = self.data / f"variant-{step}.csv"
        if not path.exists():
            lines = self.example.read_text().splitlines()
            header = lines[0].split(",")
            drop = 1 + (step - 1) % (len(header) - 2)  # never the label (last) column
            path.write_text("\n".join(",".join(v for i, v in enumerate(line.split(","))
                                               if i != drop) for line in lines) + "\n")
        return path

    def _big_variant(self) -> Path:
        path = self.data / "big.csv"
        lines = self.example.read_text().splitlines()
        with open(path, "w") as out:
            out.write(lines[0] + "\n")
            for _ in range(BIG_PUSH_COPIES):
                out.write("\n".join(lines[1:]) + "\n")
        return path

    def config(self, lane_dir: Path) -> PipelineConfig:
        return load_config(None, {"runtime": {"state_dir": str(lane_dir / ".sagepipe")}})

    def clients(self, lane_dir: Path) -> Clients:
        return get_clients(self.config(lane_dir).runtime)

    def _push(self, lane_dir: Path, path: Path) -> None:
        config = self.config(lane_dir)
        bucket = parse_s3_uri(config.dataset_uri)[0]
        ensure_local_resources(config.runtime, bucket, f"{config.project}-events")
        push_dataset(get_clients(config.runtime), path, config.dataset_uri,
                     config.data_rules())

    # -------------------------------------------------------------- commands
    def command(self, lane_dir: Path, args: list[str], log: Path, *,
                point: KillPoint | None = None, timeout: float = RUN_TIMEOUT
                ) -> tuple[int | None, str, float, Killed]:
        env = {**self.env, CALL_LOG_ENV: str(lane_dir / "calls.log")}
        started = time.time()
        with open(log, "w") as out:
            proc = subprocess.Popen([SAGEPIPE, *args], cwd=lane_dir, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            trigger = None
            if point is not None:
                trigger = Trigger(lane_dir / "calls.log", point, started=started,
                                  command_pid=proc.pid,
                                  resolve=lambda call: self.resolve(lane_dir, point, proc.pid,
                                                                    call))
                trigger.start()
            try:
                code: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
            if trigger is not None:
                time.sleep(0.05)
                trigger.stop()
                trigger.join(timeout=10)
        seconds = time.time() - started
        return code, log.read_text(errors="replace"), seconds, (
            trigger.result if trigger is not None else Killed())

    def resolve(self, lane_dir: Path, point: KillPoint, command_pid: int,
                call: Call | None) -> tuple[list[int], str]:
        root = lane_dir / ".sagepipe"
        target = point.target
        if target in ("cli", "push"):
            return [command_pid], f"the command (pid {command_pid})"
        if target == "restart":
            pids = [command_pid, *simulate_machine_restart(root)]
            return pids, f"every process of the state ({len(pids)}), boot changed"
        docs = _docs(root)
        if target == "runner":
            if call is not None and call.actor == "runner":
                return [call.pid], f"the job runner (pid {call.pid}) at its call"
            live = [d for d in docs["jobs"] if d["status"] == "InProgress" and d.get("pid")]
            live.sort(key=lambda d: d["created"])
            if live:
                return [int(live[-1]["pid"])], f"job runner of {live[-1]['name']}"
            return [], "no job runner at work"
        endpoint = docs["endpoint"]
        if endpoint is None:
            return [], "no endpoint yet"
        if target == "supervisor":
            pid = (endpoint.get("supervisor") or {}).get("pid")
            return ([int(pid)], "the endpoint's supervisor") if pid else (
                [], "no supervisor")
        deployment = endpoint.get("pending") or endpoint.get("current") or {}
        which = "new (green)" if endpoint.get("pending") else "live"
        pid = deployment.get("pid")
        return ([int(pid)], f"the {which} endpoint server (pid {pid})") if pid else (
            [], f"no {which} server process")

    # ---------------------------------------------------------------- lanes
    def run_lane(self, lane: Lane, results: list[Outcome]) -> None:
        lane_dir = self.work / f"lane-{lane.index}"
        if not lane_dir.exists():
            _copy_state(self.baseline, lane_dir)
        step = 1 if lane.calibration else 0
        if lane.points[0].kind == "update" and not lane.calibration:
            code, out, _, _ = self.command(lane_dir, ["run", *RUN_ARGS],
                                           lane_dir / "base-run.log")
            if code != 0:
                raise RuntimeError(f"lane {lane.index}'s base run failed:\n{out[-2000:]}")
        for point in lane.points:
            if point.kind == "update":
                step += 1
            started = time.time()
            outcome = Outcome(point)
            print(f"[{point.id}] lane {lane.index} {point.kind}: {point.describe()} "
                  f"({point.why})", flush=True)
            try:
                self.run_point(lane_dir, point, step, outcome)
            except Exception as exc:  # the suite's own trouble: the point fails, loudly
                outcome.notes.append(f"suite error: {type(exc).__name__}: {exc}")
                outcome.checks.setdefault("rerun", (False, f"suite error: {exc}"))
            outcome.seconds = round(time.time() - started, 1)
            results.append(outcome)
            print(f"[{point.id}] {'PASS' if outcome.passed else 'FAIL'} in "
                  f"{outcome.seconds:.0f}s: " + ", ".join(
                      f"{k}={'ok' if ok else 'FAIL'}" for k, (ok, _) in outcome.checks.items()),
                  flush=True)
        self.end_lane(lane_dir, results[-1])

    def run_point(self, lane_dir: Path, point: KillPoint, step: int, outcome: Outcome) -> None:
        clients = self.clients(lane_dir)
        config = self.config(lane_dir)
        root = lane_dir / ".sagepipe"
        since = time.time()
        if point.target == "push":
            self.push_point(lane_dir, point, step, outcome)
        else:
            if point.kind == "update":
                self._push(lane_dir, self.variant(step))
            code, out, seconds, killed = self.command(
                lane_dir, ["run", *RUN_ARGS], lane_dir / f"{point.id}-killed.log",
                point=point)
            outcome.killed = killed
            outcome.notes.append(f"killed command: exit {code} after {seconds:.1f}s")
            if point.target == "restart":
                self.after_restart(lane_dir, point, outcome)
        ok, status = checks.truthful(clients, config.endpoint.name)
        outcome.after_kill = status
        truth = [(ok, f"after the kill: {status}")]
        code, out, seconds, _ = self.command(lane_dir, ["run", *RUN_ARGS],
                                             lane_dir / f"{point.id}-rerun.log")
        record = checks.read_record(clients, out)
        outcome.checks["rerun"] = checks.rerun(code, record, seconds)
        if code != 0:
            outcome.notes.append("re-run output: " + " | ".join(out.strip().splitlines()[-4:]))
        failures = point.target in ("runner", "restart")
        outcome.checks["one_job_per_key"] = checks.jobs(clients.sagemaker, since=since,
                                                        failures_expected=failures)
        outcome.checks["artifacts"] = checks.artifacts(clients, root, record, self.verified)
        outcome.checks["endpoint"], outcome.checks["registry"] = checks.endpoint_and_registry(
            clients, config.endpoint.name, config.model_package_group, record,
            config.label_column)
        ok, status = checks.truthful(clients, config.endpoint.name)
        truth.append((ok, f"after the re-run: {status}"))
        outcome.checks["truthful"] = (all(t[0] for t in truth),
                                      "; ".join(t[1] for t in truth))
        outcome.checks["processes"] = checks.leftover_processes(clients.sagemaker, root)

    def push_point(self, lane_dir: Path, point: KillPoint, step: int,
                   outcome: Outcome) -> None:
        config = self.config(lane_dir)
        root = lane_dir / ".sagepipe"
        before = _latest_version(root, config.dataset_uri)
        pushed_sha = hashlib.sha256(self.big.read_bytes()).hexdigest()
        code, _, seconds, killed = self.command(
            lane_dir, ["data", "push", str(self.big), "--no-trigger"],
            lane_dir / f"{point.id}-killed.log", point=point)
        outcome.killed = killed
        outcome.notes.append(f"killed push: exit {code} after {seconds:.1f}s")
        outcome.checks["store"] = checks.store_after_push(root, config.dataset_uri, before,
                                                          pushed_sha, self.verified)
        code, out, _, _ = self.command(
            lane_dir, ["data", "push", str(self.variant(step)), "--no-trigger"],
            lane_dir / f"{point.id}-push-again.log")
        if code != 0:
            outcome.checks["store"] = (False, f"the next push failed: {out[-300:]}")

    def after_restart(self, lane_dir: Path, point: KillPoint, outcome: Outcome) -> None:
        """After a machine restart: `sagepipe status` names the endpoint down, and
        `sagepipe up` brings it back."""
        config = self.config(lane_dir)
        code, out, _, _ = self.command(lane_dir, ["status"], lane_dir / f"{point.id}-status.log",
                                       timeout=120)
        line = next((x for x in out.splitlines() if x.strip().startswith(config.endpoint.name)),
                    "")
        says_down = code == 0 and ("OutOfService" in line or not line)
        code_up, out_up, _, _ = self.command(lane_dir, ["up"], lane_dir / f"{point.id}-up.log",
                                             timeout=300)
        clients = self.clients(lane_dir)
        ok, status = checks.truthful(clients, config.endpoint.name)
        back = code_up == 0 and (status in ("InService", "none") and ok)
        outcome.checks["restart"] = (
            says_down and back,
            f"status: {line.strip()[:80] or 'no endpoint'} (exit {code}); up: exit {code_up}, "
            f"then {status}" + ("" if code_up == 0 else f" ({out_up.strip()[-160:]})"))

    def end_lane(self, lane_dir: Path, last: Outcome) -> None:
        code, _, _, _ = self.command(lane_dir, ["down"], lane_dir / "down.log", timeout=120)
        time.sleep(0.5)
        left = processes_of(lane_dir / ".sagepipe")
        last.checks["down"] = (code == 0 and not left,
                               f"exit {code}; " + ("; ".join(str(p) for p in left[:3])
                                                   if left else "no process left"))
        kill_all(lane_dir / ".sagepipe")  # whatever happened, the next lane starts clean

    # ----------------------------------------------------------- calibration
    def calibrate(self) -> dict[str, list[Boundary]]:
        lane_dir = self.work / "lane-0"
        _copy_state(self.baseline, lane_dir)
        timelines = {}
        for kind in ("create", "update"):
            if kind == "update":
                self._push(lane_dir, self.variant(1))
            started = time.time()
            code, out, _, _ = self.command(lane_dir, ["run", *RUN_ARGS],
                                           lane_dir / f"calibrate-{kind}.log")
            if code != 0:
                raise RuntimeError(f"the {kind} calibration run failed:\n{out[-3000:]}")
            timelines[kind] = self._timeline(lane_dir, started)
        started = time.time()
        code, out, _, _ = self.command(lane_dir, ["data", "push", str(self.big), "--no-trigger"],
                                       lane_dir / "calibrate-push.log")
        if code != 0:
            raise RuntimeError(f"the calibration push failed:\n{out[-3000:]}")
        timelines["push"] = self._timeline(lane_dir, started)
        self._push(lane_dir, self.variant(1))  # the lane goes on from the update's data
        return timelines

    def _timeline(self, lane_dir: Path, started: float) -> list[Boundary]:
        calls = parse_trail((lane_dir / "calls.log").read_text(), since=started)
        return boundaries(calls, started=started, ended=time.time())


def _docs(root: Path) -> dict[str, Any]:
    db = sqlite3.connect(f"file:{root / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT kind, doc FROM resources WHERE kind IN "
                          "('training-job', 'processing-job', 'endpoint')").fetchall()
    finally:
        db.close()
    docs = [(kind, json.loads(doc)) for kind, doc in rows]
    return {"jobs": [d for k, d in docs if k.endswith("-job")],
            "endpoint": next((d for k, d in docs if k == "endpoint"), None)}


def _latest_version(root: Path, uri: str) -> str | None:
    bucket, key = parse_s3_uri(uri)
    db = sqlite3.connect(f"file:{root / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT version_id FROM s3_versions WHERE bucket=? AND key=? "
                         "ORDER BY seq DESC LIMIT 1", (bucket, key)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def _copy_state(baseline: Path, lane_dir: Path) -> None:
    shutil.copytree(baseline, lane_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------- report
def table(results: list[Outcome]) -> str:
    columns = [c for c in ("restart", "store", *INVARIANTS, "down")
               if any(c in r.checks for r in results)]
    head = ["point", "kill", "fired", "after kill", *columns, "s"]
    rows = []
    for r in results:
        fired = f"{r.killed.at:.2f}s" if r.killed.fired and r.killed.at is not None else "NO"
        cells = [r.point.id, r.point.describe()[:52], fired, r.after_kill[:14]]
        for column in columns:
            if column not in r.checks:
                cells.append("-")
            else:
                cells.append("ok" if r.checks[column][0] else "FAIL")
        cells.append(f"{r.seconds:.0f}")
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=False))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False))
              for row in rows]
    return "\n".join(lines)


def failures(results: list[Outcome]) -> list[str]:
    out = []
    for r in results:
        if not r.killed.fired:
            out.append(f"{r.point.id}: the kill did not fire ({r.killed.what})")
        for name, (ok, detail) in r.checks.items():
            if not ok:
                out.append(f"{r.point.id} {name}: {detail}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--ci", action="store_true", help="the CI subset: 8 named points")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the suite's folder")
    args = parser.parse_args(argv)
    out = args.out or PROJECT / "bench" / "results" / (
        "faults-ci.json" if args.ci else "faults.json")
    work = Path(tempfile.mkdtemp(prefix="sagepipe-faults-"))
    began = time.time()
    load_before = os.getloadavg()
    results: list[Outcome] = []
    lanes: list[Lane] = []
    timelines: dict[str, list[Boundary]] = {}
    calibrated = 0.0
    try:
        suite = Suite(work, seed=args.seed)
        print(f"Fault suite in {work}; Prefect API {suite.api}", flush=True)
        timelines = suite.calibrate()
        calibrated = time.time() - began
        lanes = plan(timelines, total=args.points, seed=args.seed, ci=args.ci)
        print(f"Calibrated in {calibrated:.0f}s; {sum(len(x.points) for x in lanes)} kill "
              f"points in {len(lanes)} lanes (seed {args.seed})", flush=True)
        for lane in lanes:
            suite.run_lane(lane, results)
    finally:
        for lane_dir in sorted(work.glob("lane-*")):
            kill_all(lane_dir / ".sagepipe")
        server_down(work / "prefect", grace=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - began
    print()
    print(table(results))
    problems = failures(results)
    passed = sum(r.passed for r in results)
    print(f"\n{passed}/{len(results)} kill points passed every invariant in {elapsed:.0f}s "
          f"(seed {args.seed}{', CI subset' if args.ci else ''})")
    for line in problems:
        print(f"  FAIL {line}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "meta": {"seed": args.seed, "ci": args.ci, "points": len(results),
                 "passed": passed, "seconds": round(elapsed, 1),
                 "calibration_seconds": round(calibrated, 1),
                 "started": began, "host": platform.node(), "cpus": os.cpu_count(),
                 "load_average_before": load_before, "load_average_after": os.getloadavg(),
                 "commit": _commit(), "work": str(work) if args.keep else None},
        "timelines": {k: [{"anchor": str(b.anchor), "t": b.t, "span": b.span,
                           "resource": b.resource} for b in v]
                      for k, v in timelines.items()},
        "points": [{"point": r.point.as_dict(), "passed": r.passed,
                    "killed": vars(r.killed), "after_kill": r.after_kill,
                    "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in r.checks.items()},
                    "seconds": r.seconds, "notes": r.notes} for r in results],
    }, indent=2, default=str))
    print(f"Results: {out}")
    return 0 if results and not problems else 1


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
