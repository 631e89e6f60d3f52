"""Replays of orders and customers use the flows already wired to the same settings (a running
service's, with their open clients) instead of re-pointing them."""

from __future__ import annotations

from pathlib import Path

from d365ct.flows.orders import commerce_flows, wired_flows
from tests.flows.support import full_settings


def test_replays_reuse_the_wired_flows_and_re_point_only_for_other_settings(
    tmp_path: Path,
) -> None:
    settings = full_settings("http://127.0.0.1:1", "http://127.0.0.1:2", "p", str(tmp_path))
    flows = commerce_flows(settings)
    sentinel = object()
    flows.jobs._clients["open"] = sentinel  # type: ignore[index]

    assert wired_flows(settings.model_copy()) is flows
    assert flows.jobs._clients.get("open") is sentinel  # type: ignore[call-overload]

    other = full_settings("http://127.0.0.1:3", "http://127.0.0.1:2", "p", str(tmp_path))
    assert wired_flows(other).settings is other
    assert "open" not in flows.jobs._clients
