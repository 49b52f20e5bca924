"""The invariants the fault suite checks after a kill and a re-run (issue 19).

Each check returns ``(ok, detail)``. They read the local state through the local
runtime's own clients (what `sagepipe status` reads) and, for blobs and processes, the
files and ``/proc`` directly.

* rerun: the re-run succeeds: exit 0, outcome deployed or unchanged;
* one_job_per_key: exactly one job per content key: a ``-rN`` attempt only after the
  one before it Failed or Stopped, at most one Completed attempt per key, a failed
  attempt only where a job's runner was killed, nothing left InProgress;
* artifacts: no lost artifact: every output the re-run's record names exists, so does
  every completed job's output and every registered model's data, and every stored
  object version's blob is whole (size and sha256);
* endpoint: InService on the config of the model the re-run registered (or found live)
  and answering an invocation with a prediction;
* registry: the live package is the one the re-run names, Approved, holding the model
  the re-run trained; a run registers at most one package (registration is idempotent);
* truthful: whenever the endpoint says InService, its server answers /ping;
* processes: after the re-run only the endpoints' own processes run (supervisor, the
  serving process group); after `sagepipe down`, none.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from fault_kill import Proc, processes_of

from sagepipe.tasks.local.servers import ping
from sagepipe.tasks.runtime import Clients
from sagepipe.tasks.storage import outputs_exist, read_json_if_any, sample_rows

__all__ = ["Check", "artifacts", "endpoint_and_registry", "jobs", "leftover_processes",
           "read_record", "rerun", "store_after_push", "truthful"]

Check = tuple[bool, str]
_ATTEMPT = re.compile(r"^(?P<base>.+?)(?:-r(?P<n>\d+))?$")


def rerun(code: int | None, record: dict[str, Any] | None, seconds: float) -> Check:
    outcome = (record or {}).get("outcome")
    ok = code == 0 and outcome in ("deployed", "unchanged")
    return ok, f"exit {code}, {outcome or 'no record'}, {seconds:.1f}s"


def _job_docs(sm: Any) -> list[tuple[str, dict[str, Any]]]:
    # listing describes each job, so a runner that died is noticed first
    sm.list_training_jobs(MaxResults=100)
    sm.list_processing_jobs(MaxResults=100)
    return [(kind, doc) for kind in ("training", "processing")
            for doc in sm.state.list(f"{kind}-job")]


def jobs(sm: Any, *, since: float, failures_expected: bool) -> Check:
    problems: list[str] = []
    by_base: dict[str, dict[int, dict[str, Any]]] = {}
    for _, doc in _job_docs(sm):
        match = _ATTEMPT.match(doc["name"])
        assert match is not None
        by_base.setdefault(match["base"], {})[int(match["n"] or 1)] = doc
    failed_now = []
    for base, attempts in sorted(by_base.items()):
        completed = [n for n, d in attempts.items() if d["status"] == "Completed"]
        if len(completed) > 1:
            problems.append(f"{base}: {len(completed)} completed attempts")
        for n, doc in sorted(attempts.items()):
            if doc["status"] in ("InProgress", "Stopping"):
                problems.append(f"{doc['name']} still {doc['status']}")
            if n > 1:
                before = attempts.get(n - 1)
                if before is None or before["status"] not in ("Failed", "Stopped"):
                    problems.append(f"{doc['name']} though attempt {n - 1} is "
                                    f"{before['status'] if before else 'missing'}")
            if doc["status"] in ("Failed", "Stopped") and doc["created"] >= since:
                failed_now.append(f"{doc['name']}: {doc['status']} "
                                  f"({(doc.get('reason') or '')[:80]})")
    if failed_now and not failures_expected:
        problems += [f"unexplained {f}" for f in failed_now]
    count = sum(len(a) for a in by_base.values())
    detail = "; ".join(problems) if problems else (
        f"{len(by_base)} keys, {count} jobs" + (f", {len(failed_now)} failed by the kill"
                                                if failed_now else ""))
    return not problems, detail


def _blobs_whole(root: Path, verified: dict[str, int]) -> list[str]:
    """Every stored version's blob exists, with its size and sha256 (a blob already
    verified is only checked for size again)."""
    problems = []
    db = sqlite3.connect(f"file:{root / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT DISTINCT sha256, size FROM s3_versions WHERE marker = 0"
                          ).fetchall()
    finally:
        db.close()
    for sha, size in rows:
        path = root / "s3" / "blobs" / sha
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"blob {sha[:12]} missing")
            continue
        if actual != size:
            problems.append(f"blob {sha[:12]} has {actual} bytes, not {size}")
            continue
        if verified.get(sha) == size:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as blob:
            while chunk := blob.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != sha:
            problems.append(f"blob {sha[:12]} content does not match its name")
        else:
            verified[sha] = size
    return problems


def artifacts(clients: Clients, root: Path, record: dict[str, Any] | None,
              verified: dict[str, int]) -> Check:
    problems: list[str] = []
    named: list[str] = []
    if record:
        for step, info in (record.get("steps") or {}).items():
            named += [f"{step}:{u}" for u in (info.get("outputs") or {}).values()]
        named += [f"record:{record['record_uri']}"] if record.get("record_uri") else []
        named += [f"plot:{u}" for u in (record.get("plots") or {}).values()
                  if isinstance(u, str) and u.startswith("s3://")]
    sm = clients.sagemaker
    for kind, doc in _job_docs(sm):
        if doc["status"] != "Completed":
            continue
        if kind == "training":
            named.append(f"{doc['name']}:{doc['ModelArtifacts']['S3ModelArtifacts']}")
        else:
            for out in doc["request"].get("ProcessingOutputConfig", {}).get("Outputs", []):
                named.append(f"{doc['name']}:{out['S3Output']['S3Uri']}")
    for package in sm.state.list("model-package"):
        for container in package.get("InferenceSpecification", {}).get("Containers", []):
            if container.get("ModelDataUrl"):
                named.append(f"package v{package['ModelPackageVersion']}:"
                             f"{container['ModelDataUrl']}")
    for item in named:
        what, _, uri = item.partition(":")
        if not outputs_exist(clients, [uri]):
            problems.append(f"{what}: {uri} is gone")
    problems += _blobs_whole(root, verified)
    return not problems, "; ".join(problems[:4]) if problems else (
        f"{len(named)} outputs, blobs whole")


def truthful(clients: Clients, endpoint: str) -> tuple[bool, str]:
    """(ok, status): InService only with a server answering /ping."""
    sm = clients.sagemaker
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
    except Exception as exc:  # no endpoint (yet) is a status too
        return True, "none" if "Could not find" in str(exc) else f"error: {exc}"
    status = described["EndpointStatus"]
    if status != "InService":
        return True, status
    current = (sm.state.get("endpoint", endpoint) or {}).get("current") or {}
    if current.get("serverless"):
        return True, status
    port = current.get("port")
    listening = bool(port) and ping(int(port), timeout=2)  # one ping: its answer, reported
    return listening, status + ("" if listening else " with nothing listening")


def endpoint_and_registry(clients: Clients, endpoint: str, group: str,
                          record: dict[str, Any] | None,
                          label: str) -> tuple[Check, Check]:
    sm = clients.sagemaker
    record = record or {}
    outcome = record.get("outcome")
    if outcome == "deployed":
        expected_config = (record.get("endpoint") or {}).get("endpoint_config")
        expected_package = (record.get("model_package") or {}).get("arn")
    else:
        expected_config = (record.get("champion") or {}).get("endpoint_config")
        expected_package = (record.get("champion") or {}).get("package_arn")
    trained = ((record.get("steps") or {}).get("train") or {}).get("outputs", {}).get("model")
    try:
        described = sm.describe_endpoint(EndpointName=endpoint)
    except Exception as exc:  # no such endpoint
        return (False, f"no endpoint: {exc}"), (False, "no endpoint")
    status, config = described["EndpointStatus"], described["EndpointConfigName"]
    ep_problems = []
    if status != "InService":
        ep_problems.append(f"{status} ({described.get('FailureReason', '')[:80]})")
    if expected_config and config != expected_config:
        ep_problems.append(f"serves {config}, the re-run says {expected_config}")
    answer = ""
    test = ((record.get("steps") or {}).get("preprocess") or {}).get("outputs", {}).get("test")
    try:
        rows = sample_rows(clients, test, label, rows=1) if test else "1"
        reply = clients.sagemaker_runtime.invoke_endpoint(
            EndpointName=endpoint, Body=rows, ContentType="text/csv",
            Accept="application/json")
        answer = reply["Body"].read().decode()
        if "predictions" not in json.loads(answer):
            ep_problems.append(f"answered {answer[:60]}")
    except Exception as exc:  # not answering is the finding
        ep_problems.append(f"does not answer: {str(exc)[:100]}")
    endpoint_check = (not ep_problems, "; ".join(ep_problems) if ep_problems else
                      f"InService on {config}, answers")

    reg_problems = []
    variant = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    model = sm.describe_model(ModelName=variant["ModelName"])
    live_package = model["PrimaryContainer"].get("ModelPackageName")
    if expected_package and live_package != expected_package:
        reg_problems.append(f"live {live_package}, the re-run names {expected_package}")
    if live_package:
        package = sm.describe_model_package(ModelPackageName=live_package)
        if package["ModelApprovalStatus"] != "Approved":
            reg_problems.append(f"live package is {package['ModelApprovalStatus']}")
        data = package["InferenceSpecification"]["Containers"][0].get("ModelDataUrl")
        if trained and data != trained:
            reg_problems.append(f"live package holds {data}, the re-run trained {trained}")
    # a run registers its model once, however often the registration is retried (each
    # run registers its own package, by design: a re-run after a kill may add one)
    per_run: dict[tuple[str, str], int] = {}
    for doc in sm.state.list("model-package"):
        if doc.get("ModelPackageGroupName") != group:
            continue
        meta = doc.get("CustomerMetadataProperties") or {}
        key = (meta.get("training_job", "?"), meta.get("flow_run_id", "?"))
        per_run[key] = per_run.get(key, 0) + 1
    reg_problems += [f"{n} packages for {job} in run {run}"
                     for (job, run), n in per_run.items() if n > 1]
    version = live_package.rsplit("/", 1)[-1] if live_package else "?"
    registry_check = (not reg_problems, "; ".join(reg_problems) if reg_problems else
                      f"live v{version} Approved; {len(per_run)} packages, one per run")
    return endpoint_check, registry_check


def _pgrp(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def leftover_processes(sm: Any, root: Path, *, settle: float = 15.0) -> Check:
    """After the re-run: only what keeps the endpoints up (their supervisors, the serving
    process groups of their current deployments, a serverless idle watcher).

    The blue fleet of a blue/green update goes *after* the endpoint is InService again
    (its supervisor stops it once traffic has moved, letting in-flight requests finish, as
    AWS retires the old instances after the switch): a re-run that sees InService at
    once can end while the old server is still shutting down. So a stray has ``settle``
    seconds to go before it counts."""
    deadline = time.monotonic() + settle
    while True:
        ok, said = _leftover_processes(sm, root)
        if ok or time.monotonic() >= deadline:
            return ok, said
        time.sleep(0.5)


def _leftover_processes(sm: Any, root: Path) -> Check:
    allowed_pids: set[int] = set()
    allowed_groups: set[int] = set()
    for doc in sm.state.list("endpoint"):
        supervisor = (doc.get("supervisor") or {}).get("pid")
        if supervisor:
            allowed_pids.add(int(supervisor))
        current = doc.get("current") or {}
        if current.get("pid"):
            allowed_groups.add(int(current["pid"]))
        if current.get("reaper"):
            allowed_pids.add(int(current["reaper"]))
    stray: list[Proc] = [p for p in processes_of(root)
                         if p.pid not in allowed_pids and _pgrp(p.pid) not in allowed_groups]
    return not stray, ("; ".join(str(p) for p in stray[:3]) if stray else
                       f"{len(processes_of(root))} endpoint processes only")


def store_after_push(root: Path, uri: str, before: str | None,
                     pushed_sha: str, verified: dict[str, int]) -> Check:
    """After a killed push: the dataset's latest version is the old one or the new file,
    whole; every blob is whole."""
    bucket, key = uri[5:].split("/", 1)
    db = sqlite3.connect(f"file:{root / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT version_id, sha256 FROM s3_versions WHERE bucket=? AND key=?"
                         " ORDER BY seq DESC LIMIT 1", (bucket, key)).fetchone()
    finally:
        db.close()
    problems = _blobs_whole(root, verified)
    if row is None:
        problems.append("the dataset has no version at all")
        state = "none"
    elif row[0] == before:
        state = "old version"
    elif row[1] == pushed_sha:
        state = "new version"
    else:
        state = "a version that is neither"
        problems.append(f"latest version {row[0]} holds {row[1][:12]}, neither old nor new")
    return not problems, "; ".join(problems) if problems else state


def read_record(clients: Clients, output: str) -> dict[str, Any] | None:
    """The record a `sagepipe run` printed (``Record: s3://...``)."""
    found = re.findall(r"^Record: (s3://\S+)", output, re.MULTILINE)
    if not found:
        return None
    record: dict[str, Any] | None = read_json_if_any(clients, found[-1])
    return record
