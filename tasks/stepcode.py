"""The rules a step's own code ships: loaded from the step's folder, run before any job.

A step decides what it accepts: the preprocess step which data files (its ``dataset.py``),
the train step which hyperparameters (its ``hyperparameters.py``). sagepipe loads those
modules from ``containers/<step>/`` into this process and runs the same checks at
``sagepipe data push``, ``sagepipe run`` and ``sagepipe plan``, so a mistake is refused in
a second instead of failing a job minutes later. The modules are plain files in the image,
not part of sagepipe: a user's own step may ship its own version, or none (then only the
job itself checks).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .errors import ConfigError
from .stepsource import DEFAULT_CONTAINERS

__all__ = ["DEFAULT_CONTAINERS", "step_module"]

_LOADED: dict[tuple[str, float], ModuleType] = {}


def step_module(step_dir: Path, name: str) -> ModuleType | None:
    """``<step_dir>/<name>.py`` as a module (reloaded when the file changes), or None."""
    path = (step_dir / f"{name}.py").resolve()
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime)
    if key not in _LOADED:
        module_name = f"sagepipe_step_{path.parent.name}_{name}".replace("-", "_")
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"{path} cannot be loaded ({type(exc).__name__}: {exc}); sagepipe "
                              "runs it to check data and settings before any job. Fix the "
                              "file, or remove it to leave the checks to the job.") from exc
        _LOADED[key] = module
    return _LOADED[key]
