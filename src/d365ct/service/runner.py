"""``d365ct run``: one process hosting the HTTP server (uvicorn), the durable engine (DBOS), the
event intake and the scheduler, stopped gracefully by SIGTERM or SIGINT.

Shutdown order: the server stops accepting connections and finishes the requests in hand (the
webhook intake stops with it); the lifespan stops the queue consumers (SQS, Service Bus) after
the batch in hand; then DBOS is shut down, waiting up to ``shutdown_timeout`` seconds for running
workflows to finish their current steps. What is still running then is recovered at the next
start (DBOS resumes it from its last recorded step). The process exits 0 after a graceful stop.

Inbox processor: with commercetools configured (orders and customers clients), a background
task drains the durable inbox round after round (``d365ct.service.processor``); on shutdown it
finishes the round in hand (up to ``shutdown_timeout``) before DBOS is shut down.

Scheduler: cron runs of flows are DBOS schedules (``DBOS.apply_schedules``), kept in the DBOS
system database. DBOS derives each run's workflow id from the schedule name and the tick, so
with several workers each tick runs once, and a tick missed while every worker was down is not
replayed (``automatic_backfill`` off: a delta sync catches up by itself). ``schedules_for``
builds them from ``[catalog] schedule``, ``[prices] schedule``, ``[inventory] schedule`` and
``reconcile_schedule``; schedules this process no longer has are deleted. Ticks run through a
queue per group (catalog and prices; inventory and its reconciliation), one at a time across
workers. DBOS enqueues a tick for the *latest* registered application version only; one-off
commands run under a version of their own (``d365ct.engine.command_version``) and hand "latest"
back, and the service re-asserts its version as the latest while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from typing import Any, Final

import uvicorn
from fastapi import APIRouter

from d365ct.config import Settings
from d365ct.engine import WORKFLOW_MODULES, launch_engine, shutdown_engine
from d365ct.errors import ConfigurationError, D365ctError
from d365ct.intake import Inbox, ServiceBusConsumer, SqsConsumer, intake_router
from d365ct.intake.http import settings_token_provider
from d365ct.service.app import Background, create_app
from d365ct.service.logging import configure_logging, redactor_for
from d365ct.service.processor import InboxProcessor
from d365ct.service.queries import StepView
from d365ct.service.replay import ReplayRegistry, flow_registry
from d365ct.store import make_engine
from d365ct.store.error_queue import ErrorQueue

__all__ = [
    "SCHEDULE_PREFIX",
    "WORKFLOW_MODULES",
    "Schedule",
    "apply_schedules",
    "check_service_auth",
    "claim_latest_version",
    "dbos_step_history",
    "run_service",
    "schedules_for",
    "service_replays",
]

log = logging.getLogger("d365ct.service")

SCHEDULE_PREFIX: Final = "d365ct-"
CONSUMER_STOP_SECONDS: Final = 30.0
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True)
class Schedule:
    """A cron run of a flow. ``workflow`` is a registered ``@DBOS.workflow`` taking
    ``(scheduled_at: datetime, context)``; ``cron`` has 5 fields, or 6 with seconds first (UTC)."""

    name: str
    cron: str
    workflow: Callable[[datetime, Any], Any]
    context: Any = None
    queue: str | None = None  # a registered DBOS queue the ticks go through (None: DBOS's own)


def _valid_cron(key: str, cron: str) -> str:
    from dbos._croniter import croniter  # type: ignore[attr-defined]

    cron = " ".join(cron.split())
    if len(cron.split()) not in (5, 6) or not croniter.is_valid(cron, second_at_beginning=True):
        raise ConfigurationError(
            f"{key} = {cron!r} is not a cron expression: 5 fields (minute hour day month "
            'weekday, UTC), or 6 with seconds first; "" turns the schedule off'
        )
    return cron


def _schedule_gap(settings: Settings, flow: str) -> str | None:
    """Why `flow` cannot run with these settings (it is then not scheduled), or None."""
    ct = settings.commercetools
    if ct is None:
        return "[commercetools] is not configured"
    needs = {"catalog": "catalog", "prices": "catalog", "inventory": "inventory"}
    client = needs.get(flow, "inventory")
    if client not in ct.clients:
        return f"commercetools.clients.{client} is not configured"
    if flow == "prices" and not settings.legal_entities:
        return "no [[legal_entities]] are configured"
    if flow in ("inventory", "reconcile") and not settings.warehouses:
        return "no [[warehouses]] are configured"
    return None


def schedules_for(settings: Settings) -> list[Schedule]:
    """The cron schedules of the configured flows: catalog, price and inventory delta syncs and
    the inventory reconciliation. An empty cron turns one off; a flow whose configuration is
    missing (no commercetools client, no warehouses) is left out, with a log line saying why.
    Raises ConfigurationError naming the key of an invalid cron expression."""
    from d365ct.flows import scheduled

    crons = {
        "catalog": settings.catalog.schedule,
        "prices": settings.prices.schedule,
        "inventory": settings.inventory.schedule,
        "reconcile": settings.inventory.reconcile_schedule,
    }
    workflows = {
        "catalog": scheduled.scheduled_catalog_sync,
        "prices": scheduled.scheduled_price_sync,
        "inventory": scheduled.scheduled_inventory_sync,
        "reconcile": scheduled.scheduled_inventory_reconciliation,
    }
    out = []
    for flow, key in scheduled.FLOWS.items():
        if not crons[flow].strip():
            continue
        cron = _valid_cron(key, crons[flow])
        gap = _schedule_gap(settings, flow)
        if gap is not None:
            log.info("%s is not scheduled: %s", flow, gap, extra={"flow": flow, "key": key})
            continue
        out.append(
            Schedule(flow, cron, workflows[flow], {"flow": flow}, scheduled.queue_name(flow))
        )
    return out


def register_schedule_queues(schedules: Sequence[Schedule]) -> None:
    """Declare the schedules' queues (after launch): one run at a time per flow, all workers."""
    from dbos import DBOS

    for queue in sorted({s.queue for s in schedules if s.queue is not None}):
        DBOS.register_queue(queue, global_concurrency=1, on_conflict="always_update")


def claim_latest_version() -> bool:
    """Make this process's application version the latest, so that DBOS enqueues schedule ticks
    for it (it enqueues for the latest version only, which a one-off CLI command launching the
    engine on the same database may have registered since). True when it had to."""
    from dbos import DBOS

    mine = DBOS.application_version
    if DBOS.get_latest_application_version()["version_name"] == mine:
        return False
    DBOS.set_latest_application_version(mine)
    log.info("this worker's application version is now the latest", extra={"version": mine})
    return True


def apply_schedules(schedules: Sequence[Schedule]) -> None:
    """Make DBOS's schedules match ``schedules`` (after launch): upsert ours, delete stale ones."""
    from dbos import DBOS

    wanted = {SCHEDULE_PREFIX + s.name for s in schedules}
    if schedules:
        DBOS.apply_schedules(
            [
                {
                    "schedule_name": SCHEDULE_PREFIX + s.name,
                    "workflow_fn": s.workflow,
                    "schedule": s.cron,
                    "context": s.context,
                    "queue_name": s.queue,
                }
                for s in schedules
            ]
        )
    for existing in DBOS.list_schedules(schedule_name_prefix=SCHEDULE_PREFIX):
        if existing["schedule_name"] not in wanted:
            DBOS.delete_schedule(existing["schedule_name"])


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_service_auth(settings: Settings, *, insecure_no_auth: bool) -> None:
    """Refuse to serve without authentication, unless asked to for a local demo on loopback."""
    if insecure_no_auth:
        if not _is_loopback(settings.service.host):
            raise ConfigurationError(
                f"service.bind = {settings.service.bind!r}: --insecure-no-auth serves the "
                "dashboard and API to anyone who can connect, so it is only allowed on a loopback "
                "address (127.0.0.1:PORT)"
            )
        return
    if settings.service.token is None:
        raise ConfigurationError(
            "service.token is not set: the dashboard, JSON API and /metrics require a token. "
            'Set [service] token = "env:D365CT_API_TOKEN" (or D365CT_SERVICE__TOKEN=env:NAME) '
            "and export the variable; for a local demo only, pass --insecure-no-auth"
        )
    if not settings.service.token.resolve():
        raise ConfigurationError(f"service.token: {settings.service.token} is empty")


def _dbos_launched() -> bool:
    from dbos import _dbos

    instance = _dbos._dbos_global_instance
    return instance is not None and bool(getattr(instance, "_launched", False))


def _from_epoch_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def dbos_step_history(workflow_id: str) -> list[StepView] | None:
    """The steps DBOS recorded for ``workflow_id``; None when no engine runs in this process."""
    if not _dbos_launched():
        return None
    from dbos import DBOS

    steps = DBOS.list_workflow_steps(workflow_id, load_output=False)
    return [
        StepView(
            function_id=int(step["function_id"]),
            name=str(step["function_name"]),
            started_at=_from_epoch_ms(step.get("started_at_epoch_ms")),
            completed_at=_from_epoch_ms(step.get("completed_at_epoch_ms")),
            error=None if step.get("error") is None else str(step["error"]),
            child_workflow_id=step.get("child_workflow_id"),
        )
        for step in steps
    ]


def _consumer_background(consumer: SqsConsumer | ServiceBusConsumer) -> Background:
    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        task = asyncio.create_task(consumer.run(), name=f"intake-{consumer.source}")
        try:
            yield
        finally:
            consumer.stop()  # finishes the batch in hand: nothing taken is left unstored
            try:
                await asyncio.wait_for(task, CONSUMER_STOP_SECONDS)
            except TimeoutError:
                log.warning("intake consumer did not stop within %.0f s", CONSUMER_STOP_SECONDS)
            except Exception:
                log.exception("intake consumer ended with an error")

    return running


def _intake(settings: Settings, inbox: Inbox) -> tuple[list[APIRouter], list[Background]]:
    kind = settings.intake.kind
    if kind == "http":
        return [intake_router(inbox, settings_token_provider(settings.intake))], []
    consumer: SqsConsumer | ServiceBusConsumer
    consumer = (
        SqsConsumer(settings.intake, inbox)
        if kind == "sqs"
        else ServiceBusConsumer(settings.intake, inbox)
    )
    return [], [_consumer_background(consumer)]


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which would kill the process
    before DBOS is shut down; this server only records them, and run_service returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _commerce_flows(settings: Settings, engine: Any) -> Any:
    """The U3/U4 flows the inbox processor runs, or None (with a log line) when the settings
    cannot process orders and customers: intake then only stores messages."""
    ct = settings.commercetools
    missing = (
        "[commercetools]"
        if ct is None
        else ", ".join(
            f"commercetools.clients.{c}" for c in ("orders", "customers") if c not in ct.clients
        )
    )
    if missing:
        log.warning(
            "orders and customers are not processed (%s not configured): the intake stores "
            "messages for a later `d365ct orders process`",
            missing,
        )
        return None
    from d365ct.flows.orders import commerce_flows

    return commerce_flows(settings, engine)


def service_replays(settings: Settings, *, commerce: bool) -> ReplayRegistry:
    """The dashboard's and JSON API's replay handlers: those of `d365ct errors replay`
    (d365ct.flows.replay), for the flows this service can run (orders and customers only with
    their commercetools clients, whose DBOS instances exist before launch)."""
    from d365ct.flows.replay import REPLAYERS

    runnable = [f for f in REPLAYERS if commerce or f not in ("orders", "customers")]
    return flow_registry(settings, runnable)


_VERSION_CHECK_SECONDS: Final = 60.0
_last_version_check = [0.0]


async def _keep_latest_version() -> None:
    now = time.monotonic()
    if now - _last_version_check[0] < _VERSION_CHECK_SECONDS:
        return
    _last_version_check[0] = now
    await asyncio.to_thread(claim_latest_version)


def run_service(
    settings: Settings,
    *,
    insecure_no_auth: bool = False,
    shutdown_timeout: int = 30,
    log_level: str = "info",
    replay_registry: ReplayRegistry | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; raises ConfigurationError before starting anything it cannot."""
    check_service_auth(settings, insecure_no_auth=insecure_no_auth)
    redactor = redactor_for(settings)
    configure_logging(redactor, level=log_level.upper())
    for module in WORKFLOW_MODULES:
        import_module(module)
    schedules = schedules_for(settings)  # validates the cron keys before anything starts
    engine = make_engine(settings.store.url)
    flows = _commerce_flows(settings, engine)  # before launch: DBOS recovers their batches
    if settings.commercetools is not None:
        from d365ct.flows import scheduled

        scheduled.configure(settings, engine)

    launch_engine(
        settings.store.url,
        import_concurrency=settings.d365.import_concurrency_per_legal_entity,
    )
    inbox: Inbox | None = None
    try:
        register_schedule_queues(schedules)
        apply_schedules(schedules)
        if schedules:
            claim_latest_version()
        log.info(
            "schedules applied",
            extra={"schedules": {s.name: s.cron for s in schedules}},
        )
        inbox = Inbox(
            engine,
            handled_types={"OrderCreated", "OrderImported", *settings.intake.customer_update_types},
            error_queue=ErrorQueue(engine),
        )
        routers, background = _intake(settings, inbox)
        if flows is not None:
            processor = InboxProcessor(
                flows,
                inbox,
                stop_timeout=shutdown_timeout,
                on_idle=_keep_latest_version if schedules else None,
            )
            background = [*background, processor.running]
        app = create_app(
            settings,
            store_engine=engine,
            extra_routers=routers,
            auth_disabled=insecure_no_auth,
            redactor=redactor,
            replay_registry=replay_registry
            or service_replays(settings, commerce=flows is not None),
            step_history=dbos_step_history,
            inbox_stats=inbox.stats,
            background=background,
        )
        server = _Server(
            uvicorn.Config(
                app,
                host=settings.service.host.strip("[]"),
                port=settings.service.port,
                log_config=None,  # our JSON logging, configured above
                log_level=log_level,
                lifespan="on",
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=shutdown_timeout,
            )
        )
        log.info(
            "d365ct service starting",
            extra={"bind": settings.service.bind, "auth": not insecure_no_auth},
        )
        if insecure_no_auth:
            log.warning("authentication is OFF (--insecure-no-auth): local demo use only")
        server.run()
        if not server.started:
            raise D365ctError(f"the HTTP server could not start on {settings.service.bind}")
    finally:
        log.info(
            "stopping the durable engine (waiting up to %d s for running steps)", shutdown_timeout
        )
        shutdown_engine(workflow_completion_timeout_sec=shutdown_timeout)
        if inbox is not None:
            inbox.close()
        engine.dispose()
        log.info("d365ct service stopped")
