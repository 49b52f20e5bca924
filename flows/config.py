"""The pipeline's configuration: one pydantic model, a flow parameter.

Because ``PipelineConfig`` is the flow's parameter, the Prefect UI renders it as
a form; per-environment defaults live in ``deployments/settings/<env>.yaml``.
Unknown keys and out-of-range values are refused before anything runs, with
the path of the bad key, what is allowed, and a guess when a key is misspelt.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sagepipe.tasks.costs import BudgetSettings
from sagepipe.tasks.data import DataRules, DataSettings, Problem
from sagepipe.tasks.datasets import DATASET_NAME, check_dataset_name, dataset_uri_for
from sagepipe.tasks.endpoints import LOCAL_POLL, EndpointSettings
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.gate import (
    ALL_METRICS,
    DEFAULT_METRIC,
    OnSchemaChange,
    gate_metric,
    threshold_problem,
)
from sagepipe.tasks.pricing import PricingSettings
from sagepipe.tasks.runtime import RuntimeSettings
from sagepipe.tasks.stepcode import step_module
from sagepipe.tasks.steps import JobSettings
from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS, StepsSettings, step_dir, step_folders

__all__ = ["PROJECT_SETTINGS", "GateSettings", "PipelineConfig", "SplitSettings", "load_config",
           "settings_path"]

# the example settings shipped in the package (`--env local`, `--env iris`, ...)
SETTINGS_DIR = Path(__file__).parent.parent / "deployments" / "settings"
# a user's project: `sagepipe.yaml` in the folder sagepipe runs in (and
# `sagepipe.<env>.yaml` beside it for other environments), as `sagepipe init` writes them
PROJECT_SETTINGS = "sagepipe.yaml"


class SplitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = Field(42, ge=0)


class GateSettings(BaseModel):
    """Deploy only a model that clears ``threshold`` and beats the live one by ``margin``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str | None = Field(
        None, description="roc_auc, pr_auc, accuracy, f1, log_loss (binary); accuracy, "
        "macro_f1, weighted_f1, log_loss, roc_auc_ovr (multiclass); rmse, mae, r2, mape "
        "(regression). Unset: roc_auc, macro_f1 or r2 by problem type")
    threshold: float | None = Field(
        None, description="absolute bar (a maximum for log_loss, rmse, mae, mape); unset: "
        "a default per metric (none for rmse and mae, which are in the label's units)")
    margin: float = Field(0.001, ge=0, le=1, description="required improvement over the live model")
    approval: Literal["auto", "manual"] = Field(
        "auto", description="manual: pause for a person's approval in the Prefect UI")
    approval_timeout_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)
    on_schema_change: OnSchemaChange = Field(
        "reject", description="when the live model cannot be scored on new data whose columns "
        "or classes changed: reject, or let the threshold alone decide (threshold_only)")

    @model_validator(mode="after")
    def _known_metric(self) -> GateSettings:
        if self.metric is not None and self.metric not in ALL_METRICS:
            guess = difflib.get_close_matches(self.metric, ALL_METRICS, n=1)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            raise ValueError(f"gate.metric {self.metric!r} is not a metric here.{hint} "
                             f"Metrics: {', '.join(ALL_METRICS)}")
        if self.threshold is not None:
            # unset metric: the default of whichever problem the data turns out to be
            for metric in [self.metric] if self.metric else list(DEFAULT_METRIC.values()):
                problem = threshold_problem(metric, self.threshold)
                if problem:
                    raise ValueError(problem)
        return self

    def resolve(self, problem: str) -> tuple[str, float]:
        """(metric, threshold) for the problem type; ConfigError if they do not fit it."""
        try:
            return gate_metric(problem, self.metric, self.threshold)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


class NotificationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topic_arn: str | None = Field(None, description="SNS topic; the local runtime makes one")


class TriggerSettings(BaseModel):
    """What starts a run besides a push or a person: a new version of the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_data: bool = Field(True, description="a new dataset version (S3 Object Created under "
                          "datasets/, or `sagepipe data push`) starts a run of the deployment "
                          "on exactly that version; false: new data waits for the next run")
    quiet_seconds: float = Field(
        60.0, ge=0, le=3600, description="a multi-file upload: the run starts once no new "
        "object has arrived for this long, on all of them")
    max_wait_seconds: float = Field(
        900.0, ge=0, le=24 * 3600, description="an upload that never goes quiet: the run "
        "starts on what arrived by then")


def _default_hyperparameters() -> dict[str, str | int | float | bool | None]:
    return {"model": "hist_gradient_boosting"}


class PipelineConfig(BaseModel):
    """Everything a run needs. Defaults run the example on the local runtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field("sagepipe-demo", pattern=r"^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$",
                         description="names the model package group, images and jobs")
    runtime: RuntimeSettings = RuntimeSettings()
    dataset_uri: str = Field("s3://sagepipe-local/datasets/breast-cancer/data.csv",
                             pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    dataset: str | None = Field(
        None, pattern=f"^{DATASET_NAME.pattern}$",
        description="a data set by name (`sagepipe data list`): dataset_uri with NAME as its "
        "folder, e.g. s3://<bucket>/datasets/NAME/data.csv; unset: dataset_uri as given")
    artifacts_uri: str = Field("s3://sagepipe-local/pipeline",
                               pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    label_column: str = Field("target", min_length=1)
    problem: Problem = Field("auto", description="auto: inferred from the label (text or a "
                             "few distinct values: classes; many numbers: regression)")
    data: DataSettings = DataSettings()
    containers_dir: str | None = Field(
        None, description="folder with one folder per step (preprocess, train, evaluate, "
        "serve); unset: sagepipe's default step code")
    steps: StepsSettings = Field(
        StepsSettings(), description="per step: your own code (source folder, entry_point, "
        "requirements); a step without source runs the one in containers_dir")
    image_repository_prefix: str = Field("sagepipe", pattern=r"^[a-z0-9][a-z0-9._/-]*$")
    build_project: str = Field("sagepipe-images", description="CodeBuild project for images")
    split: SplitSettings = SplitSettings()
    hyperparameters: dict[str, str | int | float | bool | None] = Field(
        default_factory=_default_hyperparameters,
        description="model (linear, random_forest, hist_gradient_boosting, xgboost) and its "
        "parameters; passed to the training script (SageMaker sends them as strings)")
    jobs: JobSettings = JobSettings()
    gate: GateSettings = GateSettings()
    endpoint: EndpointSettings = EndpointSettings()
    notifications: NotificationSettings = NotificationSettings()
    triggers: TriggerSettings = TriggerSettings()
    # cost: what the estimate assumes, and the limits a run must fit (flows/estimate.py)
    pricing: PricingSettings = Field(
        PricingSettings(), description="price overrides by key and the usage the estimate "
        "assumes; the defaults are us-east-1 list prices (`sagepipe plan` cites each)")
    budget: BudgetSettings = Field(
        BudgetSettings(), description="max_usd_per_run, max_usd_per_month_live: a run over "
        "either is refused before anything is created")

    @model_validator(mode="before")
    @classmethod
    def _named_dataset(cls, data: Any) -> Any:
        """``dataset: NAME`` becomes ``dataset_uri``: the flow, tasks and records see the one
        URI, and a config that went through this once resolves to the same again."""
        if not isinstance(data, dict) or data.get("dataset") is None:
            return data
        try:
            name = check_dataset_name(data["dataset"])
        except ConfigError as exc:
            raise ValueError(f"dataset: {exc}") from None
        uri = data.get("dataset_uri", cls.model_fields["dataset_uri"].default)
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            return data  # the dataset_uri field reports it
        return {**data, "dataset_uri": dataset_uri_for(uri, name)}

    @model_validator(mode="before")
    @classmethod
    def _local_endpoint_polls(cls, data: Any) -> Any:
        """On the local runtime, endpoint polls left unset are LOCAL_POLL's, not AWS's."""
        if not isinstance(data, dict):
            return data
        runtime = data.get("runtime")
        if isinstance(runtime, RuntimeSettings):
            kind = runtime.kind
        elif runtime is None or isinstance(runtime, dict):
            kind = (runtime or {}).get("kind", RuntimeSettings.model_fields["kind"].default)
        else:
            return data  # not settings at all: the runtime field reports it
        endpoint = data.get("endpoint")
        if kind != "local":
            return data
        if isinstance(endpoint, EndpointSettings):
            unset = {k: v for k, v in LOCAL_POLL.items() if k not in endpoint.model_fields_set}
            return {**data, "endpoint": endpoint.model_copy(update=unset)} if unset else data
        if endpoint is None or isinstance(endpoint, dict):
            return {**data, "endpoint": {**LOCAL_POLL, **(endpoint or {})}}
        return data  # not settings at all: the endpoint field reports it

    @model_validator(mode="after")
    def _checks(self) -> PipelineConfig:
        if self.split.validation_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split.validation_fraction + split.test_fraction must leave at "
                             "least 20% of the rows for training")
        problem = None if self.problem == "auto" else self.problem
        try:  # ValueError: pydantic reports it with the other errors, Prefect refuses the run
            if problem:
                self.gate.resolve(problem)
            self.check_hyperparameters(problem)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def check_hyperparameters(self, problem: str | None) -> dict[str, Any] | None:
        """The train step's own check of ``hyperparameters`` (its hyperparameters.py), for a
        problem type or (None) what can be checked before the data is known."""
        rules = step_module(self.step_dir("train"), "hyperparameters")
        if rules is None:
            return None
        try:
            resolved: dict[str, Any] = rules.resolve(dict(self.hyperparameters), problem)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return resolved

    def settings_for(self, problem: str, *, exact: bool) -> tuple[str, float]:
        """The gate's (metric, threshold) for the problem, hyperparameters checked for it.

        Not ``exact`` (binary or multiclass from a sample's classes): settings that fit
        either are fine, the whole dataset decides later.
        """
        candidates = [problem] if exact or problem == "regression" else ["binary", "multiclass"]
        errors: list[ConfigError] = []
        for candidate in candidates:
            try:
                self.check_hyperparameters(candidate)
                return self.gate.resolve(candidate)
            except ConfigError as exc:
                errors.append(exc)
        how = "inferred from the data" if self.problem == "auto" else "configured"
        raise ConfigError(f"The settings do not fit this {problem} problem ({how}): "
                          f"{errors[0]} To override the problem type, set problem: binary, "
                          "multiclass or regression.")

    def data_rules(self) -> DataRules:
        return DataRules(label_column=self.label_column, problem=self.problem, data=self.data,
                         validation_fraction=self.split.validation_fraction,
                         test_fraction=self.split.test_fraction,
                         step_dir=str(self.step_dir("preprocess")), dataset=self.dataset)

    @property
    def model_package_group(self) -> str:
        return self.project

    @property
    def containers_path(self) -> Path:
        """Relative paths in settings are relative to the folder sagepipe runs in."""
        return Path(self.containers_dir) if self.containers_dir else DEFAULT_CONTAINERS

    def step_dir(self, step: str) -> Path:
        """The folder of the step's code whose check modules sagepipe runs before any job."""
        return step_dir(self.steps, self.containers_path, step)

    def step_folders(self) -> dict[str, Path]:
        """{step: the folder its image is made of}; user code is bundled under state_dir."""
        folders = step_folders(self.steps, self.containers_path,
                               Path(self.runtime.state_dir) / "step-code")
        # AWS: "Isolates the training container. No inbound or outbound network calls can be
        # made" (EnableNetworkIsolation, SageMaker API reference), and a framework image
        # pip-installs the archive's requirements.txt when the job starts
        blocked = [step for step in self.steps.framework_steps()
                   if step != "serve" and (folders[step] / "requirements.txt").is_file()]
        if blocked and self.jobs.network_isolation:
            raise ConfigError(
                f"steps {', '.join(blocked)}: on image: framework the job installs "
                "requirements.txt when it starts, which needs the network, and "
                "jobs.network_isolation is true (an isolated SageMaker job has no network "
                "access). Use the framework image's own libraries (no requirements.txt in "
                "the step's folder), set jobs.network_isolation: false, or use image: build.")
        return folders

    def instance_types(self) -> dict[str, str]:
        """The instance type each step runs on (a framework image is chosen for it)."""
        return {"preprocess": self.jobs.processing_instance_type,
                "train": self.jobs.training_instance_type,
                "evaluate": self.jobs.processing_instance_type,
                "serve": self.endpoint.instance_type}

    def check_steps(self) -> None:
        """ConfigError when a step's code folder, entry point or requirements are missing,
        or cannot work as configured."""
        self.step_folders()


def settings_path(env: str | None = None) -> Path:
    """The settings file for ``env``: a YAML path, the project's own, or a packaged one.

    No env: ``./sagepipe.yaml`` if this folder is a sagepipe project, else the packaged
    ``local``. A name: ``./sagepipe.<name>.yaml`` if it exists, else the packaged one.
    """
    if env is not None and (Path(env).suffix in (".yaml", ".yml") or "/" in env):
        return Path(env)
    if env is None:
        own = Path(PROJECT_SETTINGS)
        if own.is_file():
            return own
        above = next((d for d in Path.cwd().resolve().parents
                      if (d / PROJECT_SETTINGS).is_file()), None)
        signs = [name for name in ("steps/train", *sorted(p.name for p in Path.cwd().glob(
                     "sagepipe.*.yaml"))) if Path(name).exists()]
        if signs:  # a project (sagepipe init's files) whose settings are gone
            raise ConfigError(f"This folder has no {PROJECT_SETTINGS}, but it looks like a "
                              f"sagepipe project ({', '.join(signs)}): restore it (`sagepipe "
                              f"init` writes a new one and overwrites nothing), or name "
                              "settings with --env. Without it, sagepipe would use its example "
                              "settings, another project's.")
        if above is not None:  # not the example's settings by surprise, in a subfolder
            raise ConfigError(f"This folder is inside the sagepipe project {above}: run "
                              f"sagepipe there (cd {above}). Its settings' relative paths "
                              "(runtime.state_dir, steps.<step>.source) mean folders in "
                              "the folder sagepipe runs in, so from here they would find "
                              "no runs, endpoints or code.")
        return SETTINGS_DIR / "local.yaml"
    own = Path(f"sagepipe.{env}.yaml")
    return own if own.is_file() else SETTINGS_DIR / f"{env}.yaml"


def _describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            parent: Any = PipelineConfig
            for part in error["loc"][:-1]:
                field = parent.model_fields.get(str(part)) if hasattr(parent, "model_fields") \
                    else None
                parent = field.annotation if field is not None else None
                # an optional section (``ServerlessSettings | None``): the model in it
                parent = next((a for a in typing.get_args(parent)
                               if hasattr(a, "model_fields")), parent)
            known = list(parent.model_fields) if hasattr(parent, "model_fields") else []
            guess = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            lines.append(f"- unknown key {where!r}.{hint} Known keys here: "
                         f"{', '.join(known)}")
        elif error["type"] == "value_error":  # our own checks: the message says it all
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"- {where}: {message}" if error["loc"] else f"- {message}")
        else:
            lines.append(f"- {where}: {error['msg']} (got {error.get('input')!r})")
    return f"Invalid pipeline config in {source}:\n" + "\n".join(lines)


def build_config(data: dict[str, Any], source: str = "the given values") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, source)) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _SettingsLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps
    the last silently: a second ``gate:`` block would drop the first's settings)."""


def _unique_mapping(loader: _SettingsLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, not repeats
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                f"in the mapping starting on line {node.start_mark.line + 1}", None,
                f"the key {key!r} is given twice (lines {seen[key]} and "
                f"{key_node.start_mark.line + 1}): the second would replace the first; "
                "merge them into one", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_SettingsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(env_or_path: str | None = None, overrides: dict[str, Any] | None = None
                ) -> PipelineConfig:
    """Settings file (see :func:`settings_path`) plus overrides."""
    path = settings_path(env_or_path)
    if not path.exists():
        known = sorted(p.stem for p in SETTINGS_DIR.glob("*.yaml"))
        own = sorted(p.name for p in Path.cwd().glob("sagepipe*.yaml"))
        named = env_or_path is not None and path.parent == SETTINGS_DIR
        what = (f"No settings named {env_or_path!r}: no ./sagepipe.{env_or_path}.yaml here, "
                f"and no example of that name" if named else f"No settings file {path}")
        raise ConfigError(f"{what}. Examples shipped with sagepipe: "
                          f"{', '.join(known)}"
                          + (f"; this project's: {', '.join(own)}" if own else
                             f"; no {PROJECT_SETTINGS} here (`sagepipe init` writes one)")
                          + "; or give the path of a YAML file.")
    try:
        data = yaml.load(path.read_text(), Loader=_SettingsLoader) or {}  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return build_config(_merge(data, overrides or {}), str(path))
