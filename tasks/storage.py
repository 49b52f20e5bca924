"""Reading and writing the pipeline's own small objects: run records, metrics, samples."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from botocore.exceptions import ClientError
from prefect import task

from .data import parse_s3_uri
from .runtime import Clients, RuntimeSettings, get_clients

__all__ = ["ensure_local_resources", "latest_sample_rows", "list_run_records",
           "outputs_exist", "read_json", "read_json_if_any", "record_uri", "sample_rows",
           "save_run_record", "write_json", "write_run_record"]


def read_json(clients: Clients, uri: str) -> Any:
    bucket, key = parse_s3_uri(uri)
    return json.loads(clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def read_json_if_any(clients: Clients, uri: str) -> Any:
    """The JSON object at ``uri``, or None if there is none (nor its bucket)."""
    try:
        return read_json(clients, uri)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise


def write_json(clients: Clients, uri: str, value: Any) -> None:
    bucket, key = parse_s3_uri(uri)
    clients.s3.put_object(Bucket=bucket, Key=key, ContentType="application/json",
                          Body=json.dumps(value, indent=2, default=str).encode())


def sample_rows(clients: Clients, split_uri: str, label_column: str, rows: int = 2) -> str:
    """The first feature rows of a split as header-less CSV: a realistic smoke payload."""
    bucket, prefix = parse_s3_uri(split_uri.rstrip("/") + "/")
    listing = clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    key = listing["Contents"][0]["Key"]
    head = clients.s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-65535")["Body"].read()
    lines = head.decode("utf-8", errors="ignore").splitlines()
    table = list(csv.reader(lines[: rows + 1]))  # the split's rows: quoted where needed
    label_at = table[0].index(label_column)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in table[1:]:
        writer.writerow(v for i, v in enumerate(row) if i != label_at)
    return out.getvalue()


def list_objects(clients: Clients, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` (all pages); none if the bucket does not exist."""
    objects: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        try:
            page = clients.s3.list_objects_v2(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucket":
                return []
            raise
        objects += page.get("Contents", [])
        if not page.get("IsTruncated"):
            return objects
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def list_run_records(clients: Clients, artifacts_uri: str, limit: int = 20) -> list[dict[str, Any]]:
    """Newest first."""
    bucket, prefix = parse_s3_uri(artifacts_uri.rstrip("/") + "/runs/")
    records = [(o["LastModified"], o["Key"]) for o in list_objects(clients, bucket, prefix)
               if o["Key"].endswith("/record.json")]
    records.sort(reverse=True)
    return [read_json(clients, f"s3://{bucket}/{key}") for _, key in records[:limit]]


def latest_sample_rows(clients: Clients, artifacts_uri: str, label_column: str,
                       rows: int = 2) -> str | None:
    """Sample rows of the test split of the newest run that recorded one (None if none has)."""
    for record in list_run_records(clients, artifacts_uri):
        steps = record.get("steps") or {}
        test = ((steps.get("preprocess") or {}).get("outputs") or {}).get("test")
        if test:
            return sample_rows(clients, test, label_column, rows=rows)
    return None


def outputs_exist(clients: Clients, uris: list[str]) -> bool:
    """True if every output (an object, or a prefix with at least one object) is there."""
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        found = clients.s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        if not found.get("KeyCount", len(found.get("Contents", []))):
            return False
    return True


def record_uri(artifacts_uri: str, run_id: str) -> str:
    return f"{artifacts_uri.rstrip('/')}/runs/{run_id}/record.json"


def write_run_record(clients: Clients, artifacts_uri: str, run_id: str,
                     record: dict[str, Any]) -> str:
    """Store a run record where `sagepipe status` and list_run_records find it."""
    uri = record_uri(artifacts_uri, run_id)
    write_json(clients, uri, record)
    return uri


@task(name="save-run-record", retries=2, retry_delay_seconds=5)
def save_run_record(runtime: RuntimeSettings, artifacts_uri: str, run_id: str,
                    record: dict[str, Any]) -> str:
    return write_run_record(get_clients(runtime), artifacts_uri, run_id, record)


def ensure_local_resources(runtime: RuntimeSettings, bucket: str, topic_name: str) -> str:
    """What the infra stack creates on AWS, made locally: the bucket and the topic."""
    if runtime.kind != "local":
        raise ValueError("ensure_local_resources is for the local runtime only")
    clients = get_clients(runtime)
    try:
        clients.s3.head_bucket(Bucket=bucket)
    except ClientError:
        clients.s3.create_bucket(Bucket=bucket)
    clients.s3.put_bucket_versioning(Bucket=bucket,
                                     VersioningConfiguration={"Status": "Enabled"})
    return str(clients.sns.create_topic(Name=topic_name)["TopicArn"])
