"""Deterministic fingerprints of values.

A fingerprint is a 32-character hex digest of a canonical, type-tagged byte
encoding of a value. It never depends on ``PYTHONHASHSEED``, on object ids or
on ``repr``: ``1``, ``1.0``, ``"1"``, ``b"1"`` and ``True`` all differ, sets
are sorted by the fingerprints of their elements, dicts are encoded by content
in a canonical order, and large buffers are hashed in place (no copy) with
xxHash3-128.

Types are handled by a registry looked up along the MRO, so users can add
their own with :func:`register_fingerprint`. A value of a type with no
handler raises :class:`Unfingerprintable`; callers then decline to cache the
task instead of guessing a key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import pathlib
import struct
import sys
from collections.abc import Callable
from typing import Any

import xxhash

__all__ = [
    "Fingerprinter",
    "Unfingerprintable",
    "fingerprint",
    "register_fingerprint",
]

# Buffers at least this large are hashed on their own with xxh3-128 and only
# their digest enters the outer hash: blake2b runs near 1 GB/s, xxh3 at >10.
_LARGE_BUFFER = 64 * 1024

Handler = Callable[["Fingerprinter", Any], None]
_HANDLERS: dict[type, Handler] = {}
_LAZY_HANDLERS: dict[str, Callable[[], None]] = {}


class Unfingerprintable(TypeError):
    """A value has no deterministic fingerprint.

    ``path`` names where in the argument the value sits, e.g. ``config['model']``.
    """

    def __init__(self, value: Any, path: str = "") -> None:
        self.value_type = type(value)
        self.path = path
        name = f"{self.value_type.__module__}.{self.value_type.__qualname__}"
        where = f" at {path}" if path else ""
        super().__init__(
            f"no deterministic fingerprint for a value of type {name}{where}; "
            f"register one with pipedsl.register_fingerprint({self.value_type.__name__}, fn)"
        )


def register_fingerprint(tp: type, fn: Callable[[Any], Any]) -> None:
    """Register ``fn`` as the fingerprint of values of type ``tp``.

    ``fn(value)`` returns any value pipedsl can already fingerprint (bytes, a
    string, a tuple of numbers...). The result is tagged with the type's
    qualified name, so two types mapping to the same tuple still differ.

    Examples
    --------
    >>> class Point:
    ...     def __init__(self, x, y):
    ...         self.x, self.y = x, y
    >>> register_fingerprint(Point, lambda p: (p.x, p.y))
    >>> fingerprint(Point(1, 2)) == fingerprint(Point(1, 2))
    True
    """

    def handler(fp: Fingerprinter, value: Any) -> None:
        fp.tag("user", _type_name(type(value)))
        fp.update(fn(value))

    _HANDLERS[tp] = handler


def _type_name(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


class Fingerprinter:
    """Incremental canonical encoder feeding one blake2b hash."""

    __slots__ = ("_hash", "_path", "_active")

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._path: list[str] = []
        # ids of containers being encoded, to reject reference cycles.
        self._active: set[int] = set()

    def tag(self, kind: str, detail: str = "") -> None:
        data = f"{kind}:{detail}".encode()
        self._hash.update(struct.pack("<I", len(data)))
        self._hash.update(data)

    def raw(self, data: bytes | memoryview) -> None:
        self._hash.update(struct.pack("<Q", len(data)))
        if len(data) >= _LARGE_BUFFER:
            self._hash.update(xxhash.xxh3_128_digest(data))
        else:
            self._hash.update(data)

    def update(self, value: Any) -> None:
        """Encode ``value`` into the hash."""
        handler = _HANDLERS.get(type(value))
        if handler is None:
            handler = _find_handler(type(value))
        if handler is None:
            raise Unfingerprintable(value, "".join(self._path))
        handler(self, value)

    def child(self, label: str, value: Any) -> None:
        self._path.append(label)
        try:
            self.update(value)
        finally:
            self._path.pop()

    def enter(self, value: Any) -> None:
        if id(value) in self._active:
            raise Unfingerprintable(value, "".join(self._path) + " (reference cycle)")
        self._active.add(id(value))

    def leave(self, value: Any) -> None:
        self._active.discard(id(value))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def fingerprint(value: Any) -> str:
    """Return the deterministic fingerprint of ``value`` as 32 hex characters.

    Raises :class:`Unfingerprintable` for values of a type without a handler.

    Examples
    --------
    >>> fingerprint(1) != fingerprint(1.0) != fingerprint("1")
    True
    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    """
    fp = Fingerprinter()
    fp.update(value)
    return fp.hexdigest()


def _find_handler(tp: type) -> Handler | None:
    module = tp.__module__.partition(".")[0]
    loader = _LAZY_HANDLERS.pop(module, None)
    if loader is not None:
        loader()
        if tp in _HANDLERS:
            return _HANDLERS[tp]
    if issubclass(tp, enum.Enum):
        # Before the MRO walk, so an IntEnum member never fingerprints as an int.
        _HANDLERS[tp] = _enum
        return _enum
    for base in tp.__mro__[1:]:
        if base in _HANDLERS:
            handler = _HANDLERS[base]
            _HANDLERS[tp] = handler
            return handler
    if dataclasses.is_dataclass(tp):
        _HANDLERS[tp] = _dataclass
        return _dataclass
    if _is_pydantic_model(tp):
        _HANDLERS[tp] = _pydantic
        return _pydantic
    return None


def _is_pydantic_model(tp: type) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(tp, pydantic.BaseModel)


# -- handlers for built-in types ------------------------------------------------


def _none(fp: Fingerprinter, value: None) -> None:
    fp.tag("none")


def _bool(fp: Fingerprinter, value: bool) -> None:
    fp.tag("bool", "1" if value else "0")


def _int(fp: Fingerprinter, value: int) -> None:
    number = int(value)
    if -(10**18) < number < 10**18:
        fp.tag("int", str(number))
    else:
        # Large ints by their bytes: str() refuses more than 4,300 digits.
        size = (number.bit_length() + 8) // 8
        fp.tag("bigint")
        fp.raw(number.to_bytes(size, "little", signed=True))


def _float(fp: Fingerprinter, value: float) -> None:
    if math.isnan(value):
        fp.tag("float", "nan")
    else:
        fp.tag("float", struct.pack("<d", value).hex())


def _complex(fp: Fingerprinter, value: complex) -> None:
    fp.tag("complex", struct.pack("<dd", value.real, value.imag).hex())


def _str(fp: Fingerprinter, value: str) -> None:
    fp.tag("str" if type(value) is str else f"str:{_type_name(type(value))}")
    fp.raw(value.encode("utf-8", "surrogatepass"))


def _bytes(fp: Fingerprinter, value: bytes | bytearray | memoryview) -> None:
    fp.tag("bytes")
    view = memoryview(value)
    fp.raw(view if view.c_contiguous else view.tobytes())


def _container_tag(value: Any) -> str:
    kind = type(value)
    if kind in (list, tuple, dict, set, frozenset):
        return kind.__name__
    # Subclasses (namedtuple, Counter, defaultdict...) differ from their base
    # and from each other; a namedtuple also by its field names.
    fields = getattr(kind, "_fields", None)
    return f"{_type_name(kind)}{list(fields) if fields is not None else ''}"


def _sequence(fp: Fingerprinter, value: list[Any] | tuple[Any, ...]) -> None:
    fp.enter(value)
    fp.tag(_container_tag(value), str(len(value)))
    for index, item in enumerate(value):
        fp.child(f"[{index}]", item)
    fp.leave(value)


def _set(fp: Fingerprinter, value: set[Any] | frozenset[Any]) -> None:
    digests = []
    for item in value:
        sub = Fingerprinter()
        sub._path = [*fp._path, "{...}"]
        sub.update(item)
        digests.append(sub.hexdigest())
    fp.tag(_container_tag(value), str(len(value)))
    for digest in sorted(digests):
        fp.raw(bytes.fromhex(digest))


def _dict(fp: Fingerprinter, value: dict[Any, Any]) -> None:
    # Canonical order: by the fingerprint of each key, which never compares user
    # values with == or < and does not depend on insertion order.
    fp.enter(value)
    entries = []
    for key, item in value.items():
        sub = Fingerprinter()
        sub._path = [*fp._path, f"[{key!r}]" if isinstance(key, (str, int)) else "[key]"]
        sub.update(key)
        entries.append((sub.hexdigest(), key, item))
    fp.tag(_container_tag(value), str(len(value)))
    for digest, key, item in sorted(entries, key=lambda entry: entry[0]):
        fp.raw(bytes.fromhex(digest))
        label = f"[{key!r}]" if isinstance(key, (str, int)) else "[...]"
        fp.child(label, item)
    fp.leave(value)


def _dataclass(fp: Fingerprinter, value: Any) -> None:
    # Every field counts, including repr=False and compare=False ones: two
    # instances that a job can tell apart must never share a key.
    fp.enter(value)
    fp.tag("dataclass", _type_name(type(value)))
    for field in dataclasses.fields(value):
        fp.tag("field", field.name)
        fp.child(f".{field.name}", getattr(value, field.name))
    fp.leave(value)


def _pydantic(fp: Fingerprinter, value: Any) -> None:
    fp.tag("pydantic", _type_name(type(value)))
    fp.update(value.model_dump(mode="python"))


def _enum(fp: Fingerprinter, value: enum.Enum) -> None:
    fp.tag("enum", f"{_type_name(type(value))}.{value.name}")


def _path(fp: Fingerprinter, value: pathlib.PurePath) -> None:
    fp.tag("path", type(value).__name__)
    fp.raw(str(value).encode("utf-8", "surrogatepass"))


def _range(fp: Fingerprinter, value: range) -> None:
    fp.tag("range", f"{value.start}:{value.stop}:{value.step}")


def _type(fp: Fingerprinter, value: type) -> None:
    fp.tag("type", _type_name(value))


_HANDLERS.update(
    {
        type(None): _none,
        bool: _bool,
        int: _int,
        float: _float,
        complex: _complex,
        str: _str,
        bytes: _bytes,
        bytearray: _bytes,
        memoryview: _bytes,
        list: _sequence,
        tuple: _sequence,
        set: _set,
        frozenset: _set,
        dict: _dict,
        enum.Enum: _enum,
        pathlib.PurePath: _path,
        range: _range,
        type: _type,
    }
)


# -- numpy and pandas, registered on first sight of their types -----------------


def _load_numpy() -> None:
    import numpy as np

    def dtype_text(dtype: Any) -> str:
        # descr names the fields of structured dtypes, which str hides as |V16.
        return str(dtype.descr) if dtype.fields is not None else dtype.str

    def ndarray(fp: Fingerprinter, value: Any) -> None:
        if type(value) is not np.ndarray:
            fp.tag("ndarray-subclass", _type_name(type(value)))
        if value.dtype.hasobject:
            fp.tag("ndarray-object", str(value.shape))
            fp.update(value.tolist())
            return
        fp.tag("ndarray", f"{dtype_text(value.dtype)}|{value.shape}")
        data = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        # A byte view, because datetime64 and some other dtypes have no
        # buffer format that memoryview can cast.
        fp.raw(memoryview(data.reshape(-1).view(np.uint8)))

    def masked(fp: Fingerprinter, value: Any) -> None:
        fp.tag("masked-array")
        ndarray(fp, np.asarray(value.data))
        ndarray(fp, np.ma.getmaskarray(value))
        fp.update(value.fill_value)

    def scalar(fp: Fingerprinter, value: Any) -> None:
        fp.tag("npscalar", dtype_text(value.dtype))
        fp.raw(value.tobytes())

    def dtype(fp: Fingerprinter, value: Any) -> None:
        fp.tag("dtype", dtype_text(value))

    _HANDLERS[np.ndarray] = ndarray
    _HANDLERS[np.ma.MaskedArray] = masked
    _HANDLERS[np.generic] = scalar
    _HANDLERS[np.dtype] = dtype


def _load_pandas() -> None:
    import numpy as np
    import pandas as pd

    def values(fp: Fingerprinter, series: Any) -> None:
        fp.tag("dtype", str(series.dtype))
        if isinstance(series.dtype, pd.CategoricalDtype):
            # Categories, their order and the codes: str(dtype) is "category".
            fp.update(bool(series.dtype.ordered))
            values(fp, pd.Series(series.dtype.categories))
            fp.update(np.asarray(series.cat.codes))
            return
        array = series.to_numpy()
        if array.dtype.hasobject:
            # Element by element, with their types: pandas' own object hashing
            # goes through str() and makes 1 and "1" equal.
            fp.update(list(array))
        else:
            fp.update(np.ascontiguousarray(array))

    def index(fp: Fingerprinter, value: Any) -> None:
        fp.tag("index", type(value).__name__)
        fp.update(list(value.names))
        values(fp, value.to_series(index=None) if hasattr(value, "to_series") else value)

    def series(fp: Fingerprinter, value: Any) -> None:
        fp.tag("series")
        fp.update(value.name)
        index(fp, value.index)
        values(fp, value)

    def frame(fp: Fingerprinter, value: Any) -> None:
        fp.tag("dataframe", str(value.shape))
        fp.update(value.columns.name)
        fp.update([str(column) for column in value.columns])
        fp.update([type(column).__name__ for column in value.columns])
        index(fp, value.index)
        for position in range(value.shape[1]):
            values(fp, value.iloc[:, position])

    _HANDLERS[pd.DataFrame] = frame
    _HANDLERS[pd.Series] = series
    _HANDLERS[pd.Index] = index


_LAZY_HANDLERS["numpy"] = _load_numpy
_LAZY_HANDLERS["pandas"] = _load_pandas
