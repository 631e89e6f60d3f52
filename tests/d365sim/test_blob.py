"""BlobStore and its SAS URLs against a real Azurite, used the way D365 clients use them.

Clients hold no storage credentials: they PUT and GET the SAS URLs with plain HTTP (§2.4, §2.5).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from d365sim.azurite import BIN_ENV, Azurite, AzuriteError, find_azurite_bin
from d365sim.blob import CHUNK_SIZE, DEFAULT_CONTAINER, BlobStore

# Headers RIS sends on upload (reference §2.4); no Authorization header.
UPLOAD_HEADERS = {"x-ms-blob-type": "BlockBlob", "Overwrite": "T"}
# Not a multiple of the chunk size, so the last block is a short one.
MULTI_MB = 2 * CHUNK_SIZE + 12_345


def put(url: str, content: bytes) -> httpx.Response:
    headers = {
        **UPLOAD_HEADERS,
        "x-ms-date": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    return httpx.put(url, content=content, headers=headers, timeout=30)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "package.zip"
    path.write_bytes(os.urandom(MULTI_MB))
    return path


def test_round_trip_of_a_multi_mb_package_through_sas_urls(
    blob_store: BlobStore, big_file: Path, tmp_path: Path
) -> None:
    response = put(blob_store.write_url("in/package.zip", 60), big_file.read_bytes())
    assert response.status_code == 201, response.text
    assert blob_store.exists("in/package.zip")
    assert blob_store.size("in/package.zip") == MULTI_MB

    # The simulator reads the upload with the SDK; clients download with plain streamed GETs.
    staged = tmp_path / "staged.zip"
    assert blob_store.download_to("in/package.zip", staged) == MULTI_MB
    blob_store.upload_file("out/package.zip", staged)
    downloaded = tmp_path / "downloaded.zip"
    with (
        httpx.stream("GET", blob_store.read_url("out/package.zip", 60), timeout=30) as response,
        downloaded.open("wb") as target,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(MULTI_MB)
        for chunk in response.iter_bytes():
            target.write(chunk)
    assert sha256_file(downloaded) == sha256_file(staged) == sha256_file(big_file)


def test_sas_url_shape(azurite: Azurite, blob_store: BlobStore) -> None:
    assert BlobStore(azurite.connection_string).container == DEFAULT_CONTAINER == "dmf"
    before = int(time.time())
    url = urlsplit(blob_store.write_url("a b.zip", 35 * 60))
    assert f"{url.scheme}://{url.netloc}" == f"http://127.0.0.1:{azurite.port}"
    assert url.path == f"/devstoreaccount1/{blob_store.container}/a%20b.zip"
    query = {key: values[0] for key, values in parse_qs(url.query).items()}
    assert query["sr"] == "b"
    assert query["sp"] == "rcw"
    assert {"sv", "sig", "st"} <= query.keys()
    assert before + 35 * 60 <= epoch(query["se"]) <= before + 35 * 60 + 2
    assert epoch(query["st"]) < before
    read_query = parse_qs(urlsplit(blob_store.read_url("a b.zip", 60)).query)
    assert read_query["sp"] == ["r"]


def test_write_url_takes_a_plain_put_and_overwrites(blob_store: BlobStore) -> None:
    url = blob_store.write_url("upload.zip", 60)
    assert put(url, b"first").status_code == 201
    assert put(url, b"second").status_code == 201
    assert httpx.get(url).content == b"second"
    assert httpx.get(blob_store.read_url("upload.zip", 60)).content == b"second"


def test_read_url_cannot_put(blob_store: BlobStore) -> None:
    blob_store.upload_stream("export.zip", io.BytesIO(b"original"))
    url = blob_store.read_url("export.zip", 60)
    response = put(url, b"tampered")
    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    assert httpx.get(url).content == b"original"


def test_expired_sas_is_refused_with_403(blob_store: BlobStore, tmp_path: Path) -> None:
    url = blob_store.write_url("late.zip", 1)
    # Valid at first, so the 403 below is caused by the expiry alone.
    assert put(url, b"in time").status_code == 201
    expiry = epoch(parse_qs(urlsplit(url).query)["se"][0])
    time.sleep(max(0.0, expiry + 1 - time.time()))

    late_put, late_get = put(url, b"too late"), httpx.get(url)
    # Azure answers AuthenticationFailed; Azurite 3.37 says AuthorizationFailure. Both are 403.
    for response in (late_put, late_get):
        assert response.status_code == 403
        assert response.headers["x-ms-error-code"] in {
            "AuthenticationFailed",
            "AuthorizationFailure",
        }
    assert blob_store.download_to("late.zip", tmp_path / "late.zip") == len(b"in time")


@pytest.mark.parametrize("variant", ["no SAS", "tampered signature"])
def test_requests_without_a_valid_sas_are_refused(blob_store: BlobStore, variant: str) -> None:
    # Shows that Azurite checks signatures at all, so the 2xx answers above mean something.
    blob_store.upload_stream("secret.zip", io.BytesIO(b"secret"))
    if variant == "no SAS":
        url = blob_store.url("secret.zip")
    else:
        url = blob_store.read_url("secret.zip", 60).replace("sig=", "sig=AAAA")
    assert httpx.get(url).status_code == 403


def test_upload_stream_sends_blocks_from_an_unseekable_stream(
    azurite: Azurite, blob_store: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(MULTI_MB)
    blob_store.upload_stream("streamed.bin", io.BufferedReader(Unseekable(data)))
    assert blob_store.size("streamed.bin") == MULTI_MB

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    blob = service.get_blob_client(blob_store.container, "streamed.bin")
    committed, _ = blob.get_block_list("committed")
    assert [block.size for block in committed] == [CHUNK_SIZE, CHUNK_SIZE, 12_345]

    target = tmp_path / "streamed.bin"
    assert blob_store.download_to("streamed.bin", target) == MULTI_MB
    assert target.read_bytes() == data


def test_missing_blobs(blob_store: BlobStore, tmp_path: Path) -> None:
    assert not blob_store.exists("nope.zip")
    with pytest.raises(FileNotFoundError):
        blob_store.size("nope.zip")
    with pytest.raises(FileNotFoundError):
        blob_store.download_to("nope.zip", tmp_path / "nope.zip")
    assert not blob_store.delete("nope.zip")

    blob_store.upload_stream("gone.zip", io.BytesIO(b"x"))
    assert blob_store.delete("gone.zip")
    assert not blob_store.exists("gone.zip")


def test_ensure_container_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.ensure_container()


def test_blob_store_needs_an_account_key() -> None:
    with pytest.raises(ValueError, match="AccountKey"):
        BlobStore("BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;SharedAccessSignature=sv=x")


def test_azurite_stop_ends_the_process_and_removes_its_data() -> None:
    with Azurite() as server:
        port, data_dir = server.port, server.data_dir
        assert data_dir.is_dir()
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not data_dir.parent.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server.stop()


def test_azurite_startup_failure_reports_its_stderr(tmp_path: Path) -> None:
    broken = script(tmp_path / "azurite-blob", "echo 'cannot bind: EADDRINUSE' >&2; exit 3")
    with pytest.raises(AzuriteError, match=r"exited with code 3(.|\n)*cannot bind: EADDRINUSE"):
        Azurite(binary=broken).start()


def test_azurite_startup_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hanging = script(tmp_path / "azurite-blob", f"echo $$ > {pid_file}; echo starting; sleep 60")
    with pytest.raises(AzuriteError, match=r"within 0.5 s(.|\n)*starting"):
        Azurite(binary=hanging, startup_timeout=0.5).start()
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_find_azurite_bin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BIN_ENV, raising=False)
    assert find_azurite_bin().parts[-3:] == ("node_modules", ".bin", "azurite-blob")
    monkeypatch.setenv(BIN_ENV, str(tmp_path / "missing"))
    with pytest.raises(AzuriteError, match=BIN_ENV):
        find_azurite_bin()


class Unseekable(io.RawIOBase):
    """A read-only stream that cannot seek or report a length, like an HTTP request body."""

    def __init__(self, data: bytes) -> None:
        self._chunks: Iterator[bytes] = (data[i : i + 65536] for i in range(0, len(data), 65536))
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            self._pending = next(self._chunks, b"")
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def epoch(timestamp: str) -> int:
    return int(datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
