"""The local sandbox behind `d365ct demo`: d365sim and the commercetools mock on free ports, then
setup and the D365 → commercetools flows, run the way `d365ct` runs them in production; then
`d365ct run` (on SQLite) as a child process, fed by a storefront (d365ct.storefront).

Both peers run as child processes (d365sim starts its own Azurite); nothing is imported from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
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
SERVICE_TOKEN_ENV = "D365CT_DEMO_API_TOKEN"  # the dashboard's token, new for every demo
INTAKE_TOKEN_ENV = "D365CT_DEMO_INTAKE_TOKEN"  # the webhook intake's shared secret
SETTLE_SECONDS = 180.0  # --exit: how long the storefront's messages may take to settle
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

    def settings(self, **sections: Any) -> Settings:
        return demo_settings(self.d365_url, self.ct_url, self.workdir, **sections)


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


def demo_settings(d365_url: str, ct_url: str, workdir: Path, **sections: Any) -> Settings:
    """The sandbox's settings; `sections` replace whole top-level sections (service, orders…)."""
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
    data: dict[str, Any] = {
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
            {
                "id": "usmf",
                "currency": "USD",
                "stores": ["us-store"],
                "countries": ["US"],
                "guest_customer_account": "US-000002",
            },
            {
                "id": "demf",
                "currency": "EUR",
                "stores": ["de-store"],
                "countries": ["DE"],
                "guest_customer_account": "DE-000002",
            },
        ],
        "warehouses": [
            {"legal_entity": le, "warehouse": wh, "supply_channel": f"{le}-{wh}".lower()}
            for le, wh in WAREHOUSES
        ],
    }
    data.update(sections)
    return Settings.model_validate(data)


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


# -- the service and the storefront ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shown_token(*, chosen: bool) -> str:
    """How the console names the dashboard token: the one the demo made up, or — when the user
    chose their own in the environment — the variable, since a secret of theirs is never echoed."""
    return f"${SERVICE_TOKEN_ENV}" if chosen else os.environ[SERVICE_TOKEN_ENV]


def service_sections(port: int, *, schedules: bool) -> dict[str, Any]:
    """What the demo's `d365ct run` adds to the sandbox settings: loopback bind and fresh tokens,
    short micro-batch windows, and the cron schedules (off when the demo exits when settled)."""
    os.environ.setdefault(SERVICE_TOKEN_ENV, secrets.token_urlsafe(18))
    os.environ.setdefault(INTAKE_TOKEN_ENV, secrets.token_urlsafe(18))
    sections: dict[str, Any] = {
        "service": {"bind": f"127.0.0.1:{port}", "token": f"env:{SERVICE_TOKEN_ENV}"},
        "intake": {"kind": "http", "token": f"env:{INTAKE_TOKEN_ENV}"},
        "orders": {"max_orders": 50, "max_wait_seconds": 2},
    }
    if not schedules:
        sections["catalog"] = {"schedule": ""}
        sections["prices"] = {"schedule": ""}
        sections["inventory"] = {"schedule": "", "reconcile_schedule": ""}
    return sections


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def settings_toml(settings: Settings) -> str:
    """The settings as a d365ct.toml (secrets stay references)."""
    from d365ct.service.configdoc import toml_value

    data = _drop_none(settings.model_dump(mode="json"))
    lines: list[str] = []
    for name, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
            lines.append("")
    for name, value in data.items():
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                lines.append("")
    return "\n".join(lines)


def _die_with_parent() -> None:
    """Linux: the kernel sends the service SIGTERM should the demo die, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def dashboard(self) -> str:
        return f"{self.base_url}/"


@contextmanager
def running_service(
    settings: Settings, workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Service]:
    """`d365ct run` as a child process on these settings; stopped with SIGTERM when the block
    ends (`Service.process.returncode` is then its exit code: 0 after a graceful stop)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "d365ct.toml"
    config.write_text(settings_toml(settings), encoding="utf-8")
    log_path = workdir / "service.log"
    base_url = f"http://{settings.service.bind}"
    # The child imports the d365ct this process runs, whatever its working directory.
    package_root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        **(extra_env or {}),
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "d365ct.cli", "run", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C reaches the demo only, which then sends one SIGTERM (a
            # second signal would make uvicorn skip its graceful shutdown).
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"d365ct run exited with {process.returncode}: {tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("d365ct run did not answer /healthz within 90 s")
                time.sleep(0.2)
            yield Service(process, base_url, log_path)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _show_step(echo: Callable[[str], Any]) -> Callable[[StepResult], None]:
    def show(result: StepResult) -> None:
        summary = result.summary
        keys = ("created", "updated", "unchanged", "failed", "zeroed", "deleted")
        figures = ", ".join(f"{k} {summary[k]}" for k in keys if summary.get(k))
        if "reports" in summary:
            figures = "; ".join(
                f"{r['legal_entity']}: {r['state']} {r.get('counts', {}).get('actions', '')}"
                for r in summary["reports"]
            )
        echo(f"  {result.name:<22} {result.seconds:>7.1f} s  {figures}")

    return show


def _wait_for_interrupt(service: Service) -> int:
    """Serve until Ctrl-C or SIGTERM (0), or until the service dies by itself (its exit code,
    never 0: a dead service is not a demo that ran)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(1.0):
            code = service.process.poll()
            if code is not None:
                print(f"demo: the service stopped by itself (exit code {code})", file=sys.stderr)
                return code or 1
    return 0


def run_demo(
    *,
    products: int,
    customers: int,
    orders: int,
    d365_port: int = 0,
    service_port: int = 0,
    job_seconds: float = 2.0,
    exit_when_settled: bool = False,
    echo: Callable[[str], Any] = print,
) -> int:
    """`d365ct demo`: the exit code (0: served until Ctrl-C, or settled as seeded)."""
    from d365ct.store import make_engine
    from d365ct.storefront import check_storefront, deliver, seed_storefront, wait_settled

    def err(text: str) -> None:
        print(text, file=sys.stderr)

    try:
        with running_peers(products, job_seconds, d365_port) as sandbox:
            echo(f"D365 F&O simulator   {sandbox.d365_url} ({sandbox.seeded_rows:,} rows)")
            echo(f"commercetools mock   {sandbox.ct_url}/{PROJECT_KEY}")
            chosen_token = SERVICE_TOKEN_ENV in os.environ
            sections = service_sections(
                service_port or free_port(), schedules=not exit_when_settled
            )
            settings = sandbox.settings(**sections)
            results = asyncio.run(run_flows(settings, _show_step(echo)))
            problems = expected_outcome(results)
            with running_service(settings, sandbox.workdir) as service:
                token = shown_token(chosen=chosen_token)
                echo(f"service              {service.base_url} (log {service.log_path})")
                echo(f"dashboard            {service.dashboard}  sign in with token {token}")
                started = time.monotonic()
                front = asyncio.run(seed_storefront(settings, customers, orders))
                accepted = deliver(service.base_url, os.environ[INTAKE_TOKEN_ENV], front.messages)
                echo(
                    f"  storefront             {time.monotonic() - started:>5.1f} s  "
                    f"{len(front.customers)} customers, {len(front.orders)} orders "
                    f"({len(front.bad)} bad on purpose); {accepted} messages pushed to "
                    "/intake/commercetools"
                )
                for number, why in front.bad.items():
                    echo(f"    {number}: bad on purpose: {why}")
                if not exit_when_settled:
                    echo("Explore: the dashboard, the API and the peers stay up until Ctrl-C.")
                    return _wait_for_interrupt(service)
                engine = make_engine(settings.store.url)
                try:
                    took = wait_settled(engine, front, SETTLE_SECONDS)
                    outcome = asyncio.run(check_storefront(settings, engine, front))
                except TimeoutError as exc:
                    took, outcome = {}, None
                    problems.append(str(exc))
                finally:
                    engine.dispose()
            if service.process.returncode != 0:
                problems.append(f"d365ct run exited with {service.process.returncode} on SIGTERM")
            if outcome is not None:
                problems += outcome.problems
                echo(
                    f"  {'customers (U4)':<22} {took.get('customer', 0):>7.1f} s  "
                    f"records {len(front.customers)}, synced {outcome.customers_synced}, "
                    f"failures {outcome.customer_failures}"
                )
                echo(
                    f"  {'orders (U3)':<22} {took.get('order', 0):>7.1f} s  "
                    f"records {len(front.orders)}, posted {outcome.orders_posted}, "
                    f"failures {len(outcome.orders_in_error_queue)} (as seeded)"
                )
                for number, error in outcome.orders_in_error_queue.items():
                    echo(f"    {number} in the error queue: {error}")
            summary = {r.name: {"seconds": r.seconds, **r.summary} for r in results}
            if outcome is not None:
                summary["storefront"] = {"seconds": took, **dataclasses.asdict(outcome)}
            (sandbox.workdir / "summary.json").write_text(json.dumps(summary, default=str))
            for problem in problems:
                err(f"unexpected: {problem}")
            echo("demo: " + ("settled as seeded" if not problems else "FAILED"))
            return 1 if problems else 0
    except RuntimeError as exc:  # a peer or the service that did not start
        err(f"d365ct demo: {exc}")
        return 1
