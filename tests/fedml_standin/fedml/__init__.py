"""Stand-in for the ``fedml`` package: only ``fedml.api`` launch and run calls."""

from . import api

IS_PIPEDSL_STANDIN = True

__all__ = ["api"]
