"""Lockstep execution: several searches run side by side and share their model calls.

Each search of :func:`run_lockstep` runs in its own thread. A call of a :class:`RowwiseFunction` (a network
whose output row i depends on input row i only, e.g. ``net(x, t, **cond)`` of a
:class:`~samplers.denoiser.Denoiser`) from one of these threads does not run at once: it waits until every
unfinished search is waiting in such a call, and then all waiting calls of the same function with the same
row layout run as ONE batched call (cut into chunks of at most ``max_rows`` rows), whose output rows go
back to the callers. Particles of different prompts thus share network calls, while every search keeps its
own code path, generator, budget and NFE count (a call on B rows is still charged B per particle by the chain
that makes it).

The merge is exact up to floating-point rounding (kernels may round differently at another batch size);
for networks called on a fixed number of rows per call (:func:`pipelines.digits.fixed_size_calls`), it is
bit-exact. Merged calls stack the tasks' rows in task order, not in the order the threads happened to arrive,
so a lockstep run is reproducible.

Calls that build an autograd graph (an input requires grad) are never merged: they run at once in their own
thread, since one merged graph cannot be backpropagated separately per search.

Outside :func:`run_lockstep` a :class:`RowwiseFunction` is its function, called directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

__all__ = ["Exclusive", "LockstepAborted", "RowwiseFunction", "run_lockstep"]

T = TypeVar("T")
_local = threading.local()


class LockstepAborted(RuntimeError):
    """Raised in the other searches of a :func:`run_lockstep` once one of them has failed."""


class RowwiseFunction:
    """``fn(*args, **kwargs)`` whose tensor arguments all have the same leading (row) dimension and whose
    output (a tensor, or a tuple/list of tensors) has one row per input row, row i depending on input row i
    only. Inside :func:`run_lockstep`, concurrent calls are merged (see the module docstring); ``max_rows``
    bounds the rows of one merged call (None: no bound)."""

    def __init__(self, fn: Callable[..., Any], max_rows: int | None = None):
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
            raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
        self.fn, self.max_rows = fn, max_rows
        self.calls = 0  # calls of fn made (merged or not): a merged call counts once per chunk

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        coordinator: _Coordinator | None = getattr(_local, "coordinator", None)
        rows = _rows(args, kwargs)
        if coordinator is None or rows is None or _builds_graph(args, kwargs):
            self.calls += 1
            return self.fn(*args, **kwargs)
        return coordinator.submit(_Request(self, args, kwargs, rows, _local.worker))

    def run_merged(self, requests: Sequence[_Request]) -> list[Any]:
        """Outputs of ``requests`` (same layout) from one call on their stacked rows (chunked)."""
        first = requests[0]
        total = sum(r.rows for r in requests)
        args = [_stack([r.args[i] for r in requests]) for i in range(len(first.args))]
        kwargs = {k: _stack([r.kwargs[k] for r in requests]) for k in first.kwargs}
        size = total if self.max_rows is None else self.max_rows
        parts = []
        for start in range(0, total, size):
            rows = slice(start, start + size)
            self.calls += 1
            parts.append(
                self.fn(*[_take(a, rows) for a in args], **{k: _take(v, rows) for k, v in kwargs.items()})
            )
        out = parts[0] if len(parts) == 1 else _concat(parts)
        results, start = [], 0
        for request in requests:
            results.append(_slice_output(out, slice(start, start + request.rows)))
            start += request.rows
        return results


class Exclusive:
    """``obj`` whose calls run one at a time (under a lock): for what the tasks of :func:`run_lockstep` share
    and is not thread-safe, e.g. a reward (Hugging Face fast tokenizers fail when two threads use one at
    once). Its attributes are the object's."""

    def __init__(self, obj: Any):
        self._obj, self._lock = obj, threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._obj(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)


@dataclass(eq=False)
class _Request:
    fn: RowwiseFunction
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rows: int
    worker: int  # the task's index: merged calls stack the rows of the tasks in this order
    output: Any = None
    error: BaseException | None = None
    done: bool = False
    layout: Hashable = field(init=False)

    def __post_init__(self) -> None:
        args = tuple(_layout(a) for a in self.args)
        self.layout = (id(self.fn), args, tuple((k, _layout(v)) for k, v in self.kwargs.items()))


class _Coordinator:
    """Counts the unfinished searches and flushes the waiting calls once all of them wait."""

    def __init__(self, workers: int):
        self.live = workers
        self.pending: list[_Request] = []
        self.failed = False
        self.condition = threading.Condition()

    def submit(self, request: _Request) -> Any:
        with self.condition:
            if self.failed:
                raise LockstepAborted("another search of this lockstep run failed")
            self.pending.append(request)
            batch = self._take_if_all_waiting()
        if batch:
            self._run(batch)
        with self.condition:
            while not request.done:
                self.condition.wait()
        if request.error is not None:
            raise request.error
        return request.output

    def finish(self, failed: bool) -> None:
        """A search ended (``failed``: with an exception): the others no longer wait for it."""
        with self.condition:
            self.live -= 1
            if failed:
                self.failed = True
                for request in self.pending:
                    request.error = LockstepAborted("another search of this lockstep run failed")
                    request.done = True
                self.pending = []
                self.condition.notify_all()
                return
            batch = self._take_if_all_waiting()
        if batch:
            self._run(batch)

    def _take_if_all_waiting(self) -> list[_Request]:
        if self.pending and len(self.pending) == self.live:
            batch, self.pending = self.pending, []
            return batch
        return []

    def _run(self, batch: list[_Request]) -> None:
        """Run the waiting calls, one merged call per (function, layout) group, and wake their callers."""
        groups: dict[Hashable, list[_Request]] = {}
        for request in sorted(batch, key=lambda r: r.worker):  # the same merged calls whatever the timing
            groups.setdefault(request.layout, []).append(request)
        for requests in groups.values():
            try:
                with torch.no_grad():
                    outputs = requests[0].fn.run_merged(requests)
            except BaseException as error:  # every caller of the failed call gets its error
                for request in requests:
                    request.error = error
            else:
                for request, output in zip(requests, outputs, strict=True):
                    request.output = output
        with self.condition:
            for request in batch:
                request.done = True
            self.condition.notify_all()


def run_lockstep(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` (e.g. one search per prompt) side by side, one thread each, merging their calls of
    :class:`RowwiseFunction` s; returns their results in order. If a task raises, the others stop at their
    next merged call (:class:`LockstepAborted`) and the first task's exception is raised here. A single
    task runs in the calling thread.

    The tasks must not share mutable state (generators included: give each its own ``torch.Generator``),
    since they interleave in no fixed order between calls."""
    if len(tasks) == 1:
        return [tasks[0]()]
    coordinator = _Coordinator(len(tasks))
    grad_mode = torch.is_grad_enabled()  # grad mode is per thread: the tasks run in the caller's
    results: list[Any] = [None] * len(tasks)
    errors: list[tuple[int, BaseException]] = []

    def work(i: int) -> None:
        _local.coordinator, _local.worker = coordinator, i
        failed = True
        try:
            with torch.set_grad_enabled(grad_mode):
                results[i] = tasks[i]()
            failed = False
        except BaseException as error:
            errors.append((i, error))
        finally:
            _local.coordinator = None
            coordinator.finish(failed)

    threads = [threading.Thread(target=work, args=(i,), name=f"lockstep-{i}") for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:  # the original failure, not the aborts it caused in the others
        real = [e for e in errors if not isinstance(e[1], LockstepAborted)] or errors
        raise min(real, key=lambda e: e[0])[1]
    return results


# ---------------------------------------------------------------------------------------------- rows
def _rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The common leading dimension of the tensor arguments, or None when they have none in common."""
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if not tensors or any(v.ndim == 0 for v in tensors):
        return None
    rows = {v.shape[0] for v in tensors}
    return rows.pop() if len(rows) == 1 else None


def _builds_graph(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in (*args, *kwargs.values()))


def _layout(value: Any) -> Hashable:
    """What must agree between calls merged into one: a tensor's per-row shape, dtype and device; any other
    argument's identity (a non-tensor argument is shared, not stacked)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape[1:]), value.dtype, value.device)
    return ("object", id(value))


def _stack(values: list[Any]) -> Any:
    return torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]


def _take(value: Any, rows: slice) -> Any:
    return value[rows] if isinstance(value, torch.Tensor) else value


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return type(parts[0])(torch.cat(list(column)) for column in zip(*parts, strict=True))


def _slice_output(out: Any, rows: slice) -> Any:
    if isinstance(out, torch.Tensor):
        return out[rows]
    return type(out)(o[rows] for o in out)
