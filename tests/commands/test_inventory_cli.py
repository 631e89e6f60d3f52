"""`sync inventory`, `reconcile inventory` and `reconcile report` through a Typer app, against
d365sim and the commercetools mock, with a TOML configuration as a user would write it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from d365ct.commands.inventory import register
from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from tests.ct_fixtures import CtMock
from tests.flows.test_inventory import InventoryEnv, make_env
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
    """The app another engineer wires into `d365ct`: here just the two groups."""
    app = typer.Typer()
    sync_app = typer.Typer(help="Sync from D365.")
    reconcile_app = typer.Typer(help="Reconcile.")
    register(sync_app, reconcile_app)
    app.add_typer(sync_app, name="sync")
    app.add_typer(reconcile_app, name="reconcile")
    return app


def run(*args: str) -> Result:
    return CliRunner().invoke(cli(), list(args))


@pytest.fixture
def env(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InventoryEnv]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("D365CT_CONFIG", raising=False)
    yield from make_env(fresh_sim, ct_mock, tmp_path, monkeypatch)


@pytest.fixture
def config(env: InventoryEnv, tmp_path: Path) -> Path:
    return write_config(env.settings, tmp_path / "d365ct.toml")


@pytest.fixture
def engine_logs(env: InventoryEnv) -> None:
    """DBOS binds its console log handler to sys.stderr on its first launch in the process. Do
    that here, not inside CliRunner, whose stderr is closed once an invocation returns."""
    launch_engine(env.settings.store.url)
    shutdown_engine()


def test_sync_dry_run_then_sync_then_nothing(env: InventoryEnv, config: Path) -> None:
    expected = env.expected()

    dry = run("sync", "inventory", "--dry-run", "--json", "--config", str(config))
    assert dry.exit_code == 2, dry.output  # done, but the unmapped warehouses' rows failed
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True and planned["created"] == len(expected)
    assert {(p["sku"], p["supply_channel"]): p["after"] for p in planned["planned"]} == expected
    assert env.inventory() == {} and env.errors() == []

    first = run("sync", "inventory", "--json", "--config", str(config))
    assert first.exit_code == 2, first.output
    summary = json.loads(first.stdout)
    assert summary["created"] == len(expected) and summary["failed"] == len(env.errors())
    assert summary["d365_calls"] >= 2 and summary["ct_calls"] >= len(expected)
    assert env.quantities() == expected

    # a table for people, with the failures grouped by reason
    second = run("sync", "inventory", "--config", str(config))
    assert second.exit_code == 2, second.output
    assert "Inventory sync: usmf, demf" in second.stdout
    counts = {
        line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1]
        for line in second.stdout.splitlines()
        if line.strip() and line.strip()[-1].isdigit() and "  " in line.strip()
    }
    assert counts["unchanged"] == str(len(expected)) and counts["create"] == "0"
    assert "warehouse '24' of legal entity 'usmf' is not mapped" in second.stdout
    assert "add a [[warehouses]] entry" in second.stdout
    assert "warehouse 'DE-03' of legal entity 'demf'" in second.stdout
    assert env.quantities() == expected


def test_sync_with_every_warehouse_mapped_exits_0(env: InventoryEnv, tmp_path: Path) -> None:
    warehouses = [w.model_dump() for w in env.settings.warehouses] + [
        {"legal_entity": "usmf", "warehouse": "24", "supply_channel": "usmf-24"},
    ]
    settings = env.settings.model_copy(
        update={"warehouses": tuple(type(env.settings.warehouses[0])(**w) for w in warehouses)}
    )
    env.create_channel("usmf-24")
    config = write_config(settings, tmp_path / "all.toml")
    result = run("sync", "inventory", "--legal-entity", "usmf", "--json", "--config", str(config))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["legal_entities"] == ["usmf"] and summary["failed"] == 0
    assert any(channel == "usmf-24" for _, channel in env.quantities())


def test_reconcile_and_read_the_report(env: InventoryEnv, config: Path, engine_logs: None) -> None:
    assert run("sync", "inventory", "--config", str(config)).exit_code == 2
    expected = env.expected()
    key = sorted(k for k in expected if k[1] == "usmf-11")[0]
    env.tamper(*key, quantity=expected[key] + 4)

    result = run(
        "reconcile", "inventory", "--legal-entity", "usmf", "--json", "--config", str(config)
    )
    assert result.exit_code == 0, result.output
    (outcome,) = json.loads(result.stdout)
    assert outcome["state"] == "completed" and outcome["counts"]["actions"]["corrected"] == 1
    report_id = outcome["report_id"]
    assert env.quantities()[key] == expected[key]

    listed = run("reconcile", "report", "--json", "--config", str(config))
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.stdout)] == [report_id]
    table = run("reconcile", "report", "--config", str(config))
    assert report_id in table.stdout

    as_csv = run("reconcile", "report", report_id, "--csv", "--config", str(config))
    assert as_csv.exit_code == 0, as_csv.output
    (line,) = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert (line["sku"], line["supply_channel"], line["action"]) == (key[0], key[1], "corrected")
    assert (int(line["ct_before"]), int(line["ct_after"])) == (expected[key] + 4, expected[key])

    as_json = run("reconcile", "report", report_id, "--json", "--config", str(config))
    data = json.loads(as_json.stdout)
    assert data["report"]["id"] == report_id and len(data["lines"]) == 1
    assert data["lines"][0]["ct_after"] == expected[key]

    shown = run("reconcile", "report", report_id, "--config", str(config))
    assert shown.exit_code == 0, shown.output
    for text in (report_id, key[0], "corrected", "Discrepancies", "unmapped"):
        assert text in shown.stdout

    again = run("reconcile", "inventory", "--config", str(config))
    assert again.exit_code == 0, again.output
    assert "Reconciliation reconcile-inventory-usmf-" in again.stdout
    assert "Reconciliation reconcile-inventory-demf-" in again.stdout


def test_clear_errors(env: InventoryEnv, config: Path, tmp_path: Path) -> None:
    missing = run("reconcile", "report", "nope", "--config", str(config))
    assert missing.exit_code == 1 and "no report 'nope'" in missing.output
    both = run("reconcile", "report", "x", "--csv", "--json", "--config", str(config))
    assert both.exit_code == 2 and "one of --csv and --json" in both.output
    absent = run("sync", "inventory", "--config", str(tmp_path / "absent.toml"))
    assert absent.exit_code == 1 and "not found" in absent.output
    unknown = run("sync", "inventory", "--legal-entity", "xxmf", "--config", str(config))
    assert unknown.exit_code == 1 and "legal entity 'xxmf' is not configured" in unknown.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[d365]\nbase_url = "x"\n', "utf-8")
    invalid = run("sync", "inventory", "--config", str(bad))
    assert invalid.exit_code == 1 and "d365.client_id" in invalid.output
