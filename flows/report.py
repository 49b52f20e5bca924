"""The run record as Prefect artifacts: a readable page and a metrics table."""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

__all__ = ["metrics_rows", "publish_artifacts", "record_markdown"]

METRICS = ("roc_auc", "accuracy", "f1", "log_loss")


def metrics_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    evaluation = record.get("evaluation") or {}
    rows = []
    for metric in METRICS:
        challenger = (evaluation.get("challenger") or {}).get(metric)
        champion = (evaluation.get("champion") or {}).get(metric)
        if challenger is None:
            continue
        rows.append({"metric": metric, "challenger (new)": round(challenger, 5),
                     "champion (live)": None if champion is None else round(champion, 5),
                     "difference": None if champion is None else round(challenger - champion, 5)})
    return rows


def record_markdown(record: dict[str, Any]) -> str:
    lines = [f"# Run {record.get('run_name') or record['run_id']}: **{record['outcome']}**", ""]
    if record.get("summary"):
        lines += [record["summary"], ""]
    if record.get("error"):
        lines += ["## Error", "", f"`{record['error']['type']}`: {record['error']['message']}",
                  ""]
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
    lines += ["<details><summary>Full record (JSON)</summary>", "", "```json",
              json.dumps({k: v for k, v in record.items() if k != "evaluation"}, indent=2,
                         default=str)[:20000], "```", "</details>"]
    return "\n".join(lines)


def publish_artifacts(record: dict[str, Any]) -> None:
    project = record["project"]
    create_markdown_artifact(markdown=record_markdown(record), key=f"{project}-run-record",
                             description=f"sagepipe run record: {record['outcome']}")
    rows = metrics_rows(record)
    if rows:
        create_table_artifact(table=rows, key=f"{project}-metrics",
                              description="Challenger vs champion on the same test split")
