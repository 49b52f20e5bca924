"""The benchmark's datasets, made deterministically on this machine.

* ``default``: scikit-learn's breast cancer data exactly as ``sagepipe data push
  --example`` stores it (569 rows, 30 numeric features, a 0/1 ``target``).
* ``resampled(n)``: ``n`` rows drawn with replacement from it (fixed seed), each
  feature scaled by ``1 + 5% noise`` and rounded to 4 significant digits, so rows
  are distinct but look like the original (same columns, magnitudes and label).

The 10M-row file is the 1M-row body written ten times after one header: making
it costs a file copy, not ten times the formatting, and the preprocessing work per
row is the same (the split hashes row positions, not values).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

__all__ = ["LABEL", "frame", "repeat_body", "write_default", "write_resampled"]

LABEL = "target"
SEED = 20240611
_BLOCK = 200_000  # rows formatted at a time: bounds the generator's memory


def frame() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(feature names, features, labels) of the example dataset."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    return names, np.asarray(data.data, dtype=np.float64), np.asarray(data.target)


def write_default(path: Path) -> Path:
    """The example dataset, byte for byte what ``sagepipe data push --example`` pushes."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    data.to_csv(path, index=False)
    return path


def _decimals(features: np.ndarray) -> np.ndarray:
    """Per column, the decimals that keep 4 significant digits at its median magnitude."""
    magnitude = np.median(np.abs(features), axis=0)
    return np.clip(3 - np.floor(np.log10(magnitude)), 0, 8).astype(int)


def write_resampled(path: Path, rows: int, *, seed: int = SEED) -> Path:
    """``rows`` noisy resampled rows of the example data (same header), deterministic."""
    names, features, labels = frame()
    decimals = _decimals(features)
    rng = np.random.default_rng(seed)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write((",".join([*names, LABEL]) + "\n").encode())
        for start in range(0, rows, _BLOCK):
            count = min(_BLOCK, rows - start)
            pick = rng.integers(0, len(labels), size=count)
            noisy = features[pick] * (1.0 + 0.05 * rng.standard_normal((count, len(names))))
            columns = [pa.array(np.round(np.abs(noisy[:, i]), decimals[i]))
                       for i in range(len(names))]
            columns.append(pa.array(labels[pick].astype(np.int64)))
            table = pa.Table.from_arrays(columns, names=[*names, LABEL])
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, write_options=options)
            out.write(sink.getvalue().to_pybytes())
    return path


def repeat_body(source: Path, target: Path, times: int) -> Path:
    """``source``'s header once, then its data rows ``times`` times."""
    with source.open("rb") as src, target.open("wb") as out:
        header = src.readline()
        body_at = src.tell()
        out.write(header)
        for _ in range(times):
            src.seek(body_at)
            shutil.copyfileobj(src, out, 16 << 20)
    return target
