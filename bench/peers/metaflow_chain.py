"""The peer: the same four container scripts as a Metaflow flow, run locally.

    python bench/peers/metaflow_chain.py --no-pylint run --data DIR_WITH_CSV --work DIR

Each step calls the bare chain's function for one script (``bench/chain.py``), so
the peer runs exactly what the bare chain runs; the difference in wall time is
Metaflow's: a process per step, artifacts pickled into its local datastore,
metadata written per task. Metaflow needs ``start`` and ``end``: start
preprocesses and end serves, so the flow has one step per script, like the
pipeline has one job per script.

Installed only in the benchmark's own venv (``bench/.venv-metaflow``, made by
``make bench``), never in the project's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from metaflow import FlowSpec, Parameter, step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import chain  # bench/chain.py, stdlib only


class ContainerChainFlow(FlowSpec):
    """preprocess -> train -> evaluate -> serve, one step each."""

    data = Parameter("data", required=True, help="folder with the dataset CSV")
    work = Parameter("work", required=True, help="scratch folder for the scripts' outputs")

    @step
    def start(self) -> None:
        """Preprocess: split the CSV."""
        self.splits = str(chain.preprocess(Path(self.data), Path(self.work)))
        self.next(self.train)

    @step
    def train(self) -> None:
        self.model = str(chain.train(Path(self.splits), Path(self.work)))
        self.next(self.evaluate)

    @step
    def evaluate(self) -> None:
        self.evaluation = chain.evaluate(Path(self.model), Path(self.splits), Path(self.work))
        self.next(self.end)

    @step
    def end(self) -> None:
        """Serve: start the serving container, invoke it once, stop it."""
        self.smoke_test = chain.serve_once(Path(self.model), Path(self.splits),
                                           Path(self.work))
        print(f"smoke test answered {self.smoke_test[:120]}")


if __name__ == "__main__":
    ContainerChainFlow()
