"""A local, always-versioned S3 behind ``s3://`` URIs, with boto3's method names and shapes.

Tasks call ``LocalS3`` exactly like ``boto3.client("s3")``, so the same code runs on AWS.
Object bytes live once per content in ``<root>/s3/blobs/<sha256>`` (streamed to a temp
file, then renamed, so nobody sees half a blob); buckets, versions and delete markers are
rows in the shared ``state.db``, so every process sees one store and each write is atomic.
Requests are checked as boto3 checks them (its S3 parameter handlers, then botocore's
model) before any work. Local extras, not AWS: ``LocalS3.path_of``, ``LocalS3.move_file``,
``LocalS3.list_keys`` and ``parse_s3_uri``.

boto3 and botocore are loaded on the first request checked or error raised: a job's runner
stages and stores through the local extras only (its requests were checked when they came
in), so it starts without them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from sagepipe.tasks.local.common import log_call
from sagepipe.tasks.local.state import StateStore
from sagepipe.tasks.local.validation import client_error, service_model, validate_request

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

__all__ = ["LocalS3", "parse_s3_uri"]

_CHUNK = 1 << 20
_MOVE_CHUNK = 4 << 20
_DEFAULT_TYPE = "binary/octet-stream"  # what S3 stores when no ContentType is given
_ETAG_PENDING = ""  # a version's ETag move_file has not computed yet (never answered)
_OWNER = {"DisplayName": "local", "ID": "local"}
_BUCKET_NAME = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's naming rules
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_ERRORS = {  # code -> (HTTP status, S3's message)
    "404": (404, "Not Found"),  # a HEAD reply has no body, so boto3 sees only the status
    "405": (405, "Method Not Allowed"),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchVersion": (404, "The specified version does not exist."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket "
                                "succeeded and you already own it."),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidRequest": (400, "The specified copy source is larger than the maximum allowable "
                       "size for a copy source: 5368709120"),
    "NoSuchUpload": (404, "The specified upload does not exist. The upload ID may be invalid, "
                     "or the upload may have been aborted or completed."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed size"),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
}
# CopyObject copies at most 5 GB in one request; larger objects need a multipart upload
# with UploadPartCopy (S3 API reference, CopyObject and UploadPartCopy). Parts other than
# the last are at least 5 MiB.
COPY_LIMIT = 5 * 1024 ** 3
MIN_PART = 5 * 1024 ** 2
# "the user-defined metadata is limited to 2 KB in size ... the sum of the number of bytes in
# the UTF-8 encoding of each key and value" (S3 user guide, Working with object metadata)
METADATA_LIMIT = 2 * 1024
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS s3_buckets (name TEXT PRIMARY KEY, created TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS s3_versions (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL UNIQUE,"
    " marker INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,"
    " content_type TEXT NOT NULL, metadata TEXT NOT NULL, modified TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS s3_versions_by_key ON s3_versions (bucket, key, seq)",
)
_SELECT = (  # columns in _Version's order; "latest" is whether no newer version of the key exists
    "SELECT key, version_id, marker, sha256, size, etag, content_type, metadata, modified,"
    " seq = (SELECT MAX(seq) FROM s3_versions AS n WHERE n.bucket = o.bucket AND n.key = o.key)"
    " FROM s3_versions AS o WHERE bucket = ? "
)


class _Version(NamedTuple):
    """A row of ``s3_versions``: an object version, or a delete marker (``marker`` = 1)."""

    key: str
    version_id: str
    marker: int
    sha256: str
    size: int
    etag: str
    content_type: str
    metadata: str
    modified: str
    latest: int

    @property
    def last_modified(self) -> datetime:
        return datetime.fromisoformat(self.modified)


Entry = _Version | str  # a listing entry: a version, or a CommonPrefix


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; the key is ``""`` for a bucket URI."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f"Not an S3 URI: {uri!r}; expected s3://<bucket>/<key>")
    return bucket, key


class LocalS3:
    """The part of the boto3 S3 client the tasks use, backed by ``<root>/s3`` and state.db."""

    def __init__(self, root: Path, state: StateStore) -> None:
        self.blobs = Path(root) / "s3" / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._state = state
        with state.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @cached_property
    def exceptions(self) -> Any:
        """The classes of boto3.client("s3").exceptions, so `except s3.exceptions.NoSuchKey`
        works (made on first use: it loads S3's service model)."""
        from botocore.errorfactory import ClientExceptionsFactory

        return ClientExceptionsFactory().create_client_exceptions(service_model("s3"))

    # -- buckets ---------------------------------------------------------------------------

    def create_bucket(self, **params: Any) -> dict[str, Any]:
        bucket = self._check("CreateBucket", params)["Bucket"]
        if not _BUCKET_NAME.fullmatch(bucket):
            raise self._error("CreateBucket", "InvalidBucketName", BucketName=bucket)
        with self._state.transaction() as conn:
            if conn.execute("SELECT 1 FROM s3_buckets WHERE name=?", (bucket,)).fetchone():
                raise self._error("CreateBucket", "BucketAlreadyOwnedByYou", BucketName=bucket)
            conn.execute("INSERT INTO s3_buckets VALUES (?, ?)", (bucket, _now().isoformat()))
        return _ok(Location=f"/{bucket}")

    def head_bucket(self, **params: Any) -> dict[str, Any]:
        self._require_bucket("HeadBucket", self._check("HeadBucket", params)["Bucket"], head=True)
        return _ok(BucketRegion="us-east-1")

    def list_buckets(self, **params: Any) -> dict[str, Any]:
        self._check("ListBuckets", params)
        with self._state.transaction() as conn:
            rows = conn.execute("SELECT name, created FROM s3_buckets ORDER BY name").fetchall()
        buckets = [{"Name": n, "CreationDate": datetime.fromisoformat(c)} for n, c in rows]
        return _ok(Buckets=buckets, Owner=_OWNER)

    def get_bucket_versioning(self, **params: Any) -> dict[str, Any]:
        self._require_bucket("GetBucketVersioning", self._check("GetBucketVersioning", params)
                             ["Bucket"])
        return _ok(Status="Enabled")

    def put_bucket_versioning(self, **params: Any) -> dict[str, Any]:
        """Accepted for compatibility; local buckets stay versioned whatever the Status."""
        self._require_bucket("PutBucketVersioning", self._check("PutBucketVersioning", params)
                             ["Bucket"])
        return _ok()

    # -- objects ---------------------------------------------------------------------------

    def put_object(self, **params: Any) -> dict[str, Any]:
        params = self._check("PutObject", params)
        self._require_bucket("PutObject", params["Bucket"])  # before streaming a big body
        body = params.get("Body", b"")
        body = body.encode() if isinstance(body, str) else body
        sha256, md5, size = self._write_blob(
            io.BytesIO(body) if isinstance(body, bytes | bytearray) else body)
        version_id, _ = self._insert(
            "PutObject", params["Bucket"], params["Key"], sha256=sha256, size=size, etag=f'"{md5}"',
            content_type=params.get("ContentType", _DEFAULT_TYPE), metadata=params.get("Metadata"))
        return _ok(ETag=f'"{md5}"', VersionId=version_id)

    def head_object(self, **params: Any) -> dict[str, Any]:
        params = self._check("HeadObject", params)
        return self._describe(self._resolve(
            "HeadObject", params["Bucket"], params["Key"], params.get("VersionId"), head=True))

    def get_object(self, **params: Any) -> dict[str, Any]:
        from botocore.response import StreamingBody

        params = self._check("GetObject", params)
        version = self._resolve(
            "GetObject", params["Bucket"], params["Key"], params.get("VersionId"))
        response = self._describe(version)
        start, end = 0, version.size - 1
        if "Range" in params and (span := self._byte_range(params["Range"], version.size)):
            start, end = span
            response["ResponseMetadata"]["HTTPStatusCode"] = 206
            response["ContentRange"] = f"bytes {start}-{end}/{version.size}"
        blob = open(self.blobs / version.sha256, "rb")  # noqa: SIM115 - the Body closes it
        blob.seek(start)
        response["ContentLength"] = length = end - start + 1
        response["Body"] = StreamingBody(_Window(blob, length), length)  # type: ignore[arg-type]
        return response

    def list_objects_v2(self, **params: Any) -> dict[str, Any]:
        params = self._check("ListObjectsV2", params)
        bucket, prefix = params["Bucket"], params.get("Prefix", "")
        max_keys = self._max_keys("ListObjectsV2", params)
        after = params.get("StartAfter", "")
        if "ContinuationToken" in params:
            after = self._untoken(params["ContinuationToken"])
        rows = [r for r in self._rows("ListObjectsV2", bucket, prefix) if r.latest and not r.marker]
        entries = [e for e in _rollup(rows, prefix, params.get("Delimiter")) if _name(e) > after]
        page, truncated = entries[:max_keys], 0 < max_keys < len(entries)
        response = _ok(IsTruncated=truncated, Name=bucket, Prefix=prefix, MaxKeys=max_keys,
                       KeyCount=len(page))
        contents = [{"Key": v.key, "LastModified": v.last_modified, "ETag": v.etag,
                     "Size": v.size, "StorageClass": "STANDARD"} for v in _versions(page)]
        _put_nonempty(response, Contents=contents, CommonPrefixes=_prefixes(page))
        response.update({k: params[k] for k in ("Delimiter", "ContinuationToken", "StartAfter")
                         if k in params})
        if truncated:
            response["NextContinuationToken"] = base64.urlsafe_b64encode(
                _name(page[-1]).encode()).decode()
        return response

    def list_object_versions(self, **params: Any) -> dict[str, Any]:
        params = self._check("ListObjectVersions", params)
        bucket, prefix = params["Bucket"], params.get("Prefix", "")
        key_marker, id_marker = params.get("KeyMarker", ""), params.get("VersionIdMarker", "")
        max_keys = self._max_keys("ListObjectVersions", params)
        rows = self._rows("ListObjectVersions", bucket, prefix)
        entries = list(_rollup(rows, prefix, params.get("Delimiter")))
        ids = [(e.key, e.version_id) if isinstance(e, _Version) else None for e in entries]
        if id_marker and (key_marker, id_marker) in ids:
            entries = entries[ids.index((key_marker, id_marker)) + 1:]
        else:
            entries = [e for e in entries if _name(e) > key_marker]
        page, truncated = entries[:max_keys], 0 < max_keys < len(entries)
        response = _ok(IsTruncated=truncated, KeyMarker=key_marker, VersionIdMarker=id_marker,
                       Name=bucket, Prefix=prefix, MaxKeys=max_keys)
        found = _versions(page)
        _put_nonempty(
            response,
            Versions=[{"ETag": v.etag, "Size": v.size, "StorageClass": "STANDARD", "Key": v.key,
                       "VersionId": v.version_id, "IsLatest": bool(v.latest),
                       "LastModified": v.last_modified, "Owner": _OWNER}
                      for v in found if not v.marker],
            DeleteMarkers=[{"Owner": _OWNER, "Key": v.key, "VersionId": v.version_id,
                            "IsLatest": bool(v.latest), "LastModified": v.last_modified}
                           for v in found if v.marker],
            CommonPrefixes=_prefixes(page))
        response.update({k: params[k] for k in ("Delimiter",) if k in params})
        if truncated:
            response["NextKeyMarker"] = _name(page[-1])
            if isinstance(page[-1], _Version):
                response["NextVersionIdMarker"] = page[-1].version_id
        return response

    def copy_object(self, **params: Any) -> dict[str, Any]:
        """Server-side copy: the new version shares the source's blob, no bytes move."""
        params = self._check("CopyObject", params)
        path, _, source_id = params["CopySource"].partition("?versionId=")
        source_bucket, _, source_key = unquote(path.lstrip("/")).partition("/")
        source = self._resolve("CopyObject", source_bucket, source_key, source_id or None)
        if source.size > COPY_LIMIT:
            raise self._error("CopyObject", "InvalidRequest")
        content_type, metadata = source.content_type, json.loads(source.metadata)
        if params.get("MetadataDirective") == "REPLACE":
            content_type = params.get("ContentType", _DEFAULT_TYPE)
            metadata = params.get("Metadata", {})
        version_id, modified = self._insert(
            "CopyObject", params["Bucket"], params["Key"], sha256=source.sha256, size=source.size,
            etag=source.etag, content_type=content_type, metadata=metadata)
        return _ok(CopyObjectResult={"ETag": source.etag, "LastModified": modified},
                   VersionId=version_id, CopySourceVersionId=source.version_id)

    # -- multipart copy: the parts of a big object copied server-side ---------------------

    def create_multipart_upload(self, **params: Any) -> dict[str, Any]:
        params = self._check("CreateMultipartUpload", params)
        self._require_bucket("CreateMultipartUpload", params["Bucket"])
        upload_id = uuid.uuid4().hex
        self._state.put("s3-upload", upload_id, {
            "bucket": params["Bucket"], "key": params["Key"], "parts": {},
            "content_type": params.get("ContentType", _DEFAULT_TYPE),
            "metadata": params.get("Metadata", {})})
        return _ok(Bucket=params["Bucket"], Key=params["Key"], UploadId=upload_id)

    def upload_part_copy(self, **params: Any) -> dict[str, Any]:
        params = self._check("UploadPartCopy", params)
        self._upload("UploadPartCopy", params)
        path, _, source_id = params["CopySource"].partition("?versionId=")
        source_bucket, _, source_key = unquote(path.lstrip("/")).partition("/")
        source = self._resolve("UploadPartCopy", source_bucket, source_key, source_id or None)
        start, end = 0, source.size - 1
        if "CopySourceRange" in params:
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", params["CopySourceRange"])
            if not match or int(match[2]) < int(match[1]) or int(match[2]) >= source.size:
                raise self._error("UploadPartCopy", "InvalidArgument")
            start, end = int(match[1]), int(match[2])
        with open(self.blobs / source.sha256, "rb") as blob:
            blob.seek(start)
            window: Any = _Window(blob, end - start + 1)
            sha256, md5, size = self._write_blob(window)
        number = str(params["PartNumber"])

        def add(doc: dict[str, Any]) -> dict[str, Any]:
            doc["parts"][number] = {"sha256": sha256, "md5": md5, "size": size}
            return doc

        self._state.update("s3-upload", params["UploadId"], add)
        return _ok(CopyPartResult={"ETag": f'"{md5}"', "LastModified": _now()},
                   CopySourceVersionId=source.version_id)

    def complete_multipart_upload(self, **params: Any) -> dict[str, Any]:
        params = self._check("CompleteMultipartUpload", params)
        upload = self._upload("CompleteMultipartUpload", params)
        listed = (params.get("MultipartUpload") or {}).get("Parts") or []
        parts = []
        for item in listed:
            part = upload["parts"].get(str(item["PartNumber"]))
            if part is None or item.get("ETag", "").strip('"') != part["md5"]:
                raise self._error("CompleteMultipartUpload", "InvalidPart")
            parts.append(part)
        if not parts or any(p["size"] < MIN_PART for p in parts[:-1]):
            raise self._error("CompleteMultipartUpload",
                              "InvalidPart" if not parts else "EntityTooSmall")
        joined = io.BufferedReader(_Concat([self.blobs / p["sha256"] for p in parts]))
        sha256, _, size = self._write_blob(joined)
        digest = hashlib.md5(b"".join(bytes.fromhex(p["md5"]) for p in parts),
                             usedforsecurity=False).hexdigest()
        etag = f'"{digest}-{len(parts)}"'  # S3's ETag of a multipart object
        version_id, _ = self._insert(
            "CompleteMultipartUpload", upload["bucket"], upload["key"], sha256=sha256,
            size=size, etag=etag, content_type=upload["content_type"],
            metadata=upload["metadata"])
        self._state.delete("s3-upload", params["UploadId"])
        return _ok(Bucket=upload["bucket"], Key=upload["key"], ETag=etag, VersionId=version_id)

    def abort_multipart_upload(self, **params: Any) -> dict[str, Any]:
        params = self._check("AbortMultipartUpload", params)
        self._upload("AbortMultipartUpload", params)
        self._state.delete("s3-upload", params["UploadId"])
        return _ok(204)

    def _upload(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        upload = self._state.get("s3-upload", params["UploadId"])
        if upload is None or (upload["bucket"], upload["key"]) != (params["Bucket"],
                                                                   params["Key"]):
            raise self._error(operation, "NoSuchUpload", UploadId=params["UploadId"])
        return upload

    def delete_object(self, **params: Any) -> dict[str, Any]:
        """Without VersionId: add a delete marker. With it: remove that version for good."""
        params = self._check("DeleteObject", params)
        bucket, key, version_id = params["Bucket"], params["Key"], params.get("VersionId")
        if version_id is None:
            marker_id, _ = self._insert("DeleteObject", bucket, key)
            return _ok(204, DeleteMarker=True, VersionId=marker_id)
        where = ("FROM s3_versions WHERE bucket=? AND key=? AND version_id=?",
                 (bucket, key, version_id))
        with self._state.transaction() as conn:
            self._require_bucket("DeleteObject", bucket, conn=conn)
            row = conn.execute("SELECT marker " + where[0], where[1]).fetchone()
            conn.execute("DELETE " + where[0], where[1])
        # S3 answers 204 for a version that is already gone: deletes are idempotent.
        return _ok(204, VersionId=version_id, **({"DeleteMarker": True} if row and row[0] else {}))

    # -- boto3's injected transfer helpers, and local extras -------------------------------

    def upload_file(self, Filename: str | os.PathLike[str], Bucket: str, Key: str,
                    ExtraArgs: dict[str, Any] | None = None,
                    Callback: Any = None) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import S3Transfer
        from botocore.exceptions import ClientError

        # boto3's transfer manager takes only these ExtraArgs, and says so with a ValueError
        unknown = sorted(set(ExtraArgs or {}) - set(S3Transfer.ALLOWED_UPLOAD_ARGS))
        if unknown:
            raise ValueError(f"Invalid extra_args key '{unknown[0]}', must be one of: "
                             f"{', '.join(S3Transfer.ALLOWED_UPLOAD_ARGS)}")
        with open(Filename, "rb") as body:
            try:
                self.put_object(Bucket=Bucket, Key=Key, Body=body, **(ExtraArgs or {}))
            except ClientError as error:  # boto3's transfer manager wraps it the same way
                raise S3UploadFailedError(
                    f"Failed to upload {Filename} to {Bucket}/{Key}: {error}") from error
        if Callback is not None:  # boto3 calls it with the bytes sent since the last call
            Callback(os.path.getsize(Filename))

    def download_file(self, Bucket: str, Key: str, Filename: str | os.PathLike[str],
                      ExtraArgs: dict[str, Any] | None = None) -> None:
        # boto3 HEADs first, so a missing key raises ClientError "404", not NoSuchKey.
        head = self.head_object(Bucket=Bucket, Key=Key, **(ExtraArgs or {}))
        target = Path(Filename)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(self.path_of(Bucket, Key, head["VersionId"]), tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- local extras for the local runtime's own processes: not API entry points --------
    # The job runner stages and stores what a job's request names; that request was checked
    # when it came in (CreateTrainingJob, CreateProcessingJob: botocore's model checks its S3
    # URIs), so these check only what the store itself needs (the bucket exists) and load
    # no botocore until an error is raised. Each is in the call log as the S3 operation it
    # stands for, as before.

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Local extra: the keys under ``prefix`` (each key's latest version, not deleted),
        in order: what a job's runner stages. NoSuchBucket as ListObjectsV2 raises it."""
        log_call("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": prefix})
        return [r.key for r in self._rows("ListObjectsV2", bucket, prefix, etags=False)
                if r.latest and not r.marker]

    def move_file(self, Filename: str | os.PathLike[str], Bucket: str, Key: str) -> str:
        """Local extra: ``upload_file`` for a file nobody needs afterwards (job outputs, the
        model archive).

        The file itself becomes the blob (renamed, not copied), named by its SHA-256 (what
        content-keyed caching reads). Its ETag (the MD5, ~2.5x as slow as SHA-256 here:
        0.16 s against 0.065 s per 100 MB) is left to :meth:`fill_etags`, which the job's
        runner calls once it has announced the job's end; anything that returns an ETag
        first computes it itself (:meth:`_with_etags`), so no answer ever lacks it. Returns
        the blob's SHA-256.
        """
        if not Key:
            raise ValueError("move_file: the key must not be empty")
        log_call("s3", "PutObject", {"Bucket": Bucket, "Key": Key})
        self._require_bucket("PutObject", Bucket)
        sha256, size = hashlib.sha256(), 0
        with open(Filename, "rb") as source:
            while chunk := source.read(_MOVE_CHUNK):
                sha256.update(chunk)
                size += len(chunk)
            os.fsync(source.fileno())  # durable before it is named, as _write_blob does
        try:
            os.replace(Filename, self.blobs / sha256.hexdigest())
        except OSError:  # another file system: copy it after all
            self.upload_file(Filename, Bucket, Key)
            return self._resolve("PutObject", Bucket, Key, None).sha256
        self._insert("PutObject", Bucket, Key, sha256=sha256.hexdigest(), size=size,
                     etag=_ETAG_PENDING, content_type=_DEFAULT_TYPE)
        return sha256.hexdigest()

    def fill_etags(self, blobs: list[str]) -> None:
        """Local extra: compute the ETags :meth:`move_file` left pending for these blobs
        (the job's runner, after the job's end is announced)."""
        for blob in dict.fromkeys(blobs):
            self._fill_etag(blob)

    def path_of(self, bucket: str, key: str, version_id: str | None = None) -> Path:
        """Local extra: the blob file of a version, for zero-copy reads. Never write to it."""
        return self.blobs / self._resolve("GetObject", bucket, key, version_id,
                                          etag=False).sha256

    # -- internals -------------------------------------------------------------------------

    def _check(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Reject what boto3 would: its S3 parameter handlers first, then the model.

        As in boto3, a dict CopySource becomes "bucket/quoted-key?versionId=..." first.
        """
        from botocore.handlers import handle_copy_source_param, validate_bucket_name

        if isinstance(params.get("Bucket"), str):
            validate_bucket_name(params)
        if operation in ("CopyObject", "UploadPartCopy"):
            handle_copy_source_param(params)
        validate_request("s3", operation, params)
        log_call("s3", operation, params)
        metadata = params.get("Metadata") or {}
        if sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) > METADATA_LIMIT:
            raise self._error(operation, "MetadataTooLarge", MaxSizeAllowed=str(METADATA_LIMIT))
        return params

    def _error(self, operation: str, code: str, message: str = "", **fields: str) -> ClientError:
        status, default = _ERRORS[code]
        response = client_error(operation, code, message or default, status=status).response
        response["Error"].update(fields)  # type: ignore[typeddict-item]
        error: ClientError = self.exceptions.from_code(code)(response, operation)
        return error

    def _require_bucket(self, operation: str, bucket: str, head: bool = False,
                        conn: sqlite3.Connection | None = None) -> None:
        if conn is None:
            with self._state.transaction() as conn:
                return self._require_bucket(operation, bucket, head, conn)
        if conn.execute("SELECT 1 FROM s3_buckets WHERE name=?", (bucket,)).fetchone() is None:
            raise self._error(operation, "404") if head else self._error(
                operation, "NoSuchBucket", BucketName=bucket)

    def _resolve(self, operation: str, bucket: str, key: str, version_id: str | None,
                 head: bool = False, *, etag: bool = True) -> _Version:
        with self._state.transaction() as conn:
            self._require_bucket(operation, bucket, head, conn)
            if version_id is None:
                sql = _SELECT + "AND key=? ORDER BY seq DESC LIMIT 1"
                row = conn.execute(sql, (bucket, key)).fetchone()
            else:
                sql = _SELECT + "AND key=? AND version_id=?"
                row = conn.execute(sql, (bucket, key, version_id)).fetchone()
        found = _Version(*row) if row else None
        if found is None or (found.marker and version_id is None):
            if head:
                raise self._error(operation, "404")
            if version_id is not None:
                raise self._error(operation, "NoSuchVersion", Key=key, VersionId=version_id)
            raise self._error(operation, "NoSuchKey", Key=key)
        if found.marker:  # a delete marker asked for by its VersionId
            raise self._error(operation, "405" if head else "MethodNotAllowed")
        return self._with_etags([found])[0] if etag else found

    def _rows(self, operation: str, bucket: str, prefix: str, *,
              etags: bool = True) -> list[_Version]:
        """All versions under ``prefix``: keys ascending, newest version first per key.
        ``etags``: with every ETag (False: some may be pending, for callers that read none)."""
        with self._state.transaction() as conn:
            self._require_bucket(operation, bucket, conn=conn)
            rows = conn.execute(_SELECT + "AND substr(key, 1, ?) = ? ORDER BY key, seq DESC",
                                (bucket, len(prefix), prefix)).fetchall()
        found = [_Version(*row) for row in rows]
        return self._with_etags(found) if etags else found

    def _with_etags(self, versions: list[_Version]) -> list[_Version]:
        """``versions`` with any ETag :meth:`move_file` left pending computed (and stored)."""
        pending = {v.sha256 for v in versions if v.etag == _ETAG_PENDING and not v.marker}
        if not pending:
            return versions
        etags = {blob: self._fill_etag(blob) for blob in pending}
        return [v._replace(etag=etags[v.sha256]) if v.sha256 in etags and not v.marker else v
                for v in versions]

    def _fill_etag(self, blob: str) -> str:
        """The ETag (quoted MD5) of a blob, stored on every version of it still pending.
        Read outside any transaction: others may compute the same at the same time, and
        store the same value."""
        md5 = hashlib.md5(usedforsecurity=False)
        with open(self.blobs / blob, "rb") as source:
            while chunk := source.read(_MOVE_CHUNK):
                md5.update(chunk)
        etag = f'"{md5.hexdigest()}"'
        with self._state.transaction() as conn:
            conn.execute("UPDATE s3_versions SET etag=? WHERE sha256=? AND etag=? AND marker=0",
                         (etag, blob, _ETAG_PENDING))
        return etag

    def _insert(self, operation: str, bucket: str, key: str, *, sha256: str = "", size: int = 0,
                etag: str = "", content_type: str = "", metadata: dict[str, str] | None = None,
                ) -> tuple[str, datetime]:
        """Add a version (or, without ``sha256``, a delete marker) as the key's latest."""
        version_id, modified = uuid.uuid4().hex, _now()
        # S3 returns user metadata keys lower-cased: they travel as x-amz-meta-* headers.
        meta = json.dumps({k.lower(): v for k, v in (metadata or {}).items()})
        with self._state.transaction() as conn:
            self._require_bucket(operation, bucket, conn=conn)
            conn.execute(
                "INSERT INTO s3_versions (bucket, key, version_id, marker, sha256, size, etag,"
                " content_type, metadata, modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (bucket, key, version_id, not sha256, sha256, size, etag, content_type, meta,
                 modified.isoformat()))
        return version_id, modified

    def _write_blob(self, source: IO[bytes] | IO[str]) -> tuple[str, str, int]:
        """Stream ``source`` into a blob; returns its (sha256, md5, size)."""
        sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    data = chunk.encode() if isinstance(chunk, str) else chunk
                    sha256.update(data)
                    md5.update(data)
                    size += out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.blobs / sha256.hexdigest())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256.hexdigest(), md5.hexdigest(), size

    def _describe(self, version: _Version) -> dict[str, Any]:
        return _ok(AcceptRanges="bytes",
                   LastModified=version.last_modified.replace(microsecond=0),  # an HTTP date
                   ContentLength=version.size, ETag=version.etag, VersionId=version.version_id,
                   ContentType=version.content_type, Metadata=json.loads(version.metadata))

    def _byte_range(self, spec: str, size: int) -> tuple[int, int] | None:
        match = _RANGE.fullmatch(spec.strip())
        first, last = match.groups() if match else ("", "")
        if (not first and not last) or (first and last and int(last) < int(first)):
            return None  # S3 ignores a malformed Range and sends the whole object
        start = int(first) if first else max(size - int(last), 0)
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size or (not first and int(last) == 0):
            raise self._error("GetObject", "InvalidRange", ActualObjectSize=str(size),
                              RangeRequested=spec)
        return start, end

    def _max_keys(self, operation: str, params: dict[str, Any]) -> int:
        if params.get("MaxKeys", 0) < 0:
            raise self._error(operation, "InvalidArgument", "max-keys cannot be negative")
        return min(params.get("MaxKeys", 1000), 1000)  # S3 never returns more than 1000 a page

    def _untoken(self, token: str) -> str:
        try:
            return base64.b64decode(token.encode(), b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise self._error("ListObjectsV2", "InvalidArgument",
                              "The continuation token provided is incorrect") from None


class _Concat(io.RawIOBase):
    """Files read one after another, as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._paths: list[Path] = list(paths)
        self._current: IO[bytes] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = open(self._paths.pop(0), "rb")  # noqa: SIM115
            n = self._current.readinto(buffer)  # type: ignore[attr-defined]
            if n:
                return int(n)
            self._current.close()
            self._current = None


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from its current position: a (ranged) GET body."""

    def __init__(self, file: io.BufferedReader, length: int) -> None:
        super().__init__()
        self._file, self._left = file, length

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = self._file.read(self._left if size is None or size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)  # S3 keeps milliseconds


def _ok(status: int = 200, **fields: Any) -> dict[str, Any]:
    return {"ResponseMetadata": {"HTTPStatusCode": status}, **fields}


def _put_nonempty(response: dict[str, Any], **lists: list[Any]) -> None:
    """boto3 leaves a list out of the response when S3 sent no element of it."""
    response.update({name: items for name, items in lists.items() if items})


def _rollup(rows: list[_Version], prefix: str, delimiter: str | None) -> Iterator[Entry]:
    """Rows in key order; keys with ``delimiter`` after ``prefix`` fold into a CommonPrefix."""
    last = None
    for row in rows:
        cut = row.key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            yield row
        elif (common := row.key[: cut + len(delimiter or "")]) != last:
            last = common
            yield common


def _name(entry: Entry) -> str:
    return entry if isinstance(entry, str) else entry.key


def _versions(page: list[Entry]) -> list[_Version]:
    return [e for e in page if isinstance(e, _Version)]


def _prefixes(page: list[Entry]) -> list[dict[str, str]]:
    return [{"Prefix": e} for e in page if isinstance(e, str)]
