r"""Step coefficients of exponential integrators.

Every solver step here has the form (DPM-Solver, Lu et al. 2022, eq. 3.4; DPM-Solver++, Lu et al. 2022b,
eq. 9; SA-Solver, Xue et al. 2023, eq. 14 for the stochastic kernel)

    data prediction:   x_t = (sigma_t/sigma_s) e^{-eta^2 h} x_s + alpha_t \int_0^h nu e^{-nu (h-u)} D(u) du
                             + sigma_t sqrt(1 - e^{-2 eta^2 h}) z
    noise prediction:  x_t = (alpha_t/alpha_s) x_s - sigma_t \int_0^h nu e^{h-u} E(u) du
                             + sigma_t eta sqrt(e^{2h} - 1) z

with u = lambda - lambda_s, h = lambda_t - lambda_s and nu = 1 + eta^2 (eta = 0: probability-flow ODE,
eta = 1: the reverse SDE). D/E are replaced by a polynomial through model outputs at nodes u_j, so
the step is linear in them: x_t = A x_s + sum_j c_j m_j + g z. Solvers differ only in how the c_j
are chosen; that choice is a :class:`Rule`:

* ``exact``: integrate the Lagrange interpolant exactly. In the lambda basis the monomial moments are
  k! h^{k+1} phi_{k+1}(.), phi the exponential-integrator functions (DPM-Solver, eq. 3.6); in the t or
  rho = sigma/alpha basis (DEIS tAB / rhoAB, Zhang & Chen 2023, eq. 14) by 64-point Gauss-Legendre.
* ``midpoint``: the 2-node approximation of DPM-Solver-2 and DPM-Solver++(2M) (Lu et al. 2022b,
  Alg. 2): the slope's moment h^2 phi_2 is replaced by h phi_1 / 2.
* ``dpmsolver_ref``: the coefficients of the DPM-Solver reference code and diffusers' DPMSolverMultistep:
  ``midpoint`` for 2 nodes and, for 3 nodes, half the exact second-derivative moment (h phi_3 D_2 where
  the Taylor integral gives 2 h phi_3 D_2, D_2 = h^2 P''/2). That makes its "3M" second order
  asymptotically, but its damped extrapolation is more robust where log-SNR steps grow fast.
* ``unipc_bh1`` / ``unipc_bh2``: UniPC's predictor/corrector with B(h) = h or e^h - 1 (Zhao et al. 2023,
  Alg. 1-3, eq. 8-11).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["StepCoefficients", "phi", "step_coefficients", "RULES", "BASES"]

RULES = ("exact", "midpoint", "dpmsolver_ref", "unipc_bh1", "unipc_bh2")
BASES = ("lambda", "t", "rho")
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)


@dataclass(frozen=True)
class StepCoefficients:
    """x_t = x_coef * x_s + sum_j model_coefs[j] * m_j + noise_coef * z."""

    x_coef: float
    model_coefs: tuple[float, ...]
    noise_coef: float


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{j>=0} z^j / (j+k)!, so phi_0 = e^z and phi_{k+1}(z) = (phi_k(z) - 1/k!)/z.

    The series is used for |z| < 1 (where the recurrence cancels catastrophically), the recurrence elsewhere.
    """
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(40):
            total += term
            term *= z / (j + k + 1)
        return total
    value = math.exp(z)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def _lagrange_weights(nodes: Sequence[float], moments: Sequence[float]) -> np.ndarray:
    """Weights w with sum_j w_j P(r_j) = sum_k c_k M_k for every polynomial P = sum_k c_k r^k of degree
    < len(nodes): solves V^T w = M with the Vandermonde matrix V[j, k] = r_j^k."""
    if len(nodes) == 1:  # first order: the constant's weight is the zeroth moment
        return np.asarray(moments[:1], dtype=np.float64)
    r = np.asarray(nodes, dtype=np.float64)
    vander = np.vander(r, N=len(r), increasing=True)
    return np.linalg.solve(vander.T, np.asarray(moments, dtype=np.float64))


def _prefactors(alpha_s, sigma_s, alpha_t, sigma_t, h, eta, data):
    """(A, C, g): x_t = A x_s + C * (weighted model outputs) + g z, with C the sign-carrying prefactor."""
    if data:
        x_coef = (sigma_t / sigma_s) * math.exp(-(eta**2) * h)
        return x_coef, alpha_t, sigma_t * math.sqrt(-math.expm1(-2 * eta**2 * h))
    return alpha_t / alpha_s, -sigma_t, sigma_t * eta * math.sqrt(math.expm1(2 * h))


def _lambda_moments(h: float, n: int, eta: float, data: bool, rule: str) -> list[float]:
    """Moments of the kernel against (u/h)^k in closed form (DPM-Solver, eq. 3.6):
    data: nu k! h phi_{k+1}(-nu h); noise: nu k! h phi_{k+1}(h)."""
    nu = 1 + eta**2
    z = -nu * h if data else h
    moments = [nu * math.factorial(k) * h * phi(k + 1, z) for k in range(n)]
    if rule in ("midpoint", "dpmsolver_ref") and n == 2:
        moments[1] = moments[0] / 2
    if rule == "dpmsolver_ref" and n == 3:
        moments[2] = moments[2] / 2
    return moments


def _quadrature_points(
    basis_of_lambda: Callable[[np.ndarray], np.ndarray],
    lam_s: float,
    lam_t: float,
    eta: float,
    data: bool,
) -> tuple[np.ndarray, float]:
    """Gauss-Legendre rule for \\int_0^h K(u) f(u) du in a variable where the kernel is flat.

    data: w = e^{-nu (h-u)} in [e^{-nu h}, 1] ( dw = nu w du ); noise: rho = e^{-lambda}, and
    sigma_t e^{h-u} du = alpha_t d(-rho), so \\int e^{h-u} f du = e^{lambda_t} \\int_{rho_t}^{rho_s} f drho.
    Returns (basis values at the quadrature points, scale) so that integral ~= scale * sum(w_i f_i).
    """
    nu = 1 + eta**2
    h = lam_t - lam_s
    if data:
        lo, hi = math.exp(-nu * h), 1.0
        pts = 0.5 * (hi - lo) * _GL_NODES + 0.5 * (hi + lo)
        lam = lam_t + np.log(pts) / nu
        scale = 0.5 * (hi - lo)
    else:
        lo, hi = math.exp(-lam_t), math.exp(-lam_s)
        pts = 0.5 * (hi - lo) * _GL_NODES + 0.5 * (hi + lo)
        lam = -np.log(pts)
        scale = nu * math.exp(lam_t) * 0.5 * (hi - lo)
    return basis_of_lambda(lam), scale


def _unipc_rhos(r: Sequence[float], h: float, data: bool, variant: str) -> tuple[list, float]:
    """UniPC's rho solve (Zhao et al. 2023, eq. 8/11): R rho = b with R[i,k] = r_k^i and
    b_i = (i+1)! hh phi_{i+2}(hh) / B(h), hh = -h for data prediction. Returns (rho, B(h)).

    With a single node (the order-2 predictor, or the order-1 corrector) UniPC fixes rho = 1/2 instead
    (reference implementation and diffusers)."""
    hh = -h if data else h
    b_h = hh if variant == "unipc_bh1" else math.expm1(hh)
    p = len(r)
    if p == 1:
        return [0.5], b_h
    b = [math.factorial(i + 1) * hh * phi(i + 2, hh) / b_h for i in range(p)]
    return list(np.linalg.solve(np.vander(np.asarray(r), N=p, increasing=True).T, b)), b_h


def step_coefficients(
    rule: str,
    lambdas: Sequence[float],
    lam_t: float,
    alpha_s: float,
    sigma_s: float,
    alpha_t: float,
    sigma_t: float,
    *,
    data: bool,
    eta: float = 0.0,
    basis: str = "lambda",
    basis_of_lambda: Callable[[np.ndarray], np.ndarray] | None = None,
    corrector: bool = False,
) -> StepCoefficients:
    """Coefficients for one step from lambda_s = lambdas[0] to lam_t using model outputs at ``lambdas``.

    ``lambdas[0]`` is the current point s. For the UniC corrector (``corrector=True``) the last entry of
    ``lambdas`` must be lam_t itself. With sigma_t = 0 only first-order steps are defined (a
    lambda-polynomial has no value at lambda = +inf); callers reduce the order there.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    lam_s = lambdas[0]
    n = len(lambdas)
    if sigma_t == 0:
        if n != 1:
            raise ValueError("a step to sigma = 0 must be first order")
        if data:
            return StepCoefficients(0.0, (alpha_t,), 0.0)
        # noise prediction: sigma_t e^{h} = alpha_t e^{-lambda_s}
        nu = 1 + eta**2
        rho_s = sigma_s / alpha_s
        return StepCoefficients(alpha_t / alpha_s, (-nu * alpha_t * rho_s,), eta * alpha_t * rho_s)
    h = lam_t - lam_s
    if not math.isfinite(h) or h <= 0:
        if data and n == 1 and alpha_s == 0:  # start of a flow at alpha = 0 (lambda_s = -inf, h = +inf)
            keep = 1.0 if eta == 0 else 0.0  # e^{-eta^2 h}
            return StepCoefficients(keep * sigma_t / sigma_s, (alpha_t,), (1.0 - keep) * sigma_t)
        raise ValueError(f"step needs finite increasing log-SNR, got lambda_s={lam_s}, lambda_t={lam_t}")
    x_coef, pref, noise_coef = _prefactors(alpha_s, sigma_s, alpha_t, sigma_t, h, eta, data)
    r = [(lam - lam_s) / h for lam in lambdas]

    if rule.startswith("unipc"):
        if eta != 0:
            raise ValueError("UniPC is an ODE solver: eta must be 0")
        hh = -h if data else h
        h_phi_1 = math.expm1(hh)
        prev = r[1:]  # predictor: history nodes (r < 0); corrector: history nodes then r = 1 for m_t
        rhos, b_h = _unipc_rhos(prev, h, data, rule) if len(prev) else ([], 0.0)
        # x_t = A x_s - C' h_phi_1 m0 - C' B(h) sum_k rho_k (m_k - m0)/r_k,
        # with C' = alpha_t (data prediction) or sigma_t (noise prediction).
        c_prime = alpha_t if data else sigma_t
        coefs = [-c_prime * h_phi_1] + [0.0] * (n - 1)
        for k, (rho, rk) in enumerate(zip(rhos, prev, strict=True), start=1):
            w = c_prime * b_h * rho / rk
            coefs[k] -= w
            coefs[0] += w
        return StepCoefficients(x_coef, tuple(coefs), 0.0)

    if corrector:
        raise ValueError("corrector coefficients need a unipc rule")
    if basis == "lambda":
        moments = _lambda_moments(h, n, eta, data, rule)
        w = _lagrange_weights(r, moments)
    else:
        if rule != "exact":
            raise ValueError(f"rule {rule!r} is defined for the lambda basis only")
        if basis_of_lambda is None:
            raise ValueError(f"basis {basis!r} needs basis_of_lambda")
        b_nodes = basis_of_lambda(np.asarray(lambdas, dtype=np.float64))
        b_quad, scale = _quadrature_points(basis_of_lambda, lam_s, lam_t, eta, data)
        # Lagrange basis polynomials in the chosen variable, evaluated at the quadrature points.
        centre, width = b_nodes[0], (b_nodes.max() - b_nodes.min()) or 1.0
        nodes = (b_nodes - centre) / width
        quad = (b_quad - centre) / width
        vander_q = np.vander(quad, N=n, increasing=True)
        moments = scale * (_GL_WEIGHTS @ vander_q)
        w = _lagrange_weights(nodes, moments)
    return StepCoefficients(x_coef, tuple(float(pref * wj) for wj in w), noise_coef)
