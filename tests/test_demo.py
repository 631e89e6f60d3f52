"""`d365ct demo --exit` end to end: both peers, setup, the syncs and a reconciliation; exits 0
only when the outcome matches what was seeded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_settles_as_seeded() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "d365ct.cli", "demo", "--products", "30", "--exit"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "demo: settled as seeded" in result.stdout
    assert "sync catalog again" in result.stdout and "unchanged 30" in result.stdout
    assert "reconcile inventory" in result.stdout and "completed" in result.stdout


def test_demo_clients_ask_for_exactly_the_scopes_each_concern_needs(tmp_path: Path) -> None:
    from d365ct.check import BROAD_SCOPES
    from d365ct.demo import PROJECT_KEY, demo_settings

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
