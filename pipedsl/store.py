"""The artifact store: task outputs, file artifacts and run records on fsspec.

Layout under the store's root URL::

    objects/<2 hex>/<digest>        content-addressed payloads (xxh3-128 of the bytes)
    objects/<2 hex>/<digest>.dir    listing of a Directory artifact (JSON)
    tasks/<job>/<cache key>.json    manifest: serializer, object, size, producing run
    runs/<run id>.json              run records
    runs/<run id>.kill              a request to kill a run, from any process

A manifest is written last, after its payload, so an entry exists exactly when
its manifest does. Local writes go to a temporary file and are renamed into
place; object stores (S3, GCS) make a single PUT, or a multipart upload that
becomes visible only when complete. A reader therefore sees a whole artifact
or none. Payloads are verified against their digest when loaded; an entry with
a missing or corrupt payload is reported as :class:`ArtifactMissing` and the
scheduler runs its task again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import xxhash

from . import serializers
from .artifacts import CHUNK_SIZE, Directory, File, hash_file
from .errors import ArtifactMissing, StoreError

__all__ = ["ArtifactStore", "Manifest", "safe_name"]

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def safe_name(name: str) -> str:
    """Return ``name`` with characters unsafe in object keys replaced by ``_``."""
    return _UNSAFE.sub("_", name).strip("._") or "job"


def _default_download_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pipedsl")


class ArtifactStore:
    """Task outputs and run records under one fsspec URL.

    Parameters
    ----------
    url:
        Root of the store: a local folder, ``s3://bucket/prefix``, ``memory://x``
        or any fsspec URL.
    storage_options:
        Passed to the fsspec filesystem (for S3: ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": ...}``...). One filesystem object built
        from them serves every operation of this store.
    download_cache:
        Local folder for downloaded file artifacts of remote stores.
    download_cache_size:
        Bytes the download cache may hold before the least recently used files
        are removed.

    Examples
    --------
    >>> store = ArtifactStore("memory://doctest-store")
    >>> manifest = store.save("demo", "demo-00", [1, 2, 3])
    >>> store.load(manifest)
    [1, 2, 3]
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        download_cache: str | None = None,
        download_cache_size: int = 20 * 2**30,
    ) -> None:
        self.storage_options = dict(storage_options or {})
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.root = self.root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.is_local = "file" in protocols or "local" in protocols
        self.download_cache = download_cache or _default_download_cache()
        self.download_cache_size = download_cache_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_store,
            (self.url, self.storage_options, self.download_cache, self.download_cache_size),
        )

    # -- paths ---------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def object_path(self, digest: str) -> str:
        return self._path("objects", digest[:2], digest)

    def manifest_path(self, job: str, key: str) -> str:
        return self._path("tasks", safe_name(job), key.rpartition("-")[2] + ".json")

    def record_path(self, run_id: str) -> str:
        return self._path("runs", f"{run_id}.json")

    # -- low-level atomic I/O ------------------------------------------------------

    def _write(self, path: str, data: bytes, exclusive: bool = False) -> bool:
        """Write ``data`` to ``path`` atomically; with ``exclusive``, only if absent.

        Returns False when ``exclusive`` is set and the path already exists.
        """
        if self.is_local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                if exclusive:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        return False
                    finally:
                        os.unlink(tmp)
                else:
                    os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return True
        if exclusive and self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def _read(self, path: str) -> bytes:
        if self.is_local:
            with open(path, "rb") as handle:
                return handle.read()
        return self.fs.cat_file(path)

    def _exists(self, path: str) -> bool:
        if self.is_local:
            return os.path.exists(path)
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    # -- objects -------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` under its content hash and return the hash."""
        digest = xxhash.xxh3_128_hexdigest(data)
        path = self.object_path(digest)
        # Small payloads are rewritten rather than checked first: on a local
        # disk a rename costs less than a stat plus a rename, and on S3 a PUT of
        # a few bytes costs the same as a HEAD.
        if len(data) >= 1 << 20 and self._exists(path):
            return digest
        self._write(path, data)
        return digest

    def get_bytes(self, digest: str, key: str = "?") -> bytes:
        """Read an object and check it against its digest."""
        path = self.object_path(digest)
        try:
            data = self._read(path)
        except FileNotFoundError:
            raise ArtifactMissing(key, f"payload {digest} not found at {path}") from None
        if xxhash.xxh3_128_hexdigest(data) != digest:
            raise ArtifactMissing(key, f"payload {path} fails its checksum")
        return data

    def put_file_artifact(self, handle: File) -> tuple[str, int]:
        """Upload a File's content in chunks; return its digest and size."""
        digest = handle.content_digest()
        size = handle.size or 0
        source = handle._path
        if source is None:  # already stored: nothing to upload
            return digest, size
        self._put_local_file(source, digest)
        return digest, size

    def _put_local_file(self, source: str, digest: str) -> None:
        path = self.object_path(digest)
        if self._exists(path):
            return
        if self.is_local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return
        # s3fs uploads in parts of ``chunksize`` bytes and completes the
        # multipart upload at the end, so the object appears whole or not at all.
        self.fs.put_file(source, path, chunksize=CHUNK_SIZE * 8)

    def put_directory_artifact(self, handle: Directory) -> tuple[str, dict[str, list[Any]]]:
        """Upload every file of a Directory, then its listing; return its digest."""
        listing = handle.content_listing()
        digest = handle.content_digest()
        if handle._path is not None:
            for relative, (file_digest, _) in listing.items():
                self._put_local_file(os.path.join(handle._path, relative), file_digest)
        body = json.dumps({k: list(v) for k, v in sorted(listing.items())}).encode()
        self._write(self.object_path(digest) + ".dir", body)
        return digest, {k: list(v) for k, v in listing.items()}

    def local_object(self, digest: str, name: str = "") -> str:
        """Return a local path holding object ``digest``, downloading it if needed."""
        path = self.object_path(digest)
        if self.is_local:
            if not os.path.exists(path):
                raise ArtifactMissing(digest, f"file object not found at {path}")
            return path
        folder = os.path.join(self.download_cache, "objects", digest[:2])
        target = os.path.join(folder, digest, name or digest)
        if os.path.exists(target):
            os.utime(target)
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # Download next to the target, then rename: concurrent readers see the
        # whole file or nothing.
        tmp = f"{target}.part-{uuid.uuid4().hex}"
        try:
            self.fs.get_file(path, tmp)
            if hash_file(tmp)[0] != digest:
                raise ArtifactMissing(digest, f"download of {path} fails its checksum")
            os.replace(tmp, target)
        except FileNotFoundError:
            raise ArtifactMissing(digest, f"file object not found at {path}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._trim_download_cache()
        return target

    def local_directory(self, digest: str, listing: dict[str, tuple[str, int]]) -> str:
        """Materialise a stored Directory as a local folder and return its path."""
        base = self.download_cache if not self.is_local else self._path("materialized")
        target = os.path.join(base, "dirs", digest)
        if os.path.isdir(target):
            return target
        tmp = f"{target}.part-{uuid.uuid4().hex}"
        os.makedirs(tmp)
        try:
            for relative, (file_digest, _) in listing.items():
                destination = os.path.join(tmp, *relative.split("/"))
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                source = self.local_object(file_digest)
                try:
                    os.link(source, destination)
                except OSError:
                    shutil.copyfile(source, destination)
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _trim_download_cache(self) -> None:
        root = os.path.join(self.download_cache, "objects")
        entries = []
        total = 0
        for folder, _, names in os.walk(root):
            for name in names:
                if ".part-" in name:
                    continue
                full = os.path.join(folder, name)
                try:
                    stat = os.stat(full)
                except FileNotFoundError:
                    continue
                entries.append((stat.st_mtime, stat.st_size, full))
                total += stat.st_size
        for _, size, full in sorted(entries):
            if total <= self.download_cache_size:
                break
            try:
                os.unlink(full)
            except FileNotFoundError:
                pass
            total -= size

    # -- task outputs --------------------------------------------------------------

    def save(
        self,
        job: str,
        key: str,
        value: Any,
        meta: dict[str, Any] | None = None,
    ) -> Manifest:
        """Store ``value`` as the output of task ``key`` and return its manifest.

        The payload is written first and the manifest last. When another run
        wrote the same key first, its manifest is kept and returned.
        """
        name, data = serializers.dumps(value, self, job)
        digest = self.put_bytes(data)
        manifest: Manifest = {
            "key": key,
            "job": job,
            "serializer": name,
            "object": digest,
            "size": len(data),
            "created": time.time(),
            **(meta or {}),
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        path = self.manifest_path(job, key)
        if not self._write(path, body, exclusive=True):
            existing = self.read_manifest(job, key)
            if existing is not None:
                return existing
            self._write(path, body)
        logger.debug("stored %s (%s, %d bytes)", key, name, len(data))
        return manifest

    def read_manifest(self, job: str, key: str) -> Manifest | None:
        """Return the manifest of task ``key``, or None when there is none."""
        path = self.manifest_path(job, key)
        try:
            if not self.is_local:
                self.fs.invalidate_cache(path)
            return json.loads(self._read(path))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def load(self, manifest: Manifest) -> Any:
        """Load the value a manifest points to; verifies the payload's checksum."""
        data = self.get_bytes(manifest["object"], manifest.get("key", "?"))
        serializer = serializers.get_serializer(manifest["serializer"])
        from .artifacts import current_store

        token = current_store.set(self)
        try:
            return serializer.loads(data, self)
        finally:
            current_store.reset(token)

    def cached_keys(self, job: str) -> set[str]:
        """Return the cache-key digests with a manifest for ``job``: one listing.

        The listing cache of the filesystem is dropped first, so writes by
        other processes are seen.
        """
        folder = self._path("tasks", safe_name(job))
        if self.is_local:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return set()
        else:
            self.fs.invalidate_cache(folder)
            try:
                names = [p.rpartition("/")[2] for p in self.fs.ls(folder, detail=False)]
            except FileNotFoundError:
                return set()
        return {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}

    def delete_entry(self, job: str, key: str) -> None:
        path = self.manifest_path(job, key)
        try:
            if self.is_local:
                os.unlink(path)
            else:
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def iter_manifests(self, job: str | None = None) -> Iterator[Manifest]:
        """Yield every manifest in the store, or those of one job."""
        base = self._path("tasks")
        if not self.is_local:
            self.fs.invalidate_cache(base)
        if job is not None:
            jobs = [safe_name(job)]
        else:
            try:
                jobs = [p.rpartition("/")[2] for p in self.fs.ls(base, detail=False)]
            except FileNotFoundError:
                return
        for name in sorted(jobs):
            for digest in sorted(self.cached_keys(name)):
                try:
                    body = self._read(self._path("tasks", name, digest + ".json"))
                except FileNotFoundError:
                    continue
                yield json.loads(body)

    # -- run records ---------------------------------------------------------------

    def write_record(self, run_id: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, separators=(",", ":"), default=str).encode()
        self._write(self.record_path(run_id), body)

    def read_record(self, run_id: str) -> dict[str, Any] | None:
        try:
            if not self.is_local:
                self.fs.invalidate_cache(self._path("runs"))
            return json.loads(self._read(self.record_path(run_id)))
        except FileNotFoundError:
            return None

    def list_runs(self) -> list[str]:
        """Return run ids, oldest first (run ids sort by start time)."""
        folder = self._path("runs")
        try:
            if self.is_local:
                names = os.listdir(folder)
            else:
                self.fs.invalidate_cache(folder)
                names = [p.rpartition("/")[2] for p in self.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    def request_kill(self, run_id: str) -> None:
        self._write(self._path("runs", f"{run_id}.kill"), b"kill")

    def kill_requested(self, run_id: str) -> bool:
        return self._exists(self._path("runs", f"{run_id}.kill"))


def _rebuild_store(
    url: str, storage_options: dict[str, Any], download_cache: str, size: int
) -> ArtifactStore:
    return ArtifactStore(
        url, storage_options, download_cache=download_cache, download_cache_size=size
    )
