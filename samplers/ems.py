r"""Empirical model statistics (EMS) for DPM-Solver-v3 (Zheng, Lu, Chen & Zhu, NeurIPS 2023, Sec. 3).

In log-SNR lambda = log(alpha/sigma) the probability-flow ODE is dx/dlambda = a x - sigma eps, with
a = d log alpha / d lambda. DPM-Solver-v3 splits the model output, per dimension, as
sigma eps = N + l x (a linear part l x plus a remainder N) and models the remainder's total derivative
along the ODE trajectory as dN/dlambda ~ s N + b. The three per-dimension functions of lambda are the
*empirical model statistics* (the paper's eq. for l_lambda, s_lambda, b_lambda; Sec. 3.1-3.2, "Empirical
Model Statistics"):

* l = E_x[diag(d(sigma eps)/dx)]: the linear part closest to the model (it minimises the expected squared
  norm of the Jacobian of N, i.e. makes N as x-independent as possible);
* s, b: the least-squares fit of N' = dN/dlambda on N across samples, s = Cov(N', N)/Var(N) and
  b = E[N'] - s E[N] (a small ridge term keeps s ~ 0 where N does not vary across samples).

:func:`compute_ems` estimates them from the model itself on a set of starting noises: a fine teacher ODE solve
records x and eps at every point of a uniform-lambda grid; l is a Hutchinson estimate E[v * (J v)] with
Rademacher v and J v by central finite differences (one batched model call per grid point); N' is a
finite difference along lambda (second order everywhere). :class:`EmpiricalModelStatistics` holds the
tables and stores them as safetensors.

Special cases (:meth:`EmpiricalModelStatistics.trivial`): l = 1, s = a, b = 0 is DPM-Solver++ (data
prediction); l = 0, s = d log sigma / d lambda = a - 1, b = 0 is DPM-Solver (noise prediction).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .denoiser import DenoiserOutput
from .grids import make_grid
from .schedules import NoiseSchedule

__all__ = ["EmpiricalModelStatistics", "compute_ems", "dlog_alpha_dlambda", "load_ems"]

_F64 = torch.float64
_KEYS = ("lambdas", "l", "s", "b")
_FD_REL = {torch.float64: 1e-4, torch.float32: 5e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}


def _lambda_range(schedule: NoiseSchedule) -> tuple[float, float]:
    ends = schedule.lambda_(torch.tensor([schedule.t_max, schedule.t_min], dtype=_F64))
    return float(ends[0]), float(ends[1])


def log_alpha_of_lambda(schedule: NoiseSchedule, lam: torch.Tensor) -> torch.Tensor:
    """log alpha as a function of log-SNR (through the schedule's inverse t(lambda))."""
    return torch.log(schedule.alpha(schedule.t_of_lambda(torch.as_tensor(lam, dtype=_F64))))


def dlog_alpha_dlambda(schedule: NoiseSchedule, lam: Any, delta: float = 1e-5) -> torch.Tensor:
    """a(lambda) = d log alpha / d lambda by central differences (one-sided at the schedule's ends), float64.

    For every VP schedule a = sigma^2 (alpha^2 = sigmoid(2 lambda)); for flow matching a = sigma; for EDM 0.
    """
    lam = torch.as_tensor(lam, dtype=_F64)
    lo, hi = _lambda_range(schedule)
    lo = lo if math.isfinite(lo) else -math.inf
    lam_m = (lam - delta).clamp(min=lo, max=hi)
    lam_p = (lam + delta).clamp(min=lo, max=hi)
    return (log_alpha_of_lambda(schedule, lam_p) - log_alpha_of_lambda(schedule, lam_m)) / (lam_p - lam_m)


@dataclass(frozen=True, eq=False)
class EmpiricalModelStatistics:
    """EMS tables on an increasing log-SNR grid.

    Attributes:
        lambdas: (K,) strictly increasing log-SNR values.
        l, s, b: (K, *sample_shape) per-dimension statistics at those values (float64).
        metadata: free-form string metadata (model, schedule, samples, steps, NFE, seconds, ...).
    """

    lambdas: torch.Tensor
    l: torch.Tensor  # noqa: E741
    s: torch.Tensor
    b: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lam = torch.as_tensor(self.lambdas)
        if lam.ndim != 1 or lam.numel() < 2:
            raise ValueError(f"EMS lambdas must be a 1-D tensor of >= 2 values, got shape {tuple(lam.shape)}")
        lam = lam.detach().to("cpu", _F64)
        if not torch.isfinite(lam).all() or not torch.all(lam[1:] > lam[:-1]):
            raise ValueError("EMS lambdas must be finite and strictly increasing")
        object.__setattr__(self, "lambdas", lam)
        shape = None
        for name in ("l", "s", "b"):
            value = torch.as_tensor(getattr(self, name)).detach().to("cpu", _F64)
            if value.ndim < 2 or value.shape[0] != lam.numel():
                raise ValueError(
                    f"EMS {name} must have shape (K, *sample_shape) with K = {lam.numel()} (len(lambdas)), "
                    f"got {tuple(value.shape)}"
                )
            if shape is not None and value.shape != shape:
                raise ValueError(f"EMS l, s and b must have the same shape; {name} has {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"EMS {name} contains NaN or Inf")
            shape = value.shape
            object.__setattr__(self, name, value.contiguous())
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in dict(self.metadata).items()})
        digest = hashlib.sha1()
        for name in _KEYS:
            digest.update(getattr(self, name).numpy().tobytes())
        object.__setattr__(self, "fingerprint", digest.hexdigest())

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    @property
    def lambda_min(self) -> float:
        return float(self.lambdas[0])

    @property
    def lambda_max(self) -> float:
        return float(self.lambdas[-1])

    def check_covers(self, lam_lo: float, lam_hi: float, tol: float = 1e-6, what: str = "the grid") -> None:
        """Raise ValueError unless [lam_lo, lam_hi] lies in the EMS log-SNR range (up to ``tol``)."""
        if lam_lo < self.lambda_min - tol or lam_hi > self.lambda_max + tol:
            raise ValueError(
                f"{what} spans log-SNR [{lam_lo:.6g}, {lam_hi:.6g}] but the EMS cover only "
                f"[{self.lambda_min:.6g}, {self.lambda_max:.6g}]; compute the EMS over a wider range "
                "(compute_ems t_start/t_end) or sample inside it"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def trivial(
        cls,
        kind: str,
        schedule: NoiseSchedule,
        sample_shape: Sequence[int],
        lambdas: torch.Tensor | Sequence[float] | None = None,
        num: int = 2,
    ) -> EmpiricalModelStatistics:
        """Statistics that make DPM-Solver-v3 a previous solver (exact Lagrange integration in lambda).

        kind ``"data"``: l = 1, s = a = d log alpha / d lambda, b = 0: N = -alpha x0, DPM-Solver++.
        kind ``"noise"``: l = 0, s = d log sigma / d lambda = a - 1, b = 0: N = sigma eps, DPM-Solver.
        ``lambdas`` defaults to ``num`` uniform values over the schedule's finite log-SNR range.
        """
        if kind not in ("data", "noise"):
            raise ValueError(f"kind must be 'data' or 'noise', got {kind!r}")
        if lambdas is None:
            lo, hi = _lambda_range(schedule)
            if not math.isfinite(lo):  # alpha = 0 at t_max (flows): one training step in
                lo = float(schedule.lambda_(torch.tensor(schedule.t_max - 1e-3, dtype=_F64)))
            lambdas = torch.linspace(lo, hi, max(int(num), 2), dtype=_F64)
        lam = torch.as_tensor(lambdas, dtype=_F64)
        shape = tuple(int(n) for n in sample_shape)
        a = dlog_alpha_dlambda(schedule, lam).reshape(-1, *([1] * len(shape))).expand(-1, *shape)
        ones = torch.ones(lam.numel(), *shape, dtype=_F64)
        if kind == "data":
            l, s = ones, a.clone()  # noqa: E741
        else:
            l, s = torch.zeros_like(ones), a - 1.0  # noqa: E741
        meta = {"kind": f"trivial-{kind}", "schedule": type(schedule).__name__}
        return cls(lam, l, s, torch.zeros_like(ones), meta)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the tables (float64) and the metadata (strings) as a safetensors file."""
        from safetensors.torch import save_file

        tensors = {k: getattr(self, k).contiguous() for k in _KEYS}
        save_file(tensors, os.fspath(path), metadata={"format": "dpm-solver-v3-ems", **self.metadata})

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmpiricalModelStatistics:
        """Read a file written by :meth:`save`, validating keys and shapes (ValueError otherwise)."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EMS file not found: {path!r} (create it with compute_ems(...).save)")
        try:
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
                keys = set(f.keys())
                missing = [k for k in _KEYS if k not in keys]
                if missing:
                    raise ValueError(f"EMS file {path!r} lacks tensors {missing} (has {sorted(keys)})")
                tensors = {k: f.get_tensor(k) for k in _KEYS}
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"cannot read EMS file {path!r}: {exc}") from exc
        metadata.pop("format", None)
        try:
            return cls(tensors["lambdas"], tensors["l"], tensors["s"], tensors["b"], metadata)
        except ValueError as exc:
            raise ValueError(f"invalid EMS file {path!r}: {exc}") from exc


_LOAD_CACHE: dict[tuple[str, float, int], EmpiricalModelStatistics] = {}


def load_ems(path: str | os.PathLike) -> EmpiricalModelStatistics:
    """:meth:`EmpiricalModelStatistics.load`, memoised on (absolute path, modification time, size)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EMS file not found: {path!r} (create it with compute_ems(...).save)")
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _LOAD_CACHE:
        if len(_LOAD_CACHE) > 8:
            _LOAD_CACHE.clear()
        _LOAD_CACHE[key] = EmpiricalModelStatistics.load(path)
    return _LOAD_CACHE[key]


# ---------------------------------------------------------------------- computation
def _repeat_cond(cond: Mapping[str, torch.Tensor], batch: int, times: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in cond.items():
        if v.shape[0] == batch:
            out[k] = v.repeat_interleave(times, dim=0)
        elif v.shape[0] == 1:
            out[k] = v
        else:
            raise ValueError(f"conditioning {k!r} has batch {v.shape[0]}, expected 1 or {batch}")
    return out


def _hutchinson_diag(
    denoiser: Callable[..., DenoiserOutput],
    x: torch.Tensor,
    t: Any,
    alpha: float,
    sigma: float,
    cond: Mapping[str, torch.Tensor],
    probes: int,
    fd_rel: float,
    generator: torch.Generator,
    max_batch: int | None,
) -> tuple[torch.Tensor, int]:
    """Mean over samples and probes of v * (J v), J = d(sigma eps)/dx, v Rademacher; J v by central
    differences with step delta = fd_rel * RMS(x) per sample. Returns (estimate (*shape), model calls)."""
    b = x.shape[0]
    shape = x.shape[1:]
    v = torch.randint(0, 2, (b, probes, *shape), generator=generator, dtype=torch.int8)
    v = (2 * v - 1).to(x.dtype)
    rms = x.reshape(b, -1).pow(2).mean(dim=1).sqrt().clamp(min=1e-3)
    delta = (fd_rel * rms).reshape(b, 1, *([1] * len(shape)))
    xs = torch.stack([x[:, None] + delta * v, x[:, None] - delta * v], dim=2)  # (B, P, 2, *shape)
    flat = xs.reshape(b * probes * 2, *shape)
    conds = _repeat_cond(cond, b, probes * 2)
    rows = flat.shape[0]
    chunk = rows if not max_batch else max(2, int(max_batch) // 2 * 2)
    outs, calls = [], 0
    for start in range(0, rows, chunk):
        sl = slice(start, start + chunk)
        c = {k: (val[sl] if val.shape[0] == rows else val) for k, val in conds.items()}
        outs.append(denoiser(flat[sl], t, alpha, sigma, c).eps)
        calls += 1
    f = (sigma * torch.cat(outs)).reshape(b, probes, 2, *shape).to(_F64)
    jv = (f[:, :, 0] - f[:, :, 1]) / (2 * delta.to(_F64))
    return (v.to(_F64) * jv).mean(dim=(0, 1)), calls


def compute_ems(
    denoiser: Callable[..., DenoiserOutput],
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    cond: Mapping[str, torch.Tensor] | None = None,
    steps: int = 200,
    t_start: float | None = None,
    t_end: float | None = None,
    probes: int = 4,
    fd_rel: float | None = None,
    ridge: float = 1e-8,
    teacher_order: int = 2,
    max_batch: int | None = None,
    seed: int = 0,
    progress: bool = False,
    model_name: str = "",
) -> EmpiricalModelStatistics:
    """Estimate the EMS of ``denoiser`` on ``schedule`` from the starting samples ``x_T`` (B, *shape).

    Args:
        denoiser: ``denoiser(x, t, alpha, sigma, cond) -> DenoiserOutput`` (e.g. :class:`~samplers.Denoiser`,
            guidance included); ``cond`` rows (batch B or 1) pass through to it.
        schedule: the noise schedule; x_T are samples at ``t_start`` (default ``t_max``; it must have
            alpha > 0 there, e.g. ``t_start=0.999`` for flow matching).
        steps: teacher steps on a uniform-lambda grid from t_start to t_end (default t_min); the EMS are
            tabulated at its steps + 1 points.
        probes: Rademacher probes per sample and grid point for the Hutchinson diagonal.
        fd_rel: finite-difference step relative to each sample's RMS (default by dtype: 1e-4 for float64,
            5e-3 for float32, balancing truncation ~delta^2 against rounding ~eps_mach/delta).
        ridge: Var(N) is regularised by ridge * mean(E[N^2]), so s -> 0 where N barely varies.
        teacher_order: order of the DPM-Solver++ teacher (exact Lagrange integration).
        max_batch: split the batched probe evaluation (B * probes * 2 rows) into calls of at most this size.

    Cost: (steps + 1) teacher evaluations plus (steps + 1) probe calls of 2 * probes * B rows each.
    Memory: the states and eps of all grid points, 2 (steps + 1) B prod(shape) values.
    """
    from .solvers import DPMSolverPP, Evaluation  # solvers imports nothing from here

    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a tensor of shape (B, *sample_shape) with B >= 2")
    b = x_T.shape[0]
    if b < 2:
        raise ValueError("compute_ems needs at least 2 samples (s, b are regressions across samples)")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    if ridge < 0:
        raise ValueError("ridge must be >= 0")
    cond = dict(cond or {})
    for k, v in cond.items():
        if not isinstance(v, torch.Tensor) or v.shape[0] not in (1, b):
            raise ValueError(f"cond[{k!r}] must be a tensor with batch 1 or {b}")
    fd = fd_rel if fd_rel is not None else _FD_REL.get(x_T.dtype, 5e-3)
    grid = make_grid(schedule, steps, "uniform_lambda", final="min", t_start=t_start, t_end=t_end)
    if grid.alpha_values[0] <= 0 or not math.isfinite(grid.lambdas[0]):
        raise ValueError("compute_ems needs a finite start log-SNR (alpha > 0): pass t_start < t_max")
    teacher = DPMSolverPP(teacher_order, rule="exact", lower_order_final=False)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xs, eps, ls = [], [], []
    calls = rows = 0
    state = teacher.init(x_T, grid, cond)
    points = range(grid.steps + 1)
    if progress:
        from tqdm.auto import tqdm

        points = tqdm(points, desc="EMS", leave=False)
    for i in points:
        t, a, s = grid.t[i], grid.alpha_values[i], grid.sigma_values[i]
        plan = teacher.advance(state, grid) if i < grid.steps else None
        request = next(plan) if plan is not None else Evaluation(state.x, t, a, s, i)
        out = denoiser(request.x, request.t, request.alpha, request.sigma, cond)
        calls, rows = calls + 1, rows + b
        if not (torch.isfinite(out.eps).all()):
            raise ValueError(f"model output contains NaN or Inf at grid point {i} (t={float(t):.6g})")
        xs.append(request.x.detach().to(_F64))
        eps.append(out.eps.detach().to(_F64))
        l_i, n_calls = _hutchinson_diag(denoiser, request.x, t, a, s, cond, probes, fd, gen, max_batch)
        ls.append(l_i)
        calls, rows = calls + n_calls, rows + 2 * probes * b
        if plan is not None:
            try:
                plan.send(out)
            except StopIteration as done:
                state = done.value
    lam = torch.tensor(grid.lambdas, dtype=_F64)
    sig = torch.tensor(grid.sigma_values, dtype=_F64)
    x = torch.stack(xs)  # (K, B, *shape)
    shape_b = (-1,) + (1,) * (x.ndim - 1)
    l_tab = torch.stack(ls)  # (K, *shape)
    n = sig.reshape(shape_b) * torch.stack(eps) - l_tab[:, None] * x
    dn = torch.gradient(n, spacing=(lam,), dim=0, edge_order=2)[0]  # second order, non-uniform spacing
    mean_n, mean_dn = n.mean(dim=1), dn.mean(dim=1)
    cov = ((n - mean_n[:, None]) * (dn - mean_dn[:, None])).mean(dim=1)
    var = (n - mean_n[:, None]).pow(2).mean(dim=1)
    scale = n.pow(2).mean(dim=1).reshape(n.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (n.ndim - 2)))
    s_tab = cov / (var + ridge * scale + 1e-300)
    b_tab = mean_dn - s_tab * mean_n
    meta = {
        "kind": "computed",
        "model": model_name or type(getattr(denoiser, "net", denoiser)).__name__,
        "schedule": type(schedule).__name__,
        "samples": str(b),
        "steps": str(steps),
        "probes": str(probes),
        "fd_rel": repr(fd),
        "ridge": repr(ridge),
        "t_start": repr(float(grid.t[0])),
        "t_end": repr(float(grid.t[-1])),
        "model_calls": str(calls),
        "sample_evaluations": str(rows),
        "seconds": f"{time.perf_counter() - t0:.3f}",
        "dtype": str(x_T.dtype),
    }
    return EmpiricalModelStatistics(lam, l_tab, s_tab, b_tab, meta)
