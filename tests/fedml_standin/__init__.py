"""A local stand-in for ``fedml.api`` that runs launched jobs as subprocesses.

:func:`install` puts the ``fedml`` package of this folder first on
``sys.path`` and returns its ``fedml.api`` module; :func:`uninstall` stops
every run and removes it again.
"""

from __future__ import annotations

import os
import sys
from typing import Any

FOLDER = os.path.dirname(os.path.abspath(__file__))


def _forget_fedml() -> None:
    for name in list(sys.modules):
        if name == "fedml" or name.startswith("fedml."):
            del sys.modules[name]


def install() -> Any:
    """Make ``import fedml.api`` load the stand-in; return its api module."""
    _forget_fedml()
    sys.path.insert(0, FOLDER)
    import fedml.api

    if not getattr(fedml, "IS_PIPEDSL_STANDIN", False):
        raise RuntimeError(f"imported {fedml.__file__} instead of the stand-in in {FOLDER}")
    fedml.api.reset()
    return fedml.api


def uninstall() -> None:
    """Stop every stand-in run and unload the stand-in."""
    api = sys.modules.get("fedml.api")
    if api is not None and hasattr(api, "stop_all"):
        api.stop_all()
    if FOLDER in sys.path:
        sys.path.remove(FOLDER)
    _forget_fedml()
