"""The deployment gate: an absolute threshold, then the live model to beat.

Pure logic over ``evaluation.json``: both models were scored by the same evaluation job on
the same pinned test split, so the comparison is fair. Which metrics exist, which way is
better and what a sensible default bar is depends on the problem type; :func:`gate_metric`
resolves ``gate.metric`` and ``gate.threshold`` for one, with a message that names the
metrics that fit when they do not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["ALL_METRICS", "LOWER_IS_BETTER", "PROBLEM_METRICS", "GateDecision", "decide",
           "gate_metric", "threshold_problem"]

PROBLEM_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss"),
    "multiclass": ("accuracy", "macro_f1", "weighted_f1", "log_loss", "roc_auc_ovr"),
    "regression": ("rmse", "mae", "r2", "mape"),
}
ALL_METRICS = tuple(dict.fromkeys(m for ms in PROBLEM_METRICS.values() for m in ms))
LOWER_IS_BETTER = {"log_loss", "rmse", "mae", "mape"}
UNIT_INTERVAL = {"roc_auc", "pr_auc", "accuracy", "f1", "macro_f1", "weighted_f1",
                 "roc_auc_ovr"}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "macro_f1", "regression": "r2"}
# a first bar for a model worth serving; rmse and mae are in the label's units: no default
DEFAULT_THRESHOLD = {"roc_auc": 0.9, "roc_auc_ovr": 0.9, "pr_auc": 0.8, "accuracy": 0.8,
                     "f1": 0.8, "macro_f1": 0.8, "weighted_f1": 0.8, "log_loss": 0.5,
                     "r2": 0.7, "mape": 0.2}
OnSchemaChange = Literal["reject", "threshold_only"]


def threshold_problem(metric: str, threshold: float) -> str | None:
    """Why ``threshold`` cannot be a bar for ``metric``, or None."""
    if metric in UNIT_INTERVAL and not 0 <= threshold <= 1:
        return f"gate.threshold {threshold} is out of range for {metric}, which lies in [0, 1]"
    if metric == "r2" and threshold > 1:
        return f"gate.threshold {threshold} is out of range for r2, which is at most 1"
    if metric in LOWER_IS_BETTER and threshold < 0:
        return f"gate.threshold {threshold} is out of range for {metric}, which is at least 0"
    return None


def gate_metric(problem: str, metric: str | None, threshold: float | None) -> tuple[str, float]:
    """(metric, threshold) for ``problem``: the configured ones checked, or its defaults.

    Raises ValueError with the metrics that fit the problem.
    """
    fitting = PROBLEM_METRICS[problem]
    chosen = metric or DEFAULT_METRIC[problem]
    if chosen not in fitting:
        others = [p for p, ms in PROBLEM_METRICS.items() if chosen in ms]
        raise ValueError(f"gate.metric {chosen} is a metric of {' and '.join(others)} "
                         f"problems, but this one is {problem}: use one of "
                         f"{', '.join(fitting)} (or leave gate.metric unset for "
                         f"{DEFAULT_METRIC[problem]}).")
    if threshold is None:
        if chosen not in DEFAULT_THRESHOLD:
            raise ValueError(f"gate.metric {chosen} is in the label's own units, so it has no "
                             "default bar: set gate.threshold (the largest acceptable "
                             f"{chosen}).")
        threshold = DEFAULT_THRESHOLD[chosen]
    problem_text = threshold_problem(chosen, threshold)
    if problem_text:
        raise ValueError(problem_text)
    return chosen, threshold


class GateDecision(BaseModel):
    passed: bool
    metric: str
    threshold: float
    margin: float
    challenger: float | None
    champion: float | None
    reasons: list[str]

    @property
    def summary(self) -> str:
        return ("deploy: " if self.passed else "reject: ") + "; ".join(self.reasons)


def _value(scores: dict[str, Any] | None, metric: str) -> float | None:
    value = (scores or {}).get(metric)
    return None if value is None else float(value)


def decide(evaluation: dict[str, Any], *, metric: str, threshold: float, margin: float,
           has_champion: bool, on_schema_change: OnSchemaChange = "reject") -> GateDecision:
    lower = metric in LOWER_IS_BETTER
    challenger = _value(evaluation["challenger"], metric)
    champion = _value(evaluation.get("champion"), metric)
    reasons: list[str] = []
    passed = True
    word = "at most" if lower else "at least"
    if challenger is None:
        passed = False
        reasons.append(f"{metric} is undefined on this test split (a class is missing from "
                       "it?); choose another gate.metric or use more data")
    elif challenger <= threshold if lower else challenger >= threshold:
        reasons.append(f"{metric} {challenger:.4f} clears the threshold ({word} {threshold})")
    else:
        passed = False
        reasons.append(f"{metric} {challenger:.4f} misses the threshold ({word} {threshold})")
    change = evaluation.get("schema_change") or {}
    if has_champion and change and not change.get("comparable", True):
        if on_schema_change == "threshold_only":
            reasons.append(f"the data's schema changed ({change.get('summary')}), so the live "
                           "model cannot be scored on it: judged on the threshold alone "
                           "(gate.on_schema_change: threshold_only)")
        else:
            passed = False
            reasons.append(f"the data's schema changed ({change.get('summary')}), so the live "
                           "model cannot be scored on the new test split and the new model "
                           "cannot be shown to be better; if the change is intended, set "
                           "gate.on_schema_change: threshold_only to let the threshold alone "
                           "decide, or deploy it by hand")
    elif has_champion and champion is None:
        passed = False
        reasons.append("the live model could not be scored on this test split ("
                       f"{evaluation.get('champion_error') or 'no scores'}), so the new model "
                       "cannot be shown to be better; deploy it by hand if intended")
    elif champion is not None and challenger is not None:
        improvement = (champion - challenger) if lower else (challenger - champion)
        if improvement >= margin:
            reasons.append(f"beats the live model ({champion:.4f}) by {improvement:+.4f}, "
                           f"margin {margin}")
        else:
            passed = False
            reasons.append(f"does not beat the live model ({champion:.4f}) by the margin "
                           f"{margin}: difference {improvement:+.4f}")
    elif champion is None and not has_champion:
        reasons.append("no live model yet: the threshold alone decides")
    return GateDecision(passed=passed, metric=metric, threshold=threshold, margin=margin,
                        challenger=challenger, champion=champion, reasons=reasons)
