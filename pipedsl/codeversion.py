"""Code versions: what a job's code contributes to its cache key.

The code version of a function is built from:

* its normalised source (the AST without decorators, docstring, comments,
  line numbers or file name), so blank lines, comments and moving the function
  within its file keep the version, while an edit to its body changes it;
* the same, transitively, for the user's own functions, classes and jobs that
  it reaches through its global names and closure cells;
* the fingerprints of simple global values it reads (numbers, strings, tuples,
  frozen dataclasses...), of closure cell values and of default arguments;
* for code from installed packages, the distribution name and version only.

Where no source can be read (a lambda typed into a REPL), the function's code
object stands in, without line numbers or file names; this never gives a
false hit, and a warning says so once per function. Builtins contribute their
package's version.

Each part is kept under a readable name (``source``, ``helper mod.fn``,
``global UNIT``...) so a cache miss can say which one changed.
"""

from __future__ import annotations

import ast
import dataclasses
import dis
import functools
import hashlib
import importlib.metadata
import inspect
import logging
import os
import sys
import sysconfig
import textwrap
import threading
import types
import warnings
import weakref
from typing import Any

from .hashing import Unfingerprintable, fingerprint

__all__ = ["CodeVersion", "code_version"]

logger = logging.getLogger(__name__)

_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class CodeVersion:
    """The code version of a job: one digest and the named parts it covers.

    ``volatile`` names a part that could not be fingerprinted (for example a
    closure over an open file); a job with a volatile code version is not
    cached.
    """

    digest: str
    parts: dict[str, str]
    volatile: str | None = None


def code_version(fn: Any) -> CodeVersion:
    """Compute the code version of ``fn`` and everything it reaches."""
    walker = _Walker()
    walker.function("source", fn, root=True)
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(walker.parts):
        digest.update(f"{name}={walker.parts[name]}\n".encode())
    return CodeVersion(digest.hexdigest(), dict(walker.parts), walker.volatile)


# -- where code comes from ------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + "pipedsl")
    return tuple(os.path.realpath(r) for r in roots if r)


@functools.lru_cache(maxsize=4096)
def _is_user_module(module_name: str) -> bool:
    if module_name in ("__main__", "__mp_main__") or module_name.startswith("__ipython"):
        return True
    if module_name == "pipedsl" or module_name.startswith("pipedsl."):
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    path = getattr(module, "__file__", None)
    if path is None:
        # Builtin modules have no file; so do notebook cells, which live in __main__.
        return False
    path = os.path.realpath(path)
    return not any(path.startswith(root + os.sep) for root in _library_roots())


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.lru_cache(maxsize=4096)
def _package_version(module_name: str) -> str:
    top = module_name.partition(".")[0]
    if top == "pipedsl":
        return f"pipedsl=={importlib.metadata.version('pipedsl')}"
    if top in sys.stdlib_module_names or top == "builtins":
        return f"python=={sys.version_info.major}.{sys.version_info.minor}"
    names = _distributions().get(top)
    if not names:
        return f"{top}==unknown"
    dist = names[0]
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist}==unknown"


# -- normalised source ------------------------------------------------------------


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
        and len(body) > 1
    ):
        return body[1:]
    return body


# CPython 3.11's ast module can fail with "AST constructor recursion depth
# mismatch" when threads parse at once, so parsing is serialised. Results are
# memoised per code object (or class), because those never change once created.
_ast_lock = threading.Lock()
_source_memo: dict[Any, str | None] = {}
_class_memo: weakref.WeakKeyDictionary[type, str | None] = weakref.WeakKeyDictionary()


def _normalised_source(obj: Any) -> str | None:
    """Return an AST dump of ``obj``'s definition, or None when unreadable."""
    code = getattr(obj, "__code__", None)
    memo: Any = _source_memo if code is not None else _class_memo
    memo_key = code if code is not None else obj
    with _ast_lock:
        try:
            return memo[memo_key]  # type: ignore[no-any-return]
        except (KeyError, TypeError):
            pass
        result = _parse_source(obj)
        try:
            memo[memo_key] = result
        except TypeError:  # an object that cannot be a weak key
            pass
        return result


def _parse_source(obj: Any) -> str | None:
    # The code object's own source and name: inspect.getsource(function)
    # follows __wrapped__, and functools.wraps copies the target's __name__.
    code = getattr(obj, "__code__", None)
    name = code.co_name if code is not None else getattr(obj, "__name__", None)
    try:
        source = textwrap.dedent(inspect.getsource(code if code is not None else obj))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if name is not None and node.name != name:
                continue
            node.decorator_list = []
            node.body = _strip_docstring(node.body)
            return ast.dump(node, annotate_fields=False, include_attributes=False)
        if isinstance(node, ast.Lambda) and name == "<lambda>":
            lambdas = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
            if len(lambdas) > 1:
                # Several lambdas on the lines getsource returns: the source
                # cannot tell them apart, their bytecode can.
                return "lambda-bytecode:" + _code_digest(obj.__code__)
            return ast.dump(node, annotate_fields=False, include_attributes=False)
    return None


def _code_digest(code: types.CodeType) -> str:
    """Hash a code object without its line numbers and file name."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            digest.update(_code_digest(const).encode())
        else:
            try:
                digest.update(fingerprint(const).encode())
            except Unfingerprintable:
                digest.update(repr(type(const)).encode())
    return digest.hexdigest()


def _referenced_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _referenced_names(const)
    return names


_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})


def _global_names(code: types.CodeType) -> set[str]:
    """Names that ``code`` (and code nested in it) reads or writes as globals.

    Unlike ``co_names`` this leaves out attribute names, so ``os.path`` does
    not make a notebook variable called ``path`` part of the code version.
    """
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _module_label(module_name: str) -> str:
    """Name a module in part labels the same whether it runs as a script or not.

    ``python wine.py`` runs ``wine.py`` as ``__main__``; ``pipedsl run
    wine.py:wf`` imports it as ``wine``. Both label its helpers ``wine.x``,
    so both share cache entries.
    """
    if module_name in ("__main__", "__mp_main__"):
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return module_name


def _is_generated(fn: Any) -> bool:
    """Tell whether ``fn`` was generated by dataclasses, namedtuple or attrs."""
    # The qualified name survives pickling by value; the "<string>" file name
    # does not (cloudpickle rebuilds code objects under another file name).
    qualname = getattr(fn, "__qualname__", "")
    return "__create_fn__" in qualname or fn.__code__.co_filename == "<string>"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


# -- the walk ---------------------------------------------------------------------


class _Walker:
    """Collects the named parts of a code version, visiting each object once."""

    def __init__(self) -> None:
        self.parts: dict[str, str] = {}
        self.volatile: str | None = None
        self._seen: set[int] = set()
        self._seen_modules: set[tuple[int, int]] = set()

    def function(self, label: str, fn: Any, root: bool = False, unwrap: bool = True) -> None:
        from .dsl import Job  # local: dsl imports this module

        if isinstance(fn, Job):
            if fn.version is not None:
                self.parts[label] = f"version={fn.version}"
                return
            fn = fn.fn
        # Decorator wrappers (functools.wraps) carry their own code and
        # closure, e.g. the 2 of @scale(2): they count, then the wrapped function.
        wrappers = []
        while unwrap and hasattr(fn, "__wrapped__") and getattr(fn, "__code__", None) is not None:
            wrappers.append(fn)
            fn = fn.__wrapped__
        if id(fn) in self._seen:
            return
        self._seen.add(id(fn))
        label = self._unique(label)
        for index, wrapper in enumerate(wrappers):
            self.function(f"{label} decorator {index}", wrapper, root=root, unwrap=False)

        module = getattr(fn, "__module__", None) or "builtins"
        code = getattr(fn, "__code__", None)
        if code is not None and not root and _is_generated(fn):
            # Methods generated by dataclasses, namedtuple and attrs follow from
            # the class body, which is part of the version already.
            return
        if code is None or (not root and not _is_user_module(module)):
            self.parts[f"package {_package_version(module).partition('==')[0]}"] = (
                _package_version(module)
            )
            return

        source = _normalised_source(fn)
        if source is None:
            _warn_once(
                f"{module}.{fn.__qualname__}",
                f"pipedsl: the source of {fn.__qualname__!r} cannot be read, so its "
                "code version is built from its bytecode and changes with the "
                "Python version; define it in a file to get stable cache keys",
            )
            source = "bytecode:" + _code_digest(code)
        self.parts[label] = hashlib.blake2b(source.encode(), digest_size=16).hexdigest()

        self._defaults(label, fn)
        self._closure(label, fn, code)
        self._globals(fn, code)

    def _unique(self, label: str) -> str:
        # Two helpers may share a name (lambdas, functions made by one
        # factory); a counter keeps their parts apart, in walk order.
        if label not in self.parts:
            return label
        index = 2
        while f"{label}#{index}" in self.parts:
            index += 1
        return f"{label}#{index}"

    def _defaults(self, label: str, fn: Any) -> None:
        defaults = (getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None))
        if defaults == (None, None):
            return
        name = "defaults" if label == "source" else f"defaults of {label}"
        self.value(name, defaults)

    def _closure(self, label: str, fn: Any, code: types.CodeType) -> None:
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: the name is not bound yet
                continue
            prefix = "closure" if label == "source" else f"closure of {label}:"
            self.reference(f"{prefix} {name}", value)

    def _globals(self, fn: Any, code: types.CodeType) -> None:
        namespace = getattr(fn, "__globals__", {})
        for name in sorted(_global_names(code)):
            if name in namespace:
                self.reference(name, namespace[name], code=code)

    def reference(self, name: str, value: Any, code: types.CodeType | None = None) -> None:
        """Record what a global or closure name contributes."""
        from .dsl import Job

        if isinstance(value, Job) or isinstance(value, (types.FunctionType, functools.partial)):
            target = value.func if isinstance(value, functools.partial) else value
            module = getattr(target, "__module__", None) or ""
            qualname = getattr(getattr(target, "fn", target), "__qualname__", name)
            label = (
                f"helper {_module_label(module)}.{qualname}"
                if not name.startswith("closure")
                else name
            )
            if isinstance(value, Job) and not name.startswith("closure"):
                label = f"job {value.name}"
            if isinstance(value, functools.partial):
                self.value(f"{label} arguments", (value.args, value.keywords), strict=False)
            self.function(label, target)
            return
        if isinstance(value, type):
            self.klass(value)
            return
        if isinstance(value, types.ModuleType):
            self.module(value, code)
            return
        if isinstance(value, types.MethodType) and isinstance(value.__func__, types.FunctionType):
            owner = value.__self__ if isinstance(value.__self__, type) else type(value.__self__)
            if _is_user_module(owner.__module__):
                # A bound method of the user's class: its class, then its state.
                self.klass(owner)
                if not isinstance(value.__self__, type):
                    self.value(f"global {name} instance", value.__self__, strict=False)
                return
        if isinstance(value, (types.BuiltinFunctionType, types.MethodType)):
            module = getattr(value, "__module__", None) or "builtins"
            self.parts[f"package {_package_version(module).partition('==')[0]}"] = (
                _package_version(module)
            )
            return
        if _is_user_module(type(value).__module__):
            # An instance of the user's class: its methods are code too.
            self.klass(type(value))
        label = name if name.startswith("closure") else f"global {name}"
        self.value(label, value, strict=False)

    def value(self, label: str, value: Any, strict: bool = True) -> None:
        try:
            self.parts[label] = fingerprint(value)
        except Unfingerprintable as exc:
            if strict:
                # A default argument that cannot be fingerprinted: the job may
                # compute with it, so caching would risk a false hit.
                self.volatile = f"{label} ({exc})"
            else:
                # A global or closure object (a logger, a lock, a client, a
                # call recorder) is recorded by type only: it is state, not code.
                self.parts[label] = f"object {type(value).__module__}.{type(value).__qualname__}"

    def klass(self, cls: type) -> None:
        if id(cls) in self._seen:
            return
        self._seen.add(id(cls))
        if not _is_user_module(cls.__module__):
            self.parts[f"package {_package_version(cls.__module__).partition('==')[0]}"] = (
                _package_version(cls.__module__)
            )
            return
        label = f"class {_module_label(cls.__module__)}.{cls.__qualname__}"
        source = _normalised_source(cls)
        if source is None:
            # A class typed into a REPL: its methods' bytecode replaces the source.
            methods = sorted(
                (attr, _code_digest(member.__code__))
                for attr, member in cls.__dict__.items()
                if isinstance(member, types.FunctionType)
            )
            source = f"{cls.__qualname__}:{methods!r}"
        self.parts[label] = hashlib.blake2b(source.encode(), digest_size=16).hexdigest()
        for base in cls.__mro__[1:]:
            if base is not object:
                self.klass(base)
        for attr, member in sorted(cls.__dict__.items()):
            if isinstance(member, property):
                functions = [member.fget, member.fset, member.fdel]
            else:
                functions = [getattr(member, "__func__", member)]
            for function in functions:
                if isinstance(function, types.FunctionType) and not _is_generated(function):
                    code = function.__code__
                    self._seen.add(id(function))
                    self._defaults(f"{label}.{attr}", function)
                    self._closure(f"{label}.{attr}", function, code)
                    self._globals(function, code)

    def module(self, module: types.ModuleType, code: types.CodeType | None) -> None:
        # Each code object may read other attributes of the module.
        visit = (id(module), id(code))
        if visit in self._seen_modules:
            return
        self._seen_modules.add(visit)
        if not _is_user_module(module.__name__):
            self.parts[f"package {_package_version(module.__name__).partition('==')[0]}"] = (
                _package_version(module.__name__)
            )
            return
        # A user module: follow the attributes this code reads from it.
        if code is None:
            return
        for attr in sorted(_referenced_names(code)):
            if attr in vars(module):
                self.reference(f"{module.__name__}.{attr}", vars(module)[attr], code=code)
