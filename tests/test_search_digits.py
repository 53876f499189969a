"""The bundled digits model as a search chain, and the digits search benchmark's bookkeeping (its methods
at a small budget; the full run is scripts/bench_search_digits.py)."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from pipelines.digits import DIGITS_MODEL, digits_chain
from rewards import digits_reward
from samplers.solvers import DPMSolverPP
from search.chain import advance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_search_digits  # noqa: E402
from search_bench_common import nfe_to_reach  # noqa: E402


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return UNet2DModel.from_pretrained(DIGITS_MODEL / "unet").eval()


def test_conditional_chain_draws_the_digit_and_the_unconditional_one_draws_all_digits(unet):
    g = torch.Generator().manual_seed(0)
    seven = digits_chain("seven", steps=10, guidance_scale=2.0, solver=DPMSolverPP(2), unet=unet)
    images = seven.decode(advance(seven, seven.prior(24, g), None, g).x)
    assert images.shape == (24, 1, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert float((digits_reward(7)(images) > -0.1).float().mean()) >= 0.9
    assert seven.budget.nfe == 24 * 10  # one NFE per particle and step, CFG's doubled batch included
    free = digits_chain(None, steps=10, unet=unet)
    images = free.decode(advance(free, free.prior(64, g), None, g).x)
    classes = digits_reward(0).log_probs(images).argmax(1)
    assert len(set(classes.tolist())) >= 7  # the null class draws every kind of digit


def test_guidance_needs_a_digit(unet):
    with pytest.raises(ValueError, match="needs a digit"):
        digits_chain(None, guidance_scale=2.0, unet=unet)


def test_nfe_to_reach_is_the_first_budget_whose_mean_reaches_the_target():
    by_budget = {160: [1.0, 2.0], 320: [3.0, 4.0], 640: [], 1280: [9.0]}
    assert nfe_to_reach(by_budget, 3.5) == 320 and nfe_to_reach(by_budget, 1.5) == 160
    assert nfe_to_reach(by_budget, 10.0) is None


def test_every_benchmark_method_runs_within_a_small_budget(unet):
    for name, run in bench_search_digits.methods(unet).items():
        result = run(320, torch.Generator().manual_seed(0))
        assert 0 < result.nfe <= 320, name
        assert torch.isfinite(result.all_scores).all(), name
    table = bench_search_digits.reach_table({"a": {160: [5.0], 320: [7.0]}, "b": {160: [1.0]}}, 6.0, 5120)
    assert "| a | 320 | 1/16 | 16x |" in table and "| b | not reached within 160 |" in table
