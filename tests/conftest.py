"""Fixtures shared by every test package.

Azurite starts once per session (1-2 s; more on a cold disk); each test gets its own container.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from d365sim.azurite import Azurite
from d365sim.blob import BlobStore


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml; browser tests run in `make test` like the others.
    config.addinivalue_line(
        "markers", "browser: drives the dashboard in headless Chromium (Debian chromium package)"
    )


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A running Azurite blob service, shared by the whole session."""
    with Azurite() as server:
        yield server


@pytest.fixture
def blob_store(azurite: Azurite) -> Iterator[BlobStore]:
    """A BlobStore on a new, empty container, so tests never see each other's blobs."""
    # Container names: 3-63 chars of lowercase letters, digits and single hyphens.
    store = BlobStore(azurite.connection_string, container=f"test-{uuid.uuid4().hex}")
    store.ensure_container()
    with store:
        yield store


# d365sim served over real HTTP, for the simulator's conformance suite and d365ct's adapters.
# The commercetools mock server (Node), for the commercetools adapter and flows.
from tests.ct_fixtures import ct_mock, ct_mock_server  # noqa: E402
from tests.sim_fixtures import fresh_sim, running_sim, sim  # noqa: E402

__all__ = ["azurite", "blob_store", "ct_mock", "ct_mock_server", "fresh_sim", "running_sim", "sim"]
