"""The limit for preprocessing: read a CSV with pyarrow alone, nothing else.

    python bench/pyarrow_read.py PATH table|stream

``table``: ``pyarrow.csv.read_csv`` (all cores, whole table in memory), the fastest
read; ``stream``: ``pyarrow.csv.open_csv`` batch by batch, bounded memory. Prints
the row count, so the read cannot be skipped.
"""

from __future__ import annotations

import sys

import pyarrow.csv as pacsv


def main(path: str, mode: str) -> int:
    if mode == "table":
        rows = pacsv.read_csv(path).num_rows
    else:
        rows = sum(batch.num_rows for batch in pacsv.open_csv(path))
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
