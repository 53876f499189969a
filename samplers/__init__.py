"""samplers: noise schedules, denoiser adapters, time grids and exponential-integrator ODE/SDE solvers."""

from .analytic_steps import optimise_steps, step_objective
from .calibrate import CalibratedGrid, fit_grid
from .denoiser import PREDICTION_TYPES, Denoiser, DenoiserOutput, DynamicThreshold, convert_prediction
from .dpm_solver_v3 import DPMSolverV3
from .ems import EmpiricalModelStatistics, compute_ems, load_ems
from .grids import GRID_KINDS, TimeGrid, make_grid
from .interpolant import InterpolantConversion
from .masked import POLICIES, AdaBlock, BlockLayout, ReMDM, make_policy, sample_candidates
from .masked_scheduler import MaskedDiffusionScheduler
from .noise import BrownianTreeNoise, GeneratorNoise, NoiseSource
from .schedulers import (
    DDIMSolverScheduler,
    DEISScheduler,
    DPMSolverPPScheduler,
    DPMSolverV3Scheduler,
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
    "optimise_steps",
    "step_objective",
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
    "DPMSolverV3Scheduler",
    "DPMSolverV3",
    "EmpiricalModelStatistics",
    "compute_ems",
    "load_ems",
    "ExponentialIntegratorScheduler",
    "UniPCScheduler",
]
