"""`d365ct config example`, docs/configuration.md, `d365ct check` and `d365ct run`'s refusals."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from d365ct.cli import app
from d365ct.config import Settings
from d365ct.service import configdoc
from tests.flows.support import SECRET_ENV, sim_settings
from tests.sim_fixtures import RunningSim

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
COMMENTED_KEY = re.compile(r"^# ([a-z_]+ = .+)$")

runner = CliRunner()


def _example() -> str:
    result = runner.invoke(app, ["config", "example"])
    assert result.exit_code == 0, result.output
    return result.output


def test_example_parses_as_settings() -> None:
    data = tomllib.loads(_example())
    settings = Settings.model_validate(data)
    assert settings.d365.base_url == "https://contoso.operations.dynamics.com"
    assert str(settings.service.token) == "env:D365CT_API_TOKEN"
    assert set(settings.require_commercetools().clients) == {
        "catalog",
        "inventory",
        "orders",
        "customers",
    }
    assert settings.legal_entities[0].id == "usmf"


def test_every_key_is_in_the_example_and_valid_uncommented() -> None:
    text = _example()
    uncommented = "\n".join(
        COMMENTED_KEY.sub(r"\1", line) if COMMENTED_KEY.match(line) else line
        for line in text.splitlines()
    )
    data = tomllib.loads(uncommented)
    Settings.model_validate(data)  # every commented-out default is a valid value

    documented = {d.path for d in configdoc.field_docs() if d.path != "commercetools.clients"}

    def keys(node: Any, prefix: str = "") -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{prefix}{key}"
                if isinstance(value, dict) and prefix.startswith("commercetools.clients"):
                    found |= keys(value, "commercetools.clients.*.")
                elif isinstance(value, dict) and path not in documented:  # a section
                    found |= keys(value, f"{path}.")
                elif isinstance(value, list) and value and isinstance(value[0], dict):
                    found |= keys(value[0], f"{path}.")
                else:
                    found.add(path)
        return found

    assert keys(data) == documented


def test_every_key_has_help_and_no_stale_entries() -> None:
    docs = list(configdoc.field_docs())
    assert [d.path for d in docs if not d.help] == []
    paths = {d.path for d in docs}
    assert set(configdoc.EXTRA_HELP) - paths == set()
    assert set(configdoc.EXAMPLES) - paths == set()
    env = {d.path: d.env for d in docs}
    assert env["d365.poll_interval_seconds"] == "D365CT_D365__POLL_INTERVAL_SECONDS"
    assert env["service.token"] == "D365CT_SERVICE__TOKEN"
    assert env["legal_entities.id"] is None  # arrays of tables cannot come from variables


def test_environment_names_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from d365ct.config import load_settings

    config = tmp_path / "d365ct.toml"
    config.write_text(_example())
    monkeypatch.setenv("D365CT_D365__POLL_INTERVAL_SECONDS", "7.5")
    monkeypatch.setenv("D365CT_COMMERCETOOLS__CLIENTS__ORDERS__CLIENT_ID", "from-env")
    settings = load_settings(config)
    assert settings.d365.poll_interval_seconds == 7.5
    assert settings.require_commercetools().client("orders").client_id == "from-env"


def test_configuration_doc_is_current() -> None:
    expected = configdoc.markdown()
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/configuration.md is out of date: run "
        "`.venv/bin/d365ct config example --markdown > docs/configuration.md`"
    )
    result = runner.invoke(app, ["config", "example", "--markdown"])
    assert result.exit_code == 0 and result.output == expected
    for section in ("[d365]", "[[legal_entities]]", "[service]", "[intake]"):
        assert f"## `{section}`" in expected
    assert "`D365CT_D365__IMPORT_CONCURRENCY_PER_LEGAL_ENTITY`" in expected


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    for command in ("run", "check", "config"):
        assert re.search(rf"│ {command}\s", result.output), result.output
    run_help = runner.invoke(app, ["run", "--help"]).output
    assert "--insecure-no-auth" in run_help and "--config" in run_help


def _sim_config(tmp_path: Path, sim: RunningSim, **d365: Any) -> Path:
    values = {
        k: v
        for k, v in sim_settings(sim.base_url, **d365).model_dump(mode="json").items()
        if v is not None
    }
    lines = ["[d365]"] + [f"{k} = {configdoc.toml_value(v)}" for k, v in values.items()]
    lines += [
        "[store]",
        f'url = "sqlite:///{tmp_path / "d365ct.sqlite"}"',
        "[[legal_entities]]",
        'id = "usmf"',
        'currency = "USD"',
    ]
    config = tmp_path / "d365ct.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_check_json_against_the_simulator(
    fresh_sim: RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    config = _sim_config(tmp_path, fresh_sim)
    result = runner.invoke(app, ["check", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"] is True
    statuses = {r["name"]: r["status"] for r in body["results"]}
    assert statuses["D365 token"] == "ok"
    assert statuses["legal entity usmf"] == "ok"
    assert statuses["commercetools"] == "warn"
    assert fresh_sim.config.client_secret not in result.output


def test_check_table_and_exit_code_on_failure(
    fresh_sim: RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "wrong-secret")
    monkeypatch.setenv("COLUMNS", "200")
    config = _sim_config(tmp_path, fresh_sim)
    result = runner.invoke(app, ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert "D365 token" in result.output and "fail" in result.output
    assert "1 failed" in result.output or "failed" in result.output.splitlines()[-1]
    assert "wrong-secret" not in result.output


def test_check_missing_secret_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    config = tmp_path / "d365ct.toml"
    config.write_text(
        '[d365]\nbase_url = "http://127.0.0.1:9"\nclient_id = "c"\n'
        f'client_secret = "env:{SECRET_ENV}"\n'
    )
    result = runner.invoke(app, ["check", "--config", str(config), "--json"])
    assert result.exit_code == 1
    failed = [r for r in json.loads(result.output)["results"] if r["status"] == "fail"]
    assert failed[0]["name"] == "secret d365.client_secret"
    assert SECRET_ENV in failed[0]["detail"]


def test_invalid_configuration_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "d365ct.toml"
    config.write_text('[d365]\nbase_url = "http://x"\nclient_id = "c"\nmax_attempts = 0\n')
    for command in (["check"], ["run"]):
        result = runner.invoke(app, [*command, "--config", str(config)])
        assert result.exit_code == 1
        assert "d365.max_attempts" in result.output
    missing = runner.invoke(app, ["check", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code != 0


def test_run_refuses_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "d365ct.toml"
    config.write_text(
        '[d365]\nbase_url = "http://127.0.0.1:9"\nclient_id = "c"\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n'
        '[service]\nbind = "0.0.0.0:8080"\n'
    )
    result = runner.invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1 and "service.token is not set" in result.output
    insecure = runner.invoke(app, ["run", "--config", str(config), "--insecure-no-auth"])
    assert insecure.exit_code == 1 and "loopback" in insecure.output
