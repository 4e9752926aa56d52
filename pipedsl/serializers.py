"""Serializers: how task outputs become bytes in the artifact store.

The serializer for a value is chosen by type, first match wins:

========== ===================================================== ===============
name       values                                                 format
========== ===================================================== ===============
bytes      ``bytes``, ``bytearray``                               as is
json       ``None``, bool, int, float, str, lists and dicts with  UTF-8 JSON
           str keys of those (exact round trip only)
npy        numpy arrays without object dtype                      ``.npy``
parquet    pandas DataFrames, when pyarrow is installed          Parquet
torch      torch tensors and ``state_dict``-style dicts of them  ``torch.save``
pickle     anything else                                          pickle 5
========== ===================================================== ===============

The pickle serializer uploads ``File`` and ``Directory`` handles found inside
the value to the store and keeps only their content hashes. Values that the
standard pickle cannot handle (lambdas, classes defined in a notebook) fall
back to cloudpickle, recorded under its own name ``cloudpickle``.

The name of the serializer is written to each artifact's manifest, so a later
version of pipedsl reads artifacts with the serializer that wrote them. Users
add their own with :func:`register_serializer`.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import io
import json
import math
import pickle
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

from .artifacts import Directory, File
from .errors import SerializationError

if TYPE_CHECKING:
    from .store import ArtifactStore

__all__ = [
    "References",
    "Serializer",
    "collect_references",
    "get_serializer",
    "register_serializer",
    "serializer_for",
]


class Serializer(abc.ABC):
    """Base class of serializers.

    Subclasses set ``name`` (stored in manifests, so never change it once
    artifacts exist) and implement the three methods below. ``dumps`` and
    ``loads`` receive the artifact store, for serializers that store nested
    artifacts.
    """

    name: str = ""

    @abc.abstractmethod
    def can_write(self, value: Any) -> bool:
        """Return True when this serializer handles ``value``."""

    @abc.abstractmethod
    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        """Encode ``value``; raise to let the next serializer try."""

    @abc.abstractmethod
    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        """Decode what :meth:`dumps` wrote."""


@dataclasses.dataclass
class References:
    """Digests of the File and Directory artifacts found inside one value."""

    files: set[str] = dataclasses.field(default_factory=set)
    directories: set[str] = dataclasses.field(default_factory=set)


_references: contextvars.ContextVar[References | None] = contextvars.ContextVar(
    "pipedsl_references", default=None
)


@contextlib.contextmanager
def collect_references() -> Iterator[References]:
    """Record the File and Directory artifacts that serializers upload meanwhile.

    The store writes them into the manifest, so integrity checks and garbage
    collection know every object an entry needs without decoding its payload.
    """
    collected = References()
    token = _references.set(collected)
    try:
        yield collected
    finally:
        _references.reset(token)


class BytesSerializer(Serializer):
    name = "bytes"

    def can_write(self, value: Any) -> bool:
        return type(value) in (bytes, bytearray)

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        return bytes(value)

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        return data


def _is_plain_json(value: Any, depth: int = 0) -> bool:
    if depth > 100:
        return False
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_is_plain_json(item, depth + 1) for item in value)
    if kind is dict:
        return all(
            type(key) is str and _is_plain_json(item, depth + 1) for key, item in value.items()
        )
    return False


class JsonSerializer(Serializer):
    name = "json"

    def can_write(self, value: Any) -> bool:
        return _is_plain_json(value)

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        return json.loads(data)


class NpySerializer(Serializer):
    name = "npy"

    def can_write(self, value: Any) -> bool:
        numpy = sys.modules.get("numpy")
        return (
            numpy is not None
            and type(value) is numpy.ndarray
            and not value.dtype.hasobject
        )

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        import numpy

        buffer = io.BytesIO()
        numpy.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        import numpy

        return numpy.load(io.BytesIO(data), allow_pickle=False)


class ParquetSerializer(Serializer):
    name = "parquet"

    def can_write(self, value: Any) -> bool:
        pandas = sys.modules.get("pandas")
        if pandas is None or type(value) is not pandas.DataFrame:
            return False
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return False
        # Parquet needs string column names to round-trip exactly.
        return all(type(column) is str for column in value.columns)

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        buffer = io.BytesIO()
        value.to_parquet(buffer, engine="pyarrow")
        return buffer.getvalue()

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        import pandas

        return pandas.read_parquet(io.BytesIO(data), engine="pyarrow")


class TorchSerializer(Serializer):
    name = "torch"

    def can_write(self, value: Any) -> bool:
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        if isinstance(value, torch.Tensor):
            return True
        return (
            type(value) is dict
            and bool(value)
            and all(isinstance(item, torch.Tensor) for item in value.values())
        )

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)


class _ArtifactPickler(pickle.Pickler):
    """Pickler that uploads File and Directory handles and keeps their hashes."""

    def __init__(self, buffer: io.BytesIO, store: ArtifactStore) -> None:
        super().__init__(buffer, protocol=5)
        self.store = store

    def persistent_id(self, obj: Any) -> Any:
        references = _references.get()
        if type(obj) is File:
            digest, size = self.store.put_file_artifact(obj)
            if references is not None:
                references.files.add(digest)
            return ("file", digest, obj.name, size)
        if type(obj) is Directory:
            digest, listing = self.store.put_directory_artifact(obj)
            if references is not None:
                references.directories.add(digest)
                references.files.update(entry[0] for entry in listing.values())
            return ("directory", digest, obj.name, listing)
        return None


class _ArtifactCloudPickler(cloudpickle.Pickler):
    def __init__(self, buffer: io.BytesIO, store: ArtifactStore) -> None:
        super().__init__(buffer, protocol=5)
        self.store = store

    persistent_id = _ArtifactPickler.persistent_id


class _ArtifactUnpickler(pickle.Unpickler):
    def __init__(self, buffer: io.BytesIO, store: ArtifactStore) -> None:
        super().__init__(buffer)
        self.store = store

    def persistent_load(self, pid: Any) -> Any:
        kind, digest, name, extra = pid
        if kind == "file":
            return File._stored(digest, name, extra, self.store)
        if kind == "directory":
            listing = {path: tuple(entry) for path, entry in extra.items()}
            return Directory._stored(digest, name, listing, self.store)
        raise pickle.UnpicklingError(f"unknown persistent id kind {kind!r}")


class PickleSerializer(Serializer):
    name = "pickle"

    def can_write(self, value: Any) -> bool:
        return True

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        buffer = io.BytesIO()
        _ArtifactPickler(buffer, store).dump(value)
        return buffer.getvalue()

    def loads(self, data: bytes, store: ArtifactStore) -> Any:
        return _ArtifactUnpickler(io.BytesIO(data), store).load()


class CloudPickleSerializer(PickleSerializer):
    """Pickles by value what the standard pickle cannot find by name.

    Classes defined in a notebook come back as the notebook's own classes when
    loaded in the same process, because cloudpickle tracks the classes it
    pickled by value.
    """

    name = "cloudpickle"

    def dumps(self, value: Any, store: ArtifactStore) -> bytes:
        buffer = io.BytesIO()
        _ArtifactCloudPickler(buffer, store).dump(value)
        return buffer.getvalue()


_SERIALIZERS: list[Serializer] = [
    BytesSerializer(),
    JsonSerializer(),
    NpySerializer(),
    ParquetSerializer(),
    TorchSerializer(),
    PickleSerializer(),
    CloudPickleSerializer(),
]
_BY_NAME: dict[str, Serializer] = {s.name: s for s in _SERIALIZERS}
_BY_TYPE: dict[type, Serializer] = {}


def register_serializer(tp: type, serializer: Serializer) -> None:
    """Use ``serializer`` for values of type ``tp`` (and its subclasses).

    Examples
    --------
    >>> class Text:
    ...     def __init__(self, body): self.body = body
    >>> class TextSerializer(Serializer):
    ...     name = "text-v1"
    ...     def can_write(self, value): return isinstance(value, Text)
    ...     def dumps(self, value, store): return value.body.encode()
    ...     def loads(self, data, store): return Text(data.decode())
    >>> register_serializer(Text, TextSerializer())
    """
    if not isinstance(tp, type):
        raise TypeError(f"register_serializer needs a type as first argument, got {tp!r}")
    if not isinstance(serializer, Serializer):
        raise TypeError(
            f"register_serializer needs a pipedsl.Serializer instance, got {serializer!r}; "
            "subclass pipedsl.Serializer and pass an instance"
        )
    if not serializer.name:
        raise ValueError(f"serializer {serializer!r} needs a non-empty name attribute")
    existing = _BY_NAME.get(serializer.name)
    if existing is not None and type(existing) is not type(serializer):
        # Manifests store the name, so a second class under the same name
        # would decode artifacts written by the first one.
        raise ValueError(
            f"serializer name {serializer.name!r} is already used by "
            f"{type(existing).__qualname__}; give {type(serializer).__qualname__} "
            "another name, e.g. with a version suffix"
        )
    _BY_TYPE[tp] = serializer
    _BY_NAME[serializer.name] = serializer


def get_serializer(name: str) -> Serializer:
    """Return the serializer stored under ``name`` in a manifest."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise SerializationError(
            f"no serializer named {name!r} is registered; register it with "
            "pipedsl.register_serializer before loading this artifact"
        ) from None


def serializer_for(value: Any) -> list[Serializer]:
    """Return the serializers to try for ``value``, best first."""
    for tp in type(value).__mro__:
        if tp in _BY_TYPE:
            return [_BY_TYPE[tp]]
    return [s for s in _SERIALIZERS if s.can_write(value)]


def dumps(value: Any, store: ArtifactStore, job_name: str = "?") -> tuple[str, bytes]:
    """Encode ``value`` with the first serializer that succeeds."""
    errors = []
    for serializer in serializer_for(value):
        try:
            data = serializer.dumps(value, store)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
            errors.append(f"{serializer.name}: {exc}")
            continue
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SerializationError(
                f"serializer {serializer.name!r} returned {type(data).__qualname__} "
                f"for the output of job {job_name!r}; Serializer.dumps must return bytes"
            )
        return serializer.name, bytes(data)
    raise SerializationError(
        f"job {job_name!r} returned a value of type "
        f"{type(value).__module__}.{type(value).__qualname__} that no serializer can "
        f"write ({'; '.join(errors)}); return plain data, or register a serializer "
        "with pipedsl.register_serializer(type, serializer)"
    )
