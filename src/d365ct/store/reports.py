"""Reconciliation reports: one row per run with its counts, one line per discrepancy found.

Lines are written in batches as a run finds them and read back as a stream, as CSV or JSON.
"""

from __future__ import annotations

import builtins
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import IO, Any, Final, Self

import sqlalchemy as sa

from d365ct.store.jobs import READ_ONLY_OPTION
from d365ct.store.tables import reconciliation_lines, reconciliation_reports

__all__ = ["CSV_COLUMNS", "LineWriter", "Report", "ReportLine", "ReportStore"]

BATCH_SIZE: Final = 500  # lines per INSERT: memory stays flat however many lines a run finds
CSV_COLUMNS: Final = (
    "sku",
    "warehouse",
    "supply_channel",
    "d365_quantity",
    "ct_before",
    "ct_after",
    "action",
    "detail",
)


@dataclass(frozen=True)
class Report:
    id: str
    flow: str
    legal_entity: str
    started_at: datetime
    finished_at: datetime | None
    counts: dict[str, Any]  # {} until the run finishes

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "legal_entity": self.legal_entity,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "counts": self.counts,
        }


@dataclass(frozen=True)
class ReportLine:
    """One discrepancy: what D365 says, what commercetools held before and after the run."""

    sku: str
    action: str  # corrected | created | zeroed | failed | …
    warehouse: str | None = None
    supply_channel: str | None = None
    d365_quantity: Decimal | int | None = None
    ct_before: int | None = None
    ct_after: int | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "warehouse": self.warehouse,
            "supply_channel": self.supply_channel,
            "d365_quantity": _number(self.d365_quantity),
            "ct_before": self.ct_before,
            "ct_after": self.ct_after,
            "action": self.action,
            "detail": self.detail,
        }


def _number(value: Decimal | int | None) -> int | str | None:
    """Whole numbers as int; others as exact text (JSON floats would round them)."""
    if value is None or isinstance(value, int):
        return value
    return int(value) if value == value.to_integral_value() else format(value.normalize(), "f")


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    # SQLite keeps NUMERIC as a float or an int: go through text so 12.5 stays 12.5.
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _report(row: sa.Row[Any]) -> Report:
    m = row._mapping
    return Report(
        id=m["id"],
        flow=m["flow"],
        legal_entity=m["legal_entity"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        counts=dict(m["counts"] or {}),
    )


def _line(row: sa.Row[Any]) -> ReportLine:
    m = row._mapping
    d365 = _decimal(m["d365_quantity"])
    return ReportLine(
        sku=m["sku"],
        action=m["action"],
        warehouse=m["warehouse"],
        supply_channel=m["supply_channel"],
        d365_quantity=d365,
        ct_before=_int(m["ct_before"]),
        ct_after=_int(m["ct_after"]),
        detail=m["detail"],
    )


class _Quantity(sa.TypeDecorator[Decimal]):
    """NUMERIC as exact Decimal on every backend.

    PostgreSQL has a decimal type. SQLite has none: SQLAlchemy's Numeric warns there and goes
    through float, so values are bound as text (the column's NUMERIC affinity stores a number)
    and read back through their text form, which keeps D365's quantities as written.
    """

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        return _decimal(value)


class LineWriter:
    """Buffers lines of one report and inserts them `batch_size` at a time."""

    def __init__(self, store: ReportStore, report_id: str, batch_size: int = BATCH_SIZE) -> None:
        self._store = store
        self._report_id = report_id
        self._batch_size = batch_size
        self._pending: list[ReportLine] = []
        self.written = 0

    def add(self, line: ReportLine) -> None:
        self._pending.append(line)
        if len(self._pending) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._store._insert_lines(self._report_id, self._pending)
            self.written += len(self._pending)
            self._pending = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()  # lines found before a failure are still worth reading


class ReportStore:
    """Reports over `reconciliation_reports` and `reconciliation_lines` (SQLite or PostgreSQL)."""

    def __init__(
        self, engine: sa.Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._now = clock

    def _read(self) -> sa.Connection:
        return self._engine.connect().execution_options(**{READ_ONLY_OPTION: True})

    # -- writes ----------------------------------------------------------------------------

    def create(
        self,
        report_id: str,
        *,
        flow: str,
        legal_entity: str,
        started_at: datetime | None = None,
    ) -> Report:
        started = started_at or self._now()
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(reconciliation_reports).values(
                    id=report_id,
                    flow=flow,
                    legal_entity=legal_entity,
                    started_at=started,
                    finished_at=None,
                    counts=None,
                )
            )
        return Report(report_id, flow, legal_entity, started, None, {})

    def writer(self, report_id: str, batch_size: int = BATCH_SIZE) -> LineWriter:
        """A buffered writer for a run that finds lines one by one; use it as a context."""
        return LineWriter(self, report_id, batch_size)

    def add_lines(
        self, report_id: str, lines: Iterable[ReportLine], batch_size: int = BATCH_SIZE
    ) -> int:
        """Insert lines from any iterable, `batch_size` per statement; returns how many."""
        with self.writer(report_id, batch_size) as writer:
            for line in lines:
                writer.add(line)
        return writer.written

    def _insert_lines(self, report_id: str, lines: builtins.list[ReportLine]) -> None:
        rows = [
            {
                "report_id": report_id,
                "sku": line.sku,
                "warehouse": line.warehouse,
                "supply_channel": line.supply_channel,
                "d365_quantity": line.d365_quantity,
                "ct_before": line.ct_before,
                "ct_after": line.ct_after,
                "action": line.action,
                "detail": line.detail,
            }
            for line in lines
        ]
        with self._engine.begin() as conn:
            conn.execute(sa.insert(_LINES), rows)

    def finish(
        self, report_id: str, counts: Mapping[str, Any], finished_at: datetime | None = None
    ) -> Report:
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(reconciliation_reports)
                .where(reconciliation_reports.c.id == report_id)
                .values(counts=dict(counts), finished_at=finished_at or self._now())
            )
            row = conn.execute(
                sa.select(reconciliation_reports).where(reconciliation_reports.c.id == report_id)
            ).first()
        if row is None:
            raise LookupError(f"no reconciliation report {report_id!r}")
        return _report(row)

    # -- reads -----------------------------------------------------------------------------

    def get(self, report_id: str) -> Report | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(reconciliation_reports).where(reconciliation_reports.c.id == report_id)
            ).first()
        return None if row is None else _report(row)

    # Named like the builtin on purpose, as JobStore.list; annotations use builtins.list.
    def list(
        self, *, flow: str | None = None, legal_entity: str | None = None, limit: int = 20
    ) -> builtins.list[Report]:
        """Reports, newest first."""
        t = reconciliation_reports
        query = sa.select(t).order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
        if flow is not None:
            query = query.where(t.c.flow == flow)
        if legal_entity is not None:
            query = query.where(t.c.legal_entity == legal_entity.lower())
        with self._read() as conn:
            return [_report(row) for row in conn.execute(query)]

    def lines(self, report_id: str, *, action: str | None = None) -> Iterator[ReportLine]:
        """The report's lines in the order they were found, streamed from the database."""
        t = _LINES
        query = sa.select(t).where(t.c.report_id == report_id).order_by(t.c.id)
        if action is not None:
            query = query.where(t.c.action == action)
        with self._read() as conn:
            for row in conn.execution_options(yield_per=BATCH_SIZE).execute(query):
                yield _line(row)

    def count_lines(self, report_id: str) -> int:
        t = reconciliation_lines
        with self._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(t.c.report_id == report_id)
                ).scalar_one()
            )

    # -- exports ---------------------------------------------------------------------------

    def write_csv(self, report_id: str, out: IO[str]) -> int:
        """The report's lines as CSV (header first); returns how many lines were written."""
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        written = 0
        for line in self.lines(report_id):
            values = line.as_dict()
            writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
            written += 1
        return written

    def write_json(self, report_id: str, out: IO[str]) -> None:
        """`{"report": {…, "counts": …}, "lines": [...]}`, lines streamed one by one."""
        report = self.get(report_id)
        if report is None:
            raise LookupError(f"no reconciliation report {report_id!r}")
        out.write('{"report": ' + json.dumps(report.as_dict()) + ', "lines": [')
        for index, line in enumerate(self.lines(report_id)):
            out.write((",\n" if index else "\n") + json.dumps(line.as_dict()))
        out.write("\n]}\n")

    def to_dict(self, report_id: str) -> dict[str, Any]:
        """The whole report in memory, for small reports and tests."""
        report = self.get(report_id)
        if report is None:
            raise LookupError(f"no reconciliation report {report_id!r}")
        return {
            "report": report.as_dict(),
            "lines": [line.as_dict() for line in self.lines(report_id)],
        }


# The lines table with its NUMERIC columns as exact Decimals on every backend (see _Quantity).
_LINES = sa.Table(
    reconciliation_lines.name,
    sa.MetaData(),
    *(
        sa.Column(
            column.name,
            _Quantity() if isinstance(column.type, sa.Numeric) else column.type,
            primary_key=column.primary_key,
        )
        for column in reconciliation_lines.columns
    ),
)
