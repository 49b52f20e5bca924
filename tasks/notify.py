"""Notifications: one SNS message per run outcome, with the essentials and links.

Messages carry ids, metrics and decisions only: never credentials, payloads or
the environment.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task

from .runtime import Clients, RuntimeSettings, get_clients

__all__ = ["console_links", "notify", "publish_outcome"]

OUTCOMES = ("deployed", "rejected", "unchanged", "failed", "rolled_back", "cancelled",
            "approved")


def console_links(region: str, *, endpoint: str | None, group: str | None,
                  flow_run_url: str | None) -> dict[str, str]:
    base = f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}"
    links = {}
    if endpoint:
        links["endpoint"] = f"{base}#/endpoints/{endpoint}"
    if group:
        links["model_registry"] = f"{base}#/model-registry/{group}"
    if flow_run_url:
        links["flow_run"] = flow_run_url
    return links


def publish_outcome(clients: Clients, topic_arn: str, outcome: str, *, project: str,
                    summary: str, details: dict[str, Any]) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
    subject = f"[sagepipe] {project}: {outcome.replace('_', ' ')}"[:100]
    message = json.dumps({"outcome": outcome, "project": project, "summary": summary,
                          **details}, indent=2, default=str)
    response = clients.sns.publish(
        TopicArn=topic_arn, Subject=subject, Message=message,
        MessageAttributes={"outcome": {"DataType": "String", "StringValue": outcome}})
    return str(response["MessageId"])


@task(name="notify", retries=2, retry_delay_seconds=5)
def notify(runtime: RuntimeSettings, topic_arn: str | None, outcome: str, *, project: str,
           summary: str, details: dict[str, Any]) -> str | None:
    """Publish the outcome; a run without a topic only logs it."""
    log = get_run_logger()
    if not topic_arn:
        log.info("No notification topic configured; outcome: %s", summary)
        return None
    message_id = publish_outcome(get_clients(runtime), topic_arn, outcome, project=project,
                                 summary=summary, details=details)
    log.info("Notified %s: %s", topic_arn, outcome)
    return message_id
