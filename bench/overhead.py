"""Measurements 1-3: the pipeline vs the bare chain and Metaflow; the cached re-run.

One *round* runs every variant once on the same dataset, in a rotating order (so
no variant always runs first or last on a machine whose load drifts); the
figures are medians over rounds, and every ratio compares numbers of the same
run of the benchmark.

* ``server``: ``sagepipe run`` with ``PREFECT_API_URL`` at a running ``prefect
  server start`` (started and stopped by the benchmark).
* ``managed``: ``sagepipe run`` as a new user runs it the second time: no
  ``PREFECT_API_URL``, so sagepipe uses the local server it started on the first run and
  kept (``<state_dir>/prefect/``). The state directory is kept across this variant's runs
  for that server; everything else in it is cleared before each run, so nothing is a
  cache hit. The server is started once before the first timed run.
* ``cold``: the ``server`` variant without the warm process (``SAGEPIPE_WARM=off``): each
  run imports Prefect and the flow itself, as every run did before the warm start.
  ``server`` and ``managed`` runs use the warm process (``sagepipe/warm.py``) that the
  warm-up round started, as a user's second and later runs do; the benchmark gives it a
  folder of its own and stops it at the end.
* ``ephemeral``: ``sagepipe run --no-server``: a temporary Prefect server is started
  for the run and stopped at its end (without ``--no-server`` sagepipe keeps a local
  server between runs, which is the ``server`` case after the first run).

Runs use ``--verbose``: the phases are read from Prefect's log stream.
* ``bare``: ``bench/chain.py``, the four scripts one after another.
* ``metaflow``: ``bench/peers/metaflow_chain.py`` in its own venv.

Each pipeline run gets a fresh local-runtime state directory with the dataset
pushed into it beforehand (not timed), so nothing is a cache hit. Measurement 3
then runs the server variant a second time on the same, unchanged state: the
wall time of that re-run, and how many jobs it started (counted in the local
runtime's state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .proc import median, run_timed

__all__ = ["Bench", "measure_overhead", "run_pipeline", "stop_managed"]

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("server", "cold", "managed", "ephemeral", "bare", "metaflow")
PIPELINES = ("server", "cold", "managed", "ephemeral")
_STAMP = re.compile(r"(\d\d):(\d\d):(\d\d\.\d+) \| ")


@dataclass
class Bench:
    """Where things are and what every child process gets in its environment."""

    work: Path
    python_bin: Path
    metaflow_python: Path | None
    env: dict[str, str]
    server_url: str | None = None
    log: Callable[[str], None] = print
    kept_states: list[Path] = field(default_factory=list)

    def prefect_env(self, variant: str, home: Path) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(home),
                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(self.work / "prefect-results"))
        if variant in ("server", "cold"):
            assert self.server_url, "the server variant needs a running Prefect server"
            env["PREFECT_API_URL"] = self.server_url
        env["SAGEPIPE_WARM"] = "off" if variant == "cold" else "on"
        return env


def _jobs(state: Path) -> int:
    from sagepipe.tasks.local.state import StateStore

    store = StateStore(state)
    return len(store.list("training-job")) + len(store.list("processing-job"))


def _job_seconds(state: Path) -> float:
    """Sum over the run's jobs of created -> ended: the local runtime's share of the wall."""
    from sagepipe.tasks.local.state import StateStore

    store = StateStore(state)
    docs = store.list("training-job") + store.list("processing-job")
    return round(sum(d["ended"] - d["created"] for d in docs if d.get("ended")), 3)


def _teardown(state: Path) -> None:
    from sagepipe.tasks.local import teardown

    if (state / "state.db").exists():
        teardown(state)


def _phases(log: Path, launched: float, seconds: float) -> dict[str, float]:
    """Start-up (launch -> flow run begins) and wind-down (flow run ends -> exit).

    Read from Prefect's log lines (local wall-clock time of day, ms): what is left
    between them is the flow itself.
    """
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match and "Flow run" in line and ("Beginning flow run" in line
                                             or "Finished in state" in line):
            hours, minutes, secs = int(match[1]), int(match[2]), float(match[3])
            stamps.append(hours * 3600 + minutes * 60 + secs)
    if len(stamps) < 2:
        return {}
    midnight = time.mktime((*time.localtime(launched)[:3], 0, 0, 0, 0, 0, -1))
    start = (midnight + stamps[0] - launched) % 86400
    end = (midnight + stamps[-1] - launched) % 86400
    return {"startup": round(start, 3), "flow": round(end - start, 3),
            "wind_down": round(seconds - end, 3)}


def run_pipeline(bench: Bench, variant: str, data_csv: Path, tag: str, *,
                 rerun: bool = False, keep: bool = False,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One timed ``sagepipe run`` on a fresh state (and an untimed push before it)."""
    state = bench.work / "states" / ("managed" if variant == "managed" else tag)
    if variant == "managed":
        _clear_for_managed(state)
    home = bench.work / f"prefect-home-{variant}"
    env = bench.prefect_env(variant, home)
    logs = bench.work / "logs"
    where = [f"--set=runtime.state_dir={state}"]
    extra = ("--verbose", *(["--no-server"] if variant == "ephemeral" else []), *extra)
    sagepipe = str(bench.python_bin / "sagepipe")
    run_timed([sagepipe, "data", "push", str(data_csv), *where], env=env,
              log=logs / f"{tag}-push.log", cwd=ROOT)
    result: dict[str, Any] = {}
    try:
        launched = time.time()
        first = run_timed([sagepipe, "run", *where, *extra], env=env, log=logs / f"{tag}.log",
                          cwd=ROOT)
        result.update(seconds=round(first.seconds, 3), jobs=_jobs(state),
                      job_seconds=_job_seconds(state),
                      phases=_phases(logs / f"{tag}.log", launched, first.seconds))
        if rerun:
            before = result["jobs"]
            launched = time.time()
            again = run_timed([sagepipe, "run", *where, *extra], env=env,
                              log=logs / f"{tag}-rerun.log", cwd=ROOT)
            result.update(rerun_seconds=round(again.seconds, 3),
                          rerun_jobs_started=_jobs(state) - before,
                          rerun_phases=_phases(logs / f"{tag}-rerun.log", launched,
                                               again.seconds))
    finally:
        if keep:
            bench.kept_states.append(state)
        elif variant != "managed":  # its server stays: the state is cleared before a run
            _teardown(state)
            shutil.rmtree(state, ignore_errors=True)
    return result


def _clear_for_managed(state: Path) -> None:
    """Everything of the last run gone but the kept Prefect server, which is started
    (untimed) if it is not running yet: the "second run" of a new user."""
    from sagepipe.flows.server import ensure_server

    _teardown(state)
    if state.exists():
        for child in state.iterdir():
            if child.name != "prefect":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    ensure_server(state / "prefect")  # the server keeps a home of its own in there


def stop_managed(bench: Bench) -> None:
    """Stop the kept server of the ``managed`` variant and clear its state."""
    from sagepipe.flows.server import down

    state = bench.work / "states" / "managed"
    if (state / "prefect").exists():
        _teardown(state)
        down(state / "prefect")
        shutil.rmtree(state, ignore_errors=True)


def run_bare(bench: Bench, data_dir: Path, tag: str) -> dict[str, Any]:
    work = bench.work / "chains" / tag
    log = bench.work / "logs" / f"{tag}.log"
    timed = run_timed([str(bench.python_bin / "python"), str(ROOT / "bench" / "chain.py"),
                       "--data", str(data_dir), "--work", str(work)],
                      env=bench.env, log=log, cwd=ROOT)
    steps = _last_json(log).get("seconds", {})
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": round(timed.seconds, 3), "steps": steps}


def run_metaflow(bench: Bench, data_dir: Path, tag: str) -> dict[str, Any]:
    assert bench.metaflow_python is not None
    work = bench.work / "metaflow" / tag
    work.mkdir(parents=True, exist_ok=True)
    env = {**bench.env, "USER": bench.env.get("USER", "bench"), "METAFLOW_USER": "bench",
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(work)}
    timed = run_timed([str(bench.metaflow_python), str(ROOT / "bench" / "peers" /
                                                       "metaflow_chain.py"),
                       "--no-pylint", "run", "--data", str(data_dir),
                       "--work", str(work / "scratch")],
                      env=env, log=bench.work / "logs" / f"{tag}.log", cwd=work)
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": round(timed.seconds, 3)}


def _last_json(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            except ValueError:
                continue
    return {}


def measure_overhead(bench: Bench, name: str, data_csv: Path, rounds: int, *,
                     variants: tuple[str, ...] = VARIANTS, keep_last: bool = False
                     ) -> dict[str, Any]:
    """Every variant ``rounds`` times on ``data_csv`` (a file alone in its folder)."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for variant in order:
            tag = f"{name}-{variant}-{r}"
            if variant in PIPELINES:
                keep = keep_last and variant == "server" and r == rounds - 1
                outcome = run_pipeline(bench, variant, data_csv, tag,
                                       rerun=variant == "server", keep=keep)
            elif variant == "bare":
                outcome = run_bare(bench, data_csv.parent, tag)
            else:
                outcome = run_metaflow(bench, data_csv.parent, tag)
            runs[variant].append(outcome)
            bench.log(f"  {name} round {r + 1}/{rounds} {variant}: {outcome['seconds']:.2f} s")
    return summarise(runs)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    wall = {v: median([r["seconds"] for r in rs]) for v, rs in runs.items() if rs}
    out["median_seconds"] = {v: round(s, 3) for v, s in wall.items()}
    bare = wall.get("bare")
    if bare:
        out["ratio_to_bare"] = {v: round(s / bare, 3) for v, s in wall.items()}
        out["seconds_over_bare"] = {v: round(s - bare, 3) for v, s in wall.items()}
    for variant in PIPELINES:
        phased = [r["phases"] for r in runs.get(variant, []) if r.get("phases")]
        if phased:
            out.setdefault("phases", {})[variant] = {
                k: round(median([p[k] for p in phased]), 3) for k in phased[0]}
    if runs.get("server"):
        server = runs["server"]
        out["cached_rerun"] = {
            "first_seconds": round(median([r["seconds"] for r in server]), 3),
            "rerun_seconds": round(median([r["rerun_seconds"] for r in server]), 3),
            "ratio": round(median([r["rerun_seconds"] / r["seconds"] for r in server]), 3),
            "jobs_started": max(r["rerun_jobs_started"] for r in server),
        }
        phased = [r["rerun_phases"] for r in server if r.get("rerun_phases")]
        if phased:
            out["cached_rerun"]["phases"] = {k: round(median([p[k] for p in phased]), 3)
                                             for k in phased[0]}
        out["job_seconds"] = round(median([r["job_seconds"] for r in server]), 3)
    if runs.get("bare") and runs["bare"][0].get("steps"):
        steps = runs["bare"][0]["steps"]
        out["bare_steps"] = {s: round(median([r["steps"][s] for r in runs["bare"]]), 3)
                             for s in steps}
    return out


def environment() -> dict[str, str]:
    """This process's environment minus anything that would point runs elsewhere."""
    drop = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME",
            "METAFLOW_PROFILE", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env
