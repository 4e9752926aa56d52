"""Process-wide settings: artifact store, executor and run defaults."""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

from .store import ArtifactStore

__all__ = ["Config", "configure", "get_config"]

EXECUTORS = ("inline", "threads", "processes", "dask", "ray", "fedml")


@dataclasses.dataclass
class Config:
    """Settings used by runs that do not override them.

    ``store`` defaults to ``$PIPEDSL_STORE`` or ``./.pipedsl``; ``executor``
    to ``$PIPEDSL_EXECUTOR`` or ``"threads"``.
    """

    store: str = dataclasses.field(
        default_factory=lambda: os.environ.get("PIPEDSL_STORE", ".pipedsl")
    )
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    executor: Any = dataclasses.field(
        default_factory=lambda: os.environ.get("PIPEDSL_EXECUTOR", "threads")
    )
    max_workers: int | None = None
    progress: bool | None = None
    on_failure: str = "stop"
    download_cache: str | None = None
    download_cache_size: int = 20 * 2**30
    record_interval: float = 2.0

    _stores: dict[tuple[str, str], ArtifactStore] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def open_store(
        self, url: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> ArtifactStore:
        """Return the artifact store for ``url`` (default: the configured one).

        Stores are reused per URL and options, so one filesystem object serves
        every operation.
        """
        url = url or self.store
        options = self.storage_options if storage_options is None else storage_options
        if isinstance(url, ArtifactStore):
            return url
        if "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        cache_key = (url, repr(sorted(options.items())))
        with _lock:
            store = self._stores.get(cache_key)
            if store is None:
                store = ArtifactStore(
                    url,
                    options,
                    download_cache=self.download_cache,
                    download_cache_size=self.download_cache_size,
                )
                self._stores[cache_key] = store
        return store


_lock = threading.Lock()
_config = Config()


def get_config() -> Config:
    """Return the process-wide settings."""
    return _config


def configure(
    *,
    store: str | None = None,
    storage_options: dict[str, Any] | None = None,
    executor: Any = None,
    max_workers: int | None = None,
    progress: bool | None = None,
    on_failure: str | None = None,
    download_cache: str | None = None,
    download_cache_size: int | None = None,
) -> Config:
    """Change the process-wide settings; arguments left as None keep their value.

    Parameters
    ----------
    store:
        Artifact store URL: a local folder (default ``./.pipedsl``),
        ``s3://bucket/prefix``, or any fsspec URL.
    storage_options:
        Options for the fsspec filesystem, e.g. ``{"client_kwargs":
        {"endpoint_url": "http://127.0.0.1:9000"}}`` for MinIO.
    executor:
        ``"inline"``, ``"threads"``, ``"processes"``, ``"dask"``, ``"ray"``,
        ``"fedml"``, a ``dask.distributed.Client``, or an :class:`Executor`.
    max_workers:
        Upper bound on tasks running at once (threads and processes).

    Examples
    --------
    >>> import pipedsl
    >>> settings = pipedsl.configure(executor="threads", max_workers=4)
    >>> settings.max_workers
    4
    """
    if on_failure is not None and on_failure not in ("stop", "continue"):
        raise ValueError(f"on_failure must be 'stop' or 'continue', got {on_failure!r}")
    if isinstance(executor, str) and executor not in EXECUTORS:
        raise ValueError(
            f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}"
        )
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
    changes = {
        "store": store,
        "storage_options": storage_options,
        "executor": executor,
        "max_workers": max_workers,
        "progress": progress,
        "on_failure": on_failure,
        "download_cache": download_cache,
        "download_cache_size": download_cache_size,
    }
    for name, value in changes.items():
        if value is not None:
            setattr(_config, name, value)
    if download_cache is not None or download_cache_size is not None:
        _config._stores.clear()
    return _config
