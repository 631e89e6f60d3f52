"""The local sandbox behind `d365ct demo`: d365sim and the commercetools mock on free ports, then
setup and the D365 → commercetools flows, run the way `d365ct` runs them in production.

Both peers run as child processes (d365sim starts its own Azurite); nothing is imported from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from d365ct.config import CONCERNS, Settings, client_scopes
from d365ct.errors import ConfigurationError

SECRET_ENV = "D365CT_DEMO_SECRET"  # every demo client shares one secret; the peers accept any
PROJECT_KEY = "d365ct-demo"
# Two warehouses per company are mapped; usmf 24 and demf DE-03 are left out on purpose, so the
# demo shows unmapped stock landing in the error queue with a reason.
WAREHOUSES = (("usmf", "11"), ("usmf", "12"), ("usmf", "21"), ("demf", "DE-01"), ("demf", "DE-02"))


@dataclass(frozen=True)
class Sandbox:
    d365_url: str
    ct_url: str
    workdir: Path
    seeded_rows: int

    def settings(self) -> Settings:
        return demo_settings(self.d365_url, self.ct_url, self.workdir)


@dataclass
class StepResult:
    name: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


def _project_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "tools" / "ct-mock-server.mjs").exists():
            return parent
    raise ConfigurationError("tools/ct-mock-server.mjs not found: run the demo from the project")


def _read_ready(process: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        stderr = process.stderr.read() if process.stderr else ""
        raise RuntimeError(f"{what} did not start: {stderr.strip()[-2000:] or 'no output'}")
    return dict(json.loads(line))


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def running_peers(products: int, job_seconds: float, d365_port: int = 0) -> Iterator[Sandbox]:
    """d365sim (seeded) and the commercetools mock, stopped when the block ends."""
    root = _project_root()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "d365sim.cli",
            "serve",
            "--port",
            str(d365_port),
            "--seed-products",
            str(products),
            "--job-seconds",
            str(job_seconds),
            "--row-ms",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes = [sim]
    try:
        ready = _read_ready(sim, "d365sim")
        mock = subprocess.Popen(
            [
                "node",
                str(root / "tools" / "ct-mock-server.mjs"),
                "--port",
                "0",
                "--project",
                PROJECT_KEY,
                "--auth",
            ],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(mock)
        ct_ready = _read_ready(mock, "the commercetools mock")
        with tempfile.TemporaryDirectory(prefix="d365ct-demo-") as workdir:
            yield Sandbox(ready["url"], ct_ready["url"], Path(workdir), int(ready["seeded_rows"]))
    finally:
        for process in reversed(processes):
            _stop(process)


def demo_settings(d365_url: str, ct_url: str, workdir: Path) -> Settings:
    os.environ.setdefault(SECRET_ENV, "sandbox-secret")
    secret = f"env:{SECRET_ENV}"
    clients = {
        concern: {
            "client_id": f"{concern}-client",
            "client_secret": secret,
            "scopes": client_scopes(concern, PROJECT_KEY),
        }
        for concern in CONCERNS
    }
    return Settings.model_validate(
        {
            "d365": {
                "base_url": d365_url,
                "authority": d365_url,
                "tenant_id": "sandbox",
                "client_id": "sandbox-client",
                "client_secret": secret,
                "auth": "oauth2",
                "poll_interval_seconds": 0.5,
            },
            "store": {"url": f"sqlite:///{workdir / 'd365ct.sqlite'}", "workdir": str(workdir)},
            "commercetools": {
                "project_key": PROJECT_KEY,
                "api_url": ct_url,
                "auth_url": ct_url,
                "scope_in_query": True,  # what the mock reads; the real API takes the form body
                "clients": clients,
            },
            "legal_entities": [
                {"id": "usmf", "currency": "USD", "stores": ["us-store"], "countries": ["US"]},
                {"id": "demf", "currency": "EUR", "stores": ["de-store"], "countries": ["DE"]},
            ],
            "warehouses": [
                {"legal_entity": le, "warehouse": wh, "supply_channel": f"{le}-{wh}".lower()}
                for le, wh in WAREHOUSES
            ],
        }
    )


async def run_flows(settings: Settings, report: Callable[[StepResult], None]) -> list[StepResult]:
    """Setup, catalog, prices, inventory (twice: the second writes nothing) and reconciliation."""
    from d365ct.engine import launch_engine, shutdown_engine
    from d365ct.flows.catalog import sync_catalog
    from d365ct.flows.inventory import sync_inventory
    from d365ct.flows.prices import sync_prices
    from d365ct.flows.reconcile import package_jobs, reconcile_inventory
    from d365ct.flows.setup import run_setup
    from d365ct.store import make_engine, migrate

    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    results: list[StepResult] = []

    async def step(name: str, run: Callable[[], Any]) -> Any:
        started = time.monotonic()
        outcome = await run()
        summary = outcome.as_dict() if hasattr(outcome, "as_dict") else {}
        result = StepResult(name, round(time.monotonic() - started, 2), summary)
        results.append(result)
        report(result)
        return outcome

    await step("setup", lambda: run_setup(settings))
    await step("sync catalog", lambda: sync_catalog(settings, engine))
    await step("sync catalog again", lambda: sync_catalog(settings, engine))
    await step("sync prices", lambda: sync_prices(settings, engine))
    await step("sync inventory", lambda: sync_inventory(settings, engine))
    await step("sync inventory again", lambda: sync_inventory(settings, engine))
    jobs = package_jobs(settings)  # before launch: DBOS registers workflow instances at launch
    await asyncio.to_thread(launch_engine, settings.store.url, polling_interval_sec=0.2)
    try:
        started = time.monotonic()
        reports = await reconcile_inventory(settings, engine, jobs)
        summary = {"reports": [r.as_dict() for r in reports]}
        result = StepResult("reconcile inventory", round(time.monotonic() - started, 2), summary)
        results.append(result)
        report(result)
    finally:
        await asyncio.to_thread(shutdown_engine, workflow_completion_timeout_sec=5)
    return results


def expected_outcome(results: list[StepResult]) -> list[str]:
    """What must hold for the demo to count as a success; empty when everything does."""
    by_name = {r.name: r.summary for r in results}
    problems = []
    if not by_name.get("sync catalog", {}).get("created"):
        problems.append("the first catalog sync created no products")
    again = by_name.get("sync catalog again", {})
    if again.get("created") or again.get("updated"):
        problems.append("the second catalog sync wrote products although nothing changed")
    if not by_name.get("sync inventory", {}).get("created"):
        problems.append("the inventory sync created no entries")
    inventory_again = by_name.get("sync inventory again", {})
    if inventory_again.get("created") or inventory_again.get("updated"):
        problems.append("the second inventory sync wrote entries although nothing changed")
    for entry in by_name.get("reconcile inventory", {}).get("reports", []):
        if entry.get("state") != "completed":
            problems.append(f"reconciliation of {entry.get('legal_entity')} did not complete")
    return problems


def token_ok(sandbox: Sandbox) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        response = httpx.post(
            f"{sandbox.d365_url}/sandbox/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "scope": f"{sandbox.d365_url}/.default",
            },
            timeout=30,
        )
        return response.status_code == 200
    return False
