"""sagepipe: from git push to a safely deployed SageMaker endpoint, orchestrated by Prefect 3.

One import namespace. In this repository ``sagepipe/flows``, ``sagepipe/tasks``,
``sagepipe/containers`` and ``sagepipe/deployments`` are links to the top-level folders
of the same name (the layout of DESIGN.md); an installed wheel holds them as real
folders. The default step code (``containers/``) and the example settings
(``deployments/settings/``) ship inside the package as data.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """``__version__`` on first use: importlib.metadata costs every job runner and every
    command ~50 ms at start-up otherwise (bench/, issue 16)."""
    if name != "__version__":
        raise AttributeError(f"module 'sagepipe' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sagepipe")
    except PackageNotFoundError:  # a source checkout that is not installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
