"""Data is checked before anything is stored or run, with a message that says what to fix.

``inspect_file`` is what ``sagepipe data push`` runs on a local file (its whole label
column is read); ``inspect_object`` what a run's pin-data step runs on the first bytes of a
stored object. Both use the preprocess step's own rules (containers/preprocess/dataset.py).
``push_dataset`` and ``pin_dataset`` must leave the store as it was when they refuse.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sagepipe.tasks.data import (
    SAMPLE_BYTES,
    DataRules,
    DataSettings,
    inspect_file,
    pin_dataset,
    push_dataset,
)
from sagepipe.tasks.endpoints import invoke
from sagepipe.tasks.errors import DataError, EndpointError
from sagepipe.tasks.local import teardown
from sagepipe.tasks.runtime import Clients, RuntimeSettings, get_clients

WHERE = "s3://bkt/data.csv"


def table(rows: int = 40, classes: tuple[Any, ...] = (0, 1)) -> str:
    """A small valid CSV: two numeric features, a label cycling through ``classes``."""
    lines = ["a,b,target"] + [f"{i},{i * 0.5},{classes[i % len(classes)]}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def refused(path: Path, rules: DataRules | str = "target") -> str:
    with pytest.raises(DataError) as err:
        inspect_file(path, rules)
    message = str(err.value)
    assert "Traceback" not in message and len(message.splitlines()) == 1
    return message


# -- formats that are accepted ---------------------------------------------------------------


@pytest.mark.parametrize(("sep", "name"), [(",", "comma"), (";", "semicolon"),
                                           ("\t", "tab"), ("|", "pipe")])
def test_every_common_separator_is_detected(tmp_path: Path, sep: str, name: str) -> None:
    path = write(tmp_path, table().replace(",", sep), "data.tsv" if sep == "\t" else "d.csv")
    report = inspect_file(path, "target")
    assert report is not None
    assert (report.format, report.delimiter) == ("csv", sep)
    assert report.columns == ["a", "b", "target"] and report.problem == "binary"
    assert name in report.describe() or (sep == "\t" and "tabs" in report.describe())


def test_gzip_csv_and_parquet_are_read(tmp_path: Path) -> None:
    gz = write(tmp_path, gzip.compress(table().encode()), "data.csv.gz")
    report = inspect_file(gz, "target")
    assert report is not None and (report.format, report.compression) == ("csv", "gzip")
    assert report.classes == {"0": 20, "1": 20} and report.complete
    frame = pd.read_csv(write(tmp_path, table()))
    frame.to_parquet(tmp_path / "data.parquet")
    report = inspect_file(tmp_path / "data.parquet", "target")
    assert report is not None and report.format == "parquet" and report.delimiter is None
    assert report.classes == {"0": 20, "1": 20}


def test_a_given_delimiter_wins_over_detection(tmp_path: Path) -> None:
    # "a;b,c" splits into more fields on ";" alone, but the user said commas
    path = write(tmp_path, "x;y,target\n" + "".join(f"{i % 3};{i % 5},{i % 2}\n"
                                                      for i in range(40)))
    detected = inspect_file(path, "target")
    assert detected is not None and detected.delimiter == ","
    rules = DataRules(label_column="target", data=DataSettings(delimiter=";"))
    assert "no label column 'target'" in refused(path, rules)


@pytest.mark.parametrize(("labels", "problem", "why"), [
    (("setosa", "versicolor", "virginica"), "multiclass", "holds text (3 values"),
    (("yes", "no"), "binary", "holds text (2 values"),
    ((0, 1), "binary", "2 distinct numbers"),
    ((1, 2, 3, 4, 5), "multiclass", "5 distinct whole numbers"),
])
def test_the_problem_type_is_inferred_from_the_label(tmp_path: Path, labels: tuple[Any, ...],
                                                     problem: str, why: str) -> None:
    report = inspect_file(write(tmp_path, table(60, labels)), "target")
    assert report is not None and report.problem == problem
    assert report.problem_source.startswith("inferred") and why in report.problem_source


def test_many_distinct_numbers_are_regression_and_empty_labels_are_allowed(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=500), "target": rng.normal(size=500) * 100})
    frame.loc[::50, "target"] = np.nan  # rows without a label are dropped by the job
    report = inspect_file(write(tmp_path, frame.to_csv(index=False)), "target")
    assert report is not None and report.problem == "regression" and report.classes is None
    assert report.rows_checked == 490


def test_missing_values_and_text_features_are_accepted(tmp_path: Path) -> None:
    content = "id,color,x,target\n" + "".join(
        f"u{i},{['red', 'blue', ''][i % 3]},{'' if i % 7 == 0 else i},{i % 2}\n"
        for i in range(40))
    report = inspect_file(write(tmp_path, content), "target")
    assert report is not None and report.features == ["color", "x"]
    assert report.unusable == {"id": "unique text per row (an ID?)"}


def test_a_date_column_is_named_as_dates_at_data_push(tmp_path: Path) -> None:
    content = "day,x,target\n" + "".join(
        f"2024-{1 + i // 28:02d}-{1 + i % 28:02d},{i},{i % 2}\n" for i in range(40))
    report = inspect_file(write(tmp_path, content), "target")
    assert report is not None and report.features == ["x"]
    assert report.unusable == {"day": "a different date on every row (dates make no feature "
                                      "in the default preprocess)"}


# -- what is refused, and how ----------------------------------------------------------------

BAD_FILES: list[tuple[str, bytes, list[str]]] = [
    ("xlsx", b"PK\x03\x04" + b"\x00" * 200, ["looks like a ZIP archive", "Excel .xlsx",
                                             "Accepted: CSV", "Parquet"]),
    ("xls", bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 200, ["Excel 97-2003"]),
    ("json", b'[{"a": 1, "target": 0}]', ["looks like JSON", "to_csv"]),
    ("binary", b"abc\x00\x01\x02" * 50, ["binary data", "NUL bytes"]),
    ("pdf", b"%PDF-1.7\n" + b"x" * 100, ["a PDF document"]),
    ("latin-1", "a,target\ncaf\xe9,0\n".encode("latin-1"), ["not UTF-8", "line 2",
                                                            "Save it as UTF-8"]),
    ("bad-gzip", b"\x1f\x8b\x08\x00garbage-not-deflate", ["cannot be decompressed"]),
    ("empty", b"", ["is empty"]),
    ("blank-lines", b"\n\n\n", ["is empty"]),
    ("header-only", b"a,b,target\n", ["header but no data rows"]),
    ("no-label", b"a,b,label\n1,2,0\n", ["no label column 'target'", "Columns found",
                                         "a, b, label", "Set label_column"]),
    ("other-separator", b"a:b:target\n1:2:0\n", ["no label column", "single column",
                                                 "data.delimiter"]),
    ("label-only", b"target\n0\n1\n", ["only the label column"]),
    ("short-row", b"a,b,target\n1,2,0\n3,4\n5,6,1\n", ["line 3 has 2 fields",
                                                        "header has 3"]),
    ("duplicate-column", b"a,a,target\n1,2,0\n", ["repeats column(s) a"]),
    ("no-labels", b"a,target\n1,\n2,\n", ["every row's label 'target' is empty"]),
    ("one-class", table(40, (1,)).encode(), ["one value only (1)", "at least two classes"]),
    ("small-class", table(40, (0,) * 19 + (1,)).encode(), ["fewer than 8 rows (1: 2)",
                                                           "appear in every split"]),
    ("constant-features", b"a,b,target\n" + b"7,x,0\n7,x,1\n" * 20,
     ["no usable feature column", "'a' (constant)", "'b' (constant)"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_with_one_clear_line(tmp_path: Path, name: str, content: bytes,
                                                   expected: list[str]) -> None:
    message = refused(write(tmp_path, content, f"upload.{name}"))
    assert message.startswith(f"Dataset {tmp_path}/upload.{name}") or name == "empty"
    for part in expected:
        assert part in message


@pytest.mark.parametrize(("problem", "content", "expected"), [
    ("regression", table(40, ("a", "b")), ["problem is regression", "holds text ('a')",
                                           "set problem: multiclass"]),
    ("binary", table(60, (0, 1, 2)), ["problem is binary", "has 3 classes", "multiclass"]),
    ("auto", "a,target\n" + "".join(f"{i},c{i}\n" for i in range(300)),
     ["more than 100 distinct values", "set problem: regression"]),
])
def test_a_label_that_cannot_be_the_problem_is_refused(tmp_path: Path, problem: str,
                                                       content: str, expected: list[str]) -> None:
    message = refused(write(tmp_path, content), DataRules(label_column="target",
                                                          problem=problem))  # type: ignore[arg-type]
    for part in expected:
        assert part in message


def test_the_split_fractions_set_the_rows_a_class_needs(tmp_path: Path) -> None:
    # 10 rows of class 1: enough for 15% splits (8), not for 10% ones (13)
    path = write(tmp_path, table(60, (0, 0, 0, 0, 0, 1)))
    assert inspect_file(path, DataRules(label_column="target")) is not None
    message = refused(path, DataRules(label_column="target", validation_fraction=0.1,
                                      test_fraction=0.1))
    assert "fewer than 13 rows (1: 10)" in message


def test_a_step_without_checks_leaves_them_to_the_job(tmp_path: Path) -> None:
    step = tmp_path / "my-preprocess"
    step.mkdir()
    path = write(tmp_path, b"anything at all")
    assert inspect_file(path, DataRules(label_column="y", step_dir=str(step))) is None


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
    good = write(tmp_path, table(), "good.csv")
    pushed = push_dataset(clients, good, WHERE, "target")
    assert pushed.report is not None and pushed.report.problem == "binary"
    before = versions(clients)
    assert before == [("data.csv", pushed.version_id, True)]
    for name, content, _ in BAD_FILES:
        bad = write(tmp_path, content, f"bad.{name}")
        with pytest.raises(DataError) as err:
            push_dataset(clients, bad, WHERE, "target")
        assert str(bad) in str(err.value)
    assert versions(clients) == before
    body = clients.s3.get_object(Bucket="bkt", Key="data.csv")["Body"].read()
    assert body == good.read_bytes()


def test_push_to_a_prefix_says_which_key_to_use(clients: Clients, tmp_path: Path) -> None:
    good = write(tmp_path, table(), "good.csv")
    with pytest.raises(DataError) as err:
        push_dataset(clients, good, "s3://bkt/datasets/", "target")
    assert str(err.value) == ("s3://bkt/datasets/ names a prefix; give the object key to write, "
                              "e.g. s3://bkt/datasets/data.csv")
    assert versions(clients) == []


def test_push_of_a_large_file_reads_every_label(clients: Clients, tmp_path: Path) -> None:
    """The sample cuts a line in two (that half line must not refuse good data); the label
    scan still reads every row, so a class that only appears past the sample is counted."""
    row = "1.25,2.5,0\n"
    lines = SAMPLE_BYTES // len(row) + 100
    path = tmp_path / "big.csv"
    path.write_text("a,b,target\n" + row * lines + "3.5,1.0,2\n" * 9)
    assert (SAMPLE_BYTES - len("a,b,target\n")) % len(row) != 0  # the cut is mid-line
    pushed = push_dataset(clients, path, WHERE, "target")
    assert versions(clients) == [("data.csv", pushed.version_id, True)]
    assert pushed.report is not None and pushed.report.classes == {"0": lines, "2": 9}
    assert pushed.report.rows_checked == lines + 9


def test_pin_refuses_bad_stored_data_and_writes_no_snapshot(clients: Clients) -> None:
    clients.s3.put_object(Bucket="bkt", Key="raw/data.csv", Body=b"a,b\n1,2\n")
    with pytest.raises(DataError) as err:
        pin_dataset(clients, "s3://bkt/raw/data.csv", "s3://bkt/pipeline", "target")
    assert str(err.value).startswith("Dataset s3://bkt/raw/data.csv has no label column "
                                     "'target'. Columns found (comma-separated CSV): a, b.")
    assert versions(clients, "pipeline/") == []
    clients.s3.put_object(Bucket="bkt", Key="raw/data.csv", Body=b"")
    with pytest.raises(DataError, match=r"^Dataset s3://bkt/raw/data.csv is empty\."):
        pin_dataset(clients, "s3://bkt/raw/data.csv", "s3://bkt/pipeline", "target")
    clients.s3.put_object(Bucket="bkt", Key="raw/data.csv", Body=b"PK\x03\x04" + b"\x00" * 99)
    with pytest.raises(DataError, match="looks like a ZIP archive"):
        pin_dataset(clients, "s3://bkt/raw/data.csv", "s3://bkt/pipeline", "target")
    assert versions(clients, "pipeline/") == []


def test_pin_reads_a_stored_parquet_file_by_ranges(clients: Clients, tmp_path: Path) -> None:
    frame = pd.read_csv(write(tmp_path, table(60, ("cat", "dog", "owl"))))
    frame.to_parquet(tmp_path / "d.parquet")
    clients.s3.upload_file(str(tmp_path / "d.parquet"), "bkt", "raw/d.parquet")
    pin = pin_dataset(clients, "s3://bkt/raw/d.parquet", "s3://bkt/pipeline", "target")
    assert pin.report is not None and pin.report.format == "parquet"
    assert pin.report.problem == "multiclass" and not pin.report.complete
    assert pin.report.classes == {"cat": 20, "dog": 20, "owl": 20}


def test_invoking_a_missing_endpoint_is_an_endpoint_error(clients: Clients) -> None:
    with pytest.raises(EndpointError) as err:
        invoke(clients, "ghost", b"1,2\n")
    error: Any = err.value
    assert (error.endpoint, error.status) == ("ghost", None)
    assert str(error) == "No endpoint named 'ghost'. `sagepipe status` lists the endpoints."


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    message = refused(write(tmp_path, b"a,target\n1,0\n\n2\n"))
    assert "line 4 has 1 fields" in message


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    report = inspect_file(write(tmp_path, "\ufeff" + table().replace("a,b,target",
                                                                    "target,b,a")), "target")
    assert report is not None and report.columns[0] == "target"
