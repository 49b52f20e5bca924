"""Prefect tasks: one module per AWS concern, plus the runtime seam (``local/``).

The public API: what your own Prefect flow composes (``sagepipe init`` writes an example,
``two_models.py``). Each name is importable from ``sagepipe.tasks``; the modules load
on first use, so ``import sagepipe.tasks`` stays cheap.

Clients and settings
    ``get_clients(runtime)``, ``RuntimeSettings`` (local or aws), ``JobSettings``,
    ``EndpointSettings`` (with ``AutoscalingSettings``)
Data
    ``pin_data(runtime, dataset_uri, artifacts_uri, rules) -> DataPin`` (task): exact S3
    versions, checked and snapshotted
Images
    ``build_images(runtime, {step: folder}, prefix, build_project, artifacts_uri)`` (task)
    ``-> {step: ImageRef}``: by content hash and digest; only missing ones are built
Jobs
    ``plan_preprocess`` / ``plan_train`` / ``plan_evaluate`` ``-> JobPlan``: the SageMaker
    request with its deterministic name; ``run_step(runtime, plan, settings, tags)``
    (task) ``-> JobOutcome``: runs it, re-attaches after a retry, streams its log,
    honours the timeout, cached on content
Gate and registry
    ``get_champion(runtime, endpoint) -> Champion | None`` (task), ``decide(evaluation,
    metric=..., threshold=..., margin=..., has_champion=...) -> GateDecision``,
    ``LOWER_IS_BETTER``, ``register_model(...)`` (task) ``-> package ARN``
Deploy and notify
    ``deploy_model(runtime, settings, package_arn, role_arn, smoke_payload, tags)`` (task)
    ``-> DeployResult``: blue/green, verified, smoke-tested; ``notify(...)`` (task)
Storage helpers
    ``read_json(clients, uri)``, ``sample_rows(clients, split_uri, label_column)``
Errors
    ``PipelineError`` and its subclasses (``sagepipe.tasks.errors``)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data import DataPin, pin_data
    from .endpoints import DeployResult, EndpointSettings, deploy_model
    from .errors import PipelineError
    from .gate import LOWER_IS_BETTER, GateDecision, decide
    from .images import ImageRef, build_images
    from .notify import notify
    from .registry import Champion, get_champion, register_model
    from .runtime import RuntimeSettings, get_clients
    from .scaling import AutoscalingSettings
    from .steps import (
        JobOutcome,
        JobPlan,
        JobSettings,
        plan_evaluate,
        plan_preprocess,
        plan_train,
        run_step,
    )
    from .storage import read_json, sample_rows

_WHERE = {
    "DataPin": "data", "pin_data": "data",
    "DeployResult": "endpoints", "EndpointSettings": "endpoints", "deploy_model": "endpoints",
    "PipelineError": "errors",
    "LOWER_IS_BETTER": "gate", "GateDecision": "gate", "decide": "gate",
    "ImageRef": "images", "build_images": "images",
    "notify": "notify",
    "Champion": "registry", "get_champion": "registry", "register_model": "registry",
    "RuntimeSettings": "runtime", "get_clients": "runtime",
    "AutoscalingSettings": "scaling",
    "JobOutcome": "steps", "JobPlan": "steps", "JobSettings": "steps",
    "plan_evaluate": "steps", "plan_preprocess": "steps", "plan_train": "steps",
    "run_step": "steps",
    "read_json": "storage", "sample_rows": "storage",
}
__all__ = [
    "LOWER_IS_BETTER",
    "AutoscalingSettings",
    "Champion",
    "DataPin",
    "DeployResult",
    "EndpointSettings",
    "GateDecision",
    "ImageRef",
    "JobOutcome",
    "JobPlan",
    "JobSettings",
    "PipelineError",
    "RuntimeSettings",
    "build_images",
    "decide",
    "deploy_model",
    "get_champion",
    "get_clients",
    "notify",
    "pin_data",
    "plan_evaluate",
    "plan_preprocess",
    "plan_train",
    "read_json",
    "register_model",
    "run_step",
    "sample_rows",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sagepipe.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
