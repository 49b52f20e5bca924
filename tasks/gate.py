"""The deployment gate: an absolute threshold, then the live model to beat.

Pure logic over ``evaluation.json``: both models were scored by the same
evaluation job on the same pinned test split, so the comparison is fair.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["LOWER_IS_BETTER", "GateDecision", "decide"]

Metric = Literal["roc_auc", "accuracy", "f1", "log_loss"]
LOWER_IS_BETTER = {"log_loss"}


class GateDecision(BaseModel):
    passed: bool
    metric: str
    threshold: float
    margin: float
    challenger: float
    champion: float | None
    reasons: list[str]

    @property
    def summary(self) -> str:
        return ("deploy: " if self.passed else "reject: ") + "; ".join(self.reasons)


def decide(evaluation: dict[str, Any], *, metric: Metric, threshold: float, margin: float,
           has_champion: bool) -> GateDecision:
    lower = metric in LOWER_IS_BETTER
    challenger = float(evaluation["challenger"][metric])
    champion_scores = evaluation.get("champion")
    champion = float(champion_scores[metric]) if champion_scores else None
    reasons: list[str] = []
    passed = True
    clears = challenger <= threshold if lower else challenger >= threshold
    word = "at most" if lower else "at least"
    if clears:
        reasons.append(f"{metric} {challenger:.4f} clears the threshold ({word} {threshold})")
    else:
        passed = False
        reasons.append(f"{metric} {challenger:.4f} misses the threshold ({word} {threshold})")
    if has_champion and champion is None:
        passed = False
        reasons.append("the live model could not be scored on this test split ("
                       f"{evaluation.get('champion_error') or 'no scores'}), so the new model "
                       "cannot be shown to be better; deploy it by hand if intended")
    elif champion is not None:
        improvement = (champion - challenger) if lower else (challenger - champion)
        if improvement >= margin:
            reasons.append(f"beats the live model ({champion:.4f}) by {improvement:+.4f}, "
                           f"margin {margin}")
        else:
            passed = False
            reasons.append(f"does not beat the live model ({champion:.4f}) by the margin "
                           f"{margin}: difference {improvement:+.4f}")
    else:
        reasons.append("no live model yet: the threshold alone decides")
    return GateDecision(passed=passed, metric=metric, threshold=threshold, margin=margin,
                        challenger=challenger, champion=champion, reasons=reasons)
