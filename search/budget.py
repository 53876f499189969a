"""Accounting shared by every search method: model calls (NFE per particle), reward calls, wall time.

One :class:`Budget` is charged by the chain (each model call on B particles costs B NFE) and by the reward
wrapper (each scored sample costs one reward call), so every method is counted the same way. With
``max_nfe`` set, a charge that would exceed it raises :class:`BudgetExceeded` before the call is made;
methods plan their particle counts with :meth:`Budget.remaining_nfe` so that never happens in normal use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Budget", "BudgetExceeded"]


class BudgetExceeded(RuntimeError):
    """A model call would spend more NFE than the budget allows."""


@dataclass
class Budget:
    """NFE limit (None = unlimited) and running counts."""

    max_nfe: int | None = None
    nfe: int = 0
    reward_calls: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.max_nfe is not None and (not isinstance(self.max_nfe, int) or self.max_nfe < 1):
            raise ValueError(f"max_nfe must be a positive integer or None, got {self.max_nfe!r}")

    def charge_nfe(self, particles: int) -> None:
        if self.max_nfe is not None and self.nfe + particles > self.max_nfe:
            raise BudgetExceeded(
                f"a model call on {particles} particles would spend {self.nfe + particles} NFE; "
                f"the budget is {self.max_nfe}"
            )
        self.nfe += particles

    def charge_rewards(self, samples: int) -> None:
        self.reward_calls += samples

    def remaining_nfe(self) -> int | None:
        return None if self.max_nfe is None else self.max_nfe - self.nfe

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
