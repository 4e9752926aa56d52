"""File and directory artifacts: handles on local paths that travel by content.

A job returns ``File(path)`` or ``Directory(path)`` for data it wrote to the
local disk (a checkpoint, a dataset shard). When the task's output is stored,
the content is uploaded in chunks to the artifact store under its content hash
and the handle keeps only that hash. A downstream task that reads ``.path``
gets a local copy, downloaded on first use (or, for a local store, the stored
object itself, read-only). Nothing is read whole into memory.
"""

from __future__ import annotations

import contextvars
import os
import pathlib
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import xxhash

from .hashing import Fingerprinter, _HANDLERS

if TYPE_CHECKING:
    from .store import ArtifactStore

__all__ = ["Directory", "File", "current_store", "hash_file"]

CHUNK_SIZE = 8 * 1024 * 1024

# The artifact store of the task running in this context; stored handles
# download from it when they are opened.
current_store: contextvars.ContextVar[ArtifactStore | None] = contextvars.ContextVar(
    "pipedsl_current_store", default=None
)


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Return the xxh3-128 hex digest and size of a file, read in chunks."""
    digest = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _resolve_store(store: ArtifactStore | None) -> ArtifactStore:
    store = store or current_store.get()
    if store is None:
        from .config import get_config

        store = get_config().open_store()
    return store


class File(os.PathLike):  # type: ignore[type-arg]
    """A file artifact: a local path now, a content hash once stored.

    Examples
    --------
    >>> from pipedsl import job, File
    >>> @job
    ... def save_model(weights: list[float]) -> File:
    ...     with open("model.json", "w") as out:
    ...         out.write(str(weights))
    ...     return File("model.json")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path: str | None = os.fspath(path)
        self.name = os.path.basename(self._path)
        self.digest: str | None = None
        self.size: int | None = None
        self._store: ArtifactStore | None = None

    @classmethod
    def _stored(cls, digest: str, name: str, size: int, store: ArtifactStore | None) -> File:
        handle = cls.__new__(cls)
        handle._path = None
        handle.name = name
        handle.digest = digest
        handle.size = size
        handle._store = store
        return handle

    @property
    def path(self) -> str:
        """Local path of the file, downloaded from the artifact store on first use."""
        if self._path is None:
            assert self.digest is not None
            self._path = _resolve_store(self._store).local_object(self.digest, self.name)
        return self._path

    def __fspath__(self) -> str:
        return self.path

    def open(self, mode: str = "rb") -> IO[Any]:
        """Open the file for reading (text or binary)."""
        if any(flag in mode for flag in "wax+"):
            raise ValueError(f"File artifacts are read-only; got mode {mode!r}")
        return open(self.path, mode)

    def read_bytes(self) -> bytes:
        return pathlib.Path(self.path).read_bytes()

    def read_text(self, encoding: str = "utf-8") -> str:
        return pathlib.Path(self.path).read_text(encoding)

    def content_digest(self) -> str:
        """Return the content hash, hashing the local file if needed."""
        if self.digest is None:
            assert self._path is not None
            if not os.path.isfile(self._path):
                raise FileNotFoundError(
                    f"File artifact {self._path!r} does not exist; a job must write "
                    "the file before it returns File(path)"
                )
            self.digest, self.size = hash_file(self._path)
        return self.digest

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __repr__(self) -> str:
        if self.digest is not None and self._path is None:
            return f"File({self.name!r}, digest={self.digest[:12]!r})"
        return f"File({self._path!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, File):
            return NotImplemented
        return self.content_digest() == other.content_digest()

    def __hash__(self) -> int:
        return hash(self.content_digest())


class Directory(os.PathLike):  # type: ignore[type-arg]
    """A directory artifact, stored file by file under content hashes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path: str | None = os.fspath(path)
        self.name = os.path.basename(os.path.normpath(self._path))
        self.digest: str | None = None
        self.listing: dict[str, tuple[str, int]] | None = None
        self._store: ArtifactStore | None = None

    @classmethod
    def _stored(
        cls,
        digest: str,
        name: str,
        listing: dict[str, tuple[str, int]],
        store: ArtifactStore | None,
    ) -> Directory:
        handle = cls.__new__(cls)
        handle._path = None
        handle.name = name
        handle.digest = digest
        handle.listing = listing
        handle._store = store
        return handle

    @property
    def path(self) -> str:
        """Local path of the directory, materialised from the store on first use."""
        if self._path is None:
            assert self.digest is not None and self.listing is not None
            self._path = _resolve_store(self._store).local_directory(self.digest, self.listing)
        return self._path

    def __fspath__(self) -> str:
        return self.path

    def files(self) -> Iterator[str]:
        """Yield the relative paths of the files, in sorted order."""
        yield from sorted(self.content_listing())

    def content_listing(self) -> dict[str, tuple[str, int]]:
        """Return ``{relative path: (digest, size)}``, hashing local files if needed."""
        if self.listing is None:
            assert self._path is not None
            if not os.path.isdir(self._path):
                raise FileNotFoundError(
                    f"Directory artifact {self._path!r} does not exist; a job must "
                    "create the directory before it returns Directory(path)"
                )
            listing = {}
            for folder, _, names in os.walk(self._path):
                for name in names:
                    full = os.path.join(folder, name)
                    relative = os.path.relpath(full, self._path).replace(os.sep, "/")
                    listing[relative] = hash_file(full)
            self.listing = listing
        return self.listing

    def content_digest(self) -> str:
        if self.digest is None:
            digest = xxhash.xxh3_128()
            for relative, (file_digest, size) in sorted(self.content_listing().items()):
                digest.update(f"{relative}\0{file_digest}\0{size}\n".encode())
            self.digest = digest.hexdigest()
        return self.digest

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __repr__(self) -> str:
        if self._path is None and self.digest is not None:
            return f"Directory({self.name!r}, digest={self.digest[:12]!r})"
        return f"Directory({self._path!r})"


def _fingerprint_file(fp: Fingerprinter, value: File) -> None:
    fp.tag("file", value.content_digest())


def _fingerprint_directory(fp: Fingerprinter, value: Directory) -> None:
    fp.tag("directory", value.content_digest())


_HANDLERS[File] = _fingerprint_file
_HANDLERS[Directory] = _fingerprint_directory
