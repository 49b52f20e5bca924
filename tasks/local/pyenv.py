"""Which Python runs an image's code locally: what ``pip install -r requirements.txt`` in
its Dockerfile would have given it.

An image whose ``requirements.txt`` this interpreter already satisfies (sagepipe's own
steps: their pins are the project's) runs on this interpreter, at no cost. Any other gets
a virtualenv of its own, keyed by the hash of its requirements and built once, at image
build time as Docker would (reused by every later job, endpoint and run): a new venv
layered over this one (a ``.pth`` line makes this interpreter's packages visible; what
the requirements pin differently is installed into the venv and wins), so only what
differs is downloaded. A requirement pip cannot install fails the build with pip's own
message, before any job starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

__all__ = ["RequirementsError", "interpreter", "unmet_requirements"]


class RequirementsError(RuntimeError):
    """pip could not install an image's requirements."""


def unmet_requirements(text: str) -> list[str]:
    """The lines of a requirements file this interpreter does not satisfy.

    Options (``-r``, ``--index-url``, ...), URLs and extras cannot be judged from the
    installed metadata alone: they count as unmet, so pip decides.
    """
    unmet = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            unmet.append(line)
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if requirement.url or requirement.extras:
            unmet.append(line)
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(line)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(line)
    return unmet


def interpreter(folder: Path, root: Path, name: str | None = None) -> str:
    """The Python for the image snapshot in ``folder`` (building its venv if needed);
    ``name``: the image's, for a message (else the folder's path)."""
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return sys.executable
    text = requirements.read_text()
    if not unmet_requirements(text):
        return sys.executable
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    venv = root / "venvs" / digest
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return str(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per venv; the others wait and reuse it
        if not (venv / ".complete").exists():
            _build(venv, requirements, name)
    return str(python)


def _build(venv: Path, requirements: Path, name: str | None) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
    staging = Path(tempfile.mkdtemp(prefix=f".{venv.name}-", dir=venv.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)],
                       check=True, capture_output=True, timeout=300)
        site = Path(subprocess.run(
            [str(staging / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60).stdout.strip())
        (site / "sagepipe-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        done = subprocess.run(
            [str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "--no-input", "-r", str(requirements)],
            capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise RequirementsError(f"pip could not install requirements.txt of the "
                                    f"{name + ' image' if name else f'image ({requirements})'}: "
                                    f"{tail}")
        staging.rename(venv)
        (venv / ".complete").write_text("")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
