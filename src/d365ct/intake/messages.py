"""commercetools Subscription deliveries parsed into one IntakeMessage, whatever the envelope:
platform format, CloudEvents, an Azure Event Grid batch, or SNS-wrapped (see `parse_event`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from d365ct.errors import PermanentError

__all__ = [
    "CHANGE_TYPES",
    "EVENT_GRID_VALIDATION",
    "IntakeMessage",
    "MalformedMessageError",
    "Parsed",
    "SubscriptionValidation",
    "parse_body",
    "parse_event",
    "parse_message",
]

CHANGE_TYPES: Final = frozenset({"ResourceCreated", "ResourceUpdated", "ResourceDeleted"})
EVENT_GRID_VALIDATION: Final = "Microsoft.EventGrid.SubscriptionValidationEvent"
_CE_PREFIX: Final = "com.commercetools."

Envelope: TypeAlias = Literal["platform", "cloudevents", "eventgrid"]
Kind: TypeAlias = Literal["message", "change"]


class MalformedMessageError(PermanentError):
    """A delivery that is not a commercetools message: bad JSON, a missing or wrong field."""

    def __init__(self, reason: str, raw: Any = None, *, message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.message_id = message_id


@dataclass(frozen=True)
class SubscriptionValidation:
    """Event Grid's subscription validation handshake: answer with the code to prove ownership."""

    validation_code: str
    validation_url: str | None = None


class IntakeMessage(BaseModel):
    """One commercetools delivery, normalised whatever its envelope."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    kind: Kind  # "message" (MessageSubscription) or "change" (ChangeSubscription)
    type: str  # OrderCreated, CustomerCreated, … or ResourceCreated / …Updated / …Deleted
    resource_type: str  # the Reference typeId: order, customer, …
    resource_id: str
    resource_version: int | None
    sequence_number: int | None  # messages only
    project_key: str | None = None
    payload: dict[str, Any]  # the platform payload (CloudEvents/Event Grid ``data``)
    payload_included: bool = True
    payload_not_included_reason: str | None = None
    envelope: Envelope = "platform"
    raw: dict[str, Any]  # the event as delivered: what `parse_event` turns into this message

    @property
    def position(self) -> int:
        """Where this delivery stands in its resource's stream (sequenceNumber or version)."""
        value = self.sequence_number if self.kind == "message" else self.resource_version
        assert value is not None  # the parser guarantees it
        return value

    @property
    def resource_user_provided_identifiers(self) -> dict[str, Any]:
        ids = self.payload.get("resourceUserProvidedIdentifiers")
        return dict(ids) if isinstance(ids, Mapping) else {}


# -- wire models (validation only; IntakeMessage is what callers see) ---------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Reference(_Wire):
    type_id: str = Field(alias="typeId", min_length=1)
    id: str = Field(min_length=1)


class _PayloadNotIncluded(_Wire):
    reason: str
    payload_type: str = Field(alias="payloadType", min_length=1)


class _MessagePayload(_Wire):
    notification_type: Literal["Message"] = Field("Message", alias="notificationType")
    project_key: str | None = Field(None, alias="projectKey")
    id: str = Field(min_length=1)
    resource: _Reference
    sequence_number: int = Field(alias="sequenceNumber", ge=1, strict=True)
    resource_version: int = Field(alias="resourceVersion", ge=1, strict=True)
    type: str | None = Field(None, min_length=1)
    payload_not_included: _PayloadNotIncluded | None = Field(None, alias="payloadNotIncluded")


class _ChangePayload(_Wire):
    notification_type: Literal["ResourceCreated", "ResourceUpdated", "ResourceDeleted"] = Field(
        alias="notificationType"
    )
    project_key: str | None = Field(None, alias="projectKey")
    resource: _Reference
    version: int = Field(ge=1, strict=True)


class _CloudEvent(_Wire):
    specversion: str
    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    data: Any = None


class _EventGridEvent(_Wire):
    id: str | None = None
    event_type: str = Field(alias="eventType", min_length=1)
    data: Any = None


# -- parsing --------------------------------------------------------------------------------------

Parsed: TypeAlias = IntakeMessage | MalformedMessageError | SubscriptionValidation


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _decode(body: bytes | str) -> Any:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessageError(f"body is not UTF-8 text: {exc}", body) from exc
    if not body.strip():
        raise MalformedMessageError("empty body", body)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedMessageError(f"body is not JSON: {exc}", body) from exc


def _unwrap_sns(value: Any) -> Any:
    """SNS → SQS without raw delivery wraps the message as JSON text in an SNS envelope."""
    if (
        isinstance(value, dict)
        and value.get("Type") == "Notification"
        and isinstance(value.get("Message"), str)
        and "TopicArn" in value
    ):
        return _decode(value["Message"])
    return value


def _from_payload(
    data: Any, *, envelope: Envelope, raw: dict[str, Any], event_type: str | None = None
) -> IntakeMessage:
    if not isinstance(data, dict):
        raise MalformedMessageError(
            f"the commercetools payload must be a JSON object, got {type(data).__name__}", raw
        )
    notification = data.get("notificationType")
    if notification is None and "sequenceNumber" in data:
        notification = "Message"  # a message as the Messages Query API returns it
    if notification == "Message":
        try:
            msg = _MessagePayload.model_validate(data)
        except ValidationError as exc:
            raise MalformedMessageError(
                f"invalid commercetools message: {_errors(exc)}",
                raw,
                message_id=data.get("id") if isinstance(data.get("id"), str) else None,
            ) from exc
        if msg.type is None and msg.payload_not_included is None:
            raise MalformedMessageError(
                "invalid commercetools message: neither type nor payloadNotIncluded",
                raw,
                message_id=msg.id,
            )
        message_type = msg.type or (
            msg.payload_not_included.payload_type if msg.payload_not_included else ""
        )
        if event_type is not None and not event_type.endswith(f".{message_type}"):
            raise MalformedMessageError(
                f"CloudEvent type {event_type!r} does not match message type {message_type!r}",
                raw,
                message_id=msg.id,
            )
        return IntakeMessage(
            message_id=msg.id,
            kind="message",
            type=message_type,
            resource_type=msg.resource.type_id,
            resource_id=msg.resource.id,
            resource_version=msg.resource_version,
            sequence_number=msg.sequence_number,
            project_key=msg.project_key,
            payload=data,
            payload_included=msg.payload_not_included is None,
            payload_not_included_reason=(
                msg.payload_not_included.reason if msg.payload_not_included else None
            ),
            envelope=envelope,
            raw=raw,
        )
    if notification in CHANGE_TYPES:
        try:
            change = _ChangePayload.model_validate(data)
        except ValidationError as exc:
            raise MalformedMessageError(
                f"invalid commercetools change notification: {_errors(exc)}", raw
            ) from exc
        ref = change.resource
        return IntakeMessage(
            message_id=f"{ref.type_id}/{ref.id}/{change.notification_type}/{change.version}",
            kind="change",
            type=change.notification_type,
            resource_type=ref.type_id,
            resource_id=ref.id,
            resource_version=change.version,
            sequence_number=None,
            project_key=change.project_key,
            payload=data,
            envelope=envelope,
            raw=raw,
        )
    if notification is None:
        raise MalformedMessageError(
            "not a commercetools delivery: no notificationType (and no sequenceNumber)", raw
        )
    raise MalformedMessageError(f"unknown notificationType {notification!r}", raw)


def parse_event(event: Any) -> IntakeMessage | SubscriptionValidation:
    """Parse one decoded event: a platform payload, a CloudEvent or an Event Grid event.

    Raises MalformedMessageError with a reason a person can act on.

    Formats (commercetools RAML, ``api/types/subscription``):

    * **Platform** (default): a ``MessageDeliveryPayload`` — ``notificationType: "Message"``,
      ``projectKey``, ``resource {typeId, id}``, ``id``, ``version`` (always 1), ``sequenceNumber``,
      ``resourceVersion``, ``type`` and the message's own fields; or, when the message is too large
      for the destination, ``payloadNotIncluded {reason, payloadType}`` instead of ``type`` and the
      fields. Change subscriptions send ``ResourceCreated`` / ``ResourceUpdated`` /
      ``ResourceDeleted`` payloads with ``version`` (and ``oldVersion``, ``modifiedAt``) but no id.
    * **CloudEvents** 1.0: ``specversion``, ``id``, ``type``
      (``com.commercetools.order.message.OrderCreated``, ``com.commercetools.order.change.
      ResourceCreated``), ``source``, ``subject``, ``time``, ``sequence``, ``dataref`` and ``data``
      = the platform payload above. Event Grid destinations only speak CloudEvents.
    * **Event Grid** push: a JSON array of events, CloudEvents or Event Grid schema (``eventType``,
      ``data``); the handshake event ``Microsoft.EventGrid.SubscriptionValidationEvent`` carries
      ``data.validationCode``.
    * An **SNS** envelope (``Type: "Notification"``, ``Message`` = JSON text) is unwrapped, for SQS
      queues fed through an SNS topic without raw message delivery.

    Identity: a message's id is the platform ``id``. Change notifications have none, so theirs is
    derived from what they describe — ``{typeId}/{id}/{notificationType}/{version}`` — which makes
    a redelivered change deduplicate like a message. The *position* of a delivery in its resource's
    stream is the ``sequenceNumber`` for messages and the resource ``version`` for changes.
    """
    event = _unwrap_sns(event)
    if not isinstance(event, dict):
        raise MalformedMessageError(
            f"a delivery must be a JSON object, got {type(event).__name__}", event
        )
    if "specversion" in event:
        try:
            ce = _CloudEvent.model_validate(event)
        except ValidationError as exc:
            raise MalformedMessageError(f"invalid CloudEvent: {_errors(exc)}", event) from exc
        if not ce.type.startswith(_CE_PREFIX):
            raise MalformedMessageError(
                f"CloudEvent type {ce.type!r} is not a commercetools event", event
            )
        return _from_payload(ce.data, envelope="cloudevents", raw=event, event_type=ce.type)
    if "eventType" in event:
        try:
            eg = _EventGridEvent.model_validate(event)
        except ValidationError as exc:
            raise MalformedMessageError(f"invalid Event Grid event: {_errors(exc)}", event) from exc
        if eg.event_type == EVENT_GRID_VALIDATION:
            data = eg.data if isinstance(eg.data, dict) else {}
            code = data.get("validationCode")
            if not isinstance(code, str) or not code:
                raise MalformedMessageError("validation event without data.validationCode", event)
            url = data.get("validationUrl")
            return SubscriptionValidation(code, url if isinstance(url, str) else None)
        return _from_payload(eg.data, envelope="eventgrid", raw=event)
    return _from_payload(event, envelope="platform", raw=event)


def parse_message(body: bytes | str | Mapping[str, Any]) -> IntakeMessage:
    """Parse one queue message body (SQS, Service Bus): exactly one commercetools delivery."""
    value = _decode(body) if isinstance(body, bytes | str) else dict(body)
    parsed = parse_event(value)
    if isinstance(parsed, SubscriptionValidation):
        raise MalformedMessageError("an Event Grid validation event is not a queue message", value)
    return parsed


def parse_body(body: bytes | str) -> list[Parsed]:
    """Parse an HTTP push body: one delivery, or a JSON array of them (an Event Grid batch).

    Bad JSON raises MalformedMessageError; a bad element of a batch comes back in its place as a
    MalformedMessageError, so the good ones can still be accepted.
    """
    value = _decode(body)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MalformedMessageError("empty batch", value)
    out: list[Parsed] = []
    for item in items:
        try:
            out.append(parse_event(item))
        except MalformedMessageError as exc:
            out.append(exc)
    return out
