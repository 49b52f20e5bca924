"""Bad data is refused with a message that says what to fix, before anything is stored.

``check_csv_head`` is the check that ``sagepipe data push`` and a run's pin-data step
share; ``push_dataset`` and ``pin_dataset`` must leave the store as it was when it
refuses. (The CLI's side of this is in test_cli.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.data import SAMPLE_BYTES, check_csv_head, pin_dataset, push_dataset
from tasks.endpoints import invoke
from tasks.errors import DataError, EndpointError
from tasks.local import teardown
from tasks.runtime import Clients, RuntimeSettings, get_clients

WHERE = "s3://bkt/data.csv"


def check(head: bytes, *, truncated: bool = False, label: str = "target") -> list[str]:
    return check_csv_head(head, where=WHERE, label_column=label, truncated=truncated)


def refused(head: bytes, *, truncated: bool = False, label: str = "target") -> str:
    with pytest.raises(DataError) as err:
        check(head, truncated=truncated, label=label)
    return str(err.value)


# -- check_csv_head ------------------------------------------------------------------------


def test_good_data_returns_the_header_and_the_label_may_be_text() -> None:
    assert check(b"a,b,target\n1,2.5,yes\n-3,4e2,no\n") == ["a", "b", "target"]


@pytest.mark.parametrize("cut", [b"5,6", b"5,6,1\n7.", b"5,x"],
                         ids=["short-row", "half-number", "half-text"])
def test_a_truncated_last_line_is_ignored(cut: bytes) -> None:
    head = b"a,b,target\n1,2,0\n3,4,1\n" + cut
    assert check(head, truncated=True) == ["a", "b", "target"]
    # the same bytes as a whole file are refused: the last line really is bad
    with pytest.raises(DataError, match=r"line [45] "):
        check(head, truncated=False)


def test_only_the_last_line_of_a_truncated_read_is_forgiven() -> None:
    message = refused(b"a,b,target\n1,2\n3,4,1\n5,6", truncated=True)
    assert message == (f"Dataset {WHERE} line 2 has 2 fields; the header has 3. Fix the CSV.")


@pytest.mark.parametrize("value", ["nan", "NaN", "NAN"])
def test_a_nan_value_is_refused(value: str) -> None:
    message = refused(f"a,b,target\n1,2,0\n3,{value},1\n".encode())
    assert message == (f"Dataset {WHERE} column 'b' has a missing value on line 3. Fill or drop "
                       "missing values.")


@pytest.mark.parametrize(("row", "fields"), [(b"3,4", 2), (b"3,4,1,9", 4), (b"3", 1)])
def test_a_row_with_the_wrong_field_count_is_refused(row: bytes, fields: int) -> None:
    message = refused(b"a,b,target\n1,2,0\n" + row + b"\n5,6,1\n")
    assert message == (f"Dataset {WHERE} line 3 has {fields} fields; the header has 3. "
                       "Fix the CSV.")


def test_no_label_column_names_it_and_lists_the_columns() -> None:
    message = refused(b"a,b,label\n1,2,0\n")
    assert message == (f"Dataset {WHERE} has no label column 'target'. Columns found: a, b, "
                       "label. Set label_column in the pipeline config, or add the column to "
                       "the data.")
    many = ",".join(f"c{i}" for i in range(25)).encode()
    assert "Columns found: c0, c1, " in refused(many + b"\n" + b"1," * 24 + b"1\n")
    assert "c19 ...." in refused(many + b"\n" + b"1," * 24 + b"1\n")


def test_non_numeric_feature_names_column_line_and_value() -> None:
    message = refused(b"a,b,target\n1,2,0\n3,4,1\nhello,6,0\n")
    assert message == (f"Dataset {WHERE} column 'a' is not numeric: line 4 holds 'hello'. The "
                       "example model needs numeric features; encode or drop that column.")


@pytest.mark.parametrize(("head", "needle"), [
    (b"", "is empty. Push a CSV with a header row and data."),
    (b"\n\n", "is empty. Push a CSV with a header row and data."),
    (b"a,b,target\n", "has a header but no rows. Push data rows too."),
    (b"a,b,target", "has a header but no rows. Push data rows too."),
])
def test_empty_and_header_only_are_refused(head: bytes, needle: str) -> None:
    assert refused(head) == f"Dataset {WHERE} {needle}"


# -- push_dataset and pin_dataset keep the store as it was ---------------------------------


@pytest.fixture()
def clients(tmp_path: Path) -> Iterator[Clients]:
    settings = RuntimeSettings(kind="local", state_dir=str(tmp_path / "state"))
    made = get_clients(settings)
    made.s3.create_bucket(Bucket="bkt")
    made.s3.put_bucket_versioning(Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
    yield made
    teardown((tmp_path / "state").resolve())


def versions(clients: Clients, prefix: str = "") -> list[tuple[str, str, bool]]:
    listing = clients.s3.list_object_versions(Bucket="bkt", Prefix=prefix)
    return [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listing.get("Versions", [])]


def test_push_refuses_bad_data_without_storing_a_version(clients: Clients,
                                                         tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("a,b,target\n1,2,0\n3,4,1\n")
    version = push_dataset(clients, good, WHERE, "target")
    before = versions(clients)
    assert before == [("data.csv", version, True)]
    bad = tmp_path / "bad.csv"
    for content in ("", "a,b\n1,2\n", "a,b,target\n", "a,b,target\n1,x,0\n", "a,target\n1,0\n"):
        bad.write_text(content)
        if content == "a,target\n1,0\n":  # good data, but the label column asked for differs
            with pytest.raises(DataError, match="no label column 'label'"):
                push_dataset(clients, bad, WHERE, "label")
            continue
        with pytest.raises(DataError) as err:
            push_dataset(clients, bad, WHERE, "target")
        assert str(bad) in str(err.value)
    assert versions(clients) == before
    body = clients.s3.get_object(Bucket="bkt", Key="data.csv")["Body"].read()
    assert body == good.read_bytes()


def test_push_to_a_prefix_says_which_key_to_use(clients: Clients, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("a,target\n1,0\n")
    with pytest.raises(DataError) as err:
        push_dataset(clients, good, "s3://bkt/datasets/", "target")
    assert str(err.value) == ("s3://bkt/datasets/ names a prefix; give the object key to write, "
                              "e.g. s3://bkt/datasets/data.csv")
    assert versions(clients) == []


def test_push_of_a_large_file_checks_only_its_head(clients: Clients, tmp_path: Path) -> None:
    """The sample cuts a line in two; that half line must not refuse good data."""
    row = "1.25,2.5,0\n"
    lines = SAMPLE_BYTES // len(row) + 100
    path = tmp_path / "big.csv"
    path.write_text("a,b,target\n" + row * lines)
    assert (SAMPLE_BYTES - len("a,b,target\n")) % len(row) != 0  # the cut is mid-line
    version = push_dataset(clients, path, WHERE, "target")
    assert versions(clients) == [("data.csv", version, True)]


def test_pin_refuses_bad_stored_data_and_writes_no_snapshot(clients: Clients) -> None:
    clients.s3.put_object(Bucket="bkt", Key="raw/data.csv", Body=b"a,b\n1,2\n")
    with pytest.raises(DataError) as err:
        pin_dataset(clients, "s3://bkt/raw/data.csv", "s3://bkt/pipeline", "target")
    assert str(err.value).startswith("Dataset s3://bkt/raw/data.csv has no label column "
                                     "'target'. Columns found: a, b.")
    assert versions(clients, "pipeline/") == []
    clients.s3.put_object(Bucket="bkt", Key="raw/data.csv", Body=b"")
    with pytest.raises(DataError, match=r"^Dataset s3://bkt/raw/data.csv is empty\."):
        pin_dataset(clients, "s3://bkt/raw/data.csv", "s3://bkt/pipeline", "target")
    assert versions(clients, "pipeline/") == []


def test_invoking_a_missing_endpoint_is_an_endpoint_error(clients: Clients) -> None:
    with pytest.raises(EndpointError) as err:
        invoke(clients, "ghost", b"1,2\n")
    error: Any = err.value
    assert (error.endpoint, error.status) == ("ghost", None)
    assert str(error) == "No endpoint named 'ghost'. `sagepipe status` lists the endpoints."


def test_line_numbers_count_blank_lines() -> None:
    with pytest.raises(DataError, match="line 4 holds 'x'"):
        check_csv_head(b"a,target\n1,0\n\nx,1\n", where="f.csv", label_column="target",
                       truncated=False)


def test_a_byte_order_mark_is_not_part_of_the_first_column_name() -> None:
    header = check_csv_head("\ufefftarget,a\n0,1.5\n".encode(), where="f.csv",
                            label_column="target", truncated=False)
    assert header == ["target", "a"]


def test_an_empty_feature_value_is_a_missing_value() -> None:
    with pytest.raises(DataError, match="column 'a' has a missing value on line 2"):
        check_csv_head(b"a,target\n,0\n", where="f.csv", label_column="target",
                       truncated=False)
