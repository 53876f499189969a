"""The denoiser adapter: prediction-type conversions, batched CFG, thresholding, NFE counting, errors."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from samplers import (
    DDIM,
    PREDICTION_TYPES,
    Denoiser,
    DiscreteVPSchedule,
    DPMSolverPP,
    DynamicThreshold,
    FlowMatchingSchedule,
    make_grid,
    sample,
)
from samplers.analytic import NULL_LABEL, make_net

SCHEDULES = [
    DiscreteVPSchedule.from_betas("scaled_linear", beta_start=0.00085, beta_end=0.012),
    FlowMatchingSchedule(),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "flow"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_every_prediction_type_gives_exact_x0_and_eps(gmm, schedule, prediction_type):
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)), prediction_type)
    denoiser = Denoiser(net, prediction_type)
    t = torch.tensor(0.37 * schedule.t_max + 0.63 * schedule.t_min + 0.01, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    x = torch.randn(6, gmm.dim, dtype=torch.float64) * 2
    out = denoiser(x, t, a, s)
    torch.testing.assert_close(out.x0, gmm.posterior_mean(x, a, s), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.eps, gmm.eps(x, a, s), rtol=0, atol=1e-10)
    assert denoiser.nfe == 1


def test_cfg_is_one_batched_call_and_equals_guided_model(gmm):
    schedule = SCHEDULES[0]
    calls = []
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))

    def counting_net(x, t, class_labels):
        calls.append(x.shape[0])
        return net(x, t, class_labels=class_labels)

    labels = torch.tensor([0, 1, 1, 0])
    denoiser = Denoiser(counting_net, guidance_scale=3.0, uncond={"class_labels": torch.tensor([NULL_LABEL])})
    t = torch.tensor(500.0, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    x = torch.randn(4, gmm.dim, dtype=torch.float64)
    out = denoiser(x, t, a, s, {"class_labels": labels})
    assert calls == [8] and denoiser.nfe == 1
    torch.testing.assert_close(out.eps, gmm.guided_eps(x, a, s, labels, 3.0), rtol=0, atol=1e-10)
    # guidance really changes the answer
    assert (out.eps - gmm.eps(x, a, s, labels)).abs().max() > 1e-3


def test_cfg_needs_uncond_inputs():
    with pytest.raises(ValueError, match="uncond"):
        Denoiser(lambda x, t: x, guidance_scale=2.0)


def test_dynamic_threshold_matches_diffusers():
    x0 = torch.randn(5, 3, 8, 8) * 3
    ours = DynamicThreshold(ratio=0.9, max_value=2.5)(x0)
    sched = DPMSolverMultistepScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5
    )
    torch.testing.assert_close(ours, sched._threshold_sample(x0.clone()))
    assert ours.abs().max() <= 1.0 + 1e-6 and not torch.equal(ours, x0)


def test_thresholding_recomputes_eps_consistently(gmm):
    schedule = SCHEDULES[0]
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))
    denoiser = Denoiser(net, threshold=DynamicThreshold(ratio=0.5, max_value=1.5))
    t = torch.tensor(900.0, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    x = torch.randn(3, gmm.dim, dtype=torch.float64)
    out = denoiser(x, t, a, s)
    torch.testing.assert_close(a * out.x0 + s * out.eps, x)
    assert out.x0.abs().max() <= 1.0 + 1e-12


def test_unknown_prediction_type_is_a_value_error():
    with pytest.raises(ValueError, match="unknown prediction_type 'x_start'"):
        Denoiser(lambda x, t: x, "x_start")


def test_nfe_counts_model_evaluations(gmm):
    schedule = SCHEDULES[0]
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))
    x = torch.randn(2, gmm.dim, dtype=torch.float64)
    for solver, steps, expected in [
        (DPMSolverPP(2), 10, 10),
        (DPMSolverPP(3, multistep=False), 6, 15),
        (DDIM(), 5, 5),
    ]:
        denoiser = Denoiser(net)
        sample(denoiser, x, make_grid(schedule, steps, final="zero"), solver)
        # 3S with 6 (< 15) steps lowers the final orders: 4 steps x 3 + 2 + 1 (the step into sigma = 0)
        assert denoiser.nfe == expected, solver.name


@pytest.mark.parametrize("solver", [DPMSolverPP(2), DDIM(eta=1.0)])
def test_float32_inputs_stay_float32_and_agree_with_float64(gmm, solver):
    schedule = SCHEDULES[0]
    net = make_net(gmm, lambda t: (schedule.alpha(t), schedule.sigma(t)))
    grid = make_grid(schedule, 20, final="zero")
    x64 = torch.randn(8, gmm.dim, dtype=torch.float64)
    out64 = sample(Denoiser(net), x64, grid, solver, noise=3)
    out32 = sample(Denoiser(net), x64.float(), grid, solver, noise=3)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=0, atol=1e-4)
