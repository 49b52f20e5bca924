"""bench/: the targets come from what was measured, and the preprocessing limit is the
faster of pyarrow's two reads at every size."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the repository, not a package

from bench import datasets  # noqa: E402
from bench.report import targets  # noqa: E402
from bench.scale import PYARROW_READERS, measure_scale  # noqa: E402


def results(live_poll_lag: float, simulated_worst_lag: float) -> dict[str, Any]:
    return {"waiting": {"policies": {"project default": {
                "describes_per_job_hour": 40.0, "worst_lag_seconds": simulated_worst_lag}}},
            "waiting_live": {"job_seconds": 20.0,
                             "poll": {"lag_seconds": live_poll_lag, "describes": 8},
                             "events": {"lag_seconds": 0.4, "describes": 1}}}


def lag_targets(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in found if "completion seen <= 30 s" in t["target"]]


def test_the_lag_target_is_the_lag_of_a_real_wait_not_the_poll_cap() -> None:
    # the simulated worst case is the poll cap itself: it can never miss 30 s
    [missed] = lag_targets(targets(results(live_poll_lag=31.5, simulated_worst_lag=30.0),
                                   "1M"))
    assert missed["met"] is False and missed["measured"] == "31.5 s"
    assert "real local job" in missed["target"]
    [met] = lag_targets(targets(results(live_poll_lag=6.4, simulated_worst_lag=30.0), "1M"))
    assert met["met"] is True
    # no live measurement: no lag target at all (nothing to claim)
    assert not lag_targets(targets({"waiting": results(1, 30)["waiting"]}, "1M"))


def test_the_preprocessing_limit_is_the_faster_pyarrow_read_at_every_size(
        tmp_path: Path) -> None:
    sets = {}
    for label, rows in (("small", 300), ("largest", 600)):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True)
        sets[label] = (datasets.write_resampled(folder / "data.csv", rows), rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = measure_scale(Path(sys.executable), env, tmp_path / "work", sets,
                        {"small": 1, "largest": 1}, log=lambda _: None)
    for label in sets:
        figures = out[label]
        assert set(PYARROW_READERS) <= set(figures), f"{label}: a pyarrow read is missing"
        fastest = max(PYARROW_READERS, key=lambda way: figures[way]["rows_per_second"])
        assert figures["baseline"] == fastest
        assert figures["preprocess"]["share_of_pyarrow"] == round(
            figures["preprocess"]["rows_per_second"] / figures[fastest]["rows_per_second"], 3)
    shown = targets({"preprocessing": out}, "small")
    assert any(f"the faster reader: {out['largest']['baseline']}" in t["target"]
               for t in shown)
