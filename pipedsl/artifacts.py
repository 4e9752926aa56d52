"""File and directory artifacts: handles on local paths that travel by content.

A job returns ``File(path)`` or ``Directory(path)`` for data it wrote to the
local disk (a checkpoint, a dataset shard). When the task's output is stored,
the content is uploaded in chunks to the artifact store under its content hash
and the handle keeps only that hash. A downstream task that reads ``.path``
gets a local copy, downloaded on first use (or, for a local store, the stored
object itself, read-only). Nothing is read whole into memory.

A job parameter annotated ``File`` or ``Artifact[T]`` receives a lazy handle
instead of the loaded value (see :func:`lazy_parameters`): a job that needs
only a path or a size never loads the data.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import pathlib
import typing
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

import xxhash

from .hashing import Fingerprinter, _HANDLERS

if TYPE_CHECKING:
    from .store import ArtifactStore

__all__ = ["Artifact", "Directory", "File", "current_store", "hash_file"]

T = TypeVar("T")

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


_MISSING: Any = object()


class Artifact(Generic[T]):
    """A lazy handle on the output of an upstream task.

    Annotate a job parameter with ``Artifact[T]`` to receive this handle
    instead of the value: :meth:`load` reads and decodes the value on first
    call, while :attr:`size`, :attr:`serializer` and :attr:`path` come from
    the manifest and the stored object without decoding anything.

    When the upstream value is still in memory (inline and thread executors)
    the handle wraps it: :meth:`load` returns it as is, and :attr:`size` and
    :attr:`path` encode it once to answer.

    Examples
    --------
    >>> from pipedsl import Artifact, job
    >>> @job
    ... def payload_size(table: Artifact[bytes]) -> int:
    ...     return table.size
    """

    def __init__(
        self,
        store: ArtifactStore,
        job: str,
        key: str,
        path: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self._store: ArtifactStore | None = store
        self.job = job
        self.key: str | None = key
        self._item_path = tuple(path)
        self._manifest: dict[str, Any] | None = None
        self._value: Any = _MISSING

    @classmethod
    def from_value(cls, value: Any, store: ArtifactStore | None = None) -> Artifact[Any]:
        """Wrap a value that is already in memory."""
        handle: Artifact[Any] = cls.__new__(cls)
        handle._store = store
        handle.job = ""
        handle.key = None
        handle._item_path = ()
        handle._manifest = None
        handle._value = value
        return handle

    def __repr__(self) -> str:
        if self.key is None:
            return f"Artifact(<in memory {type(self._value).__qualname__}>)"
        return f"Artifact({self.key!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest of the stored output: serializer, object, size, checksum."""
        if self._manifest is None:
            if self.key is None:
                self._manifest = self._encode_in_memory()
            else:
                from .errors import ArtifactMissing

                manifest = _resolve_store(self._store).read_manifest(self.job, self.key)
                if manifest is None:
                    raise ArtifactMissing(self.key, "its manifest is gone")
                self._manifest = manifest
        return self._manifest

    def _encode_in_memory(self, store_payload: bool = False) -> dict[str, Any]:
        """Encode an in-memory value and describe it like a manifest.

        With ``store_payload`` the encoded bytes are also written to the store
        under their content hash, so :attr:`path` can return a file.
        """
        from . import serializers

        store = _resolve_store(self._store)
        name, data = serializers.dumps(self._value, store, "?")
        digest = store.put_bytes(data) if store_payload else xxhash.xxh3_128_hexdigest(data)
        return {"key": None, "serializer": name, "object": digest, "size": len(data)}

    @property
    def size(self) -> int:
        """Size in bytes of the stored payload (the encoded whole output)."""
        return int(self.manifest["size"])

    @property
    def serializer(self) -> str:
        """Name of the serializer that encoded the output."""
        return str(self.manifest["serializer"])

    @property
    def path(self) -> str:
        """Local path of the encoded payload, downloaded from a remote store once.

        The file holds the serializer's bytes: raw bytes for ``bytes`` outputs,
        ``.npy`` for numpy arrays, Parquet for data frames.
        """
        store = _resolve_store(self._store)
        if self.key is None:
            self._manifest = self._encode_in_memory(store_payload=True)
        return store.local_object(self.manifest["object"], self.job or "")

    def load(self) -> T:
        """Read, verify and decode the value (once; later calls reuse it)."""
        if self._value is _MISSING:
            from .graph import apply_path

            store = _resolve_store(self._store)
            value = store.load(self.manifest)
            self._value = apply_path(value, self._item_path)
        return self._value  # type: ignore[no-any-return]


def _lazy_kind(annotation: Any) -> type | None:
    if annotation is File or annotation is Artifact:
        return annotation  # type: ignore[no-any-return]
    if typing.get_origin(annotation) is Artifact:
        return Artifact
    if isinstance(annotation, str):
        # Annotations that get_type_hints could not evaluate stay strings.
        text = annotation.replace(" ", "").strip("'\"")
        base = text.split("[", 1)[0].rpartition(".")[2]
        if base == "File" and "[" not in text:
            return File
        if base == "Artifact":
            return Artifact
    return None


@functools.lru_cache(maxsize=1024)
def lazy_parameters(fn: Callable[..., Any]) -> dict[str, type]:
    """Return ``{parameter: File or Artifact}`` for parameters that take handles.

    Examples
    --------
    >>> def report(model: File, table: "Artifact[bytes]", n: int) -> None: ...
    >>> sorted(kind.__name__ for kind in lazy_parameters(report).values())
    ['Artifact', 'File']
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations naming types that are not importable here
        hints = dict(getattr(fn, "__annotations__", {}))
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    lazy = {}
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind = _lazy_kind(hints.get(name, parameter.annotation))
        if kind is not None:
            lazy[name] = kind
    return lazy


def bind_lazy_parameters(
    fn: Callable[..., Any],
    lazy: dict[str, type],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    make_handle: Callable[[type, Any], Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Replace the arguments of ``lazy`` parameters by ``make_handle(kind, value)``."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except TypeError:
        return args, kwargs  # the call itself reports the mismatch
    for name, kind in lazy.items():
        if name in bound.arguments:
            bound.arguments[name] = make_handle(kind, bound.arguments[name])
    return bound.args, bound.kwargs


def open_lazy_input(
    kind: type,
    store: ArtifactStore,
    job: str,
    key: str,
    path: tuple[tuple[str, Any], ...],
    load: Callable[[], Any],
) -> Any:
    """Return the handle a ``File`` or ``Artifact`` parameter gets for a stored output.

    ``Artifact`` parameters get an :class:`Artifact` without any read. A
    ``File`` parameter whose upstream returned ``bytes`` gets a File on the
    stored payload, so nothing is loaded into memory. Any other output is
    loaded with ``load`` (a stored File loads as a handle, without its data).
    """
    if kind is Artifact:
        return Artifact(store, job, key, path)
    manifest = store.read_manifest(job, key)
    if manifest is not None and manifest.get("serializer") == "bytes" and not path:
        from .errors import ArtifactMissing

        digest = manifest["object"]
        if not store._exists(store.object_path(digest)):
            raise ArtifactMissing(key, f"payload {digest} not found")
        return File._stored(digest, f"{digest[:12]}.bin", int(manifest["size"]), store)
    return load()


def wrap_lazy_input(kind: type, value: Any, store: ArtifactStore) -> Any:
    """Return the handle a ``File`` or ``Artifact`` parameter gets for an in-memory value."""
    if kind is Artifact:
        return value if isinstance(value, Artifact) else Artifact.from_value(value, store)
    if type(value) in (bytes, bytearray):
        digest = store.put_bytes(bytes(value))
        return File._stored(digest, f"{digest[:12]}.bin", len(value), store)
    return value
