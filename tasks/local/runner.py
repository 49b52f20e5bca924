"""``python -m sagepipe.tasks.local.runner <root> <kind> <name>``: one job's detached runner.

Its own module, so that running it does not load :mod:`.jobs` twice (once as the package's
import, once as ``__main__``); the runner itself is :class:`.jobs._Runner`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .jobs import _Runner


def main(argv: list[str]) -> None:
    root, kind, name = argv[:3]
    _Runner(Path(root), kind, name).run()


if __name__ == "__main__":
    main(sys.argv[1:])
