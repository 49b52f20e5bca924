"""``python -m sagepipe.tasks.local.supervise <root> <endpoint>``: an endpoint's supervisor.

Its own module, like the job runner, so that running it does not load :mod:`.supervisor`
twice; the supervisor itself is :func:`.supervisor.supervise`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .supervisor import supervise


def main(argv: list[str]) -> None:
    root, endpoint = argv[:2]
    supervise(Path(root), endpoint)


if __name__ == "__main__":
    main(sys.argv[1:])
