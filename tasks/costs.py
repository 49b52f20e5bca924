"""What a run costs: the estimate before it, what it measured after, and the budget.

The estimate is list prices (:class:`~.pricing.PriceBook`) times time, and is labelled an
estimate everywhere it shows. Its upper bound prices each job at its
``StoppingCondition.MaxRuntimeInSeconds``: AWS's StoppingCondition "Specifies a limit to
how long a job can run. When the job reaches the time limit, SageMaker ends the job. Use
this API to cap costs", and to stop a training job "SageMaker sends the algorithm the
SIGTERM signal, which delays job termination for 120 seconds" (API_StoppingCondition), so
a training job is priced at its limit plus those 120 s. A run whose upper bound is over
``budget.max_usd_per_run`` is refused before anything is created; one that fits is kept
within it by those same limits: each job's share of the budget is what its
MaxRuntimeInSeconds buys, and SageMaker stops a job that outlives it.

After a run, the actual cost of each job it ran is priced from Describe*: a training
job's ``BillableTimeInSeconds`` ("Multiply BillableTimeInSeconds by the number of
instances (InstanceCount) ... to get the total compute time SageMaker bills you"; managed
spot savings are ``(1 - BillableTimeInSeconds / TrainingTimeInSeconds) * 100``), or,
without it, ``TrainingEndTime - TrainingStartTime`` ("You are billed for the time interval
between the value of TrainingStartTime and this time"); a processing job's
``ProcessingEndTime - ProcessingStartTime`` (DescribeProcessingJob reports no billable
time: this is its measured run time).

A training job with ``jobs.keep_alive_seconds`` keeps its instances in a warm pool after it
ends, billed while kept: "Multiply ResourceRetainedBillableTimeInSeconds by the number of
instances (InstanceCount) ... to get the total compute time SageMaker bills you"
(API_WarmPoolStatus). The upper bound prices the whole keep-alive (the pool goes sooner only
if a matching job takes it); the measured cost prices the retained seconds reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError, OverBudget
from .pricing import HOURS_PER_MONTH, PriceBook, PriceMissing, PricingSettings

__all__ = ["TRAINING_STOP_GRACE_SECONDS", "BudgetSettings", "CostLine", "EndpointShape",
           "Estimate", "JobUsage", "ServerlessShape", "billable_seconds", "build_line",
           "check_budget", "deploy_line", "endpoint_monthly", "job_actual", "job_cost",
           "job_line", "requests_line", "serverless_monthly", "usd", "warm_pool_actual",
           "warm_pool_line"]

TRAINING_STOP_GRACE_SECONDS = 120
_SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600


class BudgetSettings(BaseModel):
    """Limits a run must fit before anything is created (unset: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_usd_per_run: float | None = Field(
        None, gt=0, description="refuse a run whose upper-bound estimate (every job at its "
        "max runtime, where SageMaker stops it) is more than this many USD")
    max_usd_per_month_live: float | None = Field(
        None, ge=0, description="refuse a run whose endpoints would cost more than this many "
        "USD a month at rest (real-time instances around the clock)")


def usd(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 0.01:
        return f"{value:.6f} USD"
    return f"{value:.4f} USD" if value < 10 else f"{value:,.2f} USD"


@dataclass(frozen=True)
class JobUsage:
    """The billable shape of one job, read from its request."""

    step: str
    kind: Literal["training", "processing"]
    instance_type: str
    instance_count: int
    volume_gb: int
    max_runtime_seconds: int
    spot: bool = False
    keep_alive_seconds: int = 0  # training: ResourceConfig.KeepAlivePeriodInSeconds

    @classmethod
    def from_request(cls, step: str, kind: Literal["training", "processing"],
                     request: dict[str, Any]) -> JobUsage:
        resources = (request["ResourceConfig"] if kind == "training"
                     else request["ProcessingResources"]["ClusterConfig"])
        # no StoppingCondition: SageMaker's default limit is one day
        limit = int((request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds", 86400))
        return cls(step=step, kind=kind, instance_type=resources["InstanceType"],
                   instance_count=int(resources["InstanceCount"]),
                   volume_gb=int(resources.get("VolumeSizeInGB", 0)),
                   max_runtime_seconds=limit,
                   spot=bool(request.get("EnableManagedSpotTraining")),
                   keep_alive_seconds=int(resources.get("KeepAlivePeriodInSeconds") or 0))

    @property
    def seconds_limit(self) -> int:
        """The longest it can bill: its max runtime (plus the 120 s a stopped training job
        is given to save its model)."""
        grace = TRAINING_STOP_GRACE_SECONDS if self.kind == "training" else 0
        return self.max_runtime_seconds + grace

    def describe(self) -> str:
        return (f"{self.kind} {self.instance_type} x{self.instance_count}, "
                f"{self.volume_gb} GB volume" + (", managed spot" if self.spot else ""))


@dataclass(frozen=True)
class CostLine:
    """One item of an estimate or of a measured cost. ``usd`` None: a price is missing
    (``missing`` says which and how to set it)."""

    item: str
    usd: float | None
    detail: str
    likely_usd: float | None = None  # at the last run's durations, when known
    likely_detail: str = ""
    missing: str = ""
    step: str = ""  # a job's line: its step

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)} | {
            "usd": self.usd}


@dataclass
class Estimate:
    """Upper bound of a run, and the monthly cost at rest of what it leaves live."""

    run: list[CostLine]
    live: list[CostLine]
    prices: list[str]  # every price used, cited (key, USD, unit, region, date, source)
    notes: list[str] = field(default_factory=list)
    jobs: list[JobUsage] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [line.missing for line in [*self.run, *self.live] if line.missing]

    @property
    def total(self) -> float:
        return sum(line.usd or 0.0 for line in self.run)

    @property
    def likely_total(self) -> float | None:
        """At the last run's durations where known, else at the upper bound."""
        if all(line.likely_usd is None for line in self.run):
            return None
        return sum(line.likely_usd if line.likely_usd is not None else (line.usd or 0.0)
                   for line in self.run)

    @property
    def live_total(self) -> float:
        return sum(line.usd or 0.0 for line in self.live)

    def as_dict(self) -> dict[str, Any]:
        return {"label": "estimate", "run": [line.as_dict() for line in self.run],
                "total_usd": round(self.total, 6),
                "likely_total_usd": None if self.likely_total is None
                else round(self.likely_total, 6),
                "live": [line.as_dict() for line in self.live],
                "live_usd_per_month": round(self.live_total, 4),
                "prices": self.prices, "notes": self.notes, "missing": self.missing}

    def text(self) -> list[str]:
        """The estimate as lines for a terminal or a markdown code block."""
        width = max([len(line.item) for line in [*self.run, *self.live]] + [20])
        out = ["Estimated cost of this run (an estimate from list prices, not a quote):",
               f"  {'':{width}}  {'upper bound':>12}  at the last run's durations (else the "
               "upper bound)"]

        def add(line: CostLine, likely: str = "", per: str = "") -> None:
            out.append(f"  {line.item.ljust(width)}  {usd(line.usd):>12}{per}  {likely}"
                       .rstrip())
            out.append(f"      {line.missing or line.detail}")
        for line in self.run:
            add(line, f"{usd(line.likely_usd)} ({line.likely_detail})"
                if line.likely_usd is not None else "-")
        likely_total = self.likely_total
        out.append(f"  {'total'.ljust(width)}  {usd(self.total):>12}  "
                   + (usd(likely_total) if likely_total is not None else "-"))
        out.append("Left live by this run, a month at rest:")
        for line in self.live:
            add(line, per="/month")
        out.append(f"  {'total'.ljust(width)}  {usd(self.live_total):>12}/month")
        if self.missing:
            out.append("Note: the totals leave out the items without a price (above): set "
                       "those prices to complete the estimate.")
        out += [f"Note: {note}." for note in self.notes]
        out.append("Prices used:")
        out += [f"  {price}" for price in self.prices]
        return out


def job_cost(usage: JobUsage, seconds: float, book: PriceBook,
             pricing: PricingSettings) -> tuple[float, str]:
    """USD of ``usage`` running ``seconds``: instances, their volumes (ML storage) and the
    log allowance; and how it was computed."""
    hourly = book.instance_hour(usage.kind, usage.instance_type)
    storage = book.price("ml_storage/gb_month", "ML storage, USD per GB-month")
    ingest = book.price("logs/ingest_gb", "CloudWatch Logs ingestion, USD per GB")
    compute = usage.instance_count * seconds / 3600 * hourly
    volume = usage.instance_count * usage.volume_gb * storage * seconds / _SECONDS_PER_MONTH
    logs = pricing.log_mb_per_job_hour * seconds / 3600 / 1024 * ingest
    return compute + volume + logs, (
        f"{seconds:.0f} s x {usage.instance_count} x {hourly:g} USD/h + "
        f"{usage.volume_gb} GB x {storage:g} USD/GB-month + logs {logs:.5f}")


def job_line(usage: JobUsage, book: PriceBook, pricing: PricingSettings,
             last_seconds: float | None = None) -> CostLine:
    """A job at its limit (SageMaker stops it there); and at the last run's duration."""
    item = f"{usage.step} job"
    try:
        upper, how = job_cost(usage, usage.seconds_limit, book, pricing)
        likely = (job_cost(usage, last_seconds, book, pricing)[0]
                  if last_seconds is not None else None)
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc), step=usage.step)
    stop = (f"SageMaker stops it at MaxRuntimeInSeconds {usage.max_runtime_seconds}"
            + (f" (+{TRAINING_STOP_GRACE_SECONDS} s to save)" if usage.kind == "training"
               else ""))
    spot = "; managed spot bills less (savings show in the actual)" if usage.spot else ""
    return CostLine(item, upper, f"{usage.describe()}; {stop}: {how}{spot}", likely,
                    f"{last_seconds:.0f} s" if last_seconds is not None else "",
                    step=usage.step)


def build_line(book: PriceBook, pricing: PricingSettings, steps: list[str]) -> CostLine:
    """An image build at its time limit (only when an image is not in the registry yet)."""
    compute = pricing.build_compute_type
    item = "image build"
    try:
        minute = book.price(f"codebuild/{compute}", f"CodeBuild {compute}, USD per minute")
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc))
    return CostLine(item, pricing.build_minutes * minute,
                    f"CodeBuild {compute} for {', '.join(steps)}, only if an image is not in "
                    f"ECR yet; at most {pricing.build_minutes} min "
                    f"x {minute:g} USD/min (pricing.build_minutes)")


def warm_pool_line(usage: JobUsage, book: PriceBook) -> CostLine | None:
    """A training job's warm pool (``jobs.keep_alive_seconds``) kept for its whole keep-alive:
    its instances at the training price (None: no warm pool)."""
    keep = usage.keep_alive_seconds
    if usage.kind != "training" or not keep:
        return None
    item = f"{usage.step} warm pool"
    try:
        hourly = book.instance_hour("training", usage.instance_type)
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc))
    # not a job line (no step): it does not grow with MaxRuntimeInSeconds
    return CostLine(item, usage.instance_count * keep / 3600 * hourly,
                    f"jobs.keep_alive_seconds: {usage.instance_type} x{usage.instance_count} "
                    f"kept warm after the job, billed while kept (less if the next matching "
                    f"training job takes it): {keep} s x {usage.instance_count} x {hourly:g} "
                    "USD/h")


def deploy_line(endpoint: str, instance_type: str, instance_count: int, seconds: float,
                book: PriceBook, why: str = "") -> CostLine:
    """Blue/green: the new fleet runs beside the old one until traffic has moved and the
    bake is over; bounded here by how long the flow waits for the update. ``why``: where
    the fleet size comes from when it is not endpoint.instance_count."""
    item = f"deploy to {endpoint}"
    try:
        hourly = book.instance_hour("hosting", instance_type)
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc))
    return CostLine(item, instance_count * hourly * seconds / 3600,
                    f"blue/green: the new fleet ({instance_type} x{instance_count}"
                    + (f", {why}" if why else "") + ") beside the old for at "
                    f"most {seconds:.0f} s (endpoint.timeout_seconds)")


def requests_line(book: PriceBook, pricing: PricingSettings) -> CostLine:
    item = "S3 requests"
    try:
        per_1000 = book.price("s3/put_per_1000", "S3 PUT requests, USD per 1,000")
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc))
    return CostLine(item, pricing.s3_requests_per_run / 1000 * per_1000,
                    f"an allowance of {pricing.s3_requests_per_run} requests at the PUT rate "
                    "(pricing.s3_requests_per_run)")


@dataclass(frozen=True)
class ServerlessShape:
    """A serverless variant: ProductionVariantServerlessConfig's fields."""

    memory_mb: int
    max_concurrency: int
    provisioned_concurrency: int | None = None


@dataclass(frozen=True)
class EndpointShape:
    """What an endpoint keeps running at rest: ``instances`` always-on real-time instances
    (instance_count, or an autoscaling policy's minimum), or a serverless variant."""

    name: str
    role: str  # production, staging
    instance_type: str | None = None
    instances: int = 0
    serverless: ServerlessShape | None = None
    why: str = ""  # e.g. "autoscaling minimum"


def serverless_monthly(shape: ServerlessShape, *, requests: int, seconds_per_request: float,
                       kb_per_request: float, book: PriceBook) -> tuple[float, str]:
    """USD a month of a serverless variant: provisioned concurrency around the clock (memory
    x concurrency x time), plus ``requests`` at ``seconds_per_request`` of inference (memory
    x time) and their data. No request: no charge but the provisioned concurrency."""
    gb = shape.memory_mb / 1024
    data = requests * kb_per_request / (1024 * 1024)
    data_usd = data * book.price("serverless/data_gb", "serverless data processed, USD/GB")
    request_usd = requests * book.price("serverless/request", "serverless, USD per request")
    parts = []
    provisioned = 0.0
    if shape.provisioned_concurrency:
        per = book.price("serverless/provisioned_gb_second",
                         "serverless provisioned concurrency, USD per GB-second")
        provisioned = shape.provisioned_concurrency * gb * _SECONDS_PER_MONTH * per
        rate = book.price("serverless/provisioned_inference_gb_second",
                          "inference on provisioned concurrency, USD per GB-second")
        parts.append(f"provisioned {shape.provisioned_concurrency} x {gb:g} GB x 730 h")
    else:
        rate = book.price("serverless/gb_second", "serverless inference, USD per GB-second")
    inference = requests * seconds_per_request * gb * rate
    parts.append(f"{requests} requests x {seconds_per_request:g} s x {gb:g} GB x {rate:g} "
                 "USD/GB-s")
    return provisioned + inference + data_usd + request_usd, ", ".join(parts)


def endpoint_monthly(shape: EndpointShape, book: PriceBook,
                     pricing: PricingSettings) -> CostLine:
    """An endpoint's cost a month at rest."""
    item = f"{shape.role} endpoint {shape.name}"
    try:
        if shape.serverless is not None:
            cost, how = serverless_monthly(
                shape.serverless, requests=pricing.requests_per_month,
                seconds_per_request=pricing.seconds_per_request,
                kb_per_request=pricing.kb_per_request, book=book)
            return CostLine(item, cost, f"serverless {shape.serverless.memory_mb} MB: {how} "
                            "(pricing.requests_per_month)")
        hourly = book.instance_hour("hosting", str(shape.instance_type))
    except PriceMissing as exc:
        return CostLine(item, None, "", missing=str(exc))
    return CostLine(item, shape.instances * hourly * HOURS_PER_MONTH,
                    f"real-time {shape.instance_type} x{shape.instances}"
                    + (f" ({shape.why})" if shape.why else "")
                    + f": {shape.instances} x {hourly:g} USD/h x {HOURS_PER_MONTH:g} h")


def job_actual(usage: JobUsage, *, how: str, seconds: float | None, source: str,
               book: PriceBook, pricing: PricingSettings,
               training_seconds: float | None = None) -> dict[str, Any]:
    """What one job cost this run: ``seconds`` billed (see :func:`billable_seconds`); nothing
    if this run did not run it (a cache hit, or a completed job reused)."""
    if how in ("cached", "reused"):
        return {"step": usage.step, "usd": 0.0, "billable_seconds": 0,
                "how": f"{how}: nothing billed in this run"}
    if seconds is None:
        return {"step": usage.step, "usd": None, "how": "no start or end time reported"}
    try:
        cost = job_cost(usage, seconds, book, pricing)[0]
    except PriceMissing as exc:
        return {"step": usage.step, "usd": None, "billable_seconds": seconds, "how": str(exc)}
    result: dict[str, Any] = {"step": usage.step, "usd": round(cost, 8),
                              "billable_seconds": seconds, "how": source,
                              "instances": usage.instance_count}
    if usage.spot and training_seconds and source == "BillableTimeInSeconds":
        # AWS: managed spot savings = (1 - BillableTimeInSeconds / TrainingTimeInSeconds) * 100
        result["spot_savings_percent"] = round((1 - seconds / training_seconds) * 100, 1)
    return result


def warm_pool_actual(usage: JobUsage, *, how: str, status: str | None,
                     retained_seconds: float | None, book: PriceBook) -> dict[str, Any]:
    """What a training job's warm pool cost: ResourceRetainedBillableTimeInSeconds x
    InstanceCount at the training price. A pool still ``Available`` when the run measured
    goes on billing until a matching job takes it or its keep-alive ends (``up_to_usd``)."""
    item = f"{usage.step} warm pool"
    if how in ("cached", "reused"):
        return {"item": item, "usd": 0.0, "retained_seconds": 0,
                "how": f"{how}: nothing billed in this run"}
    if retained_seconds is None:
        return {"item": item, "usd": None, "status": status,
                "how": "no ResourceRetainedBillableTimeInSeconds reported"}
    try:
        hourly = book.instance_hour("training", usage.instance_type)
    except PriceMissing as exc:
        return {"item": item, "usd": None, "retained_seconds": retained_seconds,
                "how": str(exc)}
    result: dict[str, Any] = {
        "item": item, "usd": round(usage.instance_count * retained_seconds / 3600 * hourly, 8),
        "retained_seconds": retained_seconds, "status": status,
        "instances": usage.instance_count,
        "how": f"ResourceRetainedBillableTimeInSeconds (WarmPoolStatus {status})"}
    if status == "Available":
        result["up_to_usd"] = round(
            usage.instance_count * max(usage.keep_alive_seconds, retained_seconds) / 3600
            * hourly, 8)
        result["how"] += (": still kept when the run ended, billed until a matching training "
                          f"job takes it or {usage.keep_alive_seconds} s have passed")
    return result


def billable_seconds(kind: str, described: dict[str, Any]) -> tuple[float | None, str]:
    """(seconds, where they came from) of a finished job's Describe* response."""
    if kind == "training" and described.get("BillableTimeInSeconds") is not None:
        return float(described["BillableTimeInSeconds"]), "BillableTimeInSeconds"
    prefix = "Training" if kind == "training" else "Processing"
    start, end = described.get(f"{prefix}StartTime"), described.get(f"{prefix}EndTime")
    if start is None or end is None:
        return None, ""
    return (max(0.0, (end - start).total_seconds()),
            f"{prefix}EndTime - {prefix}StartTime")


def check_budget(estimate: Estimate, budget: BudgetSettings) -> None:
    """OverBudget (with the breakdown and what to change) when the run's upper bound or what
    it leaves live is over the budget; ConfigError when a price it needs is missing."""
    if budget.max_usd_per_run is None and budget.max_usd_per_month_live is None:
        return
    if estimate.missing:
        raise ConfigError("The budget cannot be checked: " + " ".join(estimate.missing))
    limit = budget.max_usd_per_run
    if limit is not None and estimate.total > limit + 1e-9:
        raise OverBudget(
            f"Over budget: this run could cost up to {usd(estimate.total)} (an estimate: "
            f"every job at its MaxRuntimeInSeconds, where SageMaker stops it), more than "
            f"budget.max_usd_per_run {usd(limit)}. Nothing was created.\n"
            + _breakdown(estimate.run) + "\n" + _fit_hint(estimate, limit))
    monthly = budget.max_usd_per_month_live
    if monthly is not None and estimate.live_total > monthly + 1e-9:
        raise OverBudget(
            f"Over budget: what this run leaves live could cost {usd(estimate.live_total)} a "
            f"month at rest (an estimate), more than budget.max_usd_per_month_live "
            f"{usd(monthly)}. Nothing was created.\n" + _breakdown(estimate.live)
            + "\nTo fit: a smaller endpoint.instance_type or endpoint.instance_count (with "
            "endpoint.autoscaling: a lower min_instances), no staging endpoint, or raise "
            "budget.max_usd_per_month_live.")


def _breakdown(lines: list[CostLine]) -> str:
    return "\n".join(f"  - {line.item}: {usd(line.usd)} ({line.detail})" for line in lines)


def _fit_hint(estimate: Estimate, limit: float) -> str:
    """The jobs.max_runtime_seconds that would fit the budget, if one of at least 60 s does:
    the jobs' lines grow with their limit (USD per second each), the rest does not."""
    options = "use smaller instance types, or raise budget.max_usd_per_run."
    if any(usage.keep_alive_seconds for usage in estimate.jobs):
        options = ("use smaller instance types, a shorter jobs.keep_alive_seconds, or raise "
                   "budget.max_usd_per_run.")
    jobs = [(line, usage) for line in estimate.run for usage in estimate.jobs
            if line.step == usage.step]
    fixed = sum(line.usd or 0.0 for line in estimate.run if not line.step)
    per_second = sum((line.usd or 0.0) / usage.seconds_limit for line, usage in jobs)
    grace = sum((line.usd or 0.0) / usage.seconds_limit
                * (usage.seconds_limit - usage.max_runtime_seconds) for line, usage in jobs)
    if per_second <= 0:
        return f"To fit: {options}"
    fits = math.floor((limit - fixed - grace) / per_second)
    if fits >= 60:
        return (f"To fit: set jobs.max_runtime_seconds to {fits} or less (each job is then "
                f"stopped there), {options}")
    return (f"To fit: even jobs of a minute would not ({usd(fixed)} of it is not the "
            f"jobs'); {options}")
