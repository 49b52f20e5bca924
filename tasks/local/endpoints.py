"""Local endpoints: a serving container as an HTTP server process on 127.0.0.1.

An endpoint runs one *deployment* (a server process for one endpoint config).
``update_endpoint`` is blue/green, as on SageMaker: the green server starts
beside the blue one and must answer ``GET /ping`` before traffic moves; then the
blue one is stopped. If green dies or never becomes healthy, it is removed and
the endpoint stays ``InService`` on the old config with ``FailureReason`` set,
which is what DescribeEndpoint reports after a failed SageMaker update.

Transitions happen when somebody looks (``describe``/``invoke``), so no
background thread has to outlive the process that created the endpoint: any
process of the project can drive them through the shared state.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from .autoscaling import deregister_endpoint, registered_variants
from .common import arn, now, pid_alive, to_datetime
from .containers import container_command, job_environment
from .images import resolve_image
from .pyenv import interpreter
from .s3 import LocalS3, parse_s3_uri
from .state import StateStore
from .validation import client_error

__all__ = ["EndpointManager", "stop_process_group"]

_DEFAULT_HEALTH_TIMEOUT = 120
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def stop_process_group(pid: int | None, *, grace: float = 5.0) -> None:
    """SIGTERM a server's process group, SIGKILL it after ``grace`` seconds."""
    if not pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            child = _CHILDREN.get(pid)
            if child is not None and child.poll() is not None:
                _CHILDREN.pop(pid, None)
                return
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int | None) -> bool:
    child = _CHILDREN.get(pid or 0)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(child.pid, None)
        return False
    return pid_alive(pid)


def ping(port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class EndpointManager:
    def __init__(self, root: Path, state: StateStore, s3: LocalS3, *, region: str) -> None:
        self.root, self.state, self.s3, self.region = root, state, s3, region

    # -- requests
    def create(self, params: dict[str, Any]) -> str:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        self._config(config_name, "CreateEndpoint")
        endpoint_arn = arn(self.region, "sagemaker", f"endpoint/{name.lower()}")
        created = now()
        doc = {"EndpointName": name, "EndpointArn": endpoint_arn,
               "EndpointConfigName": config_name, "status": "Creating", "reason": None,
               "created": created, "modified": created, "tags": params.get("Tags", []),
               "current": None, "pending": None, "DeploymentConfig": None}
        if not self.state.create("endpoint", name, doc):
            raise client_error("CreateEndpoint", "ValidationException",
                               f'Cannot create already existing endpoint "{endpoint_arn}".')
        self._start_pending(name, config_name)
        return endpoint_arn

    def update(self, params: dict[str, Any]) -> str:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        doc = self.describe_doc(name, "UpdateEndpoint")
        config = self._config(config_name, "UpdateEndpoint")
        if doc["status"] != "InService":
            raise client_error("UpdateEndpoint", "ValidationException",
                               f'Cannot update in-progress endpoint "{doc["EndpointArn"]}".')
        self._scaled_variants_kept(doc, config)
        current = doc.get("current") or {}
        # RetainAllVariantProperties: a variant of the same name keeps its instance count
        # (the one autoscaling set) instead of the new config's InitialInstanceCount
        retain = ({current["variant"]: int(current.get("instances", 1))}
                  if params.get("RetainAllVariantProperties") and current else {})
        self.state.update("endpoint", name, lambda d: d.update(
            status="Updating", modified=now(), DeploymentConfig=params.get("DeploymentConfig"),
            pending_config=config_name))
        self._start_pending(name, config_name, retain)
        return str(doc["EndpointArn"])

    def _scaled_variants_kept(self, doc: dict[str, Any], config: dict[str, Any]) -> None:
        """SageMaker refuses an update that changes the instance type of, or removes, a
        variant that is a scalable target ("Update endpoints that use auto scaling")."""
        scaled = registered_variants(self.state, doc["EndpointName"])
        if not scaled:
            return
        live = self.state.get("endpoint-config", doc["EndpointConfigName"]) or {}
        before = {v["VariantName"]: v.get("InstanceType")
                  for v in live.get("ProductionVariants", [])}
        after = {v["VariantName"]: v.get("InstanceType") for v in config["ProductionVariants"]}
        for variant in sorted(scaled):
            if variant not in after or after[variant] != before.get(variant):
                change = (f"changes its instance type to {after[variant]}" if variant in after
                          else "removes it")
                raise client_error(
                    "UpdateEndpoint", "ValidationException",
                    f"Variant {variant} of endpoint {doc['EndpointName']} is a target for auto "
                    f"scaling and this update {change}: deregister it as a scalable target "
                    "first (DeregisterScalableTarget), then update the endpoint.")

    def delete(self, name: str) -> None:
        doc = self.state.get("endpoint", name)
        if doc is None:
            raise self._not_found(name, "DeleteEndpoint")
        for deployment in (doc.get("pending"), doc.get("current")):
            if deployment:
                stop_process_group(deployment["pid"])
                shutil.rmtree(deployment["dir"], ignore_errors=True)
        deregister_endpoint(self.state, name)
        self.state.delete("endpoint", name)

    def describe(self, name: str) -> dict[str, Any]:
        doc = self.describe_doc(name, "DescribeEndpoint")
        current = doc.get("current") or {}
        out: dict[str, Any] = {
            "EndpointName": doc["EndpointName"], "EndpointArn": doc["EndpointArn"],
            "EndpointConfigName": doc["EndpointConfigName"],
            "EndpointStatus": doc["status"],
            "CreationTime": to_datetime(doc["created"]),
            "LastModifiedTime": to_datetime(doc["modified"]),
        }
        if current:
            # one server process serves the variant; the count is what SageMaker would run
            count = int(current.get("instances", 1))
            out["ProductionVariants"] = [{
                "VariantName": current["variant"], "CurrentWeight": 1.0, "DesiredWeight": 1.0,
                "CurrentInstanceCount": count, "DesiredInstanceCount": count,
                "DeployedImages": [{"SpecifiedImage": current["image"],
                                    "ResolvedImage": current["image"]}]}]
        if doc.get("reason"):
            out["FailureReason"] = doc["reason"]
        if doc.get("DeploymentConfig"):
            out["LastDeploymentConfig"] = doc["DeploymentConfig"]
        if doc["status"] == "Updating" and doc.get("pending"):
            out["PendingDeploymentSummary"] = {
                "EndpointConfigName": doc["pending"]["config"],
                "StartTime": to_datetime(doc["pending"]["started"])}
        return out

    def target(self, name: str, operation: str) -> tuple[int, str]:
        """(port, variant) that takes traffic now; blue keeps it while green warms up."""
        doc = self.describe_doc(name, operation)
        current = doc.get("current")
        if doc["status"] not in ("InService", "Updating") or not current:
            raise client_error(operation, "ValidationError",
                               f"Endpoint {name} of account 000000000000 is not in service "
                               f"(status {doc['status']}).")
        return int(current["port"]), str(current["variant"])

    # -- the state machine
    def describe_doc(self, name: str, operation: str) -> dict[str, Any]:
        doc = self.state.get("endpoint", name)
        if doc is None:
            raise self._not_found(name, operation)
        pending, current = doc.get("pending"), doc.get("current")
        if pending:
            healthy = _alive(pending["pid"]) and ping(pending["port"])
            if healthy:
                return self._promote(name, pending["id"])
            died = not _alive(pending["pid"])
            too_slow = now() - pending["started"] > pending["health_timeout"]
            if died or too_slow:
                return self._abandon(name, pending["id"], died=died)
        elif current and doc["status"] == "InService" and not _alive(current["pid"]):
            reason = (f"The serving process for variant {current['variant']} (pid "
                      f"{current['pid']}) exited. Log: {_tail(Path(current['dir']))}")
            return self.state.update("endpoint", name, lambda d: d.update(
                status="Failed", reason=reason, modified=now())) or doc
        return doc

    def _promote(self, name: str, deployment_id: str) -> dict[str, Any]:
        old: dict[str, Any] | None = None

        def change(doc: dict[str, Any]) -> None:
            nonlocal old
            if not doc.get("pending") or doc["pending"]["id"] != deployment_id:
                return
            old = doc.get("current")
            doc.update(current=doc["pending"], pending=None, status="InService", reason=None,
                       EndpointConfigName=doc["pending"]["config"], modified=now())
        doc = self.state.update("endpoint", name, change)
        if old:  # traffic has moved: now the blue fleet goes
            stop_process_group(old["pid"])
            shutil.rmtree(old["dir"], ignore_errors=True)
        return doc or {}

    def _abandon(self, name: str, deployment_id: str, *, died: bool) -> dict[str, Any]:
        pending: dict[str, Any] | None = None

        def change(doc: dict[str, Any]) -> None:
            nonlocal pending
            if not doc.get("pending") or doc["pending"]["id"] != deployment_id:
                return
            pending = doc["pending"]
            why = ("exited before it answered /ping" if died else
                   f"did not pass the /ping health check within "
                   f"{pending['health_timeout']} seconds")
            reason = (f"The primary container for production variant {pending['variant']} "
                      f"{why}. Log: {_tail(Path(pending['dir']))}")[:1024]
            updating = doc["current"] is not None
            # a failed update rolls back: InService on the old config, FailureReason set
            doc.update(pending=None, status="InService" if updating else "Failed",
                       reason=reason, modified=now())
        doc = self.state.update("endpoint", name, change)
        if pending:
            stop_process_group(pending["pid"])
        return doc or {}

    def _start_pending(self, name: str, config_name: str,
                       retain: dict[str, int] | None = None) -> None:
        try:
            deployment = self._launch(name, config_name, retain or {})
        except (LookupError, OSError, tarfile.TarError, ValueError) as exc:
            reason = f"Failed to start the model container: {exc}"
            self.state.update("endpoint", name, lambda d: d.update(
                status="InService" if d.get("current") else "Failed", reason=reason,
                modified=now()))
            return
        self.state.update("endpoint", name, lambda d: d.update(pending=deployment))

    def _launch(self, name: str, config_name: str, retain: dict[str, int]) -> dict[str, Any]:
        config = self._config(config_name, "CreateEndpoint")
        variants = config["ProductionVariants"]
        if len(variants) != 1:
            raise ValueError("the local runtime serves endpoint configs with exactly one "
                             f"production variant; {config_name} has {len(variants)}")
        variant = variants[0]
        model = self.state.get("model", variant["ModelName"])
        if model is None:
            raise LookupError(f"model {variant['ModelName']} no longer exists")
        container = model["PrimaryContainer"]
        folder = resolve_image(self.state, container["Image"])
        deployment_id = uuid.uuid4().hex[:12]
        workdir = self.root / "endpoints" / name / deployment_id
        base = workdir / "opt" / "ml"
        model_dir = base / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        if container.get("ModelDataUrl"):
            bucket, key = parse_s3_uri(container["ModelDataUrl"])
            with tarfile.open(self.s3.path_of(bucket, key), "r:gz") as archive:
                archive.extractall(model_dir, filter="data")
        port = _free_port()
        command = container_command(folder, base, mode="serve",
                                    python=interpreter(folder, self.root), root=self.root)
        env = job_environment(base, {**container.get("Environment", {}),
                                     "SAGEMAKER_BIND_TO_PORT": str(port),
                                     "SAGEMAKER_BIND_HOST": "127.0.0.1"})
        with open(workdir / "server.log", "ab") as log:
            proc = subprocess.Popen(command, cwd=str(workdir), env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _CHILDREN[proc.pid] = proc
        return {"id": deployment_id, "config": config_name, "pid": proc.pid, "port": port,
                "dir": str(workdir), "started": now(), "variant": variant["VariantName"],
                "image": container["Image"],
                "instances": retain.get(variant["VariantName"],
                                        variant.get("InitialInstanceCount", 1)),
                "health_timeout": variant.get("ContainerStartupHealthCheckTimeoutInSeconds",
                                              _DEFAULT_HEALTH_TIMEOUT)}

    def _config(self, config_name: str, operation: str) -> dict[str, Any]:
        config = self.state.get("endpoint-config", config_name)
        if config is None:
            raise client_error(operation, "ValidationException",
                               "Could not find endpoint configuration \""
                               + arn(self.region, "sagemaker",
                                     f"endpoint-config/{config_name.lower()}") + "\".")
        return config

    def _not_found(self, name: str, operation: str) -> Exception:
        return client_error(operation, "ValidationException", 'Could not find endpoint "'
                            + arn(self.region, "sagemaker", f"endpoint/{name.lower()}") + '".')


def _tail(workdir: Path, lines: int = 5) -> str:
    try:
        text = (workdir / "server.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty)"
