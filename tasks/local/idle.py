"""``python -m sagepipe.tasks.local.idle <root> <endpoint> <deployment>``: the idle watcher.

Stops a serverless deployment's server once it has been idle for its idle time, then
exits (:func:`.serverless.scale_to_zero_when_idle`). Its own module, like the job runner,
so that running it does not load :mod:`.serverless` twice.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .serverless import scale_to_zero_when_idle


def main(argv: list[str]) -> None:
    root, endpoint, deployment = argv[:3]
    scale_to_zero_when_idle(Path(root), endpoint, deployment)


if __name__ == "__main__":
    main(sys.argv[1:])
