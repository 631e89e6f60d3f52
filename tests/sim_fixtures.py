"""d365sim served over real HTTP on a free port, backed by Azurite: the D365 peer of our tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from d365sim.app import Simulator
from d365sim.config import SimConfig

SEED_PRODUCTS = 60


@dataclass
class RunningSim:
    simulator: Simulator
    base_url: str

    @property
    def config(self) -> SimConfig:
        return self.simulator.config

    def token(self) -> str:
        response = httpx.post(
            f"{self.base_url}/{self.config.tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret,
                "scope": f"{self.base_url}/.default",
            },
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
        )


@pytest.fixture(scope="session")
def running_sim(azurite: object) -> Iterator[RunningSim]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # no Nagle
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    config = SimConfig(
        base_url=base_url,
        blob_connection_string=azurite.connection_string,  # type: ignore[attr-defined]
        blob_container="dmf-sim-tests",
        job_seconds=0.2,
        row_ms=0.0,
        page_size=50,
        seed_products=SEED_PRODUCTS,
    )
    simulator = Simulator(config)
    simulator.seed(SEED_PRODUCTS)
    server = uvicorn.Server(
        uvicorn.Config(simulator.app(), log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("d365sim did not start within 30 s")
        time.sleep(0.05)
    yield RunningSim(simulator, base_url)
    server.should_exit = True
    thread.join(timeout=15)
    simulator.close()


@pytest.fixture
def sim(running_sim: RunningSim) -> Iterator[RunningSim]:
    """The shared simulator, with faults, settings and counters back to their defaults."""
    from d365sim.config import Faults

    config = running_sim.config
    yield running_sim
    config.faults.__dict__.update(Faults().__dict__)
    config.page_size, config.job_seconds, config.sas_seconds = 50, 0.2, 1800
    config.token_seconds, config.default_company = 3599, "usmf"
    running_sim.simulator.counters.reset()


@pytest.fixture
def fresh_sim(sim: RunningSim) -> RunningSim:
    """The shared simulator re-seeded, for tests that write data."""
    sim.simulator.reset()
    sim.simulator.seed(SEED_PRODUCTS)
    return sim
