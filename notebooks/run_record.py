# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A run's record: champion vs challenger
#
# Every run stores its record (`<artifacts>/runs/<run id>/record.json`): the data it
# pinned, the jobs, the evaluation of the new model (challenger) and the live one
# (champion) on the same test split, the gate's decision and what was deployed. This
# notebook loads one, compares the two models and re-draws the run's plots from the
# numbers the evaluate job stored (`curves.json`) and from the Model Registry.
#
# Parameters come from the environment: `SAGEPIPE_ENV` (a settings name or YAML path,
# default `local`), `SAGEPIPE_STATE_DIR` (the local runtime's state directory) and
# `SAGEPIPE_RUN_ID` (default: the newest run that evaluated a model).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display

from sagepipe.flows.config import load_config
from sagepipe.flows.report import metrics_rows
from sagepipe.tasks.data import parse_s3_uri
from sagepipe.tasks.plots import model_history
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.storage import list_run_records, read_json

# %% tags=["parameters"]
ENV = os.environ.get("SAGEPIPE_ENV", "local")
STATE_DIR = os.environ.get("SAGEPIPE_STATE_DIR")
# the notebooks live in the project's notebooks/ folder, which is where Jupyter runs them
PROJECT_DIR = Path(os.environ.get("SAGEPIPE_PROJECT_DIR") or Path.cwd().parent)
RUN_ID = os.environ.get("SAGEPIPE_RUN_ID")

# %%
overrides = {}
if STATE_DIR:
    overrides["runtime"] = {"state_dir": STATE_DIR}
config = load_config(ENV, overrides)
if config.runtime.kind == "local" and not os.path.isabs(config.runtime.state_dir):
    # settings name the state directory relative to the project, not to this notebook
    state = str(PROJECT_DIR / config.runtime.state_dir)
    config = config.model_copy(update={"runtime": config.runtime.model_copy(
        update={"state_dir": state})})
clients = get_clients(config.runtime)

# %% [markdown]
# ## The run

# %%
if RUN_ID:
    record = read_json(clients, f"{config.artifacts_uri.rstrip('/')}/runs/{RUN_ID}/record.json")
else:
    evaluated = [r for r in list_run_records(clients, config.artifacts_uri, limit=50)
                 if r.get("evaluation")]
    if not evaluated:
        raise SystemExit("No run has evaluated a model yet: run `sagepipe run` first.")
    record = evaluated[0]
decision = record.get("decision") or {}
display(Markdown(f"**Run {record.get('run_name') or record['run_id']}**: {record['outcome']}"
                 f" (commit {record.get('commit') or 'none'})\n\n"
                 + "\n".join(f"- {reason}" for reason in decision.get("reasons", []))))

# %% [markdown]
# ## Champion vs challenger
#
# Both scored by the same evaluate job on the same pinned test split.

# %%
metrics = pd.DataFrame(metrics_rows(record)).set_index("metric")
display(metrics)
evaluation = record["evaluation"]
if evaluation.get("champion_error"):
    print("The champion could not be scored:", evaluation["champion_error"])

# %% [markdown]
# ## The plots, re-drawn
#
# From `curves.json`, which the evaluate job wrote next to `evaluation.json`.

# %%
evaluation_uri = record["steps"]["evaluate"]["outputs"]["evaluation"]
folder = evaluation_uri.rsplit("/", 1)[0]
curves = read_json(clients, f"{folder}/{evaluation['plots']['curves']}")
names = {"challenger": ("challenger (new)", "tab:blue"),
         "champion": ("champion (live)", "tab:orange")}

print("Problem:", evaluation.get("problem", "binary"))
if "roc" in curves:  # binary
    figure, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
    for role, curve in curves["roc"].items():
        name, color = names[role]
        ax.plot(curve["fpr"], curve["tpr"], color=color, linewidth=2,
                label=f"{name}: AUC {curve['auc']:.4f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC on the same test split ({evaluation['test_rows']} rows)")
    ax.legend(loc="lower right")
    plt.show()
if "per_class_f1" in curves:  # multiclass
    display(pd.DataFrame(curves["per_class_f1"]).rename_axis("class"))
if "regression" in curves:
    figure, ax = plt.subplots(figsize=(5.5, 4.5))
    for role, points in curves["regression"].items():
        name, color = names[role]
        ax.scatter(points["actual"], points["predicted"], s=10, alpha=0.5, color=color,
                   label=name)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual on the test split")
    ax.legend(loc="upper left")
    plt.show()

# %%
matrices = curves.get("confusion_matrix", {})  # classification only
figure, axes = plt.subplots(1, max(len(matrices), 1), figsize=(4.2 * max(len(matrices), 1),
                                                                3.8), squeeze=False)
for ax, (role, matrix) in zip(axes[0], matrices.items(), strict=False):
    counts = np.asarray(matrix["counts"])
    ax.imshow(counts, cmap="Blues", vmin=0)
    ax.set(xticks=range(len(matrix["labels"])), yticks=range(len(matrix["labels"])),
           xticklabels=matrix["labels"], yticklabels=matrix["labels"], xlabel="predicted",
           ylabel="actual", title=names[role][0])
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center",
                color="white" if n > counts.max() / 2 else "black")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## Metric history of the model versions
#
# From the Model Registry: every version the pipeline registered, with its gate metric.

# %%
metric = decision.get("metric")
history = pd.DataFrame([p.model_dump() for p in model_history(
    clients, config.model_package_group, metric)] if metric else [])
display(history)
if not history.empty:
    figure, ax = plt.subplots(figsize=(6.4, 3.6))
    approved = history[history["approval"] == "Approved"]
    others = history[history["approval"] != "Approved"]
    ax.plot(approved["version"], approved["value"], "o-", label="approved (deployed)")
    ax.scatter(others["version"], others["value"], marker="x", color="tab:red",
               label="rejected / pending")
    package = (record.get("model_package") or {}).get("arn")
    mine = history[history["arn"] == package]
    ax.scatter(mine["version"], mine["value"], s=150, facecolors="none", edgecolors="black",
               label="this run")
    ax.axhline(decision["threshold"], linestyle="--", color="grey", label="gate threshold")
    ax.set(xlabel="model version", ylabel=metric, xticks=history["version"])
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# ## The plots as the run stored them
#
# Full size, as the Prefect UI shows them (downscaled) in the run record.

# %%
for name, uri in (record.get("plots") or {}).items():
    bucket, key = parse_s3_uri(uri)
    print(f"{name}: {uri}")
    display(Image(data=clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
