"""Integration fixtures: Prefect's real engine against a temporary Prefect server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (and database) for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
