"""`d365ct check`: validates the configuration and tries every connection, token and scope.

Secrets are resolved but never shown; each result names what was checked and what to do.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

from d365ct.config import SecretRef, Settings
from d365ct.errors import D365ctError
from d365ct.runtime import Adapters, adapters

Status = Literal["ok", "warn", "fail"]
PROBE_BYTES = 4 * 1024 * 1024  # uploaded once to measure throughput to the DMF storage
BROAD_SCOPES = ("manage_project", "manage_api_clients")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str


def _secrets(settings: Settings) -> list[tuple[str, SecretRef]]:
    found: list[tuple[str, SecretRef]] = []
    if settings.d365.client_secret is not None:
        found.append(("d365.client_secret", settings.d365.client_secret))
    if settings.commercetools is not None:
        for concern, client in settings.commercetools.clients.items():
            found.append((f"commercetools.clients.{concern}.client_secret", client.client_secret))
    for key, ref in (
        ("intake.token", settings.intake.token),
        ("intake.servicebus_connection", settings.intake.servicebus_connection),
        ("service.token", settings.service.token),
    ):
        if ref is not None:
            found.append((key, ref))
    return found


def check_secrets(settings: Settings) -> list[CheckResult]:
    results = []
    for key, ref in _secrets(settings):
        try:
            ref.resolve()
            results.append(CheckResult(f"secret {key}", "ok", f"{ref} resolves"))
        except D365ctError as exc:
            results.append(CheckResult(f"secret {key}", "fail", str(exc)))
    if settings.intake.kind == "http" and settings.intake.token is None:
        results.append(
            CheckResult(
                "intake.token",
                "warn",
                "no token: the HTTP intake refuses pushes until intake.token is set",
            )
        )
    return results


async def check_d365(ctx: Adapters) -> list[CheckResult]:
    settings = ctx.settings
    try:
        await ctx.d365_http.tokens.token()
    except D365ctError as exc:
        return [CheckResult("D365 token", "fail", str(exc))]
    results = [CheckResult("D365 token", "ok", f"client {settings.d365.client_id}")]
    try:
        companies = {
            str(row["LegalEntityId"]).lower()
            async for row in ctx.odata.rows("LegalEntities", select=["LegalEntityId"])
        }
    except D365ctError as exc:
        return [*results, CheckResult("D365 OData", "fail", str(exc))]
    results.append(CheckResult("D365 OData", "ok", f"{len(companies)} legal entities readable"))
    for entity in settings.legal_entities:
        status: Status = "ok" if entity.id in companies else "fail"
        detail = "exists" if status == "ok" else "not found in D365 LegalEntities"
        results.append(CheckResult(f"legal entity {entity.id}", status, detail))
    results.append(await check_upload(ctx))
    return results


def sas_validity_seconds(url: str, now: datetime | None = None) -> float | None:
    """Seconds until the SAS in `url` expires (its `se` parameter), if it carries one."""
    expiry = parse_qs(urlparse(url).query).get("se")
    if not expiry:
        return None
    when = datetime.fromisoformat(expiry[0].replace("Z", "+00:00"))
    return (when - (now or datetime.now(UTC))).total_seconds()


async def check_upload(ctx: Adapters) -> CheckResult:
    """C5: can the largest allowed package be uploaded before its SAS URL expires?"""
    with tempfile.TemporaryDirectory(prefix="d365ct-check-") as tmp:
        probe = Path(tmp) / "probe.bin"
        probe.write_bytes(os.urandom(PROBE_BYTES))
        name = f"d365ct-check-{int(time.time())}.bin"
        try:
            started = time.monotonic()
            url = await ctx.dmf.upload_package(probe, name)
            seconds = max(time.monotonic() - started, 1e-3)
        except D365ctError as exc:
            return CheckResult("DMF storage upload", "fail", str(exc))
    rate = PROBE_BYTES / seconds
    largest = ctx.settings.d365.package_max_bytes
    needed = largest / rate
    validity = sas_validity_seconds(url)
    detail = (
        f"{rate / 1024 / 1024:.1f} MB/s; the largest package "
        f"({largest / 1024 / 1024:.0f} MB) needs {needed:.0f} s"
    )
    if validity is not None:
        detail += f"; write URLs stay valid {validity:.0f} s"
        if needed > validity:
            return CheckResult(
                "DMF storage upload",
                "warn",
                detail + ": lower d365.package_max_bytes so uploads finish in time",
            )
    return CheckResult("DMF storage upload", "ok", detail)


async def check_commercetools(ctx: Adapters) -> list[CheckResult]:
    ct = ctx.settings.commercetools
    if ct is None:
        return [CheckResult("commercetools", "warn", "[commercetools] is not configured")]
    results: list[CheckResult] = []
    for concern, credentials in sorted(ct.clients.items()):
        client = ctx.commercetools(concern)
        try:
            await client.tokens.token()
        except D365ctError as exc:
            results.append(CheckResult(f"commercetools {concern} client", "fail", str(exc)))
            continue
        granted = getattr(client.tokens, "granted_scopes", ()) or credentials.scopes
        broad = [s for s in granted if s.split(":")[0] in BROAD_SCOPES]
        if broad:
            results.append(
                CheckResult(
                    f"commercetools {concern} client",
                    "warn",
                    f"over-broad scopes {broad}: give each concern only what it needs (C2)",
                )
            )
        else:
            results.append(CheckResult(f"commercetools {concern} client", "ok", " ".join(granted)))
    if "inventory" in ct.clients and ctx.settings.warehouses:
        keys = [w.supply_channel for w in ctx.settings.warehouses]
        try:
            found = await ctx.commercetools("inventory").find_by_keys("channels", keys)
        except D365ctError as exc:
            results.append(CheckResult("supply channels", "fail", str(exc)))
        else:
            missing = sorted(set(keys) - set(found))
            status: Status = "fail" if missing else "ok"
            detail = f"missing {missing}: run d365ct setup" if missing else f"{len(keys)} found"
            results.append(CheckResult("supply channels", status, detail))
    results += await _check_setup_resources(ctx)
    return results


def _setup_resources(settings: Settings) -> list[tuple[str, str, str, str]]:
    """What `d365ct setup` creates and the flows need, as (client, resource, key, what), for
    the concerns that are configured."""
    from d365ct.mapping.customers import CUSTOMER_TYPE_KEY
    from d365ct.mapping.orders import ORDER_TYPE_KEY, PENDING_STATE

    clients = settings.commercetools.clients if settings.commercetools else {}
    wanted: list[tuple[str, str, str, str]] = []
    if "catalog" in clients:
        wanted.append(("catalog", "product-types", settings.catalog.product_type, "product type"))
    if "orders" in clients:
        wanted += [
            ("orders", "types", ORDER_TYPE_KEY, "order custom type"),
            ("orders", "states", PENDING_STATE, "order state"),
            ("orders", "states", settings.orders.posted_state, "order state"),
        ]
    if "customers" in clients:
        wanted.append(("customers", "types", CUSTOMER_TYPE_KEY, "customer custom type"))
    return wanted


async def _check_setup_resources(ctx: Adapters) -> list[CheckResult]:
    results: list[CheckResult] = []
    for concern, resource, key, what in _setup_resources(ctx.settings):
        name = f"{what} {key}"
        try:
            found = await ctx.commercetools(concern).get_by_key(resource, key)
        except D365ctError as exc:
            results.append(CheckResult(name, "fail", str(exc)))
            continue
        if found is None:
            results.append(CheckResult(name, "fail", "missing: run d365ct setup"))
        else:
            results.append(CheckResult(name, "ok", "exists"))
    return results


async def run_checks(settings: Settings) -> list[CheckResult]:
    results = check_secrets(settings)
    if any(r.status == "fail" for r in results):
        return results
    async with adapters(settings) as ctx:
        results += await check_d365(ctx)
        results += await check_commercetools(ctx)
    return results
