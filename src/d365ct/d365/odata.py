"""Reads D365 entity sets over OData: follows @odata.nextLink page by page, so memory stays flat.

A legal entity is targeted with `cross-company=true` plus a dataAreaId filter, as D365 requires.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import httpx

from d365ct.d365.http import D365Http, odata_error_message
from d365ct.errors import PermanentError


def decode(response: httpx.Response) -> Any:
    """JSON with Edm.Decimal values as Decimal: quantities and prices never pass through float."""
    return json.loads(response.content, parse_float=Decimal)


def quote_literal(value: str) -> str:
    """An OData string literal: single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def key_segment(key: Mapping[str, object]) -> str:
    parts = []
    for name, value in key.items():
        literal = quote_literal(value) if isinstance(value, str) else str(value)
        parts.append(f"{name}={literal}")
    return "(" + ",".join(parts) + ")"


class ODataReader:
    def __init__(self, http: D365Http) -> None:
        self.http = http
        self.calls = 0  # requests made, for progress reports and benchmarks

    @staticmethod
    def query(
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        legal_entity: str | None = None,
        cross_company: bool = False,
        orderby: str | None = None,
        top: int | None = None,
    ) -> dict[str, str]:
        params: dict[str, str] = {}
        clauses = [f"({filter})"] if filter else []
        if legal_entity is not None:
            clauses.insert(0, f"dataAreaId eq {quote_literal(legal_entity.lower())}")
            cross_company = True  # without it D365 only serves the user's default company
        if cross_company:
            params["cross-company"] = "true"
        if clauses:
            params["$filter"] = " and ".join(clauses)
        if select:
            params["$select"] = ",".join(select)
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        return params

    async def pages(self, entity_set: str, **options: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """Each server page as a list; the next page is requested only when asked for."""
        url: str | None = f"data/{entity_set}"
        params: dict[str, str] | None = self.query(**options)
        while url is not None:
            response = await self.http.request("GET", url, params=params)
            self.calls += 1
            if response.status_code != 200:
                raise PermanentError(
                    f"reading {entity_set} failed ({response.status_code}): "
                    f"{odata_error_message(response)}"
                )
            body = decode(response)
            yield list(body.get("value", []))
            url, params = body.get("@odata.nextLink"), None  # the link carries the query

    async def rows(self, entity_set: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
        async for page in self.pages(entity_set, **options):
            for row in page:
                yield row

    async def count(self, entity_set: str, **options: Any) -> int:
        params = self.query(**options)
        response = await self.http.request("GET", f"data/{entity_set}/$count", params=params)
        self.calls += 1
        if response.status_code != 200:
            raise PermanentError(
                f"counting {entity_set} failed ({response.status_code}): "
                f"{odata_error_message(response)}"
            )
        return int(response.text.strip().lstrip("\ufeff"))

    async def get(
        self, entity_set: str, key: Mapping[str, object], *, cross_company: bool = True
    ) -> dict[str, Any] | None:
        """One entity by its full key, or None when D365 answers 404."""
        params = {"cross-company": "true"} if cross_company else None
        response = await self.http.request(
            "GET", f"data/{entity_set}{key_segment(key)}", params=params
        )
        self.calls += 1
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PermanentError(
                f"reading {entity_set}{key_segment(key)} failed ({response.status_code}): "
                f"{odata_error_message(response)}"
            )
        return dict(decode(response))
