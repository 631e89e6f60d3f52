"""The durable engine: DBOS configured from the store URL, plus the per-legal-entity import queue.

Launch it once per process with ``launch_engine``; D365 imports go through ``enqueue_import``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Coroutine
from importlib import import_module
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from dbos import (
    DBOS,
    DBOSConfig,
    Queue,
    SetEnqueueOptions,
    SetWorkflowID,
    WorkflowHandle,
    WorkflowHandleAsync,
)

from d365ct.store import migrate, normalise_url

__all__ = [
    "IMPORT_QUEUE",
    "IMPORT_QUEUE_NAME",
    "WORKFLOW_MODULES",
    "command_version",
    "dbos_system_url",
    "enqueue_import",
    "enqueue_import_async",
    "launch_engine",
    "shutdown_engine",
]

R = TypeVar("R")

IMPORT_QUEUE_NAME: Final = "d365-imports"

# A handle on the database-backed queue that launch_engine registers (DBOS.register_queue).
# Its limits live in the DBOS system database, so every worker enforces the same ones and a
# change needs no restart; this object only names the queue, as DBOS.enqueue_workflow's does.
# (An in-memory Queue(..., partition_concurrency=n) would fix n at import time, per process.)
IMPORT_QUEUE: Final = Queue(IMPORT_QUEUE_NAME, database_backed_queue=True)


def dbos_system_url(store_url: str | sa.URL) -> str:
    """The DBOS system database URL for a store URL: the same database.

    SQLite: the same file (DBOS's tables have no prefix but none is named like ours).
    PostgreSQL: the same database, DBOS's tables in their own ``dbos`` schema, ours in
    ``public``. DBOS forces the psycopg 3 driver itself; we pass ``postgresql+psycopg`` too.
    """
    url = normalise_url(store_url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ValueError("DBOS needs a SQLite file, not an in-memory database: sqlite:///path")
    # render_as_string, not str(): str() masks the password as ***.
    return url.render_as_string(hide_password=False)


# Modules whose @DBOS.workflow functions every process registers before launch: DBOS recovers
# only workflows it knows. Flows add theirs.
WORKFLOW_MODULES: Final = (
    "d365ct.flows.dmf_jobs",
    "d365ct.flows.orders",
    "d365ct.flows.reconcile",
    "d365ct.flows.scheduled",
)


def command_version() -> str:
    """The application version of one-off commands: the hash of the workflow modules' source
    (so a new release is a new version), marked apart from the service's own.

    DBOS dequeues and recovers only workflows of a process's own version. A command (`orders
    process`, `reconcile inventory`, `errors replay`) therefore runs only the imports it
    enqueued itself and recovers only what an earlier command left, never a schedule tick or
    an in-flight workflow of a running service on the same database."""
    digest = hashlib.sha256()
    for module in WORKFLOW_MODULES:
        digest.update(inspect.getsource(import_module(module)).encode())
    return f"command-{digest.hexdigest()[:16]}"


def _hand_back_latest_version() -> None:
    """Registering a new version makes it DBOS's latest, to which schedule ticks go: a command
    gives that back to the newest service version, if one ever ran here."""
    versions = DBOS.list_application_versions()  # newest first
    if not versions or versions[0]["version_name"] != DBOS.application_version:
        return
    for version in versions[1:]:
        if not version["version_name"].startswith("command-"):
            DBOS.set_latest_application_version(version["version_name"])
            return


def launch_engine(
    store_url: str,
    *,
    command: bool = False,
    name: str = "d365ct",
    executor_id: str | None = None,
    application_version: str | None = None,
    import_concurrency: int = 1,
    polling_interval_sec: float = 1.0,
) -> None:
    """Migrate the store, then configure and launch DBOS on the same database.

    ``sqlite:///path.sqlite`` runs DBOS on SQLite, which DBOS itself calls a development
    database ("The SQLite system database is for development and testing. PostgreSQL is
    recommended for production use."): keep it to one process. ``postgresql://…`` runs DBOS on
    PostgreSQL, where several workers share the queues and their limits.

    Recovery: at launch DBOS resumes only PENDING workflows whose executor id *and* application
    version equal this process's. Give each worker a stable ``executor_id`` (default: env
    ``DBOS__VMID`` or ``"local"``); the version defaults to a hash of every registered
    workflow's source, so pin ``application_version`` only if old workflows must resume on
    changed code. ``import_concurrency`` is how many imports may run at once per legal entity,
    across all workers (SPEC C4). ``polling_interval_sec`` paces queue dequeues and, on SQLite,
    result/notification polling (tests lower it).

    Register every workflow (import its module) before calling this, or recovery cannot find it.
    Call it outside a running event loop (DBOS refuses; async code can use asyncio.to_thread).
    Calling it again first shuts the running engine down, so tests may relaunch freely.
    """
    if import_concurrency < 1:
        raise ValueError(f"import_concurrency must be at least 1, got {import_concurrency}")
    system_url = dbos_system_url(store_url)
    for module in WORKFLOW_MODULES:
        import_module(module)
    shutdown_engine()
    # Our tables before DBOS: workflows recovered at launch may touch the store at once.
    migrate(store_url)
    config: DBOSConfig = {
        "name": name,
        "system_database_url": system_url,
        "run_admin_server": False,
        "notification_listener_polling_interval_sec": polling_interval_sec,
    }
    if executor_id is not None:
        config["executor_id"] = executor_id
    if command:
        application_version = application_version or command_version()
    if application_version is not None:
        config["application_version"] = application_version
    DBOS(config=config)
    if command:  # only its own imports; schedule queues are the service's
        DBOS.listen_queues([IMPORT_QUEUE_NAME])
    DBOS.launch()
    if command:
        _hand_back_latest_version()
    # always_update: the configured limit is deployment configuration, so the last worker
    # to start with it wins (the default would let an older app version keep its own).
    DBOS.register_queue(
        IMPORT_QUEUE_NAME,
        partition_concurrency=import_concurrency,
        polling_interval_sec=polling_interval_sec,
        on_conflict="always_update",
    )


def shutdown_engine(*, workflow_completion_timeout_sec: int = 0) -> None:
    """Stop DBOS and drop its instance; a no-op when none runs. Safe to call repeatedly.

    The registry of decorated workflows is kept (``destroy_registry=False``, as DBOS's testing
    guide does): they are registered once, at import, and must survive a relaunch.
    Threads of workflows still running are not stopped (Python cannot stop a thread): wait for
    them with ``workflow_completion_timeout_sec`` or exit the process; a relaunch under the
    same executor id while one still runs would recover it into a second, concurrent run.
    """
    DBOS.destroy(
        destroy_registry=False, workflow_completion_timeout_sec=workflow_completion_timeout_sec
    )


def enqueue_import(
    workflow: Callable[..., R], *args: Any, legal_entity: str, workflow_id: str
) -> WorkflowHandle[R]:
    """Enqueue an import workflow, serialised with the other imports of ``legal_entity``.

    ``workflow_id`` makes the start idempotent: enqueuing the same id again returns a handle
    on the first workflow and never runs it twice (DBOS dedupes by workflow id; its
    ``deduplication_id`` is unsupported on partitioned queues).
    """
    with (
        SetWorkflowID(workflow_id),
        SetEnqueueOptions(queue_partition_key=legal_entity),
    ):
        return IMPORT_QUEUE.enqueue(workflow, *args)


async def enqueue_import_async(
    workflow: Callable[..., Coroutine[Any, Any, R]],
    *args: Any,
    legal_entity: str,
    workflow_id: str,
) -> WorkflowHandleAsync[R]:
    """``enqueue_import`` for async callers, so the event loop is not blocked on the database."""
    with (
        SetWorkflowID(workflow_id),
        SetEnqueueOptions(queue_partition_key=legal_entity),
    ):
        return await IMPORT_QUEUE.enqueue_async(workflow, *args)
