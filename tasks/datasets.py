"""Data sets by name: where a named data set lives, which there are, and their versions.

The configured ``dataset_uri`` fixes the layout, ``s3://<bucket>/<prefix><folder>/<file>``
(``<file>`` empty for a prefix URI). The data set NAME is the same URI with NAME as the
folder: with the default ``s3://sagepipe-local/datasets/breast-cancer/data.csv``, data set
``churn`` is ``s3://sagepipe-local/datasets/churn/data.csv``, so it keeps the configured
file's name and format. Its versions are the S3 object versions of that key; the rows and
schema digest a push stored with each (user metadata) are read back with HeadObject, as
ListObjectVersions does not return user metadata.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from botocore.exceptions import ClientError

from .data import META_ROWS, META_SCHEMA, parse_s3_uri
from .errors import ConfigError
from .runtime import Clients
from .storage import list_objects, list_run_records

__all__ = ["DATASET_NAME", "check_dataset_name", "dataset_list_rows", "dataset_rows",
           "dataset_uri_for", "split_dataset_uri"]

# S3-key-safe, one path segment, never "." or ".."
DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
RUNS_SCANNED = 50  # the run records read to say which runs used a version
RUNS_SHOWN = 3


def check_dataset_name(name: object) -> str:
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise ConfigError(f"{name!r} is not a data set name: use 1 to 63 lower-case letters, "
                          "digits, '.', '_' or '-', starting with a letter or digit (e.g. "
                          "churn-2024).")
    return name


def split_dataset_uri(uri: str) -> tuple[str, str, str, str]:
    """(bucket, prefix, folder, file) of ``s3://bucket/<prefix><folder>/<file>``."""
    bucket, key = parse_s3_uri(uri)
    folder_path, _, file = key.rpartition("/")
    parent, _, folder = folder_path.rpartition("/")
    return bucket, parent + "/" if parent else "", folder, file


def dataset_uri_for(uri: str, name: str) -> str:
    """The URI of data set ``name`` in the layout of ``uri`` (idempotent)."""
    bucket, prefix, _, file = split_dataset_uri(uri)
    return f"s3://{bucket}/{prefix}{check_dataset_name(name)}/{file}"


def _when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(
        value, dt.datetime) else str(value or "")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _metadata(clients: Clients, bucket: str, key: str, version_id: str) -> dict[str, str]:
    head = clients.s3.head_object(Bucket=bucket, Key=key, VersionId=version_id)
    return dict(head.get("Metadata") or {})


def runs_by_version(clients: Clients, artifacts_uri: str,
                    limit: int = RUNS_SCANNED) -> dict[str, list[str]]:
    """{object version id: names of the runs that pinned it}, from the newest run records."""
    used: dict[str, list[str]] = {}
    for record in list_run_records(clients, artifacts_uri, limit):
        run = str(record.get("run_name") or record.get("run_id"))
        for obj in (record.get("data") or {}).get("objects") or []:
            used.setdefault(str(obj.get("version_id")), []).append(run)
    return used


def _runs(names: list[str]) -> str:
    if not names:
        return "-"
    more = len(names) - RUNS_SHOWN
    return ",".join(names[:RUNS_SHOWN]) + (f",+{more}" if more > 0 else "")


def dataset_rows(clients: Clients, uri: str, artifacts_uri: str | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` versions of the data set at ``uri``, newest first, with the rows
    and schema digest stored at push ("-" when pushed without) and the runs that used each
    (among the last RUNS_SCANNED runs)."""
    bucket, key = parse_s3_uri(uri)
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while len(found) < limit:
        try:
            page = clients.s3.list_object_versions(**kwargs)
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                return []
            raise
        found += [v for v in page.get("Versions", []) if v["Key"] == key or key.endswith("/")]
        if not page.get("IsTruncated"):
            break
        kwargs.update(KeyMarker=page["NextKeyMarker"],
                      VersionIdMarker=page.get("NextVersionIdMarker", ""))
    used = runs_by_version(clients, artifacts_uri) if artifacts_uri else {}
    rows = []
    for version in found[:limit]:
        meta = _metadata(clients, bucket, version["Key"], version["VersionId"])
        rows.append({"key": version["Key"], "version": version["VersionId"],
                     "latest": version["IsLatest"], "bytes": version["Size"],
                     "rows": meta.get(META_ROWS, "-"), "schema": meta.get(META_SCHEMA, "-"),
                     "modified": _when(version["LastModified"]),
                     "runs": _runs(used.get(str(version["VersionId"]), []))})
    return rows


def dataset_list_rows(clients: Clients, uri: str,
                      artifacts_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per object of each data set (the folders beside the configured one), with
    its latest version: the names ``--dataset`` takes."""
    bucket, prefix, _, _ = split_dataset_uri(uri)
    skip = None
    if artifacts_uri:  # a data set layout at the bucket's root must not list the artifacts
        art_bucket, art_key = parse_s3_uri(artifacts_uri.rstrip("/") + "/")
        skip = art_key if art_bucket == bucket else None
    objects = [o for o in list_objects(clients, bucket, prefix)
               if "/" in o["Key"][len(prefix):] and not o["Key"].endswith("/")
               and not (skip and o["Key"].startswith(skip))]
    rows = []
    for obj in objects:
        name, _, file = obj["Key"][len(prefix):].partition("/")
        head = clients.s3.head_object(Bucket=bucket, Key=obj["Key"])
        meta = head.get("Metadata") or {}
        rows.append({"dataset": name, "file": file, "latest": head.get("VersionId", "-"),
                     "bytes": obj["Size"], "rows": meta.get(META_ROWS, "-"),
                     "modified": _when(obj["LastModified"])})
    return rows
