"""``d365ct run``: one process hosting the HTTP server (uvicorn), the durable engine (DBOS), the
event intake and the scheduler, stopped gracefully by SIGTERM or SIGINT.

Shutdown order: the server stops accepting connections and finishes the requests in hand (the
webhook intake stops with it); the lifespan stops the queue consumers (SQS, Service Bus) after
the batch in hand; then DBOS is shut down, waiting up to ``shutdown_timeout`` seconds for running
workflows to finish their current steps. What is still running then is recovered at the next
start (DBOS resumes it from its last recorded step). The process exits 0 after a graceful stop.

Scheduler: cron runs of flows are DBOS schedules (``DBOS.apply_schedules``), kept in the DBOS
system database. DBOS derives each run's workflow id from the schedule name and the tick, so
with several workers each tick runs once, and a tick missed while every worker was down is not
replayed (``automatic_backfill`` off: a delta sync catches up by itself). Flows contribute their
``Schedule``s through ``schedules_for``; schedules this process no longer has are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from typing import Any, Final

import uvicorn
from fastapi import APIRouter

from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.errors import ConfigurationError, D365ctError
from d365ct.intake import Inbox, ServiceBusConsumer, SqsConsumer, intake_router
from d365ct.intake.http import settings_token_provider
from d365ct.service.app import Background, create_app
from d365ct.service.logging import configure_logging, redactor_for
from d365ct.service.queries import StepView
from d365ct.service.replay import ReplayRegistry
from d365ct.store import make_engine
from d365ct.store.error_queue import ErrorQueue

__all__ = [
    "SCHEDULE_PREFIX",
    "WORKFLOW_MODULES",
    "Schedule",
    "apply_schedules",
    "check_service_auth",
    "dbos_step_history",
    "run_service",
    "schedules_for",
]

log = logging.getLogger("d365ct.service")

# Modules whose @DBOS.workflow functions must be registered before launch, or DBOS cannot
# recover their interrupted runs. Flows add theirs here.
WORKFLOW_MODULES: Final = ("d365ct.flows.dmf_jobs",)
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


def schedules_for(settings: Settings) -> list[Schedule]:
    """The schedules of the configured flows. None yet: the catalog, price and inventory flows
    add their delta syncs and the nightly reconciliation here when they gain cron settings."""
    return []


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

    launch_engine(
        settings.store.url,
        import_concurrency=settings.d365.import_concurrency_per_legal_entity,
    )
    engine = make_engine(settings.store.url)
    inbox: Inbox | None = None
    try:
        apply_schedules(schedules_for(settings))
        inbox = Inbox(
            engine,
            handled_types={"OrderCreated", "OrderImported", *settings.intake.customer_update_types},
            error_queue=ErrorQueue(engine),
        )
        routers, background = _intake(settings, inbox)
        app = create_app(
            settings,
            store_engine=engine,
            extra_routers=routers,
            auth_disabled=insecure_no_auth,
            redactor=redactor,
            replay_registry=replay_registry,
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
