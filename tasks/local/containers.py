"""How the local runtime runs a container image's code without Docker.

An image is a snapshot of ``containers/<name>/`` (see :mod:`.images`). Its
Dockerfile says how SageMaker would start it: ``ENV SAGEMAKER_PROGRAM x.py`` for a
training script run by the sagemaker-training toolkit, ``ENTRYPOINT [...]`` for
processing and serving. Here the same command runs as a local process: the
interpreter is this Python, ``/opt/ml/code/`` is the snapshot folder and every
other ``/opt/ml`` path is remapped into the job's own workspace.

The child gets a clean environment: only what the request sets plus what a
process needs to run (PATH, locale, numeric-library switches). The user's AWS
credentials and other secrets never reach job code, as in SageMaker.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

__all__ = ["container_command", "job_environment", "remap"]

_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "OPENBLAS_CORETYPE",
                 "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "MKL_NUM_THREADS", "PYTHONHASHSEED", "SYSTEMROOT")
_CODE = "/opt/ml/code/"
FRAMEWORK_MODULE = "sagepipe.tasks.local.framework"
_BASE = "/opt/ml"


def _dockerfile(folder: Path) -> tuple[list[str] | None, str | None]:
    """(ENTRYPOINT as exec-form list, SAGEMAKER_PROGRAM) from the image's Dockerfile."""
    entrypoint: list[str] | None = None
    program: str | None = None
    dockerfile = folder / "Dockerfile"
    if not dockerfile.exists():
        return None, None
    lines = dockerfile.read_text().replace("\\\n", " ").splitlines()
    for raw in lines:
        line = raw.strip()
        upper = line.upper()
        if upper.startswith("ENTRYPOINT "):
            body = line[len("ENTRYPOINT "):].strip()
            entrypoint = json.loads(body) if body.startswith("[") else shlex.split(body)
        elif upper.startswith("ENV ") and "SAGEMAKER_PROGRAM" in line:
            rest = line[4:].strip()
            for token in shlex.split(rest.replace("SAGEMAKER_PROGRAM ", "SAGEMAKER_PROGRAM=")):
                key, _, value = token.partition("=")
                if key == "SAGEMAKER_PROGRAM":
                    program = value
    return entrypoint, program


def remap(arg: str, folder: Path, base: Path, python: str = sys.executable) -> str:
    """Map container paths to local ones: code to the snapshot, /opt/ml to the workspace,
    the image's Python to ``python`` (see :mod:`.pyenv`)."""
    if arg.startswith(_CODE):
        return str(folder / arg[len(_CODE):])
    if arg == _BASE or arg.startswith(_BASE + "/"):
        return str(base) + arg[len(_BASE):]
    if arg in ("python", "python3"):
        return python
    return arg


def container_command(folder: Path, base: Path, *, mode: str,
                      entrypoint: list[str] | None = None,
                      arguments: list[str] | None = None,
                      hyperparameters: dict[str, str] | None = None,
                      python: str = sys.executable, root: Path | None = None) -> list[str]:
    """The local command for ``mode`` in {"train", "process", "serve"}."""
    image_entrypoint, program = _dockerfile(folder)
    if image_entrypoint and image_entrypoint[-1] == FRAMEWORK_MODULE:
        return _framework_command(mode, folder, base, entrypoint, arguments, root)
    if mode == "train" and program and entrypoint is None:
        # what sagemaker-training does: run the program with hyperparameters as flags
        command = [python, str(folder / program)]
        for key, value in (hyperparameters or {}).items():
            command += [f"--{key}", value]
        return command
    command = list(entrypoint or image_entrypoint or [])
    if not command:
        raise LookupError(
            f"{folder / 'Dockerfile'} has no ENTRYPOINT"
            + (" or ENV SAGEMAKER_PROGRAM" if mode == "train" else "")
            + "; the local runtime needs one to know how to start the container."
        )
    if mode == "train" and entrypoint is None:
        command.append("train")
    elif mode == "serve":
        command.append("serve")
    command += arguments or []
    return [remap(a, folder, base, python) for a in command]


def _framework_command(mode: str, folder: Path, base: Path, entrypoint: list[str] | None,
                       arguments: list[str] | None, root: Path | None) -> list[str]:
    """An AWS framework image (see :mod:`.framework`): train, serve, or the SDK's
    ``/bin/bash .../runproc.sh`` for processing."""
    command = [sys.executable, "-m", FRAMEWORK_MODULE, mode, str(root or base)]
    if mode == "process":
        if not entrypoint or not entrypoint[-1].endswith(".sh"):
            raise LookupError("a processing job on a SageMaker framework image needs "
                              "ContainerEntrypoint [\"/bin/bash\", \".../runproc.sh\"] (the "
                              "SDK's FrameworkProcessor)")
        command.append(remap(entrypoint[-1], folder, base))
    return command + [remap(a, folder, base) for a in arguments or []]


def job_environment(base: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["SAGEMAKER_BASE_DIR"] = str(base)
    env.update(extra)
    return env
