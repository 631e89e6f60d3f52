"""Tests for d365ct's DMF packages: format, interop with d365sim, size limit and streaming.

d365sim is the independent peer here: its reader and importer judge what d365ct writes.
"""

from __future__ import annotations

import codecs
import enum
import itertools
import random
import tempfile
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import d365sim.entities
import d365sim.packages
from d365ct.d365.entities import (
    CUSTOMERS_V3,
    DEFINITIONS,
    SALES_ORDER_HEADERS_V2,
    SALES_ORDER_LINES_V2,
    EntityDefinition,
    by_label,
)
from d365ct.d365.packages import (
    PackageFormatError,
    PackageTooLargeError,
    PackageWriter,
    Unit,
    WrittenPackage,
    format_value,
    open_package,
)
from d365ct.errors import PermanentError
from d365sim.importer import Importer
from d365sim.store import EntityStore

NS = {"d": "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"}
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
HEADERS = SALES_ORDER_HEADERS_V2
LINES = SALES_ORDER_LINES_V2

CUSTOMER: dict[str, object] = {
    "dataAreaId": "usmf",
    "CustomerAccount": "CT-000001",
    "PartyType": "Organization",
    "OrganizationName": 'Contoso, "Ltd."',
    "CustomerGroupId": "30",
    "SalesCurrencyCode": "EUR",
    "PrimaryContactEmail": "buyer@contoso.example",
    "DeliveryAddressStreet": "Königsallee 1\r\nHinterhaus",
    "DeliveryAddressCity": "Düsseldorf",
    "DeliveryAddressZipCode": "40212",
    "DeliveryAddressCountryRegionISOCode": "DEU",
    "TaxExemptNumber": "DE123456789",
}
HEADER: dict[str, object] = {
    "dataAreaId": "usmf",
    "SalesOrderNumber": "CT-1001",
    "OrderingCustomerAccountNumber": "CT-000001",
    "CurrencyCode": "EUR",
    "SalesOrderName": "Web order 1001",
    "OrderCreationDateTime": datetime(2024, 5, 17, 9, 30, 15, tzinfo=timezone(timedelta(hours=2))),
    "RequestedShippingDate": date(2024, 5, 20),
}
ORDER_LINES: list[dict[str, object]] = [
    {
        "dataAreaId": "usmf",
        "SalesOrderNumber": "CT-1001",
        "LineNumber": 1,
        "ItemNumber": "A0001",
        "LineDescription": "Espresso cup, 6 pcs",
        "OrderedSalesQuantity": Decimal("2"),
        "SalesPrice": Decimal("19.990"),
        "LineDiscountAmount": Decimal("0"),
        "LineAmount": Decimal("39.98"),
        "CurrencyCode": "EUR",
    },
    {
        "dataAreaId": "usmf",
        "SalesOrderNumber": "CT-1001",
        "LineNumber": 2,
        "ItemNumber": "A0001",
        "OrderedSalesQuantity": 1,
        "SalesPrice": Decimal("1250"),
    },
]


def _expected(definition: EntityDefinition, row: Mapping[str, object]) -> dict[str, str]:
    return {name: format_value(row.get(name)) for name in definition.fields}


def _order_unit() -> Unit:
    return [(HEADERS, HEADER), *((LINES, line) for line in ORDER_LINES)]


def _write_order_package(directory: Path) -> WrittenPackage:
    writer = PackageWriter(directory, definition_group="CT-Orders")
    packages = writer.write_units(
        [CUSTOMERS_V3, HEADERS, LINES], [[(CUSTOMERS_V3, CUSTOMER)], _order_unit()]
    )
    assert len(packages) == 1
    return packages[0]


# ---------------------------------------------------------------------------------------------
# Values


class _Colour(enum.StrEnum):
    RED = "Red"


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("", ""),
        ("a,b", "a,b"),
        (_Colour.RED, "Red"),
        (True, "Yes"),
        (False, "No"),
        (0, "0"),
        (-42, "-42"),
        (_Level.HIGH, "3"),
        (Decimal("12.500"), "12.500"),
        (Decimal("1000"), "1000"),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.5E-7"), "0.00000015"),
        (Decimal("-0.00"), "0.00"),
        (Decimal("-7.25"), "-7.25"),
        (
            datetime(2024, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            "2024-02-01T04:30:00Z",
        ),
        (datetime(2024, 1, 31, 8, 0, 59, 999999, tzinfo=UTC), "2024-01-31T08:00:59Z"),
        (datetime(999, 1, 2, tzinfo=UTC), "0999-01-02T00:00:00Z"),
        (date(2024, 2, 29), "2024-02-29T12:00:00Z"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_floats_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="float"):
        format_value(0.1)
    writer = PackageWriter(tmp_path, definition_group="CT-Orders")
    lines = [ORDER_LINES[0], {**ORDER_LINES[1], "SalesPrice": 19.99}]
    with pytest.raises(TypeError, match="float") as caught:
        writer.write_rows(LINES, lines)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "field SalesPrice of 'Sales order lines V2'" in notes
    assert "in unit 1 (Sales order lines V2 SalesOrderNumber=CT-1001, LineNumber=2" in notes
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (datetime(2024, 1, 1, 12, 0), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (b"bytes", TypeError),
        (1 + 2j, TypeError),
    ],
)
def test_unwritable_values(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        format_value(value)


# ---------------------------------------------------------------------------------------------
# Format


def test_package_has_d365_layout(tmp_path: Path) -> None:
    package = _write_order_package(tmp_path)
    assert package.path == tmp_path / "package-0001.zip"
    assert package.size == package.path.stat().st_size
    assert package.rows == {
        "Customers V3": 1,
        "Sales order headers V2": 1,
        "Sales order lines V2": 2,
    }
    assert (package.units, package.first_unit, package.last_unit) == (2, 0, 1)

    archive = zipfile.ZipFile(package.path)
    assert sorted(archive.namelist()) == [
        "Customers V3.csv",
        "Manifest.xml",
        "PackageHeader.xml",
        "Sales order headers V2.csv",
        "Sales order lines V2.csv",
    ]
    for info in archive.infolist():
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert archive.read(info.filename).startswith(codecs.BOM_UTF16_LE), info.filename

    data = archive.read("Sales order lines V2.csv")[2:].decode("utf-16-le")
    records = data.split("\r\n")
    assert "\n" not in data.replace("\r\n", "")
    assert records[0] == ",".join(LINES.columns)
    assert records[0].startswith("DATAAREAID,SALESORDERNUMBER,LINENUMBER,ITEMNUMBER,")
    assert records[1] == 'usmf,CT-1001,1,A0001,,,,,"Espresso cup, 6 pcs",2,,19.990,0,39.98,EUR,'
    assert records[2] == "usmf,CT-1001,2,A0001,,,,,,1,,1250,,,,"
    assert records[3] == ""
    customers = archive.read("Customers V3.csv")[2:].decode("utf-16-le")
    # A quoted field keeps its own CRLF; only the record ends are outside quotes.
    assert '"Contoso, ""Ltd."""' in customers
    assert '"Königsallee 1\r\nHinterhaus"' in customers

    manifest_bytes = archive.read("Manifest.xml")
    assert manifest_bytes.startswith(codecs.BOM_UTF16_LE + "<".encode("utf-16-le"))
    manifest = ET.fromstring(manifest_bytes[2:].decode("utf-16-le"))
    assert manifest.tag == f"{{{NS['d']}}}DataManagementPackageManifest"
    assert manifest.findtext("d:DefinitionGroupName", namespaces=NS) == "CT-Orders"
    items = manifest.findall("d:PackageEntityList/d:DataManagementPackageEntityData", NS)
    for sequence, (item, entity) in enumerate(
        zip(items, (CUSTOMERS_V3, HEADERS, LINES), strict=True), 1
    ):
        assert [child.tag.rpartition("}")[2] for child in item] == [
            "DefaultRefreshType",
            "Disable",
            "EntityMapList",
            "EntityName",
            "EntityTransformList",
            "ExcelSheetName",
            "ExecutionUnit",
            "FailExecutionUnitOnError",
            "FailLevelOnError",
            "InputFilePath",
            "LevelInExecutionUnit",
            "RunBusinessLogic",
            "RunBusinessValidation",
            "SampleFilePath",
            "SequenceInLevel",
            "SkipStaging",
            "SourceFormat",
            "ValidationStatus",
        ]
        text = {child.tag.rpartition("}")[2]: child.text for child in item}
        assert text["EntityName"] == entity.label
        assert text["InputFilePath"] == f"{entity.label}.csv"
        assert text["SequenceInLevel"] == str(sequence)
        assert (text["DefaultRefreshType"], text["Disable"]) == ("FullPush", "false")
        assert (text["SourceFormat"], text["ValidationStatus"]) == ("CSV-Unicode", "Yes")
        assert (text["ExecutionUnit"], text["LevelInExecutionUnit"]) == ("1", "1")
        transforms = item.find("d:EntityTransformList", NS)
        assert transforms is not None and transforms.get(XSI_NIL) == "true"
        maps = item.findall("d:EntityMapList/d:EntityMap", NS)
        assert [m.findtext("d:EntityField", namespaces=NS) for m in maps] == list(entity.columns)
        for entity_map in maps:
            assert [c.tag.rpartition("}")[2] for c in entity_map] == [
                "ArrayIndex",
                "EntityField",
                "EntityFieldConversionList",
                "IsAutoDefault",
                "IsAutoGenerated",
                "IsDefaultValueEqualNull",
                "UseTextQualifier",
                "XMLField",
            ]
            values = {c.tag.rpartition("}")[2]: c.text for c in entity_map}
            assert values["XMLField"] == values["EntityField"]
            assert values["ArrayIndex"] == "0"
            assert values["UseTextQualifier"] == values["IsAutoDefault"] == "false"
            conversion = entity_map.find("d:EntityFieldConversionList", NS)
            assert conversion is not None and conversion.get(XSI_NIL) == "true"

    header = ET.fromstring(archive.read("PackageHeader.xml")[2:].decode("utf-16-le"))
    assert header.tag == f"{{{NS['d']}}}DataManagementPackageHeader"
    assert header.findtext("d:Description", namespaces=NS) == "CT-Orders"
    assert header.findtext("d:PackageType", namespaces=NS) == "DefinitionGroup"
    assert header.findtext("d:PackageVersion", namespaces=NS) == "2"
    assert header.findtext("d:ManifestType", namespaces=NS) == (
        "Microsoft.Dynamics.AX.Framework.Tools.DataManagement.Serialization."
        "DataManagementPackageManifest"
    )


def test_writer_never_overwrites_and_numbers_on(tmp_path: Path) -> None:
    (tmp_path / "orders-0001.zip").write_bytes(b"someone else's")
    first = PackageWriter(tmp_path, definition_group="G", name_prefix="orders")
    assert [p.path.name for p in first.write_rows(LINES, ORDER_LINES)] == ["orders-0002.zip"]
    assert [p.path.name for p in first.write_rows(LINES, ORDER_LINES)] == ["orders-0003.zip"]
    assert (tmp_path / "orders-0001.zip").read_bytes() == b"someone else's"
    assert first.write_rows(LINES, []) == []


def test_writer_refuses_unknown_fields_and_entities(tmp_path: Path) -> None:
    writer = PackageWriter(tmp_path, definition_group="G")
    with pytest.raises(ValueError, match="'Sales order lines V2' has no field 'Colour'"):
        writer.write_rows(LINES, [{**ORDER_LINES[0], "Colour": "red"}])
    with pytest.raises(ValueError, match="'Customers V3' is not one of this package's entities"):
        writer.write_units([HEADERS, LINES], [_order_unit(), [(CUSTOMERS_V3, CUSTOMER)]])
    with pytest.raises(ValueError, match="more than once"):
        writer.write_units([LINES, LINES], [])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Interoperability with the simulator


def test_simulator_reads_and_imports_what_d365ct_writes(tmp_path: Path) -> None:
    package = _write_order_package(tmp_path)

    with d365sim.packages.PackageReader(package.path, d365sim.entities.by_label) as reader:
        assert [e.label for e in reader.entities] == [
            "Customers V3",
            "Sales order headers V2",
            "Sales order lines V2",
        ]
        rows = {e.label: list(reader.iter_rows(e)) for e in reader.entities}
    assert rows == {
        "Customers V3": [_expected(CUSTOMERS_V3, CUSTOMER)],
        "Sales order headers V2": [_expected(HEADERS, HEADER)],
        "Sales order lines V2": [_expected(LINES, line) for line in ORDER_LINES],
    }

    # The simulator's import step parses every value and checks references, like D365's.
    store = EntityStore()
    try:
        entity_sets = d365sim.entities.BY_NAME
        store.insert_many(entity_sets["LegalEntities"], [{"LegalEntityId": "usmf"}])
        store.insert_many(
            entity_sets["CustomerGroups"], [{"dataAreaId": "usmf", "CustomerGroupId": "30"}]
        )
        store.insert_many(
            entity_sets["ReleasedProductsV2"],
            [{"dataAreaId": "usmf", "ItemNumber": "A0001", "ProductSubType": "Product"}],
        )
        with d365sim.packages.PackageReader(package.path, d365sim.entities.by_label) as reader:
            results = list(Importer(store, "usmf").run(reader))
        assert [(r.label, r.written, r.errors) for r in results] == [
            ("Customers V3", 1, []),
            ("Sales order headers V2", 1, []),
            ("Sales order lines V2", 2, []),
        ]
        header = store.find(entity_sets["SalesOrderHeadersV2"], {"SalesOrderNumber": "CT-1001"})
        assert header is not None
        assert header["OrderCreationDateTime"] == datetime(2024, 5, 17, 7, 30, 15, tzinfo=UTC)
        customer = store.find(entity_sets["CustomersV3"], {"CustomerAccount": "CT-000001"})
        assert customer is not None
        assert customer["DeliveryAddressStreet"] == "Königsallee 1\r\nHinterhaus"
    finally:
        store.close()


def test_d365ct_reads_what_the_simulator_writes(tmp_path: Path) -> None:
    sim_lines = d365sim.entities.BY_NAME["SalesOrderLines"]
    sim_customers = d365sim.entities.BY_NAME["CustomersV3"]
    customer = {**CUSTOMER, "CreditLimit": Decimal("5000.00")}
    path = tmp_path / "export.zip"
    d365sim.packages.write_package(
        path,
        definition_group="Export",
        entities=[(sim_customers, [customer]), (sim_lines, iter(ORDER_LINES))],
    )

    def sim_text(entity: d365sim.entities.EntitySet, row: Mapping[str, object]) -> dict[str, str]:
        return {
            f.name.upper(): d365sim.packages.format_value(f, row.get(f.name)) for f in entity.fields
        }

    with open_package(path) as package:
        assert package.definition_group == "Export"
        assert [(e.label, e.input_file) for e in package.entities] == [
            ("Customers V3", "Customers V3.csv"),
            ("Sales order lines V2", "Sales order lines V2.csv"),
        ]
        assert package.entities[1].fields == tuple(f.name.upper() for f in sim_lines.fields)
        # Keyed by the file's uppercase columns, every column kept.
        assert list(package.rows("Sales order lines V2")) == [
            sim_text(sim_lines, line) for line in ORDER_LINES
        ]
        # Keyed by the definition's field names; columns the definition lacks are dropped.
        mapped = list(package.rows("sales order lines v2", definition=LINES))
        assert [set(row) for row in mapped] == [set(LINES.fields)] * 2
        assert [Decimal(row["SalesPrice"]) for row in mapped] == [Decimal("19.99"), 1250]
        assert mapped[0]["LineDescription"] == "Espresso cup, 6 pcs"
        [customer_row] = package.rows("Customers V3", definition=CUSTOMERS_V3)
        assert "CreditLimit" not in customer_row
        for name in CUSTOMERS_V3.fields:
            assert customer_row[name] == format_value(customer.get(name))


def test_definitions_name_what_the_simulator_serves() -> None:
    for label, definition in DEFINITIONS.items():
        entity = d365sim.entities.by_label(label)
        assert entity is not None, label
        assert entity.name == definition.odata_name
        missing = set(definition.fields) - set(entity.field_names)
        assert not missing, (label, missing)
        assert set(definition.keys) == set(entity.row_keys), label
    assert by_label(" customers v3 ") is CUSTOMERS_V3
    with pytest.raises(KeyError, match="no entity definition for label 'Vendors'"):
        by_label("Vendors")


# ---------------------------------------------------------------------------------------------
# Round trip

_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(',"\r\n \t;'),
        st.characters(blacklist_categories=("Cs",)),  # lone surrogates cannot be UTF-16 encoded
    ),
    max_size=30,
)
_LINE = st.fixed_dictionaries(
    {
        "dataAreaId": st.sampled_from(["usmf", "DEMF"]),
        "SalesOrderNumber": _TEXT,
        "LineNumber": st.integers(min_value=1, max_value=10**6),
        "ItemNumber": _TEXT,
        "LineDescription": _TEXT,
        "OrderedSalesQuantity": st.decimals(places=0, allow_nan=False, allow_infinity=False),
        "SalesPrice": st.decimals(places=3, allow_nan=False, allow_infinity=False),
        "LineAmount": st.none() | st.decimals(places=2, allow_nan=False, allow_infinity=False),
    }
)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_LINE, max_size=8))
def test_rows_round_trip(lines: list[dict[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        packages = PackageWriter(Path(directory), definition_group="G").write_rows(LINES, lines)
        if not lines:
            assert packages == []
            return
        [package] = packages
        with open_package(package.path) as reader:
            read = list(reader.rows(LINES.label, definition=LINES))
        with d365sim.packages.PackageReader(package.path, d365sim.entities.by_label) as sim:
            sim_read = list(sim.iter_rows(sim.entities[0]))
    assert read == sim_read == [_expected(LINES, line) for line in lines]
    for line, row in zip(lines, read, strict=True):
        for name, value in line.items():
            if isinstance(value, Decimal):
                assert Decimal(row[name]) == value
            elif value is None:
                assert row[name] == ""
            else:
                assert row[name] == str(value)


# ---------------------------------------------------------------------------------------------
# Size limit


def _orders(count: int, seed: int = 7, max_lines: int = 4) -> Iterator[Unit]:
    # Random hex is poorly compressible, so packages fill up after a realistic number of rows.
    rnd = random.Random(seed)
    for index in range(count):
        number = f"CT-{index:06d}"
        unit: list[tuple[EntityDefinition, Mapping[str, object]]] = [
            (
                HEADERS,
                {
                    "dataAreaId": "usmf",
                    "SalesOrderNumber": number,
                    "OrderingCustomerAccountNumber": f"C{rnd.randrange(10**5):05d}",
                    "CurrencyCode": "EUR",
                    "SalesOrderName": rnd.randbytes(8).hex(),
                },
            )
        ]
        for line in range(1, rnd.randint(0, max_lines) + 1):
            unit.append(
                (
                    LINES,
                    {
                        "dataAreaId": "usmf",
                        "SalesOrderNumber": number,
                        "LineNumber": line,
                        "ItemNumber": f"A{rnd.randrange(10**4):04d}",
                        "LineDescription": rnd.randbytes(10).hex(),
                        "OrderedSalesQuantity": rnd.randint(1, 9),
                        "SalesPrice": Decimal(rnd.randrange(10**6)).scaleb(-2),
                    },
                )
            )
        yield unit


def test_batches_split_into_packages_within_the_limit(tmp_path: Path) -> None:
    limit = 64 * 1024
    count = 3000
    writer = PackageWriter(tmp_path, definition_group="CT-Orders", max_bytes=limit)
    packages = writer.write_units([HEADERS, LINES], _orders(count))

    assert len(packages) >= 3
    assert sorted(tmp_path.iterdir()) == [p.path for p in packages]
    for package in packages:
        assert package.size == package.path.stat().st_size <= limit
    # Close to the limit, so the estimate is not wastefully cautious.
    assert all(p.size > 0.95 * limit for p in packages[:-1]), [p.size for p in packages]
    # Consecutive unit ranges covering the input exactly once.
    assert packages[0].first_unit == 0 and packages[-1].last_unit == count - 1
    for before, after in itertools.pairwise(packages):
        assert after.first_unit == before.last_unit + 1
    assert all(p.units == p.last_unit - p.first_unit + 1 for p in packages)

    expected_headers: list[dict[str, str]] = []
    expected_lines: list[dict[str, str]] = []
    for unit in _orders(count):
        for entity, row in unit:
            (expected_headers if entity is HEADERS else expected_lines).append(
                _expected(entity, row)
            )
    read_headers: list[dict[str, str]] = []
    read_lines: list[dict[str, str]] = []
    for package in packages:
        with open_package(package.path) as reader:
            headers = list(reader.rows(HEADERS.label, definition=HEADERS))
            lines = list(reader.rows(LINES.label, definition=LINES))
        assert package.rows == {HEADERS.label: len(headers), LINES.label: len(lines)}
        assert len(headers) == package.units
        # No order is split: every line's header is in the same package.
        numbers = {row["SalesOrderNumber"] for row in headers}
        assert {row["SalesOrderNumber"] for row in lines} <= numbers
        read_headers += headers
        read_lines += lines
    assert read_headers == expected_headers
    assert read_lines == expected_lines


def test_unit_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    limit = 64 * 1024
    writer = PackageWriter(tmp_path, definition_group="CT-Orders", max_bytes=limit)
    # One order with thousands of lines: more than 64 KiB even compressed.
    [huge] = _orders(1, max_lines=0)
    more_lines = (pair for unit in _orders(2000, seed=1) for pair in unit[1:])
    huge = [*huge, *((LINES, {**row, "SalesOrderNumber": "CT-000000"}) for _, row in more_lines)]
    with pytest.raises(
        PackageTooLargeError,
        match=r"unit 0 \(Sales order headers V2 "
        r"SalesOrderNumber=CT-000000, \d+ rows\) needs \d+ bytes",
    ) as caught:
        writer.write_units([HEADERS, LINES], [huge])
    assert isinstance(caught.value, PermanentError)
    assert list(tmp_path.iterdir()) == []

    # Packages already written by the failing call are removed: the caller never learns of them.
    units = [*_orders(2000), huge]
    with pytest.raises(PackageTooLargeError, match="unit 2000 "):
        writer.write_units([HEADERS, LINES], units)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Streaming

_STREAM_ROWS = 200_000
_PEAK_LIMIT = 4 * 1024 * 1024


def _many_lines() -> Iterator[dict[str, object]]:
    for index in range(_STREAM_ROWS):
        yield {
            "dataAreaId": "usmf",
            "SalesOrderNumber": f"CT-{index // 10:07d}",
            "LineNumber": index % 10 + 1,
            "ItemNumber": f"A{index % 9973:05d}",
            "LineDescription": f"line {index}",
            "OrderedSalesQuantity": index % 7 + 1,
            "SalesPrice": Decimal(index).scaleb(-2),
        }


@pytest.mark.slow
def test_writing_and_reading_stream(tmp_path: Path) -> None:
    writer = PackageWriter(tmp_path, definition_group="Big")
    tracemalloc.start()
    try:
        [package] = writer.write_rows(LINES, _many_lines())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = 0
        last: dict[str, str] = {}
        with open_package(package.path) as reader:
            for row in reader.rows(LINES.label, definition=LINES):
                seen += 1
                last = row
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert package.rows == {LINES.label: _STREAM_ROWS}
    assert seen == _STREAM_ROWS
    assert last["SalesPrice"] == f"{_STREAM_ROWS - 1}"[:-2] + "." + f"{_STREAM_ROWS - 1}"[-2:]
    # The uncompressed file dwarfs the limit, so holding it in memory would fail the test.
    assert zipfile.ZipFile(package.path).getinfo(f"{LINES.label}.csv").file_size > 4 * _PEAK_LIMIT
    assert write_peak < _PEAK_LIMIT, write_peak
    assert read_peak < _PEAK_LIMIT, read_peak


# ---------------------------------------------------------------------------------------------
# Reader rejections


def _rezip(source: Path, target: Path, changes: Mapping[str, bytes | None]) -> Path:
    """Copy a package, replacing members (None drops one; new names are added)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            if name not in changes:
                dst.writestr(name, src.read(name))
        for name, data in changes.items():
            if data is not None:
                dst.writestr(name, data)
    return target


def test_reader_rejects_what_is_no_package(tmp_path: Path) -> None:
    good = _write_order_package(tmp_path).path
    not_zip = tmp_path / "orders.csv"
    not_zip.write_text("DATAAREAID\r\nusmf\r\n")
    with pytest.raises(PackageFormatError, match=r"orders\.csv is not a zip file"):
        open_package(not_zip)
    with pytest.raises(PackageFormatError, match=r"has no Manifest\.xml"):
        open_package(_rezip(good, tmp_path / "a.zip", {"Manifest.xml": None}))
    with pytest.raises(
        PackageFormatError,
        match=r"data file 'Sales order lines V2\.csv' of entity 'Sales order lines V2'.*not in",
    ):
        open_package(_rezip(good, tmp_path / "b.zip", {"Sales order lines V2.csv": None}))
    with pytest.raises(PackageFormatError, match=r"Manifest\.xml of .* is not readable XML"):
        open_package(_rezip(good, tmp_path / "c.zip", {"Manifest.xml": b"<oops"}))


def test_reader_rejects_bad_data_files(tmp_path: Path) -> None:
    good = _write_order_package(tmp_path).path
    utf8 = _rezip(
        good,
        tmp_path / "a.zip",
        {"Sales order lines V2.csv": b"DATAAREAID,LINENUMBER\r\nusmf,1\r\n"},
    )
    with open_package(utf8) as package, pytest.raises(PackageFormatError, match="not UTF-16"):
        package.rows("Sales order lines V2")

    ragged = "\ufeffDATAAREAID,SALESORDERNUMBER,LINENUMBER\r\nusmf,CT-1,1\r\nusmf,CT-1\r\n"
    path = _rezip(
        good, tmp_path / "b.zip", {"Sales order lines V2.csv": ragged.encode("utf-16-le")}
    )
    with open_package(path) as package:
        rows = package.rows("Sales order lines V2")
        assert next(rows) == {"DATAAREAID": "usmf", "SALESORDERNUMBER": "CT-1", "LINENUMBER": "1"}
        with pytest.raises(PackageFormatError, match=r"line 3 of .* has 2 columns, its header 3"):
            next(rows)
        with pytest.raises(PackageFormatError, match="has no entity 'Vendors V2'"):
            package.rows("Vendors V2")

    keyless = "\ufeffDATAAREAID,SALESORDERNUMBER,ITEMNUMBER\r\nusmf,CT-1,A0001\r\n"
    path = _rezip(
        good, tmp_path / "d.zip", {"Sales order lines V2.csv": keyless.encode("utf-16-le")}
    )
    with open_package(path) as package:
        assert list(package.rows("Sales order lines V2")) == [
            {"DATAAREAID": "usmf", "SALESORDERNUMBER": "CT-1", "ITEMNUMBER": "A0001"}
        ]
        with pytest.raises(PackageFormatError, match="lacks the key columns LINENUMBER of"):
            package.rows("Sales order lines V2", definition=LINES)

    # An odd number of bytes cannot be UTF-16.
    broken = codecs.BOM_UTF16_LE + "DATAAREAID\r\nusmf\r\n".encode("utf-16-le") + b"x"
    path = _rezip(good, tmp_path / "c.zip", {"Sales order lines V2.csv": broken})
    with open_package(path) as package, pytest.raises(PackageFormatError, match="valid UTF-16"):
        list(package.rows("Sales order lines V2"))
