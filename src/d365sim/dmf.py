"""The DMF package REST API: OData actions bound to DataManagementDefinitionGroups.

Answers follow the reference: flat string values, the double-encoded GetAzureWriteUrl value.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlparse

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from d365sim.config import SimConfig
from d365sim.entities import BY_NAME, by_label
from d365sim.errors import action_error, odata_error
from d365sim.jobs import Execution, JobRunner, Status, new_execution_id
from d365sim.odata import json_response
from d365sim.packages import PackageError, PackageReader
from d365sim.projects import DataProject

PREFIX = "/data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."

Handler = Callable[[dict[str, Any]], Awaitable[Response]]


class MissingParameter(ValueError):
    pass


def _param(body: dict[str, Any], action: str, name: str) -> Any:
    if name not in body:
        raise MissingParameter(f"Missing the required parameter '{name}' for action '{action}'.")
    return body[name]


def router(config: SimConfig, runner: JobRunner) -> APIRouter:
    api = APIRouter()
    base = config.resource
    blobs = runner.blobs

    def value(result: object, edm: str = "Edm.String") -> Response:
        return json_response({"@odata.context": f"{base}/data/$metadata#{edm}", "value": result})

    def not_found(action: str, execution_id: str) -> JSONResponse:
        return action_error(
            action, f"Execution details were not found for execution id: {execution_id}"
        )

    def blob_name_from_url(url: str) -> str | None:
        path = unquote(urlparse(url).path)
        marker = f"/{config.blob_container}/"
        return path.split(marker, 1)[1] if marker in path else None

    async def get_azure_write_url(body: dict[str, Any]) -> Response:
        name = str(_param(body, "GetAzureWriteUrl", "uniqueFileName")).strip()
        if not name:
            return action_error("GetAzureWriteUrl", "The unique file name cannot be empty.")
        url = await run_in_threadpool(blobs.write_url, name, config.sas_seconds)
        blob_id = "{" + str(uuid.uuid4()).upper() + "}"
        # The value is itself a JSON document in a string: clients parse it twice.
        return value(json.dumps({"BlobId": blob_id, "BlobUrl": url}, separators=(",", ":")))

    async def import_from_package(body: dict[str, Any]) -> Response:
        action = "ImportFromPackage"
        package_url = str(_param(body, action, "packageUrl"))
        group = str(_param(body, action, "definitionGroupId")).strip()
        execution_id = str(body.get("executionId") or "").strip()
        execute = bool(body.get("execute", True))
        overwrite = bool(body.get("overwrite", False))
        legal_entity = str(body.get("legalEntityId") or config.default_company).lower()
        if not group:
            return action_error(action, "The data project name cannot be empty.")
        existing = runner.projects.get(group)
        if existing is not None and not overwrite:
            return action_error(
                action, f"The data project '{group}' exists and overwrite has not been specified."
            )
        blob = blob_name_from_url(package_url)
        if blob is None or not await run_in_threadpool(blobs.exists, blob):
            return action_error(action, f"Could not find file '{package_url}'.")
        now = datetime.now(UTC)
        execution_id = execution_id or new_execution_id(group, now)
        if runner.get(execution_id) is not None:
            return action_error(action, f"Execution id '{execution_id}' already exists.")
        path = runner.workfile(f"{uuid.uuid4().hex}.zip")
        await run_in_threadpool(blobs.download_to, blob, path)
        try:
            with PackageReader(path, by_label) as reader:
                entities = tuple(e.entity.name for e in reader.entities)
        except PackageError as exc:
            path.unlink(missing_ok=True)
            message = str(exc).replace("{execution}", execution_id)
            return action_error(action, message)
        non_importable = [name for name in entities if not BY_NAME[name].importable]
        if non_importable:
            path.unlink(missing_ok=True)
            labels = ", ".join(BY_NAME[name].label for name in non_importable)
            return action_error(action, f"Entity '{labels}' does not support import.")
        runner.projects.put(DataProject(group, "Import", entities))
        execution = Execution(execution_id, "Import", group, legal_entity, now, package_path=path)
        runner.register(execution)
        if execute:
            runner.enqueue(execution)
        else:
            path.unlink(missing_ok=True)
        return value(execution_id)

    async def export_to_package(body: dict[str, Any]) -> Response:
        action = "ExportToPackage"
        group = str(_param(body, action, "definitionGroupId")).strip()
        execution_id = str(body.get("executionId") or "").strip()
        legal_entity = str(body.get("legalEntityId") or config.default_company).lower()
        now = datetime.now(UTC)
        execution_id = execution_id or new_execution_id(group, now)
        previous = runner.get(execution_id)
        if previous is not None:
            if not body.get("reExecute") or previous.status not in (
                Status.SUCCEEDED,
                Status.PARTIALLY_SUCCEEDED,
                Status.FAILED,
                Status.CANCELED,
            ):
                return action_error(action, f"Execution id '{execution_id}' already exists.")
            runner.forget(execution_id)
        # D365 accepts any project name here (docs issue #1030): a wrong one fails in the job.
        execution = Execution(execution_id, "Export", group, legal_entity, now)
        runner.register(execution)
        runner.enqueue(execution)
        return value(execution_id)

    def execution_or_error(action: str, body: dict[str, Any]) -> Execution | Response:
        execution_id = str(_param(body, action, "executionId"))
        execution = runner.get(execution_id)
        if execution is None:
            return not_found(action, execution_id)
        return execution

    async def get_execution_summary_status(body: dict[str, Any]) -> Response:
        found = execution_or_error("GetExecutionSummaryStatus", body)
        if isinstance(found, Response):
            return found
        if found.bad_status_polls > 0:
            # Real D365 sometimes answers 400 right after a job starts; clients must retry.
            found.bad_status_polls -= 1
            return not_found("GetExecutionSummaryStatus", found.id)
        return value(found.status.value)

    async def get_exported_package_url(body: dict[str, Any]) -> Response:
        found = execution_or_error("GetExportedPackageUrl", body)
        if isinstance(found, Response):
            return found
        if found.status not in (Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED):
            return value("")
        if found.export_blob is None:
            return value("")
        return value(await run_in_threadpool(blobs.read_url, found.export_blob, config.sas_seconds))

    async def get_execution_errors(body: dict[str, Any]) -> Response:
        found = execution_or_error("GetExecutionErrors", body)
        if isinstance(found, Response):
            return found
        messages = list(found.messages)
        for result in found.results:
            for error in result.errors:
                keys = ", ".join(f"{k.upper()}={v}" for k, v in error.keys.items())
                messages.append(f"{result.label}: row {error.row_number} ({keys}): {error.message}")
        return value(json.dumps(messages, ensure_ascii=False))

    def entity_param(action: str, body: dict[str, Any]) -> str:
        return str(_param(body, action, "entityName"))

    async def generate_import_target_error_keys_file(body: dict[str, Any]) -> Response:
        action = "GenerateImportTargetErrorKeysFile"
        found = execution_or_error(action, body)
        if isinstance(found, Response):
            return found
        result = found.result_for(entity_param(action, body))
        errors_exist = result is not None and bool(result.errors)
        if result is not None and errors_exist and result.label not in found.error_key_files:
            runner.generate_error_keys(found, result)
        return value(errors_exist, "Edm.Boolean")

    async def get_import_target_error_keys_file_url(body: dict[str, Any]) -> Response:
        action = "GetImportTargetErrorKeysFileUrl"
        found = execution_or_error(action, body)
        if isinstance(found, Response):
            return found
        result = found.result_for(entity_param(action, body))
        blob = found.error_key_files.get(result.label) if result is not None else None
        if blob is None:
            return value("")  # not generated (yet), or no errors
        return value(await run_in_threadpool(blobs.read_url, blob, config.sas_seconds))

    async def get_import_staging_error_file_url(body: dict[str, Any]) -> Response:
        action = "GetImportStagingErrorFileUrl"
        found = execution_or_error(action, body)
        if isinstance(found, Response):
            return found
        result = found.result_for(entity_param(action, body))
        if result is None or not result.errors:
            return value("")
        blob = await run_in_threadpool(runner.staging_error_file, found, result)
        return value(await run_in_threadpool(blobs.read_url, blob, config.sas_seconds))

    handlers: dict[str, Handler] = {
        "GetAzureWriteUrl": get_azure_write_url,
        "ImportFromPackage": import_from_package,
        "ImportFromPackageAsync": import_from_package,
        "ExportToPackage": export_to_package,
        "ExportToPackageAsync": export_to_package,
        "GetExecutionSummaryStatus": get_execution_summary_status,
        "GetExportedPackageUrl": get_exported_package_url,
        "GetExecutionErrors": get_execution_errors,
        "GenerateImportTargetErrorKeysFile": generate_import_target_error_keys_file,
        "GetImportTargetErrorKeysFileUrl": get_import_target_error_keys_file_url,
        "GetImportStagingErrorFileUrl": get_import_staging_error_file_url,
    }

    @api.post(PREFIX + "{action}")
    async def dispatch(action: str, request: Request) -> Response:
        handler = handlers.get(action)
        if handler is None:
            return odata_error(
                404,
                f"No HTTP resource was found that matches the request URI '{request.url}'.",
            )
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return odata_error(400, "The request is invalid.", "The request body is not JSON.")
        if not isinstance(body, dict):
            return odata_error(400, "The request is invalid.", "The body must be a JSON object.")
        try:
            return await handler(body)
        except MissingParameter as exc:
            return odata_error(400, "The request is invalid.", str(exc))

    return api
