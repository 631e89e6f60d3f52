"""Event intake from commercetools Subscriptions: message parsing, the durable inbox, and the
transports that feed it (HTTP push / Event Grid, AWS SQS, Azure Service Bus).
"""

from __future__ import annotations

from d365ct.intake.http import INTAKE_PATH, intake_router, settings_token_provider
from d365ct.intake.inbox import (
    CREATION_TYPES,
    DEFAULT_HANDLED_TYPES,
    AcceptResult,
    AcceptStatus,
    Inbox,
    InboxEntry,
    InboxStats,
)
from d365ct.intake.messages import (
    IntakeMessage,
    MalformedMessageError,
    SubscriptionValidation,
    parse_body,
    parse_event,
    parse_message,
)
from d365ct.intake.servicebus import ServiceBusConsumer
from d365ct.intake.sqs import BatchResult, SqsConsumer

__all__ = [
    "CREATION_TYPES",
    "DEFAULT_HANDLED_TYPES",
    "INTAKE_PATH",
    "AcceptResult",
    "AcceptStatus",
    "BatchResult",
    "Inbox",
    "InboxEntry",
    "InboxStats",
    "IntakeMessage",
    "MalformedMessageError",
    "ServiceBusConsumer",
    "SqsConsumer",
    "SubscriptionValidation",
    "intake_router",
    "parse_body",
    "parse_event",
    "parse_message",
    "settings_token_provider",
]
