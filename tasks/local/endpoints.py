"""Local endpoints: a serving container as an HTTP server process on 127.0.0.1.

An endpoint runs one *deployment* (a server process for one endpoint config).
``update_endpoint`` is blue/green, as on SageMaker: the green server starts
beside the blue one and must answer ``GET /ping`` before traffic moves; then the
blue one is stopped. If green dies or never becomes healthy, it is removed and
the endpoint stays ``InService`` on the old config with ``FailureReason`` set,
which is what DescribeEndpoint reports after a failed SageMaker update.

The requests only record what is wanted; the endpoint's *supervisor*, a detached
process (:mod:`.supervisor`), carries it out and keeps it up, so creation and updates
go on when the caller is killed, and a server that exits is replaced. Whoever looks
(describe, invoke) makes sure a supervisor is there when one is needed, and reports
what is true: an endpoint whose server exited is ``SystemUpdating`` until the new one
answers, never ``InService`` with nothing listening. After a machine restart nothing
is started by a look: the endpoint is ``OutOfService`` until :meth:`EndpointManager.start`
(``sagepipe up``) brings it back on the config it served.

A serverless endpoint (a config whose variant has ``ServerlessConfig``) keeps no
server while idle: see :mod:`.serverless` for its cold starts, idle stop and
concurrency limit.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from .autoscaling import deregister_endpoint, registered_variants
from .common import arn, now, to_datetime
from .images import resolve_image
from .processes import alive_as, kill_group, sweep, this_boot
from .s3 import LocalS3
from .serverless import Lease, Serverless, idle_seconds
from .servers import stop_process_group
from .state import StateStore
from .supervisor import needs_supervisor, spawn_supervisor, supervisor_alive
from .validation import client_error

__all__ = ["EndpointManager", "stop_process_group"]

_DEFAULT_HEALTH_TIMEOUT = 120
# InvokeEndpoint: "A customer's model containers must respond to requests within 60 seconds";
# an invocation waits at most this long for a server being replaced to answer /ping
_INVOCATION_SECONDS = 60.0
_DELETE_WAIT = 2.0  # for the supervisor to see Deleting and exit before it is killed


class EndpointManager:
    def __init__(self, root: Path, state: StateStore, s3: LocalS3, *, region: str) -> None:
        self.root, self.state, self.s3, self.region = root, state, s3, region
        self.serverless = Serverless(root, state)

    # -- requests: record what is wanted; the supervisor carries it out
    def create(self, params: dict[str, Any]) -> str:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        config = self._config(config_name, "CreateEndpoint")
        endpoint_arn = arn(self.region, "sagemaker", f"endpoint/{name.lower()}")
        created = now()
        doc = {"EndpointName": name, "EndpointArn": endpoint_arn,
               "EndpointConfigName": config_name, "status": "Creating", "reason": None,
               "created": created, "modified": created, "tags": params.get("Tags", []),
               "current": None, "pending": None, "DeploymentConfig": None,
               "supervisor": None}
        try:
            doc["pending"] = self._deployment(name, config_name, config, {})
        except (LookupError, ValueError) as exc:
            doc.update(status="Failed", reason=f"Failed to start the model container: {exc}")
        if not self.state.create("endpoint", name, doc):
            raise client_error("CreateEndpoint", "ValidationException",
                               f'Cannot create already existing endpoint "{endpoint_arn}".')
        self._ensure_supervisor(name)
        return endpoint_arn

    def update(self, params: dict[str, Any]) -> str:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        doc = self.describe_doc(name, "UpdateEndpoint")
        config = self._config(config_name, "UpdateEndpoint")
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

        def change(d: dict[str, Any]) -> None:
            if d["status"] != "InService":  # checked where it is changed: one update at once
                raise client_error("UpdateEndpoint", "ValidationException",
                                   f'Cannot update in-progress endpoint "{d["EndpointArn"]}".')
            current = d.get("current") or {}
            # RetainAllVariantProperties: a variant of the same name keeps its instance count
            # (the one autoscaling set) instead of the new config's InitialInstanceCount
            retain = ({current["variant"]: int(current.get("instances", 1))}
                      if params.get("RetainAllVariantProperties") and current else {})
            d.update(modified=now(), DeploymentConfig=params.get("DeploymentConfig"))
            try:
                d.update(status="Updating",
                         pending=self._deployment(name, config_name, config, retain))
            except (LookupError, ValueError) as exc:  # as SageMaker: the update fails
                d.update(reason=f"Failed to start the model container: {exc}")
        self.state.update("endpoint", name, change)
        self._ensure_supervisor(name)
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
        doc = self.state.update("endpoint", name, lambda d: d.update(status="Deleting",
                                                                     modified=now()))
        if doc is None:
            raise self._not_found(name, "DeleteEndpoint")
        supervisor = doc.get("supervisor") or {}
        deadline = time.monotonic() + _DELETE_WAIT
        while supervisor_alive(doc) and time.monotonic() < deadline:
            time.sleep(0.05)  # it sees Deleting between two steps and exits
        if supervisor_alive(doc):
            stop_process_group(supervisor.get("pid"), grace=1.0)
        doc = self.state.get("endpoint", name) or doc
        for deployment in (doc.get("pending"), doc.get("current")):
            if deployment:
                stop_process_group(deployment.get("reaper"), grace=1.0)
                if deployment.get("pid") and alive_as(deployment["pid"],
                                                      deployment.get("ident")):
                    stop_process_group(deployment["pid"])
                kill_group(deployment.get("pid"))  # workers of a server that died before
        # a server started by a supervisor killed before it could record it
        sweep([self.root / "endpoints" / name])
        shutil.rmtree(self.root / "endpoints" / name, ignore_errors=True)
        deregister_endpoint(self.state, name)
        self.state.delete("endpoint", name)

    def start(self, name: str) -> str:
        """Local extra (``sagepipe up``): bring back an endpoint whose servers are not
        running (the machine restarted, or it Failed after its server kept exiting) on the
        config it served; returns the status it is in now. Nothing else is changed."""
        doc = self.describe_doc(name, "DescribeEndpoint")

        def change(d: dict[str, Any]) -> None:
            current, pending = d.get("current"), d.get("pending")
            down = d["status"] == "OutOfService" or (
                d["status"] == "Failed" and current and not current.get("serverless"))
            if not down:
                return
            for deployment in (current, pending):
                if deployment and not deployment.get("serverless"):
                    deployment.update(pid=None, port=None, ident=None, ready=False,
                                      restarts=[])
                elif deployment:  # serverless: the next request cold-starts it
                    deployment.update(pid=None, port=None, ready=False, reaper=None)
            status = ("Updating" if current and pending else "Creating" if pending
                      else "SystemUpdating" if current and not current.get("serverless")
                      else "InService")
            d.update(status=status, reason=None, modified=now())
        doc = self.state.update("endpoint", name, change) or doc
        self._ensure_supervisor(name)
        return str(doc["status"])

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
        endpoint counts it, and starts its server first if it has none (a cold start); a
        server being replaced is waited for (up to the invocation's 60 s)."""
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
        deadline = time.monotonic() + _INVOCATION_SECONDS
        while True:
            doc = self.describe_doc(name, operation)
            current = doc.get("current")
            if doc["status"] not in ("InService", "Updating", "SystemUpdating") or not current:
                hint = (" Start it again with `sagepipe up`." if doc["status"] in (
                    "OutOfService", "Failed") and current else "")
                raise client_error(operation, "ValidationError",
                                   f"Endpoint {name} of account 000000000000 is not in service "
                                   f"(status {doc['status']}).{hint}")
            if current.get("serverless") or (current.get("pid") and current.get("ready", True)):
                return dict(current)
            if time.monotonic() > deadline:  # its server is being replaced
                raise client_error(operation, "ServiceUnavailable",
                                   f"Endpoint {name}'s server is being replaced and has not "
                                   f"answered /ping within {_INVOCATION_SECONDS:.0f} s; try "
                                   "again.", status=503)
            time.sleep(0.1)

    # -- what is true now
    def describe_doc(self, name: str, operation: str) -> dict[str, Any]:
        """The endpoint as stored, after making it tell the truth: a server that exited is
        being replaced (SystemUpdating), a missing supervisor is started again, and after a
        machine restart the endpoint is OutOfService until ``start``."""
        doc = self.state.get("endpoint", name)
        if doc is None:
            raise self._not_found(name, operation)
        current = doc.get("current") or {}
        if current.get("serverless"):
            self.serverless.forget_dead(name, current)  # next request: a cold start
        if doc["status"] == "Deleting" or not needs_supervisor(doc):
            return doc
        if _started_before_this_boot(doc):
            return self._out_of_service(name) or doc
        changed = False
        if not supervisor_alive(doc):
            self._ensure_supervisor(name)
            changed = True
        if doc["status"] == "InService" and not current.get("serverless") and not alive_as(
                current.get("pid"), current.get("ident")):
            self.state.update("endpoint", name, _replacing(current["id"]))
            changed = True
        return (self.state.get("endpoint", name) or doc) if changed else doc

    def _ensure_supervisor(self, name: str) -> None:
        """Start the endpoint's supervisor if it needs one and has none (a check and a spawn
        in one transaction: two callers never start two)."""
        def change(doc: dict[str, Any]) -> None:
            if doc["status"] == "Deleting" or not needs_supervisor(doc) \
                    or supervisor_alive(doc) or _started_before_this_boot(doc):
                return
            doc["supervisor"] = {"pid": spawn_supervisor(self.root, name), "ident": None,
                                 "boot": this_boot(), "spawned": now()}
        self.state.update("endpoint", name, change)

    def _out_of_service(self, name: str) -> dict[str, Any] | None:
        def change(doc: dict[str, Any]) -> None:
            if doc["status"] in ("Deleting", "OutOfService", "Failed") \
                    or not _started_before_this_boot(doc):
                return
            was = doc["status"]
            doc.update(status="OutOfService", modified=now(), reason=(
                f"The machine restarted since this endpoint's processes were started "
                f"(it was {was}); nothing serves it. Start it again with `sagepipe up`."))
            doc["supervisor"] = None
        return self.state.update("endpoint", name, change)

    def _deployment(self, name: str, config_name: str, config: dict[str, Any],
                    retain: dict[str, int]) -> dict[str, Any]:
        """What the supervisor launches: the deployment of ``config`` (checked here, so an
        impossible one fails the request's endpoint at once)."""
        variants = config["ProductionVariants"]
        if len(variants) != 1:
            raise ValueError("the local runtime serves endpoint configs with exactly one "
                             f"production variant; {config_name} has {len(variants)}")
        variant = variants[0]
        model = self.state.get("model", variant["ModelName"])
        if model is None:
            raise LookupError(f"model {variant['ModelName']} no longer exists")
        container = model["PrimaryContainer"]
        resolve_image(self.state, container["Image"])
        deployment_id = uuid.uuid4().hex[:12]
        deployment: dict[str, Any] = {
            "id": deployment_id, "config": config_name, "pid": None, "port": None,
            "ident": None, "dir": str(self.root / "endpoints" / name / deployment_id),
            "started": now(), "variant": variant["VariantName"], "image": container["Image"],
            "health_timeout": variant.get("ContainerStartupHealthCheckTimeoutInSeconds",
                                          _DEFAULT_HEALTH_TIMEOUT), "restarts": []}
        if variant.get("ServerlessConfig"):  # what a cold start runs again
            deployment.update(serverless=variant["ServerlessConfig"],
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


def _started_before_this_boot(doc: dict[str, Any]) -> bool:
    """Whether the endpoint's processes were started in an earlier boot of the machine."""
    boot = this_boot()
    if boot is None:
        return False
    parts = [doc.get("supervisor"), doc.get("current"), doc.get("pending")]
    boots = {p.get("boot") for p in parts if isinstance(p, dict) and p.get("pid")}
    return bool(boots) and boot not in boots


def _replacing(deployment_id: str) -> Any:
    """The change that says the current server is gone: SystemUpdating until the supervisor
    has a new one answering."""
    def change(doc: dict[str, Any]) -> None:
        current = doc.get("current") or {}
        if current.get("id") != deployment_id or doc["status"] != "InService" or alive_as(
                current.get("pid"), current.get("ident")):
            return
        current["ready"] = False
        doc.update(status="SystemUpdating", modified=now(), reason=(
            f"Replacing the serving process of variant {current['variant']}"
            + (f" (pid {current['pid']} exited)" if current.get("pid") else "")))
    return change


def _serverless(config: dict[str, Any]) -> bool:
    return any("ServerlessConfig" in v for v in config.get("ProductionVariants", []))
