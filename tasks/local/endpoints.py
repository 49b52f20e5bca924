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

A serverless endpoint (a config whose variant has ``ServerlessConfig``) keeps no
server while idle: see :mod:`.serverless` for its cold starts, idle stop and
concurrency limit.
"""

from __future__ import annotations

import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

from .autoscaling import deregister_endpoint, registered_variants
from .common import arn, now, to_datetime
from .containers import container_command, job_environment
from .images import resolve_image
from .pyenv import interpreter
from .s3 import LocalS3, parse_s3_uri
from .serverless import Lease, Serverless, idle_seconds
from .servers import alive, ping, start_server, stop_process_group, tail
from .state import StateStore
from .validation import client_error

__all__ = ["EndpointManager", "stop_process_group"]

_DEFAULT_HEALTH_TIMEOUT = 120


class EndpointManager:
    def __init__(self, root: Path, state: StateStore, s3: LocalS3, *, region: str) -> None:
        self.root, self.state, self.s3, self.region = root, state, s3, region
        self.serverless = Serverless(root, state)

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
        live = self.state.get("endpoint-config", doc["EndpointConfigName"]) or {}
        if _serverless(config) and live and not _serverless(live):
            # Serverless Inference, Feature exclusions: "If you try to update your real-time
            # endpoint to serverless, you receive a ValidationError message"
            raise client_error(
                "UpdateEndpoint", "ValidationException",
                f'Cannot update endpoint "{doc["EndpointArn"]}" to the serverless endpoint '
                f'configuration "{config_name}": an instance-based endpoint cannot be '
                "converted to a serverless one.")
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
                stop_process_group(deployment.get("reaper"), grace=1.0)
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
            variant: dict[str, Any] = {
                "VariantName": current["variant"], "CurrentWeight": 1.0, "DesiredWeight": 1.0,
                "DeployedImages": [{"SpecifiedImage": current["image"],
                                    "ResolvedImage": current["image"]}]}
            if current.get("serverless"):  # no instances: the serverless config instead
                variant.update(CurrentServerlessConfig=current["serverless"],
                               DesiredServerlessConfig=current["serverless"])
            else:  # one server process serves the variant; the count is what SageMaker runs
                count = int(current.get("instances", 1))
                variant.update(CurrentInstanceCount=count, DesiredInstanceCount=count)
            out["ProductionVariants"] = [variant]
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
        """(port, variant) that takes traffic now; blue keeps it while green warms up (a
        serverless endpoint is started if idle)."""
        lease = self.acquire(name, operation)
        self.release(lease)
        return lease.port, lease.variant

    def acquire(self, name: str, operation: str) -> Lease:
        """Where one invocation goes; :meth:`release` it when answered. A serverless
        endpoint counts it, and starts its server first if it has none (a cold start)."""
        for _ in range(3):  # a deployment replaced meanwhile: look again
            current = self._serving(name, operation)
            if not current.get("serverless"):
                return Lease(name, current["id"], int(current["port"]),
                             str(current["variant"]), None)
            lease = self.serverless.acquire(name, current["id"], operation)
            if lease is not None:
                return lease
        raise client_error(operation, "ServiceUnavailable",
                           f"Endpoint {name} is changing its deployment; try again.",
                           status=503)

    def release(self, lease: Lease) -> None:
        self.serverless.release(lease)

    def _serving(self, name: str, operation: str) -> dict[str, Any]:
        doc = self.describe_doc(name, operation)
        current = doc.get("current")
        if doc["status"] not in ("InService", "Updating") or not current:
            raise client_error(operation, "ValidationError",
                               f"Endpoint {name} of account 000000000000 is not in service "
                               f"(status {doc['status']}).")
        return dict(current)

    # -- the state machine
    def describe_doc(self, name: str, operation: str) -> dict[str, Any]:
        doc = self.state.get("endpoint", name)
        if doc is None:
            raise self._not_found(name, operation)
        pending, current = doc.get("pending"), doc.get("current")
        if pending:
            healthy = alive(pending["pid"]) and ping(pending["port"])
            if healthy:
                return self._promote(name, pending["id"])
            died = not alive(pending["pid"])
            too_slow = now() - pending["started"] > pending["health_timeout"]
            if died or too_slow:
                return self._abandon(name, pending["id"], died=died)
        elif current and current.get("serverless"):
            self.serverless.forget_dead(name, current)  # next request: a cold start
        elif current and doc["status"] == "InService" and not alive(current["pid"]):
            reason = (f"The serving process for variant {current['variant']} (pid "
                      f"{current['pid']}) exited. Log: {tail(Path(current['dir']))}")
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
            stop_process_group(old.get("reaper"), grace=1.0)
            stop_process_group(old["pid"])
            shutil.rmtree(old["dir"], ignore_errors=True)
        current = (doc or {}).get("current") or {}
        if current.get("serverless") and current.get("id") == deployment_id:
            self.serverless.warmed(name, deployment_id)  # idle from now: scale to zero later
        return self.state.get("endpoint", name) or doc or {}

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
                      f"{why}. Log: {tail(Path(pending['dir']))}")[:1024]
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
        command = container_command(folder, base, mode="serve",
                                    python=interpreter(folder, self.root), root=self.root)
        env = job_environment(base, dict(container.get("Environment", {})))
        pid, port = start_server(command, env, workdir)
        deployment = {
            "id": deployment_id, "config": config_name, "pid": pid, "port": port,
            "dir": str(workdir), "started": now(), "variant": variant["VariantName"],
            "image": container["Image"],
            "health_timeout": variant.get("ContainerStartupHealthCheckTimeoutInSeconds",
                                          _DEFAULT_HEALTH_TIMEOUT)}
        if variant.get("ServerlessConfig"):  # what a cold start runs again
            deployment.update(serverless=variant["ServerlessConfig"], command=command, env=env,
                              idle_seconds=idle_seconds(), inflight={}, cold_starts=0,
                              ready=False, reaper=None)
        else:  # one server process serves the variant; the count is what SageMaker would run
            deployment["instances"] = retain.get(variant["VariantName"],
                                                 variant.get("InitialInstanceCount", 1))
        return deployment

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


def _serverless(config: dict[str, Any]) -> bool:
    return any("ServerlessConfig" in v for v in config.get("ProductionVariants", []))
