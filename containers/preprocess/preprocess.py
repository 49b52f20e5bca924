"""Split a tabular dataset into train/validation/test: the preprocessing step (a Processing job).

Reads CSV (comma, semicolon, tab or pipe separated, plain or gzip) and Parquet in blocks,
so memory stays bounded whatever the dataset size. Blocks are parsed by pyarrow in worker
threads (pyarrow drops the GIL, so this scales with cores); cells stay text and are written
back unchanged where they can be, because formatting float64 is several times slower than
parsing it. Rows whose label is empty are dropped and counted.

The split: for regression, row i (0-based over the kept rows of all files) goes to a split
by a hash of (i, seed); for classification it is stratified: the k-th row of a class goes to
the split that (offset(class, seed) + k * golden ratio) mod 1 falls in, so every class is
divided in the configured shares to within a row or two. Either way the split depends only
on the data and the seed, never on the block size or the number of threads.

Outputs: <out>/<split>/<split>.csv (comma-separated with a header, quoted where needed,
missing values empty) and <out>/schema/schema.json: the problem type and why, the classes,
every column's kind (numeric or categorical), the columns dropped and why, warnings.

Talks to the world only through the SageMaker container contract: paths come from the
command line; on error the reason goes to {SAGEMAKER_BASE_DIR}/output/failure (and
output/message, which Processing jobs report as ExitMessage) and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from columns import BlockColumn, ColumnProfile, profile_block
from dataset import (
    DELIMITER_NAMES,
    GOLDEN,
    DataError,
    FileFormat,
    LabelProfile,
    check_class_rows,
    check_columns,
    check_label_column,
    check_problem,
    detect_delimiter,
    label_variants,
    missing_set,
    parse_header,
    sniff,
)

SPLITS = ("train", "validation", "test")
SPLITMIX = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
PARQUET_ROWS = 65_536  # rows per Parquet block
DELIMITER_ARGS = {name: d for d, name in DELIMITER_NAMES.items()}


@dataclass(frozen=True)
class Chunk:
    """Whole lines of a CSV file from byte ``offset`` (decompressed), or Parquet rows."""

    file: Path
    fmt: FileFormat
    offset: int  # CSV: byte offset of the first line; Parquet: index of the first row
    data: bytes | pa.RecordBatch


@dataclass(frozen=True)
class LabelBlock:
    """The kept rows' labels: class texts with per-row indices, or regression values."""

    texts: list[str] | None = None
    indices: np.ndarray | None = None  # per row: its text's index in ``texts``
    rank: np.ndarray | None = None  # per row: how many rows of its class came before it
    counts: np.ndarray | None = None
    values: np.ndarray | None = None


@dataclass(frozen=True)
class Parsed:
    """A validated chunk: the rows with a label (cells as text), reduced per column."""

    chunk: Chunk
    batch: pa.RecordBatch | None
    label: pa.Array | None  # trimmed label texts of the kept rows
    raw_label: pa.Array | None  # the same before dropping empty ones (row numbers as read)
    dropped: int  # rows without a label
    columns: list[BlockColumn]
    block: LabelBlock | None = None  # the labels reduced (once the mode is known)

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else self.batch.num_rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--label-column", default="target")
    parser.add_argument("--problem", default="auto", choices=(
        "auto", "classification", "binary", "multiclass", "regression"))
    parser.add_argument("--delimiter", default="auto",
                        choices=("auto", *DELIMITER_ARGS, *DELIMITER_NAMES))
    parser.add_argument("--missing-value", action="append", default=[],
                        help="another spelling of 'missing' (repeatable)")
    parser.add_argument("--validation-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    # Bytes per block; only memory and speed depend on it, never the split.
    parser.add_argument("--block-size", type=int, default=2 << 20)
    return parser.parse_args(argv)


def check_fractions(validation: float, test: float) -> None:
    for name, value in (("validation_fraction", validation), ("test_fraction", test)):
        if not 0.0 < value < 1.0:
            raise DataError(f"{name} is {value}; it must be between 0 and 1 (exclusive).")
    if validation + test >= 1.0:
        raise DataError(
            f"validation_fraction + test_fraction is {validation + test:g}; it must be below 1 "
            "so that the train split gets rows."
        )


def splitmix(values: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per value: splitmix64 of the stream state seed + value * golden."""
    z = values.astype(np.uint64) * np.uint64(SPLITMIX) + np.uint64(seed & MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def split_uniforms(start: int, count: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) per global row index (rows start .. start + count - 1)."""
    return splitmix(np.arange(start + 1, start + count + 1, dtype=np.uint64), seed)


def rows_needed(fraction: float) -> int:
    """Rows that make an empty split unlikely (below 1%) at this fraction."""
    return int(np.ceil(np.log(0.01) / np.log1p(-fraction)))


def open_data(file: Path, fmt: FileFormat) -> BinaryIO:
    return gzip.open(file, "rb") if fmt.compression == "gzip" else file.open("rb")


def csv_header(file: Path, fmt: FileFormat) -> list[str]:
    with open_data(file, fmt) as f:
        line = f.readline().removeprefix(b"\xef\xbb\xbf")
    if not line.strip():
        raise DataError(f"Input file {file.name} is empty: expected a header row and data rows.")
    return parse_header(line.decode("utf-8").rstrip("\r\n"), fmt.delimiter or ",", file.name)


def read_formats(files: list[Path], delimiter: str | None) -> tuple[FileFormat, list[str]]:
    """The one format and header every input file shares."""
    formats = []
    for file in files:
        with file.open("rb") as f:
            formats.append(sniff(f.read(64 << 10), file.name))
    kinds = {f.format for f in formats}
    if len(kinds) > 1:
        names = ", ".join(f.name for f in files)
        raise DataError(f"The input mixes CSV and Parquet files ({names}); give one format "
                        "for all parts of a dataset.")
    fmt = formats[0]
    if fmt.format == "parquet":
        header = check_columns(list(pq.ParquetFile(files[0]).schema_arrow.names), files[0].name)
    else:
        if delimiter is None:
            with open_data(files[0], fmt) as f:
                lines = [f.readline().decode("utf-8", errors="replace") for _ in range(50)]
            delimiter = detect_delimiter([ln.removeprefix("\ufeff") for ln in lines if ln])
        fmt = FileFormat("csv", fmt.compression, delimiter)
        header = csv_header(files[0], fmt)
    for file, other in zip(files[1:], formats[1:], strict=True):
        names = (list(pq.ParquetFile(file).schema_arrow.names) if fmt.format == "parquet" else
                 csv_header(file, FileFormat("csv", other.compression, fmt.delimiter)))
        if names != header:
            raise DataError(f"{file.name} has different columns than {files[0].name}; all input "
                            "files must share one header (same columns, same order).")
    return fmt, header


def iter_chunks(files: list[Path], fmt: FileFormat, block_size: int) -> Iterator[Chunk]:
    """Blocks of every file, in order."""
    for file in files:
        print(f"reading {file.name}", flush=True)
        if fmt.format == "parquet":
            first = 0
            for batch in pq.ParquetFile(file).iter_batches(batch_size=PARQUET_ROWS):
                yield Chunk(file, fmt, first, batch)
                first += batch.num_rows
            continue
        with file.open("rb") as raw:
            compression = "gzip" if raw.read(2) == b"\x1f\x8b" else None
        file_fmt = FileFormat("csv", compression, fmt.delimiter)
        with open_data(file, file_fmt) as f:
            f.readline()
            offset, rest = f.tell(), b""
            while data := f.read(block_size):
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than the block: keep reading
                    rest = data
                    continue
                yield Chunk(file, file_fmt, offset, data[:cut])
                offset, rest = offset + cut, data[cut:]
            if rest.strip():
                yield Chunk(file, file_fmt, offset, rest)


def where(chunk: Chunk, row: int) -> str:
    """'line N of f.csv' / 'row N of f.parquet' (error path only: rereads the file)."""
    if chunk.fmt.format == "parquet":
        return f"row {chunk.offset + row + 1} of {chunk.file.name}"
    before = 0
    with open_data(chunk.file, chunk.fmt) as f:
        for start in range(0, chunk.offset, 1 << 20):
            before += f.read(min(1 << 20, chunk.offset - start)).count(b"\n")
    assert isinstance(chunk.data, bytes)
    seen = 0
    for i, line in enumerate(chunk.data.split(b"\n")):
        if line.strip(b"\r"):  # pyarrow skips empty lines
            if seen == row:
                return f"line {before + i + 1} of {chunk.file.name}"
            seen += 1
    return f"line {before + 1} of {chunk.file.name}"


def first_bad_value(col: pa.Array, to_type: pa.DataType) -> int:
    """Index of the first value that does not cast, found by bisection with pyarrow's own cast."""
    lo, hi = 0, len(col)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(col.slice(lo, mid - lo), to_type)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def to_text(column: pa.Array, name: str, file: str, missing: pa.Array) -> pa.Array:
    """A Parquet column as text with the CSV reader's notion of missing."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = pc.cast(column, kind.value_type), kind.value_type
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise DataError(f"{file}: column '{name}' holds {kind} values; the pipeline reads "
                        "numbers, text, booleans and dates. Flatten or drop it.")
    text = pc.cast(column, pa.string())
    return pc.if_else(pc.is_in(text, value_set=missing), pa.scalar(None, pa.string()), text)


class Splitter:
    """Parses, checks and splits the chunks of one dataset."""

    def __init__(self, args: argparse.Namespace, fmt: FileFormat, header: list[str]) -> None:
        self.args = args
        self.header = header
        self.label = args.label_column
        self.label_index = header.index(self.label)
        self.mode: str | None = None  # classification | regression, fixed by the first rows
        self.mode_source = ""
        missing = missing_set(args.missing_value)
        self.missing_values = sorted(missing)
        self.missing = pa.array(self.missing_values, pa.string())
        self.parse_options = pacsv.ParseOptions(delimiter=fmt.delimiter or ",")
        self.convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True,
            quoted_strings_can_be_null=True, null_values=self.missing_values)
        header_buffer = io.StringIO()
        csv.writer(header_buffer, lineterminator="\n").writerow(header)
        self.header_line = header_buffer.getvalue().encode()

    def table(self, chunk: Chunk) -> pa.RecordBatch | None:
        """The chunk's rows, every cell as text (None if it holds no rows)."""
        if isinstance(chunk.data, pa.RecordBatch):
            columns = [to_text(chunk.data.column(i), n, chunk.file.name, self.missing)
                       for i, n in enumerate(self.header)]
            return pa.RecordBatch.from_arrays(columns, names=self.header)
        options = pacsv.ReadOptions(column_names=self.header, use_threads=False,
                                    block_size=len(chunk.data) + 1)
        try:
            table = pacsv.read_csv(pa.py_buffer(chunk.data), read_options=options,
                                   parse_options=self.parse_options,
                                   convert_options=self.convert_options)
        except pa.ArrowInvalid as e:
            raise DataError(f"Could not parse {chunk.file.name} as "
                            f"{chunk.fmt.describe()} (block from {where(chunk, 0)}): {e}"
                            ) from None
        return table.combine_chunks().to_batches()[0] if table.num_rows else None

    def parse(self, chunk: Chunk) -> Parsed:
        """Parse a chunk as text, drop rows without a label, reduce; runs in a worker thread."""
        batch = self.table(chunk)
        if batch is None or batch.num_rows == 0:
            return Parsed(chunk, None, None, None, 0, [])
        raw = pc.utf8_trim_whitespace(batch.column(self.label_index))
        raw = pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
        if self.mode == "regression":
            self.check_numbers(raw, chunk)
        keep = pc.is_valid(raw)
        dropped = batch.num_rows - pc.sum(keep).as_py()
        label = raw
        if dropped:
            batch, label = batch.filter(keep), raw.filter(keep)
        columns = [profile_block(batch.column(i)) for i in range(len(self.header))
                   if i != self.label_index]
        parsed = Parsed(chunk, batch if batch.num_rows else None, label, raw, dropped, columns)
        if self.mode is not None and parsed.rows:
            return Parsed(**{**parsed.__dict__, "block": self.reduce_label(parsed)})
        return parsed

    def check_numbers(self, label: pa.Array, chunk: Chunk) -> None:
        try:
            values = pc.cast(label, pa.float64())
        except pa.ArrowInvalid:
            at = first_bad_value(label, pa.float64())
            raise DataError(
                f"Label column '{self.label}' has a non-numeric value '{label[at].as_py()}' at "
                f"{where(chunk, at)}; a regression label must be a number. If the label names "
                "classes, set problem: multiclass (or binary).") from None
        finite = pc.is_finite(values)
        if not pc.all(pc.or_kleene(finite, pc.is_null(values))).as_py():
            at = pc.index(finite, False).as_py()
            raise DataError(f"Label column '{self.label}' has a non-finite value "
                            f"'{label[at].as_py()}' at {where(chunk, at)}; regression labels "
                            "must be finite numbers.")

    def reduce_label(self, parsed: Parsed) -> LabelBlock:
        assert parsed.label is not None
        if self.mode == "regression":
            values = pc.cast(parsed.label, pa.float64()).to_numpy(zero_copy_only=False)
            return LabelBlock(values=values)
        encoded = pc.dictionary_encode(parsed.label)
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        texts = encoded.dictionary.to_pylist()
        # each row's rank among the block's rows of its class, in row order
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        rank = np.empty_like(indices)
        rank[order] = np.arange(len(indices)) - np.searchsorted(ordered, ordered, side="left")
        return LabelBlock(texts=texts, indices=indices, rank=rank,
                          counts=np.bincount(indices, minlength=len(texts)))

    def write(self, parsed: Parsed, u: np.ndarray, codes: np.ndarray | None
              ) -> dict[str, tuple[int, bytes, np.ndarray | None]]:
        """CSV bytes (and class counts) per split for a parsed chunk; in a worker thread."""
        assert parsed.batch is not None
        test_cut = self.args.test_fraction
        val_cut = test_cut + self.args.validation_fraction
        masks = {"train": u >= val_cut, "validation": (u >= test_cut) & (u < val_cut),
                 "test": u < test_cut}
        out: dict[str, tuple[int, bytes, np.ndarray | None]] = {}
        for split, mask in masks.items():
            part = parsed.batch.filter(pa.array(mask))
            if not part.num_rows:
                continue
            sink = pa.BufferOutputStream()
            try:  # unquoted cells are the input's bytes: the fast path
                pacsv.write_csv(part, sink, pacsv.WriteOptions(include_header=False,
                                                               quoting_style="none"))
            except pa.ArrowInvalid:  # a value holds a comma, quote or line break
                sink = pa.BufferOutputStream()
                pacsv.write_csv(part, sink, pacsv.WriteOptions(include_header=False))
            counts = None if codes is None else np.bincount(codes[mask])
            out[split] = (part.num_rows, sink.getvalue().to_pybytes(), counts)
        return out


class Stratifier:
    """Global class ids in order of first appearance, and each class's running row count."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.ids: dict[str, int] = {}
        self.seen = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(0)

    def positions(self, block: LabelBlock) -> tuple[np.ndarray, np.ndarray]:
        """(u in [0, 1) per row, global class id per row) for the next block, in order."""
        assert block.texts is not None and block.indices is not None and block.rank is not None
        for text in block.texts:
            self.ids.setdefault(text, len(self.ids))
        if len(self.ids) > len(self.seen):
            new = len(self.ids) - len(self.seen)
            self.seen = np.concatenate([self.seen, np.zeros(new, dtype=np.int64)])
            self.offsets = splitmix(np.arange(1, len(self.ids) + 1, dtype=np.uint64),
                                    self.seed ^ 0x5EED)
        lookup = np.array([self.ids[t] for t in block.texts], dtype=np.int64)
        codes = lookup[block.indices]
        k = self.seen[codes] + block.rank
        self.seen += np.bincount(codes, minlength=len(self.seen))
        return np.mod(self.offsets[codes] + k * GOLDEN, 1.0), codes


def input_files(input_dir: Path) -> list[Path]:
    if not input_dir.is_dir():
        raise DataError(f"Input directory {input_dir} does not exist. Check the job's input path.")
    # skip hidden files and markers such as Spark's _SUCCESS
    files = sorted(p for p in input_dir.iterdir()
                   if p.is_file() and not p.name.startswith((".", "_")))
    if not files:
        raise DataError(f"No data files in {input_dir}. Point the dataset URI at CSV or "
                        "Parquet data.")
    return files


def done(value: Parsed) -> Future[Parsed]:
    future: Future[Parsed] = Future()
    future.set_result(value)
    return future


class Run:
    """One pass over the dataset: parse in threads, then (in order) stratify, split, write."""

    def __init__(self, args: argparse.Namespace, fmt: FileFormat, header: list[str]) -> None:
        self.args = args
        self.splitter = Splitter(args, fmt, header)
        self.features = [ColumnProfile(c) for c in header if c != args.label_column]
        self.labels = LabelProfile()
        self.stratifier = Stratifier(args.seed)
        self.rows = dict.fromkeys(SPLITS, 0)
        self.class_rows: dict[str, np.ndarray] = {}
        self.kept = 0
        self.dropped = 0
        self.regression = {"min": np.inf, "max": -np.inf, "sum": 0.0}

    def take(self, parsed: Parsed) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Fold a parsed chunk into the totals; its rows' split positions (and class ids)."""
        self.dropped += parsed.dropped
        if not parsed.rows:
            return None
        for profile, block in zip(self.features, parsed.columns, strict=True):
            profile.add(block)
        if self.splitter.mode is None:  # the first rows decide classification or regression
            if self.args.problem == "regression":
                problem, source = "regression", "configured (problem: regression)"
            else:
                first = LabelProfile()
                first.add(parsed.label.to_pylist(), frozenset())
                problem, source = check_problem(first, self.args.label_column,
                                                self.args.problem, "The dataset", complete=False)
            self.splitter.mode = "regression" if problem == "regression" else "classification"
            self.splitter.mode_source = source
            if self.splitter.mode == "regression":
                assert parsed.raw_label is not None
                self.splitter.check_numbers(parsed.raw_label, parsed.chunk)
        block = parsed.block or self.splitter.reduce_label(parsed)  # the first chunk: here
        start, self.kept = self.kept, self.kept + parsed.rows
        if block.values is not None:
            self.regression["min"] = min(self.regression["min"], float(block.values.min()))
            self.regression["max"] = max(self.regression["max"], float(block.values.max()))
            self.regression["sum"] += float(block.values.sum())
            return split_uniforms(start, parsed.rows, self.args.seed), None
        assert block.texts is not None and block.counts is not None
        self.labels.add_counts(dict(zip(block.texts, block.counts.tolist(), strict=True)))
        if self.labels.overflow:
            check_problem(self.labels, self.args.label_column, self.args.problem,
                          "The dataset", complete=False)  # names the limit and the fix
        return self.stratifier.positions(block)

    def write(self, result: dict[str, tuple[int, bytes, np.ndarray | None]],
              outputs: dict[str, BinaryIO]) -> None:
        for split, (count, data, classes) in result.items():
            outputs[split].write(data)
            self.rows[split] += count
            if classes is not None:
                total = self.class_rows.setdefault(split, np.zeros(0, dtype=np.int64))
                if len(total) < len(classes):
                    total = np.concatenate([total, np.zeros(len(classes) - len(total),
                                                            dtype=np.int64)])
                total[: len(classes)] += classes
                self.class_rows[split] = total

    def stream(self, files: list[Path], fmt: FileFormat, outputs: dict[str, BinaryIO]) -> None:
        workers = max(2, os.cpu_count() or 1)
        window = 2 * workers  # chunks in flight per stage: bounds memory
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="split")
        parsing: deque[Future[Parsed]] = deque()
        writing: deque[Future[dict[str, tuple[int, bytes, np.ndarray | None]]]] = deque()
        started = last_report = time.monotonic()

        def advance(limit: int) -> None:
            """Hand parsed chunks (in order) on to be split; write split chunks (in order)."""
            nonlocal last_report
            while len(parsing) > limit:
                parsed = parsing.popleft().result()
                placed = self.take(parsed)
                if placed is not None:
                    writing.append(pool.submit(self.splitter.write, parsed, *placed))
            while len(writing) > limit:
                self.write(writing.popleft().result(), outputs)
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                rate = self.kept / (last_report - started)
                print(f"processed {self.kept} rows ({rate:,.0f} rows/s)", flush=True)

        try:
            for chunk in iter_chunks(files, fmt, self.args.block_size):
                if self.splitter.mode is None:  # the first rows fix the mode for all workers
                    parsing.append(done(self.splitter.parse(chunk)))
                    advance(0)
                else:
                    parsing.append(pool.submit(self.splitter.parse, chunk))
                advance(window)
            advance(0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_fractions(args.validation_fraction, args.test_fraction)
    files = input_files(args.input_dir)
    delimiter = None if args.delimiter == "auto" else DELIMITER_ARGS.get(args.delimiter,
                                                                          args.delimiter)
    fmt, header = read_formats(files, delimiter)
    check_label_column(header, args.label_column, files[0].name, fmt)
    if len(header) < 2:
        raise DataError(f"Dataset has only the label column '{args.label_column}'; no features.")
    state = Run(args, fmt, header)
    outputs: dict[str, BinaryIO] = {}
    started = time.monotonic()
    for split in SPLITS:
        path = args.output_dir / split / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs[split] = path.open("wb")
        outputs[split].write(state.splitter.header_line)
    try:
        state.stream(files, fmt, outputs)
    finally:
        for output in outputs.values():
            output.close()
    schema = summarise(args, state, fmt, header, files)
    schema_path = args.output_dir / "schema" / "schema.json"
    schema_path.parent.mkdir(parents=True, exist_ok=True)
    schema_path.write_text(json.dumps(schema, indent=2) + "\n")
    elapsed = time.monotonic() - started
    counts = ", ".join(f"{s}={n}" for s, n in state.rows.items())
    print(f"split {state.kept} rows in {elapsed:.1f}s ({schema['problem']}): {counts}",
          flush=True)
    for warning in schema["warnings"]:
        print(f"warning: {warning}", flush=True)
    return schema


def summarise(args: argparse.Namespace, state: Run, fmt: FileFormat, header: list[str],
              files: list[Path]) -> dict[str, Any]:
    """Check the totals and describe the dataset (schema.json)."""
    label = args.label_column
    if state.kept == 0:
        names = ", ".join(f.name for f in files)
        if state.dropped:
            raise DataError(f"Every row's label '{label}' is empty ({state.dropped} rows of "
                            f"{names}); there is nothing to learn. Fill the label column.")
        raise DataError(f"The dataset has a header but no data rows ({names}).")
    warnings = []
    if state.dropped:
        warnings.append(f"{state.dropped} row(s) with an empty label '{label}' were dropped")
    dropped = {p.name: p.drop_reason() for p in state.features if p.drop_reason()}
    for name, reason in dropped.items():
        warnings.append(f"column '{name}' was dropped: {reason}")
    for profile in state.features:
        warnings += profile.warnings()
    features = [p.name for p in state.features if p.name not in dropped]
    if not features:
        reasons = ", ".join(f"'{n}' ({r})" for n, r in dropped.items())
        raise DataError(f"No usable feature column: {reasons}. A model needs at least one "
                        "column that varies.")
    schema: dict[str, Any] = {"label_column": label, "feature_columns": features,
                              "input_columns": [c for c in header if c != label]}
    if state.splitter.mode == "regression":
        problem, source = "regression", state.splitter.mode_source
        schema["label_stats"] = {"min": state.regression["min"], "max": state.regression["max"],
                                 "mean": state.regression["sum"] / state.kept}
    else:
        problem, source = check_problem(state.labels, label, args.problem, "The dataset",
                                        complete=True)
        warnings += label_variants(state.labels, label)
        if problem == "regression":  # the first rows looked like classes, the rest did not
            raise DataError(f"Label '{label}' looked like classes in the first rows but holds "
                            f"{len(state.labels.counts)} distinct numbers in all; set problem: "
                            "regression or multiclass explicitly.")
        by_class = state.labels.classes()
        check_class_rows(by_class, label, "The dataset",
                         validation_fraction=args.validation_fraction,
                         test_fraction=args.test_fraction)
        schema["classes"] = list(by_class)
        schema["class_rows"] = class_split_rows(state, by_class)
    shares = {"validation": args.validation_fraction, "test": args.test_fraction}
    shares["train"] = 1.0 - args.validation_fraction - args.test_fraction
    for split in SPLITS:
        if state.rows[split] == 0:
            raise DataError(
                f"The {split} split got no rows out of {state.kept} rows ({split} share "
                f"{shares[split]:g}). Provide at least about {rows_needed(shares[split])} rows "
                "or change validation_fraction/test_fraction.")
    schema.update(
        problem=problem, problem_source=source, rows=state.rows, input_rows=state.kept +
        state.dropped, dropped_rows={"empty_label": state.dropped},
        columns=[p.summary() for p in state.features], dropped_columns=dropped,
        missing_values=state.splitter.missing_values, warnings=warnings,
        format={"format": fmt.format, "delimiter": fmt.delimiter,
                "compression": sorted({c for c in (compression(f) for f in files) if c}) or None,
                "files": [f.name for f in files]})
    return schema


def compression(file: Path) -> str | None:
    with file.open("rb") as f:
        return "gzip" if f.read(2) == b"\x1f\x8b" else None


def class_split_rows(state: Run, by_class: dict[Any, int]) -> dict[str, dict[str, int]]:
    """Rows per class per split, classes by their canonical value."""
    out: dict[str, dict[str, int]] = {str(c): dict.fromkeys(SPLITS, 0) for c in by_class}
    numeric, integral = state.labels.numeric, state.labels.integral
    from dataset import canonical_label

    for text, index in state.stratifier.ids.items():
        name = str(canonical_label(text, numeric, integral))
        for split in SPLITS:
            counts = state.class_rows.get(split, np.zeros(0, dtype=np.int64))
            out[name][split] += int(counts[index]) if index < len(counts) else 0
    return out


def write_failure(reason: str) -> None:
    """Leave the reason where SageMaker reports it (failure; message for Processing jobs)."""
    output = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "output"
    output.mkdir(parents=True, exist_ok=True)
    for name in ("failure", "message"):
        (output / name).write_text(reason + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except DataError as e:
        reason = str(e)
        print(f"preprocess failed: {reason}", file=sys.stderr, flush=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    else:
        return 0
    write_failure(reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
