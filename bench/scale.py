"""Measurement 6: the preprocess container at 1M and 10M rows vs pyarrow reading the file.

The container script runs as SageMaker would start it (``--input-dir`` with the
CSV, ``--output-dir``, the pipeline's split arguments), as its own process; so
does pyarrow alone (``bench/pyarrow_read.py``), reading the same file whole
(``table``) and batch by batch (``stream``). Rows/s is rows over the process's
wall time, peak RSS is the kernel's high-water mark for that process. The limit
is the faster of the two pyarrow reads at every size, the largest included: the
whole-table read holds the table in memory (about 7 GB at 10M rows, within this
24 GiB machine) and is the faster one at small sizes, so leaving it out would
lower the bar. Memory is bounded when the largest size's peak stays within 1.5x
the smallest's: it must not grow with the input.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chain import CONTAINERS, SPLIT_ARGS
from .proc import median, run_timed

__all__ = ["measure_scale"]

BENCH = Path(__file__).resolve().parent
# bench/pyarrow_read.py's two ways; the faster is the limit at every size
PYARROW_READERS = ("pyarrow table", "pyarrow stream")


def measure_scale(python: Path, env: dict[str, str], work: Path,
                  datasets: dict[str, tuple[Path, int]], rounds: dict[str, int],
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """``datasets`` maps a label to (CSV alone in its folder, rows)."""
    out: dict[str, Any] = {}
    for label, (csv_path, rows) in datasets.items():
        readers = ["preprocess", *PYARROW_READERS]
        runs: dict[str, list[tuple[float, float]]] = {way: [] for way in readers}
        for r in range(rounds[label]):
            for way in runs:
                logfile = work / "logs" / f"scale-{label}-{way.replace(' ', '-')}.log"
                if way == "preprocess":
                    scratch = work / "scale" / f"{label}-{r}"
                    timed = run_timed(
                        [str(python), str(CONTAINERS / "preprocess" / "preprocess.py"),
                         "--input-dir", str(csv_path.parent), "--output-dir",
                         str(scratch / "output"), *SPLIT_ARGS],
                        env={**env, "SAGEMAKER_BASE_DIR": str(scratch)}, log=logfile,
                        memory=True)
                    shutil.rmtree(scratch, ignore_errors=True)
                else:
                    timed = run_timed([str(python), str(BENCH / "pyarrow_read.py"),
                                       str(csv_path), way.split()[1]], env=env, log=logfile,
                                      memory=True)
                runs[way].append((timed.seconds, timed.peak_rss_mb))
                log(f"  scale {label} round {r + 1}: {way} {timed.seconds:.2f} s, "
                    f"{timed.peak_rss_mb:.0f} MB")
        figures = {way: {"seconds": round(median([s for s, _ in rs]), 3),
                         "rows_per_second": round(rows / median([s for s, _ in rs])),
                         "peak_rss_mb": round(max(m for _, m in rs), 1)}
                   for way, rs in runs.items()}
        baseline = max(PYARROW_READERS, key=lambda way: figures[way]["rows_per_second"])
        figures["preprocess"]["share_of_pyarrow"] = round(
            figures["preprocess"]["rows_per_second"]
            / figures[baseline]["rows_per_second"], 3)
        out[label] = {"rows": rows, "bytes": csv_path.stat().st_size, "baseline": baseline,
                      **figures}
    labels = list(datasets)
    if len(labels) >= 2:
        small, big = out[labels[0]], out[labels[-1]]
        out["preprocess_rss_growth"] = round(
            big["preprocess"]["peak_rss_mb"] / small["preprocess"]["peak_rss_mb"], 3)
    return out
