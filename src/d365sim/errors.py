"""OData error bodies in the shape D365 F&O answers them.

D365 puts a generic `message` on top and the real reason in `innererror.message`.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

ODATA_HEADERS = {"OData-Version": "4.0"}


def odata_error(
    status: int,
    message: str,
    inner: str | None = None,
    inner_type: str = "",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, object] = {"code": "", "message": message}
    if inner is not None:
        error["innererror"] = {"message": inner, "type": inner_type, "stacktrace": ""}
    return JSONResponse(
        {"error": error}, status_code=status, headers={**ODATA_HEADERS, **(headers or {})}
    )


def action_error(action: str, reason: str, status: int = 400) -> JSONResponse:
    """The error D365 gives when a DMF action throws, e.g. for an unknown execution id."""
    return odata_error(
        status,
        "An error has occurred.",
        f"Exception occurred while executing action {action} on Entity "
        f"DataManagementDefinitionGroup: {reason}",
        "System.InvalidOperationException",
    )
