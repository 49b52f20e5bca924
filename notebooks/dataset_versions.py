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
# # Dataset versions
#
# Every `sagepipe data push` stores a new version of the dataset object (S3 keeps them all;
# the local runtime does too), and every run pins the exact versions it used. This notebook
# looks at those versions through the project's own clients (`tasks.runtime.get_clients`),
# so it works the same against the local runtime and against AWS:
#
# - which versions exist, and which runs trained on which;
# - how each version looks: rows, class balance, missing values;
# - what changed between the two newest versions.
#
# Parameters come from the environment: `SAGEPIPE_ENV` (a settings name or YAML path,
# default `local`) and `SAGEPIPE_STATE_DIR` (the local runtime's state directory).

# %%
import hashlib
import io
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from sagepipe.flows.config import load_config
from sagepipe.tasks.data import parse_s3_uri
from sagepipe.tasks.runtime import get_clients
from sagepipe.tasks.status import dataset_rows
from sagepipe.tasks.storage import list_run_records

# %% tags=["parameters"]
ENV = os.environ.get("SAGEPIPE_ENV", "local")
STATE_DIR = os.environ.get("SAGEPIPE_STATE_DIR")
# the notebooks live in the project's notebooks/ folder, which is where Jupyter runs them
PROJECT_DIR = Path(os.environ.get("SAGEPIPE_PROJECT_DIR") or Path.cwd().parent)

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
print(f"Dataset {config.dataset_uri} on the {config.runtime.kind} runtime")

# %% [markdown]
# ## The stored versions, newest first

# %%
versions = pd.DataFrame(dataset_rows(clients, config.dataset_uri))
if versions.empty:
    raise SystemExit(f"No versions of {config.dataset_uri}: push data with "
                     "`sagepipe data push --example` first.")
display(versions)

# %% [markdown]
# ## Which runs used which version
#
# A run pins `(key, VersionId, ETag)` of every object it read; the pin is in its record.

# %%
runs = []
for record in list_run_records(clients, config.artifacts_uri, limit=50):
    for pinned in (record.get("data") or {}).get("objects", []):
        runs.append({"run": record.get("run_name") or record["run_id"],
                     "outcome": record["outcome"], "version": pinned["version_id"],
                     "digest": record["data"]["digest"]})
used = pd.DataFrame(runs, columns=["run", "outcome", "version", "digest"])
display(versions[["version", "modified"]].merge(used, on="version", how="left"))

# %% [markdown]
# ## Each version at a glance

# %%
bucket, key = parse_s3_uri(config.dataset_uri)
frames = {}
for version_id in versions["version"]:
    body = clients.s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)["Body"].read()
    frames[version_id] = pd.read_csv(io.BytesIO(body))

label = config.label_column
summary = pd.DataFrame([{
    "version": version_id, "rows": len(frame), "columns": frame.shape[1],
    "missing values": int(frame.isna().sum().sum()),
    **{f"share of {label}={value}": round(share, 3)
       for value, share in frame[label].value_counts(normalize=True).sort_index().items()},
} for version_id, frame in frames.items()])
display(summary)

# %% [markdown]
# ## What changed between the two newest versions
#
# Rows are compared by content; features by how far their mean moved, in standard
# deviations of the older version.

# %%
if len(frames) < 2:
    print("Only one version so far: nothing to compare.")
else:
    new_id, old_id = list(frames)[:2]
    new, old = frames[new_id], frames[old_id]

    def row_hashes(frame: pd.DataFrame) -> set[str]:
        return {hashlib.sha1(row.encode()).hexdigest()
                for row in frame.to_csv(index=False, header=False).splitlines()}

    new_rows, old_rows = row_hashes(new), row_hashes(old)
    print(f"{old_id} -> {new_id}: {len(new_rows - old_rows)} rows added, "
          f"{len(old_rows - new_rows)} removed, {len(new_rows & old_rows)} kept")
    features = [c for c in new.columns if c != label and c in old.columns]
    shift = ((new[features].mean() - old[features].mean()) / old[features].std()).sort_values()
    figure, ax = plt.subplots(figsize=(7, max(3, len(features) * 0.18)))
    shift.plot.barh(ax=ax, color=["tab:red" if v < 0 else "tab:blue" for v in shift])
    ax.set(xlabel="mean shift (standard deviations of the older version)",
           title=f"Feature means, version {new_id[:8]} vs {old_id[:8]}")
    figure.tight_layout()
    plt.show()

# %% [markdown]
# ## The label across versions

# %%
figure, ax = plt.subplots(figsize=(6, 3))
counts = pd.DataFrame({v[:8]: f[label].value_counts().sort_index() for v, f in frames.items()})
counts.T.plot.bar(ax=ax, stacked=True, rot=0)
ax.set(xlabel="version", ylabel="rows", title=f"'{label}' per version (newest first)")
figure.tight_layout()
plt.show()
