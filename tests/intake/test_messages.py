"""Parsing commercetools deliveries: platform, CloudEvents, Event Grid, SNS, and bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from d365ct.intake import (
    IntakeMessage,
    MalformedMessageError,
    SubscriptionValidation,
    parse_body,
    parse_event,
    parse_message,
)
from tests.intake import samples


def _one(body: Any) -> IntakeMessage:
    parsed = parse_message(json.dumps(body))
    assert isinstance(parsed, IntakeMessage)
    return parsed


def test_order_created_platform() -> None:
    raw = samples.order_created("order-7", message_id="m-1")
    msg = _one(raw)
    assert msg.message_id == "m-1"
    assert (msg.kind, msg.type, msg.resource_type, msg.resource_id) == (
        "message",
        "OrderCreated",
        "order",
        "order-7",
    )
    assert (msg.sequence_number, msg.resource_version, msg.position) == (1, 1, 1)
    assert msg.payload_included and msg.payload_not_included_reason is None
    assert msg.payload["order"]["lineItems"][0]["variant"]["sku"] == "SHIRT-BLUE-M"
    assert msg.project_key == "acme"
    assert msg.envelope == "platform"
    assert msg.raw == raw
    assert msg.resource_user_provided_identifiers == {"orderNumber": "SO-1001"}


@pytest.mark.parametrize(
    ("factory", "type_", "seq"),
    [
        (samples.customer_created, "CustomerCreated", 1),
        (samples.customer_address_added, "CustomerAddressAdded", 2),
        (samples.customer_company_name_set, "CustomerCompanyNameSet", 3),
        (samples.order_state_changed, "OrderStateChanged", 2),
    ],
)
def test_customer_and_order_messages(factory: Any, type_: str, seq: int) -> None:
    msg = _one(factory())
    assert msg.type == type_
    assert msg.sequence_number == seq == msg.position
    assert msg.kind == "message"


def test_customer_message_fields_kept_in_payload() -> None:
    assert _one(samples.customer_address_added()).payload["address"]["city"] == "Redmond"
    assert _one(samples.customer_company_name_set()).payload["companyName"] == "Doe Ltd"
    assert _one(samples.customer_created()).payload["customer"]["email"] == "jane@example.com"


def test_payload_not_included_takes_the_type_from_payload_type() -> None:
    msg = _one(samples.payload_not_included("order-big"))
    assert msg.type == "OrderCreated"
    assert not msg.payload_included
    assert msg.payload_not_included_reason == "Payload too large."
    assert msg.resource_id == "order-big"


def test_resource_created_notification_gets_a_derived_id() -> None:
    msg = _one(samples.resource_created("customer", "c-9"))
    assert msg.kind == "change"
    assert msg.type == "ResourceCreated"
    assert msg.message_id == "customer/c-9/ResourceCreated/1"
    assert msg.sequence_number is None
    assert msg.resource_version == msg.position == 1
    updated = _one(samples.resource_updated("customer", "c-9", version=3))
    assert updated.message_id == "customer/c-9/ResourceUpdated/3"
    assert updated.position == 3


def test_cloudevents_envelope() -> None:
    platform = samples.customer_address_added("customer-5", seq=4)
    event = samples.cloud_event(platform)
    assert event["type"] == "com.commercetools.customer.message.CustomerAddressAdded"
    msg = _one(event)
    assert msg.envelope == "cloudevents"
    assert msg.message_id == platform["id"]
    assert msg.type == "CustomerAddressAdded"
    assert msg.position == 4
    assert msg.payload == platform
    assert msg.raw == event


def test_cloudevents_change_and_payload_not_included() -> None:
    change = _one(samples.cloud_event(samples.resource_created("order", "o-3")))
    assert (change.kind, change.message_id) == ("change", "order/o-3/ResourceCreated/1")
    big = _one(samples.cloud_event(samples.payload_not_included()))
    assert big.type == "OrderCreated" and not big.payload_included


def test_event_grid_batch_mixed_with_a_bad_element() -> None:
    good = [samples.order_created("o-1"), samples.customer_created("c-1")]
    body = [
        samples.cloud_event(good[0]),
        samples.event_grid_event(good[1]),
        {"specversion": "1.0", "id": "x", "type": "com.commercetools.order.message.OrderCreated"},
    ]
    parsed = parse_body(json.dumps(body))
    assert [type(p).__name__ for p in parsed] == [
        "IntakeMessage",
        "IntakeMessage",
        "MalformedMessageError",
    ]
    first, second, third = parsed
    assert isinstance(first, IntakeMessage) and first.envelope == "cloudevents"
    assert isinstance(second, IntakeMessage) and second.envelope == "eventgrid"
    assert second.message_id == good[1]["id"]
    assert isinstance(third, MalformedMessageError)
    assert "must be a JSON object" in third.reason


def test_event_grid_validation_event() -> None:
    parsed = parse_body(json.dumps(samples.validation_event("code-123")))
    assert len(parsed) == 1
    assert isinstance(parsed[0], SubscriptionValidation)
    assert parsed[0].validation_code == "code-123"
    with pytest.raises(MalformedMessageError, match="validation event"):
        parse_message(json.dumps(samples.validation_event()[0]))


def test_sns_envelope_is_unwrapped() -> None:
    platform = samples.order_created("o-sns")
    envelope = {
        "Type": "Notification",
        "MessageId": "sns-1",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ct",
        "Message": json.dumps(platform),
    }
    msg = _one(envelope)
    assert msg.message_id == platform["id"]
    assert msg.raw == platform


def test_message_from_the_messages_query_api_without_notification_type() -> None:
    raw = samples.order_created("o-q")
    del raw["notificationType"]
    assert parse_event(raw).type == "OrderCreated"  # type: ignore[union-attr]


def _without(raw: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in keys}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"", "empty body"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "empty batch"),
        (b"42", "must be a JSON object"),
        (json.dumps({"hello": "world"}).encode(), "no notificationType"),
        (json.dumps(_without(samples.order_created(), "id")).encode(), "id: Field required"),
        (json.dumps(_without(samples.order_created(), "resource")).encode(), "resource"),
        (
            json.dumps({**samples.order_created(), "sequenceNumber": "1"}).encode(),
            "sequenceNumber",
        ),
        (json.dumps(_without(samples.order_created(), "type")).encode(), "neither type"),
        (
            json.dumps({**samples.order_created(), "notificationType": "Bogus"}).encode(),
            "unknown notificationType",
        ),
        (
            json.dumps(_without(samples.resource_created(), "version")).encode(),
            "version: Field required",
        ),
        (
            json.dumps(
                {**samples.cloud_event(samples.order_created()), "type": "com.example.x"}
            ).encode(),
            "not a commercetools event",
        ),
        (
            json.dumps(
                {
                    **samples.cloud_event(samples.order_created()),
                    "type": "com.commercetools.order.message.OrderStateChanged",
                }
            ).encode(),
            "does not match",
        ),
    ],
)
def test_malformed_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessageError, match=reason) as info:
        for item in parse_body(body):
            if isinstance(item, MalformedMessageError):
                raise item
    assert info.value.raw is not None


def test_malformed_message_keeps_its_id_when_it_has_one() -> None:
    raw = {**samples.order_created(message_id="m-bad"), "sequenceNumber": 0}
    with pytest.raises(MalformedMessageError) as info:
        parse_message(json.dumps(raw))
    assert info.value.message_id == "m-bad"
    assert info.value.raw == raw
