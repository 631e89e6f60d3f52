"""The d365ct service: FastAPI app (operations dashboard, JSON API, health, metrics) and the
`d365ct run` process that hosts it beside the durable engine, the intake and the scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Kept light on purpose: the D365 and commercetools HTTP layers import d365ct.service.metrics
# (record_retry), and importing the app here would pull them back in, in a cycle.
if TYPE_CHECKING:
    from d365ct.service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from d365ct.service.app import create_app

        return create_app
    raise AttributeError(f"module 'd365ct.service' has no attribute {name!r}")
