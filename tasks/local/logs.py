"""Local CloudWatch Logs: job and build log streams, read the way tasks read AWS's.

Writers (the job runner, CodeBuild) append ``<epoch ms>\\t<message>`` lines to
``<root>/logs/<group>/<stream>.log``; ``get_log_events`` pages through them with a
byte-offset ``nextForwardToken``, so a poller resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import LocalClient, metadata
from .validation import client_error

__all__ = ["LocalLogs"]


class LocalLogs(LocalClient):
    service = "logs"

    def __init__(self, root: Path, *, region: str) -> None:
        super().__init__(region=region)
        self.root = root

    def _group_dir(self, group: str) -> Path:
        return self.root / "logs" / group.strip("/")

    def describe_log_streams(self, **params: Any) -> dict[str, Any]:
        self._validate("DescribeLogStreams", params)
        group_dir = self._group_dir(params["logGroupName"])
        prefix = params.get("logStreamNamePrefix", "")
        streams = []
        if group_dir.is_dir():
            for path in sorted(group_dir.rglob("*.log")):
                name = path.relative_to(group_dir).as_posix()[: -len(".log")]
                if name.startswith(prefix):
                    stat = path.stat()
                    streams.append({"logStreamName": name, "storedBytes": stat.st_size,
                                    "lastIngestionTime": int(stat.st_mtime * 1000)})
        elif "logGroupName" in params:
            raise client_error("DescribeLogStreams", "ResourceNotFoundException",
                               "The specified log group does not exist.")
        return {"logStreams": streams, **metadata()}

    def get_log_events(self, **params: Any) -> dict[str, Any]:
        self._validate("GetLogEvents", params)
        path = self._group_dir(params.get("logGroupName", "")) / f"{params['logStreamName']}.log"
        if not path.exists():
            raise client_error("GetLogEvents", "ResourceNotFoundException",
                               "The specified log stream does not exist.")
        token = params.get("nextToken", "f/0")
        offset = int(token.split("/", 1)[1])
        limit = params.get("limit", 10000)
        events: list[dict[str, Any]] = []
        with open(path, "rb") as fh:
            fh.seek(offset)
            while len(events) < limit:
                line = fh.readline()
                if not line or not line.endswith(b"\n"):
                    break  # a partial line is still being written: read it next time
                offset += len(line)
                stamp, _, message = line.decode(errors="replace").rstrip("\n").partition("\t")
                events.append({"timestamp": int(stamp or 0), "message": message,
                               "ingestionTime": int(stamp or 0)})
        return {"events": events, "nextForwardToken": f"f/{offset}",
                "nextBackwardToken": "b/0", **metadata()}
