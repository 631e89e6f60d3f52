"""OData v4 routes under /data/: service document, $metadata, entity sets, single entities.

Query options, default company vs cross-company and server-driven paging follow D365 F&O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from d365sim.config import SimConfig
from d365sim.entities import (
    BY_NAME,
    DATETIME,
    DECIMAL,
    ENTITY_SETS,
    ENUMS,
    INT32,
    INT64,
    NAMESPACE,
    EntitySet,
    Field,
)
from d365sim.errors import ODATA_HEADERS, odata_error
from d365sim.odata_query import ODataQueryError, parse_filter, parse_orderby, parse_select, to_sql
from d365sim.store import EntityStore, StoreError, format_datetime, to_db

JSON_HEADERS = {**ODATA_HEADERS, "Content-Type": "application/json; odata.metadata=minimal"}
_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<key>.*)\))?$", re.S)


def json_value(value: object) -> object:
    if isinstance(value, Decimal):
        # .NET decimals serialize as JSON numbers; a double keeps every digit D365 stores here
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return format_datetime(value)
    return value


def render_row(row: Mapping[str, object], etag: str | None) -> dict[str, object]:
    body: dict[str, object] = {}
    if etag is not None:
        body["@odata.etag"] = etag
    body.update((name, json_value(value)) for name, value in row.items())
    return body


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status_code=status,
        headers={**JSON_HEADERS, **(headers or {})},
    )


class KeyError400(ValueError):
    """A malformed or incomplete key predicate."""


def parse_key(text: str, entity: EntitySet) -> dict[str, object]:
    """Parse `dataAreaId='usmf',CustomerAccount='US-001'` (or `'usmf'` for one key field)."""
    parts: list[tuple[str | None, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        match = re.match(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)\s*=\s*)?", text[pos:])
        name = match.group(1) if match else None
        pos += match.end() if match else 0
        if pos < n and text[pos] == "'":
            end, chunks = pos + 1, []
            while True:
                quote = text.find("'", end)
                if quote < 0:
                    raise KeyError400(f"Unterminated string in key '{text}'.")
                chunks.append(text[end:quote])
                if text.startswith("''", quote):
                    chunks.append("'")
                    end = quote + 2
                    continue
                pos = quote + 1
                break
            parts.append((name, "".join(chunks)))
        else:
            literal = re.match(r"[^,)]*", text[pos:])
            raw = literal.group(0).strip() if literal else ""
            pos += literal.end() if literal else 0
            parts.append((name, raw))
        pos += len(text[pos:]) - len(text[pos:].lstrip())
        if pos < n:
            if text[pos] != ",":
                raise KeyError400(f"Bad key segment '{text}'.")
            pos += 1
    if len(parts) == 1 and parts[0][0] is None and len(entity.keys) == 1:
        parts = [(entity.keys[0], parts[0][1])]
    values = {name: value for name, value in parts if name is not None}
    if len(values) != len(parts) or set(values) != set(entity.keys):
        raise KeyError400(
            "The number of keys specified in the URI does not match number of key properties "
            f"for the resource '{NAMESPACE}.{entity.type_name}'."
        )
    return {name: coerce(entity.field_by_name[name], str(value)) for name, value in values.items()}


def coerce(field: Field, value: object) -> object:
    """A JSON or key value → the Python value the store takes; ValueError when it does not fit."""
    if value is None:
        return None
    if field.type == DECIMAL:
        try:
            return Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(
                f"Cannot convert '{value}' to Edm.Decimal for '{field.name}'."
            ) from exc
    if field.type in (INT32, INT64):
        try:
            return int(str(value))
        except ValueError as exc:
            raise ValueError(
                f"Cannot convert '{value}' to {field.type} for '{field.name}'."
            ) from exc
    if field.type == DATETIME:
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"Cannot convert '{value}' to {DATETIME} for '{field.name}'.") from exc
    if field.is_enum:
        text = str(value)
        if "'" in text:  # Microsoft.Dynamics.DataEntities.NoYes'Yes'
            text = text.split("'")[1]
        for member in ENUMS[field.type]:
            if member.lower() == text.lower():
                return member
        raise ValueError(f"The value '{value}' is not valid for enum '{field.edm_type}'.")
    return str(value)


def metadata_xml(entities: Iterable[EntitySet]) -> str:
    """A CSDL document for the served sets (keys, properties, enums, one container)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
        "<edmx:DataServices>",
        f'<Schema Namespace="{NAMESPACE}" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
    ]
    for entity in entities:
        out.append(f'<EntityType Name="{entity.type_name}">')
        out.append("<Key>" + "".join(f'<PropertyRef Name="{k}"/>' for k in entity.keys) + "</Key>")
        for field in entity.fields:
            nullable = "false" if field.name in entity.keys else "true"
            attrs = f'Name="{field.name}" Type="{field.edm_type}" Nullable="{nullable}"'
            if field.max_length:
                attrs += f' MaxLength="{field.max_length}"'
            if field.type == DECIMAL:
                attrs += ' Precision="32" Scale="6"'
            out.append(f"<Property {attrs}/>")
        out.append("</EntityType>")
    for enum, members in ENUMS.items():
        out.append(f'<EnumType Name="{enum}">')
        out.extend(f'<Member Name="{m}" Value="{i}"/>' for i, m in enumerate(members))
        out.append("</EnumType>")
    out.append('<EntityContainer Name="Resources">')
    for entity in ENTITY_SETS:
        out.append(f'<EntitySet Name="{entity.name}" EntityType="{NAMESPACE}.{entity.type_name}"/>')
    out.append(
        '<EntitySet Name="DataManagementDefinitionGroups" '
        f'EntityType="{NAMESPACE}.DataManagementDefinitionGroup"/>'
    )
    out += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    return "\n".join(out)


def router(config: SimConfig, store: EntityStore) -> APIRouter:
    api = APIRouter()
    base = config.resource

    def unknown_set(request: Request) -> JSONResponse:
        return odata_error(
            404,
            f"No HTTP resource was found that matches the request URI '{request.url}'.",
            "No routing convention was found to select an action for the OData path with "
            "template '~/entityset'.",
        )

    def company_filter(request: Request, entity: EntitySet) -> tuple[str, list[object]]:
        cross = request.query_params.get("cross-company", "").lower() == "true"
        if not entity.company_scoped or cross:
            return "", []
        return '"dataAreaId" = ?', [config.default_company]

    @api.get("/data")
    @api.get("/data/")
    async def service_document() -> Response:
        return json_response(
            {
                "@odata.context": f"{base}/data/$metadata",
                "value": [
                    {"name": e.name, "kind": "EntitySet", "url": e.name} for e in ENTITY_SETS
                ],
            }
        )

    @api.get("/data/$metadata")
    async def metadata() -> Response:
        return Response(
            metadata_xml(ENTITY_SETS),
            media_type="application/xml",
            headers=ODATA_HEADERS,
        )

    def locate(request: Request, segment: str) -> tuple[EntitySet, dict[str, object] | None]:
        match = _SEGMENT.match(segment)
        entity = BY_NAME.get(match.group("name")) if match else None
        if match is None or entity is None:
            raise LookupError
        key_text = match.group("key")
        return entity, None if key_text is None else parse_key(key_text, entity)

    def in_company(request: Request, entity: EntitySet, row: Mapping[str, object]) -> bool:
        where, params = company_filter(request, entity)
        return not where or str(row.get("dataAreaId", "")).lower() == str(params[0]).lower()

    @api.get("/data/{segment}/$count")
    async def count_only(segment: str, request: Request) -> Response:
        try:
            entity, key = locate(request, segment)
        except LookupError:
            return unknown_set(request)
        if key is not None:
            return unknown_set(request)
        try:
            where, params = build_where(request, entity)
        except ODataQueryError as exc:
            return bad_query(exc)
        return Response(
            str(store.count(entity, where=where, params=params)),
            media_type="text/plain",
            headers=ODATA_HEADERS,
        )

    def bad_query(exc: Exception) -> JSONResponse:
        return odata_error(
            400,
            f"The query specified in the URI is not valid. {exc}",
            str(exc),
            "Microsoft.OData.ODataException",
        )

    def build_where(request: Request, entity: EntitySet) -> tuple[str, list[object]]:
        clauses, params = [], []
        company_where, company_params = company_filter(request, entity)
        if company_where:
            clauses.append(company_where)
            params += company_params
        filter_text = request.query_params.get("$filter")
        if filter_text:
            sql, filter_params = to_sql(parse_filter(filter_text, entity), entity)
            clauses.append(f"({sql})")
            params += filter_params
        return " AND ".join(clauses), params

    @api.get("/data/{segment}")
    async def read(segment: str, request: Request) -> Response:
        try:
            entity, key = locate(request, segment)
        except LookupError:
            return unknown_set(request)
        except KeyError400 as exc:
            return odata_error(400, str(exc))
        except ValueError as exc:
            return odata_error(400, str(exc))
        query = request.query_params
        try:
            select = parse_select(query["$select"], entity) if "$select" in query else None
            order_by = parse_orderby(query["$orderby"], entity) if "$orderby" in query else []
            skip = int(query.get("$skip", "0"))
            top = int(query["$top"]) if "$top" in query else None
            if skip < 0 or (top is not None and top < 0):
                raise ODataQueryError("$skip and $top must be non-negative integers.")
        except ValueError as exc:
            return bad_query(exc)
        context = f"{base}/data/$metadata#{entity.name}"
        if select is not None:
            context += f"({','.join(select)})"
        if key is not None:
            found = store.get(entity, key)
            if found is None or not in_company(request, entity, found[0]):
                return odata_error(
                    404,
                    "An error has occurred.",
                    f"Resource not found for the segment '{entity.name}'.",
                    "Microsoft.OData.ODataException",
                )
            row, tag = found
            if select is not None:
                row = {name: row[name] for name in select}
            return json_response(
                {"@odata.context": f"{context}/$entity", **render_row(row, tag)},
                headers={"ETag": tag},
            )
        try:
            where, params = build_where(request, entity)
        except ODataQueryError as exc:
            return bad_query(exc)
        page = config.page_size if top is None else min(top, config.page_size)
        rows = list(
            store.query(
                entity,
                where=where,
                params=params,
                order_by=order_by,
                skip=skip,
                top=page + 1,
                select=select,
            )
        )
        more = len(rows) > page
        rows = rows[:page]
        body: dict[str, Any] = {"@odata.context": context}
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = store.count(entity, where=where, params=params)
        body["value"] = [render_row(row, tag) for row, tag in rows]
        remaining = None if top is None else top - len(rows)
        if more and (remaining is None or remaining > 0):
            next_params = {k: v for k, v in query.items() if k not in ("$skip", "$top")}
            next_params["$skip"] = str(skip + len(rows))
            if remaining is not None:
                next_params["$top"] = str(remaining)
            body["@odata.nextLink"] = f"{base}/data/{entity.name}?{urlencode(next_params)}"
        return json_response(body)

    async def read_body(request: Request, entity: EntitySet) -> dict[str, object]:
        try:
            payload = await request.json()
        except ValueError as exc:
            raise ValueError("The request body is not valid JSON.") from exc
        if not isinstance(payload, dict):
            raise ValueError("The request body must be a JSON object.")
        row: dict[str, object] = {}
        for name, value in payload.items():
            if name.startswith("@odata."):
                continue
            field = entity.field_by_name.get(name)
            if field is None:
                raise ValueError(
                    f"The property '{name}' does not exist on type "
                    f"'{NAMESPACE}.{entity.type_name}'. Make sure to only use property names "
                    "that are defined by the type."
                )
            row[name] = coerce(field, value)
        return row

    @api.post("/data/{segment}")
    async def create(segment: str, request: Request) -> Response:
        try:
            entity, key = locate(request, segment)
        except (LookupError, ValueError):
            return unknown_set(request)
        if key is not None:
            return unknown_set(request)
        try:
            row = await read_body(request, entity)
        except ValueError as exc:
            return odata_error(400, str(exc))
        if entity.company_scoped and not row.get("dataAreaId"):
            row["dataAreaId"] = config.default_company
        missing = [k for k in entity.keys if row.get(k) in (None, "")]
        if missing:
            return odata_error(400, f"Key field(s) {', '.join(missing)} must have a value.")
        key_values = {k: row[k] for k in entity.keys}
        if store.get(entity, key_values) is not None:
            return odata_error(
                400,
                "An error has occurred.",
                f"Write failed for table row of type '{entity.type_name}'. Infolog: "
                f"Error: Cannot create a record in {entity.label}. The record already exists.",
            )
        try:
            store.upsert(entity, row, entity.keys)
        except StoreError as exc:
            return odata_error(400, "An error has occurred.", str(exc))
        created = store.get(entity, key_values)
        assert created is not None
        stored, tag = created
        return json_response(
            {
                "@odata.context": f"{base}/data/$metadata#{entity.name}/$entity",
                **render_row(stored, tag),
            },
            status=201,
            headers={"ETag": tag},
        )

    @api.put("/data/{segment}")
    @api.patch("/data/{segment}")
    async def update(segment: str, request: Request) -> Response:
        try:
            entity, key = locate(request, segment)
            if key is None:
                raise LookupError
        except (LookupError, ValueError):
            return unknown_set(request)
        found = store.get(entity, key)
        if found is None or not in_company(request, entity, found[0]):
            return odata_error(
                404,
                "An error has occurred.",
                f"Resource not found for the segment '{entity.name}'.",
            )
        try:
            row = await read_body(request, entity)
        except ValueError as exc:
            return odata_error(400, str(exc))
        changed_keys = [
            k
            for k in entity.keys
            if k in row
            and to_db(entity.field_by_name[k], row[k]) != to_db(entity.field_by_name[k], key[k])
        ]
        if changed_keys:
            return odata_error(400, f"Key field(s) {', '.join(changed_keys)} cannot be changed.")
        store.upsert(entity, {**row, **key}, entity.keys)
        return Response(status_code=204, headers=ODATA_HEADERS)

    @api.delete("/data/{segment}")
    async def remove(segment: str, request: Request) -> Response:
        try:
            entity, key = locate(request, segment)
            if key is None:
                raise LookupError
        except (LookupError, ValueError):
            return unknown_set(request)
        found = store.get(entity, key)
        if found is None or not in_company(request, entity, found[0]):
            return odata_error(
                404,
                "An error has occurred.",
                f"Resource not found for the segment '{entity.name}'.",
            )
        store.delete(entity, key)
        return Response(status_code=204, headers=ODATA_HEADERS)

    return api
