"""The DMF package API client: write URLs and uploads, import/export actions, status and errors.

It handles the real API's quirks: the JSON-string value of GetAzureWriteUrl, flat string values,
an empty GetExportedPackageUrl until the package is ready, transient 400s on early status polls.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from d365ct.d365.http import D365Http, odata_error_message
from d365ct.errors import PermanentError, TransientError

ACTIONS = "data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."
NOT_FOUND_MARKER = "Execution details were not found"
UPLOAD_ATTEMPTS = 3


class ExecutionStatus(StrEnum):
    """DMFExecutionSummaryStatus, as GetExecutionSummaryStatus names it."""

    UNKNOWN = "Unknown"
    NOT_RUN = "NotRun"
    EXECUTING = "Executing"
    SUCCEEDED = "Succeeded"
    PARTIALLY_SUCCEEDED = "PartiallySucceeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def final(self) -> bool:
        return self in (
            ExecutionStatus.SUCCEEDED,
            ExecutionStatus.PARTIALLY_SUCCEEDED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELED,
            ExecutionStatus.UNKNOWN,
        )


@dataclass(frozen=True)
class WriteUrl:
    blob_id: str
    blob_url: str


class DmfActionError(PermanentError):
    """D365 refused a DMF action; `reason` is D365's own message."""

    def __init__(self, action: str, status: int, reason: str) -> None:
        super().__init__(f"DMF {action} failed ({status}): {reason}")
        self.action = action
        self.status = status
        self.reason = reason


class DmfClient:
    def __init__(self, http: D365Http, *, download_client: httpx.AsyncClient | None = None) -> None:
        self.http = http
        # Package URLs carry their own SAS: downloads go without our bearer token.
        self._download = download_client or http.client

    async def _call(self, action: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.request("POST", ACTIONS + action, json=body)

    async def _value(self, action: str, body: dict[str, Any]) -> Any:
        response = await self._call(action, body)
        if response.status_code != 200:
            raise DmfActionError(action, response.status_code, odata_error_message(response))
        value = response.json().get("value")
        # The docs show {"value": {"value": …}}; real D365 answers flat. Accept both.
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        return value

    # -- upload --------------------------------------------------------------------------------
    async def get_azure_write_url(self, unique_file_name: str) -> WriteUrl:
        value = await self._value("GetAzureWriteUrl", {"uniqueFileName": unique_file_name})
        try:
            inner = json.loads(value) if isinstance(value, str) else value
            return WriteUrl(str(inner["BlobId"]), str(inner["BlobUrl"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(
                f"GetAzureWriteUrl answered an unexpected value: {value!r}"
            ) from exc

    async def upload_package(self, path: Path, unique_file_name: str) -> str:
        """Upload to a SAS URL fetched right before; on 403 (expired) fetch a new one and retry."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
        from azure.storage.blob.aio import BlobClient

        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            target = await self.get_azure_write_url(unique_file_name)
            blob = BlobClient.from_blob_url(target.blob_url, max_single_put_size=4 * 1024 * 1024)
            try:
                async with blob:
                    with path.open("rb") as stream:
                        await blob.upload_blob(stream, overwrite=True, blob_type="BlockBlob")
                return target.blob_url
            except (ClientAuthenticationError, HttpResponseError) as exc:
                if getattr(exc, "status_code", None) != 403 or attempt == UPLOAD_ATTEMPTS:
                    raise TransientError(
                        f"upload of {unique_file_name} to DMF storage failed: "
                        f"{str(exc).splitlines()[0]}"
                    ) from exc
        raise AssertionError("unreachable")

    # -- jobs ----------------------------------------------------------------------------------
    async def import_from_package(
        self,
        package_url: str,
        *,
        definition_group: str,
        legal_entity: str,
        execution_id: str = "",
        execute: bool = True,
        overwrite: bool = True,
    ) -> str:
        value = await self._value(
            "ImportFromPackage",
            {
                "packageUrl": package_url,
                "definitionGroupId": definition_group,
                "executionId": execution_id,
                "execute": execute,
                "overwrite": overwrite,
                "legalEntityId": legal_entity,
            },
        )
        return str(value)

    async def export_to_package(
        self,
        *,
        definition_group: str,
        legal_entity: str,
        package_name: str = "",
        execution_id: str = "",
        re_execute: bool = False,
    ) -> str:
        value = await self._value(
            "ExportToPackage",
            {
                "definitionGroupId": definition_group,
                "packageName": package_name or definition_group,
                "executionId": execution_id,
                "reExecute": re_execute,
                "legalEntityId": legal_entity,
            },
        )
        return str(value)

    async def status(self, execution_id: str) -> ExecutionStatus | None:
        """The job's status, or None while D365 does not (yet) know the execution id.

        Right after a job starts D365 may answer 400 "Execution details were not found";
        callers poll again and give up after their own limit.
        """
        response = await self._call("GetExecutionSummaryStatus", {"executionId": execution_id})
        if response.status_code == 400:
            return None
        if response.status_code != 200:
            raise DmfActionError(
                "GetExecutionSummaryStatus", response.status_code, odata_error_message(response)
            )
        value = str(response.json().get("value", ""))
        try:
            return ExecutionStatus(value)
        except ValueError:
            return ExecutionStatus.UNKNOWN

    async def exported_package_url(self, execution_id: str) -> str:
        """The package's SAS URL, or "" while D365 is still writing it."""
        return str(await self._value("GetExportedPackageUrl", {"executionId": execution_id}) or "")

    async def execution_errors(self, execution_id: str) -> list[str]:
        value = await self._value("GetExecutionErrors", {"executionId": execution_id})
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except ValueError:
                return [value]
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v) for v in value]
        return [str(value)] if value else []

    async def generate_error_keys_file(self, execution_id: str, entity: str) -> bool:
        value = await self._value(
            "GenerateImportTargetErrorKeysFile", {"executionId": execution_id, "entityName": entity}
        )
        return value is True or str(value).lower() == "true"

    async def error_keys_file_url(self, execution_id: str, entity: str) -> str:
        """ "" while the file is being generated or when there were no errors."""
        body = {"executionId": execution_id, "entityName": entity}
        return str(await self._value("GetImportTargetErrorKeysFileUrl", body) or "")

    async def staging_error_file_url(self, execution_id: str, entity: str) -> str:
        body = {"executionId": execution_id, "entityName": entity}
        return str(await self._value("GetImportStagingErrorFileUrl", body) or "")

    # -- files ---------------------------------------------------------------------------------
    async def download(self, url: str, dest: Path) -> int:
        """Stream a package or error file to disk; returns the bytes written."""
        written = 0
        try:
            async with self._download.stream("GET", url) as response:
                if response.status_code != 200:
                    raise TransientError(
                        f"download from DMF storage answered {response.status_code}"
                    )
                with dest.open("wb") as out:
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        out.write(chunk)
                        written += len(chunk)
        except httpx.TransportError as exc:
            raise TransientError(f"download from DMF storage failed: {exc}") from exc
        return written

    async def read_csv_file(self, url: str) -> list[dict[str, str]]:
        """A small CSV-Unicode file (error keys, staging errors) as rows keyed by its header."""
        response = await self._download.get(url)
        if response.status_code != 200:
            raise TransientError(f"download from DMF storage answered {response.status_code}")
        return parse_csv_unicode(response.content)


def parse_csv_unicode(data: bytes) -> list[dict[str, str]]:
    """UTF-16 with BOM (what D365 writes); UTF-8 tolerated for hand-made files."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    else:
        text = data.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))
