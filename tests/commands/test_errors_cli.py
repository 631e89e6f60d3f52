"""`d365ct errors list|show|replay|resolve` and `d365ct orders process` through Typer, on a real
store; replay re-drives a failed order against d365sim and the commercetools mock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from d365ct.commands.errors import errors_app
from d365ct.commands.orders import orders_app
from d365ct.config import Settings
from d365ct.flows.orders import close_clients
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import ErrorQueue
from tests.ct_fixtures import CtMock
from tests.flows.test_orders import (
    CommerceEnv,
    add_product,
    ct_get,
    import_order,
    make_commerce_env,
    order_created,
    seed_commercetools,
)
from tests.sim_fixtures import RunningSim


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict), value
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude_none=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in data.items()), "utf-8")
    return path


def cli() -> typer.Typer:
    """The sub-apps as `d365ct` wires them."""
    app = typer.Typer()
    app.add_typer(errors_app, name="errors")
    app.add_typer(orders_app, name="orders")
    return app


def run(*args: str) -> Result:
    return CliRunner().invoke(cli(), list(args))


# -- list / show / resolve: only the store is needed --------------------------------------------


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ErrorQueue]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("D365CT_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    monkeypatch.setenv("D365CT_STORE__URL", url)
    migrate(url)
    engine = make_engine(url)
    yield ErrorQueue(engine)
    engine.dispose()


def add_entries(queue: ErrorQueue) -> list[int]:
    first = queue.add(
        flow="orders",
        business_key="WEB-1",
        step="import",
        error="The value 'ZZ9' in field 'Item number' is not found in the related table "
        "'Released products'. [dbo].[INVENTTABLE]",
        payload={"order_id": "o-1", "order_number": "WEB-1"},
        correlation={"message_id": "m-1", "workflow_id": "orders-usmf-1", "execution_id": "e-1"},
    )
    second = queue.add(flow="customers", business_key="c-1", step="map", error="bad VAT")
    third = queue.add(flow="inventory", business_key="D0001@usmf-11", step="write", error="x")
    return [first.id, second.id, third.id]


def test_list_show_and_resolve(queue: ErrorQueue) -> None:
    first, second, third = add_entries(queue)

    listed = run("errors", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [e["id"] for e in json.loads(listed.stdout)] == [third, second, first]
    orders = json.loads(run("errors", "list", "--flow", "orders", "--json").stdout)
    assert [e["business_key"] for e in orders] == ["WEB-1"]
    table = run("errors", "list")
    assert (
        table.exit_code == 0 and "WEB-1" in table.stdout and "[dbo].[INVENTTABLE]" in table.stdout
    )

    shown = run("errors", "show", str(first), "--json")
    assert shown.exit_code == 0
    data = json.loads(shown.stdout)
    assert data["correlation"]["execution_id"] == "e-1" and data["payload"]["order_id"] == "o-1"
    text = run("errors", "show", str(first))
    assert "→ workflow_id" in text.stdout and "orders-usmf-1" in text.stdout
    assert run("errors", "show", "999").exit_code == 1

    resolved = run("errors", "resolve", str(second), "--note", "VAT fixed in D365 by hand")
    assert resolved.exit_code == 0, resolved.output
    entry = queue.get(second)
    assert entry is not None and entry.status == "resolved"
    assert entry.note == "VAT fixed in D365 by hand"
    again = run("errors", "resolve", str(second), "--note", "twice")
    assert again.exit_code == 2 and "already resolved" in again.stdout
    assert json.loads(run("errors", "list", "--status", "resolved", "--json").stdout)[0]["id"] == (
        second
    )
    assert run("errors", "list", "--status", "bogus").exit_code == 1
    everything = json.loads(run("errors", "list", "--status", "all", "--json").stdout)
    assert len(everything) == 3


def test_replay_needs_ids_or_all_open(queue: ErrorQueue) -> None:
    assert run("errors", "replay").exit_code == 1
    assert run("errors", "replay", "1", "--all-open").exit_code == 1


# -- replay and process against the real peers ---------------------------------------------------


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CommerceEnv]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("D365CT_CONFIG", raising=False)
    yield from make_commerce_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


def test_process_then_replay_a_failed_order(env: CommerceEnv, tmp_path: Path) -> None:
    config = write_config(env.settings, tmp_path / "d365ct.toml")

    async def prepare() -> list[dict[str, Any]]:
        await seed_commercetools(env)
        async with env.ct() as ct:
            await add_product(ct, "ZZ404", {"ItemNumber": "ZZ404"})  # unknown to D365
        good = await import_order(env, [("D0001", 1, 1000)], order_number="CLI-1")
        bad = await import_order(env, [("ZZ404", 1, 1000)], order_number="CLI-2")
        return [good, bad]

    good, bad = asyncio.run(prepare())
    for order in (good, bad):
        env.deliver(order_created(env, order))

    processed = run("orders", "process", "--json", "--config", str(config))
    assert processed.exit_code == 2, processed.output  # done, but one order was refused
    summary = json.loads(processed.stdout)
    assert summary["orders_posted"] == 1 and summary["orders_failed"] == 1
    assert summary["d365_imports"] == 1
    (entry,) = env.errors.list(flow="orders")
    assert entry.business_key == "CLI-2"

    env.errors.add(flow="inventory", business_key="D1@c", step="write", error="x")
    unsupported = run(
        "errors", "replay", "--all-open", "--flow", "inventory", "--json", "--config", str(config)
    )
    assert unsupported.exit_code == 2
    assert json.loads(unsupported.stdout)[0]["status"] == "unsupported"

    env.sim_post(
        "ReleasedProductsV2",
        {
            "dataAreaId": "usmf",
            "ItemNumber": "ZZ404",
            "ProductNumber": "ZZ404",
            "ProductName": "Found",
            "ProductSubType": "Product",
        },
    )
    replayed = run("errors", "replay", str(entry.id), "--json", "--config", str(config))
    assert replayed.exit_code == 0, replayed.output
    (outcome,) = json.loads(replayed.stdout)
    assert outcome["status"] == "replayed" and "CLI-2 posted" in outcome["detail"]
    closed = env.errors.get(entry.id)
    assert closed is not None and closed.status == "replayed"
    headers, lines = env.order_in_d365("CLI-2")
    assert len(headers) == 1 and [li["ItemNumber"] for li in lines] == ["ZZ404", "SHIPPING"]

    async def status() -> str:
        try:
            return str(
                (await ct_get(env, "orders", bad["id"]))["custom"]["fields"]["d365SyncStatus"]
            )
        finally:
            await close_clients()

    assert asyncio.run(status()) == "posted"
    nothing = run("errors", "replay", "--all-open", "--flow", "orders", "--config", str(config))
    assert nothing.exit_code == 0 and "No open entries" in nothing.stdout
