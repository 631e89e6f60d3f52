"""`d365ct sync catalog|prices` and `d365ct setup` through Typer, against d365sim and the mock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from d365ct.commands.catalog import EXIT_FAILED, EXIT_RECORDS_FAILED, register, setup_command
from tests.ct_fixtures import CtMock
from tests.flows.support import SECRET_ENV, full_settings
from tests.sim_fixtures import RunningSim


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for everything this config holds
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(
            f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{" + inner + "}"
    raise TypeError(type(value))


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items() if v is not None]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def cli() -> typer.Typer:
    """The main CLI's shape: `sync` with our commands, and `setup`."""
    app = typer.Typer(no_args_is_help=True)
    sync_app = typer.Typer(no_args_is_help=True, help="Sync from D365 to commercetools.")
    register(sync_app)
    app.add_typer(sync_app, name="sync")
    app.command("setup")(setup_command)
    return app


@pytest.fixture
def config(
    fresh_sim: RunningSim, ct_mock: CtMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    for name in ("D365CT_CONFIG", "D365CT_STORE__URL"):
        monkeypatch.delenv(name, raising=False)
    settings = full_settings(fresh_sim.base_url, ct_mock.url, ct_mock.project_key, str(tmp_path))
    path = tmp_path / "d365ct.toml"
    path.write_text(to_toml(settings.model_dump(mode="json")), encoding="utf-8")
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli(), list(args))


def run_json(*args: str, code: int = 0) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == code, result.output
    return dict(json.loads(result.stdout))


def test_help_names_every_option() -> None:
    for command in ("catalog", "prices"):
        result = run("sync", command, "--help")
        assert result.exit_code == 0
        for option in ("--full", "--dry-run", "--legal-entity", "--config", "--json"):
            assert option in result.output, (command, option)
    assert "--json" in run("setup", "--help").output


def test_setup_then_catalog_then_prices(config: Path) -> None:
    first = run_json("setup", "--config", str(config))
    # product type, 5 channels, 4 customer groups; 2 custom Types and 2 order States
    assert first["ok"] and first["created"] == 14
    again = run_json("setup")  # ./d365ct.toml is the default
    assert again["created"] == 0 and again["exists"] == 14

    catalog = run_json("sync", "catalog", "--config", str(config))
    assert catalog["created"] == 60 and catalog["failed"] == 0
    assert catalog["calls"]["commercetools"]["POST"] == 60
    resync = run_json("sync", "catalog", "--config", str(config))
    assert resync["unchanged"] == 60 and resync["calls"]["commercetools_total"] == 0

    table = run("sync", "catalog", "--full", "--dry-run", "--config", str(config))
    assert table.exit_code == 0, table.output
    assert "dry run" in table.output and "unchanged" in table.output

    prices = run_json("sync", "prices", "--legal-entity", "demf", "--config", str(config))
    assert prices["legal_entities"] == ["demf"] and prices["created"] > 0
    assert prices["calls"]["commercetools_writes"] == prices["created"]
    everything = run_json("sync", "prices", "--config", str(config))
    assert everything["unchanged"] == prices["created"] and everything["created"] > 0


def test_failures_and_exit_codes(config: Path, fresh_sim: RunningSim) -> None:
    result = run("sync", "catalog", "--config", str(config))  # no product type yet
    assert result.exit_code == EXIT_FAILED and "d365ct setup" in result.output

    result = run("sync", "prices", "--legal-entity", "xx99", "--config", str(config))
    assert result.exit_code == EXIT_FAILED and "xx99" in result.output

    result = run("sync", "prices", "--config", str(config.parent / "missing.toml"))
    assert result.exit_code == EXIT_FAILED and "not found" in result.output

    with fresh_sim.client() as client:
        row = client.get(
            "/data/SalesPriceAgreements",
            params={"cross-company": "true", "$filter": "dataAreaId eq 'usmf'", "$top": "1"},
        ).json()["value"][0]
        patched = client.patch(
            f"/data/SalesPriceAgreements(dataAreaId='usmf',RecordId={row['RecordId']})",
            params={"cross-company": "true"},
            json={"PriceCurrencyCode": "U$D"},
        )
        assert patched.status_code == 204, patched.text
    summary = run_json(
        "sync",
        "prices",
        "--legal-entity",
        "usmf",
        "--config",
        str(config),
        code=EXIT_RECORDS_FAILED,
    )
    assert summary["failed"] == 1 and summary["created"] > 0
    table = run("sync", "prices", "--legal-entity", "usmf", "--config", str(config))
    assert table.exit_code == EXIT_RECORDS_FAILED
    assert "d365ct errors list --flow prices" in table.output
