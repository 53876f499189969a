"""Denoising chains: the one interface every search method runs on.

A chain (DESIGN.md, "one chain, many strategies") is a prior, a sequence of ``steps`` steps, a look-ahead
prediction of the clean sample, and a decoder:

* ``prior(n, generator) -> ChainState``: n particles at the noise end (step 0);
* ``step(state, generator) -> ChainState``: every particle one step on (stochastic when the solver is);
* ``predict(state) -> Tensor``: the look-ahead x̂0 of every particle (Tweedie's E[x0 | x_t]); the model
  call it needs is cached on the returned state and reused by the next ``step``, so a method that scores
  look-aheads at every step pays no extra model call;
* ``decode(x0) -> samples``: what a reward scores (images in [0, 1], vectors, ...).

:class:`SolverChain` makes any ``samplers`` solver + denoiser + time grid a chain;
:func:`gaussian_mixture_chain` builds one on the exact analytic model. A :class:`ChainState` is
batch-first and indexable, so particle methods resample or prune it with ``state[idx]`` (multistep
histories included) and merge with :meth:`ChainState.cat`.

Model calls are counted per particle on the chain's :class:`~search.budget.Budget`: a call on a batch of B
particles costs B NFE, whatever the batching.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.checkpoint import checkpoint

from samplers.denoiser import Denoiser, DenoiserOutput
from samplers.grids import TimeGrid
from samplers.solvers import Evaluation, Solver, _evaluate
from samplers.state import SolverState

from .budget import Budget
from .noise import randn

__all__ = ["Chain", "ChainState", "SolverChain", "advance", "gaussian_mixture_chain", "stochastic_step"]


@dataclass(frozen=True)
class ChainState:
    """Particles of a chain at one step: the solver state plus, when already computed, the model's output
    at the current point (the look-ahead cache)."""

    solver: SolverState
    cached: DenoiserOutput | None = None

    @property
    def x(self) -> torch.Tensor:
        return self.solver.x

    @property
    def step(self) -> int:
        return self.solver.step

    def __len__(self) -> int:
        return len(self.solver)

    def __getitem__(self, idx: Any) -> ChainState:
        """Rows ``idx`` of every particle tensor (resampling, pruning, selecting)."""
        rows = self.solver[idx]
        cached = None
        if self.cached is not None:
            index = [idx] if isinstance(idx, int) else idx
            if isinstance(index, torch.Tensor):
                index = index.to(self.cached.x0.device)
            cached = DenoiserOutput(x0=self.cached.x0[index], eps=self.cached.eps[index])
        return ChainState(rows, cached)

    @staticmethod
    def cat(states: Sequence[ChainState]) -> ChainState:
        """Stack states taken at the same step (the cache is kept only if every state has one)."""
        solver = SolverState.cat([s.solver for s in states])
        if all(s.cached is not None for s in states):
            cached = DenoiserOutput(
                x0=torch.cat([s.cached.x0 for s in states]), eps=torch.cat([s.cached.eps for s in states])
            )
        else:
            cached = None
        return ChainState(solver, cached)


@runtime_checkable
class Chain(Protocol):
    """What every search method needs of a generator (see the module docstring)."""

    steps: int
    budget: Budget

    def prior(self, n: int, generator: torch.Generator | None = None) -> ChainState: ...

    def step(self, state: ChainState, generator: torch.Generator | None = None) -> ChainState: ...

    def predict(self, state: ChainState) -> tuple[ChainState, torch.Tensor]: ...

    def decode(self, x0: torch.Tensor) -> Any: ...

    def trajectory_nfe(self) -> int: ...

    def segment_nfe(self, first: int, stop: int) -> int: ...

    def with_budget(self, budget: Budget) -> Chain: ...

    def renoise(
        self, state: ChainState, to_step: int, generator: torch.Generator | None = None
    ) -> ChainState: ...


class SolverChain:
    """A ``samplers`` solver run over a time grid with a denoiser, as a chain.

    Args:
        denoiser: the model (:class:`samplers.denoiser.Denoiser`).
        grid: the time grid; ``steps = grid.steps``.
        solver: any solver preset (DDIM, DPM-Solver++, UniPC, SDE variants, ...); stochastic solvers draw
            their step noise from the generator passed to :meth:`step`.
        shape: the shape of one particle (e.g. ``(2,)`` or ``(3, 64, 64)``).
        cond: per-particle conditioning of one particle (broadcast to every particle), e.g. class labels.
        decode: maps clean samples to what rewards score (identity by default).
        prior: draws n starting samples ``prior(n, generator)``; by default N(0, (alpha_T^2 + sigma_T^2) I),
            the usual approximation of the marginal at the first grid point.
        budget: where model calls are charged (a fresh unlimited one by default).
        max_batch: at most this many particles per network call (None: all at once); larger evaluations
            are made in chunks, so memory stays bounded whatever the number of particles. The NFE charged
            is the same (per particle).
        dtype, device: of the particles.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        grid: TimeGrid,
        solver: Solver,
        shape: Sequence[int],
        *,
        cond: Mapping[str, torch.Tensor] | None = None,
        decode: Callable[[torch.Tensor], Any] | None = None,
        prior: Callable[[int, torch.Generator | None], torch.Tensor] | None = None,
        budget: Budget | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_batch: int | None = None,
    ):
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
        self.max_batch = max_batch
        self.denoiser, self.grid, self.solver = denoiser, grid, solver
        self.shape = tuple(int(s) for s in shape)
        self.cond = dict(cond or {})
        self._decode, self._prior = decode, prior
        self.budget = budget if budget is not None else Budget()
        self.dtype, self.device = dtype, torch.device(device)
        self.steps = grid.steps

    def trajectory_nfe(self) -> int:
        """Model calls one particle costs from prior to the end."""
        return self.solver.evaluations(self.grid)

    def segment_nfe(self, first: int, stop: int) -> int:
        """Model calls one particle costs for the steps from grid index ``first`` up to ``stop``."""
        return sum(len(self.solver.step_evaluations(i, self.grid)) for i in range(first, stop))

    def prior(self, n: int, generator: torch.Generator | None = None) -> ChainState:
        """n particles at grid index 0, from the chain's prior."""
        if n < 1:
            raise ValueError(f"need at least one particle, got {n}")
        if self._prior is not None:
            x = self._prior(n, generator).to(dtype=self.dtype, device=self.device)
        else:
            x = randn((n, *self.shape), generator, self.dtype, self.device)
            x = x * self.noise_scale
        return self.start(x)

    @property
    def noise_scale(self) -> float:
        """sqrt(alpha^2 + sigma^2) at the first grid point: x_T = noise_scale * eps for standard noise eps."""
        return math.hypot(float(self.grid.alpha_values[0]), float(self.grid.sigma_values[0]))

    def start(self, x: torch.Tensor) -> ChainState:
        """Particles at grid index 0 from given starting samples x (e.g. optimised noise)."""
        n = x.shape[0]
        cond = {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in self.cond.items()}
        return ChainState(self.solver.init(x, self.grid, cond))

    def _evaluate(self, request: Evaluation, cond: Mapping[str, torch.Tensor]) -> DenoiserOutput:
        n = request.x.shape[0]
        self.budget.charge_nfe(n)
        if self.max_batch is None or n <= self.max_batch:
            return _evaluate(self.denoiser, request, cond)
        parts = []
        for start in range(0, n, self.max_batch):
            rows = slice(start, start + self.max_batch)
            part_cond = {k: v[rows] if v.ndim > 0 and v.shape[0] == n else v for k, v in cond.items()}
            parts.append(_evaluate(self.denoiser, replace(request, x=request.x[rows]), part_cond))
        return DenoiserOutput(x0=torch.cat([p.x0 for p in parts]), eps=torch.cat([p.eps for p in parts]))

    def predict(self, state: ChainState) -> tuple[ChainState, torch.Tensor]:
        """(state with its model output cached, x̂0 of every particle). At the last grid point x̂0 = x."""
        if state.step >= self.steps:
            return state, state.x
        if state.cached is None:
            i = state.step
            grid = self.grid
            request = Evaluation(state.x, grid.t[i], grid.alpha_values[i], grid.sigma_values[i], i)
            state = ChainState(state.solver, self._evaluate(request, state.solver.cond))
        return state, state.cached.x0

    def step(self, state: ChainState, generator: torch.Generator | None = None) -> ChainState:
        """Every particle one grid step on; the model output at the start point comes from the cache when
        :meth:`predict` already computed it."""
        if state.step >= self.steps:
            raise ValueError(f"the chain has {self.steps} steps; the state is already at the end")
        plan = self.solver.advance(state.solver, self.grid, generator if self.solver.is_stochastic else None)
        request = next(plan)
        out = state.cached if state.cached is not None else self._evaluate(request, state.solver.cond)
        while True:
            try:
                request = plan.send(out)
            except StopIteration as done:
                return ChainState(done.value)
            out = self._evaluate(request, state.solver.cond)

    def checkpointed_step(
        self,
        state: ChainState,
        generator: torch.Generator | None = None,
        recompute_budget: Budget | None = None,
    ) -> ChainState:
        """:meth:`step` under activation checkpointing (``torch.utils.checkpoint``, non-reentrant): the
        step's intermediate tensors (the model's activations included) are not kept for backward but
        recomputed during it, so backprop through a whole trajectory holds the states between steps and
        one step's activations at a time. The forward is charged to the chain's budget as usual; the
        model calls of the recomputation are not (the budget counts forward evaluations) and go to
        ``recompute_budget`` instead when one is given (a throwaway one otherwise). A stochastic step
        redraws the same noise when recomputed: from a copy of ``generator``'s state taken before the
        step, or from the global RNG state, which checkpointing restores."""
        gen_state = None if generator is None else generator.get_state()
        calls = 0

        def run(solver_state: SolverState, cached: DenoiserOutput | None) -> SolverState:
            nonlocal calls
            calls += 1
            if calls == 1:
                return self.step(ChainState(solver_state, cached), generator).solver
            replay = None
            if generator is not None:
                replay = torch.Generator(device=generator.device)
                replay.set_state(gen_state)
            chain = self.with_budget(recompute_budget if recompute_budget is not None else Budget())
            return chain.step(ChainState(solver_state, cached), replay).solver

        return ChainState(checkpoint(run, state.solver, state.cached, use_reentrant=False))

    def renoise(
        self, state: ChainState, to_step: int, generator: torch.Generator | None = None
    ) -> ChainState:
        """Noise particles back to the earlier grid index ``to_step`` with the forward process
        q(x_j | x_i): x_j = (alpha_j / alpha_i) x_i + sqrt(sigma_j^2 - (alpha_j / alpha_i)^2 sigma_i^2) eps
        (Kingma et al. 2021, eq. 9; used by search over paths, Ma et al. 2025). No model call; the solver's
        multistep history restarts."""
        i = state.step
        if not 0 <= to_step <= i:
            raise ValueError(f"can only renoise to a grid index in 0..{i}, got {to_step}")
        a_i, s_i = float(self.grid.alpha_values[i]), float(self.grid.sigma_values[i])
        a_j, s_j = float(self.grid.alpha_values[to_step]), float(self.grid.sigma_values[to_step])
        if a_i == 0:
            raise ValueError("cannot renoise from alpha = 0")
        ratio = a_j / a_i
        std = math.sqrt(max(s_j**2 - (ratio * s_i) ** 2, 0.0))
        eps = randn(state.x.shape, generator, state.x.dtype, state.x.device)
        x = ratio * state.x + std * eps
        return ChainState(SolverState(x=x, step=to_step, cond=state.solver.cond))

    def decode(self, x0: torch.Tensor) -> Any:
        return x0 if self._decode is None else self._decode(x0)

    def with_budget(self, budget: Budget) -> SolverChain:
        """The same chain (model, grid, solver shared) charging ``budget``."""
        chain = copy.copy(self)
        chain.budget = budget
        return chain


def gaussian_mixture_chain(
    gmm,
    schedule,
    steps: int,
    solver: Solver,
    *,
    grid_kind: str = "uniform_lambda",
    prediction_type: str = "epsilon",
    budget: Budget | None = None,
    t_start: float | None = None,
) -> SolverChain:
    """The exact analytic model (:class:`samplers.analytic.GaussianMixture`) as a float64 chain.

    Its prior is the exact marginal at the first grid point, alpha_T x0 + sigma_T eps with x0 from the
    mixture, so the chain's only error is the solver's discretisation (none for the exact ODE flow)."""
    from samplers.analytic import make_net
    from samplers.grids import make_grid

    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), prediction_type)
    grid = make_grid(schedule, steps, grid_kind, final="zero", t_start=t_start)
    alpha, sigma = float(grid.alpha_values[0]), float(grid.sigma_values[0])

    def marginal(n: int, generator: torch.Generator | None) -> torch.Tensor:
        x0 = gmm.sample(n, generator=generator)
        return alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)

    denoiser = Denoiser(net, prediction_type)
    return SolverChain(denoiser, grid, solver, (gmm.dim,), prior=marginal, budget=budget, dtype=torch.float64)


def stochastic_step(chain: Chain, i: int) -> bool:
    """Whether the chain's step from grid index i draws noise, so that two children of one particle differ.
    A :class:`SolverChain` step is stochastic when its solver is and the step does not end at sigma = 0
    (there the SDE's noise term vanishes: the last step of a grid ending at sigma = 0 is deterministic).
    Other chains are assumed stochastic unless they say otherwise with a ``stochastic_step(i)`` method."""
    if isinstance(chain, SolverChain):
        return chain.solver.is_stochastic and float(chain.grid.sigma_values[i + 1]) > 0
    method = getattr(chain, "stochastic_step", None)
    return True if method is None else bool(method(i))


def advance(
    chain: Chain,
    state: ChainState,
    to_step: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> ChainState:
    """Every particle of ``state`` stepped to grid index ``to_step`` (default: the end of the chain),
    ``batch_size`` particles at a time."""
    to_step = chain.steps if to_step is None else to_step
    if not state.step <= to_step <= chain.steps:
        raise ValueError(f"cannot advance from grid index {state.step} to {to_step} (chain of {chain.steps})")
    parts = []
    for start in range(0, len(state), batch_size):
        part = state[slice(start, start + batch_size)]
        while part.step < to_step:
            part = chain.step(part, generator)
        parts.append(part)
    return parts[0] if len(parts) == 1 else ChainState.cat(parts)
