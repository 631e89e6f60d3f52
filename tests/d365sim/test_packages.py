"""Tests for DMF packages: golden format, round trips, D365's rejections and streaming memory."""

from __future__ import annotations

import codecs
import io
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d365sim.entities import (
    BY_NAME,
    DATETIME,
    DECIMAL,
    ENUMS,
    INT32,
    INT64,
    STRING,
    EntitySet,
    Field,
    by_label,
)
from d365sim.packages import (
    DMF_NAMESPACE,
    EXECUTION_PLACEHOLDER,
    PackageError,
    PackageReader,
    format_value,
    parse_value,
    write_package,
)

NS = {"d": DMF_NAMESPACE}
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
CUSTOMERS = BY_NAME["CustomersV3"]
LINES = BY_NAME["SalesOrderLines"]
GROUPS = BY_NAME["CustomerGroups"]
PRICES = BY_NAME["SalesPriceAgreements"]


def _package(*entities: tuple[EntitySet, list[dict[str, object]]]) -> bytes:
    buffer = io.BytesIO()
    write_package(buffer, definition_group="Import-1", entities=entities)
    return buffer.getvalue()


def _group_package() -> bytes:
    return _package((GROUPS, [{"dataAreaId": "usmf", "CustomerGroupId": "10"}]))


def _rewrite(package: bytes, changes: Mapping[str, bytes | None]) -> io.BytesIO:
    """Copy a package, replacing members (None drops one; new names are added)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name not in changes:
                dst.writestr(name, src.read(name))
        for name, data in changes.items():
            if data is not None:
                dst.writestr(name, data)
    out.seek(0)
    return out


def _utf16(text: str) -> bytes:
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")


def _read_all(source: io.BytesIO | bytes) -> dict[str, list[dict[str, str]]]:
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with PackageReader(stream, by_label, name="EXEC-1") as reader:
        return {e.label: list(reader.iter_rows(e)) for e in reader.entities}


# ---------------------------------------------------------------------------------------------
# Golden format


def test_written_package_has_d365_layout() -> None:
    customer = {
        "dataAreaId": "usmf",
        "CustomerAccount": "C-001",
        "CustomerGroupId": "10",
        "SalesCurrencyCode": "USD",
        "CreditLimit": Decimal("1000.50"),
        "OrganizationName": "Contoso, Ltd.",
    }
    line = {"dataAreaId": "usmf", "SalesOrderNumber": "SO-1", "LineNumber": 1, "ItemNumber": "X"}
    buffer = io.BytesIO()
    counts = write_package(
        buffer,
        definition_group="CT-Import",
        description="From commercetools",
        entities=[(CUSTOMERS, [customer, customer]), (LINES, iter([line]))],
    )
    assert counts == {"Customers V3": 2, "Sales order lines V2": 1}

    archive = zipfile.ZipFile(buffer)
    assert archive.namelist() == [
        "Customers V3.csv",
        "Sales order lines V2.csv",
        "Manifest.xml",
        "PackageHeader.xml",
    ]
    for name in archive.namelist():
        assert archive.read(name).startswith(codecs.BOM_UTF16_LE), name

    data = archive.read("Customers V3.csv")[2:].decode("utf-16-le")
    assert data.endswith("\r\n")
    assert data.count("\n") == data.count("\r\n") == 3
    lines = data.split("\r\n")
    assert lines[0] == ",".join(f.name.upper() for f in CUSTOMERS.fields)
    assert lines[0].startswith("DATAAREAID,CUSTOMERACCOUNT,")
    assert lines[1].startswith('usmf,C-001,,,"Contoso, Ltd.",')
    assert ",1000.5," in lines[1]

    manifest = ET.fromstring(archive.read("Manifest.xml"))
    assert manifest.tag == f"{{{DMF_NAMESPACE}}}DataManagementPackageManifest"
    assert manifest.findtext("d:DefinitionGroupName", namespaces=NS) == "CT-Import"
    assert manifest.findtext("d:Description", namespaces=NS) == "From commercetools"
    items = manifest.findall("d:PackageEntityList/d:DataManagementPackageEntityData", NS)
    assert len(items) == 2
    for sequence, (item, entity) in enumerate(zip(items, (CUSTOMERS, LINES), strict=True), 1):
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
        assert text["InputFilePath"] in archive.namelist()
        assert text["SourceFormat"] == "CSV-Unicode"
        assert text["SequenceInLevel"] == str(sequence)
        assert text["DefaultRefreshType"] == "FullPush"
        assert (text["Disable"], text["SkipStaging"], text["ValidationStatus"]) == (
            "false",
            "false",
            "Yes",
        )
        transforms = item.find("d:EntityTransformList", NS)
        assert transforms is not None and transforms.get(XSI_NIL) == "true"
        maps = item.findall("d:EntityMapList/d:EntityMap", NS)
        assert [m.findtext("d:EntityField", namespaces=NS) for m in maps] == [
            f.name.upper() for f in entity.fields
        ]
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
            assert entity_map.findtext("d:XMLField", namespaces=NS) == entity_map.findtext(
                "d:EntityField", namespaces=NS
            )
            conversion = entity_map.find("d:EntityFieldConversionList", NS)
            assert conversion is not None and conversion.get(XSI_NIL) == "true"

    header = ET.fromstring(archive.read("PackageHeader.xml"))
    assert header.tag == f"{{{DMF_NAMESPACE}}}DataManagementPackageHeader"
    assert header.findtext("d:Description", namespaces=NS) == "From commercetools"
    assert header.findtext("d:PackageType", namespaces=NS) == "DefinitionGroup"
    assert header.findtext("d:PackageVersion", namespaces=NS) == "2"
    assert header.findtext("d:ManifestType", namespaces=NS) == (
        "Microsoft.Dynamics.AX.Framework.Tools.DataManagement.Serialization."
        "DataManagementPackageManifest"
    )


def test_reader_exposes_manifest() -> None:
    with PackageReader(io.BytesIO(_package((CUSTOMERS, []), (GROUPS, []))), by_label) as reader:
        assert reader.definition_group == "Import-1"
        assert [(e.label, e.entity, e.sequence) for e in reader.entities] == [
            ("Customers V3", CUSTOMERS, 1),
            ("Customer groups", GROUPS, 2),
        ]
        first = reader.entities[0]
        assert first.input_file_path == "Customers V3.csv"
        assert first.fields == tuple(f.name.upper() for f in CUSTOMERS.fields)
        assert list(reader.iter_rows(first)) == []


def test_unknown_row_key_and_duplicate_entity_are_caller_errors(tmp_path: Path) -> None:
    target = tmp_path / "bad.zip"
    with pytest.raises(ValueError, match="CustomerGroups has no field 'Nope'"):
        write_package(target, definition_group="G", entities=[(GROUPS, [{"Nope": 1}])])
    assert not target.exists()
    with pytest.raises(ValueError, match="more than once"):
        write_package(io.BytesIO(), definition_group="G", entities=[(GROUPS, []), (GROUPS, [])])


# ---------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("a,b", "a,b"),
        (Decimal("12.50"), "12.5"),
        (Decimal("10"), "10"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-0.000"), "0"),
        (Decimal("0.1234567890123456789012345678901"), "0.1234567890123456789012345678901"),
        (42, "42"),
        (0.1, "0.1"),
        (True, "Yes"),
        (False, "No"),
        (datetime(2024, 1, 31, 1, 2, 3, 999, tzinfo=UTC), "2024-01-31T01:02:03Z"),
        (datetime(2024, 1, 31, 1, 0, tzinfo=timezone(timedelta(hours=2))), "2024-01-30T23:00:00Z"),
        (date(2024, 2, 29), "2024-02-29T00:00:00Z"),
    ],
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(Field("X", DECIMAL), value) == text


def test_format_value_rejects_naive_datetimes_and_unknown_types() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_value(Field("When", DATETIME), datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="PRICE"):
        format_value(Field("Price", DECIMAL), Decimal("NaN"))
    with pytest.raises(TypeError):
        format_value(Field("X"), object())


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [
        (Field("S"), "", ""),
        (Field("S"), " a ", " a "),
        (Field("D", DECIMAL), "", None),
        (Field("D", DECIMAL), " 12.50 ", Decimal("12.50")),
        (Field("D", DECIMAL), "-.5", Decimal("-0.5")),
        (Field("I", INT32), "-7", -7),
        (Field("I", INT64), str(2**63 - 1), 2**63 - 1),
        (
            Field("T", DATETIME),
            "2024-01-31T10:20:30Z",
            datetime(2024, 1, 31, 10, 20, 30, tzinfo=UTC),
        ),
        (Field("T", DATETIME), "2024-01-31T12:00:00+02:00", datetime(2024, 1, 31, 10, tzinfo=UTC)),
        (
            Field("T", DATETIME),
            "2024-01-31T10:20:30",
            datetime(2024, 1, 31, 10, 20, 30, tzinfo=UTC),
        ),
        (Field("T", DATETIME), "2024-01-31", datetime(2024, 1, 31, tzinfo=UTC)),
        (Field("T", DATETIME), "1/31/2024 12:00:00 AM", datetime(2024, 1, 31, tzinfo=UTC)),
        (Field("T", DATETIME), "1/31/2024 12:30:00 PM", datetime(2024, 1, 31, 12, 30, tzinfo=UTC)),
        (Field("T", DATETIME), "12/1/2024 1:05 pm", datetime(2024, 12, 1, 13, 5, tzinfo=UTC)),
        (Field("T", DATETIME), "1/31/2024", datetime(2024, 1, 31, tzinfo=UTC)),
        (Field("E", "NoYes"), "yes", "Yes"),
        (Field("E", "SalesStatus"), "3", "Invoiced"),
        (Field("E", "SalesStatus"), "", None),
    ],
)
def test_parse_value(field: Field, text: str, value: object) -> None:
    parsed = parse_value(field, text)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        (Field("SalesPrice", DECIMAL), "abc", "'abc' is not a valid number for field SALESPRICE"),
        (Field("SalesPrice", DECIMAL), "1,5", "not a valid number"),
        (Field("SalesPrice", DECIMAL), "1e5", "not a valid number"),
        (Field("SalesPrice", DECIMAL), "NaN", "not a valid number"),
        (Field("Line", INT32), "1.0", "'1.0' is not a valid integer for field LINE"),
        (Field("Line", INT32), str(2**31), "not a valid integer"),
        (Field("When", DATETIME), "yesterday", "'yesterday' is not a valid date and time for"),
        (Field("When", DATETIME), "2/30/2024", "not a valid date and time"),
        (Field("When", DATETIME), "1/31/2024 13:00:00 PM", "not a valid date and time"),
        (Field("Blocked", "NoYes"), "Maybe", "'Maybe' is not a valid value of enum NoYes"),
        (Field("Blocked", "NoYes"), "2", "not a valid value of enum"),
    ],
)
def test_parse_value_rejects_bad_text(field: Field, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_value(field, text)


# ---------------------------------------------------------------------------------------------
# Round trip

_TRICKY = st.sampled_from(
    [
        "",
        ",",
        '"',
        '""',
        "\r\n",
        "\n",
        "\r",
        " lead",
        "trail ",
        'a,"b"\r\nc',
        "ÆØÅ 中文 🎉",
        "\ufeff",
        "\x00",
    ]
)
_TEXT = _TRICKY | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
_DATETIMES = st.datetimes(datetime(1901, 1, 1), datetime(9998, 12, 31), timezones=_OFFSETS)
_DECIMALS = st.integers(0, 10).flatmap(
    lambda places: st.decimals(-(10**15), 10**15, allow_nan=False, places=places)
)


def _value_and_expected(field: Field) -> st.SearchStrategy[tuple[object, object]]:
    """A value to write and what parse_value must give back after the documented normalising."""
    if field.type == STRING:
        return st.tuples(st.none(), st.just("")) | _TEXT.map(lambda s: (s, s))
    if field.type == DECIMAL:
        return _DECIMALS.map(lambda d: (d, d))
    if field.type in (INT32, INT64):
        bits = 31 if field.type == INT32 else 63
        return st.integers(-(2**bits), 2**bits - 1).map(lambda i: (i, i))
    if field.type == DATETIME:
        return _DATETIMES.map(lambda d: (d, d.astimezone(UTC).replace(microsecond=0)))
    members = ENUMS[field.type]
    spelled: st.SearchStrategy[tuple[object, object]] = st.sampled_from(members).flatmap(
        lambda m: st.sampled_from([m, m.lower(), m.upper()]).map(lambda s: (s, m))
    )
    if field.type == "NoYes":
        spelled |= st.booleans().map(lambda b: (b, "Yes" if b else "No"))
    return spelled


@st.composite
def _rows(draw: st.DrawFn, entity: EntitySet) -> list[tuple[dict[str, object], dict[str, object]]]:
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        row: dict[str, object] = {}
        expected: dict[str, object] = {}
        for f in entity.fields:
            value, parsed = draw(st.none().map(lambda _: (None, None)) | _value_and_expected(f))
            if f.type == STRING and value is None:
                parsed = ""
            expected[f.name] = parsed
            if value is not None or draw(st.booleans()):
                row[f.name] = value
        rows.append((row, expected))
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(customers=_rows(CUSTOMERS), lines=_rows(LINES), prices=_rows(PRICES))
def test_round_trip(
    customers: list[tuple[dict[str, object], dict[str, object]]],
    lines: list[tuple[dict[str, object], dict[str, object]]],
    prices: list[tuple[dict[str, object], dict[str, object]]],
) -> None:
    plan = [(CUSTOMERS, customers), (LINES, lines), (PRICES, prices)]
    buffer = io.BytesIO()
    write_package(
        buffer,
        definition_group="RoundTrip",
        entities=[(entity, [row for row, _ in rows]) for entity, rows in plan],
    )
    with PackageReader(buffer, by_label) as reader:
        assert [e.entity for e in reader.entities] == [CUSTOMERS, LINES, PRICES]
        for package_entity, (entity, rows) in zip(reader.entities, plan, strict=True):
            read = [
                {name: parse_value(entity.field_by_name[name], text) for name, text in row.items()}
                for row in reader.iter_rows(package_entity)
            ]
            assert read == [expected for _, expected in rows]


# ---------------------------------------------------------------------------------------------
# Rejections


def test_bare_csv_is_not_a_package() -> None:
    bare = _utf16("DATAAREAID,CUSTOMERGROUPID\r\nusmf,10\r\n")
    with pytest.raises(PackageError) as caught:
        PackageReader(io.BytesIO(bare), by_label, name="EXEC-42")
    assert (
        str(caught.value) == "Could not find file 'C:\\windows\\TEMP\\EXEC-42\\PackageHeader.xml'."
    )


def test_bare_file_without_execution_name_gets_a_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"A,B\r\n")
    with pytest.raises(PackageError) as caught:
        PackageReader(path, by_label)
    assert f"\\{EXECUTION_PLACEHOLDER}\\PackageHeader.xml'" in str(caught.value)


def test_zipped_folder_is_missing_its_header() -> None:
    nested = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(_group_package())) as src, zipfile.ZipFile(nested, "w") as dst:
        for name in src.namelist():
            dst.writestr(f"Import-1/{name}", src.read(name))
    with pytest.raises(PackageError, match=r"PackageHeader\.xml"):
        PackageReader(nested, by_label)


def test_missing_manifest() -> None:
    with pytest.raises(PackageError, match=r"Could not find file .*\\Manifest\.xml'"):
        PackageReader(_rewrite(_group_package(), {"Manifest.xml": None}), by_label)


def test_missing_data_file() -> None:
    package = _rewrite(_group_package(), {"Customer groups.csv": None})
    with pytest.raises(PackageError) as caught:
        PackageReader(package, by_label, name="EXEC-7")
    assert str(caught.value) == (
        "Could not find file 'C:\\windows\\TEMP\\EXEC-7\\Customer groups.csv'."
    )


def test_unknown_entity_label() -> None:
    with pytest.raises(PackageError, match=r"^Entity 'Customer groups' is not found\.$"):
        PackageReader(io.BytesIO(_group_package()), lambda label: None)


def test_utf8_data_file_is_not_unicode() -> None:
    utf8 = "DATAAREAID,CUSTOMERGROUPID\r\nusmf,10\r\n".encode("utf-8-sig")
    package = _rewrite(_group_package(), {"Customer groups.csv": utf8})
    with (
        PackageReader(package, by_label) as reader,
        pytest.raises(PackageError, match="Selected file is not Unicode"),
    ):
        reader.iter_rows(reader.entities[0])


def test_unknown_header_field() -> None:
    data = _utf16("DATAAREAID,CUSTOMERGROUPID,COLOUR\r\nusmf,10,red\r\n")
    package = _rewrite(_group_package(), {"Customer groups.csv": data})
    with (
        PackageReader(package, by_label) as reader,
        pytest.raises(PackageError, match=r"Column 'COLOUR' .* does not exist in entity"),
    ):
        reader.iter_rows(reader.entities[0])


def test_row_with_wrong_column_count() -> None:
    data = _utf16("DATAAREAID,CUSTOMERGROUPID\r\nusmf,10,extra\r\n")
    package = _rewrite(_group_package(), {"Customer groups.csv": data})
    with PackageReader(package, by_label) as reader:
        rows = reader.iter_rows(reader.entities[0])
        with pytest.raises(PackageError, match=r"Line 2 .* has 3 columns; the header has 2"):
            next(rows)


def test_mapping_names_a_field_the_entity_lacks() -> None:
    manifest = zipfile.ZipFile(io.BytesIO(_group_package())).read("Manifest.xml")
    broken = manifest.decode("utf-16").replace(
        "<EntityField>PAYMENTTERMID<", "<EntityField>PAYMENTTERM<"
    )
    package = _rewrite(_group_package(), {"Manifest.xml": _utf16(broken)})
    with pytest.raises(PackageError, match="Field 'PAYMENTTERM' in the mapping"):
        PackageReader(package, by_label)


def test_garbage_manifest() -> None:
    package = _rewrite(_group_package(), {"Manifest.xml": _utf16("<DataManagement")})
    with pytest.raises(PackageError, match="error deserializing"):
        PackageReader(package, by_label)


# ---------------------------------------------------------------------------------------------
# Tolerated variations


def test_tolerates_utf8_manifest_folders_case_and_partial_mapping() -> None:
    manifest_xml = f"""<?xml version="1.0" encoding="utf-8"?>
<DataManagementPackageManifest xmlns="{DMF_NAMESPACE}">
 <DefinitionGroupName>Hand made</DefinitionGroupName>
 <PackageEntityList>
  <DataManagementPackageEntityData>
   <EntityMapList>
    <EntityMap><EntityField>CUSTOMERGROUPID</EntityField><XMLField>GROUP</XMLField></EntityMap>
    <EntityMap><EntityField>dataareaid</EntityField><XMLField>DATAAREAID</XMLField></EntityMap>
   </EntityMapList>
   <EntityName>customer GROUPS</EntityName>
   <InputFilePath>groups.CSV</InputFilePath>
  </DataManagementPackageEntityData>
 </PackageEntityList>
</DataManagementPackageManifest>"""
    data = _utf16("Group,DataAreaId,DESCRIPTION\r\n10,usmf,ignored\r\n\r\n20,usmf,\r\n")
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("packageheader.XML", _utf16("<DataManagementPackageHeader/>"))
        archive.writestr("Manifest.xml", manifest_xml.encode("utf-8"))
        archive.writestr("data/Groups.csv", data)
    with PackageReader(package, by_label) as reader:
        (entity,) = reader.entities
        assert (entity.entity, entity.fields, entity.sequence) == (
            GROUPS,
            ("GROUP", "DATAAREAID"),
            1,
        )
        assert list(reader.iter_rows(entity)) == [
            {"CustomerGroupId": "10", "dataAreaId": "usmf"},
            {"CustomerGroupId": "20", "dataAreaId": "usmf"},
        ]


def test_manifest_without_mapping_stages_nothing() -> None:
    manifest = zipfile.ZipFile(io.BytesIO(_group_package())).read("Manifest.xml").decode("utf-16")
    start, end = manifest.index("<EntityMapList>"), manifest.index("</EntityMapList>")
    unmapped = manifest[:start] + manifest[end + len("</EntityMapList>") :]
    package = _rewrite(_group_package(), {"Manifest.xml": _utf16(unmapped)})
    assert _read_all(package) == {"Customer groups": []}


# ---------------------------------------------------------------------------------------------
# Streaming

_STREAM_ROWS = 200_000
_PEAK_LIMIT = 5 * 1024 * 1024


def _many_groups() -> Iterator[dict[str, object]]:
    for i in range(_STREAM_ROWS):
        yield {
            "dataAreaId": "usmf",
            "CustomerGroupId": f"G{i:08d}",
            "Description": f"Customer group number {i}, generated for the streaming test",
            "PaymentTermId": "Net30",
        }


def test_rows_stream_with_flat_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    tracemalloc.start()
    try:
        counts = write_package(path, definition_group="Big", entities=[(GROUPS, _many_groups())])
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        seen = 0
        last: dict[str, str] = {}
        with PackageReader(path, by_label) as reader:
            for row in reader.iter_rows(reader.entities[0]):
                seen += 1
                last = row
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert counts == {"Customer groups": _STREAM_ROWS}
    assert seen == _STREAM_ROWS
    assert last["CustomerGroupId"] == f"G{_STREAM_ROWS - 1:08d}"
    # The uncompressed file dwarfs the limit, so holding it in memory would fail the test.
    size = zipfile.ZipFile(path).getinfo("Customer groups.csv").file_size
    assert size > 4 * _PEAK_LIMIT
    assert write_peak < _PEAK_LIMIT, write_peak
    assert read_peak < _PEAK_LIMIT, read_peak
