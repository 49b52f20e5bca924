"""Data pinning: a dataset URI becomes exact object versions, snapshotted per content.

``pin_dataset`` resolves ``s3://bucket/key`` (one object) or ``s3://bucket/prefix/``
(every object under it) to (key, VersionId, ETag) and server-side copies those
versions into ``<artifacts>/data/<digest>/``, where ``digest`` hashes the pinned
versions' ETags. Every job reads the snapshot, so a run is reproducible even if
the source changes mid-run, and the same data always lands under the same
prefix: cache keys built from it change exactly when the data does.

Before any compute is spent, ``check_csv_sample`` reads the head of the first
object and refuses data the pipeline cannot use (empty, no label column,
non-numeric features) with a message that says what to fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from pydantic import BaseModel

from .errors import DataError
from .runtime import Clients, RuntimeSettings, get_clients, retry_transient

__all__ = ["DataPin", "PinnedObject", "check_csv_sample", "parse_s3_uri", "pin_data",
           "pin_dataset", "push_dataset"]

SAMPLE_BYTES = 256 * 1024


class PinnedObject(BaseModel):
    key: str
    version_id: str
    etag: str
    size: int


class DataPin(BaseModel):
    source_uri: str
    bucket: str
    objects: list[PinnedObject]
    digest: str
    snapshot_uri: str

    @property
    def rows_hint(self) -> int:
        return sum(o.size for o in self.objects)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise DataError(f"{uri!r} is not an s3:// URI; give the dataset as "
                        "s3://bucket/key.csv or s3://bucket/prefix/")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise DataError(f"{uri!r} has no bucket name")
    return bucket, key


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def resolve_versions(clients: Clients, uri: str) -> tuple[str, list[PinnedObject]]:
    """The exact latest versions behind ``uri``; refuses unversioned buckets."""
    bucket, key = parse_s3_uri(uri)
    try:
        versioning = clients.s3.get_bucket_versioning(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) in ("NoSuchBucket", "404"):
            raise DataError(f"Bucket {bucket} does not exist (dataset {uri}). Create it, or "
                            "push data with `sagepipe data push <file>`.") from exc
        raise
    if versioning.get("Status") != "Enabled":
        raise DataError(
            f"Bucket {bucket} does not have versioning enabled, so a run cannot pin the exact "
            "data it used. Enable it: aws s3api put-bucket-versioning --bucket "
            f"{bucket} --versioning-configuration Status=Enabled (the infra stack does this).")
    objects: list[PinnedObject] = []
    if key and not key.endswith("/"):
        try:
            head = clients.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchKey"):
                raise
        else:
            objects.append(_pinned(key, head))
    if not objects:
        prefix = key if not key or key.endswith("/") else key + "/"
        paginator_args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = clients.s3.list_object_versions(**paginator_args)
            for version in page.get("Versions", []):
                if version.get("IsLatest") and not version["Key"].endswith("/"):
                    objects.append(PinnedObject(
                        key=version["Key"], version_id=str(version.get("VersionId")),
                        etag=version["ETag"].strip('"'), size=int(version["Size"])))
            if not page.get("IsTruncated"):
                break
            paginator_args["KeyMarker"] = page["NextKeyMarker"]
            paginator_args["VersionIdMarker"] = page["NextVersionIdMarker"]
    if not objects:
        raise DataError(f"No dataset at {uri}: no object with that key and none under that "
                        "prefix. Push one with `sagepipe data push <file>` or fix dataset_uri.")
    return bucket, sorted(objects, key=lambda o: o.key)


def _pinned(key: str, head: dict[str, Any]) -> PinnedObject:
    version = head.get("VersionId")
    if not version or version == "null":
        raise DataError(f"Object {key} has no version id (it was written before versioning "
                        "was enabled). Upload it again so it gets one.")
    return PinnedObject(key=key, version_id=version, etag=head["ETag"].strip('"'),
                        size=int(head["ContentLength"]))


def check_csv_sample(clients: Clients, bucket: str, obj: PinnedObject,
                     label_column: str) -> list[str]:
    """Cheap checks on the first rows of a stored object; returns the header."""
    where = f"s3://{bucket}/{obj.key}"
    if obj.size == 0:
        raise DataError(f"Dataset {where} is empty. Push a CSV with a header row and data.")
    head = clients.s3.get_object(Bucket=bucket, Key=obj.key, VersionId=obj.version_id,
                                 Range=f"bytes=0-{SAMPLE_BYTES - 1}")["Body"].read()
    return check_csv_head(head, where=where, label_column=label_column,
                          truncated=obj.size > SAMPLE_BYTES)


def check_csv_head(head: bytes, *, where: str, label_column: str, truncated: bool) -> list[str]:
    """Refuse data the pipeline cannot use, from its first bytes; returns the header.

    Preprocessing validates every row; this catches the common mistakes (empty
    file, wrong label column, text in a feature) before any job is started.
    """
    # utf-8-sig: spreadsheet exports start with a byte-order mark that is not data
    lines = head.decode("utf-8-sig", errors="replace").splitlines()
    if truncated and lines:
        lines = lines[:-1]  # the last line of a partial read may be cut
    reader = csv.reader(io.StringIO("\n".join(lines)))
    numbered = [(reader.line_num, r) for r in reader if r]  # line_num: the physical line
    rows = [r for _, r in numbered]
    if not rows:
        raise DataError(f"Dataset {where} is empty. Push a CSV with a header row and data.")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(
            f"Dataset {where} has no label column {label_column!r}. Columns found: "
            f"{', '.join(header[:20])}{' ...' if len(header) > 20 else ''}. Set label_column "
            "in the pipeline config, or add the column to the data.")
    if len(rows) < 2:
        raise DataError(f"Dataset {where} has a header but no rows. Push data rows too.")
    for line_no, row in numbered[1:]:
        if len(row) != len(header):
            raise DataError(f"Dataset {where} line {line_no} has {len(row)} fields; the header "
                            f"has {len(header)}. Fix the CSV.")
        for name, value in zip(header, row, strict=True):
            if name == label_column:
                continue
            if not value.strip():
                raise DataError(f"Dataset {where} column {name!r} has a missing value on "
                                f"line {line_no}. Fill or drop missing values.")
            try:
                number = float(value)
            except ValueError:
                raise DataError(
                    f"Dataset {where} column {name!r} is not numeric: line {line_no} holds "
                    f"{value[:40]!r}. The example model needs numeric features; encode or "
                    "drop that column.") from None
            if math.isnan(number):
                raise DataError(f"Dataset {where} column {name!r} has a missing value on "
                                f"line {line_no}. Fill or drop missing values.")
    return header


def push_dataset(clients: Clients, path: Path, uri: str, label_column: str) -> str:
    """Store ``path`` as a new version of ``uri`` after the same checks a run does.

    Bad data is refused before the upload, so the stored versions stay usable.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise DataError(f"{uri} names a prefix; give the object key to write, e.g. "
                        f"{uri.rstrip('/')}/data.csv")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty. Push a CSV with a header row and data.")
    with open(path, "rb") as fh:
        check_csv_head(fh.read(SAMPLE_BYTES), where=str(path), label_column=label_column,
                       truncated=size > SAMPLE_BYTES)
    clients.s3.upload_file(str(path), bucket, key)
    return str(clients.s3.head_object(Bucket=bucket, Key=key).get("VersionId"))


def pin_dataset(clients: Clients, dataset_uri: str, artifacts_uri: str,
                label_column: str) -> DataPin:
    bucket, objects = resolve_versions(clients, dataset_uri)
    header: list[str] | None = None
    for obj in objects:
        columns = check_csv_sample(clients, bucket, obj, label_column)
        if header is not None and columns != header:
            raise DataError(f"Dataset objects disagree on columns: s3://{bucket}/{obj.key} has "
                            f"{len(columns)} columns, the first object {len(header)}. All "
                            "parts of a dataset need the same header.")
        header = columns
    names = [o.key.rsplit("/", 1)[-1] for o in objects]
    if len(set(names)) != len(names):
        raise DataError(f"Dataset {dataset_uri} has two objects with the same file name in "
                        "different folders; give each part a distinct name.")
    digest = hashlib.sha256("\n".join(
        f"{o.key.rsplit('/', 1)[-1]}:{o.etag}:{o.size}" for o in objects).encode()).hexdigest()[:20]
    art_bucket, art_prefix = parse_s3_uri(artifacts_uri)
    snapshot_prefix = f"{art_prefix.strip('/')}/data/{digest}/".lstrip("/")
    for obj in objects:
        target = snapshot_prefix + obj.key.rsplit("/", 1)[-1]
        if _already_copied(clients, art_bucket, target, obj.etag):
            continue
        clients.s3.copy_object(Bucket=art_bucket, Key=target,
                               CopySource={"Bucket": bucket, "Key": obj.key,
                                           "VersionId": obj.version_id})
    return DataPin(source_uri=dataset_uri, bucket=bucket, objects=objects, digest=digest,
                   snapshot_uri=f"s3://{art_bucket}/{snapshot_prefix}")


def _already_copied(clients: Clients, bucket: str, key: str, etag: str) -> bool:
    try:
        head = clients.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey"):
            return False
        raise
    return bool(head["ETag"].strip('"') == etag)


@task(name="pin-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def pin_data(runtime: RuntimeSettings, dataset_uri: str, artifacts_uri: str,
             label_column: str) -> DataPin:
    """Resolve and snapshot the dataset; never cached, so a new version is always seen."""
    pin = pin_dataset(get_clients(runtime), dataset_uri, artifacts_uri, label_column)
    get_run_logger().info("Pinned %d object(s) of %s as %s", len(pin.objects), dataset_uri,
                          pin.snapshot_uri)
    return pin
