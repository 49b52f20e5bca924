"""``make bench``: every measurement, one JSON file, one table.

    .venv/bin/python -m bench                # full: about 15 minutes on 2 cores
    BENCH_QUICK=1 .venv/bin/python -m bench  # smoke: small data, one round each
    BENCH_ONLY=overhead,serving .venv/bin/python -m bench  # only those parts

Parts: overhead (1-3), serving (5), preprocessing (6), waiting (4: in a full run the
simulated clock only; named in BENCH_ONLY, also real jobs).

Full results go to ``bench/results/latest.json`` (quick ones to ``quick.json``, those of
``BENCH_ONLY=a,b`` to ``a-b.json``).
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
from .overhead import Bench, environment, measure_overhead, run_pipeline, stop_managed
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
        "serving_rounds": 3, "warm_up": True, "load_seconds": 4.0}
QUICK = {"rows": 50_000, "big_rows_factor": 4, "rounds_big": 1, "rounds_default": 1,
         "scale_rounds": {"small": 1, "big": 1}, "serving_requests": {1: 200, 100: 50},
         "serving_rounds": 1, "warm_up": False, "load_seconds": 2.0}


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


def run(quick: bool, work: Path, parts: tuple[str, ...], *, live_waits: bool = False
        ) -> dict[str, Any]:
    """The measurements of ``parts`` (see PARTS); ``live_waits``: the waiting part also
    waits for real jobs (4b-4d, a few minutes), not only on the simulated clock."""
    plan = QUICK if quick else FULL
    metaflow = METAFLOW_PYTHON if METAFLOW_PYTHON.exists() else None
    if metaflow is None and "overhead" in parts:
        _say(f"! {METAFLOW_PYTHON} is missing (make bench creates it): no Metaflow peer")
    bench = Bench(work=work, python_bin=Path(sys.executable).parent, metaflow_python=metaflow,
                  env=environment(), log=_say)
    bench.env["SAGEPIPE_WARM_DIR"] = str(work / "warm")  # its own warm process, stopped below
    results: dict[str, Any] = {"meta": {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "quick": quick,
        "parts": list(parts), "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
        "plan": {k: v for k, v in plan.items() if k != "serving_requests"},
        "versions": _versions(metaflow)}}
    big = _label(plan["rows"])

    if "waiting" in parts or not live_waits:
        _say("4. waiting economy (simulated clock)")
        results["waiting"] = measure_waiting()
    if "waiting" in parts and live_waits:
        _say("4b. waiting for a real local job (events vs poll)")
        results["waiting_live"] = measure_live(bench.python_bin, work, bench.env)
        _say("4c. jobs.wait: suspend, a real deployment run through a local worker")
        results["waiting_suspend"] = measure_suspend_live(work)

    default_csv = big_csv = None
    if {"overhead", "serving", "preprocessing"} & set(parts):
        _say("datasets")
        default_csv = datasets.write_default(work / "data" / "default" / "data.csv")
    if {"overhead", "preprocessing"} & set(parts):
        big_csv = datasets.write_resampled(work / "data" / "big" / "data.csv", plan["rows"])

    if {"overhead", "serving"} & set(parts):
        assert default_csv is not None
        with prefect_server(bench.python_bin, work / "prefect-server", bench.env) as url:
            bench.server_url = url
            if "overhead" in parts:
                assert big_csv is not None
                variants = ("server", "cold", "managed", "ephemeral", "bare") + (
                    ("metaflow",) if metaflow else ())
                if plan["warm_up"]:  # first runs pay one-time costs: DB migrations, caches
                    _say("warm-up round (not counted)")
                    measure_overhead(bench, "warm-up", default_csv, 1, variants=variants)
                results["orchestration"] = {}
                _say(f"1-3. orchestration, {big}")
                results["orchestration"][big] = measure_overhead(
                    bench, "big", big_csv, plan["rounds_big"],
                    variants=tuple(v for v in variants if v not in ("managed", "cold")))
                _say("1-3. orchestration, default dataset")
                results["orchestration"]["default dataset"] = measure_overhead(
                    bench, "default", default_csv, plan["rounds_default"], variants=variants,
                    keep_last="serving" in parts)
                stop_managed(bench)
            elif "serving" in parts:
                _say("a pipeline run to deploy the endpoint that serving measures")
                run_pipeline(bench, "server", default_csv, "serving", keep=True)
        if "serving" in parts:
            _say("5. serving")
            state = bench.kept_states[-1]
            try:
                results["serving"] = measure_serving(
                    state, "sagepipe-demo", default_csv, datasets.LABEL,
                    requests=plan["serving_requests"], rounds=plan["serving_rounds"],
                    work=work, python=bench.python_bin / "python",
                    load_seconds=plan["load_seconds"])
            finally:
                from sagepipe.tasks.local import teardown

                teardown(state)

    if "preprocessing" in parts:
        assert big_csv is not None
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


PARTS = ("overhead", "serving", "preprocessing", "waiting")


def main() -> int:
    only = [p.strip() for p in os.environ.get("BENCH_ONLY", "").split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        _say(f"BENCH_ONLY={','.join(only)}: unknown part(s) {', '.join(unknown)}; "
             f"choose from {', '.join(PARTS)} (comma-separated)")
        return 2
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    keep = os.environ.get("BENCH_KEEP", "") not in ("", "0")
    work = Path(tempfile.mkdtemp(prefix="sagepipe-bench-"))
    started = time.monotonic()
    _say(f"sagepipe bench ({'quick' if quick else 'full'}"
         f"{'; only ' + ', '.join(only) if only else ''}); scratch in {work}")
    try:
        results = run(quick, work, tuple(only) or PARTS[:-1], live_waits=bool(only))
    finally:
        from sagepipe.warm import stop_all

        stop_all(work / "warm")
        if keep:
            _say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["meta"]["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "-".join(only) if only else "quick" if quick else "latest"
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nWall time {results['meta']['wall_seconds']:.0f} s; results in "
          f"{path.relative_to(ROOT)}")
    return 0
