"""Where each step's code comes from: sagepipe's defaults, or the user's own folder.

Settings name, per step, a source folder and an entry point (and optionally a
requirements file), relative to the project folder::

    steps:
      train:
        source: steps/train        # the user's folder
        entry_point: train.py      # run as SageMaker runs a training script
        requirements: requirements.txt

A step without ``source`` runs sagepipe's default code (``containers/<step>/``, shipped
in the package). A step with one becomes a *bundle*: the user's files, plus what the
container needs that the user did not write — sagepipe's Dockerfile for the step, with
the entry point filled in (unless the folder has its own Dockerfile), the default
``requirements.txt`` (unless the user names or ships one), and for ``serve`` the HTTP
server that calls the user's ``model_fn/input_fn/predict_fn/output_fn``. A bundle is
content-addressed (``<work>/<step>-<hash>/``), so the image tag, the job names and the
step caches all follow the user's code.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

__all__ = ["DEFAULT_CONTAINERS", "DEFAULT_ENTRY", "STEPS", "StepCode", "StepsSettings",
           "check_steps", "code_files", "step_dir", "step_folders"]

STEPS = ("preprocess", "train", "evaluate", "serve")
DEFAULT_CONTAINERS = Path(__file__).parent.parent / "containers"
DEFAULT_ENTRY = {"preprocess": "preprocess.py", "train": "train.py",
                 "evaluate": "evaluate.py", "serve": "inference.py"}
_ENTRY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$")
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", ".ipynb_checkpoints", ".pytest_cache",
              ".mypy_cache", ".ruff_cache", ".sagepipe"}


class StepCode(BaseModel):
    """One step's code. Unset ``source``: sagepipe's default code for the step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(
        None, description="folder with the step's code, relative to the project folder")
    entry_point: str | None = Field(
        None, description="script in source run by the job (default: preprocess.py, "
        "train.py, evaluate.py; for serve the module with model_fn/input_fn/predict_fn/"
        "output_fn, default inference.py)")
    requirements: str | None = Field(
        None, description="pip requirements file in source (default: its requirements.txt, "
        "else sagepipe's for the step)")
    image: Literal["build", "framework"] = Field(
        "build", description="build: an image of the code built by CodeBuild (sagepipe's "
        "Dockerfile or the folder's own); framework: AWS's prebuilt SageMaker image for "
        "`framework`, the code shipped as sourcedir.tar.gz (no build)")
    framework: Literal["sklearn", "xgboost"] = Field(
        "sklearn", description="image: framework: which of AWS's SageMaker images")
    framework_version: str | None = Field(
        None, pattern=r"^[0-9][0-9A-Za-z.-]{0,30}$",
        description="its version (default: sklearn 1.9-0, xgboost 3.2-0)")

    @property
    def version(self) -> str:
        return self.framework_version or {"sklearn": "1.9-0", "xgboost": "3.2-0"}[self.framework]


class StepsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: StepCode = StepCode()
    train: StepCode = StepCode()
    evaluate: StepCode = StepCode()
    serve: StepCode = StepCode()

    def of(self, step: str) -> StepCode:
        code: StepCode = getattr(self, step)
        return code

    def framework_steps(self) -> dict[str, dict[str, str]]:
        """{step: framework, version, entry_point} of the steps on AWS's framework images."""
        return {step: {"framework": code.framework, "version": code.version,
                       "entry_point": code.entry_point or DEFAULT_ENTRY[step]}
                for step in STEPS if (code := self.of(step)).image == "framework"}


def code_files(folder: Path) -> list[Path]:
    """The files of a code folder, without caches, bytecode, VCS or virtualenv folders."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        found += [Path(root) / f for f in files if not f.endswith((".pyc", ".pyo"))]
    return sorted(found)


def step_dir(steps: StepsSettings, containers_dir: Path, step: str) -> Path:
    """The folder whose own check modules (dataset.py, hyperparameters.py) apply to ``step``."""
    source = steps.of(step).source
    return Path(source) if source else containers_dir / step


def check_steps(steps: StepsSettings, containers_dir: Path) -> None:
    """ConfigError naming the step and the fix when a step's code cannot be used."""
    problems = []
    for step in STEPS:
        code = steps.of(step)
        if code.source is None:
            if code.entry_point or code.requirements:
                problems.append(f"steps.{step}: entry_point and requirements need a source "
                                f"folder (steps.{step}.source)")
            elif not (containers_dir / step).is_dir():
                problems.append(f"steps.{step}: no source set and {containers_dir / step} "
                                "does not exist; set containers_dir to a folder with one "
                                f"folder per step, or steps.{step}.source")
            continue
        source = Path(code.source)
        where = f"steps.{step}.source {code.source!r}"
        if not source.is_dir():
            problems.append(f"{where} is not a folder (from {Path.cwd()}); paths in the "
                            "settings are relative to the project folder you run sagepipe in")
            continue
        entry = code.entry_point or DEFAULT_ENTRY[step]
        if not _ENTRY.match(entry) or ".." in Path(entry).parts:
            problems.append(f"steps.{step}.entry_point {entry!r} must be a .py file inside "
                            "the source folder (letters, digits, _ . - /)")
        elif not (source / entry).is_file():
            present = sorted(p.name for p in source.glob("*.py"))
            problems.append(f"steps.{step}: {source / entry} does not exist (Python files "
                            f"there: {', '.join(present) or 'none'}); set "
                            f"steps.{step}.entry_point")
        if code.requirements and not (source / code.requirements).is_file():
            problems.append(f"steps.{step}.requirements: {source / code.requirements} does "
                            "not exist")
        problems += _syntax_errors(source)
    if problems:
        raise ConfigError("The step code settings cannot be used:\n- " + "\n- ".join(problems))


def _syntax_errors(source: Path) -> list[str]:
    """The Python files of a user's folder that would not even start: found in
    milliseconds here instead of minutes into a job (imports and runtime errors still
    surface from the job itself, with the script's own message)."""
    found = []
    for path in code_files(source):
        if path.suffix != ".py":
            continue
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            found.append(f"{path}, line {exc.lineno}: SyntaxError: {exc.msg}"
                         + (f"\n    {exc.text.strip()}" if exc.text else ""))
        except ValueError as exc:  # null bytes
            found.append(f"{path}: {exc}")
    return found


def step_folders(steps: StepsSettings, containers_dir: Path, work_dir: Path) -> dict[str, Path]:
    """{step: the folder its image (build) or its sourcedir.tar.gz (framework) is made of};
    bundles are written under ``work_dir``."""
    check_steps(steps, containers_dir)
    folders = {}
    for step in STEPS:
        code = steps.of(step)
        default = containers_dir / step
        if code.source is None:
            folders[step] = default
        elif code.image == "framework":
            folders[step] = _bundle(step, code, default, work_dir, framework=True)
        else:
            folders[step] = _bundle(step, code, default, work_dir)
    return folders


def _dockerfile(step: str, default: Path, entry: str) -> bytes:
    """sagepipe's Dockerfile for the step with the user's entry point in it."""
    text = (default / "Dockerfile").read_text()
    old = DEFAULT_ENTRY[step]
    pattern = (rf"SAGEMAKER_PROGRAM={re.escape(old)}\b" if step in ("train", "serve")
               else rf"/opt/ml/code/{re.escape(old)}\b")
    new = f"SAGEMAKER_PROGRAM={entry}" if step in ("train", "serve") else f"/opt/ml/code/{entry}"
    replaced, count = re.subn(pattern, new, text)
    if count != 1:
        raise ConfigError(f"{default / 'Dockerfile'} does not name {old} exactly once, so "
                          f"sagepipe cannot start {entry} with it; give the step's source "
                          "folder a Dockerfile of its own")
    return replaced.encode()


def _bundle(step: str, code: StepCode, default: Path, work_dir: Path, *,
            framework: bool = False) -> Path:
    """The user's files plus what the container needs. A framework image brings its own
    libraries and server: only a named requirements file is added (as requirements.txt,
    where the SageMaker toolkits look for it)."""
    source = Path(code.source or ".")
    entry = code.entry_point or DEFAULT_ENTRY[step]
    contents: dict[str, bytes] = {p.relative_to(source).as_posix(): p.read_bytes()
                                  for p in code_files(source)}
    if code.requirements:
        contents["requirements.txt"] = (source / code.requirements).read_bytes()
    elif "requirements.txt" not in contents and not framework:
        contents["requirements.txt"] = (default / "requirements.txt").read_bytes()
    if "Dockerfile" not in contents and not framework:
        contents["Dockerfile"] = _dockerfile(step, default, entry)
    if step == "serve" and "serve.py" not in contents and not framework:
        contents["serve.py"] = (default / "serve.py").read_bytes()
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode() + b"\0" + contents[name] + b"\0")
    target = work_dir / f"{step}{'-framework' if framework else ''}-{digest.hexdigest()[:20]}"
    if target.is_dir():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{step}-", dir=work_dir))
    try:
        for name, data in contents.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            staging.rename(target)  # atomic: a bundle is complete or absent
        except OSError:
            if not target.is_dir():  # not another process's identical bundle: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
