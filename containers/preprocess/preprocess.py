"""Split a CSV dataset into train/validation/test: the preprocessing step (a Processing job).

Streams the input in blocks of whole lines, so memory stays bounded whatever the dataset
size. Each block is parsed by pyarrow in a worker thread (pyarrow drops the GIL, so this
scales with cores): cells are kept as text and written back unchanged, because formatting
float64 is several times slower than parsing it, while every feature column is still cast
to float64 to reject non-numeric, missing or infinite values. Row i (0-based over all
files) goes to a split by a hash of (i, seed): the split depends only on the data and the
seed, never on the block size or the number of threads.

Talks to the world only through the SageMaker container contract: paths come from the
command line; on error the reason goes to {SAGEMAKER_BASE_DIR}/output/failure (and
output/message, which Processing jobs report as ExitMessage) and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
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
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

SPLITS = ("train", "validation", "test")
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


class DataError(Exception):
    """An expected problem with the input or arguments; its message is the failure reason."""


@dataclass(frozen=True)
class Chunk:
    """Whole lines of one file, starting at byte `offset` of that file."""

    file: Path
    offset: int
    data: bytes


@dataclass(frozen=True)
class Parsed:
    """A validated chunk: its cells as text, and the distinct labels it holds."""

    chunk: Chunk
    batch: pa.RecordBatch | None
    labels: list[object]

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else self.batch.num_rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--label-column", default="target")
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


def split_uniforms(start: int, count: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) per global row index: splitmix64 of the stream state seed + (i+1)*golden."""
    idx = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z = idx * np.uint64(GOLDEN) + np.uint64(seed & MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def read_header(path: Path) -> tuple[list[str], bytes]:
    """Column names and the raw header line (without a UTF-8 BOM) of one CSV file."""
    with path.open("rb") as f:
        line = f.readline()
    if not line.strip():
        raise DataError(f"Input file {path.name} is empty: expected a header row and data rows.")
    raw = line.removeprefix(b"\xef\xbb\xbf")
    names = next(csv.reader([raw.decode("utf-8").rstrip("\r\n")]))
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(f"{path.name} repeats column(s) {', '.join(dupes)} in its header.")
    return names, raw.rstrip(b"\r\n") + b"\n"  # pyarrow writes rows with "\n" endings


def iter_chunks(files: list[Path], header: list[str], block_size: int) -> Iterator[Chunk]:
    """Blocks of whole data lines of every file, in order; checks each file's header."""
    for file in files:
        if read_header(file)[0] != header:
            raise DataError(
                f"{file.name} has a different header than {files[0].name}; all input files "
                "must share one header (same columns, same order)."
            )
        print(f"reading {file.name}", flush=True)
        with file.open("rb") as f:
            f.readline()
            offset, rest = f.tell(), b""
            while data := f.read(block_size):
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a line longer than the block: keep reading
                    rest = data
                    continue
                yield Chunk(file, offset, data[:cut])
                offset, rest = offset + cut, data[cut:]
            if rest.strip():
                yield Chunk(file, offset, rest)


def line_number(chunk: Chunk, row: int) -> int:
    """1-based file line of the chunk's row-th data row (error path only: rereads the file)."""
    before = 0
    with chunk.file.open("rb") as f:
        for start in range(0, chunk.offset, 1 << 20):
            before += f.read(min(1 << 20, chunk.offset - start)).count(b"\n")
    seen = 0
    for i, line in enumerate(chunk.data.split(b"\n")):
        if line.strip(b"\r"):  # pyarrow skips empty lines
            if seen == row:
                return before + i + 1
            seen += 1
    return before + 1


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


def rows_needed(fraction: float) -> int:
    """Rows that make an empty split unlikely (below 1%) at this fraction."""
    return int(np.ceil(np.log(0.01) / np.log1p(-fraction)))


class Splitter:
    """Validates chunks of one dataset and serialises their rows per split."""

    def __init__(self, args: argparse.Namespace, header: list[str]) -> None:
        self.args = args
        self.header = header
        self.label = args.label_column
        self.label_index = header.index(self.label)
        self.label_type: pa.DataType | None = None
        self.write_options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        self.convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True
        )

    def where(self, chunk: Chunk, row: int) -> str:
        return f"line {line_number(chunk, row)} of {chunk.file.name}"

    def parse(self, chunk: Chunk) -> Parsed:
        """Parse a chunk as text and check every value; runs in a worker thread."""
        options = pacsv.ReadOptions(
            column_names=self.header, use_threads=False, block_size=len(chunk.data) + 1
        )
        try:
            table = pacsv.read_csv(
                pa.py_buffer(chunk.data), read_options=options, convert_options=self.convert_options
            )
        except pa.ArrowInvalid as e:
            line = line_number(chunk, 0)
            raise DataError(
                f"Could not parse {chunk.file.name} as CSV (block from line {line}): {e}"
            ) from None
        if table.num_rows == 0:
            return Parsed(chunk, None, [])
        batch = table.combine_chunks().to_batches()[0]
        for i, name in enumerate(self.header):
            if i != self.label_index:
                self.check_feature(name, batch.column(i), chunk)
        return Parsed(chunk, batch, self.check_label(batch.column(self.label_index), chunk))

    def check_feature(self, name: str, col: pa.Array, chunk: Chunk) -> None:
        if col.null_count:
            at = pc.index(pc.is_null(col), True).as_py()
            raise DataError(
                f"Column '{name}' has a missing value at {self.where(chunk, at)}. "
                "Fill or drop missing values before running the pipeline."
            )
        try:
            values = pc.cast(col, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            at = first_bad_value(col, pa.float64())
            raise DataError(
                f"Column '{name}' has a non-numeric value '{col[at].as_py()}' at "
                f"{self.where(chunk, at)}. All feature columns must hold numbers."
            ) from None
        finite = np.isfinite(values)
        if not finite.all():
            at = int(np.argmin(finite))
            raise DataError(
                f"Column '{name}' has a non-finite value '{col[at].as_py()}' at "
                f"{self.where(chunk, at)}. All feature values must be finite numbers."
            )

    def check_label(self, col: pa.Array, chunk: Chunk) -> list[object]:
        if col.null_count:
            at = pc.index(pc.is_null(col), True).as_py()
            raise DataError(
                f"Label column '{self.label}' has a missing value at {self.where(chunk, at)}. "
                "Every row needs a label."
            )
        if self.label_type is None:  # the first rows decide: integer, else float, else text
            self.label_type = pa.string()
            for candidate in (pa.int64(), pa.float64()):
                try:
                    pc.cast(col, candidate)
                except pa.ArrowInvalid:
                    continue
                self.label_type = candidate
                break
        try:
            labels = pc.cast(col, self.label_type)
        except pa.ArrowInvalid:
            at = first_bad_value(col, self.label_type)
            raise DataError(
                f"Label column '{self.label}' has value '{col[at].as_py()}' at "
                f"{self.where(chunk, at)}, but the first labels were of type {self.label_type}."
            ) from None
        return pc.unique(labels).to_pylist()

    def split(self, parsed: Parsed, start: int) -> dict[str, tuple[int, pa.Buffer]]:
        """CSV bytes per split for a parsed chunk whose first row has global index `start`."""
        assert parsed.batch is not None
        u = split_uniforms(start, parsed.rows, self.args.seed)
        test_cut = self.args.test_fraction
        val_cut = test_cut + self.args.validation_fraction
        masks = {"train": u >= val_cut, "validation": (u >= test_cut) & (u < val_cut)}
        masks["test"] = u < test_cut
        out: dict[str, tuple[int, pa.Buffer]] = {}
        for split, mask in masks.items():
            part = parsed.batch.filter(pa.array(mask))
            if part.num_rows:
                sink = pa.BufferOutputStream()
                try:
                    pacsv.write_csv(part, sink, write_options=self.write_options)
                except pa.ArrowInvalid as e:
                    raise DataError(
                        f"Could not write {parsed.chunk.file.name} rows back as CSV: {e}. "
                        "Values must not contain commas, quotes or line breaks."
                    ) from None
                out[split] = (part.num_rows, sink.getvalue())
        return out


def input_files(input_dir: Path) -> list[Path]:
    if not input_dir.is_dir():
        raise DataError(f"Input directory {input_dir} does not exist. Check the job's input path.")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        found = ", ".join(sorted(p.name for p in input_dir.iterdir())[:10]) or "nothing"
        raise DataError(
            f"No .csv files in {input_dir} (found: {found}). Point the dataset URI at CSV data."
        )
    return files


def done(value: Parsed) -> Future[Parsed]:
    future: Future[Parsed] = Future()
    future.set_result(value)
    return future


def run(args: argparse.Namespace) -> dict[str, object]:
    check_fractions(args.validation_fraction, args.test_fraction)
    files = input_files(args.input_dir)
    header, header_line = read_header(files[0])
    if args.label_column not in header:
        raise DataError(
            f"Dataset has no label column '{args.label_column}'. Columns found: "
            f"{', '.join(header)}. Set label_column in the pipeline config to one of them."
        )
    if len(header) < 2:
        raise DataError(f"Dataset has only the label column '{args.label_column}'; no features.")
    splitter = Splitter(args, header)
    rows = dict.fromkeys(SPLITS, 0)
    classes: set[object] = set()
    input_rows = 0
    outputs: dict[str, BinaryIO] = {}
    for split in SPLITS:
        path = args.output_dir / split / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs[split] = path.open("wb")
        outputs[split].write(header_line)

    workers = max(2, os.cpu_count() or 1)
    window = 2 * workers  # chunks in flight per stage: bounds memory
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="split")
    parsing: deque[Future[Parsed]] = deque()
    splitting: deque[Future[dict[str, tuple[int, pa.Buffer]]]] = deque()
    started = last_report = time.monotonic()

    def advance(limit: int) -> None:
        """Hand parsed chunks (in order) to the splitter and write split chunks (in order)."""
        nonlocal input_rows, last_report
        while len(parsing) > limit:
            parsed = parsing.popleft().result()
            classes.update(parsed.labels)
            if len(classes) > 2:
                found = ", ".join(str(c) for c in sorted(classes, key=str)[:10])
                raise DataError(
                    f"Label column '{args.label_column}' has more than two distinct values "
                    f"({found}); this pipeline trains a binary classifier."
                )
            if parsed.rows:
                splitting.append(pool.submit(splitter.split, parsed, input_rows))
                input_rows += parsed.rows
        while len(splitting) > limit:
            for split, (count, data) in splitting.popleft().result().items():
                outputs[split].write(data)
                rows[split] += count
        if time.monotonic() - last_report >= 5:
            last_report = time.monotonic()
            rate = input_rows / (last_report - started)
            print(f"processed {input_rows} rows ({rate:,.0f} rows/s)", flush=True)

    try:
        for chunk in iter_chunks(files, header, args.block_size):
            if splitter.label_type is None:  # the first rows fix the label type for all workers
                parsing.append(done(splitter.parse(chunk)))
            else:
                parsing.append(pool.submit(splitter.parse, chunk))
            advance(window)
        advance(0)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for output in outputs.values():
            output.close()

    if input_rows == 0:
        names = ", ".join(f.name for f in files)
        raise DataError(f"The dataset has a header but no data rows ({names}).")
    if len(classes) != 2:
        raise DataError(
            f"Label column '{args.label_column}' has only one value "
            f"({', '.join(map(str, classes))}); a binary classifier needs two."
        )
    shares = {"validation": args.validation_fraction, "test": args.test_fraction}
    shares["train"] = 1.0 - args.validation_fraction - args.test_fraction
    for split in SPLITS:
        if rows[split] == 0:
            raise DataError(
                f"The {split} split got no rows out of {input_rows} input rows ({split} share "
                f"{shares[split]:g}). Provide at least about {rows_needed(shares[split])} rows "
                "or change validation_fraction/test_fraction."
            )
    schema = {
        "label_column": args.label_column,
        "feature_columns": [c for c in header if c != args.label_column],
        "rows": rows,
        "classes": sorted(classes),
        "input_rows": input_rows,
    }
    schema_path = args.output_dir / "schema" / "schema.json"
    schema_path.parent.mkdir(parents=True, exist_ok=True)
    schema_path.write_text(json.dumps(schema, indent=2) + "\n")
    elapsed = time.monotonic() - started
    counts = ", ".join(f"{s}={n}" for s, n in rows.items())
    print(f"split {input_rows} rows in {elapsed:.1f}s: {counts}", flush=True)
    return schema


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
