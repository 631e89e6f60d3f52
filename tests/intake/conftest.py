"""Intake fixtures: the store's SQLite/PostgreSQL fixtures, and a SQLite store for transports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from d365ct.intake import Inbox
from d365ct.store import make_engine, migrate
from tests.store.conftest import db_url, engine, postgres_url

__all__ = ["db_url", "engine", "postgres_url"]


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'intake.sqlite'}"
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_inbox(sqlite_engine: sa.Engine) -> Iterator[Inbox]:
    inbox = Inbox(sqlite_engine)
    yield inbox
    inbox.close()
