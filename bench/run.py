"""``make bench``: every measurement of issue 6, one JSON file, one table.

    .venv/bin/python -m bench                # full: about 10 minutes on 2 cores
    BENCH_QUICK=1 .venv/bin/python -m bench  # smoke: small data, one round each

Full results go to ``bench/results/latest.json`` (quick ones to ``quick.json``).
Scratch data (the generated datasets, up to ~2 GB, state directories, logs) lives
in a temporary folder that is deleted at the end; ``BENCH_KEEP=1`` keeps it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import datasets
from .overhead import Bench, environment, measure_overhead
from .proc import prefect_server
from .report import table, targets
from .scale import measure_scale
from .serving import measure_serving
from .waiting import measure_live, measure_suspend_live, measure_waiting

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
METAFLOW_PYTHON = ROOT / "bench" / ".venv-metaflow" / "bin" / "python"

FULL = {"rows": 1_000_000, "big_rows_factor": 10, "rounds_big": 3, "rounds_default": 3,
        "scale_rounds": {"small": 3, "big": 3}, "serving_requests": {1: 2000, 100: 400},
        "serving_rounds": 3, "warm_up": True}
QUICK = {"rows": 50_000, "big_rows_factor": 4, "rounds_big": 1, "rounds_default": 1,
         "scale_rounds": {"small": 1, "big": 1}, "serving_requests": {1: 200, 100: 50},
         "serving_rounds": 1, "warm_up": False}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M rows" if rows % 1_000_000 == 0 else f"{rows // 1000}k rows"


def _versions(metaflow: Path | None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("prefect", "pandas", "pyarrow", "scikit-learn", "numpy", "botocore"):
        out[name] = importlib.metadata.version(name)
    if metaflow:
        out["metaflow"] = subprocess.run(
            [str(metaflow), "-c", "import importlib.metadata as m; print(m.version('metaflow'))"],
            capture_output=True, text=True, check=False).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    out["sagepipe_commit"] = (commit or "unknown") + ("+changes" if dirty else "")
    return out


def run(quick: bool, work: Path) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    metaflow = METAFLOW_PYTHON if METAFLOW_PYTHON.exists() else None
    if metaflow is None:
        _say(f"! {METAFLOW_PYTHON} is missing (make bench creates it): no Metaflow peer")
    variants = ("server", "ephemeral", "bare") + (("metaflow",) if metaflow else ())
    bench = Bench(work=work, python_bin=Path(sys.executable).parent, metaflow_python=metaflow,
                  env=environment(), log=_say)
    results: dict[str, Any] = {"meta": {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": quick,
        "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
        "plan": {k: v for k, v in plan.items() if k != "serving_requests"},
        "versions": _versions(metaflow)}}

    _say("4. waiting economy (simulated clock)")
    results["waiting"] = measure_waiting()

    _say("datasets")
    default_csv = datasets.write_default(work / "data" / "default" / "data.csv")
    big_csv = datasets.write_resampled(work / "data" / "big" / "data.csv", plan["rows"])
    big = _label(plan["rows"])

    results["orchestration"] = {}
    with prefect_server(bench.python_bin, work / "prefect-server", bench.env) as url:
        bench.server_url = url
        if plan["warm_up"]:  # first runs pay one-time costs: DB migrations, cold caches
            _say("warm-up round (not counted)")
            measure_overhead(bench, "warm-up", default_csv, 1, variants=variants)
        _say(f"1-3. orchestration, {big}")
        results["orchestration"][big] = measure_overhead(bench, "big", big_csv,
                                                         plan["rounds_big"], variants=variants)
        _say("1-3. orchestration, default dataset")
        results["orchestration"]["default dataset"] = measure_overhead(
            bench, "default", default_csv, plan["rounds_default"], variants=variants,
            keep_last=True)

    _say("5. serving")
    state = bench.kept_states[-1]
    try:
        results["serving"] = measure_serving(state, "sagepipe-demo", default_csv,
                                             datasets.LABEL,
                                             requests=plan["serving_requests"],
                                             rounds=plan["serving_rounds"])
    finally:
        from sagepipe.tasks.local import teardown

        teardown(state)

    _say("6. preprocessing at scale")
    huge_rows = plan["rows"] * plan["big_rows_factor"]
    huge_csv = datasets.repeat_body(big_csv, _fresh(work / "data" / "huge") / "data.csv",
                                    plan["big_rows_factor"])
    try:
        results["preprocessing"] = measure_scale(
            bench.python_bin / "python", bench.env, work,
            {big: (big_csv, plan["rows"]), _label(huge_rows): (huge_csv, huge_rows)},
            {big: plan["scale_rounds"]["small"],
             _label(huge_rows): plan["scale_rounds"]["big"]}, log=_say)
    finally:
        shutil.rmtree(huge_csv.parent, ignore_errors=True)

    results["targets"] = targets(results, big)
    results["meta"]["load_average_after"] = os.getloadavg()
    return results


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def waiting_only(work: Path) -> dict[str, Any]:
    """``BENCH_ONLY=waiting``: measurement 4 alone (simulated clock, then a real job)."""
    results: dict[str, Any] = {"meta": {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "only": "waiting",
        "cpus": os.cpu_count(), "versions": _versions(None)}}
    _say("4. waiting economy (simulated clock)")
    results["waiting"] = measure_waiting()
    _say("4b. waiting for a real local job (events vs poll)")
    results["waiting_live"] = measure_live(Path(sys.executable).parent, work, environment())
    _say("4c. jobs.wait: suspend, a real deployment run through a local worker")
    results["waiting_suspend"] = measure_suspend_live(work)
    results["targets"] = [t for t in targets(results, "") if t["measured"] is not None]
    return results


def main() -> int:
    only = os.environ.get("BENCH_ONLY", "")
    if only and only != "waiting":
        _say(f"BENCH_ONLY={only}: only 'waiting' can run alone")
        return 2
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    keep = os.environ.get("BENCH_KEEP", "") not in ("", "0")
    work = Path(tempfile.mkdtemp(prefix="sagepipe-bench-"))
    started = time.monotonic()
    _say(f"sagepipe bench ({'quick' if quick else 'full'}); scratch in {work}")
    try:
        results = waiting_only(work) if only else run(quick, work)
    finally:
        if keep:
            _say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("waiting.json" if only else "quick.json" if quick else "latest.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nWall time {results['meta']['wall_seconds']:.0f} s; results in "
          f"{path.relative_to(ROOT)}")
    return 0
