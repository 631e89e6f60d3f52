"""The local sandbox behind `d365ct demo`: d365sim with seeded D365 data, ready to explore.

It starts the simulator as a child process and prints how to reach it; the flows join as they land.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Sandbox:
    url: str
    tenant: str
    client_id: str
    client_secret: str
    seeded_rows: int

    def token(self) -> str:
        response = httpx.post(
            f"{self.url}/{self.tenant}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": f"{self.url}/.default",
            },
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def counts(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_sim/entities", timeout=30)
        response.raise_for_status()
        return dict(response.json())


@contextmanager
def running_simulator(products: int, port: int, job_seconds: float) -> Iterator[Sandbox]:
    """Run `d365sim serve` until the block ends; raises with its stderr if it fails to start."""
    command = [
        sys.executable,
        "-m",
        "d365sim.cli",
        "serve",
        "--port",
        str(port),
        "--seed-products",
        str(products),
        "--job-seconds",
        str(job_seconds),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            stderr = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"d365sim did not start: {stderr.strip() or 'no output'}")
        ready = json.loads(line)
        yield Sandbox(
            url=ready["url"],
            tenant=ready["tenant"],
            client_id=ready["client_id"],
            client_secret="sandbox-secret",
            seeded_rows=int(ready["seeded_rows"]),
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def explore_text(sandbox: Sandbox) -> str:
    """Copy-paste commands for a first look at the simulated D365."""
    token_cmd = (
        f"TOKEN=$(curl -s -X POST {sandbox.url}/{sandbox.tenant}/oauth2/v2.0/token "
        f"-d grant_type=client_credentials -d client_id={sandbox.client_id} "
        f"-d client_secret={sandbox.client_secret} -d scope={sandbox.url}/.default "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    return "\n".join(
        [
            f"D365 F&O simulator running at {sandbox.url} ({sandbox.seeded_rows:,} rows seeded)",
            "",
            "Get a token:",
            f"  {token_cmd}",
            "Read released products (OData):",
            f'  curl -s -H "Authorization: Bearer $TOKEN" '
            f'"{sandbox.url}/data/ReleasedProductsV2?\\$top=3&\\$select=ItemNumber,ProductName"',
            "On-hand in every company:",
            f'  curl -s -H "Authorization: Bearer $TOKEN" '
            f'"{sandbox.url}/data/WarehousesOnHandV2?cross-company=true&\\$top=3"',
            "Simulator admin (counters, jobs, faults):",
            f"  curl -s {sandbox.url}/_sim/",
            f"API explorer: {sandbox.url}/_sim/docs",
            "",
            "Press Ctrl-C to stop.",
        ]
    )
