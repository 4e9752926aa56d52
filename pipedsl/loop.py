"""Loop mode: run a workflow again and again, with an interval and a stop rule.

``workflow.run(..., loop=True)`` repeats the workflow. Options:

``interval``
    Seconds (or ``"5m"``) to wait between the end of one iteration and the
    start of the next.
``max_iterations``
    Stop after this many iterations.
``until``
    ``until(output)`` or ``until(output, history)`` returns True to stop;
    ``history`` is the list of all outputs so far. :func:`no_improvement`
    builds a common rule.
``feed``
    Feeds each output into the next iteration's input: a parameter name (the
    output is passed as that argument) or a function
    ``feed(output, kwargs) -> kwargs``.

Each iteration is a full run with its own record, so unchanged tasks come
from the cache. A failed iteration stops the loop and its error is raised by
:meth:`LoopRun.result`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .dsl import parse_duration
from .errors import RunCancelled

if TYPE_CHECKING:
    from .dsl import Workflow
    from .runs import Run

__all__ = ["LoopRun", "no_improvement", "start_loop"]


def no_improvement(
    metric: str | Callable[[Any], float], patience: int = 1, mode: str = "min"
) -> Callable[[Any, list[Any]], bool]:
    """Return an ``until`` rule: stop when ``metric`` stopped improving.

    Examples
    --------
    >>> rule = no_improvement("loss", patience=1)
    >>> rule({"loss": 0.5}, [{"loss": 0.4}, {"loss": 0.5}])
    True
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")

    def value(output: Any) -> float:
        return float(metric(output) if callable(metric) else output[metric])

    def rule(output: Any, history: list[Any]) -> bool:
        if len(history) <= patience:
            return False
        values = [value(item) for item in history]
        best_before = min(values[:-patience]) if mode == "min" else max(values[:-patience])
        recent = values[-patience:]
        if mode == "min":
            return all(v >= best_before for v in recent)
        return all(v <= best_before for v in recent)

    return rule


class LoopRun:
    """Handle on a workflow in loop mode: the runs of every iteration."""

    def __init__(
        self,
        workflow: Workflow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        self.workflow = workflow
        self.runs: list[Run[Any]] = []
        self.outputs: list[Any] = []
        interval = options.pop("interval", None)
        zero = interval in (0, "0", "0s") and not isinstance(interval, bool)
        self.interval = 0.0 if zero else parse_duration(interval, "interval") or 0.0
        self.max_iterations = options.pop("max_iterations", None)
        self.until = options.pop("until", None)
        self.feed = options.pop("feed", None)
        options.pop("loop", None)
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be at least 1, got {self.max_iterations!r}")
        if self.feed is not None and not callable(self.feed) and not isinstance(self.feed, str):
            raise TypeError(f"feed must be a parameter name or a function, got {self.feed!r}")
        if isinstance(self.feed, str) and self.feed not in workflow._signature.parameters:
            raise ValueError(
                f"feed={self.feed!r} is not a parameter of workflow {workflow.name!r}; "
                f"choose one of {list(workflow._signature.parameters)}"
            )
        self._args = args
        self._kwargs = dict(kwargs)
        self._options = options
        self._stop = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="pipedsl-loop")

    @property
    def run_id(self) -> str | None:
        return self.runs[-1].run_id if self.runs else None

    @property
    def status(self) -> str:
        if not self._done.is_set():
            return "running"
        if isinstance(self._error, RunCancelled):
            return "cancelled"
        return "failed" if self._error is not None else "done"

    @property
    def tasks(self) -> list[Any]:
        return self.runs[-1].tasks if self.runs else []

    def _should_stop(self, output: Any) -> bool:
        if self.until is None:
            return False
        parameters = len(inspect.signature(self.until).parameters)
        if parameters >= 2:
            return bool(self.until(output, list(self.outputs)))
        return bool(self.until(output))

    def _main(self) -> None:
        from .runs import start_workflow

        try:
            iteration = 0
            while not self._stop.is_set():
                iteration += 1
                run = start_workflow(self.workflow, self._args, self._kwargs, self._options)
                self.runs.append(run)
                while not run.wait(0.1):
                    if self._stop.is_set():
                        run.kill()
                output = run.result()
                self.outputs.append(output)
                if self._should_stop(output):
                    break
                if self.max_iterations is not None and iteration >= self.max_iterations:
                    break
                if isinstance(self.feed, str):
                    self._kwargs[self.feed] = output
                elif self.feed is not None:
                    self._kwargs = dict(self.feed(output, dict(self._kwargs)))
                if self._stop.wait(self.interval):
                    raise RunCancelled(f"loop of {self.workflow.name!r} was killed")
            if self._stop.is_set() and self._error is None and not self.outputs:
                raise RunCancelled(f"loop of {self.workflow.name!r} was killed")
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self._error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def kill(self) -> None:
        """Stop the loop: the running iteration is killed, no new one starts."""
        self._stop.set()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the loop to end and return the last iteration's output."""
        if not self.wait(timeout):
            raise TimeoutError(f"loop of {self.workflow.name!r} did not end within {timeout}s")
        if self._error is not None:
            raise self._error
        return self.outputs[-1]


def start_loop(
    workflow: Workflow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> LoopRun:
    """Start ``workflow`` in loop mode and return its handle at once."""
    loop = LoopRun(workflow, args, kwargs, dict(options))
    loop._thread.start()
    return loop
