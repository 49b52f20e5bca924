"""What a dataset file is and what its label asks for: the rules every data check shares.

The preprocessing job uses this module on the whole dataset; ``sagepipe data push`` and the
run's pin-data step load the same file (from the preprocess step's folder) to check a
dataset's first bytes before anything is stored or run. So "what is accepted" is decided
in one place, by the step that reads the data. Standard library, numpy and pyarrow only.

Accepted: CSV separated by ``,`` ``;`` tab or ``|`` (detected, or given), optionally
gzip-compressed, UTF-8 (a byte-order mark is fine); Parquet. Anything else is refused with
one line that says what the file looks like.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
PROBLEMS = ("binary", "multiclass", "regression")
# pyarrow's own missing-value spellings, plus "?" (the UCI repository's)
MISSING_VALUES = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                  "1.#IND", "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null", "?")
MAX_AUTO_CLASSES = 20  # a numeric label with at most this many whole values is a class label
MAX_CLASSES = 100  # more distinct label values than this is not a classification target
ACCEPTED = ("Accepted: CSV (comma, semicolon, tab or pipe separated; optionally gzip-"
            "compressed) and Parquet.")
# (leading bytes, what a file that starts with them is)
SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls)"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"ORC", "an ORC file"),
    (b"Obj\x01", "an Avro file"),
    (b"\x7fELF", "an executable program"),
)


class DataError(Exception):
    """An expected problem with the data; its message says what is wrong and what to do."""


@dataclass(frozen=True)
class FileFormat:
    format: str  # csv | parquet
    compression: str | None = None  # gzip
    delimiter: str | None = None  # csv only

    def describe(self) -> str:
        if self.format == "parquet":
            return "Parquet"
        name = DELIMITER_NAMES.get(self.delimiter or ",", repr(self.delimiter))
        return f"{name}-separated CSV" + (" (gzip)" if self.compression else "")


@dataclass
class LabelProfile:
    """The label values seen: counts of each distinct text (up to a cap) and their kind."""

    counts: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    missing: int = 0
    numeric: bool = True
    integral: bool = True
    overflow: bool = False  # more distinct values than tracked

    def add(self, values: Iterable[str | None], missing_values: frozenset[str]) -> None:
        counts: Counter[str] = Counter()
        missing = 0
        for value in values:
            if value is None or value in missing_values or not value.strip():
                missing += 1
            else:
                counts[value] += 1
        self.add_counts(counts, missing)

    def add_counts(self, counts: dict[str, int], missing: int = 0) -> None:
        """Count label texts (each distinct text once: vectorised callers pass counts)."""
        self.missing += missing
        for value, count in counts.items():
            self.rows += count
            if self.numeric:
                number = as_number(value)
                if number is None or not math.isfinite(number):
                    self.numeric = self.integral = False
                elif not number.is_integer():
                    self.integral = False
            if value in self.counts or len(self.counts) <= MAX_CLASSES:
                self.counts[value] += count
            else:
                self.overflow = True

    def add_array(self, column: Any) -> None:
        """Count a pyarrow string array of labels (None = missing) with vectorised kernels."""
        import pyarrow as pa
        import pyarrow.compute as pc

        trimmed = pc.utf8_trim_whitespace(column)
        present = trimmed.filter(pc.and_(pc.is_valid(trimmed), pc.not_equal(trimmed, "")))
        self.missing += len(column) - len(present)
        self.rows += len(present)
        if self.numeric and len(present):
            try:
                numbers = pc.cast(present, pa.float64())
            except pa.ArrowInvalid:
                self.numeric = self.integral = False
            else:
                if not pc.all(pc.is_finite(numbers)).as_py():
                    self.numeric = self.integral = False
                elif self.integral and not pc.all(pc.equal(pc.floor(numbers), numbers)).as_py():
                    self.integral = False
        if self.overflow:
            return
        counts = pc.value_counts(present)
        if len(counts) > MAX_CLASSES + 1:
            self.overflow = True
            return
        for value, count in zip(counts.field("values").to_pylist(),
                                counts.field("counts").to_pylist(), strict=True):
            if value in self.counts or len(self.counts) <= MAX_CLASSES:
                self.counts[value] += count
            else:
                self.overflow = True

    def classes(self) -> dict[Any, int]:
        """Rows per class, with numeric labels merged by value ("1" and "1.0" are one)."""
        merged: Counter[Any] = Counter()
        for text, count in self.counts.items():
            merged[canonical_label(text, self.numeric, self.integral)] += count
        return dict(sorted(merged.items(), key=lambda kv: (str(type(kv[0])), kv[0])))


def label_variants(label: LabelProfile, column: str) -> list[str]:
    """Warnings for text classes that differ only in case or surrounding spaces ("yes",
    "Yes", " YES"): almost always one class written several ways, trained as several."""
    if label.numeric:
        return []
    groups: dict[str, list[str]] = {}
    for text in label.counts:
        groups.setdefault(text.strip().casefold(), []).append(text)
    return [f"label '{column}' has classes that differ only in case or spaces "
            f"({', '.join(repr(t) for t in sorted(texts))}): they are learnt as "
            f"{len(texts)} different classes. If they mean one, write them one way in the data"
            for texts in groups.values() if len(texts) > 1]


DATE_FORMATS = ("%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y", "%m-%d-%Y",
                "%d %b %Y", "%b %d %Y", "%d %B %Y", "%B %d %Y", "%b %d, %Y", "%B %d, %Y")
DATE_SAMPLE = 5  # values a column's dates are judged by (columns.py: its EXAMPLES)
DATES_NOTE = ("the default preprocess makes no features of dates: derive them (day of week, "
              "days since an event) in your own preprocess step, or drop the column")


def is_date(text: str) -> bool:
    """ISO 8601 (with or without a time) or a common day/month/year spelling."""
    text = text.strip()
    if not 6 <= len(text) <= 40 or not any(c.isdigit() for c in text):
        return False
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return True
    except ValueError:
        pass
    day = text.split(" ", 1)[0] if text[:1].isdigit() and ":" in text else text
    for form in DATE_FORMATS:
        try:
            dt.datetime.strptime(day, form)
            return True
        except ValueError:
            continue
    return False


def as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def canonical_label(text: str, numeric: bool, integral: bool) -> Any:
    if not numeric:
        return text.strip()
    number = float(text)
    return int(number) if integral else number


def infer_problem(label: LabelProfile, column: str) -> tuple[str, str]:
    """(problem, why) from the label's values: text or few values -> classes, else regression."""
    classes = label.classes()
    shown = ", ".join(map(str, list(classes)[:6])) + (" ..." if len(classes) > 6 else "")
    distinct = f"{len(classes)}{'+' if label.overflow else ''}"
    if not label.numeric:
        kind = "binary" if len(classes) <= 2 else "multiclass"
        return kind, f"label '{column}' holds text ({distinct} values: {shown})"
    if label.overflow:
        return "regression", f"label '{column}' holds more than {MAX_CLASSES} distinct numbers"
    if len(classes) <= 2:
        return "binary", f"label '{column}' holds {distinct} distinct numbers ({shown})"
    if (label.integral and not label.overflow and len(classes) <= MAX_AUTO_CLASSES
            and len(classes) * 5 <= label.rows):
        return "multiclass", (f"label '{column}' holds {distinct} distinct whole numbers "
                              f"({shown}), each class in about {label.rows // len(classes)} rows")
    return "regression", f"label '{column}' holds {distinct} distinct numbers ({shown})"


def sniff(head: bytes, name: str) -> FileFormat:
    """The format of a file from its first bytes; refuses what the pipeline cannot read."""
    if head.startswith(b"PAR1"):
        return FileFormat("parquet")
    if head.startswith(b"\x1f\x8b"):
        inner = gunzip_head(head, name)
        if inner.startswith(b"PAR1"):
            raise DataError(f"{name} is a gzip-compressed Parquet file; Parquet compresses its "
                            "own columns: store the .parquet file as it is.")
        check_text(inner, name, truncated=True)
        return FileFormat("csv", "gzip")
    check_text(head, name, truncated=True)
    return FileFormat("csv")


def gunzip_head(head: bytes, name: str) -> bytes:
    """The start of a gzip stream's content (``head`` may be cut anywhere)."""
    try:
        return zlib.decompressobj(wbits=31).decompress(head, 1 << 20)
    except zlib.error as e:
        raise DataError(f"{name} starts like a gzip file but cannot be decompressed ({e}). "
                        f"{ACCEPTED}") from None


def check_text(head: bytes, name: str, *, truncated: bool) -> None:
    for magic, what in SIGNATURES:
        if head.startswith(magic):
            raise DataError(f"{name} looks like {what}, not a data table. {ACCEPTED} Export "
                            "or convert it to one of those.")
    if b"\x00" in head[:8192]:
        raise DataError(f"{name} is binary data (it holds NUL bytes), not text. {ACCEPTED}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (truncated and e.start >= len(head) - 3):  # a character cut by the read
            line = head[:e.start].count(b"\n") + 1
            raise DataError(f"{name} is not UTF-8 text (byte 0x{head[e.start]:02x} on line "
                            f"{line}). Save it as UTF-8 CSV.") from None
        text = head[:e.start].decode("utf-8")
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if start in ("{", "["):
        raise DataError(f"{name} looks like JSON, not a data table. {ACCEPTED} With pandas: "
                        "pandas.read_json(...).to_csv('data.csv', index=False).")


def text_lines(head: bytes, fmt: FileFormat, *, truncated: bool) -> list[str]:
    """Whole lines of a CSV file's first bytes (a cut last line dropped), BOM removed."""
    data = gunzip_head(head, "") if fmt.compression == "gzip" else head
    text = data.decode("utf-8", errors="ignore").removeprefix("\ufeff")
    lines = text.splitlines()
    if (truncated or fmt.compression) and lines and not text.endswith(("\n", "\r")):
        lines = lines[:-1]
    return lines


def detect_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the header and the first rows into the same, most fields."""
    sample = [line for line in lines[:50] if line.strip()]
    candidates = []
    for rank, delimiter in enumerate(DELIMITERS):
        rows = list(csv.reader(sample, delimiter=delimiter))
        if rows and len(rows[0]) >= 2:
            consistent = all(len(row) == len(rows[0]) for row in rows)
            candidates.append((consistent, len(rows[0]), -rank, delimiter))
    return max(candidates)[3] if candidates else ","


def parse_header(line: str, delimiter: str, name: str) -> list[str]:
    """Column names of a CSV header line, stripped; refuses blanks and repeats."""
    names = [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
    return check_columns(names, name)


def check_columns(names: list[str], name: str) -> list[str]:
    blank = [str(i + 1) for i, c in enumerate(names) if not c]
    if blank and len(names) > 1:
        raise DataError(f"{name}: column(s) {', '.join(blank)} of the header have no name. "
                        "Give every column a name.")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(f"{name} repeats column(s) {', '.join(dupes)} in its header; "
                        "column names must be unique.")
    return names


def missing_set(extra: Iterable[str] = ()) -> frozenset[str]:
    return frozenset(MISSING_VALUES) | frozenset(extra)


def check_label_column(columns: list[str], label: str, name: str, fmt: FileFormat) -> None:
    if label in columns:
        return
    shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
    hint = ""
    if fmt.format == "csv" and len(columns) == 1:
        hint = (" The header has a single column: if the file uses another separator, set "
                "data.delimiter.")
    raise DataError(f"{name} has no label column '{label}'. Columns found ({fmt.describe()}): "
                    f"{shown}. Set label_column to one of them, or add the column.{hint}")


def check_problem(label: LabelProfile, column: str, problem: str, name: str, *,
                  complete: bool) -> tuple[str, str]:
    """The problem (``auto`` resolved) and why; refuses labels that cannot be that problem.

    ``problem`` may also be ``classification``: binary or multiclass by the classes found.
    ``complete``: the profile covers the whole dataset, not just its first rows.
    """
    if label.rows == 0:
        raise DataError(f"{name}: every row's label '{column}' is empty, so there is nothing "
                        "to learn. Fill the label column.")
    inferred, why = infer_problem(label, column)
    classes = label.classes()
    if problem == "auto":
        resolved, source = inferred, f"inferred: {why}"
    elif problem == "classification":
        resolved = "binary" if len(classes) <= 2 else "multiclass"
        source = f"inferred: {why}"
    else:
        resolved, source = problem, f"configured (problem: {problem})"
    if resolved == "regression":
        if not label.numeric:
            example = next(t for t in label.counts if as_number(t) is None)
            raise DataError(f"{name}: problem is regression but label '{column}' holds text "
                            f"('{example}'). A regression label must be a number; for classes "
                            "set problem: multiclass (or binary).")
        return resolved, source
    if label.overflow or len(classes) > MAX_CLASSES:
        raise DataError(f"{name}: label '{column}' has more than {MAX_CLASSES} distinct values, "
                        "too many to be classes. If it is a quantity, set problem: regression; "
                        "otherwise choose another label_column.")
    if resolved == "binary" and len(classes) > 2:
        raise DataError(f"{name}: problem is binary but label '{column}' has {len(classes)} "
                        f"classes ({', '.join(map(str, list(classes)[:10]))}). Set problem: "
                        "multiclass (or auto).")
    if complete and len(classes) < 2:
        raise DataError(f"{name}: label '{column}' has one value only ({next(iter(classes))}); "
                        "a classifier needs at least two classes.")
    return resolved, source


GOLDEN = (math.sqrt(5) - 1) / 2


def max_gap(rows: int) -> float:
    """The widest gap between the positions of ``rows`` rows of one class on the unit circle."""
    import numpy as np

    points = np.sort((np.arange(rows) * GOLDEN) % 1.0)
    return float(max(np.diff(points).max(initial=0.0), 1.0 - points[-1] + points[0]))


def min_class_rows(validation_fraction: float, test_fraction: float) -> int:
    """Rows a class needs so that the stratified split puts at least one in every split.

    The k-th row of a class goes to the split its position (offset + k * golden ratio) mod 1
    falls in; the offsets rotate, the gaps do not, so a class reaches every split once its
    widest gap is below the smallest split's share.
    """
    smallest = min(validation_fraction, test_fraction,
                   1.0 - validation_fraction - test_fraction)
    rows = 2
    while max_gap(rows) >= smallest:
        rows += 1
    return rows


def check_class_rows(classes: dict[Any, int], column: str, name: str, *,
                     validation_fraction: float, test_fraction: float) -> None:
    """Refuse classes too small to appear in the train, validation and test splits."""
    needed = min_class_rows(validation_fraction, test_fraction)
    small = {c: n for c, n in classes.items() if n < needed}
    if small:
        counts = ", ".join(f"{c}: {n}" for c, n in list(small.items())[:10])
        raise DataError(
            f"{name}: label '{column}' has classes with fewer than {needed} rows ({counts}); "
            f"with validation_fraction {validation_fraction:g} and test_fraction "
            f"{test_fraction:g} each class needs {needed} to appear in every split. Add rows, "
            "merge or drop those classes, or raise split.validation_fraction/test_fraction. "
            "If the label is a quantity, set problem: regression.")


@dataclass(frozen=True)
class SampleReport:
    """What the first bytes of a dataset file say (the full data may hold more)."""

    format: FileFormat
    columns: list[str]
    rows: int
    label: LabelProfile
    problem: str
    problem_source: str
    features: list[str]  # usable in the sample
    unusable: dict[str, str]  # column -> why not usable, in the sample

    def summary(self) -> dict[str, Any]:
        return {"format": self.format.format, "compression": self.format.compression,
                "delimiter": self.format.delimiter, "columns": self.columns,
                "problem": self.problem, "problem_source": self.problem_source,
                "sample_rows": self.rows, "sample_classes": (
                    {str(k): v for k, v in self.label.classes().items()}
                    if self.problem != "regression" else None)}


def inspect_rows(header: list[str], rows: list[list[str | None]], *, fmt: FileFormat,
                 name: str, label: str, problem: str, missing: frozenset[str],
                 complete: bool, first_line: int = 2) -> SampleReport:
    """Check sample rows (cells as text, None = missing) against the label and problem."""
    check_label_column(header, label, name, fmt)
    if len(header) < 2:
        raise DataError(f"{name} has only the label column '{label}'; there are no features.")
    if not rows:
        raise DataError(f"{name} has a header but no data rows. Push data rows too.")
    at = header.index(label)
    profile = LabelProfile()
    for offset, row in enumerate(rows):
        if len(row) != len(header):
            where = f"line {first_line + offset}" if fmt.format == "csv" else f"row {offset + 1}"
            raise DataError(f"{name} {where} has {len(row)} fields; the header has "
                            f"{len(header)}. Fix the file (a value with the separator in it "
                            "must be quoted).")
    profile.add((row[at] for row in rows), missing)
    resolved, source = check_problem(profile, label, problem, name, complete=complete)
    features, unusable = [], {}
    for i, column in enumerate(header):
        if i == at:
            continue
        values = [row[i] for row in rows if row[i] is not None and row[i] not in missing
                  and row[i].strip()]
        if not values:
            unusable[column] = "empty"
        elif len(values) > 1 and len(set(values)) == 1 and len(values) == len(rows):
            unusable[column] = "constant"
        elif (len(values) == len(rows) > 1 and len(set(values)) == len(values)
              and any(as_number(v) is None for v in values)):
            dates = all(is_date(v) for v in values[:DATE_SAMPLE])
            unusable[column] = ("a different date on every row (dates make no feature in "
                                "the default preprocess)") if dates else \
                "unique text per row (an ID?)"
        else:
            features.append(column)
    if not features and complete:  # in a partial read, a column may vary further on
        reasons = ", ".join(f"'{c}' ({why})" for c, why in unusable.items())
        raise DataError(f"{name} has no usable feature column: {reasons}. A model needs at "
                        "least one column that varies.")
    return SampleReport(format=fmt, columns=header, rows=len(rows), label=profile,
                        problem=resolved, problem_source=source, features=features,
                        unusable=unusable)


def inspect_head(head: bytes, *, name: str, label: str, problem: str = "auto",
                 delimiter: str | None = None, missing: frozenset[str] = frozenset(
                     MISSING_VALUES), truncated: bool) -> SampleReport:
    """Check the first bytes of a CSV (or gzip CSV) file; Parquet needs :func:`inspect_table`."""
    fmt = sniff(head, name)
    if fmt.format != "csv":
        raise ValueError("inspect_head reads CSV; read Parquet with inspect_table")
    lines = text_lines(head, fmt, truncated=truncated)
    if not any(line.strip() for line in lines):
        raise DataError(f"{name} is empty. Push a table with a header row and data rows.")
    fmt = FileFormat("csv", fmt.compression, delimiter or detect_delimiter(lines))
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=fmt.delimiter)
    numbered = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    header = check_columns([c.strip() for c in numbered[0][1]], name)
    rows: list[list[str | None]] = []
    for line_no, row in numbered[1:]:
        if len(row) != len(header):
            raise DataError(f"{name} line {line_no} has {len(row)} fields; the header has "
                            f"{len(header)}. Fix the file (a value with the separator in it "
                            "must be quoted).")
        rows.append(list(row))
    return inspect_rows(header, rows, fmt=fmt, name=name, label=label, problem=problem,
                        missing=missing, complete=not truncated)


def inspect_table(table: Any, *, name: str, label: str, complete: bool, problem: str = "auto",
                  missing: frozenset[str] = frozenset(MISSING_VALUES)) -> SampleReport:
    """Check the first rows of a Parquet file, given as a pyarrow Table."""
    header = check_columns(list(table.column_names), name)
    columns = [text_column(table.column(i), header[i], name) for i in range(len(header))]
    rows = [list(r) for r in zip(*columns, strict=True)] if columns else []
    return inspect_rows(header, rows, fmt=FileFormat("parquet"), name=name, label=label,
                        problem=problem, missing=missing, complete=complete)


def text_column(column: Any, column_name: str, name: str) -> list[str | None]:
    """A pyarrow column's values as text (None for nulls); refuses nested values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = kind.value_type
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise DataError(f"{name}: column '{column_name}' holds {kind} values; the pipeline "
                        "reads numbers, text, booleans and dates. Flatten or drop it.")
    return list(pc.cast(column, pa.string()).to_pylist())


def scan_labels(path: Any, fmt: FileFormat, label: str, missing: frozenset[str]) -> LabelProfile:
    """Every label of a local file, read as a stream of the label column only."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    profile = LabelProfile()
    if fmt.format == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=[label]):
            profile.add_array(pa.array(text_column(batch.column(0), label, str(path)),
                                       pa.string()))
        return profile
    stream = pa.input_stream(str(path), compression="gzip" if fmt.compression else None)
    reader = pacsv.open_csv(
        stream, read_options=pacsv.ReadOptions(block_size=4 << 20),
        parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter or ","),
        convert_options=pacsv.ConvertOptions(
            include_columns=[label], column_types={label: pa.string()},
            strings_can_be_null=True, null_values=sorted(missing)))
    for batch in reader:
        profile.add_array(batch.column(0))
    return profile


def first_rows(source: Any, rows: int = 2000) -> Any:
    """The first rows of a Parquet file (a path, a seekable file or a ParquetFile) as a Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = source if isinstance(source, pq.ParquetFile) else pq.ParquetFile(source)
    batch = next(parquet.iter_batches(batch_size=rows), None)
    if batch is None:
        return parquet.schema_arrow.empty_table()
    return pa.Table.from_batches([batch])
