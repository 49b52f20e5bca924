"""What AWS's SageMaker framework images do with a step's code, as a local process.

The scikit-learn and XGBoost images run the SageMaker training toolkit (``train``), the
SDK's ``runproc.sh`` (processing) and the inference toolkit (``serve``). Here the same
inputs lead to the same steps, with ``/opt/ml`` mapped to the job's workspace:

* ``train``: hyperparameters from ``input/config/hyperparameters.json`` (JSON-encoded, as
  the SDK sends them); the ``sagemaker_*`` ones say where the code is
  (``sagemaker_submit_directory``: a path in the container or an ``s3://`` URI) and what
  to run (``sagemaker_program``); the archive is unpacked into ``code/``, its
  ``requirements.txt`` installed (a cached venv, :mod:`.pyenv`), and the program run with
  the user's hyperparameters as ``--key value`` arguments and in ``SM_HPS``;
* ``process RUNPROC ARGS``: ``runproc.sh`` read for its code folder and command, the
  archive unpacked there, requirements installed, the entry point run with ARGS;
* ``serve``: ``SAGEMAKER_SUBMIT_DIRECTORY`` unpacked, and sagepipe's HTTP server runs the
  ``model_fn / input_fn / predict_fn / output_fn`` of ``SAGEMAKER_PROGRAM`` from it.

Each ends in ``os.execve`` of the user's process, so stopping the job or endpoint stops it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

from ..stepsource import DEFAULT_CONTAINERS
from .pyenv import interpreter
from .s3 import LocalS3
from .state import StateStore

_BASE = "/opt/ml"


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _local(location: str, base: Path, root: Path) -> Path:
    """A container path or an s3:// URI as a local file."""
    if location.startswith("s3://"):
        bucket, _, key = location[5:].partition("/")
        return LocalS3(root, StateStore(root)).path_of(bucket, key)
    if location == _BASE or location.startswith(_BASE + "/"):
        return base / location[len(_BASE) + 1:]
    return Path(location)


def _unpack(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if archive.is_dir():  # the toolkits also accept a folder
        shutil.copytree(archive, into, dirs_exist_ok=True)
        return
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    sys.stdout.flush()
    os.chdir(cwd)
    os.execve(command[0], command, env)


def train(base: Path, root: Path) -> None:
    raw = json.loads((base / "input" / "config" / "hyperparameters.json").read_text())
    hps = {k: _decode(v) for k, v in raw.items()}
    program = hps.pop("sagemaker_program", None)
    submit = hps.pop("sagemaker_submit_directory", None)
    for key in [k for k in hps if k.startswith("sagemaker_")]:
        hps.pop(key)
    if not program or not submit:
        raise SystemExit("sagemaker_program and sagemaker_submit_directory are not set: the "
                         "framework image does not know which code to run")
    code = base / "code"
    _unpack(_local(str(submit), base, root), code)
    python = interpreter(code, root)
    args = [item for key, value in hps.items()
            for item in (f"--{key}", value if isinstance(value, str) else json.dumps(value))]
    env = dict(os.environ, SM_HPS=json.dumps(hps), SM_USER_ARGS=json.dumps(args),
               SM_MODULE_NAME=Path(str(program)).stem, SM_MODULE_DIR=str(submit))
    print(f"Invoking script: {program} {' '.join(args)}", flush=True)
    _run([python, str(code / str(program)), *args], code, env)


def process(base: Path, root: Path, runproc: Path, args: list[str]) -> None:
    text = runproc.read_text()
    folder = re.search(r"^cd\s+(\S+)", text, re.MULTILINE)
    run = re.search(r'^(\S+(?: \S+)*) (\S+) "\$@"\s*$', text, re.MULTILINE)
    if folder is None or run is None:
        raise SystemExit(f"{runproc.name} has no `cd <code folder>` or `<command> <script> "
                         '"$@"` line: not a runproc.sh the SageMaker SDK would write')
    code = _local(folder.group(1).rstrip("/"), base, root)
    _unpack(code / "sourcedir.tar.gz", code)
    python = interpreter(code, root)
    _run([python, run.group(2), *args], code, dict(os.environ))


def serve(base: Path, root: Path) -> None:
    submit = os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY")
    if not submit:
        raise SystemExit("SAGEMAKER_SUBMIT_DIRECTORY is not set: the framework image does not "
                         "know where the inference handlers are")
    code = base / "code"
    _unpack(_local(submit, base, root), code)
    if not (code / "serve.py").exists():  # the image's model server, sagepipe's here
        shutil.copy2(DEFAULT_CONTAINERS / "serve" / "serve.py", code / "serve.py")
    python = interpreter(code, root)
    _run([python, str(code / "serve.py")], code, dict(os.environ))


def main(argv: list[str]) -> None:
    """``MODE ROOT [ARGS...]``: ROOT is the local runtime's state folder (venvs, S3)."""
    if len(argv) < 2:
        raise SystemExit("usage: python -m sagepipe.tasks.local.framework MODE ROOT [ARGS]")
    mode, root, rest = argv[0], Path(argv[1]), argv[2:]
    base = Path(os.environ["SAGEMAKER_BASE_DIR"])
    if mode == "train":
        train(base, root)
    elif mode == "process" and rest:
        process(base, root, Path(rest[0]), rest[1:])
    elif mode == "serve":
        serve(base, root)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
