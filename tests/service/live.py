"""The dashboard served for real (uvicorn on a free 127.0.0.1 port, in a thread) on a migrated
SQLite store seeded with jobs, errors and a reconciliation report, with token auth on.

Used by the browser tests and by ``python -m tools.screenshots``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from d365ct.config import Settings
from d365ct.intake import Inbox
from d365ct.service.app import create_app
from d365ct.service.logging import Redactor
from d365ct.service.replay import flow_registry
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import ErrorEntry
from tests.asgi_server import serve_in_thread
from tests.intake.samples import order_created
from tests.service.conftest import D365_SECRET, D365_SECRET_ENV, TOKEN, TOKEN_ENV, make_settings
from tests.service.seed import Seeded, seed

CHROMIUM_ENV = "D365CT_CHROMIUM"
MISSING_CHROMIUM = (
    "Chromium is not installed, and the dashboard's browser tests need it: run `make browser` "
    "(installs Debian's chromium package with apt-get; needs root) or `apt-get install chromium`, "
    f"or point {CHROMIUM_ENV} at a Chromium binary."
)
INTAKE_MESSAGE_ID = "5f3c9d0e-0000-4000-8000-00000000c7a1"


def chromium_path() -> str | None:
    """Debian's chromium (Playwright's own browser download is not used)."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        return configured if Path(configured).is_file() else shutil.which(configured)
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class LiveDashboard:
    base_url: str
    settings: Settings
    engine: sa.Engine
    seeded: Seeded
    intake_error: ErrorEntry  # replays for real: the intake flow accepts it into the inbox

    def url(self, path: str) -> str:
        return self.base_url + path


@contextlib.contextmanager
def live_dashboard(workdir: Path) -> Iterator[LiveDashboard]:
    """Serve the dashboard on a fresh store in ``workdir`` until the block ends."""
    previous = {name: os.environ.get(name) for name in (TOKEN_ENV, D365_SECRET_ENV)}
    os.environ[TOKEN_ENV] = TOKEN
    os.environ[D365_SECRET_ENV] = D365_SECRET
    settings = make_settings(workdir)
    migrate(settings.store.url)
    engine = make_engine(settings.store.url)
    seeded = seed(engine)
    inbox = Inbox(engine)
    try:
        # A delivery an earlier release could not take; the current parser can, so its replay
        # (the intake flow's real handler) accepts it into the inbox and closes the entry.
        intake_error = inbox.reject(
            json.dumps(order_created("order-7", message_id=INTAKE_MESSAGE_ID)),
            "unknown message type OrderCreated (no subscription for it when it arrived)",
            message_id=INTAKE_MESSAGE_ID,
        )
    finally:
        inbox.close()
    app = create_app(
        settings,
        store_engine=engine,
        replay_registry=flow_registry(settings, ["intake"]),
        redactor=Redactor([D365_SECRET, TOKEN]),
    )
    try:
        with serve_in_thread(app, what="the dashboard", lifespan="on") as base_url:
            yield LiveDashboard(base_url, settings, engine, seeded, intake_error)
    finally:
        engine.dispose()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
