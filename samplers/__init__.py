"""samplers: noise schedules, denoiser adapters, time grids and exponential-integrator ODE/SDE solvers."""

from .calibrate import CalibratedGrid, fit_grid
from .denoiser import PREDICTION_TYPES, Denoiser, DenoiserOutput, DynamicThreshold, convert_prediction
from .grids import GRID_KINDS, TimeGrid, make_grid
from .interpolant import InterpolantConversion
from .masked import POLICIES, AdaBlock, BlockLayout, ReMDM, make_policy, sample_candidates
from .masked_scheduler import MaskedDiffusionScheduler
from .noise import BrownianTreeNoise, GeneratorNoise, NoiseSource
from .schedulers import (
    DDIMSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    ExponentialIntegratorScheduler,
    UniPCScheduler,
)
from .schedules import (
    ContinuousVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    FlowMatchingSchedule,
    NoiseSchedule,
    flux_time_shift_mu,
    schedule_from_diffusers_config,
)
from .solvers import DDIM, DEIS, DPMSolver, DPMSolverPP, SDEDPMSolverPP, Solver, UniPC, finest_grid, sample
from .state import SolverState

__all__ = [
    "CalibratedGrid",
    "fit_grid",
    "ReMDM",
    "POLICIES",
    "AdaBlock",
    "BlockLayout",
    "MaskedDiffusionScheduler",
    "make_policy",
    "sample_candidates",
    "PREDICTION_TYPES",
    "Denoiser",
    "DenoiserOutput",
    "DynamicThreshold",
    "convert_prediction",
    "GRID_KINDS",
    "TimeGrid",
    "make_grid",
    "InterpolantConversion",
    "BrownianTreeNoise",
    "GeneratorNoise",
    "NoiseSource",
    "ContinuousVPSchedule",
    "DiscreteVPSchedule",
    "EDMSchedule",
    "FlowMatchingSchedule",
    "NoiseSchedule",
    "flux_time_shift_mu",
    "schedule_from_diffusers_config",
    "DDIM",
    "DEIS",
    "DPMSolver",
    "DPMSolverPP",
    "SDEDPMSolverPP",
    "Solver",
    "UniPC",
    "sample",
    "finest_grid",
    "SolverState",
    "DDIMSolverScheduler",
    "DEISScheduler",
    "DPMSolverPPScheduler",
    "ExponentialIntegratorScheduler",
    "UniPCScheduler",
]
