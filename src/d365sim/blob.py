"""Blob storage for d365sim's DMF packages, and the SAS URLs D365 hands its clients.

Synchronous on purpose: the simulator's job runner works in threads (reference §2.2, §2.4).
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import BinaryIO

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

DEFAULT_CONTAINER = "dmf"
# Transfers move in chunks of this size so a package never has to fit in memory; the SDK's
# defaults would read up to 64 MiB in one go on upload and 32 MiB on download.
CHUNK_SIZE = 4 * 1024 * 1024
# SAS validity starts a little in the past so a client whose clock runs behind the storage's
# does not get a 403 on a URL it was just given.
CLOCK_SKEW = timedelta(minutes=5)

StrPath = str | os.PathLike[str]


def parse_connection_string(connection_string: str) -> dict[str, str]:
    """Split `Key=Value;...` into a dict; values (base64 account keys) may contain '='."""
    settings: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            settings[key.strip()] = value.strip()
    return settings


class BlobStore:
    """One container of a storage account, reached with an account-key connection string."""

    def __init__(self, connection_string: str, container: str = DEFAULT_CONTAINER) -> None:
        settings = parse_connection_string(connection_string)
        missing = [key for key in ("AccountName", "AccountKey") if not settings.get(key)]
        if missing:
            # SAS URLs are signed with the account key; a SAS or token connection string
            # cannot sign new ones.
            raise ValueError(f"connection string lacks {' and '.join(missing)}")
        self._account_name = settings["AccountName"]
        self._account_key = settings["AccountKey"]
        self.container = container
        self._service = BlobServiceClient.from_connection_string(
            connection_string,
            max_single_put_size=CHUNK_SIZE,
            max_block_size=CHUNK_SIZE,
            max_single_get_size=CHUNK_SIZE,
            max_chunk_get_size=CHUNK_SIZE,
        )
        self._container = self._service.get_container_client(container)

    def close(self) -> None:
        self._service.close()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ensure_container(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    def url(self, blob_name: str) -> str:
        """The blob's URL without a SAS: what D365 reports as the blob's address."""
        return str(self._container.get_blob_client(blob_name).url)

    def write_url(self, blob_name: str, seconds: int) -> str:
        """A SAS URL a client can PUT the blob to (and read back) for `seconds` from now."""
        permission = BlobSasPermissions(read=True, create=True, write=True)
        return self._sas_url(blob_name, permission, seconds)

    def read_url(self, blob_name: str, seconds: int) -> str:
        """A read-only SAS URL, valid for `seconds` from now."""
        return self._sas_url(blob_name, BlobSasPermissions(read=True), seconds)

    def upload_file(self, blob_name: str, path: StrPath) -> None:
        with open(path, "rb") as stream:
            self.upload_stream(blob_name, stream)

    def upload_bytes(self, blob_name: str, data: bytes) -> None:
        """Upload small content held in memory (error files), replacing any existing blob."""
        self._container.get_blob_client(blob_name).upload_blob(data, overwrite=True)

    def upload_stream(self, blob_name: str, stream: BinaryIO) -> None:
        """Upload from a file object in `CHUNK_SIZE` blocks, replacing any existing blob."""
        self._container.get_blob_client(blob_name).upload_blob(stream, overwrite=True)

    def download_to(self, blob_name: str, path: StrPath) -> int:
        """Stream the blob into a file at `path`; return the byte count.

        Raises FileNotFoundError if the blob does not exist.
        """
        try:
            downloader = self._container.get_blob_client(blob_name).download_blob()
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"blob {self.container}/{blob_name} not found") from error
        with open(path, "wb") as target:
            return downloader.readinto(target)

    def exists(self, blob_name: str) -> bool:
        return bool(self._container.get_blob_client(blob_name).exists())

    def size(self, blob_name: str) -> int:
        """The blob's size in bytes; raises FileNotFoundError if it does not exist."""
        try:
            properties = self._container.get_blob_client(blob_name).get_blob_properties()
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"blob {self.container}/{blob_name} not found") from error
        return int(properties.size)

    def delete(self, blob_name: str) -> bool:
        """Delete the blob; return False if there was none (cleanup jobs may race)."""
        try:
            self._container.get_blob_client(blob_name).delete_blob()
        except ResourceNotFoundError:
            return False
        return True

    def _sas_url(self, blob_name: str, permission: BlobSasPermissions, seconds: int) -> str:
        if seconds <= 0:
            raise ValueError(f"SAS lifetime must be positive, not {seconds} s")
        now = datetime.now(UTC)
        # SAS times have whole-second precision and the SDK truncates; round the expiry up so
        # the URL lives at least `seconds`.
        expiry = now.replace(microsecond=0) + timedelta(seconds=seconds + 1)
        sas = generate_blob_sas(
            account_name=self._account_name,
            container_name=self.container,
            blob_name=blob_name,
            account_key=self._account_key,
            permission=permission,
            start=now - CLOCK_SKEW,
            expiry=expiry,
        )
        return f"{self.url(blob_name)}?{sas}"
