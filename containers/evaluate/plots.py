"""The pictures people look at before trusting the gate, per problem type.

binary: ROC curves (roc.png) and confusion matrices; multiclass: confusion matrices and the
F1 score of each class (per_class_f1.png); regression: predicted against actual values
(predicted_vs_actual.png) and the residuals (residuals.png). Each model scored (the new
challenger, and the live champion when it could be scored on the same test split) is drawn
in its own colour. curves.json holds the numbers behind the pictures, so a notebook can
re-draw them. Drawn with matplotlib's Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, f1_score, roc_curve

ROLES = {"challenger": ("challenger (new)", "tab:blue"),
         "champion": ("champion (live)", "tab:orange")}
MAX_POINTS = 2000  # points per curve or scatter in curves.json and the pictures
FILES = {"binary": ("roc", "confusion_matrix"),
         "multiclass": ("confusion_matrix", "per_class_f1"),
         "regression": ("predicted_vs_actual", "residuals")}


def thin(*arrays: np.ndarray) -> list[np.ndarray]:
    """Evenly spaced points of equally long arrays, at most MAX_POINTS."""
    if len(arrays[0]) <= MAX_POINTS:
        return list(arrays)
    keep = np.unique(np.linspace(0, len(arrays[0]) - 1, MAX_POINTS).astype(int))
    return [a[keep] for a in arrays]


def curves(problem: str, scored: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The numbers behind the plots, per role (``scored``: role -> Scores)."""
    out: dict[str, Any] = {"problem": problem}
    if problem == "regression":
        out["regression"] = {}
        for role, s in scored.items():
            actual, predicted = thin(s.labels, s.predicted)
            out["regression"][role] = {"actual": np.round(actual, 6).tolist(),
                                       "predicted": np.round(predicted, 6).tolist()}
        return out
    labels = list(range(len(classes)))
    out["confusion_matrix"] = {
        role: {"labels": classes,
               "counts": confusion_matrix(s.labels, s.predicted, labels=labels).tolist()}
        for role, s in scored.items()}
    if problem == "binary":
        out["roc"] = {}
        for role, s in scored.items():
            fpr, tpr, _ = roc_curve(s.labels == 1, s.proba[:, 1])
            fpr, tpr = thin(fpr, tpr)
            out["roc"][role] = {"fpr": np.round(fpr, 5).tolist(),
                                "tpr": np.round(tpr, 5).tolist(), "auc": s.metrics["roc_auc"]}
    else:
        out["per_class_f1"] = {
            role: dict(zip(classes, np.round(f1_score(s.labels, s.predicted, labels=labels,
                                                      average=None, zero_division=0), 5)
                           .tolist(), strict=True))
            for role, s in scored.items()}
    return out


def roc_figure(roc: dict[str, Any], test_rows: int) -> Figure:
    figure = Figure(figsize=(5.6, 4.6), dpi=110, layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for role, curve in roc.items():
        name, color = ROLES[role]
        ax.plot(curve["fpr"], curve["tpr"], color=color, linewidth=2,
                label=f"{name}: AUC {curve['auc']:.4f}")
    # a little room past 0 and 1: a perfect model's curve runs along the axes
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), xlabel="false positive rate",
           ylabel="true positive rate", title=f"ROC on the same test split ({test_rows} rows)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return figure


def confusion_figure(matrices: dict[str, Any]) -> Figure:
    size = len(next(iter(matrices.values()))["labels"])
    side = min(4.0 + 0.35 * max(size - 2, 0), 9.0)
    figure = Figure(figsize=(side * len(matrices) + 0.2, side), dpi=110, layout="constrained")
    for ax, (role, matrix) in zip(np.atleast_1d(figure.subplots(1, len(matrices))),
                                  matrices.items(), strict=True):
        counts = np.asarray(matrix["counts"])
        ax.imshow(counts, cmap="Blues", vmin=0)
        labels = matrix["labels"]
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted",
               ylabel="actual", title=ROLES[role][0])
        ax.set_xticklabels(labels, rotation=45 if size > 4 else 0, ha="right" if size > 4
                           else "center")
        ax.set_yticklabels(labels)
        if size <= 15:  # beyond that the numbers do not fit: the colours tell
            for (i, j), n in np.ndenumerate(counts):
                ax.text(j, i, str(n), ha="center", va="center", fontsize=13 if size < 6 else 8,
                        color="white" if n > counts.max() / 2 else "black")
    figure.suptitle("Confusion matrix on the test split")
    return figure


def per_class_figure(per_class: dict[str, dict[str, float]]) -> Figure:
    classes = list(next(iter(per_class.values())))
    figure = Figure(figsize=(min(4.0 + 0.5 * len(classes), 12.0), 4.0), dpi=110,
                    layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(per_class)
    for k, (role, scores) in enumerate(per_class.items()):
        name, color = ROLES[role]
        ax.bar(np.arange(len(classes)) + k * width, [scores[c] for c in classes], width,
               color=color, label=name)
    ax.set_xticks(np.arange(len(classes)) + width * (len(per_class) - 1) / 2)
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 4 else 0,
                       ha="right" if len(classes) > 4 else "center")
    ax.set(ylim=(0, 1.05), ylabel="F1", title="F1 score of each class on the test split")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return figure


def scatter_figure(points: dict[str, Any], test_rows: int) -> Figure:
    figure = Figure(figsize=(5.6, 4.8), dpi=110, layout="constrained")
    ax = figure.subplots()
    everything = np.concatenate([np.r_[p["actual"], p["predicted"]] for p in points.values()])
    low, high = float(everything.min()), float(everything.max())
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1,
            label="perfect")
    for role, p in points.items():
        name, color = ROLES[role]
        ax.scatter(p["actual"], p["predicted"], s=10, alpha=0.5, color=color, label=name)
    ax.set(xlabel="actual", ylabel="predicted",
           title=f"Predicted vs actual on the test split ({test_rows} rows)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return figure


def residual_figure(points: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(5.6, 4.2), dpi=110, layout="constrained")
    ax = figure.subplots()
    ax.axhline(0, linestyle="--", color="grey", linewidth=1)
    for role, p in points.items():
        name, color = ROLES[role]
        predicted = np.asarray(p["predicted"])
        ax.scatter(predicted, np.asarray(p["actual"]) - predicted, s=10, alpha=0.5,
                   color=color, label=name)
    ax.set(xlabel="predicted", ylabel="actual - predicted",
           title="Residuals on the test split")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure).print_png(str(path))


def write_plots(problem: str, scored: dict[str, Any], classes: list[str], test_rows: int,
                output_dir: Path) -> dict[str, str]:
    """The problem's PNGs and curves.json in output_dir; returns plot name -> file name."""
    data = curves(problem, scored, classes)
    (output_dir / "curves.json").write_text(json.dumps(data) + "\n")
    figures = {
        "roc": lambda: roc_figure(data["roc"], test_rows),
        "confusion_matrix": lambda: confusion_figure(data["confusion_matrix"]),
        "per_class_f1": lambda: per_class_figure(data["per_class_f1"]),
        "predicted_vs_actual": lambda: scatter_figure(data["regression"], test_rows),
        "residuals": lambda: residual_figure(data["regression"]),
    }
    files = {}
    for name in FILES[problem]:
        save_png(figures[name](), output_dir / f"{name}.png")
        files[name] = f"{name}.png"
    files["curves"] = "curves.json"
    return files
