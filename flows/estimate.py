"""A run's cost from its settings: the estimate `sagepipe plan` prints and every run records,
the budget check made before anything is created, and what the run measured.

The jobs are priced from the same fields their requests carry (instance type and count,
volume, ``MaxRuntimeInSeconds``); ``tests/unit/test_costs.py`` holds the two together.
What a run leaves live is a list of :class:`~sagepipe.tasks.costs.EndpointShape`: real-time
instances at rest (an autoscaled production variant: its ``min_instances``), or a serverless
variant; :func:`endpoint_shapes` is the one place that reads the endpoint settings for it.
A training warm pool (``jobs.keep_alive_seconds``) is part of the run: priced at its whole
keep-alive in the upper bound, at its retained seconds in what the run measured.
"""

from __future__ import annotations

import math
from typing import Any

from sagepipe.flows.config import PipelineConfig
from sagepipe.tasks.costs import (
    CostLine,
    EndpointShape,
    Estimate,
    JobUsage,
    ServerlessShape,
    build_line,
    check_budget,
    deploy_line,
    endpoint_monthly,
    job_actual,
    job_line,
    requests_line,
    usd,
    warm_pool_actual,
    warm_pool_line,
)
from sagepipe.tasks.endpoints import EndpointSettings
from sagepipe.tasks.pricing import PriceBook, PriceMissing
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import list_run_records

__all__ = ["budget_check", "endpoint_shapes", "job_usages", "last_run_seconds",
           "measured_cost", "measured_text", "run_estimate"]

JOB_STEPS = ("preprocess", "train", "evaluate")
IMAGE_STEPS = ("preprocess", "train", "evaluate", "serve")


def job_usages(config: PipelineConfig) -> list[JobUsage]:
    """The three jobs as their requests will ask for them (tasks/steps.py builds those)."""
    jobs = config.jobs

    def usage(step: str) -> JobUsage:
        training = step == "train"
        return JobUsage(step=step, kind="training" if training else "processing",
                        instance_type=jobs.training_instance_type if training
                        else jobs.processing_instance_type,
                        instance_count=jobs.instance_count, volume_gb=jobs.volume_size_gb,
                        max_runtime_seconds=jobs.max_runtime_seconds,
                        spot=training and jobs.spot,
                        keep_alive_seconds=jobs.keep_alive_seconds if training else 0)
    return [usage(step) for step in JOB_STEPS]


def endpoint_shapes(config: PipelineConfig) -> list[EndpointShape]:
    """The endpoints a run leaves live and what each keeps running at rest: a serverless
    variant (``endpoint.serverless``), an autoscaled one's ``min_instances`` (production
    only: staging is never autoscaled), else ``instance_count``. ``endpoint.staging_keep:
    false`` deletes the staging endpoint once production serves the new model."""
    endpoint = config.endpoint

    def shape(settings: EndpointSettings, role: str) -> EndpointShape:
        if settings.serverless is not None:
            serverless = settings.serverless
            return EndpointShape(settings.name, role, serverless=ServerlessShape(
                memory_mb=serverless.memory_mb, max_concurrency=serverless.max_concurrency,
                provisioned_concurrency=serverless.provisioned_concurrency))
        if settings.autoscaling is not None:
            return EndpointShape(settings.name, role, settings.instance_type,
                                 settings.autoscaling.min_instances,
                                 why="autoscaling's min_instances at rest")
        return EndpointShape(settings.name, role, settings.instance_type,
                             settings.instance_count)

    shapes = [shape(endpoint, "production")]
    if endpoint.staging_name and endpoint.staging_keep:
        shapes.insert(0, shape(endpoint.for_staging(), "staging"))
    return shapes


def _deploy_lines(config: PipelineConfig, book: PriceBook) -> list[CostLine]:
    """Each deploy's blue/green overlap (a serverless variant has no fleet). An autoscaled
    production variant keeps the count autoscaling reached through an update
    (RetainAllVariantProperties): up to max_instances."""
    endpoint = config.endpoint
    if endpoint.serverless is not None:
        return []
    staging = [endpoint.for_staging()] if endpoint.staging_name else []
    lines = []
    for settings in [*staging, endpoint]:
        count, why = settings.instance_count, ""
        if settings.autoscaling is not None:
            count = max(count, settings.autoscaling.max_instances)
            why = "autoscaling's max_instances, kept through an update"
        lines.append(deploy_line(settings.name, settings.instance_type, count,
                                 settings.timeout_seconds, book, why))
    return lines


def run_estimate(config: PipelineConfig, last: dict[str, float] | None = None,
                 last_from: str = "") -> Estimate:
    """Upper bound of a run of ``config`` (and at ``last``: step -> seconds of the last run),
    and what it leaves live a month."""
    book = PriceBook(config.pricing)
    usages = job_usages(config)
    run = [job_line(u, book, config.pricing, (last or {}).get(u.step)) for u in usages]
    frameworks = config.steps.framework_steps()
    built = [step for step in IMAGE_STEPS if step not in frameworks]
    run += [line for line in (warm_pool_line(u, book) for u in usages) if line is not None]
    if built:
        run.append(build_line(book, config.pricing, built))
    run += _deploy_lines(config, book)
    run.append(requests_line(book, config.pricing))
    live = [endpoint_monthly(shape, book, config.pricing) for shape in endpoint_shapes(config)]
    notes = []
    if config.runtime.kind == "local":
        notes.append("the local runtime bills nothing: this is what the same run would cost "
                     "on AWS")
    if config.runtime.region != config.pricing.region:
        notes.append(f"the prices are for {config.pricing.region}, the runtime's region is "
                     f"{config.runtime.region}: set pricing.region and that region's prices "
                     "(pricing.prices)")
    if last:
        notes.append(f"last run's durations: {last_from}")
    elif last_from:
        notes.append(f"no last run's durations: {last_from}")
    return Estimate(run=run, live=live, jobs=usages,
                    prices=[book.used[key].cite() for key in sorted(book.used)], notes=notes)


def last_run_seconds(config: PipelineConfig, *, limit: int = 10) -> tuple[dict[str, float], str]:
    """(step -> seconds each job last took, which runs they came from), newest first; empty
    with the reason when the run records cannot be read (e.g. no AWS credentials)."""
    try:
        records = list_run_records(get_clients(config.runtime), config.artifacts_uri, limit)
    except Exception as exc:  # history is a nicety: the estimate stands without it
        return {}, f"the run records could not be read ({type(exc).__name__}: {exc})"
    found: dict[str, float] = {}
    runs: list[str] = []
    for record in records:
        for step, info in (record.get("steps") or {}).items():
            seconds = info.get("billable_seconds") or info.get("seconds")
            if step in JOB_STEPS and step not in found and seconds:
                found[step] = float(seconds)
                name = str(record.get("run_name") or record.get("run_id"))
                runs += [name] if name not in runs else []
    if not found:
        return {}, "no run has recorded a job's duration yet"
    return found, "run " + ", ".join(runs)


def budget_check(config: PipelineConfig, estimate: Estimate) -> None:
    """OverBudget before anything is created (see :func:`sagepipe.tasks.costs.check_budget`)."""
    check_budget(estimate, config.budget)


def measured_cost(config: PipelineConfig, record: dict[str, Any]) -> dict[str, Any]:
    """What the run's jobs and image build cost, from the billable seconds the run recorded
    (list prices: an estimate of the bill, not the bill)."""
    book = PriceBook(config.pricing)
    jobs, pools = [], []
    for usage in job_usages(config):
        step = (record.get("steps") or {}).get(usage.step)
        if not step:
            continue
        how = step.get("how") or step.get("status", "")
        jobs.append(job_actual(usage, how=how, seconds=step.get("billable_seconds"),
                               source=step.get("billing") or "", book=book,
                               pricing=config.pricing,
                               training_seconds=step.get("training_seconds")))
        if usage.keep_alive_seconds and ("warm_pool" in step or how in ("cached", "reused")):
            pools.append(warm_pool_actual(usage, how=how, status=step.get("warm_pool"),
                                          retained_seconds=step.get("warm_pool_seconds"),
                                          book=book))
    measured: dict[str, Any] = {"label": "list prices x measured seconds", "jobs": jobs}
    if pools:
        measured["warm_pools"] = pools
    builds = [image.get("build_seconds") for image in (record.get("images") or {}).values()
              if image.get("built") and image.get("build_seconds") is not None]
    if builds:
        minutes = math.ceil(max(builds) / 60)  # one build makes every missing image
        compute = config.pricing.build_compute_type
        try:
            per_minute = book.price(f"codebuild/{compute}", f"CodeBuild {compute}")
            measured["build"] = {"minutes": minutes, "usd": round(minutes * per_minute, 6)}
        except PriceMissing as exc:
            measured["build"] = {"minutes": minutes, "usd": None, "how": str(exc)}
    costs = ([j["usd"] for j in jobs] + [p["usd"] for p in pools]
             + [measured.get("build", {}).get("usd", 0.0)])
    measured["total_usd"] = None if None in costs else round(sum(costs), 8)
    measured["not_measured"] = ("the blue/green overlap of a deploy, S3 requests and log "
                                "ingestion (in the estimate as allowances)")
    return measured


def measured_text(measured: dict[str, Any]) -> str:
    """One line: the measured total, each job's billable seconds and the build's minutes."""
    def seconds(job: dict[str, Any]) -> str:
        if "nothing billed" in str(job.get("how")):
            return f"{job['step']} {str(job['how']).split(':')[0]}"  # cached, reused
        billed = job.get("billable_seconds")
        return f"{job['step']} {billed:.1f} s" if isinstance(billed, int | float) else \
            f"{job['step']} ?"
    parts = [seconds(job) for job in measured.get("jobs", [])]
    parts += [f"{pool['item']} {pool['retained_seconds']:.0f} s"
              for pool in measured.get("warm_pools", [])
              if isinstance(pool.get("retained_seconds"), int | float)
              and "nothing billed" not in str(pool.get("how"))]
    if measured.get("build"):
        parts.append(f"image build {measured['build']['minutes']} min")
    return f"{usd(measured.get('total_usd'))} ({', '.join(parts) or 'nothing ran'})"
