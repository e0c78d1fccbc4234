"""Where document bytes live: one small interface, two implementations.

- `LocalStorage`: files under `<data_dir>/documents` (or `documents.local_dir`), written to a
  temporary name and renamed, so a reader never sees half a file.
- `S3Storage`: any S3-compatible store (AWS, MinIO, Ceph ...) through obstore, a maintained async
  object-store client (Rust `object_store`): signing, multipart uploads and ranged reads are the
  library's, none of it is written here.

Keys are always ours (`uploads/2026/12/<uuid>`, `certificates/2026/<number>.pdf`), never derived
from a client's file name; `check_key` refuses anything else before it reaches a path or a URL.
Every read is a ranged stream of chunks: nothing holds a whole file in memory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from simveb.config import ConfigError

if TYPE_CHECKING:
    from simveb.config import Settings

KEY = re.compile(r"^[a-z]+(/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}){1,4}$")


def check_key(key: str) -> str:
    if not KEY.match(key) or ".." in key:
        raise ValueError(f"not a storage key of this service: {key!r}")
    return key


class Storage(Protocol):
    """What the documents actor needs from a store of bytes."""

    name: str

    async def put_file(self, key: str, path: Path) -> None:
        """Take a finished staging file (it is moved or copied, then removed)."""

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small rendered file (a certificate, a receipt)."""

    def read(self, key: str, start: int, end: int, chunk: int) -> AsyncIterator[bytes]:
        """Bytes start..end (inclusive) in chunks of about `chunk` bytes."""

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, target)  # same file system: a rename, no copy
            except OSError:
                tmp = target.with_name(target.name + ".part")
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
                path.unlink(missing_ok=True)

        await anyio.to_thread.run_sync(move)

    async def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)

        await anyio.to_thread.run_sync(write)

    async def read(self, key: str, start: int, end: int, chunk: int) -> AsyncIterator[bytes]:
        remaining = end - start + 1
        async with await anyio.open_file(self.path(key), "rb") as fh:
            await fh.seek(start)
            while remaining > 0:
                data = await fh.read(min(chunk, remaining))
                if not data:
                    raise OSError(f"{key} is shorter than recorded")
                remaining -= len(data)
                yield data

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path(key).unlink(missing_ok=True))

    async def close(self) -> None:
        return None


class S3Storage:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str = "",
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
    ) -> None:
        from obstore.store import S3Store

        options: dict[str, object] = {"region": region}
        if endpoint:
            options["endpoint"] = endpoint
            # MinIO and most self-hosted stores serve buckets as paths, often over plain HTTP inside a cluster
            options["virtual_hosted_style_request"] = False
        if access_key_id:
            options["access_key_id"] = access_key_id
            options["secret_access_key"] = secret_access_key
        client_options = {"allow_http": True} if endpoint.startswith("http://") else {}
        self.store = S3Store(bucket, prefix=prefix or None, client_options=client_options, **options)  # type: ignore[arg-type]

    async def put_file(self, key: str, path: Path) -> None:
        import obstore

        # obstore streams the file and switches to a multipart upload for large ones
        await obstore.put_async(self.store, check_key(key), path)
        path.unlink(missing_ok=True)

    async def put_bytes(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, check_key(key), data)

    async def read(self, key: str, start: int, end: int, chunk: int) -> AsyncIterator[bytes]:
        import obstore

        result = await obstore.get_async(self.store, check_key(key), options={"range": (start, end + 1)})
        async for part in result.stream(min_chunk_size=chunk):
            yield bytes(part)

    async def delete(self, key: str) -> None:
        import obstore

        await obstore.delete_async(self.store, check_key(key))

    async def close(self) -> None:
        return None


def open_storage(settings: Settings) -> Storage:
    """The store named by `documents.storage_url`: empty or `file:` is local, `s3://bucket[/prefix]` is S3."""
    conf = settings.documents
    url = conf.storage_url
    if not url or url.startswith("file:"):
        root = Path(url.removeprefix("file://").removeprefix("file:")) if url else None
        if root is None:
            root = Path(conf.local_dir).expanduser() if conf.local_dir else settings.data_dir / "documents" / "store"
        return LocalStorage(root.resolve())
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError("documents.storage_url: s3://BUCKET[/prefix] names no bucket")
        return S3Storage(
            bucket,
            prefix=prefix.strip("/"),
            endpoint=conf.s3_endpoint,
            region=conf.s3_region,
            access_key_id=conf.s3_access_key_id,
            secret_access_key=conf.s3_secret_access_key,
        )
    raise ConfigError(f"documents.storage_url: expected empty, file:PATH or s3://BUCKET[/prefix], got {url!r}")
