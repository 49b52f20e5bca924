"""The run record as Prefect artifacts: a readable page with its plots, and a metrics table.

The plots (ROC curves, confusion matrix, metric history; see :mod:`tasks.plots`) sit inside
the run record's markdown as ``data:`` URI images. Both of Prefect 3.9's UIs render them
(v1 turns a markdown image into a plain ``<img>``; v2 allows ``data:image/`` sources
explicitly), so they show whether the outputs live in the local runtime's store or in a
private S3 bucket, and for as long as the artifact exists. ``make screenshot`` checks it.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sagepipe.flows.config import PipelineConfig
from sagepipe.tasks.plots import draw_plots

__all__ = ["PLOT_TITLES", "collect_plots", "cost_markdown", "metrics_rows",
           "publish_artifacts", "record_markdown"]

PLOT_TITLES = {"roc": "ROC curves, new vs live model",
               "confusion_matrix": "Confusion matrix",
               "per_class_f1": "F1 score of each class, new vs live model",
               "predicted_vs_actual": "Predicted vs actual values, new vs live model",
               "residuals": "Residuals, new vs live model",
               "metric_history": "Metric history of the model versions"}


def metrics_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric the evaluate job reported (they depend on the problem type)."""
    evaluation = record.get("evaluation") or {}
    rows = []
    for metric in evaluation.get("challenger") or {}:
        challenger = (evaluation.get("challenger") or {}).get(metric)
        champion = (evaluation.get("champion") or {}).get(metric)
        if challenger is None:
            continue
        rows.append({"metric": metric, "challenger (new)": round(challenger, 5),
                     "champion (live)": None if champion is None else round(champion, 5),
                     "difference": None if champion is None else round(challenger - champion, 5)})
    return rows


def collect_plots(config: PipelineConfig, record: dict[str, Any]) -> dict[str, str]:
    """Draw and store the run's plots (URIs into ``record["plots"]``); name -> data URI.

    Only runs that evaluated a model have plots. A plot that cannot be drawn is logged and
    left out: pictures never fail a run.
    """
    evaluation = record.get("evaluation")
    evaluation_uri = (((record.get("steps") or {}).get("evaluate") or {}).get("outputs")
                      or {}).get("evaluation")
    if not evaluation or not evaluation_uri:
        return {}
    package = (record.get("model_package") or {}).get("arn")
    champion = (record.get("champion") or {}).get("package_arn")
    live = package if record.get("outcome") == "deployed" else champion
    run_uri = f"{config.artifacts_uri.rstrip('/')}/runs/{record['run_id']}"
    decision = record.get("decision") or {}
    metric, threshold = decision.get("metric"), decision.get("threshold")
    try:
        if metric is None:  # a record the gate did not decide: the problem's gate metric
            metric, threshold = config.gate.resolve(evaluation.get("problem", "binary"))
        plots = draw_plots(config.runtime, evaluation_uri=evaluation_uri, evaluation=evaluation,
                           group=config.model_package_group, metric=metric,
                           threshold=threshold, live_arn=live, current_arn=package,
                           run_uri=run_uri)
    except Exception as exc:
        get_run_logger().warning("No plots for this run: %s: %s", type(exc).__name__, exc)
        return {}
    record["plots"] = plots.uris
    return plots.images


def plots_markdown(record: dict[str, Any], images: dict[str, str]) -> list[str]:
    lines = ["## Plots", ""]
    for name, image in images.items():
        title = PLOT_TITLES.get(name, name)
        lines += [f"### {title}", "", f"![{title}]({image})", ""]
        if (record.get("plots") or {}).get(name):
            lines += [f"Full size: `{record['plots'][name]}`", ""]
    return lines


def record_markdown(record: dict[str, Any], images: dict[str, str] | None = None) -> str:
    lines = [f"# Run {record.get('run_name') or record['run_id']}: **{record['outcome']}**", ""]
    if record.get("summary"):
        lines += [record["summary"], ""]
    if record.get("forced"):
        lines += ["Forced (`--force`): every job ran again; nothing cached was reused.", ""]
    if record.get("error"):
        lines += ["## Error", "", f"`{record['error']['type']}`: {record['error']['message']}",
                  ""]
    code = record.get("code") or {}
    if code.get("image"):  # the flow image the run ran in (flows/provenance.py)
        lines += ["## Code", "", f"Flow image `{code['image']}`: digest "
                  f"`{code.get('digest') or '-'}`, code hash `{code.get('code_hash') or '-'}`, "
                  f"built from commit `{code.get('image_commit') or '-'}`; {code['check']}.", ""]
    problem = record.get("problem")
    if problem:
        lines += ["## Problem", "", f"**{problem['type']}** ({problem['source']}); to "
                  f"override, {problem['override']}.", ""]
    schema = record.get("data_schema") or {}
    if schema.get("warnings"):
        lines += ["## Data warnings", ""] + [f"- {w}" for w in schema["warnings"]] + [""]
    data = record.get("data")
    if data:
        lines += ["## Data", "", f"Source `{data['source_uri']}`, snapshot "
                  f"`{data['snapshot_uri']}` (digest `{data['digest']}`)", "",
                  "| key | version | ETag | bytes |", "|---|---|---|---|"]
        lines += [f"| {o['key']} | {o['version_id']} | {o['etag']} | {o['size']} |"
                  for o in data["objects"]]
        lines.append("")
    if record.get("images"):
        lines += ["## Images", "", "| step | image | built now |", "|---|---|---|"]
        lines += [f"| {n} | `{i['uri']}` | {'yes' if i['built'] else 'no'} |"
                  for n, i in record["images"].items()]
        lines.append("")
    if record.get("steps"):
        lines += ["## Jobs", "", "| step | job | how | seconds |", "|---|---|---|---|"]
        lines += [f"| {n} | {s.get('job')} | {s.get('how', s.get('status'))} | "
                  f"{s.get('seconds') or ''} |" for n, s in record["steps"].items()]
        lines.append("")
    rows = metrics_rows(record)
    if rows:
        lines += ["## Champion vs challenger", "", "| metric | challenger (new) | champion "
                  "(live) | difference |", "|---|---|---|---|"]
        lines += [f"| {r['metric']} | {r['challenger (new)']} | {r['champion (live)']} | "
                  f"{r['difference']} |" for r in rows]
        lines.append("")
    if images:
        lines += plots_markdown(record, images)
    decision = record.get("decision")
    if decision:
        lines += ["## Gate", ""] + [f"- {reason}" for reason in decision.get("reasons", [])]
        lines.append("")
    if record.get("model_package"):
        package = record["model_package"]
        lines += ["## Registry", "", f"`{package['arn']}`: {package['approval']}", ""]
    if record.get("endpoint"):
        endpoint = record["endpoint"]
        lines += ["## Endpoint", "", f"`{endpoint['endpoint']}` {endpoint['action']}, serving "
                  f"`{endpoint['endpoint_config']}`; smoke test answered "
                  f"`{endpoint['smoke_test']}`", ""]
    lines += cost_markdown(record)
    lines += ["<details><summary>Full record (JSON)</summary>", "", "```json",
              json.dumps({k: v for k, v in record.items() if k != "evaluation"}, indent=2,
                         default=str)[:20000], "```", "</details>"]
    return "\n".join(lines)


def cost_markdown(record: dict[str, Any]) -> list[str]:
    """The run's estimate (upper bound, what it leaves live) and what its jobs billed."""
    cost = record.get("cost") or {}
    estimate, measured = cost.get("estimate"), cost.get("measured")
    if not estimate:
        return []
    lines = ["## Cost", "", "An **estimate** from list prices, not a quote (the prices and their "
             "sources are below).", "", "| item | upper bound (USD) | how |", "|---|---|---|"]
    lines += [f"| {line['item']} | {_usd(line.get('usd'))} | "
              f"{line.get('missing') or line.get('detail', '')} |" for line in estimate["run"]]
    lines += [f"| **total** | **{_usd(estimate.get('total_usd'))}** | |", "",
              "| left live | USD a month at rest | how |", "|---|---|---|"]
    lines += [f"| {line['item']} | {_usd(line.get('usd'))} | "
              f"{line.get('missing') or line.get('detail', '')} |" for line in estimate["live"]]
    lines.append("")
    if measured:
        lines += ["| measured | billable seconds | USD (list prices) | from |", "|---|---|---|---|"]
        lines += [f"| {job['step']} job | {job.get('billable_seconds', '')} | "
                  f"{_usd(job.get('usd'))} | {job.get('how', '')} |" for job in measured["jobs"]]
        lines += [f"| {pool['item']} | {pool.get('retained_seconds', '')} | "
                  f"{_usd(pool.get('usd'))} | {pool.get('how', '')} |"
                  for pool in measured.get("warm_pools", [])]
        build = measured.get("build")
        if build:
            lines.append(f"| image build | {build['minutes']} min | {_usd(build.get('usd'))} | "
                         "CodeBuild startTime to endTime, whole minutes |")
        lines += [f"| **total** | | **{_usd(measured.get('total_usd'))}** | not measured: "
                  f"{measured.get('not_measured', '')} |", ""]
    lines += [f"- {note}" for note in estimate.get("notes", [])]
    lines += [f"- {price}" for price in estimate.get("prices", [])] + [""]
    return lines


def _usd(value: Any) -> str:
    if value is None:
        return "?"
    return f"{value:.6f}" if value < 0.01 else f"{value:.4f}" if value < 10 else f"{value:,.2f}"


def publish_artifacts(record: dict[str, Any], images: dict[str, str] | None = None) -> None:
    """The run record (with ``images``: plot name -> data URI) and the metrics table."""
    project = record["project"]
    create_markdown_artifact(markdown=record_markdown(record, images),
                             key=f"{project}-run-record",
                             description=f"sagepipe run record: {record['outcome']}")
    rows = metrics_rows(record)
    if rows:
        create_table_artifact(table=rows, key=f"{project}-metrics",
                              description="Challenger vs champion on the same test split")
