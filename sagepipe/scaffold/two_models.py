"""Your own Prefect flow from sagepipe's tasks: two candidate models, the better one gated.

Both candidates train in parallel on the same pinned data and split, both are scored
against the live model on the same test split, and only the better one meets the gate,
the registry and the endpoint. Each job keeps what sagepipe's own flow has: a
deterministic name (a retried task re-attaches to its job), its log streamed into the
Prefect log, caching on content (run it twice: the second run trains nothing).

    python two_models.py                       # settings from ./sagepipe.yaml

It runs on the Prefect server ``sagepipe run`` uses (PREFECT_API_URL, else the project's
kept local server): its runs are in the same UI, and a job's end wakes it at once.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from sagepipe.flows.config import PipelineConfig, load_config
from sagepipe.flows.pipeline import run_tags
from sagepipe.tasks import (
    LOWER_IS_BETTER,
    build_images,
    decide,
    deploy_model,
    get_champion,
    get_clients,
    pin_data,
    plan_evaluate,
    plan_preprocess,
    plan_train,
    read_json,
    register_model,
    run_step,
    sample_rows,
)

CANDIDATES: dict[str, dict[str, Any]] = {
    "linear": {"model": "linear"},
    "boosted": {"model": "hist_gradient_boosting", "max_iter": 100},
}


@flow(name="two-models", log_prints=True)
def two_models(config: PipelineConfig | None = None,
               candidates: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train every candidate, deploy the best one if it passes the gate."""
    config = config or load_config()
    candidates = candidates or CANDIDATES
    log = get_run_logger()
    runtime, clients = config.runtime, get_clients(config.runtime)
    # the flow run's id on every job: a job's end event finds this run by it (and wakes
    # its wait at once, instead of at the next jobs.safety_poll_seconds)
    tags = run_tags(flow_run.id, config.project, None)

    pin = pin_data(runtime, config.dataset_uri, config.artifacts_uri, config.data_rules())
    folders = {step: str(path) for step, path in config.step_folders().items()}
    images = build_images(runtime, folders, config.image_repository_prefix,
                          config.build_project, config.artifacts_uri)
    common: dict[str, Any] = {"project": config.project, "runtime": runtime,
                              "artifacts_uri": config.artifacts_uri, "settings": config.jobs}
    pre = run_step(runtime, plan_preprocess(
        **common, pin=pin, image=images["preprocess"], label_column=config.label_column,
        validation_fraction=config.split.validation_fraction,
        test_fraction=config.split.test_fraction, seed=config.split.seed,
        problem=config.problem), config.jobs, tags)
    problem = read_json(clients, pre.outputs["schema"].rstrip("/") + "/schema.json")["problem"]
    metric, threshold = config.settings_for(problem, exact=True)

    # the candidates train at the same time: .submit() returns at once
    futures = {name: run_step.with_options(task_run_name=f"train-{name}").submit(
        runtime, plan_train(**common, splits=pre.outputs, image=images["train"],
                            label_column=config.label_column, hyperparameters=hps),
        config.jobs, tags) for name, hps in candidates.items()}
    trained = {name: future.result() for name, future in futures.items()}

    champion = get_champion(runtime, config.endpoint.name)
    evaluations: dict[str, dict[str, Any]] = {}
    uris: dict[str, str] = {}
    for name, outcome in trained.items():
        evaluated = run_step.with_options(task_run_name=f"evaluate-{name}")(
            runtime, plan_evaluate(**common, model_uri=outcome.outputs["model"],
                                   champion_model_uri=champion.model_data_url if champion
                                   else None, test_uri=pre.outputs["test"],
                                   image=images["evaluate"]), config.jobs, tags)
        uris[name] = evaluated.outputs["evaluation"]
        evaluations[name] = read_json(clients, uris[name])

    def score(name: str) -> float:
        value = evaluations[name]["challenger"].get(metric)
        if value is None:
            return -math.inf
        return -float(value) if metric in LOWER_IS_BETTER else float(value)

    best = max(evaluations, key=score)
    scores = {name: evaluations[name]["challenger"].get(metric) for name in evaluations}
    log.info("Candidates on %s: %s; the better one: %s", metric, scores, best)
    result: dict[str, Any] = {"metric": metric, "scores": scores, "chosen": best}
    model_uri = trained[best].outputs["model"]
    if champion is not None and champion.model_data_url == model_uri:
        return {**result, "outcome": "unchanged"}

    decision = decide(evaluations[best], metric=metric, threshold=threshold,
                      margin=config.gate.margin, has_champion=champion is not None,
                      on_schema_change=config.gate.on_schema_change)
    log.info("Gate: %s", decision.summary)
    package_arn = register_model(
        runtime, group=config.model_package_group, idempotency_key=trained[best].job_name,
        image=images["serve"].uri, model_data_url=model_uri, evaluation_uri=uris[best],
        approval="approved" if decision.passed else "rejected", description=decision.summary,
        metadata={"candidate": best, "training_job": trained[best].job_name},
        instance_type=config.endpoint.instance_type, problem=problem)
    result.update(decision=decision.summary, model_package=package_arn)
    if not decision.passed:
        return {**result, "outcome": "rejected"}
    payload = sample_rows(clients, pre.outputs["test"], config.label_column)
    deployed = deploy_model(runtime, config.endpoint, package_arn, config.jobs.role_arn,
                            payload, tags)
    return {**result, "outcome": "deployed", "endpoint": deployed.endpoint}


if __name__ == "__main__":
    import sys

    from sagepipe.flows.runner import project_prefect_api
    from sagepipe.tasks import PipelineError

    try:
        settings = load_config()
        with project_prefect_api(settings) as api:
            print(f"Prefect UI: {api.ui_url or api.url}", file=sys.stderr)
            print(two_models(settings))
    except PipelineError as exc:  # bad settings or data, no Prefect API, a failed job
        sys.exit(f"{type(exc).__name__}: {exc}")
