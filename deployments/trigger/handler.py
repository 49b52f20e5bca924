"""CodePipeline -> Prefect: the thin Orchestrate stage of the pipeline.

Ships alone in a zip (``make lambda``): standard library and boto3 only, nothing
of the project. Handler string: ``handler.handler``.

A CodePipeline job for this action runs in rounds:

1. No continuation token: look up the deployment named in UserParameters, create
   a flow run with the CodePipeline job id as idempotency key (a retried
   invocation of the same job gets the same run), and answer PutJobSuccessResult
   with a continuation token that carries the flow run id.
2. CodePipeline sends the token back in a new job: read the flow run. Still
   going -> continuation again; Completed -> success with output variables;
   Failed, Crashed or Cancelled -> PutJobFailureResult with the flow's message
   and a link to the run.

Whatever goes wrong (a malformed event, a missing secret, Prefect down or slow)
ends in PutJobFailureResult with a message that says what to fix, never in an
unhandled exception or a hang: every HTTP request has a timeout, and none starts
after the invocation's deadline (the Lambda's remaining time less what
reporting needs). Dropped connections and 429/502/503/504 answers are asked
again (creating the run is idempotent: same key, same run). The event is
never logged: it carries the artifact bucket's temporary credentials.

Environment:
    PREFECT_API_SECRET_ARN  Secrets Manager secret whose SecretString is JSON
                            {"api_url": "...", "api_key": "..."}; api_key may be
                            empty (a self-hosted server without auth); an optional
                            "ui_url" overrides the UI link derived from api_url.
    HTTP_TIMEOUT_SECONDS    per Prefect API request (default 10)

UserParameters (JSON):
    {"deployment": "ml-pipeline/production", "parameters": {...},
     "image": "#{Build.FLOW_IMAGE}", "code_hash": "#{Build.FLOW_CODE_HASH}"}
``parameters`` are flow parameters merged key by key over the deployment's own
(so ``{"config": {"gate": {"margin": 0.01}}}`` changes one setting). The flow's
``commit`` is the first input artifact's ``revision``. ``image`` (optional) is the
flow image the Build stage built for that commit: the run is created with it as its
``image`` job variable (Prefect takes job variables per run; the deployment's own
image stays the fallback for runs started by hand), and the flow's ``trigger``
parameter carries it and ``code_hash``, which the flow checks against the image it
runs in (sagepipe.flows.provenance).

AWS calls: secretsmanager:GetSecretValue, codepipeline:PutJobSuccessResult,
codepipeline:PutJobFailureResult.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("sagepipe.trigger")
log.setLevel(logging.INFO)

RUNNING = "running"
OUTCOME_ARTIFACT_SUFFIX = "-outcome"  # the flow's outcome table artifact: "<project>-outcome"
FAILED_STATES = frozenset({"FAILED", "CRASHED", "CANCELLED"})
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# CodePipeline's limits (botocore's model has them; its validator checks only some)
MAX_SUMMARY, MAX_MESSAGE, MAX_VARIABLE = 2048, 5000, 1000
DEFAULT_TIMEOUT = 10.0
# Every AWS call is bounded: 2 attempts of at most 2 s to connect and 5 s to read.
AWS_CALL_SECONDS = 14.0
REPORT_SECONDS = AWS_CALL_SECONDS + 1  # kept back from the Lambda's time to report the result
# CodePipeline fails a Lambda invoke action after 24 hours (CodePipeline quotas, "Length of
# time before an action times out"): the stage is failed cleanly, and the run cancelled, first.
ACTION_LIMIT_SECONDS = 24 * 3600
GIVE_UP_SECONDS = ACTION_LIMIT_SECONDS - 30 * 60
# a manual approval must leave the jobs time within that limit
MAX_APPROVAL_SECONDS = 20 * 3600
MAX_LOST_ROUNDS = 5  # consecutive continuation rounds without an answer from Prefect
# an image reference (registry/repository[:tag][@sha256:...]) and a code hash, as the Build
# stage exports them; anything else (an unresolved "#{Build.FLOW_IMAGE}") is refused
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9.:_/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                       r"(@sha256:[0-9a-f]{64})?$")
CODE_HASH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ATTEMPTS = 3
RETRY_BASE_SECONDS = 0.5  # first retry after 0.5-1 s, the second after 1-2 s
RETRY_STATUSES = frozenset({429, 502, 503, 504})

_AWS: dict[str, Any] = {}
_SECRETS: dict[str, PrefectSettings] = {}  # per container: one GetSecretValue per ARN


class TriggerError(Exception):
    """Ends the job in PutJobFailureResult with ``failure_type`` and this message."""

    def __init__(self, message: str, failure_type: str = "JobFailed",
                 external_id: str | None = None) -> None:
        super().__init__(message)
        self.failure_type = failure_type
        self.external_id = external_id


class NotFound(TriggerError):
    pass


@dataclass(frozen=True)
class PrefectSettings:
    api_url: str
    api_key: str
    ui_url: str


@dataclass(frozen=True)
class Budget:
    """Time for one invocation: each request gets ``timeout``; none starts after ``deadline``."""

    timeout: float
    deadline: float  # on time.monotonic()'s clock

    @classmethod
    def for_context(cls, context: Any) -> Budget:
        try:
            timeout = float(os.environ.get("HTTP_TIMEOUT_SECONDS") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        # no Lambda context (a local call): room for the secret and six requests
        span = remaining() / 1000.0 - REPORT_SECONDS if callable(remaining) else \
            AWS_CALL_SECONDS + 6 * timeout
        return cls(max(timeout, 0.5), time.monotonic() + max(span, 1.0))

    def request_timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left < 0.5:
            raise TriggerError("Ran out of time waiting for the Prefect API; give the function "
                               "a longer timeout (60 s or more)", "SystemUnavailable")
        return min(self.timeout, left)

    def allows(self, delay: float) -> bool:
        return time.monotonic() + delay + 0.5 < self.deadline


@dataclass(frozen=True)
class Result:
    """What to tell CodePipeline: a continuation, a success or a failure."""

    kind: str  # "continue" | "success" | "failure"
    message: str
    external_id: str | None = None
    token: str | None = None
    failure_type: str = "JobFailed"
    outputs: dict[str, str] = field(default_factory=dict)


def aws(service: str) -> Any:
    """One boto3 client per service and container, with timeouts and standard retries."""
    if service not in _AWS:
        config = Config(connect_timeout=2, read_timeout=5,
                        retries={"mode": "standard", "total_max_attempts": 2})
        _AWS[service] = boto3.client(service, config=config)  # type: ignore[call-overload]
    return _AWS[service]


def handler(event: Any, context: Any) -> dict[str, str]:
    """Lambda entry point: do one round of the job and report it to CodePipeline."""
    job = event.get("CodePipeline.job") if isinstance(event, dict) else None
    job_id = job.get("id") if isinstance(job, dict) else None
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        # without a job id there is nobody to report to; say so and return
        log.error("Not a CodePipeline job event (no valid CodePipeline.job.id); ignored")
        return {"status": "ignored", "reason": "not a CodePipeline job event"}
    assert isinstance(job, dict)
    budget = Budget.for_context(context)
    try:
        result = run_job(job_id, job, budget)
    except TriggerError as exc:
        result = Result("failure", str(exc), exc.external_id, failure_type=exc.failure_type)
    except Exception as exc:  # a bug must fail the stage, not leave it waiting for an hour
        log.exception("Unexpected error in job %s", job_id)
        result = Result("failure", f"The trigger failed unexpectedly: {type(exc).__name__}: "
                                   f"{exc}")
    return report(job_id, result, deadline=budget.deadline + REPORT_SECONDS)


def run_job(job_id: str, job: dict[str, Any], budget: Budget) -> Result:
    data = job.get("data")
    if not isinstance(data, dict):
        raise TriggerError("The CodePipeline job has no 'data'; is this function the "
                           "action's FunctionName?", "ConfigurationError")
    token = data.get("continuationToken")
    if token:
        return follow(parse_token(token), budget)
    asked = parse_user_parameters(data)
    api = PrefectAPI(prefect_settings(budget), budget)
    deployment = api.deployment(asked.deployment)
    parameters = merge(deployment.get("parameters") or {}, asked.parameters)
    check_approval_timeout(parameters)
    commit = commit_of(data)
    if commit:
        parameters["commit"] = commit
    else:
        log.warning("No input artifact carries a revision: the run has no commit")
    job_variables = {"image": asked.image} if asked.image else {}
    if (asked.image or asked.code_hash) and "trigger" not in parameters and \
            "trigger" in _parameter_names(deployment):
        # what started the run, for its record and its check of the image it runs in
        parameters["trigger"] = {"kind": "push", "commit": commit,
                                 **({"image": asked.image} if asked.image else {}),
                                 **({"code_hash": asked.code_hash} if asked.code_hash else {})}
    run = api.create_flow_run(deployment["id"], parameters, idempotency_key=job_id,
                              job_variables=job_variables)
    log.info("Job %s: flow run %s (%s) of %s%s", job_id, run["id"], run.get("name"),
             asked.deployment, f" in {asked.image}" if asked.image else "")
    # the run's own creation time: a retried invocation (same job, same run) sends the same token
    return check_run(api, run, Token(str(run["id"]), started=created_at(run)))


def created_at(run: dict[str, Any]) -> float:
    """When Prefect created the run (epoch seconds); now if it does not say."""
    try:
        return datetime.fromisoformat(str(run["created"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


@dataclass(frozen=True)
class Token:
    """What a continuation carries: the run, when the job began, rounds without an answer."""

    flow_run_id: str
    started: float
    lost_rounds: int = 0

    def dump(self) -> str:
        return json.dumps({"flow_run_id": self.flow_run_id, "started": round(self.started, 1),
                           "lost_rounds": self.lost_rounds})


def parse_token(token: str) -> Token:
    try:
        value = json.loads(token)
        return Token(str(value["flow_run_id"]), float(value.get("started") or time.time()),
                     int(value.get("lost_rounds") or 0))
    except (TypeError, ValueError, KeyError):
        raise TriggerError("The continuation token is not one this function made; re-run "
                           "the pipeline stage", "ConfigurationError") from None


def follow(token: Token, budget: Budget) -> Result:
    """A continuation round: the run's state, within CodePipeline's limit, riding out a
    Prefect API that does not answer for a few rounds (the flow keeps running meanwhile)."""
    api = PrefectAPI(prefect_settings(budget), budget)
    age = time.time() - token.started
    if age > GIVE_UP_SECONDS:
        cancelled = api.cancel(token.flow_run_id)
        return Result("failure", (
            f"Flow run {token.flow_run_id} ran {age / 3600:.1f} h, close to CodePipeline's "
            "24-hour limit for a Lambda action; "
            + ("it was cancelled so it deploys nothing after the stage failed. "
               if cancelled else "it could not be cancelled: cancel it in the Prefect UI. ")
            + api.run_url(token.flow_run_id)), token.flow_run_id, failure_type="JobFailed")
    try:
        run = api.flow_run(token.flow_run_id)
    except TriggerError as exc:
        if exc.failure_type != "SystemUnavailable":
            raise
        lost = token.lost_rounds + 1
        if lost >= MAX_LOST_ROUNDS:
            raise TriggerError(f"No answer from Prefect about flow run {token.flow_run_id} in "
                               f"{lost} rounds in a row: {exc}", "SystemUnavailable",
                               token.flow_run_id) from None
        log.warning("Round %d without an answer about %s: %s", lost, token.flow_run_id, exc)
        return Result("continue", f"Could not read flow run {token.flow_run_id} ({exc}); "
                      "asking again next round", token.flow_run_id,
                      token=Token(token.flow_run_id, token.started, lost).dump())
    return check_run(api, run, Token(token.flow_run_id, token.started))


def check_approval_timeout(parameters: dict[str, Any]) -> None:
    """A manual approval must end, and the jobs after it, before CodePipeline's limit."""
    gate = ((parameters.get("config") or {}).get("gate") or {})
    if not isinstance(gate, dict) or gate.get("approval") != "manual":
        return
    try:
        timeout = float(gate.get("approval_timeout_seconds") or 3600)
    except (TypeError, ValueError):
        return  # the flow's own validation reports a malformed value
    if timeout > MAX_APPROVAL_SECONDS:
        raise TriggerError(
            f"gate.approval_timeout_seconds is {timeout:.0f}: a run started by CodePipeline "
            "must end within the Lambda action's 24-hour limit, so a manual approval may wait "
            f"at most {MAX_APPROVAL_SECONDS} s (20 h). Lower it in the deployment's settings "
            "or in UserParameters.", "ConfigurationError")


@dataclass(frozen=True)
class Asked:
    """What the action's UserParameters ask for."""

    deployment: str
    parameters: dict[str, Any]
    image: str | None = None
    code_hash: str | None = None


def _parameter_names(deployment: dict[str, Any]) -> set[str]:
    """The flow's parameters, from the deployment's schema (all of them if it has none)."""
    schema = deployment.get("parameter_openapi_schema") or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return set(properties) if isinstance(properties, dict) else {"trigger"}


def parse_user_parameters(data: dict[str, Any]) -> Asked:
    example = '{"deployment": "ml-pipeline/production", "parameters": {}}'
    raw = ((data.get("actionConfiguration") or {}).get("configuration") or {}).get(
        "UserParameters")
    if not raw:
        raise TriggerError(f"The action has no UserParameters; set them to JSON like "
                           f"{example}", "ConfigurationError")
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise TriggerError(f"UserParameters are not valid JSON ({exc}); use JSON like "
                           f"{example}", "ConfigurationError") from None
    if not isinstance(value, dict):
        raise TriggerError(f"UserParameters must be a JSON object like {example}",
                           "ConfigurationError")
    unknown = sorted(set(value) - {"deployment", "parameters", "image", "code_hash"})
    if unknown:
        raise TriggerError(f"Unknown key(s) in UserParameters: {', '.join(unknown)}; allowed: "
                           "deployment, parameters, image, code_hash", "ConfigurationError")
    deployment = value.get("deployment")
    if not isinstance(deployment, str) or deployment.count("/") != 1 or \
            not all(deployment.split("/")):
        raise TriggerError(f"UserParameters.deployment must name a deployment as "
                           f"'<flow>/<deployment>', e.g. 'ml-pipeline/production'; got "
                           f"{deployment!r}", "ConfigurationError")
    parameters = value.get("parameters", {})
    if not isinstance(parameters, dict):
        raise TriggerError("UserParameters.parameters must be a JSON object of flow "
                           "parameters", "ConfigurationError")
    image, code_hash = value.get("image"), value.get("code_hash")
    if image is not None and (not isinstance(image, str) or not IMAGE_REF.match(image)):
        raise TriggerError(
            f"UserParameters.image must be an image URI like <registry>/<repository>@sha256:"
            f"<digest>; got {image!r}. Set it to \"#{{Build.FLOW_IMAGE}}\": the Build stage's "
            "flow image action, with the namespace Build, exports FLOW_IMAGE "
            "(buildspecs/flow-image.yml)", "ConfigurationError")
    if code_hash is not None and (not isinstance(code_hash, str) or
                                  not CODE_HASH.match(code_hash)):
        raise TriggerError(
            f"UserParameters.code_hash must be the Build stage's code hash (letters, digits, "
            f"'.', '_', '-'); got {code_hash!r}. Set it to \"#{{Build.FLOW_CODE_HASH}}\"",
            "ConfigurationError")
    return Asked(deployment, parameters, image or None, code_hash or None)


def commit_of(data: dict[str, Any]) -> str | None:
    """The first input artifact's revision: the commit, for a source action's output."""
    for artifact in data.get("inputArtifacts") or []:
        if isinstance(artifact, dict) and artifact.get("revision"):
            return str(artifact["revision"])
    return None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, key by key inside nested objects."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_run(api: PrefectAPI, run: dict[str, Any], token: Token) -> Result:
    """The job's answer for the flow run's current state."""
    run_id = str(run["id"])
    state = run.get("state") or {}
    kind, name = state.get("type"), state.get("name") or state.get("type") or "unknown"
    link = api.run_url(run_id)
    label = f"Flow run {run.get('name') or run_id}"
    if kind == "COMPLETED":
        outcome = api.outcome(run_id)
        outputs = output_variables(run_id, link, outcome)
        summary = outcome.get("summary") or "completed"
        return Result("success", f"{label} completed: {summary}. {link}", run_id,
                      outputs=outputs)
    if kind in FAILED_STATES:
        message = (state.get("message") or "").strip() or "no message"
        return Result("failure", f"{label} ended {name}: {message} See {link}", run_id,
                      failure_type="JobFailed")
    waiting = " (waiting for approval in the Prefect UI)" if kind == "PAUSED" else ""
    return Result("continue", f"{label} is {name}{waiting}. {link}", run_id,
                  token=token.dump())


def output_variables(run_id: str, link: str, outcome: dict[str, Any]) -> dict[str, str]:
    """CodePipeline variables for later actions: #{<namespace>.FlowRunId} and so on."""
    values = {"FlowRunId": run_id, "FlowRunUrl": link,
              "Outcome": outcome.get("outcome") or "completed",
              "Decision": outcome.get("decision") or "none",
              "ModelPackageArn": outcome.get("model_package_arn") or "none",
              "Endpoint": outcome.get("endpoint") or "none"}
    return {k: str(v)[:MAX_VARIABLE] for k, v in values.items()}


def prefect_settings(budget: Budget) -> PrefectSettings:
    """The Prefect API URL and key from Secrets Manager, read once per container (a read
    takes at most AWS_CALL_SECONDS, and starts only if the budget has that time)."""
    arn = os.environ.get("PREFECT_API_SECRET_ARN", "").strip()
    if not arn:
        raise TriggerError("PREFECT_API_SECRET_ARN is not set: give the function the ARN of "
                           'a secret holding {"api_url": ..., "api_key": ...}',
                           "ConfigurationError")
    if arn in _SECRETS:
        return _SECRETS[arn]
    if not budget.allows(AWS_CALL_SECONDS):
        raise TriggerError("No time left to read the Prefect API secret; give the function a "
                           "longer timeout (60 s or more)", "SystemUnavailable")
    try:
        secret = aws("secretsmanager").get_secret_value(SecretId=arn)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise TriggerError(f"The secret {arn} does not exist (or has no current value): "
                               'create it with {"api_url": ..., "api_key": ...}',
                               "ConfigurationError") from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise TriggerError(f"The function may not read the secret {arn} "
                               "(secretsmanager:GetSecretValue, and kms:Decrypt for a "
                               "customer key)", "PermissionError") from None
        raise TriggerError(f"Secrets Manager refused to read {arn}: {code}",
                           "SystemUnavailable") from None
    except BotoCoreError as exc:
        raise TriggerError(f"Could not reach Secrets Manager: {exc}",
                           "SystemUnavailable") from None
    try:
        value = json.loads(secret.get("SecretString") or "")
        api_url = str(value["api_url"]).strip().rstrip("/")
        api_key = str(value.get("api_key") or "")
    except (TypeError, ValueError, KeyError):
        raise TriggerError(f"The secret {arn} must be a JSON string with \"api_url\" (and "
                           "\"api_key\", empty for a server without auth)",
                           "ConfigurationError") from None
    if not api_url.startswith(("http://", "https://")):
        raise TriggerError(f"The secret {arn} has api_url {api_url!r}: it must be the "
                           "Prefect API's http(s) URL, e.g. https://api.prefect.cloud/api/"
                           "accounts/<id>/workspaces/<id>", "ConfigurationError")
    ui_url = str(value.get("ui_url") or "").rstrip("/") or ui_url_for(api_url)
    _SECRETS[arn] = PrefectSettings(api_url, api_key, ui_url)
    return _SECRETS[arn]


def ui_url_for(api_url: str) -> str:
    """The UI behind an API URL, the way Prefect derives it."""
    ui = api_url.replace("https://api.prefect.cloud/api", "https://app.prefect.cloud")
    if ui.endswith("/api"):
        ui = ui[:-4]
    return ui.replace("/api/", "/").replace("/accounts/", "/account/").replace(
        "/workspaces/", "/workspace/")


class PrefectAPI:
    """The four Prefect REST calls the trigger makes, each within the budget."""

    def __init__(self, settings: PrefectSettings, budget: Budget) -> None:
        self.settings = settings
        self.budget = budget

    def run_url(self, run_id: str) -> str:
        return f"{self.settings.ui_url}/runs/flow-run/{run_id}"

    def deployment(self, name: str) -> dict[str, Any]:
        flow, deployment = (urllib.parse.quote(p, safe="") for p in name.split("/"))
        try:
            return self._request("GET", f"/deployments/name/{flow}/{deployment}")
        except NotFound:
            raise TriggerError(f"No deployment {name!r} on the Prefect API at "
                               f"{self.settings.api_url}: register it with `prefect deploy "
                               "--prefect-file deployments/prefect.yaml`",
                               "ConfigurationError") from None

    def create_flow_run(self, deployment_id: str, parameters: dict[str, Any], *,
                        idempotency_key: str,
                        job_variables: dict[str, Any] | None = None) -> dict[str, Any]:
        # the idempotency key makes asking again safe, even after a timeout; job variables
        # given here apply to this run only, over the deployment's (e.g. its image)
        body: dict[str, Any] = {"parameters": parameters, "idempotency_key": idempotency_key,
                                "tags": ["codepipeline"]}
        if job_variables:
            body["job_variables"] = job_variables
        return self._request("POST", f"/deployments/{deployment_id}/create_flow_run", body,
                             retry_timeouts=True)

    def cancel(self, run_id: str) -> bool:
        """Ask Prefect to cancel the run (its on_cancellation hook stops its jobs)."""
        try:
            self._request("POST", f"/flow_runs/{urllib.parse.quote(run_id, safe='')}/set_state",
                          {"state": {"type": "CANCELLING", "name": "Cancelling",
                                     "message": "CodePipeline's 24-hour limit"},
                           "force": True})
        except TriggerError as exc:
            log.error("Could not cancel flow run %s: %s", run_id, exc)
            return False
        return True

    def flow_run(self, run_id: str) -> dict[str, Any]:
        try:
            return self._request("GET", f"/flow_runs/{urllib.parse.quote(run_id, safe='')}")
        except NotFound:
            raise TriggerError(f"Flow run {run_id} no longer exists on {self.settings.api_url}",
                               "JobFailed", run_id) from None

    def outcome(self, run_id: str) -> dict[str, Any]:
        """The row of the run's ``<project>-outcome`` table artifact ({} if there is none)."""
        artifacts = self._request("POST", "/artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [run_id]},
                          "key": {"like_": OUTCOME_ARTIFACT_SUFFIX}},
            "sort": "CREATED_DESC", "limit": 10})
        for artifact in artifacts or []:
            if not str(artifact.get("key") or "").endswith(OUTCOME_ARTIFACT_SUFFIX):
                continue
            data = artifact.get("data")
            try:
                rows = json.loads(data) if isinstance(data, str) else data
                return dict(rows[0])
            except (TypeError, ValueError, KeyError, IndexError):
                log.warning("Outcome artifact of flow run %s is not a table; ignored", run_id)
        return {}

    def _request(self, method: str, path: str, body: Any = None, *,
                 retry_timeouts: bool = False) -> Any:
        """One call, asked again after a dropped connection or a busy server (and after a
        timeout, for an idempotent call)."""
        attempt = 1
        while True:  # bounded: ATTEMPTS, and the budget's deadline
            try:
                return self._request_once(method, path, body, retry_timeouts)
            except _Transient as exc:
                delay = RETRY_BASE_SECONDS * random.uniform(1.0, 2.0) * attempt
                if attempt >= ATTEMPTS or not self.budget.allows(delay):
                    raise exc.error from None
                log.warning("%s; asking again in %.1f s", exc.error, delay)
                time.sleep(delay)
                attempt += 1

    def _request_once(self, method: str, path: str, body: Any, retry_timeouts: bool) -> Any:
        url = self.settings.api_url + path
        headers = {"Accept": "application/json", "User-Agent": "sagepipe-trigger"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=payload, headers=headers, method=method)
        where = f"the Prefect API at {self.settings.api_url}"
        try:
            with urllib.request.urlopen(request, timeout=self.budget.request_timeout()
                                        ) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (401, 403):
                _SECRETS.clear()  # a rotated key: read the secret again next time
                raise TriggerError(f"{where} refused the API key ({exc.code}: {detail}); "
                                   "check api_key in the secret", "PermissionError") from None
            if exc.code == 404:
                raise NotFound(f"{method} {path}: not found", "ConfigurationError") from None
            if exc.code in (400, 409, 422):
                raise TriggerError(f"{where} rejected {method} {path} ({exc.code}): {detail}",
                                   "ConfigurationError") from None
            error = TriggerError(f"{where} answered {exc.code} to {method} {path}: {detail}",
                                 "SystemUnavailable")
            if exc.code in RETRY_STATUSES:
                raise _Transient(error) from None
            raise error from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = TriggerError(f"Could not reach {where} ({method} {path}): {reason}. Is the "
                                 "server up and reachable from the function (VPC, NAT)?",
                                 "SystemUnavailable")
            if isinstance(reason, ConnectionError):  # refused or reset: worth a second try
                raise _Transient(error) from None
            timed_out = isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError)
            if timed_out and retry_timeouts:  # the budget decides whether time is left
                raise _Transient(error) from None
            raise error from None  # a read's timeout already spent a retry's time
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise TriggerError(f"{where} answered {method} {path} with something other than "
                               "JSON; is api_url the API (ending in /api), not the UI?",
                               "SystemUnavailable") from None


class _Transient(Exception):
    def __init__(self, error: TriggerError) -> None:
        super().__init__(str(error))
        self.error = error


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode(errors="replace")
    except Exception:  # the error body is only a courtesy
        return exc.reason or ""
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    return str(detail)[:1000]


class ReportError(RuntimeError):
    """CodePipeline took no result: raised so Lambda runs the invocation again."""


_GONE = frozenset({"JobNotFoundException", "InvalidJobStateException"})


def report(job_id: str, result: Result, *, deadline: float | None = None) -> dict[str, str]:
    """Tell CodePipeline. A refused success falls back to a failure (else the job would
    wait 20 minutes for nothing); if no result is taken at all, raise, so Lambda's own
    retry asks again (the round is idempotent). A job CodePipeline no longer knows is
    only logged."""
    codepipeline = aws("codepipeline")
    details: dict[str, Any] = {"summary": result.message[:MAX_SUMMARY]}
    if result.external_id:
        details["externalExecutionId"] = result.external_id
    try:
        if result.kind == "failure":
            _report_failure(job_id, result)
        elif result.kind == "continue":
            codepipeline.put_job_success_result(jobId=job_id, continuationToken=result.token,
                                                executionDetails=details)
        else:
            codepipeline.put_job_success_result(jobId=job_id, executionDetails=details,
                                                outputVariables=result.outputs)
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) \
            else None
        if code in _GONE:
            log.error("Could not report job %s to CodePipeline (%s): %s", job_id, result.kind,
                      exc)
            return {"status": "report-failed", "job": job_id, "error": str(exc)}
        if result.kind == "failure" or (deadline is not None and
                                        time.monotonic() + AWS_CALL_SECONDS > deadline):
            raise ReportError(f"CodePipeline took no result for job {job_id}: {exc}") from exc
        log.error("CodePipeline refused the %s result of job %s (%s); failing the job "
                  "instead", result.kind, job_id, exc)
        fallback = Result("failure", f"Could not report {result.kind} to CodePipeline ({exc}): "
                          f"{result.message}", result.external_id,
                          failure_type="SystemUnavailable")
        try:
            _report_failure(job_id, fallback)
        except (ClientError, BotoCoreError) as second:
            raise ReportError(f"CodePipeline took no result for job {job_id}: {second}"
                              ) from second
        return {"status": "failure", "job": job_id}
    log.log(logging.WARNING if result.kind == "failure" else logging.INFO, "Job %s: %s: %s",
            job_id, result.kind, result.message[:500])
    return {"status": result.kind, "job": job_id}


def _report_failure(job_id: str, result: Result) -> None:
    failure: dict[str, Any] = {"type": result.failure_type,
                               "message": result.message[:MAX_MESSAGE]}
    if result.external_id:
        failure["externalExecutionId"] = result.external_id
    aws("codepipeline").put_job_failure_result(jobId=job_id, failureDetails=failure)
