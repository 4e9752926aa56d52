"""Explaining cache misses: what changed since the last stored entry of a job.

Every manifest and task record keeps the code version's named parts and the
fingerprint of each argument. A task that ran is compared with the most
recent stored entry of the same job, and the differences are named: the
job's source, a helper, a global, a closure value, an argument, an upstream
task.
"""

from __future__ import annotations

from typing import Any

from .graph import Graph
from .records import RunRecord
from .store import ArtifactStore

__all__ = ["explain_graph", "explain_run", "explain_task"]


def _describe_part(name: str) -> str:
    if name == "source":
        return "the job's source"
    if name.startswith("helper "):
        return f"helper {name[7:]}"
    if name.startswith("global "):
        return f"global {name[7:]}"
    if name.startswith("closure"):
        return f"closure value {name.split()[-1]}"
    if name.startswith("package "):
        return f"the version of package {name[8:]}"
    if name.startswith("job "):
        return f"job {name[4:]} called inside it"
    return name


def _distance(manifest: dict[str, Any], code_parts: dict[str, str], inputs: dict[str, str]) -> int:
    old_parts = manifest.get("code_parts", {})
    old_inputs = manifest.get("inputs", {})
    changed = sum(1 for n in set(code_parts) | set(old_parts) if code_parts.get(n) != old_parts.get(n))
    changed += sum(1 for n in set(inputs) | set(old_inputs) if inputs.get(n) != old_inputs.get(n))
    return changed


def explain_task(
    store: ArtifactStore,
    job: str,
    key: str,
    code_parts: dict[str, str],
    inputs: dict[str, str],
    upstream: dict[str, str],
    *,
    not_cached_because: str | None = None,
    exclude_run: str | None = None,
) -> str:
    """Return one sentence saying why task ``key`` was not taken from the cache."""
    if not_cached_because:
        return f"{job}: not cacheable: {not_cached_because}"
    # Compare with the stored entry of the same job that differs least: a
    # job called with several arguments (train("logreg"), train("forest"))
    # has several entries, and the closest one names what really changed.
    previous: dict[str, Any] | None = None
    best: tuple[int, float] | None = None
    for manifest in store.iter_manifests(job):
        if manifest.get("key") == key or manifest.get("run_id") == exclude_run:
            continue
        rank = (_distance(manifest, code_parts, inputs), -float(manifest.get("created", 0)))
        if best is None or rank < best:
            best, previous = rank, manifest
    if previous is None:
        return f"{job}: no earlier entry of this job in the store"

    changes: list[str] = []
    old_parts = previous.get("code_parts", {})
    for name in sorted(set(code_parts) | set(old_parts)):
        if name not in old_parts and name.startswith("package "):
            changes.append(f"it now calls package {name[8:]} ({code_parts[name]})")
        elif name not in old_parts:
            changes.append(f"{_describe_part(name)} is new")
        elif name not in code_parts:
            changes.append(f"{_describe_part(name)} is no longer used")
        elif code_parts[name] != old_parts[name]:
            changes.append(f"{_describe_part(name)} changed")
    old_inputs = previous.get("inputs", {})
    for name in sorted(set(inputs) | set(old_inputs)):
        if inputs.get(name) == old_inputs.get(name):
            continue
        if name in upstream:
            changes.append(f"upstream task {upstream[name]} (argument {name!r}) changed")
        else:
            changes.append(f"argument {name!r} changed")
    if not changes:
        return f"{job}: same code and inputs as the latest entry; it was missing or refreshed"
    return f"{job}: " + "; ".join(changes)


def explain_run(record: RunRecord, store: ArtifactStore) -> list[str]:
    """Explain each task of a run that executed instead of hitting the cache."""
    lines = []
    for task in record.tasks:
        if task.status not in ("done", "failed"):
            continue
        lines.append(
            explain_task(
                store,
                task.job,
                task.key,
                task.code_parts,
                task.inputs,
                task.upstream,
                not_cached_because=task.not_cached_because,
                exclude_run=record.run_id,
            )
        )
    return lines


def explain_graph(graph: Graph, store: ArtifactStore) -> list[str]:
    """Explain each task of a traced graph that a run would execute."""
    lines = []
    listings: dict[str, set[str]] = {}
    for key, task in graph.tasks.items():
        info = task.info
        assert info is not None
        job = task.job.name
        if job not in listings:
            listings[job] = store.cached_keys(job)
        if info.cacheable and key.rpartition("-")[2] in listings[job]:
            continue
        lines.append(
            explain_task(
                store, job, key, info.code.parts, info.inputs, info.upstream,
                not_cached_because=None if info.cacheable else info.reason,
            )  # fmt: skip
        )
    return lines
