"""Pinning a dataset object over CopyObject's 5 GB limit, and knowing a copy is done.

S3 API reference: CopyObject copies up to 5 GB in one request; bigger objects are copied
with a multipart upload of UploadPartCopy parts (which take the source VersionId), every
part but the last at least 5 MiB. The limits are lowered here (a 12 MiB object plays a
6 GB one) in the flow's code and in the local runtime, which refuses a too-large
CopyObject as S3 does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

import sagepipe.tasks.data as data
import sagepipe.tasks.local.s3 as local_s3
from sagepipe.tasks.local import local_clients
from sagepipe.tasks.runtime import Clients

MIB = 1024 ** 2
ROWS = "".join(f"{i},{i % 7},{(i * 37) % 1000}.5,{i % 2}\n" for i in range(400_000))
BODY = ("a,b,c,target\n" + ROWS).encode()  # about 9 MiB of CSV


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "COPY_LIMIT", 6 * MIB)
    monkeypatch.setattr(data, "PART_SIZE", 5 * MIB)
    monkeypatch.setattr(local_s3, "COPY_LIMIT", 6 * MIB)


def clients_of(s3: Any) -> Clients:
    return Clients(s3=s3, sagemaker=None, sagemaker_runtime=None, sns=None, logs=None,
                   ecr=None, codebuild=None)


@pytest.fixture()
def local(tmp_path: Path) -> Iterator[Clients]:
    s3 = local_clients(tmp_path / "state")["s3"]
    yield clients_of(s3)


@pytest.fixture()
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield clients_of(boto3.client("s3", region_name="us-east-1"))


def record(s3: Any) -> list[str]:
    """The S3 operations called through ``s3`` from now on."""
    calls: list[str] = []
    if hasattr(s3, "meta"):
        s3.meta.events.register("before-call.s3.*",
                                lambda model, **_: calls.append(model.name))
    else:
        for name in ("copy_object", "create_multipart_upload", "upload_part_copy",
                     "complete_multipart_upload"):
            original = getattr(s3, name)

            def wrapped(*args: Any, _original: Any = original, _name: str = name,
                        **kwargs: Any) -> Any:
                calls.append("".join(p.title() for p in _name.split("_")))
                return _original(*args, **kwargs)

            setattr(s3, name, wrapped)
    return calls


@pytest.mark.parametrize("where", ["local", "moto"])
def test_an_object_over_the_copy_limit_is_pinned_in_parts_of_its_exact_version(
        where: str, request: pytest.FixtureRequest) -> None:
    clients: Clients = request.getfixturevalue(where)
    s3 = clients.s3
    s3.create_bucket(Bucket="data-bucket")
    s3.put_bucket_versioning(Bucket="data-bucket",
                             VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="data-bucket", Key="datasets/big/data.csv", Body=BODY)
    s3.put_object(Bucket="data-bucket", Key="datasets/big/data.csv", Body=b"a,target\n1,0\n")
    assert len(BODY) > data.COPY_LIMIT
    # the pin names the first version (the newer one is another dataset version)
    obj = data.PinnedObject(key="datasets/big/data.csv", version_id=first["VersionId"],
                            etag=first["ETag"].strip('"'), size=len(BODY))
    calls = record(s3)

    data.copy_version(clients, "data-bucket", obj, "data-bucket", "pipeline/data/x/data.csv")
    sent = list(calls)

    copied = s3.get_object(Bucket="data-bucket", Key="pipeline/data/x/data.csv")
    assert copied["Body"].read() == BODY
    assert copied["ETag"].strip('"').endswith("-2")  # S3's ETag of a 2-part object
    assert sent == [
        "CreateMultipartUpload", "UploadPartCopy", "UploadPartCopy", "CompleteMultipartUpload"]
    # done is known from the recorded source version, not from an ETag that differs
    assert data._already_copied(clients, "data-bucket", "pipeline/data/x/data.csv", obj)


def test_the_local_runtime_refuses_a_copy_object_over_the_limit_as_s3_does(
        local: Clients) -> None:
    s3 = local.s3
    s3.create_bucket(Bucket="data-bucket")
    s3.put_object(Bucket="data-bucket", Key="big.csv", Body=BODY)
    with pytest.raises(ClientError, match="larger than the maximum allowable size"):
        s3.copy_object(Bucket="data-bucket", Key="copy.csv",
                       CopySource={"Bucket": "data-bucket", "Key": "big.csv"})


def test_a_copy_is_known_by_its_source_version_not_its_etag(local: Clients) -> None:
    """Under SSE-KMS (the stack's default) an ETag is not the content's MD5, so a copy with
    the same ETag proves nothing and one with another ETag may be the right copy."""
    s3 = local.s3
    s3.create_bucket(Bucket="bucket-one")
    put = s3.put_object(Bucket="bucket-one", Key="d.csv", Body=b"a,target\n1,0\n")
    obj = data.PinnedObject(key="d.csv", version_id=put["VersionId"],
                            etag=put["ETag"].strip('"'), size=13)
    # same bytes, same ETag, but not recorded as a copy of that version: copy again
    s3.put_object(Bucket="bucket-one", Key="snap/d.csv", Body=b"a,target\n1,0\n")
    assert not data._already_copied(local, "bucket-one", "snap/d.csv", obj)
    data.copy_version(local, "bucket-one", obj, "bucket-one", "snap/d.csv")
    assert data._already_copied(local, "bucket-one", "snap/d.csv", obj)
