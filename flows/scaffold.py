"""``sagepipe init``: make a folder a sagepipe project.

Writes the settings the CLI finds by itself in that folder (``sagepipe.yaml``, and
``sagepipe.aws.yaml`` for the AWS runtime), the user's step code copied from sagepipe's
defaults so it runs as-is (the training script at least), a ``prefect.yaml`` whose
deployments run the installed flow on this folder's code, an example flow of the user's
own composed from sagepipe's tasks (``two_models.py``), a ``.gitignore`` for the local
state, and what the pipeline's Build stage needs from the repository: the flow image's
Dockerfile and exclude list (``deployments/flow-image/``), its buildspec and a tests
buildspec (``buildspecs/``). Files that exist are left untouched: init never overwrites.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from sagepipe import __version__
from sagepipe.tasks.errors import ConfigError
from sagepipe.tasks.stepsource import DEFAULT_CONTAINERS, DEFAULT_ENTRY, STEPS, code_files

__all__ = ["InitResult", "init_project"]

TEMPLATES = Path(__file__).parent.parent / "scaffold"
BUILDSPECS = Path(__file__).parent.parent / "buildspecs"
# what a user edits; the Dockerfile stays sagepipe's unless they add their own, and the
# serve step's HTTP server (serve.py) is sagepipe's: the user writes the handlers
_SKIP = {"Dockerfile", "serve.py"}


@dataclass
class InitResult:
    directory: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already there: not touched


def project_name(directory: Path) -> str:
    """A valid ``project`` (lower-case letters, digits, dashes; 2-32) from a folder name."""
    name = re.sub(r"[^a-z0-9]+", "-", directory.resolve().name.lower()).strip("-")[:32]
    name = name.strip("-")
    return name if len(name) >= 2 else "my-model"


def _steps_block(steps: list[str]) -> str:
    lines = []
    for step in steps:
        if step == "train":
            continue
        lines += [f"  {step}:", f"    source: steps/{step}",
                  f"    entry_point: {DEFAULT_ENTRY[step]}"]
    return "\n".join(lines)


def init_project(directory: Path, steps: list[str] | None = None,
                 project: str | None = None) -> InitResult:
    """Scaffold ``directory``; ``steps`` whose code to copy (train always)."""
    chosen = ["train", *[s for s in (steps or []) if s != "train"]]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise ConfigError(f"No step {', '.join(unknown)}; steps are {', '.join(STEPS)}.")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a folder for the project.")
    name = project or project_name(directory)
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}[a-z0-9]", name):
        raise ConfigError(f"Project name {name!r}: use 2-32 lower-case letters, digits and "
                          "dashes (it names the jobs, images and model group).")
    # the flow image and the tests install this sagepipe (a checkout's: the latest)
    requirement = "sagepipe" if "+" in __version__ else f"sagepipe=={__version__}"
    values = {"project": name, "extra_steps": _steps_block(chosen), "requirement": requirement}
    files: dict[Path, bytes] = {}
    for template, written_as in (("sagepipe.yaml", "sagepipe.yaml"),
                                 ("sagepipe.aws.yaml", "sagepipe.aws.yaml"),
                                 ("prefect.yaml", "prefect.yaml"), ("gitignore", ".gitignore"),
                                 ("flow-image.Dockerfile", "deployments/flow-image/Dockerfile"),
                                 ("tests.yml", "buildspecs/tests.yml")):
        text = Template((TEMPLATES / template).read_text()).substitute(values)
        files[Path(written_as)] = re.sub(r"\n{3,}", "\n\n", text).encode()
    # an example of a flow of your own from sagepipe's tasks (see sagepipe.tasks)
    files[Path("two_models.py")] = (TEMPLATES / "two_models.py").read_bytes()
    # the Build stage builds the flow image with sagepipe's own buildspec
    files[Path("deployments/flow-image/exclude")] = (TEMPLATES / "flow-image.exclude"
                                                     ).read_bytes()
    files[Path("buildspecs/flow-image.yml")] = (BUILDSPECS / "flow-image.yml").read_bytes()
    for step in chosen:
        default = DEFAULT_CONTAINERS / step
        for path in code_files(default):
            if path.name not in _SKIP:
                files[Path("steps") / step / path.relative_to(default)] = path.read_bytes()
    result = InitResult(directory=directory)
    for relative, data in files.items():
        target = directory / relative
        if target.exists():
            result.kept.append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:  # never overwrite, even if it appeared meanwhile
            out.write(data)
        result.written.append(relative)
    return result
