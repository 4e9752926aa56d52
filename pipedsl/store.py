"""The artifact store: task outputs, file artifacts and run records on fsspec.

Layout under the store's root URL::

    objects/<2 hex>/<digest>        content-addressed payloads (xxh3-128 of the bytes)
    objects/<2 hex>/<digest>.dir    listing of a Directory artifact (JSON)
    tasks/<job>/<cache key>.json    manifest: serializer, object, size, checksum,
                                    producer; payloads of up to ``inline_limit``
                                    bytes (2 KiB) sit inside it, base64-encoded
    runs/<run id>.json              run records
    runs/<run id>.kill              a request to kill a run, from any process
    active/<run id>.json            keys a running run will compute (local stores)

Atomicity. A manifest is written last, after its payload and every file
object it refers to, so an entry exists exactly when its manifest does. Local
writes go to a temporary file in the same folder and are renamed into place.
Object stores (S3, GCS) make a single PUT, or a multipart upload that becomes
visible only when it completes. A reader therefore sees a whole object or
none, on every backend.

Integrity. Payloads are checked against their size and digest when loaded,
and the file objects a manifest lists are checked to exist. An entry whose
payload is missing or corrupt raises :class:`ArtifactMissing`, and the
scheduler runs its task again with a warning.

Freshness. Listings and existence checks drop the filesystem's listing cache
first, so writes by other processes are seen at once.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
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

__all__ = ["ArtifactStore", "Manifest", "StoredObject", "safe_name"]

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

# Part size and parallel parts of multipart uploads of file artifacts to
# object stores: the bytes in flight are at most their product (32 MiB), so
# memory stays bounded whatever the file size. S3 needs parts of at least
# 5 MiB and at most 10,000 of them; s3fs enlarges the part size for files
# above 156 GiB to stay under that count.
TRANSFER_PART_SIZE = 2 * CHUNK_SIZE
TRANSFER_CONCURRENCY = 2

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{32}$")


def safe_name(name: str) -> str:
    """Return ``name`` with characters unsafe in object keys replaced by ``_``."""
    return _UNSAFE.sub("_", name).strip("._") or "job"


def _default_download_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "pipedsl")


class StoredObject(dict):  # type: ignore[type-arg]
    """One entry of :meth:`ArtifactStore.iter_objects`.

    Keys: ``name`` (digest, or ``<digest>.dir`` for a Directory listing),
    ``path``, ``size`` in bytes and ``modified`` as a Unix time (0.0 when the
    filesystem does not report it).
    """


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
        from them serves every operation of this store, and the store pickles
        with them, so process and Dask workers reach the same endpoint.
    download_cache:
        Local folder for downloaded file artifacts of remote stores.
    inline_limit:
        Payloads of at most this many bytes are kept inside their manifest
        (base64), so a small output costs one file instead of two; 0 turns
        this off.
    download_cache_size:
        Bytes the download cache may hold before the least recently used files
        are removed.

    Examples
    --------
    >>> store = ArtifactStore("memory://doctest-store")
    >>> manifest = store.save("demo", "demo-00", [1, 2, 3])
    >>> store.load(manifest)
    [1, 2, 3]
    >>> manifest["serializer"], manifest["size"]
    ('json', 7)
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        download_cache: str | None = None,
        download_cache_size: int = 20 * 2**30,
        inline_limit: int = 2048,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise StoreError(
                f"invalid artifact store URL {url!r}; pass a local folder, "
                "'s3://bucket/prefix' or another fsspec URL"
            )
        if download_cache_size < 0:
            raise ValueError(
                f"download_cache_size must be at least 0 bytes, got {download_cache_size!r}"
            )
        self.storage_options = dict(storage_options or {})
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(
                f"cannot open artifact store {url!r}: {exc}; for s3:// URLs install "
                "pipedsl[s3] and check the storage_options"
            ) from exc
        self.root = self.root.rstrip("/")
        protocols = (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.is_local = "file" in protocols or "local" in protocols
        if self.is_local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StoreError(
                f"artifact store path {self.root!r} is a file, not a folder; point "
                "the store at a folder (configure(store=...) or PIPEDSL_STORE)"
            )
        self.download_cache = download_cache or _default_download_cache()
        self.download_cache_size = download_cache_size
        self.inline_limit = inline_limit
        self._lock = threading.Lock()
        # Local folders this store has created or found, so that a write
        # skips os.makedirs; _create_temp recreates a folder removed since.
        self._folders: set[str] = set()

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_store,
            (
                self.url,
                self.storage_options,
                self.download_cache,
                self.download_cache_size,
                self.inline_limit,
            ),
        )

    # -- paths ---------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def object_path(self, digest: str) -> str:
        """Return the path of the object with content hash ``digest``."""
        return self._path("objects", digest[:2], digest)

    def manifest_path(self, job: str, key: str) -> str:
        """Return the path of the manifest of task ``key`` of ``job``."""
        return self._path("tasks", safe_name(job), key.rpartition("-")[2] + ".json")

    def record_path(self, run_id: str) -> str:
        """Return the path of the record of run ``run_id``."""
        return self._path("runs", f"{run_id}.json")

    # -- low-level atomic I/O ------------------------------------------------------

    def _write(self, path: str, data: bytes, exclusive: bool = False) -> bool:
        """Write ``data`` to ``path`` atomically; with ``exclusive``, only if absent.

        Returns False when ``exclusive`` is set and the path already exists.
        On object stores the exclusive check and the PUT are two requests, so
        two writers racing there may both write; both write a complete body.
        """
        if self.is_local:
            fd, tmp = self._create_temp(os.path.dirname(path))
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
        if exclusive and self._exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def _create_temp(self, folder: str) -> tuple[int, str]:
        """Create an empty temporary file in ``folder``; return its fd and path.

        Like ``tempfile.mkstemp`` (mode 0600, ``O_EXCL``), with a random name
        from ``os.urandom``, which costs less than mkstemp's name generator.
        """
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        while True:
            tmp = os.path.join(folder, ".tmp-" + os.urandom(8).hex())
            try:
                return os.open(tmp, flags, 0o600), tmp
            except FileExistsError:
                continue
            except FileNotFoundError:
                # The folder was removed after this store created it.
                os.makedirs(folder, exist_ok=True)

    # -- run announcements: one process computes a key at a time (local) -------

    def _announcement_path(self, run_id: str) -> str:
        return self._path("active", f"{run_id}.json")

    def announce_run(self, run_id: str, keys: list[str]) -> float:
        """Record that ``run_id`` is running and which keys it will compute.

        One small file per run, on local stores only; other processes read it
        to wait for those keys instead of computing them a second time.
        """
        announced = time.time()
        if not self.is_local:
            return announced
        body = {"pid": os.getpid(), "host": _HOST, "time": announced,
                "keys": sorted(k.rpartition("-")[2] for k in keys)}  # fmt: skip
        self._write(self._announcement_path(run_id), json.dumps(body).encode())
        return announced

    def retire_run(self, run_id: str) -> None:
        if self.is_local:
            try:
                os.unlink(self._announcement_path(run_id))
            except FileNotFoundError:
                pass

    def active_runs(
        self, stale_after: float = 24 * 3600.0
    ) -> dict[str, tuple[float, set[str]]]:
        """Return ``{run id: (announce time, key digests)}`` of other processes' runs.

        Announcements of processes that are gone (same host, pid not running)
        or older than ``stale_after`` seconds are removed.
        """
        if not self.is_local:
            return {}
        folder = self._path("active")
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return {}
        runs = {}
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path) as handle:
                    owner = json.loads(handle.read())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if _is_stale(owner, stale_after):
                logger.warning("removing the announcement of ended run %s", name[:-5])
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                continue
            if owner.get("host") == _HOST and owner.get("pid") == os.getpid():
                # Runs of this process share tasks through the scheduler's
                # in-process registry instead; waiting on them could deadlock.
                continue
            runs[name[:-5]] = (float(owner.get("time", 0)), set(owner.get("keys", ())))
        return runs

    def _read(self, path: str) -> bytes:
        if self.is_local:
            with open(path, "rb") as handle:
                return handle.read()
        return self.fs.cat_file(path)

    def _exists(self, path: str) -> bool:
        if self.is_local:
            return os.path.exists(path)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def _remove(self, path: str) -> bool:
        """Delete one file; return False when it was already gone."""
        try:
            if self.is_local:
                os.unlink(path)
            else:
                # S3 reports success for deleting a missing key, so ask first.
                if not self._exists(path):
                    return False
                self.fs.rm_file(path)
                self.fs.invalidate_cache(path)
        except FileNotFoundError:
            return False
        return True

    def _list(self, folder: str, detail: bool = False) -> list[Any]:
        """List ``folder`` from the filesystem, never from a listing cache."""
        if not self.is_local:
            self.fs.invalidate_cache(folder)
        try:
            return list(self.fs.ls(folder, detail=detail))
        except FileNotFoundError:
            return []

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

    def get_bytes(self, digest: str, key: str = "?", size: int | None = None) -> bytes:
        """Read an object and check it against its digest (and ``size`` if given)."""
        path = self.object_path(digest)
        try:
            data = self._read(path)
        except FileNotFoundError:
            raise ArtifactMissing(key, f"payload {digest} not found at {path}") from None
        if size is not None and len(data) != size:
            self._discard_corrupt(path)
            raise ArtifactMissing(
                key, f"payload {path} has {len(data)} bytes, its manifest says {size}"
            )
        if xxhash.xxh3_128_hexdigest(data) != digest:
            self._discard_corrupt(path)
            raise ArtifactMissing(key, f"payload {path} fails its checksum")
        return data

    def _discard_corrupt(self, path: str) -> None:
        """Delete a corrupt object so the next write of its digest stores it again.

        Writes skip objects that already exist, so a corrupt one left in place
        would be reused by every re-run.
        """
        logger.warning("removing corrupt object %s from %s", path, self.url)
        with contextlib.suppress(OSError):
            self._remove(path)

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
        # s3fs sends parts of TRANSFER_PART_SIZE bytes and completes the
        # multipart upload at the end, so the object appears whole or not at all.
        self.fs.put_file(
            source,
            path,
            chunksize=TRANSFER_PART_SIZE,
            max_concurrency=TRANSFER_CONCURRENCY,
        )
        self.fs.invalidate_cache(path)

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
        """Return a local path holding object ``digest``, downloading it if needed.

        For a local store this is the stored object itself (read-only). For a
        remote store the object is downloaded once into the download cache,
        under a temporary name that is renamed into place after its checksum
        matches, so concurrent readers in any process see the whole file or
        download their own copy.
        """
        path = self.object_path(digest)
        if self.is_local:
            if not os.path.exists(path):
                raise ArtifactMissing(digest, f"file object not found at {path}")
            return path
        folder = os.path.join(self.download_cache, "objects", digest[:2], digest)
        target = os.path.join(folder, safe_name(name) if name else digest)
        try:
            os.utime(target)  # marks it recently used for the size limit
            return target
        except FileNotFoundError:
            pass
        os.makedirs(folder, exist_ok=True)
        tmp = f"{target}.part-{uuid.uuid4().hex}"
        try:
            # One streamed GET, written as it arrives: memory stays at the
            # read size. Parallel ranged GETs measured 10x slower against moto.
            self.fs.get_file(path, tmp, max_concurrency=1)
            if hash_file(tmp)[0] != digest:
                self._discard_corrupt(path)
                raise ArtifactMissing(digest, f"download of {path} fails its checksum")
            os.replace(tmp, target)
        except FileNotFoundError:
            raise ArtifactMissing(digest, f"file object not found at {path}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._trim_download_cache(keep=target)
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

    def _trim_download_cache(self, keep: str = "") -> None:
        """Remove least recently used downloads until the cache fits its size.

        ``keep`` (the file just returned to a caller) is never removed. A
        reader in another process that has already opened a removed file keeps
        reading it (POSIX unlink semantics); one that has only its path
        downloads it again.
        """
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
            if full == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
                logger.debug("download cache: removed %s (%d bytes)", full, size)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(full))
            total -= size

    def iter_objects(self) -> Iterator[StoredObject]:
        """Yield every object of the store (payloads and Directory listings)."""
        for prefix in self._list(self._path("objects")):
            for info in self._list(prefix, detail=True):
                name = info["name"].rstrip("/").rpartition("/")[2]
                if info.get("type") == "directory" or name.startswith(".tmp-"):
                    continue
                yield StoredObject(
                    name=name,
                    path=info["name"],
                    size=int(info.get("size") or 0),
                    modified=_modified(info),
                )

    def remove_object(self, name: str) -> bool:
        """Delete object ``name`` (a digest or ``<digest>.dir``); False if absent."""
        digest = name.partition(".")[0]
        if not _HEX_DIGEST.match(digest) or name not in (digest, digest + ".dir"):
            raise ValueError(
                f"invalid object name {name!r}; expected a 32-character hex digest, "
                "optionally followed by '.dir'"
            )
        return self._remove(self._path("objects", digest[:2], name))

    def iter_temporary_files(self) -> Iterator[StoredObject]:
        """Yield temporary files that crashed local writers left in the store."""
        if not self.is_local:
            return
        for folder, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(".tmp-"):
                    full = os.path.join(folder, name)
                    try:
                        stat = os.stat(full)
                    except FileNotFoundError:
                        continue
                    yield StoredObject(
                        name=name, path=full, size=stat.st_size, modified=stat.st_mtime
                    )

    # -- task outputs --------------------------------------------------------------

    def save(
        self,
        job: str,
        key: str,
        value: Any,
        meta: dict[str, Any] | None = None,
    ) -> Manifest:
        """Store ``value`` as the output of task ``key`` and return its manifest.

        The payload and every File or Directory inside the value are written
        first and the manifest last. When another run wrote the same key
        first, its manifest is kept and returned.
        """
        with serializers.collect_references() as references:
            name, data = serializers.dumps(value, self, job)
        inline = len(data) <= self.inline_limit
        if inline:
            # A small payload travels inside its manifest: one file per task
            # instead of two, which halves the writes of a task.
            digest = xxhash.xxh3_128_hexdigest(data)
        else:
            digest = self.put_bytes(data)
        meta = dict(meta or {})
        manifest: Manifest = {
            "key": key,
            "job": job,
            "serializer": name,
            "object": digest,
            "size": len(data),
            "checksum": f"xxh3_128:{digest}",
            "files": sorted(references.files),
            "directories": sorted(references.directories),
            "created": time.time(),
            "producer": {
                "run_id": meta.get("run_id"),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
            **meta,
        }
        if inline:
            manifest["inline"] = base64.b64encode(data).decode("ascii")
        body = json.dumps(manifest, separators=(",", ":"), default=str).encode()
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
            manifest = json.loads(self._read(path))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def check_references(self, manifest: Manifest) -> None:
        """Raise ArtifactMissing if a File or Directory the manifest lists is gone."""
        key = manifest.get("key", "?")
        for digest in manifest.get("files", ()):
            if not self._exists(self.object_path(digest)):
                raise ArtifactMissing(
                    key, f"file object {digest} not found at {self.object_path(digest)}"
                )
        for digest in manifest.get("directories", ()):
            if not self._exists(self.object_path(digest) + ".dir"):
                raise ArtifactMissing(key, f"directory listing {digest}.dir not found")

    def load(self, manifest: Manifest) -> Any:
        """Load the value a manifest points to, after checking its integrity.

        Raises
        ------
        ArtifactMissing
            The payload or a file object it refers to is missing, or the
            payload fails its size or checksum check.
        """
        key = manifest.get("key", "?")
        if "inline" in manifest:
            data = base64.b64decode(manifest["inline"])
            if xxhash.xxh3_128_hexdigest(data) != manifest["object"]:
                raise ArtifactMissing(key, "the payload inside its manifest fails its checksum")
        else:
            data = self.get_bytes(manifest["object"], key, manifest.get("size"))
        self.check_references(manifest)
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
            names = [p.rstrip("/").rpartition("/")[2] for p in self._list(folder)]
        return {n[:-5] for n in names if n.endswith(".json") and not n.startswith(".")}

    def delete_entry(self, job: str, key: str) -> bool:
        """Delete the manifest of task ``key``; return False when there was none.

        The payload stays until garbage collection, because other entries may
        share it.
        """
        return self._remove(self.manifest_path(job, key))

    def iter_manifests(self, job: str | None = None) -> Iterator[Manifest]:
        """Yield every manifest in the store, or those of one job."""
        if job is not None:
            jobs = [safe_name(job)]
        else:
            jobs = [p.rstrip("/").rpartition("/")[2] for p in self._list(self._path("tasks"))]
        for name in sorted(jobs):
            for digest in sorted(self.cached_keys(name)):
                try:
                    body = self._read(self._path("tasks", name, digest + ".json"))
                    manifest = json.loads(body)
                except FileNotFoundError:
                    continue
                except json.JSONDecodeError:
                    logger.warning("skipping unreadable manifest tasks/%s/%s.json", name, digest)
                    continue
                yield manifest

    # -- run records ---------------------------------------------------------------

    def write_record(self, run_id: str, record: dict[str, Any]) -> None:
        """Write the record of run ``run_id``, replacing an older version."""
        body = json.dumps(record, separators=(",", ":"), default=str).encode()
        self._write(self.record_path(run_id), body)

    def read_record(self, run_id: str) -> dict[str, Any] | None:
        """Return the record of run ``run_id``, or None when there is none."""
        try:
            if not self.is_local:
                self.fs.invalidate_cache(self.record_path(run_id))
            return json.loads(self._read(self.record_path(run_id)))  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def list_runs(self) -> list[str]:
        """Return run ids, oldest first (run ids sort by start time)."""
        folder = self._path("runs")
        if self.is_local:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
        else:
            names = [p.rstrip("/").rpartition("/")[2] for p in self._list(folder)]
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    def request_kill(self, run_id: str) -> None:
        """Ask the process running ``run_id`` to kill it, from any process."""
        self._write(self._path("runs", f"{run_id}.kill"), b"kill")

    def kill_requested(self, run_id: str) -> bool:
        """Return True once :meth:`request_kill` was called for ``run_id``."""
        return self._exists(self._path("runs", f"{run_id}.kill"))


def _modified(info: dict[str, Any]) -> float:
    """Return the modification time of an fsspec ``info`` dict as a Unix time."""
    for field in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return 0.0


_HOST = socket.gethostname()


def _is_stale(owner: dict[str, Any], stale_after: float) -> bool:
    if time.time() - float(owner.get("time", 0)) > stale_after:
        return True
    if owner.get("host") != _HOST:
        return False
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def _rebuild_store(
    url: str,
    storage_options: dict[str, Any],
    download_cache: str,
    size: int,
    inline_limit: int = 2048,
) -> ArtifactStore:
    return ArtifactStore(
        url,
        storage_options,
        download_cache=download_cache,
        download_cache_size=size,
        inline_limit=inline_limit,
    )
