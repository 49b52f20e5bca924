"""Local SNS: ``publish`` appends the message to a JSON-lines log per topic."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from .common import LocalClient, arn, metadata, now
from .state import StateStore
from .validation import client_error

__all__ = ["LocalSNS"]


class LocalSNS(LocalClient):
    service = "sns"

    def __init__(self, root: Path, state: StateStore, *, region: str) -> None:
        super().__init__(region=region)
        self.root, self.state = root, state

    def create_topic(self, **params: Any) -> dict[str, Any]:
        self._validate("CreateTopic", params)
        topic_arn = arn(self.region, "sns", params["Name"])
        self.state.put("sns-topic", topic_arn, {"TopicArn": topic_arn})
        return {"TopicArn": topic_arn, **metadata()}

    def publish(self, **params: Any) -> dict[str, Any]:
        self._validate("Publish", params)
        topic = params.get("TopicArn") or params.get("TargetArn")
        if not topic or self.state.get("sns-topic", topic) is None:
            raise client_error("Publish", "NotFound", "Topic does not exist")
        message_id = str(uuid.uuid4())
        record = {"MessageId": message_id, "TopicArn": topic, "Timestamp": now(),
                  "Subject": params.get("Subject"), "Message": params["Message"],
                  "MessageAttributes": params.get("MessageAttributes", {})}
        path = self.messages_path(topic)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return {"MessageId": message_id, **metadata()}

    def messages_path(self, topic_arn: str) -> Path:
        """Local extra: where a topic's messages are written."""
        return self.root / "sns" / f"{topic_arn.rsplit(':', 1)[-1]}.jsonl"

    def messages(self, topic_arn: str) -> list[dict[str, Any]]:
        """Local extra: every message published to a topic, oldest first."""
        path = self.messages_path(topic_arn)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]
