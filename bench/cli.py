"""What the command line costs a person: `make run` twice, and the CLI's own start-up.

    python -m bench.cli [--rounds 5] [--compare PATH]

In a fresh project folder (``sagepipe init``, the example data pushed, not timed):

* ``first_run`` / ``second_run``: ``sagepipe run`` twice, as ``make run`` does: the
  first starts the local Prefect server sagepipe keeps, the second reuses it (and
  finds every step cached);
* ``no_server_run``: ``sagepipe run --no-server`` (a server of its own, each time);
* ``help`` / ``status``: ``sagepipe --help`` and ``sagepipe status``, median of
  ``--rounds``.

``--compare PATH`` runs the same commands with another source tree of sagepipe first
on ``PYTHONPATH`` (e.g. a worktree of an older commit: ``git worktree add /tmp/old
<commit>``), in the same run of the benchmark, so the figures are ratios of one run.
The older tree may lack ``--no-server``; it is then skipped for it. Writes
``bench/results/cli.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(tree: Path | None, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def _timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    done = subprocess.run([str(BIN / "sagepipe"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    if done.returncode not in (0, 5):
        raise RuntimeError(f"sagepipe {' '.join(args)} exited {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    return round(seconds, 3)


def measure(tree: Path | None, work: Path, rounds: int) -> dict[str, Any]:
    project = work / "project"
    project.mkdir(parents=True)
    env = _env(tree, work / "prefect-home")
    subprocess.run([str(BIN / "sagepipe"), "init"], cwd=project, env=env, check=True,
                   capture_output=True, timeout=300)
    subprocess.run([str(BIN / "sagepipe"), "data", "push", "--example"], cwd=project, env=env,
                   check=True, capture_output=True, timeout=300)
    result: dict[str, Any] = {"tree": str(tree or ROOT)}
    try:
        result["first_run"] = _timed(["run"], project, env)
        result["second_run"] = _timed(["run"], project, env)
        helps = subprocess.run([str(BIN / "sagepipe"), "run", "--help"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=120).stdout
        if "--no-server" in helps:
            result["no_server_run"] = _timed(["run", "--no-server"], project, env)
        result["help"] = statistics.median(_timed(["--help"], project, env)
                                           for _ in range(rounds))
        result["status"] = statistics.median(_timed(["status"], project, env)
                                             for _ in range(rounds))
    finally:
        subprocess.run([str(BIN / "sagepipe"), "down"], cwd=project, env=env,
                       capture_output=True, timeout=300)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another sagepipe source tree")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagepipe-bench-cli-") as tmp:
        out: dict[str, Any] = {"current": measure(None, Path(tmp) / "current", options.rounds)}
        if options.compare:
            out["compared"] = measure(options.compare.resolve(), Path(tmp) / "compared",
                                      options.rounds)
            out["ratios"] = {k: round(out["current"][k] / out["compared"][k], 3)
                             for k in ("first_run", "second_run", "help", "status")}
    path = ROOT / "bench" / "results" / "cli.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
