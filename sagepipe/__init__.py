"""sagepipe: from git push to a safely deployed SageMaker endpoint, orchestrated by Prefect 3.

One import namespace. In this repository ``sagepipe/flows``, ``sagepipe/tasks``,
``sagepipe/containers`` and ``sagepipe/deployments`` are links to the top-level folders
of the same name (the layout of DESIGN.md); an installed wheel holds them as real
folders. The default step code (``containers/``) and the example settings
(``deployments/settings/``) ship inside the package as data.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sagepipe")
except PackageNotFoundError:  # a source checkout that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
