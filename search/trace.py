"""Anytime search curves: the best reward a search has scored against the NFE it had spent by then.

Every method scores samples through :func:`search.result.score_samples`; inside :func:`recording`, each of
those scorings adds a point (NFE spent so far by the method's budget, best score seen so far) to the
thread's :class:`SearchTrace`. The scores are whatever the method scores: Tweedie look-aheads x̂0 during the
chain and final samples at its end, so the curve shows how fast a method finds high reward, not the reward
of the sample it returns (:attr:`search.result.SearchResult.scores`). Recording is per thread, so searches
run side by side (:func:`search.lockstep.run_lockstep`) each record their own curve.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["SearchTrace", "record_scores", "recording"]

_local = threading.local()


@dataclass
class SearchTrace:
    """``points``: (nfe, best score so far) pairs, nfe increasing, best non-decreasing; a point is kept where
    the best score improves, and the last one is moved along while it does not (so the curve ends at the
    last scoring's NFE)."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def add(self, nfe: int, scores: torch.Tensor) -> None:
        finite = scores[torch.isfinite(scores)]
        if finite.numel() == 0:
            return
        best = float(finite.max())
        if self.points:
            best = max(best, self.points[-1][1])
            if self.points[-1][0] == nfe:  # several scorings at one NFE: one point
                self.points[-1] = (nfe, best)
                return
            if len(self.points) >= 2 and self.points[-2][1] == self.points[-1][1] == best:
                self.points[-1] = (nfe, best)  # a flat stretch: move its end along
                return
        self.points.append((int(nfe), best))

    def as_lists(self) -> list[list[float]]:
        """The points as JSON-ready ``[nfe, best]`` pairs (non-finite values dropped)."""
        return [[n, b] for n, b in self.points if math.isfinite(b)]


def record_scores(nfe: int, scores: torch.Tensor) -> None:
    """Add a scoring to the thread's trace, if :func:`recording` is active (called by ``score_samples``)."""
    trace = getattr(_local, "trace", None)
    if trace is not None:
        trace.add(nfe, scores.detach())


@contextlib.contextmanager
def recording() -> Iterator[SearchTrace]:
    """Record the anytime curve of the searches run in this thread inside the block."""
    previous = getattr(_local, "trace", None)
    trace = _local.trace = SearchTrace()
    try:
        yield trace
    finally:
        _local.trace = previous
