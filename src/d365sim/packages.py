"""DMF data packages: zips holding Manifest.xml, PackageHeader.xml and one CSV-Unicode file each.

Writes and reads them as D365 does (`reference/d365-fo-apis.md` §4), streaming rows both ways.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, Self
from xml.sax.saxutils import escape

from d365sim.entities import DATETIME, DECIMAL, ENUMS, INT32, INT64, STRING, EntitySet, Field

DMF_NAMESPACE = "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
MANIFEST_NAME = "Manifest.xml"
HEADER_NAME = "PackageHeader.xml"
SOURCE_FORMAT = "CSV-Unicode"
DATA_FILE_EXTENSION = ".csv"
MANIFEST_TYPE = (
    "Microsoft.Dynamics.AX.Framework.Tools.DataManagement.Serialization."
    "DataManagementPackageManifest"
)
PACKAGE_VERSION = "2"

# D365 unpacks uploads into a per-execution folder and reports missing files by that path.
_TEMP_DIR = "C:\\windows\\TEMP"
# Stands in for the execution id in messages when the reader is not told it; callers that learn
# the id later substitute it.
EXECUTION_PLACEHOLDER = "{execution}"
_XML_DECLARATION = '<?xml version="1.0" encoding="utf-16"?>'
_UTF16_BOMS = {codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be"}
_INT_RANGES = {INT32: (-(2**31), 2**31 - 1), INT64: (-(2**63), 2**63 - 1)}
_INTEGER = re.compile(r"[+-]?[0-9]+")
# Plain notation only: Decimal() would also take exponents, underscores and non-ASCII digits.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_US_DATETIME = re.compile(
    r"(\d{1,2})/(\d{1,2})/(\d{4})"
    r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?\s*([AaPp][Mm])?)?",
    re.ASCII,
)

if TYPE_CHECKING:
    from _csv import _reader

PathOrFile = BinaryIO | os.PathLike[str] | str


class PackageError(ValueError):
    """A package D365 would refuse to import, with a message worded like D365's."""


@dataclass(frozen=True)
class PackageEntity:
    """One DataManagementPackageEntityData of a manifest, resolved to a simulated entity."""

    label: str  # EntityName as written in the manifest
    entity: EntitySet
    input_file_path: str
    fields: tuple[str, ...]  # the map's source columns (XMLField), uppercase
    sequence: int  # SequenceInLevel


@dataclass(frozen=True)
class _EntityPlan:
    member: str  # zip member holding the data file
    columns: dict[str, str]  # casefolded source column -> entity field name


# ---------------------------------------------------------------------------------------------
# Values


def format_value(field: Field, value: object) -> str:
    """Render a Python value as D365 writes it in a CSV-Unicode data file."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return "Yes" if value else "No"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr() is the shortest text that round-trips, so 0.1 stays 0.1.
        return _decimal_text(field, Decimal(repr(value)))
    if isinstance(value, Decimal):
        return _decimal_text(field, value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} for field {field.name.upper()}")
        return _datetime_text(value.astimezone(UTC))
    if isinstance(value, date):
        return _datetime_text(datetime(value.year, value.month, value.day, tzinfo=UTC))
    raise TypeError(f"cannot write {type(value).__name__} to field {field.name.upper()}")


def _decimal_text(field: Field, value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} is not a valid number for field {field.name.upper()}")
    if value == 0:  # also covers -0 and 0E-8
        return "0"
    # Decimal.normalize() would round to the context's 28 digits; trimming the text is exact.
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _datetime_text(value: datetime) -> str:
    # strftime("%Y") does not zero-pad years below 1000 on glibc.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def parse_value(field: Field, text: str) -> object:
    """Convert CSV text to the field's Python type; raise ValueError with a per-record message."""
    if field.type == STRING:
        return text
    stripped = text.strip()
    if not stripped:
        return None
    column = field.name.upper()
    if field.type == DECIMAL:
        if not _DECIMAL.fullmatch(stripped):
            raise ValueError(f"'{text}' is not a valid number for field {column}")
        return Decimal(stripped)
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        if not _INTEGER.fullmatch(stripped) or not low <= int(stripped) <= high:
            raise ValueError(f"'{text}' is not a valid integer for field {column}")
        return int(stripped)
    if field.type == DATETIME:
        return _parse_datetime(stripped, text, column)
    if field.is_enum:
        members = ENUMS[field.type]
        for member in members:
            if member.casefold() == stripped.casefold():
                return member
        if _INTEGER.fullmatch(stripped) and 0 <= int(stripped) < len(members):
            return members[int(stripped)]
        raise ValueError(
            f"'{text}' is not a valid value of enum {field.type} for field {column}"
            f" (expected one of {', '.join(members)})"
        )
    raise TypeError(f"field {column} has unsupported type {field.type}")


def _parse_datetime(stripped: str, text: str, column: str) -> datetime:
    try:
        us = _US_DATETIME.fullmatch(stripped)
        if us:
            value = _us_datetime(us)
        elif stripped[:1].isascii() and stripped[:1].isdigit():
            value = datetime.fromisoformat(stripped)
        else:
            raise ValueError(text)
        # D365 stores UTC; text without an offset is UTC, as in its own exports.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"'{text}' is not a valid date and time for field {column}") from None


def _us_datetime(match: re.Match[str]) -> datetime:
    month, day, year, hour, minute, second, ampm = match.groups()
    h = int(hour or 0)
    if ampm:
        if not 1 <= h <= 12:
            raise ValueError(hour)
        h = h % 12 + (12 if ampm.upper() == "PM" else 0)
    return datetime(int(year), int(month), int(day), h, int(minute or 0), int(second or 0))


# ---------------------------------------------------------------------------------------------
# Writer


def data_file_name(entity: EntitySet) -> str:
    return entity.label + DATA_FILE_EXTENSION


def write_package(
    dest: PathOrFile,
    *,
    definition_group: str,
    entities: Iterable[tuple[EntitySet, Iterable[Mapping[str, object]]]],
    description: str | None = None,
) -> dict[str, int]:
    """Write a DMF package, streaming each entity's rows; return rows written per entity label."""
    plan = list(entities)  # the row iterables stay lazy
    labels = [entity.label.casefold() for entity, _ in plan]
    for entity, _ in plan:
        if labels.count(entity.label.casefold()) > 1:
            raise ValueError(f"entity '{entity.label}' appears more than once in the package")
    counts: dict[str, int] = {}
    try:
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for entity, rows in plan:
                counts[entity.label] = _write_data_file(archive, entity, rows)
            manifest = _manifest_xml(definition_group, description, [e for e, _ in plan])
            archive.writestr(MANIFEST_NAME, _utf16(manifest))
            archive.writestr(HEADER_NAME, _utf16(_header_xml(description or definition_group)))
    except BaseException:
        # A half-written zip on disk would only be mistaken for a package later.
        if isinstance(dest, str | os.PathLike):
            Path(dest).unlink(missing_ok=True)
        raise
    return counts


def _write_data_file(
    archive: zipfile.ZipFile, entity: EntitySet, rows: Iterable[Mapping[str, object]]
) -> int:
    fields = entity.fields
    count = 0
    # force_zip64: a streamed entry's size is unknown up front and may pass 2 GiB.
    with (
        archive.open(data_file_name(entity), "w", force_zip64=True) as raw,
        io.TextIOWrapper(raw, encoding="utf-16-le", newline="") as text,
    ):
        text.write("\ufeff")
        writer = csv.writer(text, lineterminator="\r\n")
        writer.writerow([f.name.upper() for f in fields])
        for row in rows:
            for key in row:
                if key not in entity.field_by_name:
                    raise ValueError(f"{entity.name} has no field {key!r}")
            writer.writerow([format_value(f, row.get(f.name)) for f in fields])
            count += 1
    return count


def _utf16(xml: str) -> bytes:
    return codecs.BOM_UTF16_LE + xml.encode("utf-16-le")


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name}/>"


def _header_xml(description: str) -> str:
    return "\r\n".join(
        (
            _XML_DECLARATION,
            f'<DataManagementPackageHeader xmlns:i="{XSI_NAMESPACE}" xmlns="{DMF_NAMESPACE}">',
            "  " + _element("Description", description),
            "  " + _element("ManifestType", MANIFEST_TYPE),
            "  " + _element("PackageType", "DefinitionGroup"),
            "  " + _element("PackageVersion", PACKAGE_VERSION),
            "</DataManagementPackageHeader>",
        )
    )


def _manifest_xml(definition_group: str, description: str | None, entities: list[EntitySet]) -> str:
    lines = [
        _XML_DECLARATION,
        f'<DataManagementPackageManifest xmlns:i="{XSI_NAMESPACE}" xmlns="{DMF_NAMESPACE}">',
        "  " + _element("DefinitionGroupName", definition_group),
        "  " + _element("Description", description or definition_group),
        "  <PackageEntityList>",
    ]
    for sequence, entity in enumerate(entities, start=1):
        lines += [
            "    <DataManagementPackageEntityData>",
            "      " + _element("DefaultRefreshType", "FullPush"),
            "      " + _element("Disable", "false"),
            "      <EntityMapList>",
        ]
        for f in entity.fields:
            column = f.name.upper()
            lines.append(
                "        <EntityMap>"
                + _element("ArrayIndex", "0")
                + _element("EntityField", column)
                + '<EntityFieldConversionList i:nil="true"/>'
                + _element("IsAutoDefault", "false")
                + _element("IsAutoGenerated", "false")
                + _element("IsDefaultValueEqualNull", "false")
                + _element("UseTextQualifier", "false")
                + _element("XMLField", column)
                + "</EntityMap>"
            )
        lines.append("      </EntityMapList>")
        lines += [
            "      " + line
            for line in (
                _element("EntityName", entity.label),
                '<EntityTransformList i:nil="true"/>',
                _element("ExcelSheetName", ""),
                _element("ExecutionUnit", "1"),
                _element("FailExecutionUnitOnError", "false"),
                _element("FailLevelOnError", "false"),
                _element("InputFilePath", data_file_name(entity)),
                _element("LevelInExecutionUnit", "1"),
                _element("RunBusinessLogic", "true"),
                _element("RunBusinessValidation", "true"),
                _element("SampleFilePath", ""),
                _element("SequenceInLevel", str(sequence)),
                _element("SkipStaging", "false"),
                _element("SourceFormat", SOURCE_FORMAT),
                _element("ValidationStatus", "Yes"),
            )
        ]
        lines.append("    </DataManagementPackageEntityData>")
    lines += ["  </PackageEntityList>", "</DataManagementPackageManifest>"]
    return "\r\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reader


class PackageReader:
    """Open a DMF package, validate it as D365 does on import, and stream its rows.

    `name` only shapes error messages: D365 names its temp folder after the execution.
    """

    def __init__(
        self,
        source: PathOrFile,
        resolve: Callable[[str], EntitySet | None],
        *,
        name: str | None = None,
    ) -> None:
        self._name = name or EXECUTION_PLACEHOLDER
        try:
            self._zip = zipfile.ZipFile(source)
        except zipfile.BadZipFile:
            raise PackageError(self._missing(HEADER_NAME)) from None
        self._plans: dict[PackageEntity, _EntityPlan] = {}
        try:
            self._open(resolve)
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def definition_group(self) -> str:
        return self._definition_group

    @property
    def description(self) -> str:
        return self._description

    @property
    def entities(self) -> list[PackageEntity]:
        """Entities in execution order (execution unit, level, sequence)."""
        return list(self._entities)

    def _missing(self, file_name: str) -> str:
        return f"Could not find file '{_TEMP_DIR}\\{self._name}\\{file_name}'."

    def _open(self, resolve: Callable[[str], EntitySet | None]) -> None:
        members = [i.filename for i in self._zip.infolist() if not i.is_dir()]
        # Windows paths are case-insensitive; the XML files must sit at the root, so a zipped
        # folder fails like it does in D365.
        root = {m.casefold(): m for m in reversed(members) if "/" not in m and "\\" not in m}
        if HEADER_NAME.casefold() not in root:
            raise PackageError(self._missing(HEADER_NAME))
        if MANIFEST_NAME.casefold() not in root:
            raise PackageError(self._missing(MANIFEST_NAME))
        manifest = _parse_manifest(self._zip.read(root[MANIFEST_NAME.casefold()]))
        self._definition_group = _text(manifest, "DefinitionGroupName")
        self._description = _text(manifest, "Description")

        by_file: dict[str, list[str]] = {}
        for member in members:
            by_file.setdefault(_file_name(member).casefold(), []).append(member)

        ordered: list[tuple[tuple[int, int, int], PackageEntity, _EntityPlan]] = []
        items = _items(manifest, "PackageEntityList", "DataManagementPackageEntityData")
        for index, item in enumerate(items, start=1):
            label = _text(item, "EntityName")
            entity = resolve(label)
            if entity is None:
                raise PackageError(f"Entity '{label}' is not found.")
            input_file_path = _text(item, "InputFilePath")
            data_member = _find_member(by_file, input_file_path)
            if data_member is None:
                raise PackageError(self._missing(_file_name(input_file_path)))
            columns = _entity_map(item, entity, label)
            key = (
                _int(item, "ExecutionUnit", 1, label),
                _int(item, "LevelInExecutionUnit", 1, label),
                _int(item, "SequenceInLevel", index, label),
            )
            package_entity = PackageEntity(
                label=label,
                entity=entity,
                input_file_path=input_file_path,
                fields=tuple(column.upper() for column in columns),
                sequence=key[2],
            )
            ordered.append((key, package_entity, _EntityPlan(data_member, columns)))
        ordered.sort(key=lambda entry: entry[0])
        self._entities = [package_entity for _, package_entity, _ in ordered]
        self._plans = {package_entity: plan for _, package_entity, plan in ordered}

    def iter_rows(self, package_entity: PackageEntity) -> Iterator[dict[str, str]]:
        """Rows of one entity as raw strings keyed by entity field name, decoded lazily.

        The BOM and the header row are checked before this returns, so a bad file raises
        PackageError here rather than on the first next().
        """
        plan = self._plans.get(package_entity)
        if plan is None:
            raise ValueError(f"entity '{package_entity.label}' is not in this package")
        raw = self._zip.open(plan.member)
        try:
            encoding = _UTF16_BOMS.get(raw.read(2))
            if encoding is None:
                raise PackageError(_not_unicode(plan.member))
            text = io.TextIOWrapper(raw, encoding=encoding, newline="")
            reader = csv.reader(text)
            header = _next_record(reader, plan.member)
            if header is None:
                raw.close()
                return iter(())
            positions = self._header_positions(package_entity, plan, header)
        except BaseException:
            raw.close()
            raise
        return _rows(text, reader, positions, len(header), plan.member)

    def _header_positions(
        self, package_entity: PackageEntity, plan: _EntityPlan, header: list[str]
    ) -> list[tuple[int, str]]:
        entity = package_entity.entity
        known = {name.casefold() for name in entity.field_names} | plan.columns.keys()
        seen: set[str] = set()
        positions: list[tuple[int, str]] = []
        for index, column in enumerate(header):
            key = column.strip().casefold()
            if key not in known:
                raise PackageError(
                    f"Column '{column.strip()}' in file '{_file_name(plan.member)}' does not"
                    f" exist in entity '{package_entity.label}'."
                )
            if key in seen:
                raise PackageError(
                    f"Column '{column.strip()}' appears more than once in file"
                    f" '{_file_name(plan.member)}'."
                )
            seen.add(key)
            if key in plan.columns:
                positions.append((index, plan.columns[key]))
        # D365 stages nothing for an entity whose manifest maps no fields.
        return positions


def _rows(
    text: IO[str],
    reader: _reader,
    positions: list[tuple[int, str]],
    width: int,
    member: str,
) -> Iterator[dict[str, str]]:
    with text:
        if not positions:
            return
        while (record := _next_record(reader, member)) is not None:
            if not record or (len(record) == 1 and width > 1 and not record[0].strip()):
                continue  # blank lines, typically the one after the last CRLF
            if len(record) != width:
                line = reader.line_num
                raise PackageError(
                    f"Line {line} of file '{_file_name(member)}' has {len(record)} columns;"
                    f" the header has {width}."
                )
            yield {name: record[index] for index, name in positions}


def _next_record(reader: _reader, member: str) -> list[str] | None:
    try:
        return next(reader, None)
    except UnicodeDecodeError:
        raise PackageError(_not_unicode(member)) from None
    except csv.Error as exc:
        line = reader.line_num
        raise PackageError(
            f"Line {line} of file '{_file_name(member)}' could not be read: {exc}."
        ) from None


def _not_unicode(member: str) -> str:
    return f"Selected file is not Unicode: '{_file_name(member)}'."


def _file_name(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


def _find_member(by_file: dict[str, list[str]], input_file_path: str) -> str | None:
    candidates = by_file.get(_file_name(input_file_path).casefold(), [])
    wanted = input_file_path.replace("\\", "/").casefold()
    for member in candidates:
        if member.replace("\\", "/").casefold() == wanted:
            return member
    return candidates[0] if candidates else None


def _parse_manifest(data: bytes) -> ET.Element:
    try:
        if data.startswith(codecs.BOM_UTF16_LE):
            text = data[2:].decode("utf-16-le")
        elif data.startswith(codecs.BOM_UTF16_BE):
            text = data[2:].decode("utf-16-be")
        elif data.startswith(b"<\x00"):
            text = data.decode("utf-16-le")
        else:
            text = data.decode("utf-8-sig")
        root = ET.fromstring(text)
    except (UnicodeDecodeError, ET.ParseError) as exc:
        raise PackageError(f"{_deserialize_error()} {exc}") from None
    if _local(root.tag) != "DataManagementPackageManifest":
        raise PackageError(f"{_deserialize_error()} Unexpected root element '{_local(root.tag)}'.")
    return root


def _deserialize_error() -> str:
    return f"There was an error deserializing the object of type {MANIFEST_TYPE}."


def _entity_map(item: ET.Element, entity: EntitySet, label: str) -> dict[str, str]:
    fields = {name.casefold(): name for name in entity.field_names}
    columns: dict[str, str] = {}
    for entry in _items(item, "EntityMapList", "EntityMap"):
        entity_field = _text(entry, "EntityField")
        real = fields.get(entity_field.casefold())
        if real is None:
            raise PackageError(
                f"Field '{entity_field}' in the mapping of entity '{label}' does not exist."
            )
        columns[(_text(entry, "XMLField") or entity_field).casefold()] = real
    return columns


def _int(item: ET.Element, name: str, default: int, label: str) -> int:
    text = _text(item, name)
    if not text:
        return default
    if not _INTEGER.fullmatch(text):
        raise PackageError(f"{name} '{text}' of entity '{label}' is not a number.")
    return int(text)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# Match by local name: hand-made manifests sometimes drop the namespace, and D365 clients
# such as RIS query them namespace-free (//EntityName).
def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _items(element: ET.Element, list_name: str, item_name: str) -> list[ET.Element]:
    """The items of a list element such as PackageEntityList (none when it is absent or nil)."""
    parent = _child(element, list_name)
    return [] if parent is None else _children(parent, item_name)


def _text(element: ET.Element, name: str) -> str:
    child = _child(element, name)
    return "" if child is None or child.text is None else child.text.strip()
