"""Real-shaped commercetools deliveries (after the RAML examples), for the intake tests."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

PROJECT = "acme"
CREATED_AT = "2026-03-02T10:15:30.123Z"


def _message(
    type_: str,
    resource_type: str,
    resource_id: str,
    seq: int,
    *,
    message_id: str | None = None,
    resource_version: int | None = None,
    identifiers: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "notificationType": "Message",
        "projectKey": PROJECT,
        "id": message_id or str(uuid.uuid4()),
        "version": 1,
        "sequenceNumber": seq,
        "resource": {"typeId": resource_type, "id": resource_id},
        "resourceVersion": resource_version or seq,
        "resourceUserProvidedIdentifiers": identifiers or {},
        "type": type_,
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
        **fields,
    }


def order_created(order_id: str = "order-1", *, message_id: str | None = None) -> dict[str, Any]:
    order = {
        "id": order_id,
        "version": 1,
        "orderNumber": "SO-1001",
        "customerId": "customer-1",
        "customerEmail": "jane@example.com",
        "store": {"typeId": "store", "key": "us-store"},
        "lineItems": [
            {
                "id": "li-1",
                "productId": "p-1",
                "name": {"en": "Blue shirt"},
                "variant": {"id": 1, "sku": "SHIRT-BLUE-M"},
                "price": {
                    "value": {
                        "type": "centPrecision",
                        "currencyCode": "USD",
                        "centAmount": 2999,
                        "fractionDigits": 2,
                    }
                },
                "quantity": 2,
                "totalPrice": {
                    "type": "centPrecision",
                    "currencyCode": "USD",
                    "centAmount": 5998,
                    "fractionDigits": 2,
                },
            }
        ],
        "totalPrice": {
            "type": "centPrecision",
            "currencyCode": "USD",
            "centAmount": 5998,
            "fractionDigits": 2,
        },
        "orderState": "Open",
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
    }
    return _message(
        "OrderCreated",
        "order",
        order_id,
        1,
        message_id=message_id,
        identifiers={"orderNumber": "SO-1001"},
        order=order,
    )


def order_state_changed(order_id: str = "order-1", seq: int = 2) -> dict[str, Any]:
    return _message(
        "OrderStateChanged",
        "order",
        order_id,
        seq,
        orderId=order_id,
        orderState="Confirmed",
        oldOrderState="Open",
    )


def customer_created(customer_id: str = "customer-1", **kw: Any) -> dict[str, Any]:
    customer = {
        "id": customer_id,
        "version": 1,
        "email": "jane@example.com",
        "firstName": "Jane",
        "lastName": "Doe",
        "companyName": "Doe Industries",
        "addresses": [],
        "isEmailVerified": False,
        "authenticationMode": "Password",
        "createdAt": CREATED_AT,
        "lastModifiedAt": CREATED_AT,
    }
    return _message("CustomerCreated", "customer", customer_id, 1, customer=customer, **kw)


def customer_address_added(
    customer_id: str = "customer-1", seq: int = 2, **kw: Any
) -> dict[str, Any]:
    address = {
        "id": "addr-1",
        "streetName": "Main Street",
        "streetNumber": "1",
        "postalCode": "98052",
        "city": "Redmond",
        "country": "US",
    }
    return _message("CustomerAddressAdded", "customer", customer_id, seq, address=address, **kw)


def customer_company_name_set(
    customer_id: str = "customer-1", seq: int = 3, **kw: Any
) -> dict[str, Any]:
    return _message(
        "CustomerCompanyNameSet", "customer", customer_id, seq, companyName="Doe Ltd", **kw
    )


def payload_not_included(order_id: str = "order-big") -> dict[str, Any]:
    msg = order_created(order_id)
    for key in ("type", "order"):
        del msg[key]
    msg["payloadNotIncluded"] = {"reason": "Payload too large.", "payloadType": "OrderCreated"}
    return msg


def resource_created(resource_type: str = "customer", resource_id: str = "c-9") -> dict[str, Any]:
    return {
        "notificationType": "ResourceCreated",
        "projectKey": PROJECT,
        "resource": {"typeId": resource_type, "id": resource_id},
        "resourceUserProvidedIdentifiers": {"key": "c-9-key"},
        "version": 1,
        "modifiedAt": CREATED_AT,
    }


def resource_updated(
    resource_type: str = "customer", resource_id: str = "c-9", version: int = 3
) -> dict[str, Any]:
    return {
        "notificationType": "ResourceUpdated",
        "projectKey": PROJECT,
        "resource": {"typeId": resource_type, "id": resource_id},
        "version": version,
        "oldVersion": version - 1,
        "modifiedAt": CREATED_AT,
    }


def cloud_event(message: dict[str, Any]) -> dict[str, Any]:
    """Wrap a platform payload as commercetools' CloudEvents format does."""
    resource = message["resource"]
    if message["notificationType"] == "Message":
        type_ = message.get("type") or message["payloadNotIncluded"]["payloadType"]
        ce_type = f"com.commercetools.{resource['typeId']}.message.{type_}"
        extra = {
            "sequence": str(message["sequenceNumber"]),
            "sequencetype": "Integer",
            "dataref": f"/{PROJECT}/messages/{message['id']}",
        }
        event_id = message["id"]
    else:
        ce_type = f"com.commercetools.{resource['typeId']}.change.{message['notificationType']}"
        extra = {}
        event_id = str(uuid.uuid4())
    return {
        "specversion": "1.0",
        "id": event_id,
        "type": ce_type,
        "source": f"/{PROJECT}/{resource['typeId']}s",
        "subject": resource["id"],
        "time": CREATED_AT,
        **extra,
        "data": copy.deepcopy(message),
    }


def event_grid_event(message: dict[str, Any]) -> dict[str, Any]:
    """An Event Grid schema event whose data is the platform payload."""
    return {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.EventGrid/topics/ct",
        "subject": message["resource"]["id"],
        "eventType": f"com.commercetools.{message['resource']['typeId']}.message",
        "eventTime": CREATED_AT,
        "dataVersion": "1",
        "metadataVersion": "1",
        "data": copy.deepcopy(message),
    }


def validation_event(code: str = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6") -> list[dict[str, Any]]:
    return [
        {
            "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
            "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.EventGrid/topics/ct",
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x",
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-03-02T10:00:00Z",
            "metadataVersion": "1",
            "dataVersion": "1",
        }
    ]


def dumps(value: Any) -> str:
    return json.dumps(value)
