"""DMF data packages: writes import packages within a size limit and reads exported ones.

Both directions stream rows; the format is D365's (`reference/d365-fo-apis.md` §4).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO, Self
from xml.sax.saxutils import escape

from d365ct.d365.entities import EntityDefinition
from d365ct.errors import PermanentError

if TYPE_CHECKING:
    from _csv import _reader

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PackageEntity",
    "PackageError",
    "PackageFormatError",
    "PackageReader",
    "PackageTooLargeError",
    "PackageWriter",
    "Unit",
    "WrittenPackage",
    "format_value",
    "open_package",
]

DMF_NAMESPACE = "http://schemas.microsoft.com/dynamics/2015/01/DataManagement"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
MANIFEST_NAME = "Manifest.xml"
HEADER_NAME = "PackageHeader.xml"
SOURCE_FORMAT = "CSV-Unicode"
MANIFEST_TYPE = (
    "Microsoft.Dynamics.AX.Framework.Tools.DataManagement.Serialization."
    "DataManagementPackageManifest"
)
PACKAGE_VERSION = "2"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024

# A unit is rows that must land in the same package, e.g. one order header with its lines.
Unit = Sequence[tuple[EntityDefinition, Mapping[str, object]]]


class PackageError(PermanentError):
    """A DMF package d365ct cannot write or read; retrying the same input fails the same way."""


class PackageFormatError(PackageError):
    """A file that is not a DMF package of the expected shape (zip, manifest, CSV-Unicode)."""


class PackageTooLargeError(PackageError):
    """A unit of rows that alone exceeds the package size limit."""


# ---------------------------------------------------------------------------------------------
# Values


def format_value(value: object) -> str:
    """Render a value as text in a CSV-Unicode data file.

    None is empty; Decimal and int use plain notation; aware datetimes become UTC
    'YYYY-MM-DDTHH:MM:SSZ' (D365 keeps whole seconds); a date becomes noon UTC of that day,
    as D365 itself renders date-only fields, so no time zone from UTC-12 to UTC+12 moves it to
    another day; bool is Yes/No (D365's NoYes enum). float is refused: money never passes
    through binary floating point.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return str.__str__(value)  # a str-based enum member as its value, not 'Class.MEMBER'
    if isinstance(value, bool):  # before int: bool is an int
        return "Yes" if value else "No"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number D365 can store")
        # 'f' keeps the exact digits and scale and never uses an exponent; -0 would read oddly.
        return format(abs(value) if value.is_zero() else value, "f")
    if isinstance(value, float):
        raise TypeError(f"float {value!r} refused: pass a Decimal or int (money never as float)")
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused: give it a time zone")
        return _utc_text(value.astimezone(UTC))
    if isinstance(value, date):
        return _utc_text(datetime(value.year, value.month, value.day, 12, tzinfo=UTC))
    raise TypeError(f"cannot write a {type(value).__name__} to a data file")


def _utc_text(value: datetime) -> str:
    # strftime('%Y') does not zero-pad years below 1000 on every platform.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


# ---------------------------------------------------------------------------------------------
# XML


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name}/>"


def _header_xml(description: str) -> str:
    # DataContractSerializer writes no declaration, no indentation, elements in name order.
    return (
        f'<DataManagementPackageHeader xmlns:i="{XSI_NAMESPACE}" xmlns="{DMF_NAMESPACE}">'
        + _element("Description", description)
        + _element("ManifestType", MANIFEST_TYPE)
        + _element("PackageType", "DefinitionGroup")
        + _element("PackageVersion", PACKAGE_VERSION)
        + "</DataManagementPackageHeader>"
    )


def _entity_map(column: str) -> str:
    return (
        "<EntityMap>"
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


def _manifest_xml(
    definition_group: str, description: str, entities: Sequence[EntityDefinition]
) -> str:
    parts = [
        f'<DataManagementPackageManifest xmlns:i="{XSI_NAMESPACE}" xmlns="{DMF_NAMESPACE}">',
        _element("DefinitionGroupName", definition_group),
        _element("Description", description),
        "<PackageEntityList>",
    ]
    # One execution unit and level; SequenceInLevel follows the given order, so headers are
    # imported before the lines that refer to them.
    for sequence, entity in enumerate(entities, start=1):
        parts += [
            "<DataManagementPackageEntityData>",
            _element("DefaultRefreshType", "FullPush"),
            _element("Disable", "false"),
            "<EntityMapList>",
            *(_entity_map(column) for column in entity.columns),
            "</EntityMapList>",
            _element("EntityName", entity.label),
            '<EntityTransformList i:nil="true"/>',
            _element("ExcelSheetName", ""),
            _element("ExecutionUnit", "1"),
            _element("FailExecutionUnitOnError", "false"),
            _element("FailLevelOnError", "false"),
            _element("InputFilePath", _data_file_name(entity)),
            _element("LevelInExecutionUnit", "1"),
            _element("RunBusinessLogic", "true"),
            _element("RunBusinessValidation", "true"),
            _element("SampleFilePath", ""),
            _element("SequenceInLevel", str(sequence)),
            _element("SkipStaging", "false"),
            _element("SourceFormat", SOURCE_FORMAT),
            _element("ValidationStatus", "Yes"),
            "</DataManagementPackageEntityData>",
        ]
    parts += ["</PackageEntityList>", "</DataManagementPackageManifest>"]
    return "".join(parts)


def _utf16(text: str) -> bytes:
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")


def _data_file_name(entity: EntityDefinition) -> str:
    return entity.label + ".csv"


# ---------------------------------------------------------------------------------------------
# Writer

# Deflate exactly as zipfile does for ZIP_DEFLATED, so sizes measured here are the sizes the
# zip members get (deflate output does not depend on how the input is chunked).
_DEFLATE_ARGS = (zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
_CHUNK = 64 * 1024  # bounds memory while copying a spool into the zip
# Zip bookkeeping, rounded up: local header (30) + central directory entry (46) + zip64 extras
# (20 + 28) + a data descriptor (24), plus the name twice; the end records with zip64 (98).
_MEMBER_OVERHEAD = 160
_END_OVERHEAD = 128


def _compressor() -> zlib._Compress:
    return zlib.compressobj(*_DEFLATE_ARGS)


def _deflated_size(data: bytes) -> int:
    compressor = _compressor()
    return len(compressor.compress(data)) + len(compressor.flush())


def _member_overhead(name: str) -> int:
    return _MEMBER_OVERHEAD + 2 * len(name.encode("utf-8"))


_ZipTime = tuple[int, int, int, int, int, int]


def _zip_info(name: str, date_time: _ZipTime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16  # what ZipFile.writestr gives a member: rw for the owner
    return info


def _growth_bound(raw: int) -> int:
    """A generous bound on how much `raw` more input bytes can grow a finished deflate stream.

    Deflate never emits a block larger than its input plus 5 bytes per 64 KiB; doubling and the
    constant leave room for the re-encoding of the stream's tail when more input follows it.
    _finish checks the real size as well.
    """
    return 0 if raw == 0 else 2 * raw + 1024


@dataclass(frozen=True)
class WrittenPackage:
    """One package file written by PackageWriter."""

    path: Path
    size: int  # bytes on disk, at most the writer's max_bytes
    rows: Mapping[str, int]  # rows per entity label, every entity of the package listed
    units: int
    first_unit: int  # index of the package's first unit in the input, counted from 0
    last_unit: int  # index of its last unit (inclusive)


class _Spool:
    """One entity's data file of an open package, deflated into a temporary file as it grows.

    Tracks the exact size the finished member would have (`settled`) as of the last exact
    measurement, and the raw bytes added since (`pending`), so most size checks are arithmetic.
    """

    def __init__(self, entity: EntityDefinition, directory: Path, header: bytes) -> None:
        self.entity = entity
        self.name = _data_file_name(entity)
        # Closed by close(): the spool lives as long as its package is open.
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        self.compressor = _compressor()
        self.raw = 0
        self.emitted = 0
        self.rows = 0
        self.pending = 0
        self.feed(header)
        self.settled = self.exact_with(b"")
        self.pending = 0

    def feed(self, data: bytes) -> None:
        out = self.compressor.compress(data)
        self.file.write(out)
        self.emitted += len(out)
        self.raw += len(data)
        self.pending += len(data)

    def bound_with(self, added: int) -> int:
        return self.settled + _growth_bound(self.pending + added)

    def exact_with(self, data: bytes) -> int:
        """The member's compressed size if `data` were added and the stream finished now."""
        probe = self.compressor.copy()
        return self.emitted + len(probe.compress(data)) + len(probe.flush())

    def write_member(self, archive: zipfile.ZipFile, date_time: _ZipTime) -> None:
        out = self.compressor.flush()
        self.file.write(out)
        self.emitted += len(out)
        info = _zip_info(self.name, date_time)
        # Known up front, so zipfile adds zip64 extras only when the member needs them.
        info.file_size = self.raw
        self.file.seek(0)
        inflater = zlib.decompressobj(-15)
        with archive.open(info, "w") as member:
            while chunk := self.file.read(_CHUNK):
                # Bounded inflation: 64 KiB of deflate can hold 64 MiB of repeats.
                while chunk:
                    member.write(inflater.decompress(chunk, _CHUNK))
                    chunk = inflater.unconsumed_tail
            while data := inflater.decompress(b"", _CHUNK):
                member.write(data)
            member.write(inflater.flush())

    def close(self) -> None:
        self.file.close()


@dataclass
class _OpenPackage:
    spools: list[_Spool]
    fixed: int  # exact or bounded bytes besides the data members' deflated content
    first_unit: int = -1
    last_unit: int = -1
    units: int = 0
    spool_by_entity: dict[EntityDefinition, _Spool] = field(init=False)

    def __post_init__(self) -> None:
        self.spool_by_entity = {spool.entity: spool for spool in self.spools}

    def try_add(
        self, index: int, encoded: Mapping[EntityDefinition, tuple[bytes, int]], limit: int
    ) -> int:
        """Add a unit if the package stays within `limit`; return the size it would reach.

        The cheap bound decides most units; near the limit each spool's compressor is copied
        and finished to measure exactly, which costs a copy of its state (about 256 KiB).
        """
        data = {self.spool_by_entity[entity]: text for entity, (text, _) in encoded.items()}
        bound = self.fixed + sum(s.bound_with(len(data.get(s, b""))) for s in self.spools)
        exact: dict[_Spool, int] = {}
        size = bound
        if bound > limit:
            exact = {
                s: s.exact_with(data.get(s, b"")) for s in self.spools if s in data or s.pending
            }
            size = self.fixed + sum(exact.get(s, s.settled) for s in self.spools)
            if size > limit:
                return size
        for entity, (text, rows) in encoded.items():
            spool = self.spool_by_entity[entity]
            spool.feed(text)
            spool.rows += rows
        for spool, settled in exact.items():
            spool.settled = settled
            spool.pending = 0
        if self.units == 0:
            self.first_unit = index
        self.last_unit = index
        self.units += 1
        return size

    def close(self) -> None:
        for spool in self.spools:
            spool.close()


class PackageWriter:
    """Streams rows into DMF import packages of at most `max_bytes` each.

    Every package holds a data file for each of the entities given to a write call, in that
    order, even when a package has no rows for one of them. Files are named
    `<name_prefix>-0001.zip`, numbered across calls; an existing file is never overwritten.
    A writer reuses its CSV buffer between rows, so it serves one thread at a time.
    """

    def __init__(
        self,
        directory: Path,
        *,
        definition_group: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        name_prefix: str = "package",
        description: str | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.directory = Path(directory)
        self.definition_group = definition_group
        self.description = description or definition_group
        self.max_bytes = max_bytes
        self.name_prefix = name_prefix
        self._sequence = 0
        self._line = io.StringIO()
        self._csv = csv.writer(self._line, lineterminator="\r\n")
        self._encoder = codecs.getincrementalencoder("utf-16-le")()

    def write_rows(
        self, entity: EntityDefinition, rows: Iterable[Mapping[str, object]]
    ) -> list[WrittenPackage]:
        """Write one entity's rows, each row its own unit, into as many packages as needed."""
        return self.write_units([entity], ([(entity, row)] for row in rows))

    def write_units(
        self, entities: Sequence[EntityDefinition], units: Iterable[Unit]
    ) -> list[WrittenPackage]:
        """Write units of rows into packages, never splitting a unit across two packages.

        `entities` fixes the manifest order (import order). Units are consumed lazily, one at a
        time. A unit that alone exceeds max_bytes raises PackageTooLargeError; a value that
        cannot be written raises TypeError or ValueError noting the unit. On any error the
        packages this call wrote are deleted again.
        """
        entities = list(entities)
        if not entities:
            raise ValueError("a package needs at least one entity")
        if len({entity.label.casefold() for entity in entities}) != len(entities):
            raise ValueError("an entity appears more than once in the package")
        self.directory.mkdir(parents=True, exist_ok=True)
        fixed = self._fixed_size(entities)
        written: list[WrittenPackage] = []
        current: _OpenPackage | None = None
        try:
            for index, unit in enumerate(units):
                try:
                    encoded = self._encode(entities, unit)
                except (TypeError, ValueError) as exc:
                    exc.add_note(f"in unit {index} ({_describe(unit)})")
                    raise
                if current is None:
                    current = self._open(entities, fixed)
                size = current.try_add(index, encoded, self.max_bytes)
                if size > self.max_bytes and current.units:
                    written.append(self._finish(current, entities))
                    current.close()
                    current = self._open(entities, fixed)
                    size = current.try_add(index, encoded, self.max_bytes)
                if size > self.max_bytes:
                    raise PackageTooLargeError(
                        f"unit {index} ({_describe(unit)}) needs {size} bytes as a package, more"
                        f" than the limit of {self.max_bytes} bytes; raise the package size limit"
                        " or split the unit"
                    )
            if current is not None and current.units:
                written.append(self._finish(current, entities))
        except BaseException:
            for package in written:
                package.path.unlink(missing_ok=True)
            raise
        finally:
            if current is not None:
                current.close()
        return written

    def _fixed_size(self, entities: Sequence[EntityDefinition]) -> int:
        manifest = self._manifest(entities)
        header = _utf16(_header_xml(self.description))
        return (
            _deflated_size(manifest)
            + _deflated_size(header)
            + _member_overhead(MANIFEST_NAME)
            + _member_overhead(HEADER_NAME)
            + sum(_member_overhead(_data_file_name(entity)) for entity in entities)
            + _END_OVERHEAD
        )

    def _manifest(self, entities: Sequence[EntityDefinition]) -> bytes:
        return _utf16(_manifest_xml(self.definition_group, self.description, entities))

    def _open(self, entities: Sequence[EntityDefinition], fixed: int) -> _OpenPackage:
        spools: list[_Spool] = []
        try:
            for entity in entities:
                header = codecs.BOM_UTF16_LE + self._encoder.encode(self._csv_line(entity.columns))
                spools.append(_Spool(entity, self.directory, header))
        except BaseException:
            for spool in spools:
                spool.close()
            raise
        return _OpenPackage(spools, fixed)

    def _csv_line(self, values: Iterable[str]) -> str:
        self._line.seek(0)
        self._line.truncate()
        self._csv.writerow(values)
        return self._line.getvalue()

    def _encode(
        self, entities: Sequence[EntityDefinition], unit: Unit
    ) -> dict[EntityDefinition, tuple[bytes, int]]:
        """The unit's rows as UTF-16 CSV lines per entity, with the number of rows."""
        lines: dict[EntityDefinition, list[str]] = {}
        for entity, row in unit:
            if entity not in entities:
                raise ValueError(f"entity '{entity.label}' is not one of this package's entities")
            unknown = [name for name in row if name not in entity.fields]
            if unknown:
                raise ValueError(f"'{entity.label}' has no field {unknown[0]!r}")
            values: list[str] = []
            for name in entity.fields:
                try:
                    values.append(format_value(row.get(name)))
                except (TypeError, ValueError) as exc:
                    exc.add_note(f"field {name} of '{entity.label}'")
                    raise
            lines.setdefault(entity, []).append(self._csv_line(values))
        return {
            entity: (self._encoder.encode("".join(texts)), len(texts))
            for entity, texts in lines.items()
        }

    def _finish(
        self, package: _OpenPackage, entities: Sequence[EntityDefinition]
    ) -> WrittenPackage:
        path, file = self._new_file()
        now = time.localtime()
        date_time = (now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)
        try:
            with file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
                for spool in package.spools:
                    spool.write_member(archive, date_time)
                for name, data in (
                    (MANIFEST_NAME, self._manifest(entities)),
                    (HEADER_NAME, _utf16(_header_xml(self.description))),
                ):
                    archive.writestr(_zip_info(name, date_time), data)
            size = path.stat().st_size
            if size > self.max_bytes:
                # The estimate is exact or above by construction; reaching this is a bug.
                raise PackageTooLargeError(
                    f"package {path.name} came out at {size} bytes, over the limit of"
                    f" {self.max_bytes} bytes, although its size was checked while writing"
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return WrittenPackage(
            path=path,
            size=size,
            rows={spool.entity.label: spool.rows for spool in package.spools},
            units=package.units,
            first_unit=package.first_unit,
            last_unit=package.last_unit,
        )

    def _new_file(self) -> tuple[Path, BinaryIO]:
        """The next numbered package file, created exclusively: never overwrites a package."""
        while True:
            self._sequence += 1
            path = self.directory / f"{self.name_prefix}-{self._sequence:04d}.zip"
            try:
                return path, open(path, "xb")
            except FileExistsError:
                continue


def _describe(unit: Unit) -> str:
    """Name a unit by its first row's keys, so an error points at a business record."""
    if not unit:
        return "no rows"
    entity, row = unit[0]
    keys = ", ".join(f"{key}={row.get(key)!s}" for key in entity.keys if key != "dataAreaId")
    return f"{entity.label} {keys or '(no keys)'}, {len(unit)} rows"


# ---------------------------------------------------------------------------------------------
# Reader


@dataclass(frozen=True)
class PackageEntity:
    """One entity of a package's manifest."""

    label: str  # EntityName
    input_file: str  # InputFilePath
    fields: tuple[str, ...]  # the entity map's file columns (XMLField), as written


class PackageReader:
    """An open DMF package (usually an export), whose rows are read lazily.

    Checks the zip, the manifest and that every data file is present when opened; each data
    file's encoding and header when its rows are requested.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        self._name = os.fspath(source) if isinstance(source, str | os.PathLike) else "package"
        try:
            self._zip = zipfile.ZipFile(source)
        except zipfile.BadZipFile:
            raise PackageFormatError(
                f"{self._name} is not a zip file, so not a DMF package"
            ) from None
        try:
            self._load_manifest()
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
    def entities(self) -> tuple[PackageEntity, ...]:
        """The manifest's entities, in manifest order."""
        return tuple(self._members)

    def entity(self, label: str) -> PackageEntity:
        """The package entity with this label (case-insensitive, as D365 matches labels)."""
        wanted = label.strip().casefold()
        for entity in self._members:
            if entity.label.casefold() == wanted:
                return entity
        present = ", ".join(f"'{e.label}'" for e in self._members) or "none"
        raise PackageFormatError(
            f"{self._name} has no entity '{label}' (it has {present}); check the data project"
        )

    def rows(
        self, label: str, *, definition: EntityDefinition | None = None
    ) -> Iterator[dict[str, str]]:
        """Stream the rows of one entity's data file as text, decoded as they are read.

        Without `definition` rows are keyed by the file's column names (uppercase). With it,
        by the definition's field names; columns it does not list are dropped, and a file
        lacking one of its key fields is refused. A field the file lacks is absent from rows.
        The encoding and the header are checked before this returns.
        """
        entity = self.entity(label)
        member = self._members[entity]
        raw = self._zip.open(member)
        try:
            bom = raw.read(2)
            if bom not in _UTF16_BOMS:
                raise PackageFormatError(
                    f"data file '{member}' in {self._name} is not UTF-16 (no byte order mark);"
                    f" export it with source format {SOURCE_FORMAT}"
                )
            text = io.TextIOWrapper(raw, encoding=_UTF16_BOMS[bom], newline="")
            reader = csv.reader(text)
            header = _next_record(reader, member)
            if header is None:
                text.close()
                return iter(())
            positions = _positions(header, definition, member)
        except BaseException:
            raw.close()
            raise
        return _rows(text, reader, positions, len(header), member)

    def _load_manifest(self) -> None:
        members = [info.filename for info in self._zip.infolist() if not info.is_dir()]
        # Zips made on Windows may use either slash and any case; D365 does not mind either.
        by_file: dict[str, str] = {}
        for name in members:
            by_file.setdefault(_file_name(name).casefold(), name)
        manifest_member = by_file.get(MANIFEST_NAME.casefold())
        if manifest_member is None:
            raise PackageFormatError(f"{self._name} has no {MANIFEST_NAME}, so is no DMF package")
        root = _parse_xml(self._zip.read(manifest_member), f"{MANIFEST_NAME} of {self._name}")
        self._definition_group = _text(root, "DefinitionGroupName")
        self._members: dict[PackageEntity, str] = {}
        for item in _items(root, "PackageEntityList", "DataManagementPackageEntityData"):
            label = _text(item, "EntityName")
            input_file = _text(item, "InputFilePath")
            fields = tuple(
                _text(entry, "XMLField") or _text(entry, "EntityField")
                for entry in _items(item, "EntityMapList", "EntityMap")
            )
            member = by_file.get(_file_name(input_file).casefold())
            if member is None:
                raise PackageFormatError(
                    f"{self._name}: data file '{input_file}' of entity '{label}', named by"
                    f" {MANIFEST_NAME}, is not in the package"
                )
            self._members[PackageEntity(label, input_file, fields)] = member


def open_package(source: str | os.PathLike[str] | BinaryIO) -> PackageReader:
    """Open a DMF package for reading; use it as a context manager to close it."""
    return PackageReader(source)


_UTF16_BOMS = {codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be"}


def _positions(
    header: list[str], definition: EntityDefinition | None, member: str
) -> list[tuple[int, str]]:
    """Pairs of (column index, key in the returned rows)."""
    folded = [column.casefold() for column in header]
    duplicates = sorted({c for c in header if folded.count(c.casefold()) > 1})
    if duplicates:
        raise PackageFormatError(f"data file '{member}' repeats columns {', '.join(duplicates)}")
    if definition is None:
        return list(enumerate(header))
    wanted = {name.casefold(): name for name in definition.fields}
    positions = [(i, wanted[c]) for i, c in enumerate(folded) if c in wanted]
    found = {name for _, name in positions}
    missing = [key.upper() for key in definition.keys if key not in found]
    if missing:
        raise PackageFormatError(
            f"data file '{member}' lacks the key columns {', '.join(missing)} of"
            f" '{definition.label}'; add them to the export project"
        )
    return positions


def _rows(
    text: IO[str], reader: _reader, positions: list[tuple[int, str]], width: int, member: str
) -> Iterator[dict[str, str]]:
    with text:
        while (record := _next_record(reader, member)) is not None:
            if not record:
                continue  # a blank line; the writer never produces one for a row
            if len(record) != width:
                raise PackageFormatError(
                    f"line {reader.line_num} of data file '{member}' has {len(record)} columns,"
                    f" its header {width}"
                )
            yield {name: record[index] for index, name in positions}


def _next_record(reader: _reader, member: str) -> list[str] | None:
    try:
        return next(reader, None)
    except UnicodeDecodeError as exc:
        raise PackageFormatError(f"data file '{member}' is not valid UTF-16: {exc}") from None
    except csv.Error as exc:
        raise PackageFormatError(
            f"line {reader.line_num} of data file '{member}' is not valid CSV: {exc}"
        ) from None


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rpartition("/")[2]


def _parse_xml(data: bytes, what: str) -> ET.Element:
    try:
        for bom, encoding in _UTF16_BOMS.items():
            if data.startswith(bom):
                return ET.fromstring(data[len(bom) :].decode(encoding))
        return ET.fromstring(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ET.ParseError) as exc:
        raise PackageFormatError(f"{what} is not readable XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# By local name: the DMF namespace is what D365 writes, but hand-made manifests drop it and
# D365 clients such as RIS query them without it.
def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((child for child in element if _local(child.tag) == name), None)


def _items(element: ET.Element, list_name: str, item_name: str) -> list[ET.Element]:
    parent = _child(element, list_name)
    return [] if parent is None else [c for c in parent if _local(c.tag) == item_name]


def _text(element: ET.Element, name: str) -> str:
    child = _child(element, name)
    return "" if child is None or child.text is None else child.text.strip()
