"""Resampling schemes for particle methods (SMC, Feynman-Kac steering), working in log space.

Every resampler has the signature::

    resampler(log_weights: Tensor[N], num: int | None = None, generator: torch.Generator | None = None)
        -> Tensor[num] (torch.long)

and returns ancestor indices in ``[0, N)``; ``num`` defaults to ``N``. Log weights need not be normalised;
``-inf`` gives a particle zero weight (it is never selected), while NaN or ``+inf`` anywhere, or every entry
``-inf``, raises :class:`ValueError`. Arithmetic is done in float64 on the input's device, and every random
number is drawn from ``generator`` (which must live on that device), so a seeded generator reproduces the
indices exactly.

All four schemes are unbiased: with normalised weights ``w``, the number of copies of particle ``i`` has
expectation ``E[count_i] = num * w_i``. They differ in variance, with multinomial the reference: residual
and stratified resampling have conditional variance no larger than multinomial's for every test function
(Douc, Cappé & Moulines 2005, "Comparison of resampling schemes for particle filtering", ISPA 2005).
Systematic resampling keeps every count within one of ``num * w_i``, so each particle's count variance is
also at most multinomial's and it is usually the best choice in practice, but Douc et al. show it has no
such guarantee for general functions of the resampled population.

References:
    R. Douc, O. Cappé, E. Moulines. "Comparison of resampling schemes for particle filtering".
    Proc. 4th Int. Symp. on Image and Signal Processing and Analysis (ISPA), 2005.
    G. Kitagawa. "Monte Carlo filter and smoother for non-Gaussian nonlinear state space models".
    Journal of Computational and Graphical Statistics 5(1), 1996.
    J. S. Liu, R. Chen. "Sequential Monte Carlo methods for dynamic systems". JASA 93(443), 1998.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "RESAMPLERS",
    "Resampler",
    "effective_sample_size",
    "get_resampler",
    "multinomial",
    "normalise_log_weights",
    "residual",
    "stratified",
    "systematic",
]

F64 = torch.float64

# a scaled weight num * w_i within this of the next integer counts as that integer in residual resampling,
# so that e.g. equal weights give exactly one deterministic copy each despite float64 rounding
_INTEGER_SNAP = 1e-10


class Resampler(Protocol):
    """A resampling scheme: log weights ``(N,)`` -> ``num`` ancestor indices (``torch.long``)."""

    def __call__(
        self, log_weights: Tensor, num: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor: ...


# ----------------------------------------------------------------------------------------------------------
# validation and weight helpers


def _check_log_weights(log_weights: Tensor) -> Tensor:
    """Validate ``log_weights`` and return them as a float64 1-D tensor on the same device."""
    if not isinstance(log_weights, Tensor):
        log_weights = torch.as_tensor(log_weights)
    if log_weights.is_complex() or log_weights.dtype == torch.bool:
        raise TypeError(f"log_weights must be a real tensor, got dtype {log_weights.dtype}")
    if log_weights.ndim != 1:
        raise ValueError(f"log_weights must be a 1-D tensor (N,), got shape {tuple(log_weights.shape)}")
    if log_weights.numel() == 0:
        raise ValueError("log_weights is empty: need at least one particle")
    lw = log_weights.to(F64)
    if not bool(torch.isfinite(lw).all()):  # one sync on the common path; details only when needed
        n_nan = int(torch.isnan(lw).sum())
        if n_nan:
            raise ValueError(f"log_weights contain {n_nan} NaN value(s) out of {lw.numel()}")
        n_posinf = int(torch.isposinf(lw).sum())
        if n_posinf:
            raise ValueError(f"log_weights contain {n_posinf} +inf value(s): weights must be finite")
        if bool(torch.isneginf(lw).all()):
            raise ValueError("every particle has zero weight: all log weights are -inf")
    return lw


def _check_num(num: int | None, n: int) -> int:
    if num is None:
        return n
    if isinstance(num, bool):
        raise TypeError("num must be an int, got bool")
    num = operator.index(num)
    if num < 1:
        raise ValueError(f"num must be a positive number of particles to draw, got {num}")
    return num


def _scaled_weights(lw: Tensor, num: int) -> Tensor:
    """``num * w`` row-wise in float64, in log space so that equal weights give exactly 1 when num = N."""
    return torch.exp(lw - (torch.logsumexp(lw, -1, keepdim=True) - math.log(num)))


def _inverse_cdf(scaled: Tensor, positions: Tensor, total_hint: float | Tensor) -> Tensor:
    """Row-wise ancestor indices for ``positions`` ``(B, M)`` in ``[0, total_hint)`` under masses ``(B, N)``.

    Index ``i`` is returned for ``cdf[i-1] <= u < cdf[i]``. A zero-mass particle gets exactly the cumulative
    value of its predecessor, so its interval is empty and it is never chosen, whatever order the (possibly
    parallel) scan added things in; positions that round up to the total go to the last positive particle.
    Positions are rescaled from ``total_hint`` onto the actual total of each row. No host synchronisation.
    """
    cdf = torch.cumsum(scaled, -1)
    cdf = torch.where(scaled > 0, cdf, 0.0).cummax(-1).values
    total = cdf[:, -1:].contiguous()
    idx = torch.searchsorted(cdf, positions * (total / total_hint), right=True)
    return torch.minimum(idx, torch.searchsorted(cdf, total))


def _rand(rows: int, cols: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(rows, cols, generator=generator, dtype=F64, device=like.device)


# Row-batched cores: ``scaled`` is ``(B, N)`` float64 holding ``num * w`` per row (already validated); each
# returns ``(B, num)`` long indices. The public resamplers below are these applied to a single row, which is
# also what lets the statistical tests draw many independent resamplings in one call.


def _multinomial_rows(scaled: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    return _inverse_cdf(scaled, _rand(scaled.shape[0], num, scaled, generator) * num, float(num))


def _stratified_rows(scaled: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    strata = torch.arange(num, dtype=F64, device=scaled.device)
    return _inverse_cdf(scaled, strata + _rand(scaled.shape[0], num, scaled, generator), float(num))


def _systematic_rows(scaled: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    strata = torch.arange(num, dtype=F64, device=scaled.device)
    return _inverse_cdf(scaled, strata + _rand(scaled.shape[0], 1, scaled, generator), float(num))


def _residual_rows(scaled: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    rows = scaled.shape[0]
    copies = torch.floor(scaled + _INTEGER_SNAP)
    residuals = (scaled - copies).clamp_(min=0.0)
    counts = copies.to(torch.long)
    # sum(copies) <= sum(scaled) + N * snap < num + 1, so no remainder is negative
    remainder = num - counts.sum(-1, keepdim=True)  # (B, 1)
    most = int(remainder.max())
    if most > 0:
        hint = remainder.clamp(min=1).to(F64)
        drawn = _inverse_cdf(residuals, _rand(rows, most, scaled, generator) * hint, hint)
        used = torch.arange(most, device=scaled.device) < remainder  # row b keeps its first remainder_b draws
        counts = counts.scatter_add(1, drawn, used.to(torch.long))
    # expand the counts into sorted indices: position k goes to the first i with cumsum(counts)[i] > k
    slots = torch.arange(num, device=scaled.device).expand(rows, num).contiguous()
    return torch.searchsorted(torch.cumsum(counts, -1), slots, right=True)


def _resample_one(
    rows_fn: Callable[[Tensor, int, torch.Generator | None], Tensor],
    log_weights: Tensor,
    num: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    lw = _check_log_weights(log_weights)
    num = _check_num(num, lw.numel())
    return rows_fn(_scaled_weights(lw[None], num), num, generator)[0]


def normalise_log_weights(log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Normalise log weights: ``(log_weights - logsumexp(log_weights), logsumexp(log_weights) - log N)``.

    Returns:
        ``log_w_normalised``: float64 ``(N,)`` on the input's device with ``logsumexp == 0`` (``-inf``
        entries stay ``-inf``), and ``log_mean_weight``: a float64 0-dim tensor,
        ``log((1/N) sum_i exp(lw_i))``, the per-step factor of the SMC normalising-constant (evidence)
        estimate.

    Raises:
        ValueError: on NaN, ``+inf``, all ``-inf``, empty or non-1-D input.
    """
    lw = _check_log_weights(log_weights)
    lse = torch.logsumexp(lw, 0)
    return lw - lse, lse - math.log(lw.numel())


def effective_sample_size(log_weights: Tensor) -> float:
    """Kish effective sample size ``1 / sum_i w_i^2`` of the normalised weights, in ``[1, N]``.

    Computed stably as ``exp(2 logsumexp(lw) - logsumexp(2 lw))``; equal weights give ``N``, a single
    non-zero weight gives ``1``.

    Raises:
        ValueError: on NaN, ``+inf``, all ``-inf``, empty or non-1-D input.
    """
    lw = _check_log_weights(log_weights)
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


# ----------------------------------------------------------------------------------------------------------
# resamplers


def multinomial(
    log_weights: Tensor, num: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Multinomial resampling: ``num`` i.i.d. draws from the categorical distribution ``w``.

    Unbiased (``E[count_i] = num * w_i``) with ``Var[count_i] = num * w_i (1 - w_i)``; the baseline that
    residual and stratified resampling never exceed in variance (Douc, Cappé & Moulines 2005, "Comparison
    of resampling schemes for particle filtering"). Implemented by inverse-CDF lookup of ``num`` uniforms.

    Returns:
        ``(num,)`` long ancestor indices in draw order (not sorted; the sequence is exchangeable).
    """
    return _resample_one(_multinomial_rows, log_weights, num, generator)


def stratified(
    log_weights: Tensor, num: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Stratified resampling (Kitagawa 1996): one independent uniform in each stratum ``[k/num, (k+1)/num)``.

    Draws ``u_k = (k + U_k) / num`` with ``U_k ~ U[0, 1)`` independent and inverts the CDF of ``w``.
    Unbiased (``E[count_i] = num * w_i``) with variance no larger than multinomial's (Douc, Cappé &
    Moulines 2005, "Comparison of resampling schemes for particle filtering").

    Returns:
        ``(num,)`` long ancestor indices, sorted ascending.
    """
    return _resample_one(_stratified_rows, log_weights, num, generator)


def systematic(
    log_weights: Tensor, num: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Systematic resampling (Kitagawa 1996): one uniform shared by all strata, ``u_k = (k + U) / num``.

    Unbiased (``E[count_i] = num * w_i``), and every count is ``floor(num * w_i)`` or ``ceil(num * w_i)``,
    so ``Var[count_i] = f_i (1 - f_i)`` with ``f_i`` the fractional part of ``num * w_i``, never more than
    multinomial's ``num * w_i (1 - w_i)``. Cheapest scheme (a single random number) and usually the
    lowest-variance in practice, though unlike residual and stratified it is not guaranteed to beat
    multinomial for every function of the population (Douc, Cappé & Moulines 2005, "Comparison of
    resampling schemes for particle filtering").

    Returns:
        ``(num,)`` long ancestor indices, sorted ascending.
    """
    return _resample_one(_systematic_rows, log_weights, num, generator)


def residual(log_weights: Tensor, num: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Residual resampling, residual-multinomial variant (Liu & Chen 1998; Douc, Cappé & Moulines 2005).

    Particle ``i`` first gets ``floor(num * w_i)`` deterministic copies; the remaining
    ``R = num - sum_i floor(num * w_i)`` ancestors are drawn i.i.d. (multinomially) from the residual
    weights ``num * w_i - floor(num * w_i)`` (normalised). Unbiased (``E[count_i] = num * w_i``) with
    variance no larger than multinomial's (Douc, Cappé & Moulines 2005, "Comparison of
    resampling schemes for particle filtering"). A scaled weight within ``1e-10`` below an integer is
    treated as that integer, so equal weights with ``num = N`` return each index exactly once; the bias
    this introduces is at most ``1e-10`` per count.

    Returns:
        ``(num,)`` long ancestor indices, sorted ascending.
    """
    return _resample_one(_residual_rows, log_weights, num, generator)


_ROW_RESAMPLERS: dict[str, Callable[[Tensor, int, torch.Generator | None], Tensor]] = {
    "multinomial": _multinomial_rows,
    "systematic": _systematic_rows,
    "stratified": _stratified_rows,
    "residual": _residual_rows,
}

RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def get_resampler(name_or_callable: str | Callable[..., Tensor]) -> Resampler:
    """Look up a resampler by name (case-insensitive) in :data:`RESAMPLERS`, or return a callable unchanged.

    Raises:
        ValueError: for an unknown name, listing the known ones.
        TypeError: for anything that is neither a string nor callable.
    """
    if isinstance(name_or_callable, str):
        key = name_or_callable.strip().lower()
        if key not in RESAMPLERS:
            raise ValueError(
                f"unknown resampler {name_or_callable!r}; choose one of {', '.join(sorted(RESAMPLERS))}"
                " or pass a callable"
            )
        return RESAMPLERS[key]
    if callable(name_or_callable):
        return name_or_callable  # type: ignore[return-value]
    raise TypeError(f"expected a resampler name or callable, got {type(name_or_callable).__name__}")
