"""`d365ct demo --exit` end to end: both peers, setup, the syncs and a reconciliation, then the
service (`d365ct run` on SQLite) fed by the storefront over the webhook intake; it exits 0 only
when the outcome matches what was seeded."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from d365ct.config import Settings
from d365ct.demo import demo_settings, service_sections, settings_toml
from d365ct.storefront import UNKNOWN_SKU, UNMAPPED_STORE


@pytest.mark.slow
def test_demo_settles_as_seeded() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "d365ct.cli",
            "demo",
            "--products",
            "30",
            "--customers",
            "3",
            "--orders",
            "6",
            "--job-seconds",
            "0.5",
            "--exit",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert "demo: settled as seeded" in out
    assert "sync catalog again" in out and "unchanged 30" in out
    assert "reconcile inventory" in out and "completed" in out
    # The service ran with its dashboard, and the storefront's work settled as seeded.
    token = re.search(r"dashboard +http://127\.0\.0\.1:\d+/ +sign in with token (\S+)", out)
    assert token is not None, out
    assert "3 customers, 6 orders (2 bad on purpose); 9 messages pushed" in out
    assert re.search(r"customers \(U4\) .* records 3, synced 3, failures 0", out), out
    assert re.search(r"orders \(U3\) .* records 6, posted 4, failures 2 \(as seeded\)", out), out
    assert "DEMO-0005 in the error queue: " in out and UNKNOWN_SKU in out
    assert (
        f"DEMO-0006 in the error queue: order DEMO-0006: no legal entity for store {UNMAPPED_STORE}"
        in out
    )
    # The service's token reached only the console line meant for the person at the keyboard.
    assert token.group(1) not in result.stderr
    print(f"demo --exit took {took:.1f} s")


def test_demo_service_configuration_round_trips(tmp_path: object) -> None:
    settings = demo_settings(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        Path(str(tmp_path)),
        **service_sections(8123, schedules=False),
    )
    again = Settings.model_validate(tomllib.loads(settings_toml(settings)))
    assert again == settings
    assert again.inventory.schedule == "" and again.service.bind == "127.0.0.1:8123"


def test_demo_clients_ask_for_exactly_the_scopes_each_concern_needs(tmp_path: Path) -> None:
    from d365ct.check import BROAD_SCOPES
    from d365ct.demo import PROJECT_KEY

    settings = demo_settings("http://127.0.0.1:1", "http://127.0.0.1:2", tmp_path)
    ct = settings.require_commercetools()
    scopes = {concern: list(client.scopes) for concern, client in ct.clients.items()}
    # Standalone prices scoped to a customer group need the group looked up (and created by
    # setup or the price sync when missing): manage_customer_groups, not manage_project.
    assert scopes == {
        "catalog": [
            f"manage_products:{PROJECT_KEY}",
            f"manage_standalone_prices:{PROJECT_KEY}",
            f"manage_customer_groups:{PROJECT_KEY}",
        ],
        "inventory": [f"manage_products:{PROJECT_KEY}"],
        "orders": [f"manage_orders:{PROJECT_KEY}"],
        "customers": [f"manage_customers:{PROJECT_KEY}"],
    }
    assert not {s.split(":")[0] for c in scopes.values() for s in c} & set(BROAD_SCOPES)


def test_a_token_the_user_chose_is_named_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    from d365ct.demo import SERVICE_TOKEN_ENV, shown_token

    monkeypatch.setenv(SERVICE_TOKEN_ENV, "users-own-secret")
    assert shown_token(chosen=True) == f"${SERVICE_TOKEN_ENV}"
    assert shown_token(chosen=False) == "users-own-secret"  # made up by the demo itself
