"""What the service's request handlers share: settings, stores, auth, metrics and hooks, built once
per app by ``create_app`` and reached through ``service_state(request)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import Request
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry

from d365ct.check import CheckResult
from d365ct.config import Settings
from d365ct.service.auth import Auth
from d365ct.service.health import ReadinessProbe
from d365ct.service.logging import Redactor
from d365ct.service.queries import StepView, StoreQueries
from d365ct.service.replay import Replayer, ReplayRegistry
from d365ct.store import JobStore
from d365ct.store.error_queue import ErrorQueue
from d365ct.store.reports import ReportStore

__all__ = ["CheckRunner", "ServiceState", "StepHistory", "service_state"]

# The workflow steps DBOS recorded for a workflow id; None when no engine runs in this process.
StepHistory = Callable[[str], list[StepView] | None]
CheckRunner = Callable[[Settings], Awaitable[list[CheckResult]]]


@dataclass
class ServiceState:
    settings: Settings
    engine: sa.Engine
    auth: Auth
    redactor: Redactor
    jobs: JobStore
    errors: ErrorQueue
    reports: ReportStore
    queries: StoreQueries
    replayer: Replayer
    replay_registry: ReplayRegistry
    registry: CollectorRegistry
    probe: ReadinessProbe | None
    step_history: StepHistory | None
    check_runner: CheckRunner
    templates: Jinja2Templates


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
