"""What each feature column holds, learned while the data streams past.

Per block (in worker threads) :func:`profile_block` reduces every column to a few numbers
with pyarrow's vectorised kernels; :class:`ColumnProfile` merges them in order. At the end
each column is numeric (every value parses as a number) or categorical (text), and a column
that cannot help a model is dropped with the reason: entirely empty, constant, or unique
text on every row (an ID). Memory per column is bounded: at most ``DISTINCT_CAP`` distinct
values are remembered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from dataset import DATES_NOTE, is_date

DISTINCT_CAP = 10_000  # distinct values remembered per text column
EXAMPLES = 5  # non-numeric values quoted in a warning
# what pyarrow's cast to float64 accepts (after trimming whitespace)
NUMBER = r"(?i)^\s*[-+]?((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf|infinity|nan)\s*$"


@dataclass(frozen=True)
class BlockColumn:
    """One column of one block, reduced."""

    nulls: int
    values: int
    numeric: bool  # every non-null value of the block parses as a number
    minimum: float = math.inf
    maximum: float = -math.inf
    non_finite: int = 0
    non_numeric: int = 0
    examples: tuple[str, ...] = ()
    distinct: tuple[str, ...] | None = None  # text blocks only


def as_float(column: pa.Array) -> pa.Array | None:
    """The column as float64, or None if a value is not a number."""
    try:
        return pc.cast(column, pa.float64())
    except pa.ArrowInvalid:
        pass
    try:  # " 2.5" is a number too (pandas reads it as one)
        return pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
    except pa.ArrowInvalid:
        return None


def profile_block(column: pa.Array) -> BlockColumn:
    nulls = column.null_count
    values = len(column) - nulls
    numbers = as_float(column)
    if numbers is not None:
        finite = pc.is_finite(numbers)  # null where the value is missing
        non_finite = values - (pc.sum(finite).as_py() or 0)
        if non_finite:
            numbers = numbers.filter(finite)
        low, high = pc.min_max(numbers).values()  # nulls skipped
        return BlockColumn(nulls, values, True,
                           math.inf if low.as_py() is None else low.as_py(),
                           -math.inf if high.as_py() is None else high.as_py(), non_finite)
    present = column.drop_null()
    text = pc.invert(pc.match_substring_regex(present, NUMBER))
    non_numeric = pc.filter(present, text)
    examples = pc.unique(non_numeric).slice(0, EXAMPLES).to_pylist()
    distinct = pc.unique(present)
    return BlockColumn(nulls, values, False, non_numeric=len(non_numeric),
                       examples=tuple(examples),
                       distinct=tuple(distinct.to_pylist()) if len(distinct) <= DISTINCT_CAP
                       else None)


@dataclass
class ColumnProfile:
    """A feature column over every block so far."""

    name: str
    nulls: int = 0
    values: int = 0
    text_values: int = 0  # values in blocks that held text
    non_numeric: int = 0
    non_finite: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    examples: list[str] = field(default_factory=list)
    distinct: set[str] | None = field(default_factory=set)
    unique_while_tracked: bool = True

    def add(self, block: BlockColumn) -> None:
        self.nulls += block.nulls
        self.values += block.values
        self.non_finite += block.non_finite
        self.minimum = min(self.minimum, block.minimum)
        self.maximum = max(self.maximum, block.maximum)
        if block.numeric:
            return
        self.text_values += block.values
        self.non_numeric += block.non_numeric
        for example in block.examples:
            if example not in self.examples and len(self.examples) < EXAMPLES:
                self.examples.append(example)
        if self.distinct is None:
            return
        if block.distinct is None or len(self.distinct) + len(block.distinct) > DISTINCT_CAP:
            self.unique_while_tracked = self.unique_while_tracked and (
                block.distinct is None or (len(block.distinct) == block.values
                                           and not self.distinct & set(block.distinct)))
            self.distinct = None  # too many to remember: high cardinality
            return
        before = len(self.distinct)
        self.distinct.update(block.distinct)
        if len(self.distinct) - before < block.values:
            self.unique_while_tracked = False

    @property
    def kind(self) -> str:
        return "numeric" if self.non_numeric == 0 else "categorical"

    @property
    def dates(self) -> bool:
        """Every value quoted so far is a date (the examples: up to EXAMPLES of them)."""
        return bool(self.examples) and all(is_date(e) for e in self.examples)

    def drop_reason(self) -> str | None:
        """Why a model cannot use this column, or None."""
        if self.values == 0:
            return "entirely empty"
        if self.kind == "numeric":
            if self.nulls == 0 and self.minimum == self.maximum and self.non_finite == 0:
                return f"constant ({self.minimum:g} on every row)"
            return None
        whole = self.text_values == self.values  # every block of it held text
        if whole and self.distinct is not None and len(self.distinct) == 1 and not self.nulls:
            return f"constant ('{next(iter(self.distinct))}' on every row)"
        mostly_text = self.non_numeric * 2 >= self.values  # numbers with a stray word: not an ID
        if (whole and mostly_text and self.unique_while_tracked and self.values > 1
                and self.nulls == 0):
            if self.dates:
                return f"a different date on every row; {DATES_NOTE}"
            if self.distinct is None:
                return f"text unique on every row of the first {DISTINCT_CAP:,} (an ID?)"
            return "text unique on every row (an ID?)"
        return None

    def warnings(self) -> list[str]:
        notes = []
        if self.kind == "categorical" and self.dates and self.drop_reason() is None:
            notes.append(f"column '{self.name}' holds dates and is used as categories (each "
                         f"date one); {DATES_NOTE}")
        if self.kind == "categorical" and 0 < self.non_numeric <= 0.05 * self.values:
            shown = ", ".join(f"'{e}'" for e in self.examples)
            verb = "is not a number" if self.non_numeric == 1 else "are not numbers"
            notes.append(
                f"column '{self.name}' is treated as text because {self.non_numeric} of its "
                f"{self.values} values {verb} ({shown}); if they mean 'missing', add them to "
                "data.missing_values")
        if self.kind == "numeric" and self.non_finite:
            notes.append(f"column '{self.name}' has {self.non_finite} infinite value(s); the "
                         "model treats them as missing")
        return notes

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "missing": self.nulls,
                               "values": self.values}
        if self.kind == "numeric" and self.values:
            out["min"] = None if math.isinf(self.minimum) else self.minimum
            out["max"] = None if math.isinf(self.maximum) else self.maximum
        else:
            out["distinct"] = None if self.distinct is None else len(self.distinct)
        out["dropped"] = self.drop_reason()
        return out
