"""The preprocess container: formats, the problem type, stratified splits, column profiling.

Run as SageMaker runs it: a process with SAGEMAKER_BASE_DIR in tmp_path and its paths on
the command line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from container_runs import PREPROCESS, SPLITS, assert_clean_failure, run


def preprocess(tmp: Path, input_dir: Path, *extra: object):  # type: ignore[no-untyped-def]
    args = ["--input-dir", input_dir, "--output-dir", tmp / "out", *extra]
    return run(PREPROCESS, *args, base=tmp / "ml")


def split_bytes(out: Path) -> dict[str, bytes]:
    return {s: (out / s / f"{s}.csv").read_bytes() for s in SPLITS}


def schema_of(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "out" / "schema" / "schema.json").read_text())


def given(tmp: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp / "in"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return folder


def ok(tmp: Path, folder: Path, *extra: object) -> dict[str, Any]:
    result = preprocess(tmp, folder, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return schema_of(tmp)


def test_preprocess_writes_splits_with_header_and_schema(dataset_dir: Path, splits: Path) -> None:
    source = (dataset_dir / "data.csv").read_text().splitlines()
    parts = {s: (splits / s / f"{s}.csv").read_text().splitlines() for s in SPLITS}
    assert all(lines[0] == source[0] for lines in parts.values())
    # every input row lands in exactly one split, unchanged
    assert sorted(row for lines in parts.values() for row in lines[1:]) == sorted(source[1:])
    schema = json.loads((splits / "schema" / "schema.json").read_text())
    assert schema["label_column"] == "target"
    assert schema["feature_columns"] == source[0].split(",")[:-1]
    assert schema["classes"] == [0, 1] and schema["problem"] == "binary"
    assert schema["input_rows"] == 569
    assert schema["rows"] == {s: len(parts[s]) - 1 for s in SPLITS}
    assert {c["kind"] for c in schema["columns"]} == {"numeric"}
    assert pd.read_csv(splits / "test" / "test.csv")["target"].dtype.kind == "i"


def test_classification_splits_are_stratified(tmp_path: Path) -> None:
    """Each class is divided in the configured shares to within a row or two, even a rare
    one, where a row-by-row random split would leave it to chance."""
    rng = np.random.default_rng(3)
    labels = rng.choice(["common", "middle", "rare"], 5000, p=[0.8, 0.18, 0.02])
    frame = pd.DataFrame({"x": rng.normal(size=5000), "label": labels})
    folder = given(tmp_path, {"d.csv": frame.to_csv(index=False)})
    schema = ok(tmp_path, folder, "--label-column", "label", "--validation-fraction", 0.2,
                "--test-fraction", 0.1)
    assert schema["problem"] == "multiclass" and schema["classes"] == ["common", "middle",
                                                                      "rare"]
    for name, counts in schema["class_rows"].items():
        total = sum(counts.values())
        assert total == (labels == name).sum()
        assert abs(counts["validation"] - 0.2 * total) <= 2, (name, counts)
        assert abs(counts["test"] - 0.1 * total) <= 2, (name, counts)
    test = pd.read_csv(tmp_path / "out" / "test" / "test.csv")
    assert test["label"].value_counts().to_dict() == {
        k: v["test"] for k, v in schema["class_rows"].items()}


def test_regression_uses_a_plain_split_and_records_label_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(20_000, 3)), columns=["a", "b", "c"])
    frame["target"] = frame["a"] * 3 + rng.normal(size=len(frame))
    folder = given(tmp_path, {"data.csv": frame.to_csv(index=False)})
    schema = ok(tmp_path, folder, "--validation-fraction", 0.2, "--test-fraction", 0.1)
    assert schema["problem"] == "regression" and "classes" not in schema
    assert schema["label_stats"]["min"] == pytest.approx(frame["target"].min())
    rows = schema["rows"]
    assert abs(rows["validation"] / 20_000 - 0.2) < 0.02
    assert abs(rows["test"] / 20_000 - 0.1) < 0.02
    assert sum(rows.values()) == 20_000


def test_split_is_deterministic_and_independent_of_blocks_and_files(
    dataset_dir: Path, splits: Path, tmp_path: Path
) -> None:
    reference = split_bytes(splits)
    # tiny blocks: dozens of chunks, parsed by several threads
    assert preprocess(tmp_path / "small", dataset_dir, "--block-size", 2048).returncode == 0
    assert split_bytes(tmp_path / "small" / "out") == reference
    # the same rows spread over two files (read in sorted order) split the same way
    lines = (dataset_dir / "data.csv").read_text().splitlines(keepends=True)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "part-1.csv").write_text("".join(lines[:300]))
    (tmp_path / "two" / "part-2.csv").write_text(lines[0] + "".join(lines[300:]))
    assert preprocess(tmp_path / "files", tmp_path / "two").returncode == 0
    assert split_bytes(tmp_path / "files" / "out") == reference
    # another seed, another split
    assert preprocess(tmp_path / "seed", dataset_dir, "--seed", 7).returncode == 0
    assert split_bytes(tmp_path / "seed" / "out")["test"] != reference["test"]


def rows_of(out: Path) -> list[dict[str, Any]]:
    frames = [pd.read_csv(out / s / f"{s}.csv", dtype=str, keep_default_na=False)
              for s in SPLITS]
    return sorted(pd.concat(frames).to_dict("records"), key=lambda r: r["id"])


def test_every_format_gives_the_same_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [f"r{i:03d}" for i in range(120)],
                          "color": ["red", "green, light", None][:1] * 40 + ["green, light"] * 40
                          + [None] * 40,
                          "x": [float(i) for i in range(120)], "y": ["a", "b"] * 60})
    csv_text = frame.to_csv(index=False)
    variants: dict[str, dict[str, str | bytes]] = {
        "comma": {"d.csv": csv_text},
        "semicolon": {"d.csv": frame.to_csv(index=False, sep=";")},
        "tab": {"d.tsv": frame.to_csv(index=False, sep="\t")},
        "pipe": {"d.txt": frame.to_csv(index=False, sep="|")},
        "gzip": {"d.csv.gz": gzip.compress(csv_text.encode())},
    }
    frame.to_parquet(tmp_path / "d.parquet")
    variants["parquet"] = {"d.parquet": (tmp_path / "d.parquet").read_bytes()}
    outputs = {}
    for name, files in variants.items():
        folder = given(tmp_path / name, files)
        schema = ok(tmp_path / name, folder, "--label-column", "y")
        assert schema["format"]["format"] == ("parquet" if name == "parquet" else "csv")
        rows = rows_of(tmp_path / name / "out")
        for row in rows:  # Parquet holds x as a float: "0.0" in CSV is "0" from Parquet
            row["x"] = float(row["x"])
        outputs[name] = rows
    assert outputs["semicolon"][0]["color"] == "red"
    for name, rows in outputs.items():
        assert rows == outputs["comma"], name
    # a value holding the separator is quoted in the comma-separated splits
    assert '"green, light"' in (tmp_path / "semicolon" / "out" / "train" / "train.csv").read_text()


def test_missing_values_text_columns_and_useless_columns(tmp_path: Path) -> None:
    n = 300
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "customer": [f"C{i}" for i in range(n)],  # an ID
        "plan": rng.choice(["basic", "plus", "?"], n),  # "?" means missing
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.integers(18, 80, n)),
        "size": ["7"] * n,  # constant
        "blank": [None] * n,  # empty
        "mostly_numbers": [str(i) if i != 17 else "unknown" for i in range(n)],
        "churn": rng.choice(["yes", "no", None], n, p=[0.3, 0.65, 0.05]),
    })
    folder = given(tmp_path, {"d.csv": frame.to_csv(index=False, sep=";")})
    schema = ok(tmp_path, folder, "--label-column", "churn", "--missing-value=unknown")
    kinds = {c["name"]: c["kind"] for c in schema["columns"]}
    assert kinds == {"customer": "categorical", "plan": "categorical", "age": "numeric",
                     "size": "numeric", "blank": "numeric", "mostly_numbers": "numeric"}
    assert schema["dropped_columns"] == {
        "customer": "text unique on every row (an ID?)", "size": "constant (7 on every row)",
        "blank": "entirely empty"}
    assert schema["feature_columns"] == ["plan", "age", "mostly_numbers"]
    dropped = int(frame["churn"].isna().sum())
    assert schema["dropped_rows"] == {"empty_label": dropped}
    assert schema["input_rows"] == n and sum(schema["rows"].values()) == n - dropped
    assert f"{dropped} row(s) with an empty label 'churn' were dropped" in schema["warnings"]
    assert "unknown" in schema["missing_values"] and "?" in schema["missing_values"]
    train = pd.read_csv(tmp_path / "out" / "train" / "train.csv", dtype=str,
                        keep_default_na=False)
    assert "?" not in set(train["plan"]) and "unknown" not in set(train["mostly_numbers"])
    # without --missing-value, the one word makes the column text, with a warning
    schema = ok(tmp_path / "again", folder, "--label-column", "churn")
    assert {c["name"]: c["kind"] for c in schema["columns"]}["mostly_numbers"] == "categorical"
    labelled = n - dropped
    assert any(f"'mostly_numbers' is treated as text because 1 of its {labelled} values is not "
               "a number ('unknown')" in w for w in schema["warnings"])


def test_classes_written_several_ways_are_warned_about(tmp_path: Path) -> None:
    """"yes", "Yes" and "YES" are three classes to a model: said, with the texts."""
    n = 300
    labels = ["yes", "Yes", "YES", "no"]
    frame = pd.DataFrame({"x": range(n), "churned": [labels[i % 4] for i in range(n)]})
    folder = given(tmp_path, {"d.csv": frame.to_csv(index=False)})
    schema = ok(tmp_path, folder, "--label-column", "churned")
    assert schema["problem"] == "multiclass"
    assert ("label 'churned' has classes that differ only in case or spaces ('YES', 'Yes', "
            "'yes'): they are learnt as 3 different classes. If they mean one, write them one "
            "way in the data") in schema["warnings"]
    clean = pd.DataFrame({"x": range(n), "churned": [labels[i % 2 * 3] for i in range(n)]})
    schema = ok(tmp_path / "clean", given(tmp_path / "c", {"d.csv": clean.to_csv(index=False)}),
                "--label-column", "churned")
    assert not any("differ only" in w for w in schema["warnings"])


def test_date_columns_are_named_as_dates_not_ids(tmp_path: Path) -> None:
    """A date on every row was dropped as "unique text per row (an ID?)"; repeated dates
    became categories without a word."""
    n = 200
    day = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame({
        "x": range(n),
        "signup": [(day + pd.Timedelta(days=i)).strftime("%Y-%m-%d") for i in range(n)],
        "last_seen": [(day + pd.Timedelta(days=i % 7)).strftime("%m/%d/%Y") for i in range(n)],
        "customer": [f"C{i}" for i in range(n)],
        "y": [i % 2 for i in range(n)],
    })
    folder = given(tmp_path, {"d.csv": frame.to_csv(index=False)})
    schema = ok(tmp_path, folder, "--label-column", "y")
    assert schema["dropped_columns"]["signup"].startswith(
        "a different date on every row; the default preprocess makes no features of dates: "
        "derive them")
    assert schema["dropped_columns"]["customer"] == "text unique on every row (an ID?)"
    assert any(w.startswith("column 'last_seen' holds dates and is used as categories")
               for w in schema["warnings"]), schema["warnings"]
    assert not any("'customer'" in w and "dates" in w for w in schema["warnings"])


def test_problem_may_be_configured_and_auto_infers_it(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": range(200), "y": [i % 4 for i in range(200)]})
    folder = given(tmp_path, {"d.csv": frame.to_csv(index=False)})
    assert ok(tmp_path / "a", folder, "--label-column", "y")["problem"] == "multiclass"
    schema = ok(tmp_path / "r", folder, "--label-column", "y", "--problem", "regression")
    assert schema["problem"] == "regression"
    assert schema["problem_source"] == "configured (problem: regression)"
    schema = ok(tmp_path / "c", folder, "--label-column", "y", "--problem", "classification")
    assert schema["problem"] == "multiclass" and schema["classes"] == [0, 1, 2, 3]


HEADER = "mean_radius,mean_texture,target\n"
ROW_LIST = [f"{10 + i},{20 - i},{i % 2}\n" for i in range(40)]
ROWS = "".join(ROW_LIST)


@pytest.mark.parametrize(
    ("files", "extra", "expected"),
    [
        ({"d.csv": HEADER + ROWS}, ["--label-column", "label"],
         ["no label column 'label'", "mean_radius, mean_texture, target", "label_column"]),
        ({"d.csv": ""}, [], ["d.csv is empty"]),
        ({"d.csv": HEADER}, [], ["header but no data rows"]),
        ({"d.csv": HEADER + "1,2,\n" * 5}, [], ["Every row's label 'target' is empty",
                                                "5 rows"]),
        ({"d.csv": HEADER + "".join(f"{i},{i},1\n" for i in range(40))}, [],
         ["one value only", "two classes"]),
        ({"d.csv": HEADER + ROWS + "1,2,7\n"}, [], ["fewer than 8 rows (7: 1)"]),
        ({"d.csv": HEADER + ROWS + "1,2,2\n"}, ["--problem", "binary"],
         ["problem is binary", "3 classes"]),
        ({"d.csv": HEADER + ROWS + "1,2,x\n"}, ["--problem", "regression"],
         ["non-numeric value 'x'", "line 42 of d.csv", "set problem: multiclass"]),
        ({"d.csv": HEADER + ROWS}, ["--test-fraction", "1.5"], ["test_fraction is 1.5"]),
        ({"d.csv": HEADER + ROWS}, ["--test-fraction", "0.6", "--validation-fraction", "0.5"],
         ["must be below 1"]),
        ({"d.csv": HEADER + "".join(ROW_LIST[:3])}, ["--problem", "regression"],
         ["split got no rows out of 3", "at least about"]),
        ({"d.xlsx": b"PK\x03\x04" + b"\x00" * 64}, [], ["looks like a ZIP archive"]),
        ({"a.csv": HEADER + ROWS, "b.csv": "x,y,target\n1,2,0\n"}, [],
         ["b.csv has different columns"]),
        ({"a.csv": HEADER + ROWS, "b.parquet": b"PAR1...."}, [], ["mixes CSV and Parquet"]),
        ({"d.csv": "a,b,target\n" + "7,x,0\n7,x,1\n" * 20}, [],
         ["No usable feature column", "'a' (constant (7 on every row))"]),
    ],
    ids=["missing-label", "empty-file", "header-only", "no-labels", "one-class", "small-class",
         "binary-but-three", "regression-text", "fraction-range", "fraction-sum",
         "empty-split", "excel", "header-mismatch", "mixed-formats", "no-features"],
)  # fmt: skip
def test_preprocess_rejects_bad_input_with_a_clear_reason(
    tmp_path: Path, files: dict[str, str | bytes], extra: list[str], expected: list[str]
) -> None:
    folder = given(tmp_path, files)
    reason = assert_clean_failure(preprocess(tmp_path, folder, *extra), tmp_path / "ml")
    for part in expected:
        assert part in reason


def test_a_bad_regression_label_far_into_the_file_names_its_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(5_000, 2)).round(4), columns=["a", "target"])
    frame["target"] = frame["target"].astype(object)
    frame.loc[4_321, "target"] = "oops"  # data row 4322 = file line 4323, far past block 1
    folder = given(tmp_path, {"data.csv": frame.to_csv(index=False)})
    result = preprocess(tmp_path, folder, "--block-size", 4096, "--problem", "regression")
    reason = assert_clean_failure(result, tmp_path / "ml")
    assert "'oops'" in reason and "line 4323 of data.csv" in reason
