"""SolverState: everything a solver step needs, batch-first, so particles can be indexed and merged.

Rows are independent: ``state[idx]`` keeps the rows ``idx`` of x, of every multistep history entry and of
the per-row conditioning; :meth:`SolverState.cat` stacks states taken at the same grid step. A particle
method (SMC, beam search) can therefore resample mid-trajectory with a multistep solver and continue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["SolverState"]


@dataclass(frozen=True)
class SolverState:
    """State at grid index ``step``.

    Attributes:
        x: current sample, shape (B, ...).
        step: grid index of x (0 = noise end).
        history: model outputs (the solver's prediction: x0 or eps) at earlier grid points, oldest first,
            each (B, ...). The last entry is at grid index ``step - 1`` once the step has been evaluated.
        history_steps: grid indices of ``history``.
        x_prev: the sample at grid index ``step - 1`` (used by the UniC corrector), or None.
        prev_order: the order of the predictor that produced x (the corrector's order).
        cond: per-row conditioning passed to the network as keyword arguments.
    """

    x: torch.Tensor
    step: int = 0
    history: tuple[torch.Tensor, ...] = ()
    history_steps: tuple[int, ...] = ()
    x_prev: torch.Tensor | None = None
    prev_order: int = 0
    cond: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.x.shape[0]
        rows = [*self.history, *self.cond.values()] + ([self.x_prev] if self.x_prev is not None else [])
        if any(t.shape[0] != b for t in rows):
            raise ValueError("every tensor in a SolverState must have the batch size of x")
        if len(self.history) != len(self.history_steps):
            raise ValueError("history and history_steps must have the same length")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, idx: Any) -> SolverState:
        """Rows ``idx`` (int, slice, list or index/bool tensor) of the whole state."""
        if isinstance(idx, int):
            idx = [idx]

        def take(t: torch.Tensor) -> torch.Tensor:
            index = idx.to(t.device) if isinstance(idx, torch.Tensor) else idx
            return t[index]

        return replace(
            self,
            x=take(self.x),
            history=tuple(take(h) for h in self.history),
            x_prev=None if self.x_prev is None else take(self.x_prev),
            cond={k: take(v) for k, v in self.cond.items()},
        )

    @staticmethod
    def cat(states: Sequence[SolverState]) -> SolverState:
        """Stack states that are at the same grid step with the same history layout."""
        if not states:
            raise ValueError("cat needs at least one state")
        first = states[0]
        for s in states[1:]:
            if (s.step, s.history_steps, s.prev_order) != (first.step, first.history_steps, first.prev_order):
                raise ValueError("can only concatenate states at the same step with the same history")
            if (s.x_prev is None) != (first.x_prev is None) or set(s.cond) != set(first.cond):
                raise ValueError("states differ in x_prev/cond layout")
        return replace(
            first,
            x=torch.cat([s.x for s in states]),
            history=tuple(torch.cat(hs) for hs in zip(*(s.history for s in states), strict=True)),
            x_prev=None if first.x_prev is None else torch.cat([s.x_prev for s in states]),
            cond={k: torch.cat([s.cond[k] for s in states]) for k in first.cond},
        )
