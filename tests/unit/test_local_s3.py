"""The local versioned object store behaves, and answers, like boto3's S3 client."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, ParamValidationError
from moto import mock_aws

from sagepipe.tasks.local.s3 import LocalS3, parse_s3_uri
from sagepipe.tasks.local.state import StateStore

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3(tmp_path: Path) -> LocalS3:
    store = LocalS3(tmp_path, StateStore(tmp_path))
    store.create_bucket(Bucket="data")
    return store


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def read(s3: LocalS3, key: str, **params: Any) -> bytes:
    return bytes(s3.get_object(Bucket="data", Key=key, **params)["Body"].read())


def test_put_twice_keeps_both_versions(s3: LocalS3) -> None:
    first = s3.put_object(Bucket="data", Key="train.csv", Body=b"v1")
    second = s3.put_object(Bucket="data", Key="train.csv", Body="v2")
    assert first["VersionId"] != second["VersionId"]
    assert read(s3, "train.csv") == b"v2"
    assert read(s3, "train.csv", VersionId=first["VersionId"]) == b"v1"
    latest = s3.get_object(Bucket="data", Key="train.csv")
    assert latest["VersionId"] == second["VersionId"]
    assert latest["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert latest["LastModified"].utcoffset().total_seconds() == 0


def test_etag_is_s3_quoted_md5_and_metadata_round_trips(s3: LocalS3) -> None:
    put = s3.put_object(Bucket="data", Key="k", Body=b"hello", ContentType="text/csv",
                        Metadata={"Source": "sklearn"})
    assert put["ETag"] == '"' + hashlib.md5(b"hello").hexdigest() + '"'
    head = s3.head_object(Bucket="data", Key="k")
    assert (head["ETag"], head["ContentLength"]) == (put["ETag"], 5)
    assert head["ContentType"] == "text/csv"
    assert head["Metadata"] == {"source": "sklearn"}  # S3 lower-cases user metadata keys
    assert s3.get_object(Bucket="data", Key="k")["ETag"] == put["ETag"]


def test_list_object_versions_orders_keys_then_newest_first(s3: LocalS3) -> None:
    b1 = s3.put_object(Bucket="data", Key="b", Body=b"1")["VersionId"]
    a1 = s3.put_object(Bucket="data", Key="a", Body=b"1")["VersionId"]
    b2 = s3.put_object(Bucket="data", Key="b", Body=b"2")["VersionId"]
    versions = s3.list_object_versions(Bucket="data")["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions] == [
        ("a", a1, True), ("b", b2, True), ("b", b1, False)]

    page = s3.list_object_versions(Bucket="data", MaxKeys=2)
    assert page["IsTruncated"] and (page["NextKeyMarker"], page["NextVersionIdMarker"]) == ("b", b2)
    rest = s3.list_object_versions(Bucket="data", KeyMarker="b", VersionIdMarker=b2)
    assert [v["VersionId"] for v in rest["Versions"]] == [b1] and not rest["IsTruncated"]


def test_delete_marker_hides_key_but_keeps_versions(s3: LocalS3) -> None:
    old = s3.put_object(Bucket="data", Key="k", Body=b"kept")["VersionId"]
    deleted = s3.delete_object(Bucket="data", Key="k")
    assert deleted["DeleteMarker"] is True and deleted["ResponseMetadata"]["HTTPStatusCode"] == 204

    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket="data", Key="k")
    assert code(error) == "NoSuchKey"
    with pytest.raises(ClientError) as error:
        s3.head_object(Bucket="data", Key="k")
    assert code(error) == "404"
    assert "Contents" not in s3.list_objects_v2(Bucket="data")

    listing = s3.list_object_versions(Bucket="data")
    assert [(m["VersionId"], m["IsLatest"]) for m in listing["DeleteMarkers"]] == [
        (deleted["VersionId"], True)]
    assert [(v["VersionId"], v["IsLatest"]) for v in listing["Versions"]] == [(old, False)]
    assert read(s3, "k", VersionId=old) == b"kept"
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket="data", Key="k", VersionId=deleted["VersionId"])
    assert code(error) == "MethodNotAllowed"  # a marker has no content to read

    # Removing the marker itself brings the key back, as in S3.
    removed = s3.delete_object(Bucket="data", Key="k", VersionId=deleted["VersionId"])
    assert removed["DeleteMarker"] is True
    assert read(s3, "k") == b"kept"


def test_delete_with_version_id_removes_that_version_for_good(s3: LocalS3) -> None:
    old = s3.put_object(Bucket="data", Key="k", Body=b"1")["VersionId"]
    s3.put_object(Bucket="data", Key="k", Body=b"2")
    assert "DeleteMarker" not in s3.delete_object(Bucket="data", Key="k", VersionId=old)
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket="data", Key="k", VersionId=old)
    assert code(error) == "NoSuchVersion"
    assert [v["Key"] for v in s3.list_object_versions(Bucket="data")["Versions"]] == ["k"]


def test_copy_of_an_old_version_is_server_side_and_becomes_latest(s3: LocalS3) -> None:
    old = s3.put_object(Bucket="data", Key="k", Body=b"old", Metadata={"a": "1"})
    s3.put_object(Bucket="data", Key="k", Body=b"new")
    blobs_before = set(s3.blobs.iterdir())

    copy = s3.copy_object(Bucket="data", Key="k",
                          CopySource={"Bucket": "data", "Key": "k", "VersionId": old["VersionId"]})
    assert copy["CopySourceVersionId"] == old["VersionId"]
    assert copy["CopyObjectResult"]["ETag"] == old["ETag"]
    latest = s3.get_object(Bucket="data", Key="k")
    assert latest["VersionId"] == copy["VersionId"] and latest["Body"].read() == b"old"
    assert latest["Metadata"] == {"a": "1"}
    assert set(s3.blobs.iterdir()) == blobs_before  # no bytes were copied
    assert len(s3.list_object_versions(Bucket="data")["Versions"]) == 3

    # boto3's string form, with a key that needs quoting.
    s3.put_object(Bucket="data", Key="dir/a b+c.csv", Body=b"x")
    by_string = s3.copy_object(Bucket="data", Key="copy", CopySource="data/dir/a b+c.csv")
    assert read(s3, "copy") == b"x" and by_string["VersionId"]


def test_error_codes(s3: LocalS3) -> None:
    s3.put_object(Bucket="data", Key="k", Body=b"x")
    cases = [
        (lambda: s3.get_object(Bucket="nope", Key="k"), "NoSuchBucket", 404),
        (lambda: s3.put_object(Bucket="nope", Key="k", Body=b""), "NoSuchBucket", 404),
        (lambda: s3.list_objects_v2(Bucket="nope"), "NoSuchBucket", 404),
        (lambda: s3.get_object(Bucket="data", Key="missing"), "NoSuchKey", 404),
        (lambda: s3.get_object(Bucket="data", Key="k", VersionId="v0"), "NoSuchVersion", 404),
        (lambda: s3.copy_object(Bucket="data", Key="c",
                                CopySource={"Bucket": "data", "Key": "k", "VersionId": "v0"}),
         "NoSuchVersion", 404),
        (lambda: s3.copy_object(Bucket="data", Key="c", CopySource="data/missing"),
         "NoSuchKey", 404),
        (lambda: s3.head_object(Bucket="data", Key="missing"), "404", 404),
        (lambda: s3.head_object(Bucket="nope", Key="k"), "404", 404),
        (lambda: s3.head_bucket(Bucket="nope"), "404", 404),
        (lambda: s3.create_bucket(Bucket="data"), "BucketAlreadyOwnedByYou", 409),
        (lambda: s3.create_bucket(Bucket="Not_Valid"), "InvalidBucketName", 400),
        (lambda: s3.create_bucket(Bucket="a..b"), "InvalidBucketName", 400),
        (lambda: s3.list_objects_v2(Bucket="data", ContinuationToken="%%"), "InvalidArgument", 400),
        (lambda: s3.list_objects_v2(Bucket="data", MaxKeys=-1), "InvalidArgument", 400),
    ]
    for call, expected, status in cases:
        with pytest.raises(ClientError) as error:
            call()
        assert (code(error), error.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            expected, status)
    # The modeled exception classes match, as on a boto3 client.
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="data", Key="missing")


def test_requests_boto3_would_reject_are_rejected(s3: LocalS3) -> None:
    with pytest.raises(ParamValidationError, match="Key"):
        s3.put_object(Bucket="data", Body=b"x")
    with pytest.raises(ParamValidationError, match="Key"):
        s3.get_object(Bucket="data", Key="")  # the model's min length of ObjectKey
    with pytest.raises(ParamValidationError, match="Metadata"):
        s3.put_object(Bucket="data", Key="k", Metadata={"n": 1})
    with pytest.raises(ParamValidationError, match="Unknown parameter"):
        s3.list_objects_v2(Bucket="data", Perfix="a/")
    # The s3 model puts no pattern on BucketName; boto3's own S3 handler does, so do we.
    with pytest.raises(ParamValidationError, match="Invalid bucket name"):
        s3.put_object(Bucket="bad name", Key="k", Body=b"x")
    assert "Contents" not in s3.list_objects_v2(Bucket="data")


def test_list_objects_v2_paginates_and_rolls_up_prefixes(s3: LocalS3) -> None:
    for key in ["e", "c", "a", "d", "b"]:
        s3.put_object(Bucket="data", Key=key, Body=key)
    keys: list[str] = []  # bounded loop: a token that never advances must not hang the suite
    token: dict[str, str] = {}
    for pages in range(1, 5):  # noqa: B007 - read after the loop
        page = s3.list_objects_v2(Bucket="data", MaxKeys=2, **token)
        assert page["KeyCount"] == len(page["Contents"]) <= 2
        keys += [item["Key"] for item in page["Contents"]]
        if not page["IsTruncated"]:
            assert "NextContinuationToken" not in page
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    assert (keys, pages) == (["a", "b", "c", "d", "e"], 3)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="data", StartAfter="c")["Contents"]] == [
        "d", "e"]

    for key in ["runs/1/model.tar.gz", "runs/1/metrics.json", "runs/2/model.tar.gz", "runs/x"]:
        s3.put_object(Bucket="data", Key=key, Body=b"")
    listing = s3.list_objects_v2(Bucket="data", Prefix="runs/", Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["runs/1/", "runs/2/"]
    assert [o["Key"] for o in listing["Contents"]] == ["runs/x"]
    assert listing["KeyCount"] == 3 and listing["Delimiter"] == "/"
    first = s3.list_objects_v2(Bucket="data", Prefix="runs/", Delimiter="/", MaxKeys=1)
    rest = s3.list_objects_v2(Bucket="data", Prefix="runs/", Delimiter="/",
                              ContinuationToken=first["NextContinuationToken"])
    assert [p["Prefix"] for p in rest["CommonPrefixes"]] == ["runs/2/"]


def test_range_get(s3: LocalS3) -> None:
    s3.put_object(Bucket="data", Key="k", Body=b"0123456789")
    part = s3.get_object(Bucket="data", Key="k", Range="bytes=2-5")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert (part["ContentRange"], part["ContentLength"]) == ("bytes 2-5/10", 4)
    assert b"".join(part["Body"].iter_chunks(3)) == b"2345"
    assert read(s3, "k", Range="bytes=7-") == b"789"
    assert read(s3, "k", Range="bytes=-3") == b"789"
    assert read(s3, "k", Range="bytes=8-100") == b"89"
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket="data", Key="k", Range="bytes=10-")
    assert code(error) == "InvalidRange"


def test_a_second_process_sees_the_same_store(s3: LocalS3, tmp_path: Path) -> None:
    first = s3.put_object(Bucket="data", Key="k", Body=b"from parent")["VersionId"]
    script = textwrap.dedent(f"""
        from pathlib import Path
        from sagepipe.tasks.local.s3 import LocalS3
        from sagepipe.tasks.local.state import StateStore
        root = Path({str(tmp_path)!r})
        s3 = LocalS3(root, StateStore(root))
        assert s3.get_object(Bucket="data", Key="k", VersionId={first!r})["Body"].read() == (
            b"from parent")
        print(s3.put_object(Bucket="data", Key="k", Body=b"from child")["VersionId"])
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True,
                           text=True, check=True)
    assert s3.get_object(Bucket="data", Key="k")["VersionId"] == child.stdout.strip()
    assert read(s3, "k") == b"from child"
    again = LocalS3(tmp_path, StateStore(tmp_path))
    assert [v["VersionId"] for v in again.list_object_versions(Bucket="data")["Versions"]] == [
        child.stdout.strip(), first]


def test_upload_and_download_file_round_trip(s3: LocalS3, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MB: more than one chunk
    source.write_bytes(payload)
    s3.upload_file(str(source), "data", "big.bin", ExtraArgs={"ContentType": "application/x"})
    old = s3.head_object(Bucket="data", Key="big.bin")
    assert old["ContentType"] == "application/x"
    assert old["ETag"] == '"' + hashlib.md5(payload).hexdigest() + '"'
    s3.put_object(Bucket="data", Key="big.bin", Body=b"newer")

    target = tmp_path / "out.bin"
    s3.download_file("data", "big.bin", str(target), ExtraArgs={"VersionId": old["VersionId"]})
    assert target.read_bytes() == payload
    s3.download_file("data", "big.bin", target)
    assert target.read_bytes() == b"newer"
    assert s3.path_of("data", "big.bin", old["VersionId"]).read_bytes() == payload

    with pytest.raises(ClientError) as error:
        s3.download_file("data", "missing", str(target))
    assert code(error) == "404"
    with pytest.raises(S3UploadFailedError, match="NoSuchBucket"):
        s3.upload_file(str(source), "nope", "k")


def test_user_metadata_is_per_version_headed_not_listed_and_at_most_2_kb(
        s3: LocalS3, tmp_path: Path) -> None:
    # S3: user metadata at most 2 KB, the UTF-8 bytes of keys and values summed (AWS_RULES.md);
    # HeadObject returns it, ListObjectVersions does not
    source = tmp_path / "d.csv"
    source.write_text("a,target\n1,0\n")
    s3.upload_file(str(source), "data", "d.csv", ExtraArgs={"Metadata": {"Rows": "1"}})
    first = s3.head_object(Bucket="data", Key="d.csv")
    s3.put_object(Bucket="data", Key="d.csv", Body=b"a,target\n")  # no metadata
    assert first["Metadata"] == {"rows": "1"}
    assert s3.head_object(Bucket="data", Key="d.csv")["Metadata"] == {}
    assert s3.head_object(Bucket="data", Key="d.csv",
                          VersionId=first["VersionId"])["Metadata"] == {"rows": "1"}
    listed = s3.list_object_versions(Bucket="data", Prefix="d.csv")["Versions"]
    assert len(listed) == 2 and all("Metadata" not in v for v in listed)

    at_limit = {"k": "v" * 2047}
    s3.put_object(Bucket="data", Key="ok", Body=b"x", Metadata=at_limit)
    for call in (lambda: s3.put_object(Bucket="data", Key="big", Body=b"x",
                                       Metadata={"k": "v" * 2048}),
                 lambda: s3.put_object(Bucket="data", Key="big", Body=b"x",
                                       Metadata={"k": "é" * 1024}),  # 2 bytes each in UTF-8
                 lambda: s3.copy_object(Bucket="data", Key="big", CopySource="data/ok",
                                        MetadataDirective="REPLACE",
                                        Metadata={"kk": "v" * 2047})):
        with pytest.raises(ClientError) as error:
            call()
        assert code(error) == "MetadataTooLarge"
    with pytest.raises(ClientError):
        s3.head_object(Bucket="data", Key="big")
    with pytest.raises(ValueError, match="Invalid extra_args key 'Metadta'"):  # as boto3 says
        s3.upload_file(str(source), "data", "d.csv", ExtraArgs={"Metadta": {"rows": "1"}})


def test_move_file_stores_the_file_itself_as_an_ordinary_version(s3: LocalS3,
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "part.csv"
    payload = b"a,b\n" + b"1,2\n" * (3 << 20)  # 12 MB: several hashing chunks
    source.write_bytes(payload)
    inode = source.stat().st_ino
    s3.move_file(str(source), "data", "out/part.csv")
    assert not source.exists()
    head = s3.head_object(Bucket="data", Key="out/part.csv")
    assert head["ETag"] == '"' + hashlib.md5(payload).hexdigest() + '"'
    assert head["ContentLength"] == len(payload)
    assert read(s3, "out/part.csv") == payload
    blob = s3.path_of("data", "out/part.csv")
    assert blob.name == hashlib.sha256(payload).hexdigest()
    assert blob.stat().st_ino == inode  # renamed, not copied
    with pytest.raises(ClientError) as error:
        s3.move_file(str(tmp_path / "x"), "nope", "k")
    assert code(error) == "NoSuchBucket"


def test_move_file_defers_the_etag_and_every_answer_still_carries_it(s3: LocalS3,
                                                                    tmp_path: Path) -> None:
    """A moved file's MD5 (its ETag) is not computed on the way in, where a job's end waits
    for it (the slower of its two hashes); it is computed by fill_etags (the job's runner,
    after the end is announced), or by the first answer that carries it - never missing
    from one: HeadObject, GetObject, ListObjectsV2, ListObjectVersions, CopyObject."""
    store = StateStore(tmp_path)

    def stored(key: str) -> list[str]:
        with store.transaction() as conn:
            return [r[0] for r in conn.execute(
                "SELECT etag FROM s3_versions WHERE key=? ORDER BY seq", (key,))]

    def moved(key: str, payload: bytes) -> tuple[str, str]:
        source = tmp_path / "part"
        source.write_bytes(payload)
        blob = s3.move_file(str(source), "data", key)
        assert blob == hashlib.sha256(payload).hexdigest()
        assert stored(key)[-1] == ""  # not computed on the way in
        return blob, '"' + hashlib.md5(payload).hexdigest() + '"'

    _, etag = moved("a", b"a" * (5 << 20))
    assert s3.list_objects_v2(Bucket="data", Prefix="a")["Contents"][0]["ETag"] == etag
    assert stored("a") == [etag]  # computed once, then kept
    _, etag = moved("b", b"b" * 1000)
    assert s3.head_object(Bucket="data", Key="b")["ETag"] == etag
    _, etag = moved("c", b"c" * 1000)
    assert s3.get_object(Bucket="data", Key="c")["ETag"] == etag
    _, etag = moved("d", b"d" * 1000)
    assert s3.list_object_versions(Bucket="data", Prefix="d")["Versions"][0]["ETag"] == etag
    _, etag = moved("e", b"e" * 1000)
    copied = s3.copy_object(Bucket="data", Key="e2", CopySource={"Bucket": "data", "Key": "e"})
    assert copied["CopyObjectResult"]["ETag"] == etag and stored("e2") == [etag]
    s3.delete_object(Bucket="data", Key="e")  # a delete marker has no ETag, and gets none
    assert s3.list_object_versions(Bucket="data", Prefix="e")["DeleteMarkers"]
    assert stored("e") == [etag, ""]
    # the runner's fill: every pending version of the blob, with nothing read
    blob, etag = moved("f", b"f" * 1000)
    moved("g", b"f" * 1000)
    s3.fill_etags([blob, blob])
    assert stored("f") == stored("g") == [etag]


def test_list_keys_names_what_list_objects_v2_lists_and_is_in_the_call_log(
        s3: LocalS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job runner's listing (a local extra, no request checks): the same keys as
    ListObjectsV2 over every page (latest versions, deleted keys left out), NoSuchBucket
    as S3 says it, and a ListObjectsV2 line in the call log (the fault suite's anchor)."""
    trail = tmp_path / "calls.log"
    monkeypatch.setenv("SAGEPIPE_LOCAL_CALL_LOG", str(trail))
    for key in ["in/b.csv", "in/a.csv", "in/a.csv", "in/gone.csv", "inx/c.csv", "out/d"]:
        s3.put_object(Bucket="data", Key=key, Body=key.encode())
    s3.delete_object(Bucket="data", Key="in/gone.csv")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="in")["Contents"]]
    assert s3.list_keys("data", "in") == listed == ["in/a.csv", "in/b.csv", "inx/c.csv"]
    assert s3.list_keys("data", "in/") == ["in/a.csv", "in/b.csv"]
    assert trail.read_text().splitlines()[-1].split("\t")[3:] == ["s3", "ListObjectsV2", "data"]
    with pytest.raises(ClientError) as error:
        s3.list_keys("nope", "in/")
    assert code(error) == "NoSuchBucket"


def test_put_object_streams_file_bodies_in_chunks(s3: LocalS3) -> None:
    class OnlyChunkedReads:
        """A body that fails the test if anyone reads it whole."""

        def __init__(self, size: int) -> None:
            self.left = size

        def read(self, amt: int | None = None) -> bytes:
            assert amt is not None and amt <= 1 << 20, f"unbounded read({amt})"
            n = min(amt, self.left)
            self.left -= n
            return b"x" * n

    put = s3.put_object(Bucket="data", Key="stream", Body=OnlyChunkedReads(5 << 20))
    assert s3.head_object(Bucket="data", Key="stream")["ContentLength"] == 5 << 20
    assert put["ETag"] == '"' + hashlib.md5(b"x" * (5 << 20)).hexdigest() + '"'
    assert [p.name for p in s3.blobs.iterdir()] == [hashlib.sha256(b"x" * (5 << 20)).hexdigest()]


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b.csv") == ("bucket", "a/b.csv")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ["/tmp/a.csv", "https://bucket/a", "s3://", "s3:/bucket/a"]:
        with pytest.raises(ValueError, match="Not an S3 URI"):
            parse_s3_uri(bad)


# -- parity with boto3 (moto) -----------------------------------------------------------------

# Fields moto adds that the local store does not model (checksums, url-encoding echo).
EXTRAS = {"ResponseMetadata", "ChecksumCRC32", "ChecksumType", "ChecksumAlgorithm", "Body",
          "EncodingType", "ServerSideEncryption"}


def scenario(client: Any) -> dict[str, Any]:
    """Create, version, put twice, list versions, read and copy the old version."""
    out: dict[str, Any] = {"create": client.create_bucket(Bucket="parity")}
    out["versioning"] = client.put_bucket_versioning(
        Bucket="parity", VersioningConfiguration={"Status": "Enabled"})
    out["status"] = client.get_bucket_versioning(Bucket="parity")
    out["put1"] = client.put_object(Bucket="parity", Key="d/k.csv", Body=b"a,b\n1,2\n",
                                    ContentType="text/csv")
    out["put2"] = client.put_object(Bucket="parity", Key="d/k.csv", Body=b"a,b\n3,4\n")
    out["versions"] = client.list_object_versions(Bucket="parity")
    old = out["versions"]["Versions"][-1]["VersionId"]
    out["get_old"] = client.get_object(Bucket="parity", Key="d/k.csv", VersionId=old)
    out["old_body"] = out["get_old"]["Body"].read()
    out["copy"] = client.copy_object(
        Bucket="parity", Key="d/k.csv",
        CopySource={"Bucket": "parity", "Key": "d/k.csv", "VersionId": old})
    out["get_latest"] = client.get_object(Bucket="parity", Key="d/k.csv")
    out["latest_body"] = out["get_latest"]["Body"].read()
    out["list"] = client.list_objects_v2(Bucket="parity", Prefix="d/")
    out["old_id"] = old
    return out


def test_parity_with_boto3_on_moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        remote = scenario(boto3.client("s3", region_name="us-east-1"))
    local = scenario(LocalS3(tmp_path, StateStore(tmp_path)))

    for step in ("create", "versioning", "status", "put1", "put2", "versions", "get_old", "copy",
                 "get_latest", "list"):
        assert set(local[step]) - EXTRAS == set(remote[step]) - EXTRAS, step
        assert (local[step]["ResponseMetadata"]["HTTPStatusCode"]
                == remote[step]["ResponseMetadata"]["HTTPStatusCode"]), step
    for item in ("Versions", "Contents"):
        entry_keys = [set(e) - EXTRAS for e in (local, remote)
                      for e in [e["versions" if item == "Versions" else "list"][item][0]]]
        assert entry_keys[0] == entry_keys[1], item
    assert set(local["copy"]["CopyObjectResult"]) - EXTRAS == set(
        remote["copy"]["CopyObjectResult"]) - EXTRAS

    def values(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": run["status"]["Status"],
            "etags": [run["put1"]["ETag"], run["put2"]["ETag"]],
            "version_order": [(v["ETag"], v["IsLatest"]) for v in run["versions"]["Versions"]],
            "old_is_first_put": run["old_id"] == run["put1"]["VersionId"],
            "old": (run["old_body"], run["get_old"]["ETag"], run["get_old"]["ContentLength"],
                    run["get_old"]["ContentType"], run["get_old"]["Metadata"]),
            "copy_source": run["copy"]["CopySourceVersionId"] == run["old_id"],
            "copy_etag": run["copy"]["CopyObjectResult"]["ETag"],
            "latest": (run["latest_body"], run["get_latest"]["VersionId"]
                       == run["copy"]["VersionId"], run["get_latest"]["ContentType"]),
            "list": [(o["Key"], o["Size"], o["ETag"]) for o in run["list"]["Contents"]],
        }

    assert values(local) == values(remote)
