r"""DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023): a multistep exponential integrator whose
parametrisation of the model output is fitted to the model, through the empirical model statistics
(EMS, :mod:`.ems`).

Derivation (the paper's Sec. 3.1, "Improved parameterization"; the solution formula is its eq. for x_t with
the EMS-weighted integral, and the local approximation of g its Sec. 3.2 "High-order solver"). In log-SNR
lambda the ODE is dx/dlambda = a x - sigma eps, a = d log alpha / d lambda. With sigma eps = N + l x
(per dimension) and L(lambda) = int_{lambda_s}^lambda l,

    x_t = (alpha_t/alpha_s) e^{-L_t} x_s - alpha_t e^{-L_t} int_{lambda_s}^{lambda_t} e^L / alpha N dlambda.

Modelling dN/dlambda ~ s N + b, with S = int_{lambda_s} s and B = int_{lambda_s} e^{-S} b, the function
g = e^{-S} N - B is nearly constant along the trajectory, so N = e^S (g + B) and g is replaced by the
polynomial in r = (lambda - lambda_s)/h through the values g_j at the current and earlier points:

    x_t = (alpha_t/alpha_s) e^{-L_t} x_s
          - alpha_t e^{-L_t} [ sum_j w_j g_j + int E B dlambda ],   E = e^{L+S}/alpha,
    w = V^{-T} M,  M_k = int E r^k dlambda,  V[j, k] = r_j^k.

Implementation choices (the maths is the spec above; only the tabulation differs):

* S is split as S = log(alpha/alpha_s) + S~, S~ = int (s - a): e^S / alpha = e^{S~}/alpha_s, so the step
  needs alpha only at the nodes. l, s - a and b / alpha are interpolated piecewise-linearly in lambda
  between the EMS nodes (which converges to the paper's statistics as the table is refined) and L, S~ are
  the exact integrals of those linear pieces. Then the special cases l = 1, s = a, b = 0 (DPM-Solver++)
  and l = 0, s = a - 1, b = 0 (DPM-Solver) hold to rounding at any table resolution.
* The moments of E and the nested integral B are taken by 8-point Gauss-Legendre on every piece between
  EMS nodes (pieces longer than 1 in lambda are split), with B at the quadrature points from the spectral
  integration matrix of the same rule: all integrands are smooth there, so the quadrature is exact to
  rounding.
* Predictor order 1-3 (multistep, warm-up with lower orders); ``corrector=True`` re-solves the previous
  step with the model output at its end point as one more interpolation node (the paper's predictor-
  corrector, Sec. 3.3, in UniC's form: no extra model evaluation; the output at the uncorrected point is
  kept for later steps).
* A step to sigma = 0 is the first-order data-prediction step x_t = alpha_t x0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from .denoiser import Denoiser, DenoiserOutput
from .ems import EmpiricalModelStatistics, dlog_alpha_dlambda, load_ems, log_alpha_of_lambda
from .grids import TimeGrid
from .solvers import Evaluation, drive, order_at
from .state import SolverState

__all__ = ["DPMSolverV3"]

_F64 = torch.float64
_GL_N = 8
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_N)
# Q[i, j] = int_{-1}^{x_i} ell_j(x) dx, ell_j the Lagrange basis on the GL nodes (spectral integration).
_GL_Q = np.polynomial.legendre.legvander(_GL_X, _GL_N) @ np.polynomial.legendre.legint(
    np.linalg.inv(np.polynomial.legendre.legvander(_GL_X, _GL_N - 1)), lbnd=-1, axis=0
)
_MAX_PIECE = 1.0  # longest quadrature piece in lambda
_RANGE_TOL = 1e-6
_CHUNK_VALUES = 1 << 22  # values per quadrature block (pieces x GL points x dimensions)


class _Tables:
    """The EMS on one schedule: per-dimension l, s~ = s - a, b~ = b / alpha at the nodes (flattened to
    (K, D)), with cumulative integrals of the linear interpolants of l and s~."""

    def __init__(self, ems: EmpiricalModelStatistics, schedule) -> None:
        self.lam = ems.lambdas
        k = self.lam.numel()
        a = dlog_alpha_dlambda(schedule, self.lam).reshape(k, 1)
        alpha = torch.exp(log_alpha_of_lambda(schedule, self.lam)).reshape(k, 1)
        self.l = ems.l.reshape(k, -1)
        self.st = ems.s.reshape(k, -1) - a
        self.bt = ems.b.reshape(k, -1) / alpha
        self.shape = ems.sample_shape
        dl = torch.diff(self.lam).reshape(-1, 1)
        zero = torch.zeros(1, self.l.shape[1], dtype=_F64)
        self.cum_l = torch.cat([zero, torch.cumsum(dl * (self.l[1:] + self.l[:-1]) / 2, 0)])
        self.cum_s = torch.cat([zero, torch.cumsum(dl * (self.st[1:] + self.st[:-1]) / 2, 0)])

    def _locate(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval index and the offset of q from its left node (q clamped to the table range)."""
        lam = self.lam
        qc = q.clamp(lam[0], lam[-1])
        idx = (torch.searchsorted(lam, qc, right=True) - 1).clamp(0, lam.numel() - 2)
        return idx, qc

    def values(self, table: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation (constant beyond the ends), (len(q), D)."""
        idx, qc = self._locate(q)
        lo, hi = self.lam[idx], self.lam[idx + 1]
        w = ((qc - lo) / (hi - lo)).reshape(-1, 1)
        return table[idx] + w * (table[idx + 1] - table[idx])

    def integral(self, table: torch.Tensor, cum: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """int_{lambda_0}^q of the interpolant (exact for the linear pieces), (len(q), D)."""
        idx, qc = self._locate(q)
        v_lo, v_q = table[idx], self.values(table, qc)
        inside = cum[idx] + ((qc - self.lam[idx]).reshape(-1, 1)) * (v_lo + v_q) / 2
        beyond = (q - qc).reshape(-1, 1)  # constant extrapolation within the tolerance
        return inside + beyond * v_q


def _pieces(tables: _Tables, a: float, b: float) -> torch.Tensor:
    """Break points from a to b (either direction) at the EMS nodes, pieces at most _MAX_PIECE long."""
    lo, hi = min(a, b), max(a, b)
    lam = tables.lam
    inner = lam[(lam > lo) & (lam < hi)].tolist()
    pts = [lo, *inner, hi]
    out = [pts[0]]
    for p, q in zip(pts[:-1], pts[1:], strict=True):
        n = max(1, math.ceil((q - p) / _MAX_PIECE))
        out += [p + (q - p) * (k / n) for k in range(1, n)] + [q]
    bp = torch.tensor(out, dtype=_F64)
    return bp if a <= b else bp.flip(0)


class _StepIntegrals:
    """Quadrature of one step from lambda_s: S~, L at any point, B~ at nodes, and the E-moments."""

    def __init__(self, tables: _Tables, lam_s: float) -> None:
        self.t = tables
        self.lam_s = lam_s
        ref = torch.tensor([lam_s], dtype=_F64)
        self.L0 = tables.integral(tables.l, tables.cum_l, ref)[0]
        self.S0 = tables.integral(tables.st, tables.cum_s, ref)[0]

    def L(self, q: torch.Tensor) -> torch.Tensor:
        return self.t.integral(self.t.l, self.t.cum_l, q) - self.L0

    def S(self, q: torch.Tensor) -> torch.Tensor:
        return self.t.integral(self.t.st, self.t.cum_s, q) - self.S0

    def _blocks(self, bp: torch.Tensor):
        """Yield (points (P, n), weights (P, n)) of the GL rule on consecutive pieces, in blocks."""
        d = self.t.l.shape[1]
        per = max(1, _CHUNK_VALUES // (_GL_N * d))
        x = torch.from_numpy(_GL_X)
        w = torch.from_numpy(_GL_W)
        for start in range(0, bp.numel() - 1, per):
            a = bp[start : start + per]
            b = bp[start + 1 : start + per + 1]
            a = a[: b.numel()]
            half = ((b - a) / 2).reshape(-1, 1)
            yield (a.reshape(-1, 1) + half * (x + 1)), half * w, half

    def B_at(self, lam: float) -> torch.Tensor:
        """B~(lam) = int_{lambda_s}^{lam} e^{-S~} b~ (signed), (D,)."""
        total = torch.zeros(self.t.l.shape[1], dtype=_F64)
        if lam == self.lam_s:
            return total
        for q, wq, _ in self._blocks(_pieces(self.t, self.lam_s, lam)):
            f = self._f(q)
            total += torch.einsum("pn,pnd->d", wq, f)
        return total

    def _f(self, q: torch.Tensor) -> torch.Tensor:
        flat = q.reshape(-1)
        f = torch.exp(-self.S(flat)) * self.t.values(self.t.bt, flat)
        return f.reshape(*q.shape, -1)

    def forward(self, lam_t: float, n_moments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M~ (p, D): int e^{L+S~} r^k, MB: int e^{L+S~} B~, B~(lam_t)) over [lambda_s, lambda_t]."""
        d = self.t.l.shape[1]
        h = lam_t - self.lam_s
        moments = torch.zeros(n_moments, d, dtype=_F64)
        mb = torch.zeros(d, dtype=_F64)
        b_acc = torch.zeros(d, dtype=_F64)
        q_mat = torch.from_numpy(_GL_Q)
        for q, wq, half in self._blocks(_pieces(self.t, self.lam_s, lam_t)):
            flat = q.reshape(-1)
            f = self._f(q)  # (P, n, D)
            piece_total = torch.einsum("pn,pnd->pd", wq, f)
            starts = b_acc + torch.cumsum(piece_total, 0) - piece_total  # B~ at piece starts
            b_q = starts[:, None] + half[:, :, None] * torch.einsum("ij,pjd->pid", q_mat, f)
            b_acc = b_acc + piece_total.sum(0)
            e = torch.exp(self.L(flat) + self.S(flat)).reshape(*q.shape, d)
            r = (q - self.lam_s) / h
            we = wq[:, :, None] * e
            for k in range(n_moments):
                moments[k] += torch.einsum("pn,pnd->d", r**k, we)
            mb += (we * b_q).sum(dim=(0, 1))
        return moments, mb, b_acc


@dataclass(frozen=True)
class _V3Coefficients:
    """x_t = x_coef * x_s + sum_j n_coefs[j] * N_j + const (per-dimension tensors, sample shape)."""

    x_coef: torch.Tensor
    n_coefs: tuple[torch.Tensor, ...]
    const: torch.Tensor

    def to(self, like: torch.Tensor) -> _V3Coefficients:
        return _V3Coefficients(
            self.x_coef.to(like), tuple(c.to(like) for c in self.n_coefs), self.const.to(like)
        )

    def apply(self, x: torch.Tensor, ns: list[torch.Tensor]) -> torch.Tensor:
        total = self.const + self.x_coef * x
        for c, n in zip(self.n_coefs, ns, strict=True):
            total = total + c * n
        return total


@dataclass(frozen=True)
class DPMSolverV3:
    """DPM-Solver-v3 (Zheng et al. 2023) on the engine's conventions (quacks like :class:`~samplers.Solver`).

    Args:
        ems: the :class:`~samplers.ems.EmpiricalModelStatistics` (or a path to their safetensors file,
            loaded on first use and memoised). The grid's finite log-SNR range must lie inside theirs.
        order: predictor order 1-3 (multistep; lower orders while history accumulates).
        corrector: the predictor-corrector of Sec. 3.3 (UniC-style, no extra model evaluation).
        lower_order_final: lower the last steps' orders; ``None`` = only with fewer than 15 steps.

    The multistep history holds N_j = sigma_j eps_j - l(lambda_j) x_j at the points the model was
    evaluated at. ``prediction`` is ``"noise"`` (eps is what is integrated; it also makes the schedulers
    start at a finite log-SNR).
    """

    ems: EmpiricalModelStatistics | str | os.PathLike
    order: int = 2
    corrector: bool = True
    lower_order_final: bool | None = None
    name: str = "DPM-Solver-v3"

    multistep = True
    prediction = "noise"
    is_stochastic = False

    def __post_init__(self) -> None:
        if not isinstance(self.order, int) or not 1 <= self.order <= 3:
            raise ValueError(f"{self.name}: order must be 1, 2 or 3, got {self.order!r}")
        if not isinstance(self.ems, EmpiricalModelStatistics | str | os.PathLike):
            raise ValueError(f"{self.name}: ems must be EmpiricalModelStatistics or a path, got {self.ems!r}")
        if not isinstance(self.ems, EmpiricalModelStatistics) and not os.path.isfile(os.fspath(self.ems)):
            raise FileNotFoundError(f"{self.name}: EMS file not found: {os.fspath(self.ems)!r}")

    @property
    def statistics(self) -> EmpiricalModelStatistics:
        return self.ems if isinstance(self.ems, EmpiricalModelStatistics) else load_ems(self.ems)

    # ------------------------------------------------------------------ public API (as Solver)
    def init(
        self, x: torch.Tensor, grid: TimeGrid, cond: Mapping[str, torch.Tensor] | None = None
    ) -> SolverState:
        """Validate the grid (finite start, inside the EMS range) and the sample shape; wrap x."""
        ems = self.statistics
        if grid.alpha_values[0] == 0 or not math.isfinite(grid.lambdas[0]):
            raise ValueError(f"{self.name}: needs a finite start log-SNR (alpha > 0); start at t < t_max")
        finite = [lam for lam in grid.lambdas if math.isfinite(lam)]
        ems.check_covers(min(finite), max(finite), _RANGE_TOL, what=f"{self.name}: the grid")
        if tuple(x.shape[1:]) != ems.sample_shape:
            raise ValueError(
                f"{self.name}: sample shape {tuple(x.shape[1:])} does not match the EMS' {ems.sample_shape}"
            )
        if grid.schedule is None:
            raise ValueError(f"{self.name}: needs grid.schedule (build the grid with make_grid)")
        return SolverState(x=x, cond=dict(cond or {}))

    def step(self, denoiser: Denoiser, state: SolverState, grid: TimeGrid, noise=None) -> SolverState:
        """Advance ``state`` by one grid step, calling ``denoiser`` once."""
        return drive(self.advance(state, grid, noise), denoiser, state.cond)

    def advance(
        self, state: SolverState, grid: TimeGrid, noise=None
    ) -> Generator[Evaluation, DenoiserOutput, SolverState]:
        """One step as a coroutine (see :meth:`samplers.solvers.Solver.advance`)."""
        i = state.step
        if not 0 <= i < grid.steps:
            raise ValueError(f"state is at step {i}; the grid has steps 0..{grid.steps - 1}")
        out = yield Evaluation(state.x, grid.t[i], grid.alpha_values[i], grid.sigma_values[i], i)
        return self._multistep(state, grid, out)

    def evaluations(self, grid: TimeGrid) -> int:
        return grid.steps

    def step_evaluations(self, i: int, grid: TimeGrid) -> list[tuple[float, float, float]]:
        return [(float(grid.t[i]), grid.alpha_values[i], grid.sigma_values[i])]

    # ------------------------------------------------------------------ internals
    def _order_at(self, i: int, grid: TimeGrid, available: int) -> int:
        return order_at(self.order, self.lower_order_final, i, grid, available)

    def _tables(self, grid: TimeGrid) -> _Tables:
        ems, sched = self.statistics, grid.schedule
        ends = torch.tensor([ems.lambda_min, ems.lambda_max], dtype=_F64)
        key = (
            "dpmv3-tables",
            ems.fingerprint,
            type(sched).__name__,
            tuple(log_alpha_of_lambda(sched, ends).tolist()),
        )
        tables = grid.step_cache.get(key)
        if tables is None:
            tables = grid.step_cache[key] = _Tables(ems, sched)
        return tables

    def _l_at(self, grid: TimeGrid, i: int, like: torch.Tensor) -> torch.Tensor:
        tables = self._tables(grid)
        key = ("dpmv3-l", self.statistics.fingerprint, grid.lambdas[i], like.dtype, like.device)
        value = grid.step_cache.get(key)
        if value is None:
            lam = torch.tensor([grid.lambdas[i]], dtype=_F64)
            value = tables.values(tables.l, lam)[0].reshape(tables.shape).to(like)
            grid.step_cache[key] = value
        return value

    def _coefs(self, grid: TimeGrid, nodes: list[int], i_from: int, i_to: int, like) -> _V3Coefficients:
        """Coefficients of the step from grid point i_from to i_to with interpolation nodes ``nodes``
        (grid indices, nodes[0] = i_from), memoised on the grid by value."""
        lam, al = grid.lambdas, grid.alpha_values
        key = (
            "dpmv3",
            self.statistics.fingerprint,
            tuple(lam[j] for j in nodes),
            tuple(al[j] for j in nodes),
            lam[i_to],
            al[i_to],
            grid.sigma_values[i_to],
            like.dtype,
            like.device,
        )
        cached = grid.step_cache.get(key)
        if cached is None:
            c = _step_coefficients(
                self._tables(grid), [lam[j] for j in nodes], [al[j] for j in nodes], lam[i_to], al[i_to]
            )
            cached = grid.step_cache[key] = c.to(like)
        return cached

    def _multistep(self, state: SolverState, grid: TimeGrid, out: DenoiserOutput) -> SolverState:
        i = state.step
        x = state.x
        n_i = grid.sigma_values[i] * out.eps - self._l_at(grid, i, x) * x
        if self.corrector and state.x_prev is not None and state.prev_order > 0:
            p = state.prev_order
            hist = list(zip(state.history_steps, state.history, strict=True))[::-1][:p]
            c = self._coefs(grid, [j for j, _ in hist] + [i], i - 1, i, x)
            x = c.apply(state.x_prev, [h for _, h in hist] + [n_i])
        steps = (*state.history_steps, i)[-self.order :]
        history = (*state.history, n_i)[-self.order :]
        if grid.sigma_values[i + 1] == 0:  # lambda = +inf: first-order data-prediction step
            x_next = grid.alpha_values[i + 1] * out.x0
            p = 1
        else:
            nodes = list(zip(steps[::-1], history[::-1], strict=True))
            p = self._order_at(i, grid, len(nodes))
            nodes = nodes[:p]
            c = self._coefs(grid, [j for j, _ in nodes], i, i + 1, x)
            x_next = c.apply(x, [h for _, h in nodes])
        return replace(
            state, x=x_next, step=i + 1, history=history, history_steps=steps, x_prev=x, prev_order=p
        )


def _step_coefficients(
    tables: _Tables, node_lams: list[float], node_alphas: list[float], lam_t: float, alpha_t: float
) -> _V3Coefficients:
    """The step from lambda_s = node_lams[0] to lam_t (module docstring), in the alpha-scaled frame
    N~ = N / alpha, s~ = s - a, b~ = b / alpha (g~ = g / alpha_s, B~ = B / alpha_s):

        x_t = A x_s + sum_j W_j N_j + C,   A = (alpha_t/alpha_s) e^{-L_t},  K = alpha_t e^{-L_t},
        W_j = -K w~_j e^{-S~_j} / alpha_j,  C = -K (int e^{L+S~} B~ - sum_j w~_j B~_j),
        w~ = V^{-T} M~,  M~_k = int e^{L+S~} r^k.
    """
    lam_s, alpha_s = node_lams[0], node_alphas[0]
    h = lam_t - lam_s
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"step needs finite increasing log-SNR, got {lam_s} -> {lam_t}")
    p = len(node_lams)
    ints = _StepIntegrals(tables, lam_s)
    moments, mb, b_t = ints.forward(lam_t, p)
    lam_nodes = torch.tensor(node_lams, dtype=_F64)
    s_nodes = ints.S(lam_nodes)  # (p, D)
    b_nodes = torch.stack([b_t if lj == lam_t else ints.B_at(lj) for lj in node_lams])
    r = (lam_nodes - lam_s) / h
    vander = torch.stack([r**k for k in range(p)], dim=1)  # V[j, k] = r_j^k
    w = torch.linalg.solve(vander.T, moments)  # (p, D)
    L_t = ints.L(torch.tensor([lam_t], dtype=_F64))[0]
    k_t = alpha_t * torch.exp(-L_t)
    x_coef = (alpha_t / alpha_s) * torch.exp(-L_t)
    alphas = torch.tensor(node_alphas, dtype=_F64).reshape(-1, 1)
    n_coefs = -k_t * w * torch.exp(-s_nodes) / alphas
    const = -k_t * (mb - (w * b_nodes).sum(0))
    shape = tables.shape
    return _V3Coefficients(
        x_coef.reshape(shape), tuple(c.reshape(shape) for c in n_coefs), const.reshape(shape)
    )
