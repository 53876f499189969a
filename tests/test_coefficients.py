"""Step coefficients: phi functions, and exact integration of interpolating polynomials in every basis."""

import math

import mpmath
import numpy as np
import pytest
from scipy.integrate import quad

from samplers import ContinuousVPSchedule
from samplers.coefficients import phi, step_coefficients


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("z", [-60.0, -5.0, -1.0, -0.999, -1e-3, -1e-9, 0.0, 1e-7, 0.3, 1.0, 4.0, 20.0])
def test_phi_matches_high_precision(k, z):
    mpmath.mp.dps = 50
    zz = mpmath.mpf(z)
    exact = (
        mpmath.mpf(1) / mpmath.factorial(k)
        if z == 0
        else ((mpmath.e**zz - sum(zz**j / mpmath.factorial(j) for j in range(k))) / zz**k)
    )
    assert phi(k, z) == pytest.approx(float(exact), rel=1e-13, abs=1e-300)


SCHEDULE = ContinuousVPSchedule()  # smooth t(lambda); DDPM's is piecewise (kinks at integer t)


def t_of_lambda(lam):
    import torch

    return SCHEDULE.t_of_lambda(torch.as_tensor(lam, dtype=torch.float64)).numpy()


BASES = {
    "lambda": (None, lambda lam: lam),
    "t": (t_of_lambda, t_of_lambda),
    "rho": (lambda lam: np.exp(-lam),) * 2,
}


def vp(lam):
    a = 1 / math.sqrt(1 + math.exp(-2 * lam))
    return a, a * math.exp(-lam)


@pytest.mark.parametrize("basis", list(BASES))
@pytest.mark.parametrize("data", [True, False], ids=["data", "noise"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize(
    "nodes",
    [
        (-1.0,),
        (-1.0, -1.4),
        (-1.0, -1.4, -2.1),
        (-1.0, -0.6),
        (-1.0, -0.8, -0.6),
    ],  # multistep and stage nodes
)
def test_exact_rule_integrates_polynomials_exactly(basis, data, eta, nodes):
    """If the model output is a polynomial of degree < #nodes in the basis variable, the step is the exact
    solution of the (stochastic-kernel) integral, here checked against adaptive quadrature."""
    lam_t = -0.3
    fn, b = BASES[basis]
    coeffs = [0.7, -1.3, 0.45][: len(nodes)]
    scale = abs(float(b(np.float64(nodes[0]))))

    def model(lam):
        y = float(b(np.float64(lam))) / scale
        return sum(c * y**k for k, c in enumerate(coeffs))

    (a_s, s_s), (a_t, s_t) = vp(nodes[0]), vp(lam_t)
    c = step_coefficients(
        "exact", list(nodes), lam_t, a_s, s_s, a_t, s_t, data=data, eta=eta, basis=basis, basis_of_lambda=fn
    )
    stepped = sum(cj * model(lam) for cj, lam in zip(c.model_coefs, nodes))
    nu, h = 1 + eta**2, lam_t - nodes[0]
    if data:
        exact = (
            a_t * quad(lambda u: nu * math.exp(-nu * (h - u)) * model(nodes[0] + u), 0, h, epsabs=1e-14)[0]
        )
        assert c.x_coef == pytest.approx(s_t / s_s * math.exp(-(eta**2) * h), rel=1e-14)
        assert c.noise_coef == pytest.approx(s_t * math.sqrt(1 - math.exp(-2 * eta**2 * h)), rel=1e-12, abs=0)
    else:
        exact = -s_t * quad(lambda u: nu * math.exp(h - u) * model(nodes[0] + u), 0, h, epsabs=1e-14)[0]
        assert c.x_coef == pytest.approx(a_t / a_s, rel=1e-14)
        assert c.noise_coef == pytest.approx(eta * s_t * math.sqrt(math.expm1(2 * h)), rel=1e-12, abs=0)
    assert stepped == pytest.approx(exact, rel=1e-10, abs=1e-12)


def test_exact_rule_is_not_exact_for_higher_degree():
    """Power check: with one node fewer than needed, the same comparison fails."""
    nodes, lam_t = (-1.0, -1.4), -0.3
    (a_s, s_s), (a_t, s_t) = vp(nodes[0]), vp(lam_t)
    c = step_coefficients("exact", list(nodes), lam_t, a_s, s_s, a_t, s_t, data=True)
    model = lambda lam: lam**2  # noqa: E731
    h = lam_t - nodes[0]
    exact = a_t * quad(lambda u: math.exp(-(h - u)) * model(nodes[0] + u), 0, h)[0]
    assert abs(sum(cj * model(lam) for cj, lam in zip(c.model_coefs, nodes)) - exact) > 1e-4


def test_midpoint_rule_is_dpm_solver_pp_2m():
    """DPM-Solver++(2M), Lu et al. 2022b, Alg. 2:
    x_t = (s_t/s_s) x - a_t (e^{-h} - 1) ((1 + 1/(2r)) D_0 - D_1/(2r))."""
    lam_prev, lam_s, lam_t = -1.5, -1.0, -0.4
    (a_s, s_s), (a_t, s_t) = vp(lam_s), vp(lam_t)
    c = step_coefficients("midpoint", [lam_s, lam_prev], lam_t, a_s, s_s, a_t, s_t, data=True)
    h, r = lam_t - lam_s, (lam_s - lam_prev) / (lam_t - lam_s)
    assert c.model_coefs[0] == pytest.approx(-a_t * math.expm1(-h) * (1 + 1 / (2 * r)), rel=1e-14)
    assert c.model_coefs[1] == pytest.approx(a_t * math.expm1(-h) / (2 * r), rel=1e-14)


def test_unipc_solved_coefficients_do_not_depend_on_b_h():
    """With a solved rho (order >= 3 predictor, order >= 2 corrector) B(h) cancels (Zhao et al. 2023)."""
    lams, lam_t = [-1.0, -1.3, -1.7], -0.6
    (a_s, s_s), (a_t, s_t) = vp(lams[0]), vp(lam_t)
    for corrector, nodes in ((False, lams), (True, lams[:2] + [lam_t])):
        c1, c2 = (
            step_coefficients(rule, nodes, lam_t, a_s, s_s, a_t, s_t, data=True, corrector=corrector)
            for rule in ("unipc_bh1", "unipc_bh2")
        )
        np.testing.assert_allclose(c1.model_coefs, c2.model_coefs, rtol=1e-12)
    # ... while the fixed rho = 1/2 of the order-2 predictor makes them differ
    c1, c2 = (
        step_coefficients(rule, lams[:2], lam_t, a_s, s_s, a_t, s_t, data=True)
        for rule in ("unipc_bh1", "unipc_bh2")
    )
    assert abs(c1.model_coefs[0] - c2.model_coefs[0]) > 1e-4
