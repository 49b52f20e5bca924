"""Data pinning: a dataset URI becomes exact object versions, snapshotted per content.

``pin_dataset`` resolves ``s3://bucket/key`` (one object) or ``s3://bucket/prefix/``
(every object under it) to (key, VersionId, ETag) and server-side copies those
versions into ``<artifacts>/data/<digest>/``, where ``digest`` hashes the pinned
versions' ETags. Every job reads the snapshot, so a run is reproducible even if
the source changes mid-run, and the same data always lands under the same
prefix: cache keys built from it change exactly when the data does.

Before anything is stored or run, the data is checked with the preprocess step's own
rules (its ``dataset.py``, see :mod:`tasks.stepcode`): the format (CSV with any common
separator, gzip, Parquet; anything else is refused with what it looks like), the label
column, the problem type (``auto`` is inferred from the label), the features. ``sagepipe
data push`` reads the whole label column of the local file, so it also refuses classes too
small to reach every split; a run's pin step reads the first bytes of each stored object.

A push stores what it found with the version, as S3 user metadata: the row count and a
schema digest (a short hash of the ordered column names and their inferred kinds), so
``sagepipe data versions`` can show them without reading the data again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from botocore.exceptions import ClientError
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from .errors import DataError
from .runtime import Clients, RuntimeSettings, get_clients, retry_transient
from .stepcode import DEFAULT_CONTAINERS, step_module

__all__ = ["META_ROWS", "META_SCHEMA", "DataPin", "DataRules", "DataSettings", "DatasetReport",
           "PinnedObject", "PushedDataset", "inspect_dataset", "inspect_file", "inspect_object",
           "parse_s3_uri", "pin_data", "pin_dataset", "push_dataset", "schema_digest"]

SAMPLE_BYTES = 256 * 1024
PARQUET_SAMPLE_BYTES = 64 << 20  # a first row group larger than this is not sampled
Problem = Literal["auto", "binary", "multiclass", "regression"]
# S3 user metadata a push stores on the version (sent as x-amz-meta-sagepipe-rows, ...)
META_ROWS = "sagepipe-rows"
META_SCHEMA = "sagepipe-schema"


class DataSettings(BaseModel):
    """How to read the dataset files (config ``data:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delimiter: Literal[",", ";", "\t", "|", "comma", "semicolon", "tab", "pipe"] | None = Field(
        None, description="CSV separator; detected from the header when unset")
    missing_values: list[str] = Field(
        default_factory=list, max_length=50,
        description="more spellings of 'missing' besides empty, NA, N/A, null, NaN, ?, ...")


class DataRules(BaseModel):
    """What the data checks need to know: the label, the problem, how to read the files."""

    model_config = ConfigDict(frozen=True)

    label_column: str = "target"
    problem: Problem = "auto"
    data: DataSettings = DataSettings()
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    step_dir: str = str(DEFAULT_CONTAINERS / "preprocess")
    dataset: str | None = None  # the data set's name (--dataset), for messages

    @property
    def delimiter(self) -> str | None:
        names = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}
        return names.get(self.data.delimiter or "", self.data.delimiter)


class DatasetReport(BaseModel):
    """What the checks found: the format, the columns, the problem type and why."""

    format: str
    compression: str | None = None
    delimiter: str | None = None
    columns: list[str]
    problem: str  # binary | multiclass | regression; auto when the step ships no checks
    problem_source: str
    rows_checked: int
    complete: bool  # every label was read (a local file), not just the first rows
    classes: dict[str, int] | None = None
    features: list[str] = []
    unusable: dict[str, str] = {}

    def describe(self) -> str:
        what = {"csv": "CSV", "parquet": "Parquet"}.get(self.format, self.format)
        if self.delimiter:
            what += f" separated by {_SEPARATORS.get(self.delimiter, repr(self.delimiter))}"
        if self.compression:
            what += f", {self.compression}-compressed"
        text = f"{what}; {len(self.columns)} columns"
        if self.problem != "auto":
            text += f"; problem {self.problem} ({self.problem_source})"
        if self.classes:
            shown = ", ".join(f"{c}: {n}" for c, n in list(self.classes.items())[:8])
            text += f"; rows per class {shown}{' ...' if len(self.classes) > 8 else ''}"
        if self.unusable:
            text += "; not usable as features " + ", ".join(
                f"{c} ({why})" for c, why in self.unusable.items())
        return text


_SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "pipes"}


class PushedDataset(BaseModel):
    version_id: str
    report: DatasetReport | None
    rows: int | None = None
    schema_digest: str | None = None


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
    report: DatasetReport | None = None  # what the checks of the first object found

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


def _no_dataset(name: str, uri: str) -> DataError:
    return DataError(f"No dataset {name} ({uri}); push it with `sagepipe data push FILE "
                     f"--dataset {name}`, or see the data sets there are with "
                     "`sagepipe data list`.")


def resolve_versions(clients: Clients, uri: str, dataset: str | None = None
                     ) -> tuple[str, list[PinnedObject]]:
    """The exact latest versions behind ``uri``; refuses unversioned buckets.

    ``dataset``: the name the user gave (--dataset), so a missing one is named as such.
    """
    bucket, key = parse_s3_uri(uri)
    try:
        versioning = clients.s3.get_bucket_versioning(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) in ("NoSuchBucket", "404"):
            if dataset:
                raise _no_dataset(dataset, uri) from exc
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
    if not objects and dataset:
        raise _no_dataset(dataset, uri)
    if not objects:
        raise DataError(f"No dataset at {uri}: no object with that key and none under that "
                        "prefix. Push one with `sagepipe data push <file>` or fix dataset_uri.")
    return bucket, sorted(objects, key=lambda o: o.key)


def exact_versions(clients: Clients, uri: str, versions: dict[str, str]
                   ) -> tuple[str, list[PinnedObject]]:
    """The given object versions of the dataset at ``uri`` (what a run started by new data
    pins: exactly the versions that arrived, not whatever is latest when it starts)."""
    bucket, key = parse_s3_uri(uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    objects: list[PinnedObject] = []
    for name, version in sorted(versions.items()):
        if name != key and not name.startswith(prefix):
            raise DataError(f"s3://{bucket}/{name} is not part of the dataset {uri}; a run "
                            "pins only that dataset's objects (check dataset_uri).")
        try:
            head = clients.s3.head_object(Bucket=bucket, Key=name, VersionId=version)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NoSuchVersion", "400", "InvalidArgument"):
                raise DataError(f"Version {version} of s3://{bucket}/{name}, which this run "
                                "was started for, no longer exists (deleted?). Start a run "
                                "on the current data instead (sagepipe run).") from exc
            raise
        objects.append(_pinned(name, head))
    if not objects:
        raise DataError(f"No object versions given for {uri}.")
    return bucket, objects


def _pinned(key: str, head: dict[str, Any]) -> PinnedObject:
    version = head.get("VersionId")
    if not version or version == "null":
        raise DataError(f"Object {key} has no version id (it was written before versioning "
                        "was enabled). Upload it again so it gets one.")
    return PinnedObject(key=key, version_id=version, etag=head["ETag"].strip('"'),
                        size=int(head["ContentLength"]))


def _rules(rules: DataRules | str) -> DataRules:
    return DataRules(label_column=rules) if isinstance(rules, str) else rules


def _checks(rules: DataRules) -> ModuleType | None:
    """The preprocess step's ``dataset.py``, or None if the step ships no checks."""
    return step_module(Path(rules.step_dir), "dataset")


def _report(sample: Any, *, complete: bool, classes: dict[Any, int] | None = None
            ) -> DatasetReport:
    fmt = sample.format
    counted = classes if classes is not None else (
        sample.label.classes() if sample.problem != "regression" else None)
    return DatasetReport(
        format=fmt.format, compression=fmt.compression, delimiter=fmt.delimiter,
        columns=list(sample.columns), problem=sample.problem,
        problem_source=sample.problem_source, rows_checked=sample.label.rows,
        complete=complete, features=list(sample.features), unusable=dict(sample.unusable),
        classes=None if counted is None or sample.problem == "regression"
        else {str(k): int(v) for k, v in counted.items()})


def _inspect_head(checks: ModuleType, head: bytes, where: str, rules: DataRules, *,
                  truncated: bool) -> Any:
    """The step's checks on a CSV file's first bytes, as a sample report."""
    return checks.inspect_head(head, name=f"Dataset {where}", label=rules.label_column,
                               problem=rules.problem, delimiter=rules.delimiter,
                               missing=checks.missing_set(rules.data.missing_values),
                               truncated=truncated)


def inspect_file(path: Path, rules: DataRules | str) -> DatasetReport | None:
    """Check a local file the way a run would, reading its whole label column.

    Refuses (DataError) what the preprocess step cannot use; None when it ships no checks.
    """
    rules = _rules(rules)
    checks = _checks(rules)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty. Push a table with a header row and data rows.")
    if checks is None:
        return None
    where = str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(SAMPLE_BYTES)
        fmt = checks.sniff(head, f"Dataset {where}")
        if fmt.format == "parquet":
            sample = checks.inspect_table(
                checks.first_rows(path), name=f"Dataset {where}", label=rules.label_column,
                problem=rules.problem, missing=checks.missing_set(rules.data.missing_values),
                complete=False)
        else:
            sample = _inspect_head(checks, head, where, rules,
                                   truncated=size > SAMPLE_BYTES or fmt.compression is not None)
        labels = checks.scan_labels(path, sample.format, rules.label_column,
                                    checks.missing_set(rules.data.missing_values))
        problem, source = checks.check_problem(labels, rules.label_column, rules.problem,
                                               f"Dataset {where}", complete=True)
    except checks.DataError as exc:
        raise DataError(str(exc)) from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"Dataset {where} cannot be read as {sample_format(checks, path)}: "
                        f"{exc}") from None
    classes = None
    if problem != "regression":
        classes = labels.classes()
        try:
            checks.check_class_rows(classes, rules.label_column, f"Dataset {where}",
                                    validation_fraction=rules.validation_fraction,
                                    test_fraction=rules.test_fraction)
        except checks.DataError as exc:
            raise DataError(str(exc)) from None
    report = _report(sample, complete=True, classes=classes)
    return report.model_copy(update={"problem": problem, "problem_source": source,
                                     "rows_checked": labels.rows})


def sample_format(checks: ModuleType, path: Path) -> str:
    with open(path, "rb") as fh:
        try:
            return str(checks.sniff(fh.read(4096), str(path)).describe())
        except checks.DataError:
            return "a table"


class _S3Object(io.RawIOBase):
    """One stored object version, seekable, read with ranged GETs: Parquet reads its footer
    first, then only the columns it needs."""

    def __init__(self, clients: Clients, bucket: str, obj: PinnedObject) -> None:
        self.clients, self.bucket, self.obj, self.position = clients, bucket, obj, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.obj.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.obj.size - self.position)
        if count <= 0:
            return 0
        body = self.clients.s3.get_object(
            Bucket=self.bucket, Key=self.obj.key, VersionId=self.obj.version_id,
            Range=f"bytes={self.position}-{self.position + count - 1}")["Body"].read()
        buffer[:len(body)] = body
        self.position += len(body)
        return len(body)


def inspect_object(clients: Clients, bucket: str, obj: PinnedObject,
                   rules: DataRules | str) -> DatasetReport | None:
    """Check the first bytes (Parquet: the first rows) of one stored object version."""
    rules = _rules(rules)
    where = f"s3://{bucket}/{obj.key}"
    if obj.size == 0:
        raise DataError(f"Dataset {where} is empty. Push a table with a header row and data.")
    checks = _checks(rules)
    if checks is None:
        return None
    head = clients.s3.get_object(Bucket=bucket, Key=obj.key, VersionId=obj.version_id,
                                 Range=f"bytes=0-{SAMPLE_BYTES - 1}")["Body"].read()
    try:
        fmt = checks.sniff(head, f"Dataset {where}")
        if fmt.format == "csv":
            sample = _inspect_head(checks, head, where, rules,
                                   truncated=obj.size > SAMPLE_BYTES or bool(fmt.compression))
            return _report(sample, complete=False)
        return _inspect_parquet(checks, clients, bucket, obj, rules, where)
    except checks.DataError as exc:
        raise DataError(str(exc)) from None


def _inspect_parquet(checks: ModuleType, clients: Clients, bucket: str, obj: PinnedObject,
                     rules: DataRules, where: str) -> DatasetReport:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BufferedReader(_S3Object(clients, bucket, obj), 1 << 20))
        columns = list(parquet.schema_arrow.names)
        first_group = (parquet.metadata.row_group(0).total_byte_size
                       if parquet.metadata.num_row_groups else 0)
        if first_group <= PARQUET_SAMPLE_BYTES:
            sample = checks.inspect_table(
                checks.first_rows(parquet), name=f"Dataset {where}",
                label=rules.label_column, problem=rules.problem,
                missing=checks.missing_set(rules.data.missing_values), complete=False)
            return _report(sample, complete=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"Dataset {where} cannot be read as Parquet: {exc}") from None
    # a huge first row group: check the columns only, the job infers the rest
    checks.check_label_column(columns, rules.label_column, f"Dataset {where}",
                              checks.FileFormat("parquet"))
    return DatasetReport(format="parquet", columns=columns, problem=rules.problem,
                         problem_source="configured" if rules.problem != "auto" else
                         "to be inferred by the preprocess job (first row group too large to "
                         "sample)", rows_checked=0, complete=False)


def inspect_dataset(clients: Clients, uri: str, rules: DataRules | str) -> DatasetReport | None:
    """Check the first object of the stored dataset (what a run's pin step checks first)."""
    rules = _rules(rules)
    bucket, objects = resolve_versions(clients, uri, rules.dataset)
    return inspect_object(clients, bucket, objects[0], rules)


def push_dataset(clients: Clients, path: Path, uri: str, rules: DataRules | str,
                 progress: Callable[[int], None] | None = None) -> PushedDataset:
    """Store ``path`` as a new version of ``uri`` after the same checks a run does.

    Bad data is refused before the upload, so the stored versions stay usable.
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise DataError(f"{uri} names a prefix; give the object key to write, e.g. "
                        f"{uri.rstrip('/')}/data.csv")
    rules = _rules(rules)
    report = inspect_file(path, rules)
    metadata: dict[str, str] = {}
    digest = schema_digest(report.columns, _column_kinds(path, report, rules)) if report else None
    if report is not None:
        metadata[META_ROWS] = str(report.rows_checked)
    if digest:
        metadata[META_SCHEMA] = digest
    # progress: boto3's transfer Callback, called with the bytes sent since its last call
    clients.s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": metadata},
                           Callback=progress)
    version = str(clients.s3.head_object(Bucket=bucket, Key=key).get("VersionId"))
    return PushedDataset(version_id=version, report=report,
                         rows=report.rows_checked if report else None, schema_digest=digest)


def schema_digest(columns: list[str], kinds: list[str] | None) -> str | None:
    """12 hex digits of the ordered (column, kind) pairs: equal when the table's shape is.

    A fixed size whatever the number of columns: S3 allows 2 KB of user metadata in all
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html).
    """
    if kinds is None or len(kinds) != len(columns):
        return None
    text = "\n".join(f"{column}\t{kind}" for column, kind in zip(columns, kinds, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or \
            pa.types.is_decimal(arrow_type):
        return "numeric"
    if pa.types.is_temporal(arrow_type):
        return "datetime"
    if pa.types.is_null(arrow_type):
        return "empty"
    return "text"


def _column_kinds(path: Path, report: DatasetReport, rules: DataRules) -> list[str] | None:
    """Each column's kind (numeric, text, boolean, datetime, empty) as pyarrow infers it
    from the file's first block; None if the file cannot be read that way."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if report.format == "parquet":
            schema = pq.read_schema(path)
        else:
            checks = _checks(rules)
            missing = sorted(checks.missing_set(rules.data.missing_values)) if checks else []
            stream = pa.input_stream(str(path),
                                     compression="gzip" if report.compression else None)
            with pacsv.open_csv(
                    stream, read_options=pacsv.ReadOptions(block_size=1 << 20),
                    parse_options=pacsv.ParseOptions(delimiter=report.delimiter or ","),
                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                         null_values=missing)) as reader:
                schema = reader.schema
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return None
    return [_kind(field.type) for field in schema]


def pin_dataset(clients: Clients, dataset_uri: str, artifacts_uri: str,
                rules: DataRules | str, versions: dict[str, str] | None = None) -> DataPin:
    rules = _rules(rules)
    bucket, objects = exact_versions(clients, dataset_uri, versions) if versions else \
        resolve_versions(clients, dataset_uri, rules.dataset)
    first: DatasetReport | None = None
    for obj in objects:
        report = inspect_object(clients, bucket, obj, rules)
        if first is not None and report is not None and (
                report.columns, report.format) != (first.columns, first.format):
            raise DataError(f"Dataset objects disagree: s3://{bucket}/{obj.key} has "
                            f"{len(report.columns)} columns ({report.format}), the first "
                            f"object {len(first.columns)} ({first.format}). All parts of a "
                            "dataset need the same format and header.")
        first = first or report
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
        if _already_copied(clients, art_bucket, target, obj):
            continue
        copy_version(clients, bucket, obj, art_bucket, target)
    return DataPin(source_uri=dataset_uri, bucket=bucket, objects=objects, digest=digest,
                   snapshot_uri=f"s3://{art_bucket}/{snapshot_prefix}", report=first)


# CopyObject copies up to 5 GB in one request; a bigger object is copied in parts with
# UploadPartCopy, which takes the source's VersionId too (S3 API reference: CopyObject,
# UploadPartCopy). At most 10,000 parts.
COPY_LIMIT = 5 * 1024 ** 3
PART_SIZE = 512 * 1024 ** 2
_SOURCE_VERSION = "sagepipe-source-version"


def copy_version(clients: Clients, bucket: str, obj: PinnedObject, target_bucket: str,
                 target: str) -> None:
    """Server-side copy of exactly ``obj``'s version, whatever its size. The copy records
    the source version in its metadata: an ETag is no content hash under SSE-KMS or for a
    multipart object, so that, not the ETag, says the copy is done."""
    source = {"Bucket": bucket, "Key": obj.key, "VersionId": obj.version_id}
    metadata = {_SOURCE_VERSION: obj.version_id}
    if obj.size <= COPY_LIMIT:
        clients.s3.copy_object(Bucket=target_bucket, Key=target, CopySource=source,
                               Metadata=metadata, MetadataDirective="REPLACE")
        return
    part = max(PART_SIZE, -(-obj.size // 10_000))
    upload = clients.s3.create_multipart_upload(Bucket=target_bucket, Key=target,
                                                Metadata=metadata)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, obj.size, part), start=1):
            end = min(start + part, obj.size) - 1
            copied = clients.s3.upload_part_copy(
                Bucket=target_bucket, Key=target, UploadId=upload, PartNumber=number,
                CopySource=source, CopySourceRange=f"bytes={start}-{end}")
            parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
        clients.s3.complete_multipart_upload(Bucket=target_bucket, Key=target, UploadId=upload,
                                             MultipartUpload={"Parts": parts})
    except BaseException:
        # the bucket's lifecycle rule (AbortIncompleteMultipartUpload) removes what an
        # abort cannot: the flow role is not granted s3:AbortMultipartUpload
        with contextlib.suppress(ClientError):
            clients.s3.abort_multipart_upload(Bucket=target_bucket, Key=target,
                                              UploadId=upload)
        raise


def _already_copied(clients: Clients, bucket: str, key: str, obj: PinnedObject) -> bool:
    try:
        head = clients.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey"):
            return False
        raise
    return bool((head.get("Metadata") or {}).get(_SOURCE_VERSION) == obj.version_id)


@task(name="pin-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def pin_data(runtime: RuntimeSettings, dataset_uri: str, artifacts_uri: str,
             rules: DataRules, versions: dict[str, str] | None = None) -> DataPin:
    """Resolve, check and snapshot the dataset; never cached, so a new version is seen.
    ``versions`` ({key: version id}): exactly these, not the latest."""
    pin = pin_dataset(get_clients(runtime), dataset_uri, artifacts_uri, rules, versions)
    log = get_run_logger()
    log.info("Pinned %d object(s) of %s as %s", len(pin.objects), dataset_uri,
             pin.snapshot_uri)
    if pin.report is not None:
        log.info("Data: %s", pin.report.describe())
    return pin
