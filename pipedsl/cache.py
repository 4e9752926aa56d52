"""Cache administration: list and remove entries, collect garbage.

The functions work on any :class:`~pipedsl.store.ArtifactStore` (local
folder, S3, memory) and are what the ``pipedsl cache`` commands call.

An *entry* is one manifest ``tasks/<job>/<digest>.json``. Removing an entry
makes its task a cache miss at once, while its payload stays until
:func:`collect_garbage` finds that no entry refers to it, because payloads are
content-addressed and several entries may share one.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from .store import ArtifactStore, Manifest, safe_name

__all__ = ["collect_garbage", "list_entries", "parse_age", "remove_entries"]

logger = logging.getLogger(__name__)

_AGE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

# Run records whose status is still "running" but which have not been
# written for this long belong to a crashed process and protect nothing.
# The scheduler rewrites its record every few seconds while a run is alive.
STALE_RUN_SECONDS = 24 * 3600.0


def parse_age(value: float | str) -> float:
    """Parse an age such as ``3600``, ``"90m"``, ``"12h"``, ``"30d"`` into seconds.

    Examples
    --------
    >>> parse_age("30d")
    2592000.0
    >>> parse_age(0)
    0.0
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid age {value!r}; use seconds or a string like '30d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _AGE.match(str(value))
        if match is None:
            raise ValueError(
                f"invalid age {value!r}; use seconds as a number or a string such as "
                "'45s', '90m', '12h', '30d' or '2w'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"age must be at least 0 seconds, got {value!r}")
    return seconds


def list_entries(store: ArtifactStore, job: str | None = None) -> list[dict[str, Any]]:
    """Return the manifests in ``store`` (of ``job`` only, if given), oldest first.

    Each manifest holds at least ``key``, ``job``, ``serializer``, ``object``,
    ``size`` and ``created`` (Unix time).

    Examples
    --------
    >>> store = ArtifactStore("memory://doctest-cache-list")
    >>> _ = store.save("train", "train-1a2b", [1, 2])
    >>> [(entry["job"], entry["size"]) for entry in list_entries(store)]
    [('train', 5)]
    """
    entries = list(store.iter_manifests(job))
    entries.sort(key=lambda entry: (entry.get("created", 0.0), entry.get("key", "")))
    return entries


def _matches(manifest: Manifest, wanted: set[str]) -> bool:
    key = str(manifest.get("key", ""))
    return key in wanted or key.rpartition("-")[2] in wanted


def remove_entries(
    store: ArtifactStore,
    job: str | None = None,
    keys: list[str] | None = None,
) -> int:
    """Remove entries and return how many were removed.

    Parameters
    ----------
    store:
        The artifact store.
    job:
        Only entries of this job. With neither ``job`` nor ``keys``, every
        entry of the store is removed.
    keys:
        Only these task keys; a key may be given whole (``train-3f9a...``)
        or as the digest after its last ``-``.

    Payloads stay until :func:`collect_garbage` removes the unreferenced ones.

    Examples
    --------
    >>> store = ArtifactStore("memory://doctest-cache-remove")
    >>> _ = store.save("train", "train-1a2b", [1, 2])
    >>> remove_entries(store, job="train")
    1
    """
    if keys is not None and not isinstance(keys, (list, tuple, set)):
        raise TypeError(f"keys must be a list of task keys, got {keys!r}")
    wanted = {str(k) for k in keys} if keys is not None else None
    removed = 0
    for manifest in list(store.iter_manifests(job)):
        if wanted is not None and not _matches(manifest, wanted):
            continue
        if store.delete_entry(str(manifest["job"]), str(manifest["key"])):
            removed += 1
            logger.info("removed cache entry %s", manifest["key"])
    return removed


def _protected_keys(
    store: ArtifactStore, cutoff: float, now: float
) -> tuple[set[tuple[str, str]], float]:
    """Return the (job, key) pairs that live or recent runs need.

    Also returns the start time of the oldest live run (``inf`` if none):
    objects written after it may belong to a task whose manifest is not
    written yet.
    """
    protected: set[tuple[str, str]] = set()
    oldest_live = float("inf")
    for run_id in store.list_runs():
        record = store.read_record(run_id)
        if record is None:
            continue
        started = float(record.get("started") or 0.0)
        ended = record.get("ended")
        live = record.get("status") == "running" and ended is None
        if live:
            # A record stops being rewritten when its process dies.
            if now - max(started, _record_time(store, run_id)) > STALE_RUN_SECONDS:
                live = False
        recent = max(started, float(ended or 0.0)) >= cutoff
        if not (live or recent):
            continue
        if live:
            oldest_live = min(oldest_live, started)
        for task in record.get("tasks", ()):
            protected.add((safe_name(str(task.get("job", ""))), str(task.get("key", ""))))
    return protected, oldest_live


def _record_time(store: ArtifactStore, run_id: str) -> float:
    from .store import _modified

    try:
        return _modified(store.fs.info(store.record_path(run_id)))
    except FileNotFoundError:
        return 0.0


def _referenced_objects(manifests: list[Manifest]) -> set[str]:
    """Return object names (digests and ``<digest>.dir``) the manifests need."""
    names: set[str] = set()
    for manifest in manifests:
        names.add(str(manifest["object"]))
        names.update(str(digest) for digest in manifest.get("files", ()))
        names.update(f"{digest}.dir" for digest in manifest.get("directories", ()))
    return names


def collect_garbage(
    store: ArtifactStore,
    older_than: float | str = "30d",
    dry_run: bool = False,
    keep_live_runs: bool = True,
) -> dict[str, Any]:
    """Remove entries older than ``older_than`` and objects no entry needs.

    Parameters
    ----------
    store:
        The artifact store.
    older_than:
        Age in seconds, or a string such as ``"12h"`` or ``"30d"``. Entries
        created before ``now - older_than`` are removed, and so are
        unreferenced objects last modified before that time.
    dry_run:
        Count what would be removed and remove nothing.
    keep_live_runs:
        Keep every entry that a running run, or a run that started or ended
        after the cutoff, lists among its tasks, and every object written
        since the oldest running run started. With False, run records are
        ignored.

    Returns
    -------
    dict
        ``entries_removed``, ``entries_kept``, ``entries_protected`` (kept
        because a run needs them), ``objects_removed``, ``objects_kept``,
        ``bytes_freed``, ``temporary_removed`` and ``dry_run``.

    Notes
    -----
    An object written by a task of a run that is not recorded as running
    (a task started by a process whose record is stale) and older than the
    cutoff is treated as garbage. Use a cutoff longer than your longest task.

    Examples
    --------
    >>> store = ArtifactStore("memory://doctest-cache-gc")
    >>> _ = store.save("train", "train-1a2b", [1, 2])
    >>> report = collect_garbage(store, older_than=0, keep_live_runs=False)
    >>> report["entries_removed"], report["objects_removed"]
    (1, 1)
    """
    now = time.time()
    cutoff = now - parse_age(older_than)
    protected: set[tuple[str, str]] = set()
    oldest_live = float("inf")
    if keep_live_runs:
        protected, oldest_live = _protected_keys(store, cutoff, now)

    report: dict[str, Any] = {
        "entries_removed": 0,
        "entries_kept": 0,
        "entries_protected": 0,
        "objects_removed": 0,
        "objects_kept": 0,
        "bytes_freed": 0,
        "temporary_removed": 0,
        "dry_run": dry_run,
    }
    kept: list[Manifest] = []
    for manifest in store.iter_manifests():
        job, key = str(manifest.get("job", "")), str(manifest.get("key", ""))
        created = float(manifest.get("created") or 0.0)
        if created >= cutoff:
            kept.append(manifest)
            continue
        if (safe_name(job), key) in protected:
            report["entries_protected"] += 1
            kept.append(manifest)
            continue
        report["entries_removed"] += 1
        if not dry_run:
            store.delete_entry(job, key)
    report["entries_kept"] = len(kept)

    # Manifests written while this runs refer to objects found below; reading
    # them again after the listing keeps those objects.
    needed = _referenced_objects(kept)
    object_cutoff = min(cutoff, oldest_live)
    objects = list(store.iter_objects())
    if not dry_run:
        needed |= _referenced_objects(list(store.iter_manifests()))
    for stored in objects:
        if stored["name"] in needed or stored["modified"] >= object_cutoff:
            report["objects_kept"] += 1
            continue
        report["objects_removed"] += 1
        report["bytes_freed"] += stored["size"]
        if not dry_run:
            store.remove_object(stored["name"])

    for temporary in store.iter_temporary_files():
        if temporary["modified"] < min(object_cutoff, now - 3600.0):
            report["temporary_removed"] += 1
            if not dry_run:
                store._remove(temporary["path"])
    logger.info(
        "garbage collection of %s%s: %d entries and %d objects (%d bytes) removed",
        store.url,
        " (dry run)" if dry_run else "",
        report["entries_removed"],
        report["objects_removed"],
        report["bytes_freed"],
    )
    return report
