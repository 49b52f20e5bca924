"""Data sets by name: where NAME lives, how the config resolves it, what a push stores.

The push's rows and schema digest travel as S3 user metadata; the requests are checked on
the local store (botocore's model, S3's 2 KB rule) and accepted by moto's S3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from sagepipe.flows.config import build_config, load_config
from sagepipe.tasks.data import META_ROWS, META_SCHEMA, push_dataset, schema_digest
from sagepipe.tasks.datasets import dataset_rows, dataset_uri_for, split_dataset_uri
from sagepipe.tasks.errors import ConfigError, DataError
from sagepipe.tasks.local import local_clients
from sagepipe.tasks.local.s3 import METADATA_LIMIT
from sagepipe.tasks.runtime import Clients

GOOD_CSV = "a,b,target\n" + "".join(f"{i}.0,x{i % 7},{i % 2}\n" for i in range(24))


def clients_of(s3: Any) -> Clients:
    return Clients(s3=s3, sagemaker=None, sagemaker_runtime=None, sns=None, logs=None,
                   ecr=None, codebuild=None)


@pytest.fixture()
def local(tmp_path: Path) -> Clients:
    s3 = local_clients(tmp_path / "state")["s3"]
    s3.create_bucket(Bucket="bkt")
    return clients_of(s3)


@pytest.fixture()
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bkt")
        s3.put_bucket_versioning(Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
        yield clients_of(s3)


# -- the layout ----------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "name", "expected"), [
    ("s3://b/datasets/breast-cancer/data.csv", "churn", "s3://b/datasets/churn/data.csv"),
    ("s3://b/datasets/churn-parquet/churn.parquet", "c2", "s3://b/datasets/c2/churn.parquet"),
    ("s3://b/a/b/sales/", "q3.v2", "s3://b/a/b/q3.v2/"),  # a prefix stays a prefix
    ("s3://b/data.csv", "x_1", "s3://b/x_1/data.csv"),
])
def test_a_name_replaces_the_dataset_folder_and_keeps_the_file(uri: str, name: str,
                                                               expected: str) -> None:
    assert dataset_uri_for(uri, name) == expected
    assert dataset_uri_for(expected, name) == expected  # idempotent
    assert split_dataset_uri(expected)[2] == name


@pytest.mark.parametrize("name", ["Churn", "", "-x", ".", "..", "a/b", "a b", "x" * 64,
                                  "été"])
def test_names_that_are_not_one_safe_key_segment_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not a data set name: use 1 to 63 lower-case"):
        dataset_uri_for("s3://b/datasets/d/data.csv", name)
    with pytest.raises(ConfigError) as err:
        build_config({"dataset": name})
    assert "- dataset: " in str(err.value) and "is not a data set name" in str(err.value)


def test_the_config_resolves_the_name_from_a_settings_file_or_an_override(
        tmp_path: Path) -> None:
    settings = tmp_path / "s.yaml"
    settings.write_text("dataset_uri: s3://bkt/data/iris/iris.csv\ndataset: flowers\n")
    from_file = load_config(str(settings))
    assert from_file.dataset_uri == "s3://bkt/data/flowers/iris.csv"
    assert from_file.data_rules().dataset == "flowers"
    overridden = load_config("local", {"dataset": "flowers"})
    assert overridden.dataset_uri == "s3://sagepipe-local/datasets/flowers/data.csv"
    parquet = load_config("churn-parquet", {"dataset": "c2"})
    assert parquet.dataset_uri.endswith("/datasets/c2/churn.parquet")
    # as the flow parameter travels: dumped, then validated again
    again = build_config(json.loads(json.dumps(overridden.model_dump(mode="json"))))
    assert again == overridden
    assert load_config("local").dataset_uri.endswith("/datasets/breast-cancer/data.csv")


# -- what a push stores ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "moto"])
def test_a_push_stores_rows_and_schema_digest_as_user_metadata(
        where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    clients: Clients = request.getfixturevalue(where)
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV)

    pushed = push_dataset(clients, path, "s3://bkt/datasets/alpha/data.csv", "target")

    head = clients.s3.head_object(Bucket="bkt", Key="datasets/alpha/data.csv",
                                  VersionId=pushed.version_id)
    assert head["Metadata"] == {META_ROWS: "24", META_SCHEMA: pushed.schema_digest}
    assert pushed.rows == 24
    assert pushed.schema_digest == schema_digest(["a", "b", "target"],
                                                 ["numeric", "text", "numeric"])
    rows = dataset_rows(clients, "s3://bkt/datasets/alpha/data.csv")
    assert [(r["version"], r["rows"], r["schema"], r["runs"]) for r in rows] == [
        (pushed.version_id, "24", pushed.schema_digest, "-")]


def test_the_digest_follows_column_names_order_and_kinds(local: Clients, tmp_path: Path) -> None:
    def digest(name: str, frame: pd.DataFrame, parquet: bool = False) -> str | None:
        path = tmp_path / f"{name}.{'parquet' if parquet else 'csv'}"
        if parquet:
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return push_dataset(local, path, f"s3://bkt/datasets/{name}/data", "target").schema_digest

    base = pd.DataFrame({"a": [float(i) for i in range(24)], "b": [f"x{i % 5}" for i in
                                                                   range(24)],
                         "target": [i % 2 for i in range(24)]})
    first = digest("base", base)
    assert first is not None and len(first) == 12
    assert digest("more-rows", pd.concat([base, base])) == first  # the shape, not the content
    assert digest("parquet", base, parquet=True) == first  # same columns, same kinds
    assert digest("renamed", base.rename(columns={"a": "z"})) != first
    assert digest("reordered", base[["b", "a", "target"]]) != first
    assert digest("kind", base.assign(a=[f"t{i}" for i in range(24)])) != first


def test_metadata_stays_under_s3s_2_kb_whatever_the_columns(local: Clients,
                                                             tmp_path: Path) -> None:
    # AWS: user metadata at most 2 KB, keys plus values in UTF-8 (tests/integration/
    # AWS_RULES.md); the local store refuses more, as S3 does
    columns = [f"a_rather_long_feature_column_name_number_{i:04d}" for i in range(300)]
    frame = pd.DataFrame({c: [float(i + j) for i in range(24)] for j, c in enumerate(columns)})
    frame["target"] = [i % 2 for i in range(24)]
    path = tmp_path / "wide.csv"
    frame.to_csv(path, index=False)

    pushed = push_dataset(local, path, "s3://bkt/datasets/wide/data.csv", "target")

    meta = local.s3.head_object(Bucket="bkt", Key="datasets/wide/data.csv")["Metadata"]
    assert meta[META_SCHEMA] == pushed.schema_digest and meta[META_ROWS] == "24"
    assert sum(len(k.encode()) + len(v.encode()) for k, v in meta.items()) < METADATA_LIMIT // 8


def test_a_version_pushed_without_metadata_shows_dashes(local: Clients) -> None:
    local.s3.put_object(Bucket="bkt", Key="datasets/old/data.csv", Body=GOOD_CSV.encode())
    rows = dataset_rows(local, "s3://bkt/datasets/old/data.csv")
    assert [(r["rows"], r["schema"], r["bytes"]) for r in rows] == [("-", "-", len(GOOD_CSV))]


def test_a_missing_named_dataset_says_how_to_make_it(local: Clients) -> None:
    from sagepipe.tasks.data import DataRules, inspect_dataset

    with pytest.raises(DataError) as err:
        inspect_dataset(local, "s3://bkt/datasets/nope/data.csv",
                        DataRules(dataset="nope"))
    assert str(err.value) == (
        "No dataset nope (s3://bkt/datasets/nope/data.csv); push it with `sagepipe data push "
        "FILE --dataset nope`, or see the data sets there are with `sagepipe data list`.")


def test_plan_with_a_dataset_names_its_key(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sagepipe.flows.plan import build_plan

    monkeypatch.chdir(tmp_path)  # the local state dir (.sagepipe) is relative: not the checkout
    calls = build_plan(load_config("local", {"dataset": "churn-2024"}))
    head = next(c for c in calls if c.operation == "HeadObject")
    assert head.params == {"Bucket": "sagepipe-local", "Key": "datasets/churn-2024/data.csv"}
    assert not head.problems
