"""The training step's hyperparameters: each model, its parameters, their types and ranges.

Standard library only. ``train.py`` resolves its hyperparameters with this module inside
the job; sagepipe loads the same file from the train step's folder to check a config
before any job is created, so a typo costs a second at the terminal, not a failed
training job. A step of the user's own may ship its own ``hyperparameters.py`` with a
``resolve(given, problem)`` function, or none (then only the job checks).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

PROBLEMS = ("binary", "multiclass", "regression")
CLASSIFICATION = ("binary", "multiclass")
DEFAULT_MODEL = "hist_gradient_boosting"
RESERVED = ("model", "label_column", "problem")  # set by the pipeline, not model parameters


class HyperparameterError(ValueError):
    """The hyperparameters cannot train a model; the message lists every problem."""


@dataclass(frozen=True)
class Param:
    kind: type  # int | float
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the value must be above ``low``, not equal to it
    allow_none: bool = False
    problems: tuple[str, ...] = PROBLEMS
    help: str = ""

    def bounds(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        text = " and ".join(p for p in (low, high) if p)
        return text + (" (or null)" if self.allow_none else "")


MODELS: dict[str, dict[str, Param]] = {
    "linear": {
        "C": Param(float, 1.0, 0, None, low_open=True, problems=CLASSIFICATION,
                   help="inverse regularisation strength of the logistic regression"),
        "alpha": Param(float, 1.0, 0, None, problems=("regression",),
                       help="regularisation strength of the ridge regression"),
        "max_iter": Param(int, 1000, 1, 1_000_000),
    },
    "random_forest": {
        "n_estimators": Param(int, 100, 1, 10_000),
        "max_depth": Param(int, None, 1, 1_000, allow_none=True),
        "min_samples_leaf": Param(int, 1, 1, 1_000_000),
    },
    "hist_gradient_boosting": {
        "max_iter": Param(int, 100, 1, 10_000, help="boosting rounds"),
        "learning_rate": Param(float, 0.1, 0, 1, low_open=True),
        "max_depth": Param(int, None, 1, 1_000, allow_none=True),
        "max_leaf_nodes": Param(int, 31, 2, 100_000),
        "min_samples_leaf": Param(int, 20, 1, 1_000_000),
        "l2_regularization": Param(float, 0.0, 0, None),
    },
    "xgboost": {
        "n_estimators": Param(int, 100, 1, 10_000),
        "max_depth": Param(int, 6, 1, 100),
        "learning_rate": Param(float, 0.3, 0, 1, low_open=True),
        "subsample": Param(float, 1.0, 0, 1, low_open=True),
        "colsample_bytree": Param(float, 1.0, 0, 1, low_open=True),
        "min_child_weight": Param(float, 1.0, 0, None),
        "reg_lambda": Param(float, 1.0, 0, None),
    },
}
COMMON: dict[str, Param] = {
    "seed": Param(int, 42, 0, 2**32 - 1),
    "max_categories": Param(int, 50, 2, 1_000,
                            help="categories kept per text column; rarer ones are grouped"),
}
MODEL_ALIASES = {"logistic_regression": "linear", "ridge": "linear",
                 "gradient_boosting": "hist_gradient_boosting"}
PARAM_ALIASES = {"hist_gradient_boosting": {"n_estimators": "max_iter"}}


def decode(value: Any) -> Any:
    """A value as SageMaker stores it ("1.0", "100", "true", '"x"') -> a Python value."""
    if not isinstance(value, str):
        return value
    if value in ("True", "False"):
        return value == "True"
    if value in ("None", "none", "null", ""):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def model_name(given: Any) -> str:
    name = DEFAULT_MODEL if given is None else str(given)
    name = MODEL_ALIASES.get(name, name)
    if name not in MODELS:
        known = list(MODELS) + list(MODEL_ALIASES)
        guess = difflib.get_close_matches(str(given), known, n=1)
        hint = f" Did you mean {guess[0]!r}?" if guess else ""
        raise HyperparameterError(f"Hyperparameter model is {given!r}, which is not a model "
                                  f"here.{hint} Models: {', '.join(MODELS)}.")
    return name


def check_value(name: str, param: Param, value: Any) -> Any:
    """The value converted to the parameter's type, or a one-line reason it is refused."""
    if value is None and param.allow_none:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not math.isfinite(value):
        number = False
    if number and param.kind is int and not float(value).is_integer():
        number = False
    what = "a whole number" if param.kind is int else "a number"
    if not number:
        raise HyperparameterError(f"{name} must be {what} {param.bounds()}; got {value!r}")
    value = param.kind(value)
    too_low = param.low is not None and (value <= param.low if param.low_open
                                         else value < param.low)
    too_high = param.high is not None and value > param.high
    if too_low or too_high:
        raise HyperparameterError(f"{name} must be {what} {param.bounds()}; got {value!r}")
    return value


def resolve(given: dict[str, Any], problem: str | None = None) -> dict[str, Any]:
    """Every parameter of the chosen model, given values checked, defaults filled.

    ``problem`` (binary, multiclass, regression) also checks that each given parameter
    applies to it; None checks what can be checked before the data is known.
    """
    values = {k: decode(v) for k, v in given.items() if not str(k).startswith("sagemaker_")}
    model = model_name(values.get("model"))
    params = {**MODELS[model], **COMMON}
    aliases = PARAM_ALIASES.get(model, {})
    errors: list[str] = []
    out: dict[str, Any] = {"model": model}
    seen: set[str] = set()
    for raw_name, value in values.items():
        if raw_name in RESERVED:
            continue
        name = aliases.get(raw_name, raw_name)
        param = params.get(name)
        if param is None:
            errors.append(unknown(raw_name, model))
            continue
        if name in seen:
            errors.append(f"{raw_name} and {name} are the same parameter of {model}; give one")
            continue
        seen.add(name)
        if problem is not None and problem not in param.problems:
            others = [n for n, p in params.items() if problem in p.problems and n not in COMMON]
            errors.append(f"{raw_name} does not apply to {model} for a {problem} problem "
                          f"(it is for {', '.join(param.problems)}); use "
                          f"{', '.join(others) or 'the defaults'}")
            continue
        try:
            out[name] = check_value(raw_name, param, value)
        except HyperparameterError as e:
            errors.append(str(e))
    if errors:
        raise HyperparameterError("Invalid hyperparameters: " + "; ".join(errors) + ".")
    for name, param in params.items():
        if name not in out and (problem is None or problem in param.problems):
            out[name] = param.default
    return out


def unknown(name: str, model: str) -> str:
    allowed = [*MODELS[model], *COMMON]
    elsewhere = [m for m, ps in MODELS.items() if name in ps and m != model]
    text = f"{name} is not a parameter of {model}"
    if elsewhere:
        text += f" (it belongs to {', '.join(elsewhere)})"
    elif guess := difflib.get_close_matches(name, allowed, n=1):
        text += f" (did you mean {guess[0]!r}?)"
    elif guess := difflib.get_close_matches(
            name, sorted({p for ps in MODELS.values() for p in ps} - set(allowed)), n=1):
        owners = [m for m, ps in MODELS.items() if guess[0] in ps]
        text += f" (did you mean {guess[0]!r}? that is a parameter of {', '.join(owners)})"
    return text + f"; {model} takes {', '.join(allowed)}"
